"""Event types sent to the application: one JSON object per event, tagged by ``type``.

Every event names its call (``call_sid``, ``stream_sid``) and carries ``ts`` (Unix seconds when it was
emitted); utterance events carry ``utterance_id`` (``<stream_sid>:<n>``). Positions (``start_ms``,
``end_ms``) are on the call's audio timeline: ms since the first audio of the stream.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec
from msgspec import Struct

FinalSource = Literal["finalize", "server_endpoint", "end_of_stream"]


class Latency(Struct, kw_only=True):
    """Where the time went between the caller's last speech and the event (architecture §6)."""

    endpoint_ms: float  # last speech audio → endpoint decision (the hangover)
    lease_ms: float  # waiting for an RTZR socket; 0 on a pool hit
    stt_ms: float  # Finalize sent → final received
    total_ms: float  # last speech audio → event emitted


class SocketInfo(Struct, kw_only=True):
    """The RTZR socket that served the utterance (issue 15: what ``sori report`` shows per utterance).

    ``pool_hit`` false means the lessee waited for this socket to open: ``handshake_ms`` is then the connect
    time on the utterance's path. Token times are taken when the event is built, so ``ts - token_age_s`` is
    when the token was fetched (the report counts token refreshes from it).
    """

    id: str  # "s<n>", unique within the engine process
    uses: int  # leases this socket has served, this one included (1: its first; >1: reused)
    handshake_ms: float  # token, TCP, TLS and upgrade when the socket opened
    age_s: float  # how long the socket had been open when leased
    token_age_s: float | None = None  # seconds since its token was fetched; None if unknown
    token_ttl_s: float | None = None  # seconds left before its token expires


class Word(Struct, kw_only=True):
    text: str
    start_ms: float
    end_ms: float
    confidence: float | None = None


class Event(Struct, tag_field="type", kw_only=True):
    """Base of every event."""

    call_sid: str
    stream_sid: str
    ts: float = msgspec.field(default_factory=time.time)


class CallStarted(Event, tag="call.started"):
    account_sid: str
    tracks: list[str]
    custom_parameters: dict[str, str]
    sample_rate: int


class SpeechStarted(Event, tag="speech.started"):
    """Sent at once when speech is confirmed (applications use it for barge-in).

    ``continues``: the utterance_id this one continues (speech resumed within ``endpointing.merge_ms`` of
    that utterance's last speech: the caller was not done), else None. The earlier utterance's final
    stands as final for its audio; this one gets its own outcome, and the two belong to one turn.
    """

    utterance_id: str
    start_ms: float
    continues: str | None = None


class SpeechEnded(Event, tag="speech.ended"):
    """The endpointer's decision that the utterance is over, sent as it is made (before its final).

    ``last_speech_ms``: end of the last audio judged as speech; ``end_ms``: the decision time (end of
    the utterance's audio, the hangover included), so ``end_ms - last_speech_ms`` is the endpointer's
    own delay. ``reason``: ``silence`` (the hangover ran out), ``max_length`` (the utterance reached
    ``max_utterance_ms``; the speech goes on in a new utterance) or ``end_of_stream``.
    """

    utterance_id: str
    last_speech_ms: float
    end_ms: float
    reason: Literal["silence", "max_length", "end_of_stream"]


class TranscriptPartial(Event, tag="transcript.partial"):
    utterance_id: str
    text: str
    start_ms: float


class TranscriptFinal(Event, tag="transcript.final"):
    utterance_id: str
    text: str
    confidence: float | None
    start_ms: float
    end_ms: float
    words: list[Word] | None = None
    latency: Latency | None = None  # on the final that closes the utterance (after Finalize)
    source: FinalSource = "finalize"
    pool_hit: bool | None = None
    replayed: bool = False
    continues: str | None = None  # as on the utterance's speech.started: join this text after that utterance's
    socket: SocketInfo | None = None  # the RTZR socket of the lease that produced it (absent in older logs)


class TurnEnded(Event, tag="turn.ended"):
    """``turn_ms`` of silence after the last final: the caller has finished their turn."""

    text: str
    utterance_ids: list[str]
    start_ms: float
    end_ms: float


class CallEnded(Event, tag="call.ended"):
    reason: str
    duration_ms: float
    utterances: int
    finals: int
    audio_sent_s: float
    frames_received: int
    frames_filled: int
    frames_dropped: int
    errors: int


class ErrorEvent(Event, tag="error"):
    kind: str
    message: str
    budget: str | None = None
    utterance_id: str | None = None


class PlaybackStarted(Event, tag="playback.started"):
    """The first frame of a playback went to Twilio (``duration_ms``: its whole length)."""

    playback_id: str
    duration_ms: float


class PlaybackFinished(Event, tag="playback.finished"):
    """Twilio reported the playback's last frame played (it echoed sori's mark behind it)."""

    playback_id: str
    duration_ms: float


class PlaybackInterrupted(Event, tag="playback.interrupted"):
    """The playback was cut before it finished: ``reason`` ``clear`` (the application), ``barge_in`` (the
    caller spoke), ``stop`` or ``call_ended``; ``played_ms``: how much the caller heard, estimated from
    sori's pacing clock (0 for a playback that never started)."""

    playback_id: str
    played_ms: float
    duration_ms: float
    reason: Literal["clear", "barge_in", "stop", "call_ended"]


class MarkReached(Event, tag="mark"):
    """An application mark: the audio queued before it has played (``cleared``: it was dropped by a clear
    or the call's end before that audio played)."""

    name: str
    cleared: bool = False


class Dtmf(Event, tag="dtmf"):
    """The caller pressed a key (Twilio's inbound ``dtmf`` message)."""

    digit: str


AnyEvent = (CallStarted | SpeechStarted | SpeechEnded | TranscriptPartial | TranscriptFinal | TurnEnded | CallEnded
            | ErrorEvent | PlaybackStarted | PlaybackFinished | PlaybackInterrupted | MarkReached | Dtmf)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    """One event as compact JSON (no trailing newline)."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> AnyEvent:
    """Parse an event (for clients, tests and the demo)."""
    return _decoder.decode(data)

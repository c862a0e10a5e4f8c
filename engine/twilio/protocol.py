"""Twilio Media Streams wire protocol, sans-IO: text frames in, typed events out.

:class:`TwilioStream` is a pure state machine (no I/O, no clock). It checks the message order
(``connected`` → ``start`` → (``media`` | ``dtmf`` | ``mark``)* → ``stop``), the ``streamSid``, the
sequence numbers, and rebuilds the call's audio timeline from ``chunk``/``timestamp``: lost audio
becomes μ-law silence, duplicates and late (reordered) frames are dropped and counted, so the
concatenated ``AudioReceived.payload`` of one stream is exactly the call's timeline. After ``start`` it
hands out the vendor-neutral events of :mod:`engine.media` itself (what a call is typed on). Malformed input
raises one :class:`TwilioProtocolError` (with a ``kind`` for metrics); the caller decides what to do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec
from msgspec import UNSET, Struct, UnsetType

from engine.media import AudioReceived, DtmfReceived, MarkReached, StreamStopped
from engine.twilio.state import TRANSITIONS, IllegalTransition, Inbound, SessionState, next_state

BYTES_PER_MS: Final = 8  # 8 kHz μ-law, one byte per sample
FRAME_BYTES: Final = 160  # Twilio's 20 ms frame
SILENCE: Final = 0xFF
# A contiguous chunk whose timestamp runs ahead by more than this is a silent gap Twilio skipped.
TIMESTAMP_TOLERANCE_MS: Final = 40
# Remembered sequence numbers below the highest one (duplicate vs late detection).
_SEQ_WINDOW: Final = 256
_MAX_INT_DIGITS: Final = 15
_MAX_UINT: Final = 10**_MAX_INT_DIGITS - 1  # the largest number _parse_uint accepts
_T = TypeVar("_T")


class TwilioProtocolError(Exception):
    """One malformed or out-of-order message. ``kind`` labels metrics; ``fatal`` ends the call."""

    def __init__(self, kind: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.fatal = fatal


# ---------------------------------------------------------------------------------------------
# Wire messages (Twilio → sori). Integers travel as JSON strings, exactly as Twilio sends them.


class _Wire(Struct, rename="camel", tag_field="event", kw_only=True):
    """Base of every wire message: camelCase keys, the ``event`` tag, unknown fields ignored.

    Optional keys Twilio may leave out are ``UNSET`` (omitted on encode), so encoding is faithful.
    """


class MediaFormat(Struct, rename="camel"):
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


class StartInfo(Struct, rename="camel"):
    stream_sid: str
    account_sid: str = ""
    call_sid: str = ""
    tracks: list[str] = msgspec.field(default_factory=lambda: ["inbound"])
    custom_parameters: dict[str, str] = msgspec.field(default_factory=dict)
    media_format: MediaFormat = msgspec.field(default_factory=MediaFormat)


class InboundMedia(Struct, rename="camel", kw_only=True):
    """Fields in Twilio's order (../shared/protocols/twilio.md), so what sori's own simulator and load
    generators encode has the layout :meth:`TwilioStream.receive_one`'s fixed-layout parse takes."""

    track: str = "inbound"
    chunk: str
    timestamp: str
    payload: bytes  # base64 on the wire; msgspec validates and decodes it


class DtmfInfo(Struct, rename="camel"):
    digit: str
    track: str = "inbound_track"


class MarkInfo(Struct, rename="camel"):
    name: str


class StopInfo(Struct, rename="camel"):
    account_sid: str = ""
    call_sid: str = ""


class ConnectedMessage(_Wire, tag="connected"):
    protocol: str = "Call"
    version: str = "1.0.0"


class StartMessage(_Wire, tag="start", kw_only=True):
    sequence_number: str | UnsetType = UNSET
    stream_sid: str
    start: StartInfo


class MediaMessage(_Wire, tag="media", kw_only=True, gc=False):
    """50 a second a call: not tracked by the garbage collector (its fields, strings and an InboundMedia of
    strings and bytes, can hold no reference cycle), so decoding one adds nothing towards a collection."""

    sequence_number: str | UnsetType = UNSET
    stream_sid: str
    media: InboundMedia


class DtmfMessage(_Wire, tag="dtmf", kw_only=True):
    sequence_number: str | UnsetType = UNSET
    stream_sid: str
    dtmf: DtmfInfo


class MarkMessage(_Wire, tag="mark", kw_only=True):
    sequence_number: str | UnsetType = UNSET
    stream_sid: str
    mark: MarkInfo


class StopMessage(_Wire, tag="stop", kw_only=True):
    sequence_number: str | UnsetType = UNSET
    stream_sid: str
    stop: StopInfo = msgspec.field(default_factory=StopInfo)


InboundMessage = ConnectedMessage | StartMessage | MediaMessage | DtmfMessage | MarkMessage | StopMessage

# ---------------------------------------------------------------------------------------------
# Wire messages (sori → Twilio), bidirectional streams only.


class OutboundPayload(Struct):
    payload: bytes


class OutboundMedia(_Wire, tag="media"):
    stream_sid: str
    media: OutboundPayload


class OutboundMark(_Wire, tag="mark"):
    stream_sid: str
    mark: MarkInfo


class OutboundClear(_Wire, tag="clear"):
    stream_sid: str


OutboundMessage = OutboundMedia | OutboundMark | OutboundClear

_encoder = msgspec.json.Encoder()
_inbound_decoder: msgspec.json.Decoder[InboundMessage] = msgspec.json.Decoder(InboundMessage)
_outbound_decoder: msgspec.json.Decoder[OutboundMessage] = msgspec.json.Decoder(OutboundMessage)


class _EventName(Struct):
    event: str = ""


_event_name_decoder = msgspec.json.Decoder(_EventName)
# One JSON string token -> its base64-decoded bytes: exactly what _inbound_decoder does with media.payload.
_payload_decoder: msgspec.json.Decoder[bytes] = msgspec.json.Decoder(bytes)


def encode(message: InboundMessage | OutboundMessage) -> str:
    """Any wire message → its JSON text frame."""
    return _encoder.encode(message).decode()


def encode_media(stream_sid: str, mulaw: bytes) -> str:
    """sori → Twilio audio (μ-law 8 kHz mono, no header)."""
    return encode(OutboundMedia(stream_sid=stream_sid, media=OutboundPayload(payload=mulaw)))


def encode_mark(stream_sid: str, name: str) -> str:
    """sori → Twilio: echo ``name`` back when everything queued before it has played."""
    return encode(OutboundMark(stream_sid=stream_sid, mark=MarkInfo(name=name)))


def encode_clear(stream_sid: str) -> str:
    """sori → Twilio: drop queued audio (Twilio then echoes every pending mark)."""
    return encode(OutboundClear(stream_sid=stream_sid))


def decode_inbound(text: str | bytes) -> InboundMessage:
    """One Twilio → sori frame → its wire Struct (raises :class:`TwilioProtocolError`)."""
    return _decode(_inbound_decoder, text)


def decode_outbound(text: str | bytes) -> OutboundMessage:
    """One sori → Twilio frame → its wire Struct (the simulator's side)."""
    return _decode(_outbound_decoder, text)


def _decode(decoder: msgspec.json.Decoder[_T], text: str | bytes) -> _T:
    try:
        return decoder.decode(text)
    except msgspec.ValidationError as exc:
        reason = str(exc)
        if reason.startswith("Invalid value") and reason.endswith("`$.event`"):
            raise TwilioProtocolError("unknown_event", _event_label(text)) from None
        kind = "base64" if "base64" in reason else "schema"
        raise TwilioProtocolError(kind, reason) from None
    except msgspec.DecodeError as exc:
        raise TwilioProtocolError("json", str(exc)) from None


def _event_label(text: str | bytes) -> str:
    try:
        return _event_name_decoder.decode(text).event[:64] or "<missing>"
    except msgspec.DecodeError:
        return "<invalid>"


# ---------------------------------------------------------------------------------------------
# Events (what the rest of sori sees).


class Connected(Struct, frozen=True):
    protocol: str
    version: str


class Started(Struct, frozen=True):
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: MediaFormat


# After ``start`` the stream hands out the vendor-neutral events of engine/media.py itself: a call needs
# nothing else of a media, dtmf, mark or stop message, and one object per 20 ms frame is all the ingest
# builds (issue 13). ``AudioReceived.timestamp_ms`` is the stream's timeline (0 = its first sample); the
# Twilio timestamp of that first sample is :attr:`TwilioStream.first_timestamp_ms`.
TwilioEvent = Connected | Started | AudioReceived | DtmfReceived | MarkReached | StreamStopped


_NO_NAMES: Final[frozenset[str]] = frozenset()


@dataclass(slots=True)
class StreamStats:
    """Counters of one stream; the server turns them into metrics."""

    messages: int = 0
    frames: int = 0  # media frames of the selected track accepted
    bytes: int = 0  # real audio bytes accepted
    filled_frames: int = 0  # gaps filled (one per gap)
    filled_bytes: int = 0
    duplicates: int = 0
    reordered: int = 0
    sequence_gaps: int = 0  # missing sequence numbers
    timestamp_jumps: int = 0  # contiguous chunk but the timestamp ran ahead
    resyncs: int = 0  # gaps larger than max_gap_ms: timeline re-based instead of filled
    other_track_frames: int = 0
    unknown_events: int = 0
    dtmf: int = 0
    marks: int = 0
    errors: int = 0
    missing_connected: bool = False
    # Shared empty frozensets until the first unknown name (almost never): an empty set is 216 B a call (issue 13).
    unknown_event_names: set[str] | frozenset[str] = _NO_NAMES
    unknown_fields: set[str] | frozenset[str] = _NO_NAMES


class _Timeline:
    """Places one track's media frames by chunk/timestamp; fills gaps, drops late frames."""

    __slots__ = ("first_ts", "in_step_bytes", "max_gap_bytes", "missing", "next_chunk", "pos")

    def __init__(self, max_gap_ms: int) -> None:
        self.first_ts: int | None = None
        self.next_chunk = 0
        self.pos = 0  # bytes emitted so far (real + filled)
        self.max_gap_bytes = max_gap_ms * BYTES_PER_MS
        # The next chunk with a timestamp at most this far ahead is placed right after the last one, no
        # gap filled, no resync: what :meth:`place` does for it, and the media fast path's bound.
        self.in_step_bytes = min(TIMESTAMP_TOLERANCE_MS * BYTES_PER_MS, self.max_gap_bytes)
        # Chunk numbers filled with silence (to tell late from duplicate); None until a gap (rare: issue 13, an
        # empty set is 216 B a call), and again once every filled chunk came late.
        self.missing: set[int] | None = None

    def place(self, chunk: int, ts: int, payload: bytes, stats: StreamStats) -> list[TwilioEvent]:
        if self.first_ts is None:
            self.first_ts = ts
            self.next_chunk = chunk + 1
            return self._emit(payload, stats)
        if chunk < self.next_chunk:
            missing = self.missing
            if missing is not None and chunk in missing:
                missing.discard(chunk)
                if not missing:
                    self.missing = None
                stats.reordered += 1
            else:
                stats.duplicates += 1
            return []
        out: list[TwilioEvent] = []
        gap = (ts - self.first_ts) * BYTES_PER_MS - self.pos
        skipped = chunk - self.next_chunk
        if gap > self.max_gap_bytes:
            # Far beyond any real network stall: re-base instead of synthesizing minutes of silence.
            stats.resyncs += 1
            self.first_ts = ts - self.pos // BYTES_PER_MS
            gap = 0
        elif skipped == 0 and gap > TIMESTAMP_TOLERANCE_MS * BYTES_PER_MS:
            stats.timestamp_jumps += 1
        elif skipped == 0:
            gap = 0
        if skipped:
            if self.missing is None or len(self.missing) > _SEQ_WINDOW:
                self.missing = set()
            self.missing.update(range(self.next_chunk, chunk) if skipped <= _SEQ_WINDOW else ())
        if gap > 0:
            out.append(self._media(bytes([SILENCE]) * gap, filled=True))
            stats.filled_frames += 1
            stats.filled_bytes += gap
        self.next_chunk = chunk + 1
        out.extend(self._emit(payload, stats))
        return out

    def _emit(self, payload: bytes, stats: StreamStats) -> list[TwilioEvent]:
        stats.frames += 1
        stats.bytes += len(payload)
        if not payload:
            return []
        return [self._media(payload, filled=False)]

    def _media(self, payload: bytes, *, filled: bool) -> AudioReceived:
        event = AudioReceived(payload, self.pos / BYTES_PER_MS, filled)
        self.pos += len(payload)
        return event


def _parse_uint(value: str, what: str) -> int:
    if not (value.isdigit() and value.isascii() and len(value) <= _MAX_INT_DIGITS):
        raise TwilioProtocolError("schema", f"{what} must be a string of digits, got {value[:32]!r}")
    return int(value)


_TAGS: dict[type, str] = {
    cls: str(cls.__struct_config__.tag)
    for cls in (ConnectedMessage, StartMessage, MediaMessage, DtmfMessage, MarkMessage, StopMessage)
}
# One bit per message kind: TwilioStream's checked kinds are an int, not a set (216 B a call; issue 13).
_KIND_BITS: dict[type, int] = {cls: 1 << i for i, cls in enumerate(_TAGS)}


# Bound once: an Enum attribute lookup costs ~0.2 µs on CPython 3.11, and media is 50 messages a second a call.
_MEDIA: Final = Inbound.MEDIA
_INBOUND: Final = {message.value: message for message in Inbound}
_MEDIA_STATES: Final = frozenset(state for state, moves in TRANSITIONS.items() if _MEDIA in moves)
_SEQ_MASK: Final = (1 << _SEQ_WINDOW) - 1
# Twilio's media message, key by key in its documented order (../shared/protocols/twilio.md), compact:
#   {"event":"media","sequenceNumber":"<seq>","streamSid":"<sid>","media":{"track":"<track>","chunk":"<chunk>",
#    "timestamp":"<ts>","payload":"<base64>"}}
# The fixed-layout parse (TwilioStream.receive_one) builds the exact text up to <ts> for the next in-step message
# and takes a message that starts with it; anything else is decoded by msgspec as before.
_LAYOUT_HEAD: Final = '{"event":"media","sequenceNumber":"'
_LAYOUT_TS: Final = '","timestamp":"'
_LAYOUT_PAYLOAD: Final = '","payload":"'
_LAYOUT_PAYLOAD_QUOTE: Final = len(_LAYOUT_PAYLOAD) - 1  # from the key's start to the payload's opening quote
_LAYOUT_END: Final = '"}}'
# The layout's last two bytes ("}}"); the payload token's closing quote before them is its decode's own check
# (one JSON string token, nothing after it but JSON whitespace, which the full decode takes too).
_BRACE: Final = ord("}")
_LAYOUT_PAYLOAD_B: Final = b'","payload":"'
# The exact head (TwilioStream._head) is kept while the next sequence number, chunk and timestamp are all below
# 2**49 (< 10**15, so each is a digit string the general path accepts): one shift instead of three compares.
_EXACT_BITS: Final = 49


def _layout_middle(stream_sid: str, track: str) -> str:
    """The layout's text between ``<seq>`` and ``<chunk>``: the streamSid and the track as JSON spells them
    (escaped if they must be, so a text that starts with it decodes to these very strings)."""
    sid, trk = msgspec.json.encode(stream_sid).decode(), msgspec.json.encode(track).decode()
    return f'","streamSid":{sid},"media":{{"track":{trk},"chunk":"'


class TwilioStream:
    """One Twilio Media Stream as a state machine: ``receive_text(frame) -> [events]``."""

    def __init__(self, max_message_bytes: int = 64 * 1024, track: str = "inbound", *, max_gap_ms: int = 10_000) -> None:
        self.max_message_bytes = max_message_bytes
        self.track = track
        self.stats = StreamStats()
        self.state = SessionState.IDLE  # its moves: engine.twilio.state.TRANSITIONS
        self.started: Started | None = None
        self._timeline = _Timeline(max_gap_ms)
        self._highest_seq = 0
        # Bit i set = sequence number (highest - i) not seen (yet), within the window. Missing, not seen: in a
        # stream without loss it becomes 0 after _SEQ_WINDOW messages, and the fast path's shift is skipped.
        self._gaps = _SEQ_MASK
        self._checked_kinds = 0  # bit _KIND_BITS[type] set = that kind's unknown fields were looked for
        self._armed: str | None = None  # started.stream_sid while the media fast path may take a message
        # The fixed layout's middle for this stream (_layout_middle), set at start; None if it has no UTF-8 (a lone
        # surrogate: msgspec never decodes one, but a track is configuration): then no fixed-layout parse.
        self._middle: str | None = None
        self._layout: str | None = None  # _middle while armed, else None
        # The exact UTF-8 text of the next in-step media message, on time, up to its payload's opening quote (while
        # armed, the numbers below 2**_EXACT_BITS and the position a whole number of ms), else None: _in_step
        # builds the next one (receive_frame, the per-message path, is then one startswith). _exact_middle is
        # _middle, or None for a stream whose in-step bound is negative (no message is in step at its timestamp).
        self._head: bytes | None = None
        self._exact_middle: str | None = None
        self.stop: StopInfo | None = None  # the ``stop`` message's details, once it came

    @property
    def stream_sid(self) -> str | None:
        return self.started.stream_sid if self.started else None

    @property
    def first_timestamp_ms(self) -> int | None:
        """Twilio's ``timestamp`` of the stream's first audio (None before it): ``AudioReceived.timestamp_ms``
        counts from there."""
        return self._timeline.first_ts

    def receive_text(self, text: str | bytes) -> list[TwilioEvent]:
        """Feed one WebSocket message (``bytes`` = a binary frame, which Twilio never sends); its events."""
        got = self.receive_one(text)
        return [got] if isinstance(got, AudioReceived) else got

    def receive_one(self, text: str | bytes) -> AudioReceived | list[TwilioEvent]:
        """:meth:`receive_text` for the per-message caller: an in-step media message's one event alone (no
        list), any other message's events (a list, possibly empty or of one ``AudioReceived``).

        Two fast paths take a media message as Twilio sends 50 a second (in the stream, its own streamSid and
        track, the next sequence number and chunk spelled as Twilio spells them, a digit-string timestamp in
        step, some audio) and place it here, with no further call:

        * the fixed-layout parse (:meth:`receive_frame`, on the text's UTF-8 bytes): the message is Twilio's
          exact text for the next in-step message up to its payload, then the payload as one JSON string token
          and ``}}``; only the payload is decoded (by msgspec, as the full decode would);
        * else the message decoded once by msgspec and its fields compared (:meth:`receive_full`).

        Anything else goes through :meth:`_receive_checked`, the general path, which decides it from scratch
        (nothing here has changed any state before it does). The paths accept the same messages with the same
        events and stats (fuzz/test_twilio_media_fast_path.py).
        """
        if self._layout is not None and type(text) is str:
            # surrogatepass: never raises; such bytes (not UTF-8) cannot pass the parse (it takes UTF-8 only)
            got = self.receive_frame(text.encode("utf-8", "surrogatepass"))
            if got is not None:
                return got
        return self.receive_full(text)

    def receive_frame(self, raw: bytes) -> AudioReceived | None:
        """The fixed-layout parse of a text message given as its UTF-8 bytes (the server's per-message path: the
        WebSocket frame's payload, not decoded to ``str``): the in-step media message's event, or None with no
        state changed (then :meth:`receive_full` of the decoded text decides it, as :meth:`receive_one` would).

        On time (the usual message: its timestamp exactly the stream's position) the message starts with
        ``_head``, the exact text up to the payload's opening quote that :meth:`_in_step` built for it: one
        ``startswith``. Else (a timestamp ahead, within the in-step bound) :meth:`_frame_ahead` parses the
        timestamp's digits. What is accepted is the head (the UTF-8 of Twilio's JSON text, the streamSid's and the
        track's included) and ASCII (the digits, the base64 token, ``"}}``): valid UTF-8, whose text is the one
        the str parse would have taken.
        """
        head = self._head
        if head is not None and raw.startswith(head):
            # From the payload's opening quote to the quote before "}}": one JSON string token or a DecodeError
            # (then the full decode decides: the same token, the same error).
            if raw[-1] != _BRACE or raw[-2] != _BRACE or len(raw) > self.max_message_bytes:
                return None
            try:
                payload = _payload_decoder.decode(raw[len(head) - 1:-2])
            except msgspec.DecodeError:
                return None
            if not payload:
                return None
            timeline = self._timeline
            return self._in_step(timeline, self._highest_seq, timeline.next_chunk, timeline.pos, payload)
        if self._layout is None:
            return None
        return self._frame_ahead(raw)

    def _frame_ahead(self, raw: bytes) -> AudioReceived | None:
        """:meth:`receive_frame` for a message not on time (its timestamp ahead of the position, or no exact head):
        Twilio's text up to the timestamp's digits, then 1-15 ASCII digits within the in-step bound."""
        middle = self._layout
        if middle is None:
            return None
        timeline = self._timeline
        high = self._highest_seq
        chunk = timeline.next_chunk
        # The exact text of the next in-step message up to its timestamp: a text that starts with it carries the
        # canonical digit strings of high + 1 and chunk (those _parse_uint accepts as them, if of at most
        # _MAX_INT_DIGITS digits: the bounds), this streamSid and this track, in Twilio's key order.
        head = f"{_LAYOUT_HEAD}{high + 1}{middle}{chunk}{_LAYOUT_TS}".encode()
        if not (
            raw.startswith(head) and raw[-1] == _BRACE and raw[-2] == _BRACE and len(raw) <= self.max_message_bytes
            and high < _MAX_UINT and chunk <= _MAX_UINT
        ):
            return None
        start = len(head)
        at = raw.find(_LAYOUT_PAYLOAD_B, start)  # the first: a digit string cannot hold it
        ts_s = raw[start:at]
        if not (0 < at - start <= _MAX_INT_DIGITS and ts_s.isdigit()):  # bytes.isdigit: ASCII digits only
            return None
        try:
            payload = _payload_decoder.decode(raw[at + _LAYOUT_PAYLOAD_QUOTE:-2])
        except msgspec.DecodeError:
            return None
        pos = timeline.pos
        first_ts = timeline.first_ts
        if (payload and first_ts is not None
                and (int(ts_s) - first_ts) * BYTES_PER_MS - pos <= timeline.in_step_bytes):
            return self._in_step(timeline, high, chunk, pos, payload)
        return None

    def receive_full(self, text: str | bytes) -> AudioReceived | list[TwilioEvent]:
        """:meth:`receive_one` without the fixed-layout parse (for a caller that already tried
        :meth:`receive_frame` on this message's bytes): msgspec's decode, its fast path, else the general path."""
        msg: InboundMessage | None = None
        if type(text) is str and len(text) <= self.max_message_bytes:
            try:
                msg = _inbound_decoder.decode(text)
            except msgspec.DecodeError:  # ValidationError too: the general path reports it
                return self._receive_checked(text, None)
            # _armed is the streamSid only while media may come (started, not stopped) and the timeline has its
            # origin (set by the stream's first media message, which went through _receive_checked: the media
            # message's unknown fields are already noted); None (equal to no streamSid) otherwise.
            if type(msg) is MediaMessage and msg.stream_sid == self._armed:
                media = msg.media
                timeline = self._timeline
                high = self._highest_seq
                chunk = timeline.next_chunk
                ts_s = media.timestamp
                payload = media.payload
                first_ts = timeline.first_ts
                # The next sequence number and chunk as their canonical digit strings (as Twilio writes them; a
                # string equal to str(n) is one _parse_uint accepts as n, if of at most _MAX_INT_DIGITS digits:
                # the bounds): one str() each instead of the digit checks and int() of the general path.
                if (
                    msg.sequence_number == str(high + 1)
                    and media.chunk == str(chunk)
                    and high < _MAX_UINT and chunk <= _MAX_UINT
                    and media.track == self.track
                    and payload
                    and first_ts is not None
                    and len(ts_s) <= _MAX_INT_DIGITS and ts_s.isdigit() and ts_s.isascii()
                ):
                    pos = timeline.pos
                    if (int(ts_s) - first_ts) * BYTES_PER_MS - pos <= timeline.in_step_bytes:
                        return self._in_step(timeline, high, chunk, pos, payload)
        return self._receive_checked(text, msg)

    def _in_step(self, timeline: _Timeline, high: int, chunk: int, pos: int, payload: bytes) -> AudioReceived:
        """Accept an in-step media message (sequence high + 1, chunk ``chunk``, audio at ``pos``): what the
        general path's checks, :meth:`_check_sequence` and :meth:`_Timeline.place` come to for it (every fast
        parse ends here), and the exact head of the next message (:meth:`_exact_head`, inline)."""
        gaps = self._gaps
        if gaps:  # zero once the window is full of seen numbers: the usual stream shifts nothing
            self._gaps = (gaps << 1) & _SEQ_MASK
        self._highest_seq = high = high + 1
        timeline.next_chunk = chunk = chunk + 1
        n = len(payload)
        timeline.pos = end = pos + n
        stats = self.stats
        stats.messages += 1
        stats.frames += 1
        stats.bytes += n
        # _exact_head(high, chunk, end), inline (per message); first_ts is set (the fast paths are armed).
        middle = self._exact_middle
        ts = timeline.first_ts + (end >> 3)  # type: ignore[operator]
        self._head = (None if middle is None or end & 7 or (high | chunk | ts) >> _EXACT_BITS else
                      f"{_LAYOUT_HEAD}{high + 1}{middle}{chunk}{_LAYOUT_TS}{ts}{_LAYOUT_PAYLOAD}".encode())
        return AudioReceived(payload, pos / BYTES_PER_MS)

    def _exact_head(self) -> bytes | None:
        """The exact text of the next in-step message on time, up to its payload's opening quote (see ``_head``),
        from the stream's state; None when the fast paths are not armed or it cannot be exact."""
        middle = self._exact_middle
        timeline = self._timeline
        first_ts = timeline.first_ts
        if self._layout is None or middle is None or first_ts is None:
            return None
        high, chunk, end = self._highest_seq, timeline.next_chunk, timeline.pos
        ts = first_ts + (end >> 3)
        if end & 7 or (high | chunk | ts) >> _EXACT_BITS:
            return None
        return f"{_LAYOUT_HEAD}{high + 1}{middle}{chunk}{_LAYOUT_TS}{ts}{_LAYOUT_PAYLOAD}".encode()

    def _receive_checked(self, text: str | bytes, msg: InboundMessage | None) -> list[TwilioEvent]:
        """The general path: every check in order; ``msg`` is ``text`` decoded, or None (decode it here)."""
        try:
            return self._receive(text, msg)
        except TwilioProtocolError as exc:
            if exc.kind == "unknown_event":
                self.stats.unknown_events += 1
                names = self.stats.unknown_event_names
                if not isinstance(names, set):
                    names = self.stats.unknown_event_names = set()
                names.add(str(exc).partition(": ")[2])
                return []
            self.stats.errors += 1
            raise
        finally:  # only this path moves the state or the timeline's origin: the fast path's gate follows them
            started = self.started
            self._armed = (started.stream_sid if started is not None and self.state in _MEDIA_STATES
                           and self._timeline.first_ts is not None else None)
            self._layout = self._middle if self._armed is not None else None
            self._head = self._exact_head()

    def _receive(self, text: str | bytes, msg: InboundMessage | None) -> list[TwilioEvent]:
        if not isinstance(text, str):
            raise TwilioProtocolError("binary", "binary frame (Twilio sends text frames only)")
        if len(text) > self.max_message_bytes:
            raise TwilioProtocolError("oversized", f"message of {len(text)} chars > {self.max_message_bytes}")
        if msg is None:
            msg = decode_inbound(text)  # raises the error's kind and message
        self.stats.messages += 1
        kind = type(msg)
        tag = _TAGS[kind]
        bit = _KIND_BITS[kind]
        if not self._checked_kinds & bit:
            self._checked_kinds |= bit
            self._note_unknown_fields(text, kind)
        if isinstance(msg, MediaMessage):
            return self._on_media_checked(msg)
        if isinstance(msg, ConnectedMessage):
            self.state = self._next(Inbound.CONNECTED)
            return [Connected(msg.protocol, msg.version)]
        if isinstance(msg, StartMessage):
            return self._on_start(msg)
        self._check_stream(msg.stream_sid, _INBOUND[tag])
        if not self._check_sequence(msg.sequence_number, late_counts=True):
            return []
        if isinstance(msg, DtmfMessage):
            self.stats.dtmf += 1
            return [DtmfReceived(msg.dtmf.digit)]
        if isinstance(msg, MarkMessage):
            self.stats.marks += 1
            return [MarkReached(msg.mark.name)]
        self.state = self._next(Inbound.STOP)
        self.stop = msg.stop
        return [StreamStopped("stop")]

    def _on_start(self, msg: StartMessage) -> list[TwilioEvent]:
        started = self._next(Inbound.START)
        info = msg.start
        fmt = info.media_format
        if fmt.encoding != "audio/x-mulaw" or fmt.sample_rate != 8000 or fmt.channels != 1:
            raise TwilioProtocolError(
                "format", f"unsupported media format {fmt.encoding} {fmt.sample_rate} Hz x{fmt.channels}", fatal=True
            )
        if info.stream_sid and msg.stream_sid and info.stream_sid != msg.stream_sid:
            raise TwilioProtocolError("stream_sid", "start.streamSid differs from the message's streamSid")
        if msg.sequence_number is not UNSET:
            self._highest_seq = _parse_uint(msg.sequence_number, "sequenceNumber")
            self._gaps = _SEQ_MASK ^ 1
        self.stats.missing_connected = self.state is SessionState.IDLE
        self.state = started
        sid = msg.stream_sid or info.stream_sid
        self.started = Started(
            stream_sid=sid,
            call_sid=info.call_sid,
            account_sid=info.account_sid,
            tracks=tuple(info.tracks),
            custom_parameters=dict(info.custom_parameters),
            media_format=fmt,
        )
        middle: str | None = _layout_middle(sid, self.track)
        try:
            middle.encode()  # type: ignore[union-attr]
        except UnicodeEncodeError:
            middle = None
        self._middle = middle
        self._exact_middle = self._middle if self._timeline.in_step_bytes >= 0 else None
        return [self.started]

    def _on_media_checked(self, msg: MediaMessage) -> list[TwilioEvent]:
        """Every media message the fast path (:meth:`receive_text`) does not take: each check in order, gaps,
        duplicates, errors."""
        self._check_stream(msg.stream_sid, _MEDIA)
        media = msg.media
        chunk = _parse_uint(media.chunk, "media.chunk")
        ts = _parse_uint(media.timestamp, "media.timestamp")
        if not self._check_sequence(msg.sequence_number, late_counts=False):
            return []
        if media.track != self.track:
            self.stats.other_track_frames += 1
            return []
        return self._timeline.place(chunk, ts, media.payload, self.stats)

    def _next(self, message: Inbound) -> SessionState:
        """The state ``message`` leads to (the caller assigns it once the message is accepted)."""
        try:
            return next_state(self.state, message)
        except IllegalTransition as exc:
            raise TwilioProtocolError("order", str(exc)) from None

    def _check_stream(self, stream_sid: str, what: Inbound) -> None:
        if what not in TRANSITIONS[self.state]:  # per media frame: the table, without a call
            self._next(what)  # raises the order error
        assert self.started is not None
        if stream_sid != self.started.stream_sid:
            raise TwilioProtocolError("stream_sid", f"{what} for another streamSid")

    def _check_sequence(self, value: str | UnsetType, *, late_counts: bool) -> bool:
        """True when the message is new; duplicates return False (counted), late ones pass."""
        if isinstance(value, UnsetType):
            return True
        seq = _parse_uint(value, "sequenceNumber")
        high = self._highest_seq
        if seq > high:
            if seq > high + 1:
                self.stats.sequence_gaps += seq - high - 1
            shift = seq - high
            # Numbers high+1 .. seq-1 missing, seq seen (bit 0 clear).
            self._gaps = ((self._gaps << shift) | ((1 << shift) - 2)) & _SEQ_MASK if shift < _SEQ_WINDOW else _SEQ_MASK ^ 1
            self._highest_seq = seq
            return True
        back = high - seq
        if back >= _SEQ_WINDOW or not self._gaps >> back & 1:
            self.stats.duplicates += 1
            return False
        self._gaps &= ~(1 << back)
        if late_counts:
            self.stats.reordered += 1
        return True

    def _note_unknown_fields(self, text: str, struct_type: type[Struct]) -> None:
        """On the first message of each kind, record keys Twilio added that we do not know."""
        try:
            raw = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return
        if isinstance(raw, dict):
            found = self.stats.unknown_fields
            if not isinstance(found, set):
                found = set()
            _collect_unknown(raw, struct_type, "", found)
            if found:
                self.stats.unknown_fields = found


@functools.cache
def _fields_by_name(struct_type: type[Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    """A Struct type's fields by wire name, once per type: ``msgspec.structs.fields`` evaluates the type
    hints on every call (≈ 2 % of the engine per call set-up, BENCHMARKS.md § Capacity)."""
    return {f.encode_name: f for f in msgspec.structs.fields(struct_type)}


def _collect_unknown(raw: dict[str, Any], struct_type: type[Struct], prefix: str, out: set[str]) -> None:
    fields = _fields_by_name(struct_type)
    tag_field = struct_type.__struct_config__.tag_field
    for key, value in raw.items():
        if key == tag_field:
            continue
        info = fields.get(key)
        if info is None:
            if len(out) < 64:
                out.add(prefix + key[:64])
            continue
        sub = info.type
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, Struct):
            _collect_unknown(value, sub, f"{prefix}{key}.", out)

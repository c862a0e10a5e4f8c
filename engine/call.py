"""The per-call pipeline: provider audio → decode → resample → Endpointer → pooled RTZR utterances.

Typed on :mod:`engine.media`'s vendor-neutral events, never on a provider's messages: the provider's
reader (Twilio's in ``engine/twilio/server.py``) calls :meth:`Call.on_event` synchronously for every
chunk (μ-law or L16, any rate, any length): decoding, resampling and
endpointing run inline (microseconds), and audio toward RTZR goes into the utterance's buffer, so the
reader never waits on STT. Each utterance is transcribed by its own task in the call's nursery: lease
a socket, stream the audio in batches, ``Finalize`` at the endpoint, wait for the final under
``budgets.finalize``. The audio is kept until the final arrives; a socket that dies first is replaced
and the audio replayed once, then the utterance becomes an ``error`` event. Nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import trio

from engine import events as ev
from engine.audio import mulaw
from engine.audio.resample import Resampler
from engine.budgets import BudgetExpired, Budgets
from engine.config import Config
from engine.endpointing import (
    Endpointer,
    FrameClassifier,
    SpeechAudio,
    SpeechEnded,
    SpeechStarted,
    make_classifier,
)
from engine.endpointing.batch import FrameBatch
from engine.log import get_logger
from engine.media import AudioReceived, DropCounts, MediaEvent, StreamStarted, StreamStopped
from engine.metrics import Registry
from engine.stt import LeaseLike, PoolLike, PushLease, SttResult, SttUnavailable
from engine.turns import TurnTracker
from engine.utterance import UtteranceAudio

log = get_logger(__name__)

FRAME_MS = 20  # the unit of CallStats.frames_* (Twilio's frame; a longer chunk counts its whole frames)


_JOINED_HELP = "audio chunks that joined an earlier chunk of their call in one reactor pass (one batch)"
_ALONE_HELP = "audio chunks whose call's earlier chunk of the same reactor pass was decided alone first"


class Emit(Protocol):
    def __call__(self, event: ev.Event) -> None: ...


@dataclass(slots=True)
class Utterance:
    """State of one utterance: positions on the call timeline and what it has produced."""

    index: int
    uid: str
    audio_start_ms: float  # first pre-roll sample, on the call timeline
    speech_start_ms: float
    audio: UtteranceAudio = field(default_factory=UtteranceAudio)
    continues: str | None = None  # the utterance_id this one continues (Endpointer continuation)
    reason: str = ""
    endpoint_ms: float = 0.0
    ended_at: float = 0.0  # trio clock when the endpoint was decided
    end_ms: float = 0.0
    speech_end_ms: float | None = None  # last speech on the utterance's own timeline (0 = first pre-roll sample)
    overflowed: bool = False  # its audio exceeded the call's buffer: its one outcome is that error
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # its STT task, cancelled on overflow
    sent: int = 0  # STT bytes of the utterance sent (a replay restarts at audio.start, 0 unless released)
    finals_emitted_until_ms: float = -1.0
    finals: int = 0


@dataclass(slots=True)
class _Attempt:
    """One lease of an utterance (the first, or the replay after a socket failed)."""

    lease: LeaseLike
    replay: bool
    offset: int = 0  # STT bytes of the utterance before this lease's first byte (its timeline starts there)
    failure: Exception | None = None
    closing_final: trio.Event = field(default_factory=trio.Event)
    finalize_at: float | None = None  # trio clock when Finalize was sent


@dataclass(slots=True)
class CallStats:
    frames_received: int = 0
    frames_filled: int = 0
    frames_dropped: int = 0
    utterances: int = 0
    finals: int = 0
    errors: int = 0
    bytes_sent: int = 0
    replays: int = 0


class Call:
    """One media stream's pipeline (a provider server's CallHandler)."""

    # Slots, not a __dict__ (issue 13, memory per call): with more than 30 attributes an instance dict no
    # longer shares its keys with the class's other instances, so each call paid a whole dict (1.5 KiB).
    __slots__ = (
        "_batch", "_batch_decode", "_batch_failed", "_bytes_per_frame", "_carry", "_closed_reason", "_compact",
        "_current", "_decode", "_frame_bytes", "_h_endpoint", "_h_stt", "_h_total", "_head", "_headroom", "_held",
        "_last_uid", "_m_errors", "_m_finals", "_m_incomplete", "_m_overflow", "_m_replays", "_nursery", "_open",
        "_raw", "_raw_end", "_raw_ok", "_release_margin_ms", "_settled", "_started_at", "_stream_closed", "_to_stt",
        "_unspawned", "audio_listener", "batch_bytes", "batch_frames", "batch_payload", "budgets",
        "buffer_limit_bytes", "call_sid", "config", "emit", "endpointer", "ep_rate", "in_rate", "last_audio",
        "media_listener", "metrics", "on_ended", "pool", "started", "stats", "stream_sid", "stream_stats",
        "stt_bytes_per_ms", "stt_mulaw", "stt_rate", "stt_sample_bytes", "to_endpointer", "turns", "utterance_prefix",
    )

    def __init__(
        self,
        started: StreamStarted,
        *,
        config: Config,
        pool: PoolLike,
        emit: Emit,
        metrics: Registry,
        budgets: Budgets,
        stream_stats: DropCounts | None = None,
        duplicate: int = 0,
        on_ended: Callable[[], None] | None = None,
    ) -> None:
        self.started = started
        self.config = config
        self.pool = pool
        self.emit = emit
        self.metrics = metrics
        self.budgets = budgets
        self.stream_stats = stream_stats
        self.on_ended = on_ended
        # A second live socket with the same streamSid (seen from Twilio) gets its own utterance ids.
        self.utterance_prefix = started.stream_id if not duplicate else f"{started.stream_id}~{duplicate}"
        self.call_sid = started.call_id
        self.stream_sid = started.stream_id
        self.stats = CallStats()
        ep_cfg = config.endpointing
        self.ep_rate = ep_cfg.sample_rate
        self.stt_rate = config.rtzr.sample_rate
        self.stt_mulaw = config.rtzr.encoding == "MULAW"
        self.in_rate = started.sample_rate
        self.to_endpointer = Resampler(self.in_rate, self.ep_rate)
        # Decoding is chosen once per stream: the per-chunk path is one call, as when it was μ-law only.
        mono_mulaw = started.encoding == "mulaw" and started.channels == 1
        self._decode: Callable[[bytes], np.ndarray[Any, np.dtype[np.int16]]] = (
            mulaw.decode if mono_mulaw else self._decode_general)
        self._frame_bytes = started.frame_bytes
        self._carry = b""  # an L16 sample (or a multi-channel frame) split across chunks
        self._bytes_per_frame = max(1, int(started.bytes_per_ms * FRAME_MS))
        clf = make_classifier(ep_cfg.classifier, self.ep_rate, frame_ms=ep_cfg.frame_ms)
        # Every sample the endpointer gets is a decoded μ-law code: its pre-roll history keeps the codes (issue 13).
        self.endpointer = Endpointer(ep_cfg, classifier=clf, mulaw_history=mono_mulaw and self.to_endpointer.identity)
        # Batched classification (attach_batch): frames_ready's frames, waiting for the batch's decisions.
        self.batch_payload: bytes | None = None  # μ-law for the batch to decode (mono μ-law, no resampling)
        self.batch_frames: np.ndarray[Any, np.dtype[np.int16]] | None = None
        self._batch_decode = mono_mulaw and self.to_endpointer.identity
        self._batch: FrameBatch | None = None
        self._batch_failed: Callable[[Exception], None] | None = None
        # Listeners of the media events, after the call handled them (on_event): ControlledCall's playback.
        self.media_listener: Callable[[MediaEvent], None] | None = None
        self.audio_listener: Callable[[MediaEvent], None] | None = None
        self.last_audio: AudioReceived | None = None
        self.turns = TurnTracker(ep_cfg.turn_ms)
        self.stt_sample_bytes = 1 if self.stt_mulaw else 2
        self.stt_bytes_per_ms = self.stt_rate * self.stt_sample_bytes / 1000
        # Every sample the STT gets is a decoded μ-law code (nothing resampled on the way): the utterance
        # buffers keep the codes, half the memory of LINEAR16 (engine/utterance.py).
        self._compact = mono_mulaw and not self.stt_mulaw and self.ep_rate == self.in_rate == self.stt_rate
        # Mono μ-law and no resampling anywhere: a speech frame's samples are its received μ-law bytes, one
        # per sample, so the utterance stores those bytes (UtteranceAudio.append_mulaw) instead of encoding
        # the decoded frame again. _raw is the latest chunk handed to the endpointer, _raw_end the endpointer
        # position just after it (cleared once its events are handled: no payload outlives its frame).
        self._raw_ok = mono_mulaw and self.ep_rate == self.in_rate == self.stt_rate
        self._raw = b""
        self._raw_end = 0
        self.batch_bytes = int(config.call.send_batch_ms * self.stt_bytes_per_ms)
        self.buffer_limit_bytes = int(config.call.audio_buffer_ms * self.stt_bytes_per_ms)
        # A lower bound of buffer_limit_bytes minus the bytes waiting to be sent (_append): appends lower it,
        # sends and outcomes only raise the true value, and what raises the unsent bytes otherwise (a replay
        # going back to audio.start, the resampler's tail) lowers it too; below zero, the exact sum decides.
        self._headroom = 0
        self._release_margin_ms = float(config.rtzr.pool.timestamp_tolerance_ms)
        self._current: Utterance | None = None
        self._last_uid: str | None = None  # the latest utterance started: what a continuation continues
        self._to_stt: Resampler | None = None
        self._open: list[Utterance] = []  # utterances whose final has not arrived yet
        # Outcomes (finals, terminal errors) are emitted in utterance order: a later utterance's final waits
        # for every earlier utterance to settle (its lease may have been slower).
        self._head = 0  # index of the earliest utterance not yet settled
        self._settled: set[int] | None = None  # settled after the head: only while finals come out of order
        self._held: dict[int, list[tuple[ev.Event, float]]] = {}
        # Utterance tasks are started in run()'s nursery straight from the reader (no channel, no task
        # looping over one: such a loop's variable also kept the last utterance and its audio alive until
        # the next one began); utterances that start before run() has opened it wait in _unspawned.
        self._nursery: trio.Nursery | None = None
        self._unspawned: list[Utterance] = []
        self._stream_closed = trio.Event()
        self._closed_reason: str | None = None
        self._started_at = trio.current_time()
        self._m_overflow = metrics.counter("call_audio_overflow_total", "utterance audio dropped: RTZR slower than real time")
        self._m_finals = metrics.counter("finals_total", "transcript finals emitted")
        self._m_errors = metrics.counter("utterance_errors_total", "utterances reported as errors")
        self._m_incomplete = metrics.counter(
            "utterance_incomplete_total", "utterances whose closing final never came after a server-cut final")
        self._m_replays = metrics.counter("utterance_replays_total", "utterances replayed on a fresh socket")
        self._h_total = metrics.histogram("final_total_ms", "last speech audio → final emitted")
        self._h_stt = metrics.histogram("final_stt_ms", "Finalize → final")
        self._h_endpoint = metrics.histogram("final_endpoint_ms", "last speech audio → endpoint decision")
        self.emit(ev.CallStarted(
            call_sid=self.call_sid, stream_sid=self.stream_sid, account_sid=started.account_id,
            tracks=list(started.tracks), custom_parameters=dict(started.custom_parameters), sample_rate=self.in_rate,
        ))
        if duplicate:
            self._error("duplicate_stream", f"another socket for stream {self.stream_sid} is live; this one's "
                        f"utterance ids start with {self.utterance_prefix}:")

    # -- reader side (synchronous, never blocks) -----------------------------------------------
    def on_event(self, event: MediaEvent) -> None:
        """Audio and the stream's end; DTMF and marks are the application channel's (``media_listener``).

        The reader calls this once per audio chunk: the chunk's work is inlined here (no forwarding layer,
        issue 13). After the call handled an event, every event but audio goes to ``media_listener``, and
        audio to ``audio_listener`` only while one is set (playback's barge-in check: engine/playback_driver.py);
        ``last_audio`` is the latest chunk handled (the inbound position, read only when needed).
        """
        if type(event) is not AudioReceived:
            self._on_other(event)
            return
        payload = event.payload
        size = len(payload)
        frames = size // self._bytes_per_frame or 1  # at least 1 (max(1, ...) without a builtin call per chunk)
        if event.filled:
            self.stats.frames_filled += frames
        else:
            self.stats.frames_received += frames
        if self.batch_payload is not None or self.batch_frames is not None:
            # A second chunk in one wake-up (a late pass, or two frames in one read): it joins the first in
            # the batch when that is exact (_may_join), else the first one's frames are decided first, alone.
            if self.batch_payload is not None and self._may_join():
                joined = self.batch_payload = self.batch_payload + payload  # one decode, its frames in rounds
                packet = self.endpointer.packet
                if packet and not len(joined) % packet:  # whole packets: the batch's packet path (add_packets)
                    self._batch.add_packets(self, joined, len(joined) // packet)  # type: ignore[union-attr]
                self.last_audio = event
                self.metrics.counter("call_chunks_joined_total", _JOINED_HELP).inc()
                return
            self.metrics.counter("call_chunks_alone_total", _ALONE_HELP).inc()
            self._decide_alone()
        batch = self._batch
        if batch is not None and batch.collecting and self._batch_decode:
            self.batch_payload = payload  # decoded with every call of this wake-up (FrameBatch.end)
            if size == self.endpointer.packet:  # one whole frame (Twilio's 20 ms): batch_packet
                batch.add_packet(self, payload)
            else:
                batch.add(self)
        else:
            pcm = self.to_endpointer.process(self._decode(payload))
            if self._raw_ok:
                self._raw = payload
                self._raw_end = self.endpointer.position + len(pcm)
            if batch is not None and batch.collecting:
                ready = self.endpointer.frames_ready(pcm)
                if ready is not None:  # classified with every other call of this wake-up (FrameBatch.end)
                    self.batch_frames = ready
                    batch.add(self)
                else:
                    self._after_endpoint([])
            else:
                self._after_endpoint(self.endpointer.push(pcm, payload if self._batch_decode else None))
        self.last_audio = event
        if self.audio_listener is not None:
            self.audio_listener(event)

    def _may_join(self) -> bool:
        """Whether the next μ-law chunk may join ``batch_payload`` (both decided at the batch's end, in one
        push_decided) with the same events, in the same order, as deciding the waiting one first.

        Exact because, within one reactor pass, nothing but the call's own frames changes its state: the
        endpointer's events do not depend on chunking, ``_raw`` covers both chunks, the stats and ``last_audio``
        are per chunk as before. What would see the state between the chunks is ruled out: the turn tracker
        (``may_end`` False: no turn can end after either chunk, and nothing in a pass makes it True, finals
        settle in their own tasks), and the playback hook: ``audio_listener`` is None, and no SpeechStarted
        can come from the waiting audio (only one could set the hook, which would then get this chunk)."""
        batch = self._batch
        payload = self.batch_payload
        return (batch is not None and batch.collecting and self.audio_listener is None and payload is not None
                and not self.turns.may_end and not self.endpointer.may_start_within(len(payload)))

    def _on_other(self, event: MediaEvent) -> None:
        if self.batch_payload is not None or self.batch_frames is not None:
            self._decide_alone()  # what came before this event is endpointed (and emitted) before it
        if type(event) is StreamStopped:
            assert isinstance(event, StreamStopped)
            self.on_close(event.reason)
        if self.media_listener is not None:
            self.media_listener(event)

    def on_close(self, reason: str) -> None:
        """The stream ended (stop, close, errors): close the open utterance; run() then finishes."""
        if self._closed_reason is not None:
            return
        if self.batch_payload is not None or self.batch_frames is not None:
            self._decide_alone()  # audio before the end, still in the wake-up's batch
        self._closed_reason = reason
        self._handle(self.endpointer.end())
        self._stream_closed.set()

    def _after_endpoint(self, events: list[Any] | tuple[Any, ...]) -> None:
        if events:  # most frames (idle, a quiet line) have none: no call for them
            self._handle(events)
        self._raw = b""
        turns = self.turns
        if turns.may_end:  # False on every frame of speech, and of silence before a final: nothing to compute
            self._advance_turns(turns)

    def _advance_turns(self, turns: TurnTracker) -> None:
        """The turn may end (``may_end``): advance it to the endpointer's position."""
        turn = turns.advance(self.endpointer.position * 1000 / self.ep_rate,
                             continuation_possible=self.endpointer.continuation_possible)
        if turn is not None:
            self._emit_turn(turn)

    # -- batched classification (engine/endpointing/batch.py: one classify_batch per reactor wake-up) --
    def attach_batch(self, batch: FrameBatch | None, failed: Callable[[Exception], None] | None = None) -> None:
        """Classify this call's frames in ``batch`` while it collects (None: alone, at once, as ``push``).
        ``failed`` gets an exception raised while the batch finishes this call's frames (the reader's
        failure path: the call ends as if its reader had raised it)."""
        if batch is None and (self.batch_payload is not None or self.batch_frames is not None):
            self._decide_alone()
        self._batch = batch
        self._batch_failed = failed

    @property
    def batch_classifier(self) -> FrameClassifier:
        return self.endpointer.classifier

    def batch_audio(self, pcm: np.ndarray[Any, np.dtype[np.int16]]) -> None:
        payload = self.batch_payload  # pcm's μ-law codes: the history, stored speech
        self.batch_payload = None
        if payload is not None and self._raw_ok:  # pcm is this payload, decoded (_raw_end: set by batch_decided)
            self._raw = payload
        # pcm is a slice of the wake-up's fresh decode, which nothing else reads or writes: no copy of it.
        ready = self.endpointer.frames_ready(pcm, payload, owned=True)
        if ready is None:
            self._after_endpoint(())
        else:
            self.batch_frames = ready

    def batch_decided(self, decisions: list[bool]) -> None:
        self.batch_frames = None
        ep = self.endpointer
        if not self._raw_ok:  # resampled or L16 audio: every event built and handled
            self._after_endpoint(ep.push_decided(decisions))
            return
        # Per frame of every call (issue 13): an idle frame has no event (NO_EVENTS), and a frame of an utterance
        # under way comes back as None, its SpeechAudio unbuilt: its samples are the payload's codes, _raw.
        events = ep.push_decided_lean(decisions)
        if events is None:
            self._append_raw(self._raw)
        elif events:
            self._raw_end = ep.position  # _raw (if any) is the chunk frames_ready took last
            self._handle(events)
        self._raw = b""
        turns = self.turns
        if turns.may_end:
            self._advance_turns(turns)

    def batch_packet(self, pcm: np.ndarray[Any, np.dtype[np.int16]], speech: bool) -> None:
        """batch_audio and batch_decided in one call for the commonest wait (issue 13): ``batch_payload`` was one
        whole frame (``endpointer.packet``), ``pcm`` its decode, ``speech`` its decision (FrameBatch.add_packet)."""
        payload = self.batch_payload
        self.batch_payload = None
        assert payload is not None
        ep = self.endpointer
        events = ep.push_packet(pcm, payload, speech)
        if events is None:  # a frame of the utterance under way, ending nothing: its codes, as received
            if self._raw_ok:
                self._append_raw(payload)
            else:
                self._handle([SpeechAudio(ep.position - len(pcm), pcm)])
        elif events:
            if self._raw_ok:
                self._raw = payload
                self._raw_end = ep.position
            self._handle(events)
            self._raw = b""
        turns = self.turns
        if turns.may_end:
            self._advance_turns(turns)

    def batch_packets(self, pcms: list[np.ndarray[Any, np.dtype[np.int16]]], speech: list[bool]) -> None:
        """``batch_payload`` was several whole frames (a late pass: a second packet joined the first, FrameBatch.
        add_packets): ``batch_packet`` for each, in order, as if each had come in a wake-up of its own."""
        payload = self.batch_payload
        assert payload is not None
        size = len(payload) // len(pcms)
        at = 0
        for pcm, decision in zip(pcms, speech, strict=True):
            self.batch_payload = payload[at : at + size]
            at += size
            self.batch_packet(pcm, decision)

    def _append_raw(self, raw: bytes) -> None:
        """_append of a whole frame that is exactly the latest payload (``raw``): its codes, stored as received.

        What _append does for ``SpeechAudio(position - frame, decode(raw))``, without building either: the
        call is mono μ-law with no resampling (``_raw_ok``: no STT resampler), so the frame's bytes are raw."""
        utt = self._current
        if utt is None or utt.overflowed:
            return
        size = len(raw) * self.stt_sample_bytes
        headroom = self._headroom - size
        if headroom >= 0:
            self._headroom = headroom
        elif not self._room(utt, size):
            return
        utt.audio.append_mulaw(raw)

    def batch_failed(self, exc: Exception) -> None:
        if self._batch_failed is None:
            raise exc
        self._batch_failed(exc)

    def _decide_alone(self) -> None:
        """What waits in the batch for this call, decided now, alone (the batch then skips this call: its
        classifier sees each frame once); the same steps the batch would take."""
        payload = self.batch_payload
        if payload is not None:
            self.batch_audio(self._decode(payload))
        frames = self.batch_frames
        if frames is not None:
            self.batch_decided(self.endpointer.classifier.classify(frames))

    def _decode_general(self, payload: bytes) -> np.ndarray[Any, np.dtype[np.int16]]:
        """L16 (little-endian) or multi-channel audio → mono int16; a split sample waits for the next chunk."""
        if self._carry:
            payload = self._carry + payload
            self._carry = b""
        if cut := len(payload) % self._frame_bytes:
            self._carry = payload[-cut:]
            payload = payload[:-cut]
        l16 = self.started.encoding == "l16"
        pcm = np.frombuffer(payload, dtype="<i2").astype(np.int16) if l16 else mulaw.decode(payload)
        channels = self.started.channels
        if channels > 1:
            pcm = (pcm.reshape(-1, channels).sum(axis=1, dtype=np.int32) // channels).astype(np.int16)
        return pcm

    def _handle(self, events: list[Any] | tuple[Any, ...]) -> None:
        for event in events:
            kind = type(event)
            if kind is SpeechAudio:  # every frame of speech: first
                self._append(event.pcm, event.start)
            elif kind is SpeechStarted:
                self._start_utterance(event)
            elif kind is SpeechEnded:
                self._end_utterance(event)

    def _ms(self, samples: int) -> float:
        return samples * 1000 / self.ep_rate

    def _start_utterance(self, event: SpeechStarted) -> None:
        index = self.stats.utterances
        self.stats.utterances += 1
        utt = Utterance(index, f"{self.utterance_prefix}:{index}", self._ms(event.preroll_start), self._ms(event.start),
                        continues=self._last_uid if event.continues else None)
        if self._compact:
            utt.audio = UtteranceAudio(mulaw_as_pcm16=True)
        self._current = utt
        self._last_uid = utt.uid
        self._to_stt = None if self.stt_rate == self.ep_rate else Resampler(self.ep_rate, self.stt_rate)
        self.turns.speech_started(continues=utt.continues is not None)
        self.emit(ev.SpeechStarted(call_sid=self.call_sid, stream_sid=self.stream_sid, utterance_id=utt.uid,
                                   start_ms=utt.speech_start_ms, continues=utt.continues))
        self._open.append(utt)
        self._append(event.preroll, event.preroll_start)
        self._spawn(utt)

    def _append(self, pcm: np.ndarray[Any, np.dtype[np.int16]], start: int) -> None:
        """Utterance audio at endpointer position ``start`` into the current utterance's buffer."""
        utt = self._current
        if utt is None or not len(pcm):
            return
        if utt.overflowed:
            return
        if self._to_stt is not None:
            pcm = self._to_stt.process(pcm)
        size = len(pcm) * self.stt_sample_bytes
        headroom = self._headroom - size
        if headroom >= 0:
            self._headroom = headroom
        elif not self._room(utt, size):
            return
        raw = self._raw
        at = start - self._raw_end + len(raw)  # where pcm starts in the latest chunk (raw_ok: 1 byte a sample)
        if at >= 0 and at + len(pcm) <= len(raw):  # the per-frame case: the frame's received bytes
            utt.audio.append_mulaw(raw[at : at + len(pcm)])
        else:  # pre-roll, a frame across chunks, resampled or L16 audio (raw is then empty)
            utt.audio.append_pcm(pcm, mulaw_out=self.stt_mulaw)

    def _room(self, utt: Utterance, size: int) -> bool:
        """The bound by the exact sum, when ``_headroom`` ran out (once per ~audio_buffer_ms of audio while RTZR
        keeps up): True if ``size`` more STT bytes fit (``_headroom`` updated), else the utterance overflows."""
        headroom = self.buffer_limit_bytes - self._unsent_bytes() - size
        if headroom >= 0:
            self._headroom = headroom
            return True
        # One outcome per utterance: this error replaces its transcript; its STT task stops, and a
        # socket it leased is closed (it holds audio whose final would belong to no one).
        self._m_overflow.inc()
        utt.overflowed = True
        if utt.finals:  # RTZR already cut and answered part of it: those finals stay its outcome
            log.warning("call_audio_overflow", call_sid=self.call_sid, utterance_id=utt.uid, finals=utt.finals)
            return False
        utt.scope.cancel()
        self._error("audio_buffer_overflow",
                    f"RTZR is slower than real time: more than {self.config.call.audio_buffer_ms} ms of audio "
                    "waiting to be sent (no socket free, or RTZR too slow); utterance not transcribed", utt)
        return False

    def _unsent_bytes(self) -> int:
        unsent = 0
        for utt in self._open:  # only when _headroom runs out (_append): a plain loop, no generator
            if not utt.overflowed:
                unsent += utt.audio.size - utt.sent
        return unsent

    def _end_utterance(self, event: SpeechEnded) -> None:
        utt = self._current
        if utt is None:
            return
        if self._to_stt is not None:
            tail = self._to_stt.flush()
            self._headroom -= len(tail) * self.stt_sample_bytes
            utt.audio.append_pcm(tail, mulaw_out=self.stt_mulaw)
        utt.reason = event.reason
        utt.endpoint_ms = self._ms(event.end - event.last_speech_end)
        utt.end_ms = self._ms(event.end)
        utt.speech_end_ms = self._ms(event.last_speech_end) - utt.audio_start_ms
        utt.ended_at = trio.current_time()
        utt.audio.close()
        self._current = None
        self.emit(ev.SpeechEnded(call_sid=self.call_sid, stream_sid=self.stream_sid, utterance_id=utt.uid,
                                 last_speech_ms=self._ms(event.last_speech_end), end_ms=utt.end_ms,
                                 reason=event.reason))

    # -- STT side --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Transcribe utterances as they start; return when the stream closed and all are settled."""
        reason = "cancelled"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                waiting, self._unspawned = self._unspawned, []
                for utt in waiting:
                    nursery.start_soon(self._transcribe, utt)
                del waiting
                await self._stream_closed.wait()
                self._nursery = None  # no utterance starts after the stream closed
            reason = self._closed_reason or "closed"
        finally:
            self._nursery = None
            for utt in list(self._open):  # started, but cancelled before its STT task ran
                self._open.remove(utt)
                if not utt.overflowed:  # an overflow already was its outcome
                    self._fail(utt, "cancelled", "the call was cancelled before this utterance was sent to STT")
                self._settle(utt)
            if self.stream_stats is not None:
                self.stats.frames_dropped = self.stream_stats.duplicates + self.stream_stats.reordered
            turn = self.turns.flush()
            if turn is not None:
                self._emit_turn(turn)
            self.emit(ev.CallEnded(
                call_sid=self.call_sid, stream_sid=self.stream_sid, reason=reason,
                duration_ms=round((trio.current_time() - self._started_at) * 1000, 1),
                utterances=self.stats.utterances, finals=self.stats.finals,
                audio_sent_s=round(self.stats.bytes_sent / self.stt_bytes_per_ms / 1000, 3),
                frames_received=self.stats.frames_received, frames_filled=self.stats.frames_filled,
                frames_dropped=self.stats.frames_dropped, errors=self.stats.errors,
            ))
            if self.on_ended is not None:
                self.on_ended()

    async def _transcribe(self, utt: Utterance) -> None:
        settled = False
        try:
            with utt.scope:
                await self._attempts(utt)
            settled = True
        finally:
            if not settled and not utt.overflowed:  # cancelled (drain deadline) or a bug: never lose it silently
                self._fail(utt, "cancelled", "the call was cancelled before this utterance's final arrived; "
                           "utterance not transcribed")
            self._open.remove(utt)
            self._settle(utt)

    async def _attempts(self, utt: Utterance) -> None:
        """Stream once; replay once on a fresh socket if it dies; report what cannot be recovered."""
        for attempt in range(2):
            try:
                await self._stream_once(utt, replay=attempt > 0)
                if not utt.finals:  # Finalize had nothing pending and no final carried text
                    self._emit_empty_final(utt)
                return
            except BudgetExpired as exc:
                if exc.budget == "send" and attempt == 0:
                    self._note_replay(utt, exc)
                    continue
                self._fail(utt, "budget_expired", f"{exc}; utterance not transcribed", budget=exc.budget)
                return
            except SttUnavailable as exc:  # connect failed, saturated, or the stream was lost: replay once
                if attempt == 0:
                    self._note_replay(utt, exc)
                    continue
                self._fail(utt, "stt_failed", f"{type(exc).__name__}: {exc}; utterance not transcribed after replay")
                return
            except Exception as exc:  # e.g. SttAuthError (bad credentials): report it, keep the call alive
                log.error("utterance_failed", call_sid=self.call_sid, utterance_id=utt.uid, exc=exc)
                self._fail(utt, "stt_failed", f"{type(exc).__name__}: {exc}; utterance not transcribed")
                return

    def _note_replay(self, utt: Utterance, exc: Exception) -> None:
        self.stats.replays += 1
        self._m_replays.inc()
        log.warning("utterance_replay", call_sid=self.call_sid, utterance_id=utt.uid, error=f"{type(exc).__name__}: {exc}")

    async def _stream_once(self, utt: Utterance, *, replay: bool) -> None:
        """Lease a socket, send the utterance (on a replay, from the first byte RTZR has not answered yet),
        Finalize, wait for the final."""
        utt.sent = utt.audio.start
        self._headroom = 0  # a replay sends again what was sent: the unsent bytes rose (_append)
        async with self.pool.lease() as lease:  # bounded by budgets.lease inside the pool
            attempt = _Attempt(lease, replay, offset=utt.sent)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_results, utt, attempt)
                try:
                    await self._send_and_finalize(utt, attempt)
                except Exception as exc:  # surfaces below, outside the nursery, as a plain exception
                    attempt.failure = attempt.failure or exc
                nursery.cancel_scope.cancel()
            if attempt.failure is not None:
                raise attempt.failure

    async def _receive_results(self, utt: Utterance, attempt: _Attempt) -> None:
        """Route this lease's results to events; note the final that answers our Finalize."""
        try:
            receive = attempt.lease.receive
            while True:  # no local keeps the last result (and its words) alive while waiting for the next
                if self._on_received(utt, attempt, await receive()):
                    attempt.closing_final.set()
        except Exception as exc:
            attempt.failure = attempt.failure or exc
            attempt.closing_final.set()
            utt.audio.wake()  # the sender may be waiting for audio: it stops now, not at the next batch

    async def _send_and_finalize(self, utt: Utterance, attempt: _Attempt) -> None:
        """Stream the utterance's audio in batches as it arrives, then Finalize and await the final.

        With a lease that can send from synchronous code (:class:`engine.stt.PushLease`, RTZR's), each batch
        that completes while this task waits is written by the appender itself (``push``, called from
        ``UtteranceAudio.append`` in the Twilio reader's pass): no wake-up of this task per 100 ms message.
        The task wakes only when a push cannot be done at once (another write in progress, a partly written
        message, a failure, the utterance closed or cancelled), and then sends as before.
        """
        audio = utt.audio
        lease = attempt.lease
        batch = self.batch_bytes
        max_batch = max(batch, int(100 * self.stt_bytes_per_ms))
        stats = self.stats
        send_nowait: Callable[[bytes], int] | None = getattr(lease, "send_audio_nowait", None)
        push: Callable[[], int | None] | None = None
        pushed: PushLease | None = None
        if send_nowait is not None:
            pushed = cast("PushLease", lease)
            scope = utt.scope

            def push() -> int | None:
                # Runs inside the reader's append, once per batch: never raises, never awaits; None hands over to
                # this task (which then also flushes a tail the push left: 2, or an older lessee's True with it).
                if attempt.failure is not None or scope.cancel_called:
                    return None
                try:
                    chunk = audio.read(utt.sent, max_batch)
                    state = send_nowait(chunk)
                except Exception:  # the awaited path meets it again and reports it
                    return None
                if not state:
                    return None
                sent = utt.sent = utt.sent + len(chunk)
                stats.bytes_sent += len(chunk)
                return sent + batch if state == 1 else None

        while attempt.failure is None:
            if pushed is not None and pushed.write_pending:
                await pushed.flush()  # a pushed message the kernel took only part of
            available = audio.size - utt.sent
            if available >= batch or (audio.closed and available > 0):
                chunk = audio.read(utt.sent, max_batch)
                await lease.send_audio(chunk)
                utt.sent += len(chunk)
                stats.bytes_sent += len(chunk)
                # Not kept by this frame while it waits below (with a push: the utterance's whole life): 100 ms
                # of audio per open utterance otherwise (issue 13, memory per call).
                del chunk
                continue
            if audio.closed:
                break
            # Woken once the next batch is there (or at the close, or by a failure): not per 20 ms frame;
            # with a push, only when the push could not send it.
            await audio.wait_for(utt.sent + batch, push)
        if attempt.failure is not None:
            return
        attempt.finalize_at = trio.current_time()
        speech_end_ms = None
        if not utt.overflowed and utt.speech_end_ms is not None:  # on this lease's timeline
            speech_end_ms = max(0.0, utt.speech_end_ms - attempt.offset / self.stt_bytes_per_ms)
        if await attempt.lease.finalize(speech_end_ms):
            with self.budgets.finalize():
                await attempt.closing_final.wait()

    def _on_received(self, utt: Utterance, attempt: _Attempt, result: SttResult) -> bool:
        """One result of this lease; True when it is the final that answers our Finalize."""
        self._on_result(utt, attempt, result, closing=result.closes)
        return result.closes

    def _on_result(self, utt: Utterance, attempt: _Attempt, result: SttResult, *, closing: bool) -> None:
        """Partials as they come; finals with text; the closing final always (empty if nothing was heard),
        so every ``speech.started`` is answered by a ``transcript.final`` or an ``error``."""
        if utt.overflowed and not utt.finals:
            return
        start_ms = utt.audio_start_ms + attempt.offset / self.stt_bytes_per_ms + result.start_ms
        if not result.final:
            self.emit(ev.TranscriptPartial(call_sid=self.call_sid, stream_sid=self.stream_sid, utterance_id=utt.uid,
                                           text=result.text, start_ms=round(start_ms, 1)))
            return
        end_ms = start_ms + result.duration_ms
        if not closing:
            # RTZR cut the utterance itself: the audio before this final is answered, so a replay need
            # not send it again (engine/utterance.py); a timestamp tolerance of margin, whole blocks only.
            answered = result.start_ms + result.duration_ms - self._release_margin_ms
            utt.audio.release_before(min(utt.sent, attempt.offset + int(answered * self.stt_bytes_per_ms)))
        if end_ms <= utt.finals_emitted_until_ms or not (result.text or (closing and not utt.finals)):
            return  # already emitted before a replay, or an empty final that closes nothing
        utt.finals_emitted_until_ms = end_ms
        latency = None
        if closing and attempt.finalize_at is not None:
            now = trio.current_time()
            stt_ms = (now - attempt.finalize_at) * 1000
            total_ms = utt.endpoint_ms + (now - utt.ended_at) * 1000
            latency = ev.Latency(endpoint_ms=round(utt.endpoint_ms, 1), lease_ms=round(attempt.lease.lease_ms, 1),
                                 stt_ms=round(stt_ms, 1), total_ms=round(total_ms, 1))
            self._h_total.observe(total_ms)
            self._h_stt.observe(stt_ms)
            self._h_endpoint.observe(utt.endpoint_ms)
        source: ev.FinalSource = "finalize"
        if not closing:
            source = "server_endpoint"
        elif utt.reason == "end_of_stream":
            source = "end_of_stream"
        words = None
        if result.words:
            # word times are relative to the result's start (RTZR's example: first word at 0)
            words = [ev.Word(text=w.text, start_ms=round(start_ms + w.start_at, 1),
                             end_ms=round(start_ms + w.start_at + w.duration, 1), confidence=w.confidence)
                     for w in result.words]
        socket_info = getattr(attempt.lease, "socket_info", None)  # issue 15: absent on test doubles
        utt.finals += 1
        self.stats.finals += 1
        self._m_finals.inc()
        self._emit_outcome(utt, ev.TranscriptFinal(
            call_sid=self.call_sid, stream_sid=self.stream_sid, utterance_id=utt.uid, text=result.text,
            confidence=result.confidence, start_ms=round(start_ms, 1), end_ms=round(end_ms, 1), words=words,
            latency=latency, source=source, pool_hit=attempt.lease.pool_hit, replayed=attempt.replay,
            continues=utt.continues, socket=socket_info() if callable(socket_info) else None,
        ))

    def _emit_empty_final(self, utt: Utterance) -> None:
        """Close an utterance that RTZR heard nothing in (its Finalize had nothing pending)."""
        utt.finals += 1
        self.stats.finals += 1
        self._emit_outcome(utt, ev.TranscriptFinal(
            call_sid=self.call_sid, stream_sid=self.stream_sid, utterance_id=utt.uid, text="", confidence=None,
            start_ms=round(utt.speech_start_ms, 1), end_ms=round(utt.end_ms, 1),
            source="end_of_stream" if utt.reason == "end_of_stream" else "finalize", continues=utt.continues,
        ))

    def _spawn(self, utt: Utterance) -> None:
        """Start the utterance's STT task in run()'s nursery (or hold it until run() opens one)."""
        nursery = self._nursery
        if nursery is None:
            self._unspawned.append(utt)
        else:
            nursery.start_soon(self._transcribe, utt)

    # -- events ------------------------------------------------------------------------------------
    def _fail(self, utt: Utterance, kind: str, message: str, *, budget: str | None = None) -> None:
        """An utterance's STT failed. One outcome per utterance: if RTZR already delivered finals for it (it
        cut the utterance itself), those finals stay its outcome and the failure is counted and logged."""
        if not utt.finals:
            self._error(kind, message, utt, budget=budget)
            return
        self._m_incomplete.inc()
        log.warning("utterance_final_incomplete", call_sid=self.call_sid, utterance_id=utt.uid, finals=utt.finals,
                    kind=kind, budget=budget, message=message)

    def _error(self, kind: str, message: str, utt: Utterance | None = None, *, budget: str | None = None) -> None:
        self.stats.errors += 1
        self._m_errors.inc()
        log.warning("call_error", call_sid=self.call_sid, kind=kind, budget=budget,
                    utterance_id=utt.uid if utt else None, message=message)
        event = ev.ErrorEvent(call_sid=self.call_sid, stream_sid=self.stream_sid, kind=kind, message=message,
                              budget=budget, utterance_id=utt.uid if utt else None)
        if utt is None:  # not an utterance's outcome: at once
            self.emit(event)
        else:
            self._emit_outcome(utt, event)

    def _emit_outcome(self, utt: Utterance, event: ev.Event) -> None:
        """Emit a final or terminal error now if every earlier utterance has settled, else hold it."""
        if utt.index == self._head:
            self._deliver(event, None)
        else:
            self._held.setdefault(utt.index, []).append((event, trio.current_time()))

    def _settle(self, utt: Utterance) -> None:
        """The utterance has its final or error: release held outcomes of the utterances after it."""
        self.turns.utterance_done()
        # The set lives only while an utterance settled before an earlier one (issue 13: 216 B a call).
        settled = self._settled or set()
        settled.add(utt.index)
        self._settled = settled
        while self._head in settled:
            settled.discard(self._head)
            self._head += 1
            for event, held_since in self._held.pop(self._head, ()):
                self._deliver(event, held_since)
        if not settled and self._settled is settled:
            self._settled = None
        if not self._open:  # end of call, or cancelled: nothing earlier can still arrive
            for index in sorted(self._held):
                for event, held_since in self._held.pop(index):
                    self._deliver(event, held_since)

    def _deliver(self, event: ev.Event, held_since: float | None) -> None:
        if isinstance(event, ev.TranscriptFinal):
            if held_since is not None and event.latency is not None:  # total_ms includes the wait for order
                waited = (trio.current_time() - held_since) * 1000
                event.latency.total_ms = round(event.latency.total_ms + waited, 1)
            self.turns.add_final(event.utterance_id, event.text, event.start_ms, event.end_ms)
        self.emit(event)

    def _emit_turn(self, turn: Any) -> None:
        self.emit(ev.TurnEnded(call_sid=self.call_sid, stream_sid=self.stream_sid, text=turn.text,
                               utterance_ids=turn.utterance_ids, start_ms=round(turn.start_ms, 1),
                               end_ms=round(turn.end_ms, 1)))

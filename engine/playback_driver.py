"""One call's outbound audio in Trio: :class:`CallControl`, the per-call handle behind both the embedding
API (``engine.control(stream_sid)``) and the application channel.

Thin shell around :class:`engine.playback.PlaybackCore`: commands (``play``, ``mark``, ``clear``, ``stop``)
change the core synchronously and wake one task per call, which sends what the core says is due through
the Twilio session (``send_media``/``send_mark``/``clear``, each under ``budgets.send``) and sleeps until
the next frame is due. Twilio's inbound ``mark`` echoes and ``dtmf`` keys, and the engine's
``speech.started`` (barge-in), come in through :meth:`on_media_event` (the provider's neutral events,
engine/media.py) and :meth:`on_engine_event`.
Every playback notice becomes an event on the engine's one emit path (sinks and application channel).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import trio

from engine import events as ev
from engine import media
from engine.audio import mulaw
from engine.audio.resample import Resampler
from engine.config import PlaybackConfig
from engine.log import get_logger
from engine.media import AudioReceived, DtmfReceived, MediaEvent
from engine.metrics import Registry
from engine.playback import (
    Finished,
    Interrupted,
    InterruptReason,
    MarkReached,
    Notice,
    Output,
    PlaybackCore,
    PlaybackError,
    SendClear,
    SendMark,
    SendMedia,
    Started,
)

log = get_logger(__name__)

Encoding = Literal["mulaw", "pcm16"]
MIN_RATE, MAX_RATE = 4000, 192_000
START_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class OutboundSession(Protocol):
    """The Twilio session as playback sees it (``engine.twilio.server.TwilioSession`` satisfies it)."""

    @property
    def stream_sid(self) -> str: ...

    @property
    def call_sid(self) -> str: ...

    async def send_media(self, audio: bytes) -> bool: ...

    async def send_mark(self, name: str) -> bool: ...

    async def clear(self) -> bool: ...

    def end(self, reason: str) -> None: ...


class NowaitSession(OutboundSession, Protocol):
    """A session that can also write from synchronous code (``engine.twilio.server.TwilioSession`` can): a
    play on an idle call then writes its first frames from the command itself, with no wake-up of the call's
    playback task in between (that wake-up waits for a whole scheduler pass: every call's reads at 100 calls)."""

    def send_media_nowait(self, audio: bytes) -> bool: ...

    def send_mark_nowait(self, name: str) -> bool: ...

    @property
    def send_pending(self) -> bool: ...

    async def flush(self) -> bool: ...


def to_mulaw8k(audio: bytes | npt.NDArray[np.int16], encoding: Encoding = "mulaw", sample_rate: int = 8000) -> bytes:
    """Application audio → μ-law 8 kHz: μ-law must be 8 kHz; PCM16 (little-endian) at any rate is resampled (soxr)."""
    if isinstance(audio, np.ndarray):
        pcm = np.asarray(audio, dtype=np.int16)
        encoding = "pcm16"
    elif encoding == "mulaw":
        if sample_rate != 8000:
            raise PlaybackError("bad_audio", f"mulaw audio must be 8000 Hz, got {sample_rate}")
        return bytes(audio)
    elif encoding == "pcm16":
        if len(audio) % 2:
            raise PlaybackError("bad_audio", "pcm16 audio must have an even number of bytes")
        pcm = np.frombuffer(audio, dtype="<i2").astype(np.int16)
    else:
        raise PlaybackError("bad_audio", f"unknown encoding {str(encoding)[:32]!r} (mulaw or pcm16)")
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise PlaybackError("bad_audio", f"sample_rate {sample_rate} outside {MIN_RATE}..{MAX_RATE}")
    if sample_rate != 8000 and len(pcm):
        resampler = Resampler(sample_rate, 8000)
        pcm = np.concatenate([resampler.process(pcm), resampler.flush()])
    return mulaw.encode(pcm)


class CallControl:
    """The application's handle on one call: ``play``, ``mark``, ``clear``, ``stop`` (async, or ``*_nowait``).

    Commands never raise for the call's state (a call that ended ignores them); a bad command raises
    :class:`~engine.playback.PlaybackError` to its caller only.
    """

    def __init__(self, session: OutboundSession, config: PlaybackConfig, emit: Callable[[ev.Event], None],
                 metrics: Registry, *, bytes_per_ms: float = 8.0) -> None:
        self.session = session
        self._bytes_per_ms = bytes_per_ms  # of the inbound stream (8: Twilio's μ-law 8 kHz), for its position
        self.config = config
        self.stream_sid = session.stream_sid
        self.call_sid = session.call_sid
        self._emit = emit
        self.core = PlaybackCore(lead_ms=config.lead_ms, max_queued_ms=config.max_queued_ms)
        self._outbox: list[Output] = []  # not a deque: 0.7 KiB per idle call (issue 13); a few frames at a time
        self._wake = trio.Event()
        self._closed = False
        self._stopping = False  # stop() was called: commands are refused from now on
        self._end_requested = False
        # The inbound audio's position (its end on the call timeline) is read from the latest chunk only when
        # barge-in is checked: ``audio_source`` (the Call, which keeps its latest chunk) when one is wired
        # (ControlledCall), else the chunks given to on_media_event. While no speech may barge in, nothing
        # of this runs per frame: ``wants_audio`` is told whenever that changes, and ControlledCall only
        # hands the call's audio to on_media_event while it is True (issue 13).
        self._last_audio: AudioReceived | None = None
        self.audio_source: AudioSource | None = None
        self.wants_audio: Callable[[bool], None] | None = None
        self._speech: tuple[str, float] | None = None  # (utterance_id, start_ms) that may barge in
        self._m_frames = metrics.counter("playback_frames_total", "20 ms frames of application audio sent to Twilio")
        self._m_barge = metrics.counter("playback_barge_in_total", "playbacks cleared because the caller spoke")
        self._m_plays = metrics.counter("playback_started_total", "playbacks started")
        self._h_start = metrics.histogram("playback_start_ms", "play command accepted → its first frame written to "
                                          "Twilio (when nothing was playing)", buckets=START_BUCKETS_MS)
        self._queued_at: dict[str, float] = {}  # playback_id -> when play was accepted, while nothing played
        self._nowait: NowaitSession | None = session if all(
            hasattr(session, name) for name in ("send_media_nowait", "send_mark_nowait", "send_pending", "flush")
        ) else None  # type: ignore[assignment]
        self._deferred: list[Notice] = []  # notices of a play written from the command, emitted by the task
        # The task runs only once a command needs it (run_on_demand): until the application plays, marks, clears
        # or stops, a call's control has no task (issue 13: a task waiting for nothing weighed ≈ 2 KiB per call).
        self._starter: Callable[[], None] | None = None
        self._poked = False

    @property
    def closed(self) -> bool:
        return self._closed

    # -- commands ------------------------------------------------------------------------------------
    def play_nowait(self, audio: bytes | npt.NDArray[np.int16], *, encoding: Encoding = "mulaw",
                    sample_rate: int = 8000, playback_id: str | None = None) -> str:
        """Queue audio (μ-law 8 kHz, PCM16 bytes at ``sample_rate``, or an int16 array); returns its playback id."""
        data = to_mulaw8k(audio, encoding, sample_rate)
        if self._closed or self._stopping:
            raise PlaybackError("call_ended", "play: the call has ended")
        idle = not self.core.active
        pid = self.core.play(data, playback_id)
        if idle:
            self._queued_at[pid] = trio.current_time()
            self._send_due_now()
        self._poke()
        return pid

    def _send_due_now(self) -> None:
        """Write what is due at once from here (synchronously) when the session can and nothing is waiting in
        the outbox (order); whatever cannot go now stays, in order, for the task."""
        session = self._nowait
        if session is None or self._outbox or self._closed:
            return
        now = trio.current_time()
        outputs, notices = self.core.poll(now)
        # Not emitted from inside the command (an on_event callback that plays would be re-entered): the
        # task emits them when it wakes, and any other notice first emits these (their order is kept).
        self._deferred.extend(notices)
        for i, out in enumerate(outputs):
            if type(out) is SendMedia:
                assert isinstance(out, SendMedia)
                ok = session.send_media_nowait(out.payload)
                if ok:
                    self._m_frames.inc(len(out.payload) // 160)
            elif type(out) is SendMark:
                assert isinstance(out, SendMark)
                ok = session.send_mark_nowait(out.name)
            else:
                ok = False
            if not ok:
                self._outbox.extend(outputs[i:])
                break
        for n in notices:
            if isinstance(n, Started) and (at := self._queued_at.pop(n.playback_id, None)) is not None:
                self._h_start.observe((trio.current_time() - at) * 1000)

    def mark_nowait(self, name: str) -> None:
        if self._closed or self._stopping:
            raise PlaybackError("call_ended", "mark: the call has ended")
        self.core.mark(name)
        self._poke()

    def clear_nowait(self, reason: InterruptReason = "clear") -> None:
        if self._closed:
            return
        outputs, notices = self.core.clear(trio.current_time(), reason)
        self._queued_at.clear()
        self._outbox.clear()  # frames not yet written are dropped with the rest
        self._outbox.extend(outputs)
        self._notify(notices)
        self._poke()

    def stop_nowait(self) -> None:
        """Clear playback and end the media stream (the Twilio WebSocket is closed with 1000)."""
        if self._closed or self._stopping:
            return
        self.clear_nowait("stop")
        self._stopping = True
        self._poke()

    async def play(self, audio: bytes | npt.NDArray[np.int16], *, encoding: Encoding = "mulaw",
                   sample_rate: int = 8000, playback_id: str | None = None) -> str:
        pid = self.play_nowait(audio, encoding=encoding, sample_rate=sample_rate, playback_id=playback_id)
        await trio.lowlevel.checkpoint()
        return pid

    async def mark(self, name: str) -> None:
        self.mark_nowait(name)
        await trio.lowlevel.checkpoint()

    async def clear(self) -> None:
        self.clear_nowait()
        await trio.lowlevel.checkpoint()

    async def stop(self) -> None:
        self.stop_nowait()
        await trio.lowlevel.checkpoint()

    # -- inputs from the call ------------------------------------------------------------------------
    def on_media_event(self, event: MediaEvent) -> None:
        """From the reader (synchronous): audio position, mark echoes, keys."""
        kind = type(event)
        if kind is AudioReceived:
            assert isinstance(event, AudioReceived)
            self._last_audio = event
            if self._speech is not None:
                self._check_barge_in()
        elif kind is media.MarkReached:  # the provider echoed a mark (engine.playback.MarkReached is the notice)
            assert isinstance(event, media.MarkReached)
            self._notify(self.core.on_mark_echo(event.name))
        elif kind is DtmfReceived:
            assert isinstance(event, DtmfReceived)
            self._emit(ev.Dtmf(call_sid=self.call_sid, stream_sid=self.stream_sid, digit=event.digit))

    def on_engine_event(self, event: ev.Event) -> None:
        """Every event the call emitted (after it went out): speech starts and ends, for barge-in."""
        if isinstance(event, ev.SpeechStarted):
            # Only speech that starts over playing audio barges in (not an answer queued while the caller talks).
            self._set_speech((event.utterance_id, event.start_ms) if self.config.barge_in and self.core.active else None)
            if self._speech is not None:
                self._check_barge_in()
        elif isinstance(event, ev.SpeechEnded) and self._speech is not None and self._speech[0] == event.utterance_id:
            self._set_speech(None)

    def _set_speech(self, speech: tuple[str, float] | None) -> None:
        was = self._speech is not None
        self._speech = speech
        if was is not (speech is not None) and self.wants_audio is not None:
            self.wants_audio(speech is not None)

    def position_ms(self) -> float:
        """End of the inbound audio seen so far, on the call timeline (0 before any)."""
        audio = self._last_audio if self.audio_source is None else self.audio_source.last_audio
        return 0.0 if audio is None else audio.timestamp_ms + len(audio.payload) / self._bytes_per_ms

    def _check_barge_in(self) -> None:
        assert self._speech is not None
        if self.position_ms() - self._speech[1] < self.config.barge_in_min_speech_ms:
            return
        self._set_speech(None)
        if self.core.active and not self._closed:
            self._m_barge.inc()
            self.clear_nowait("barge_in")

    def _poke(self) -> None:
        """A command left work for the task: wake it, starting it first if it runs on demand and has not yet."""
        self._poked = True
        start, self._starter = self._starter, None
        if start is not None:
            with contextlib.suppress(RuntimeError):  # its nursery closed: the call is ending, close() follows
                start()
        self._wake.set()

    def run_on_demand(self, start: Callable[[], None]) -> None:
        """Have ``start`` start the task (:meth:`run`) at the first command, or now if one came already."""
        if self._closed:
            return
        if self._poked:
            start()
        else:
            self._starter = start

    def close(self) -> None:
        """The stream ended: whatever was queued or playing is interrupted (``call_ended``); nothing more is sent."""
        self._starter = None
        if self._closed:
            return
        _, notices = self.core.clear(trio.current_time(), "call_ended", send=False)
        self._notify(notices)
        self._closed = True
        self._outbox.clear()
        self._wake.set()

    # -- the task ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Send what is due, sleep until the next frame or a command; return when the call closed."""
        while not self._closed:
            now = trio.current_time()
            outputs, notices = self.core.poll(now)
            self._outbox.extend(outputs)
            self._notify(notices)
            if not await self._flush():
                self._closed = True  # the socket is gone or stalled: the call is ending
                return
            if self._queued_at and any(isinstance(n, Started) for n in notices):
                now = trio.current_time()
                for n in notices:
                    if isinstance(n, Started) and (at := self._queued_at.pop(n.playback_id, None)) is not None:
                        self._h_start.observe((now - at) * 1000)
            if self._stopping and not self._end_requested:
                self._end_requested = True
                self.session.end("app_stop")
            if self._closed:  # closed while a send was in flight: close()'s wake-up is already spent
                return
            due = self.core.next_due(trio.current_time())
            if due is not None and due <= trio.current_time():
                continue
            self._wake = trio.Event()
            with trio.move_on_at(math.inf if due is None else due):
                await self._wake.wait()

    async def _flush(self) -> bool:
        outbox = self._outbox
        session = self.session
        if self._nowait is not None and self._nowait.send_pending and not await self._nowait.flush():
            return False
        while outbox and not self._closed:
            out = outbox.pop(0)
            if type(out) is SendMedia:
                assert isinstance(out, SendMedia)
                ok = await session.send_media(out.payload)
                self._m_frames.inc(len(out.payload) // 160)
            elif type(out) is SendMark:
                assert isinstance(out, SendMark)
                ok = await session.send_mark(out.name)
            else:
                assert isinstance(out, SendClear)
                ok = await session.clear()
            if not ok:
                return False
        return True

    def _notify(self, notices: list[Notice]) -> None:
        if self._deferred:
            notices, self._deferred = self._deferred + notices, []
        sid, cid = self.stream_sid, self.call_sid
        for n in notices:
            event: ev.Event
            if isinstance(n, Started):
                self._m_plays.inc()
                event = ev.PlaybackStarted(call_sid=cid, stream_sid=sid, playback_id=n.playback_id,
                                           duration_ms=n.duration_ms)
            elif isinstance(n, Finished):
                event = ev.PlaybackFinished(call_sid=cid, stream_sid=sid, playback_id=n.playback_id,
                                            duration_ms=n.duration_ms)
            elif isinstance(n, Interrupted):
                event = ev.PlaybackInterrupted(call_sid=cid, stream_sid=sid, playback_id=n.playback_id,
                                               played_ms=n.played_ms, duration_ms=n.duration_ms, reason=n.reason)
            else:
                assert isinstance(n, MarkReached)
                event = ev.MarkReached(call_sid=cid, stream_sid=sid, name=n.name, cleared=n.cleared)
            self._emit(event)


class ControlledCall:
    """A call handler with its :class:`CallControl`: the call's events go to both, the control's task runs
    beside the call's from the application's first command on (none while the application never played:
    :meth:`CallControl.run_on_demand`), and the control closes when the stream does (before the call emits
    ``call.ended``).

    A call that has listeners (:class:`ListenedCall`, as :class:`engine.call.Call`) is given the control's
    ``on_media_event`` as its listener and ``on_event`` *is* the call's own: per audio frame no layer runs
    here, and the call hands a frame to the control only while the control wants audio (speech that may
    barge in: issue 13); marks and keys always reach it. Any other call gets every event through here.
    """

    def __init__(self, call: CallHandlerLike, control: CallControl, on_ended: Callable[[], None] | None = None) -> None:
        self.call = call
        self.control = control
        self.on_ended = on_ended
        self.on_event: Callable[[MediaEvent], None]
        if all(hasattr(call, name) for name in ("media_listener", "audio_listener", "last_audio")):
            listened: ListenedCall = call  # type: ignore[assignment]
            listened.media_listener = control.on_media_event
            control.audio_source = listened
            control.wants_audio = self._wants_audio
            self.on_event = call.on_event
        else:
            self.on_event = self._both

    def _wants_audio(self, wanted: bool) -> None:
        listened: ListenedCall = self.call  # type: ignore[assignment]
        listened.audio_listener = self.control.on_media_event if wanted else None

    def _both(self, event: MediaEvent) -> None:
        self.call.on_event(event)
        self.control.on_media_event(event)

    async def run(self) -> None:
        """The call's work; the control's task, once a command needs it, runs beside this task in the nursery
        that started it (the server's per-call nursery: no nursery of its own, ≈ 1.5 KiB a call, issue 13), and
        ends on its own once the control is closed (at the latest here). Run as a process's root task (no such
        nursery), it gets a nursery of its own."""
        task = trio.lowlevel.current_task()
        nursery = task.parent_nursery
        if nursery is None or task is trio.lowlevel.current_root_task():
            async with trio.open_nursery() as own:
                own.start_soon(self.run)  # there, the nursery that started it is ``own``
            return
        try:
            self.control.run_on_demand(functools.partial(nursery.start_soon, self._run_control))
            await self.call.run()
            self.control.close()
        finally:
            self._ended()

    async def _run_control(self) -> None:
        """Playback failing (a bug) ends playback, never the call's transcription."""
        try:
            await self.control.run()
        except Exception as exc:
            log.error("playback_failed", stream_sid=self.control.stream_sid, exc=exc)
            self.control.close()

    def on_close(self, reason: str) -> None:
        self._ended()
        self.call.on_close(reason)

    def _ended(self) -> None:
        """Once: the control is closed and unregistered before the call can emit ``call.ended``."""
        self.control.close()
        if self.on_ended is not None:
            on_ended, self.on_ended = self.on_ended, None
            on_ended()

    def attach_batch(self, batch: Any, failed: Callable[[Exception], None] | None = None) -> None:
        """The reactor's per-wake-up batch (issue 13), for the call when it can use one (``Call.attach_batch``)."""
        attach = getattr(self.call, "attach_batch", None)
        if attach is not None:
            attach(batch, failed)


class AudioSource(Protocol):
    @property
    def last_audio(self) -> AudioReceived | None: ...


class ListenedCall(Protocol):
    """A call that reports its media events after handling them (:class:`engine.call.Call`): every event but
    audio to ``media_listener``, audio to ``audio_listener`` while it is set; ``last_audio`` is the latest
    audio chunk it handled."""

    media_listener: Callable[[MediaEvent], None] | None
    audio_listener: Callable[[MediaEvent], None] | None
    last_audio: AudioReceived | None


class CallHandlerLike(Protocol):
    def on_event(self, event: MediaEvent) -> None: ...

    async def run(self) -> None: ...

    def on_close(self, reason: str) -> None: ...

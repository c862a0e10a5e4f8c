"""Outbound audio of one call, sans-IO: a queue of 20 ms frames and marks, paced against a clock.

:class:`PlaybackCore` is a pure state machine (no I/O; the caller passes ``now``, in seconds on any
monotonic clock). The Trio shell (:mod:`engine.playback_driver`) asks it what to send (:meth:`poll`),
sends that to Twilio, and sleeps until :meth:`next_due`. Both the application channel and the
embedding API drive one call's playback through the same core.

Pacing invariant (the block the rest relies on): ``_play_end`` is the time at which every frame sent
so far will have finished playing, assuming Twilio plays audio as it arrives, back to back. A frame is
sent only while ``_play_end - now < lead``, so at most ``lead`` seconds of audio are ever queued in
Twilio (a ``clear`` then drops at most that much; Twilio's buffer is never flooded). When nothing is
playing, ``_play_end`` falls behind ``now`` and restarts at ``now`` with the next frame, so the first
frame of an answer goes out at once.

Marks: every mark sori sends to Twilio has a wire name of its own (``sori-<n>``), mapped here to what it
stands for: an application mark (reported as ``mark`` when Twilio echoes it, i.e. when the audio before
it has played) or the end of a playback (reported as ``playback.finished``). Each playback gets exactly
one terminal notice: finished, or interrupted (clear, barge-in, stop, call end) with the ms played,
estimated from the pacing clock (Twilio reports no position). A clear reports at once every mark not yet
echoed (``cleared=True``); Twilio's later echoes of those names are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

FRAME_BYTES: Final = 160  # 20 ms of μ-law at 8 kHz
FRAME_S: Final = 0.020
SILENCE: Final = 0xFF
WIRE_MARK_PREFIX: Final = "sori-"

InterruptReason = Literal["clear", "barge_in", "stop", "call_ended"]


# -- what the core asks the shell to send ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendMedia:
    payload: bytes  # one or more whole 20 ms μ-law frames


@dataclass(frozen=True, slots=True)
class SendMark:
    name: str  # the wire name (``sori-<n>``)


@dataclass(frozen=True, slots=True)
class SendClear:
    pass


Output = SendMedia | SendMark | SendClear


# -- what the core reports (the shell turns these into events) ------------------------------------
@dataclass(frozen=True, slots=True)
class Started:
    playback_id: str
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Finished:
    playback_id: str
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Interrupted:
    playback_id: str
    played_ms: float
    duration_ms: float
    reason: InterruptReason


@dataclass(frozen=True, slots=True)
class MarkReached:
    name: str
    cleared: bool  # True: dropped by a clear before its audio played (Twilio's echo on clear)


Notice = Started | Finished | Interrupted | MarkReached


class PlaybackError(ValueError):
    """A command the core refuses (the call goes on); ``code`` names the reason for the application."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Playback:
    pid: str
    frames: int  # total 20 ms frames
    audio: bytes
    sent: int = 0  # frames sent
    start_at: float | None = None  # pacing-clock time its first frame starts playing


@dataclass(slots=True)
class _Mark:
    name: str  # the application's name


@dataclass(slots=True)
class _EndOf:
    playback: _Playback


class PlaybackCore:
    """One call's outbound audio: ``play``/``mark``/``clear`` in, ``poll(now)`` → sends and notices."""

    def __init__(self, *, lead_ms: int = 60, max_queued_ms: int = 300_000, frames_per_message: int = 1) -> None:
        self.lead_s = lead_ms / 1000
        self.max_queued_frames = max_queued_ms // 20
        self.frames_per_message = max(1, frames_per_message)
        # A list, not a deque: an idle call's empty deque weighed 0.7 KiB (issue 13); a few items, popped from the front.
        self._queue: list[_Playback | _Mark] = []
        self._queued_frames = 0
        self._current: _Playback | None = None  # the playback whose frames are being sent
        self._play_end = 0.0
        self._wire: dict[str, _Mark | _EndOf] = {}  # marks sent, not yet echoed (insertion = wire order)
        self._next_wire = 0
        self._unfinished: dict[str, _Playback] = {}  # sent at least partly, not yet finished/interrupted
        self._ids = 0
        self.frames_sent = 0
        self.stale_echoes = 0

    # -- commands ---------------------------------------------------------------------------------
    def play(self, audio: bytes, playback_id: str | None = None) -> str:
        """Queue μ-law 8 kHz audio (padded with silence to whole frames); returns the playback id."""
        if not audio:
            raise PlaybackError("empty_audio", "play: no audio")
        frames = -(-len(audio) // FRAME_BYTES)
        if self._queued_frames + frames > self.max_queued_frames:
            raise PlaybackError("queue_full", f"play: more than {self.max_queued_frames * 20} ms of audio would be queued")
        self._ids += 1
        pid = playback_id or f"p{self._ids}"
        if pid in self._active_ids():
            raise PlaybackError("duplicate_id", f"play: playback {pid[:64]!r} is already queued or playing")
        if rest := len(audio) % FRAME_BYTES:
            audio += bytes([SILENCE]) * (FRAME_BYTES - rest)
        self._queue.append(_Playback(pid, frames, audio))
        self._queued_frames += frames
        return pid

    def _active_ids(self) -> set[str]:
        ids = set(self._unfinished)
        ids.update(item.pid for item in self._queue if isinstance(item, _Playback))
        if self._current is not None:
            ids.add(self._current.pid)
        return ids

    def mark(self, name: str) -> None:
        """Queue a mark: reported when the audio queued before it has played."""
        if not name:
            raise PlaybackError("bad_mark", "mark: a name is required")
        self._queue.append(_Mark(name))

    def clear(self, now: float, reason: InterruptReason = "clear", *, send: bool = True) -> tuple[list[Output], list[Notice]]:
        """Drop everything queued and playing; ``send=False`` when the stream is gone (no ``clear`` to send)."""
        notices: list[Notice] = []
        outputs: list[Output] = [SendClear()] if send and (self._wire or self._current or self._unfinished) else []
        interrupted = list(self._unfinished.values())
        if self._current is not None and self._current.sent == 0:
            interrupted.append(self._current)
        interrupted.extend(item for item in self._queue if isinstance(item, _Playback))
        # Marks: those sent but not echoed, then those still queued, in order.
        for entry in self._wire.values():
            if isinstance(entry, _Mark):
                notices.append(MarkReached(entry.name, cleared=True))
        for item in self._queue:
            if isinstance(item, _Mark):
                notices.append(MarkReached(item.name, cleared=True))
        for pb in interrupted:
            notices.append(Interrupted(pb.pid, self._played_ms(pb, now), pb.frames * 20.0, reason))
        self._wire.clear()
        self._queue.clear()
        self._queued_frames = 0
        self._unfinished.clear()
        self._current = None
        self._play_end = min(self._play_end, now)
        return outputs, notices

    # -- Twilio ------------------------------------------------------------------------------------
    def on_mark_echo(self, wire_name: str) -> list[Notice]:
        """Twilio echoed a mark: the audio before it has played (or was cleared, already reported)."""
        entry = self._wire.pop(wire_name, None)
        if entry is None:
            self.stale_echoes += 1
            return []
        if isinstance(entry, _Mark):
            return [MarkReached(entry.name, cleared=False)]
        pb = entry.playback
        self._unfinished.pop(pb.pid, None)
        return [Finished(pb.pid, pb.frames * 20.0)]

    # -- pacing ------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Audio is queued, being sent, or sent and not yet known to have finished."""
        return bool(self._queue or self._current or self._unfinished)

    def next_due(self, now: float) -> float | None:
        """When :meth:`poll` next has something to send (``now`` if at once), None if nothing is queued."""
        if self._current is None and not self._queue:
            return None
        if self._current is None and isinstance(self._queue[0], _Mark):
            return now
        return max(now, self._play_end + FRAME_S - self.lead_s)

    def poll(self, now: float) -> tuple[list[Output], list[Notice]]:
        """Everything due at ``now``: frames up to ``lead`` ahead of real time, and the marks between them."""
        outputs: list[Output] = []
        notices: list[Notice] = []
        self._play_end = max(self._play_end, now)  # nothing playing: the next frame plays at once
        while True:
            pb = self._current
            if pb is None:
                if not self._queue:
                    break
                item = self._queue.pop(0)
                if isinstance(item, _Mark):
                    outputs.append(self._send_mark(item))
                    continue
                self._queued_frames -= item.frames
                self._current = pb = item
            room = int((self.lead_s - (self._play_end - now)) / FRAME_S + 1e-6)  # whole frames within the lead
            if room < 1:
                break
            if pb.sent == 0:
                pb.start_at = self._play_end
                self._unfinished[pb.pid] = pb
                notices.append(Started(pb.pid, pb.frames * 20.0))
            n = min(pb.frames - pb.sent, self.frames_per_message, room)
            outputs.append(SendMedia(pb.audio[pb.sent * FRAME_BYTES:(pb.sent + n) * FRAME_BYTES]))
            pb.sent += n
            self.frames_sent += n
            self._play_end += n * FRAME_S
            if pb.sent == pb.frames:
                outputs.append(self._send_mark(_EndOf(pb)))
                self._current = None
        return outputs, notices

    def _send_mark(self, entry: _Mark | _EndOf) -> SendMark:
        self._next_wire += 1
        wire = f"{WIRE_MARK_PREFIX}{self._next_wire}"
        self._wire[wire] = entry
        return SendMark(wire)

    def _played_ms(self, pb: _Playback, now: float) -> float:
        if pb.start_at is None:
            return 0.0
        played = (now - pb.start_at) * 1000
        return round(max(0.0, min(played, pb.sent * 20.0)), 1)

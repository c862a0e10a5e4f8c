"""One emulated RTZR streaming session, sans-IO: audio and text in (with the time), actions out.

Semantics (see shared/protocols/rtzr.md, "The emulator must reproduce"):

- Timeline: samples received since the socket opened; every ``start_at``/``duration`` is ms on it.
- End-point detection: 10 ms frames louder than ``speech_dbfs`` are speech. An utterance with at
  least 50 ms of speech followed by ``epd_time`` of quieter audio gets a final; the final covers
  the audio up to the end of its speech, so the silence after it stays *pending* (a later Finalize
  answers it with an empty-text final, which a client's byte-counting tracker expects).
- Interims (same seq, ``duration`` 0) every ``interim_ms`` of utterance audio, carrying only words
  that can no longer change; the final starts with them, so interims are prefixes of the final.
- ``{"type":"Finalize"}``: a final for pending audio after ``final_ms``; nothing when nothing is
  pending. ``EOS``: the pending final (if any), then close 1000. Seq counts finals from 0.
- Idle (no client data message for ``idle_timeout_s``; pings do not count) and session age
  (``max_session_s``) close with 1001. Faults: see :class:`~engine.rtzr.emulator.config.Fault`.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Struct

from engine.rtzr.emulator.codec import Decoder
from engine.rtzr.emulator.config import Fault
from engine.rtzr.emulator.recognizer import Recognizer, SkipRecognizer, Token, cheap_tokens
from engine.rtzr.protocol import EOS, Alternative, RtzrResult, Word, encode_result

HOLD_MS = 400.0  # a word is stable once this much audio follows it
RECOMPUTE_FULL_S = 3.0
MIN_SPEECH_FRAMES = 5
MAX_SILENT_BUFFER_S = 10.0
FINALIZE_TYPES = frozenset({"Finalize", "finalize"})


class Send(Struct, frozen=True):
    """Send one TEXT frame."""

    text: str


class Close(Struct, frozen=True):
    """Send a close frame and end the session."""

    code: int
    reason: str


class Abort(Struct, frozen=True):
    """Drop the TCP connection without a close frame."""


Action = Send | Close | Abort


class SessionParams(Struct, kw_only=True, frozen=True):
    sample_rate: int
    encoding: str
    epd_time: float = 0.8
    final_ms: int = 150
    interim_ms: int = 300
    idle_timeout_s: float = 60.0
    max_session_s: float = 3600.0
    max_utter_s: float = 30.0
    speech_dbfs: float = -45.0


class SessionCounters(Struct, kw_only=True):
    bytes_received: int = 0
    interims_sent: int = 0
    finals_sent: int = 0
    errors_sent: int = 0


_json = msgspec.json.Decoder()


class StreamSession:
    """Pure state machine for one socket; the Trio shell feeds it and performs :meth:`poll`'s actions."""

    def __init__(self, params: SessionParams, recognizer: Recognizer, faults: Sequence[Fault], now: float) -> None:
        self.p = params
        self.recognizer = recognizer
        self.decoder = Decoder(params.encoding)
        self.counters = SessionCounters()
        self.opened_at = now
        self.last_activity = now
        self.closed = False  # a Close/Abort was handed out
        self.ended = False  # EOS received or the session is ending: ignore further input
        self._outbox: deque[tuple[float, Action]] = deque()
        self._last_due = now
        self.queued = 0  # actions queued so far (a shell re-reads next_deadline only when this moved)
        self._seq = 0
        self._frame = max(1, params.sample_rate // 100)
        self._threshold = self._frame * (32768.0 * 10 ** (params.speech_dbfs / 20)) ** 2
        self._max_utter = int(params.max_utter_s * params.sample_rate)
        self._epd = int(params.epd_time * params.sample_rate)
        self._total = 0  # samples received on the timeline
        self._carry = np.zeros(0, dtype=np.int16)  # samples not yet framed for EPD
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._buf_start = 0  # timeline sample of _chunks[0][0]
        self._pending_since: int | None = None  # timeline sample where unanswered audio starts
        self._speech_start: int | None = None
        self._speech_end = 0
        self._speech_frames = 0
        self._silence = 0  # samples of quiet since the last loud frame
        self._since_interim = 0
        self._committed: list[Token] = []  # stable words of the open utterance (timeline ms)
        self._committed_to = 0  # timeline sample up to which words are committed
        self._recomputed_at = 0  # timeline sample when interim tokens were last recognised
        # --cheap: the EPD's loud 10 ms frames as runs [start, end) of timeline frame numbers, so placeholder words
        # come from them instead of a second energy pass over the utterance (None: recognise the samples).
        cheap = isinstance(recognizer, SkipRecognizer) and recognizer.speech_dbfs == params.speech_dbfs
        self._loud_starts: list[int] | None = [] if cheap else None
        self._loud_ends: list[int] = []
        self.empty_text = any(f.kind == "empty_text" for f in faults)
        self._timed: list[tuple[float, Fault]] = sorted(
            ((now + f.value / 1000.0, f) for f in faults if f.kind in ("close_after", "error_after", "stall")),
            key=lambda item: item[0],
        )
        self.stalled = False

    # ------------------------------------------------------------------ input
    def receive_audio(self, data: bytes | npt.NDArray[np.uint8], now: float) -> None:
        """``data``: the message's bytes, or the WebSocket fast path's uint8 array of them."""
        self.last_activity = now
        n = len(data)
        self.counters.bytes_received += n
        if self.ended or not n:
            return
        samples = self.decoder.decode(data)
        if samples.size == 0:
            return
        self._take(samples, None, now)

    def receive_pcm(self, samples: npt.NDArray[np.int16], loud: list[bool] | None, now: float) -> None:
        """A LINEAR16 message the read hub's batch already unmasked and decoded (``samples``, this session's own
        array), with its 10 ms frames' loudness if the batch computed it (frames from the message's first sample,
        this session's threshold). Exactly :meth:`receive_audio` of the message's bytes."""
        if not self.decoder.aligned:  # an odd byte carried from an earlier message: decode the bytes as usual
            self.receive_audio(samples.tobytes(), now)
            return
        self.last_activity = now
        self.counters.bytes_received += 2 * samples.size
        if self.ended or not samples.size:
            return
        self._take(samples, loud, now)

    def _take(self, samples: npt.NDArray[np.int16], loud: list[bool] | None, now: float) -> None:
        if self._pending_since is None:
            self._pending_since = self._total
        self._chunks.append(samples)
        self._total += samples.size
        self._since_interim += samples.size
        # The batch's loudness holds when the message starts on this session's 10 ms grid (nothing carried).
        if loud is not None and not self._carry.size and len(loud) * self._frame == samples.size:
            self._epd_runs(loud, self._total - samples.size, len(loud), now)
        else:
            self._run_epd(samples, now)
        if self._speech_start is not None and self._since_interim >= self.p.interim_ms * self.p.sample_rate / 1000:
            self._since_interim = 0
            self._interim(now)
        self._trim_silence()

    def receive_text(self, text: str, now: float) -> None:
        self.last_activity = now
        if self.ended:
            return
        if text == EOS:
            self.ended = True
            if self._has_pending():
                self._final(self._total, now + self.p.final_ms / 1000.0)
            self._queue(now, Close(1000, "EOS"))
            return
        try:
            obj = _json.decode(text)
        except msgspec.DecodeError:
            return  # unknown text is ignored, as an unknown field would be
        if isinstance(obj, dict) and obj.get("type") in FINALIZE_TYPES and self._has_pending():
            self._final(self._total, now + self.p.final_ms / 1000.0)

    def pong_allowed(self, now: float) -> bool:
        """A stalled session answers nothing, not even pings."""
        self._apply_faults(now)
        return not self.stalled

    # ------------------------------------------------------------------ output
    def poll(self, now: float) -> list[Action]:
        """Actions due at ``now`` (results, closes, faults, timeouts)."""
        if self.closed:
            return []
        self._apply_faults(now)
        if self.stalled:
            return []
        out: list[Action] = []
        if now >= self.opened_at + self.p.max_session_s:
            self._queue(now, Close(1001, "maximum session length"), force=True)
        elif now >= self.last_activity + self.p.idle_timeout_s:
            self._queue(now, Close(1001, "idle timeout"), force=True)
        while self._outbox and self._outbox[0][0] <= now:
            action = self._outbox.popleft()[1]
            out.append(action)
            if isinstance(action, Send):
                self._count(action)
            if isinstance(action, Close | Abort):
                self.closed = self.ended = True
                self._outbox.clear()
                break
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do (None = only new input can change that)."""
        if self.closed or self.stalled:
            return None
        times = [self.opened_at + self.p.max_session_s, self.last_activity + self.p.idle_timeout_s]
        if self._outbox:
            times.append(self._outbox[0][0])
        if self._timed:
            times.append(self._timed[0][0])
        return min(times)

    # ------------------------------------------------------------------ internals
    def _count(self, action: Send) -> None:
        if '"final":true' in action.text:
            self.counters.finals_sent += 1
        elif '"final":false' in action.text:
            self.counters.interims_sent += 1
        else:
            self.counters.errors_sent += 1

    def _queue(self, due: float, action: Action, *, force: bool = False) -> None:
        """FIFO with non-decreasing due times, so results never overtake each other."""
        if force:
            self._outbox.clear()
        due = max(due, self._last_due)
        self._last_due = due
        self._outbox.append((due, action))
        self.queued += 1

    def _apply_faults(self, now: float) -> None:
        while self._timed and self._timed[0][0] <= now:
            due, fault = self._timed.pop(0)
            if fault.kind == "stall":
                self.stalled = True
                self._outbox.clear()
            elif fault.kind == "close_after":
                self._queue(due, Abort(), force=True)
            else:
                error = {"type": "error", "code": "E500", "message": "emulated fault: in-band error"}
                self._queue(due, Send(msgspec.json.encode(error).decode()), force=True)
                self._queue(due, Close(1011, "emulated error"))
            self.ended = True

    def _has_pending(self) -> bool:
        return self._pending_since is not None

    def _run_epd(self, samples: npt.NDArray[np.int16], now: float) -> None:
        frame = self._frame
        data = np.concatenate([self._carry, samples]) if self._carry.size else samples
        n_frames = data.size // frame
        first = self._total - data.size  # timeline index of data[0] (a multiple of frame: _carry is what follows one)
        self._carry = data[n_frames * frame :]
        if n_frames == 0:
            return
        frames = data[: n_frames * frame].astype(np.float64).reshape(n_frames, frame)
        # Exact in float64 (80 squares of int16 < 2**53); a list, since the runs below are found in it.
        loud: list[bool] = (np.einsum("ij,ij->i", frames, frames, optimize=False) >= self._threshold).tolist()
        self._epd_runs(loud, first, n_frames, now)

    def epd_grid(self) -> tuple[int, float]:
        """The EPD's frame length (samples) and energy threshold: what a batch needs to compute ``loud`` for
        :meth:`receive_pcm` the way :meth:`_run_epd` does."""
        return self._frame, self._threshold

    def _epd_runs(self, loud: list[bool], first: int, n_frames: int, now: float) -> None:
        """The EPD over ``n_frames`` 10 ms frames whose loudness is ``loud``, the first at timeline sample ``first``."""
        frame = self._frame
        max_utter, epd = self._max_utter, self._epd
        n_loud = loud.count(True)
        if self._loud_starts is not None and n_loud:
            self._note_loud(loud, first // frame, n_frames, n_loud)
        # Fast paths, with the per-frame loop's exact outcome: a quiet batch outside speech changes nothing; a quiet
        # batch inside speech that does not reach epd_time only adds silence; an all-loud batch inside speech that
        # does not reach max_utter only extends it. (``_silence`` is only read while in speech, and reset when
        # speech starts.)
        if n_loud == 0 and (self._speech_start is None or self._silence + n_frames * frame < epd):
            if self._speech_start is not None:
                self._silence += n_frames * frame
            return
        last_end = first + n_frames * frame
        if n_loud == n_frames and self._speech_start is not None and last_end - self._speech_start < max_utter:
            self._speech_end = last_end
            self._speech_frames += n_frames
            self._silence = 0
            return
        # Run by run (a run = frames of one kind), each with the outcome the per-frame loop has over it: the state
        # only changes where a run starts speech, reaches max_utter or reaches epd_time.
        due = now + self.p.final_ms / 1000.0
        i = 0
        while i < n_frames:
            kind = loud[i]
            try:
                j = loud.index(not kind, i + 1)
            except ValueError:
                j = n_frames
            if kind:
                start = first + i * frame
                if self._speech_start is None:
                    self._speech_start = start
                if first + j * frame - self._speech_start >= max_utter:
                    self._loud_frames(first, i, j, due)  # a final inside the run: frame by frame
                else:
                    self._speech_end = first + j * frame
                    self._speech_frames += j - i
                    self._silence = 0
            elif self._speech_start is not None:
                quiet = (j - i) * frame
                if self._silence + quiet < epd:
                    self._silence += quiet
                else:  # epd_time reached inside the run; the frames after that are outside speech
                    self._silence += max(1, -(-(epd - self._silence) // frame)) * frame
                    if self._speech_frames >= MIN_SPEECH_FRAMES:
                        self._final(self._speech_end, due)
                    else:  # a blip, not speech: forget it (its audio stays pending)
                        self._speech_start = None
                        self._speech_frames = 0
            i = j

    def _loud_frames(self, first: int, i: int, j: int, due: float) -> None:
        """Loud frames i..j-1 one by one (a run in which an utterance reaches max_utter)."""
        frame = self._frame
        for k in range(i, j):
            start = first + k * frame
            end = start + frame
            if self._speech_start is None:
                self._speech_start = start
            self._speech_end = end
            self._speech_frames += 1
            self._silence = 0
            if end - self._speech_start >= self._max_utter:
                self._final(end, due)

    def _note_loud(self, loud: list[bool], f0: int, n_frames: int, n_loud: int) -> None:
        """Keep the loud frames (timeline frame numbers, as runs) for the cheap recogniser."""
        starts, ends = self._loud_starts, self._loud_ends
        assert starts is not None
        if n_loud == n_frames:
            runs = [(f0, f0 + n_frames)]
        else:
            runs = []
            i = loud.index(True)
            while True:
                try:
                    j = loud.index(False, i + 1)
                except ValueError:
                    runs.append((f0 + i, f0 + n_frames))
                    break
                runs.append((f0 + i, f0 + j))
                try:
                    i = loud.index(True, j + 1)
                except ValueError:
                    break
        for a, b in runs:
            if ends and ends[-1] == a:
                ends[-1] = b
            else:
                starts.append(a)
                ends.append(b)

    def _cheap_tokens(self, lo: int, hi: int) -> list[Token] | None:
        """``SkipRecognizer.recognize`` over timeline samples [lo, hi) from the EPD's loud frames, when its 10 ms
        frames are the EPD's (``lo`` on the frame grid, the same threshold); None: recognise the samples."""
        starts, ends = self._loud_starts, self._loud_ends
        frame = self._frame
        if starts is None or lo % frame:
            return None
        a = lo // frame
        b = a + (hi - lo) // frame
        k = bisect_right(ends, a)  # the first run that ends after frame a
        if k == len(starts) or starts[k] >= b:
            return []
        first_loud = max(starts[k], a)
        m = bisect_left(starts, b) - 1  # the last run that starts before frame b
        last_end = min(ends[m], b)
        return cheap_tokens(first_loud - a, last_end - a, frame * 1000.0 / self.p.sample_rate)

    def _forget_loud(self, before: int) -> None:
        """Drop loud runs that end at or before timeline sample ``before`` (no query reaches back there)."""
        if self._loud_starts is not None:
            k = bisect_right(self._loud_ends, before // self._frame)
            if k:
                del self._loud_starts[:k], self._loud_ends[:k]

    def _samples(self, lo: int, hi: int) -> npt.NDArray[np.int16]:
        """Timeline samples [lo, hi) from the buffer (coalescing the chunk list once)."""
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        buf = self._chunks[0]
        return buf[max(0, lo - self._buf_start) : max(0, hi - self._buf_start)]

    def _drop_before(self, cut: int) -> None:
        """Forget the audio before timeline sample ``cut``: the chunks after it stay as they are (no coalescing of a
        long utterance's chunk list just to keep its last message)."""
        chunks = self._chunks
        start = self._total
        k = len(chunks)
        while k and start - chunks[k - 1].size >= cut:
            k -= 1
            start -= chunks[k].size
        if k and start > cut:  # chunk k-1 holds the cut: keep its part after it
            k -= 1
            start -= chunks[k].size
            chunks[k] = chunks[k][cut - start:].copy()
        del chunks[:k]
        self._buf_start = cut

    def _tokens(self, lo: int, hi: int) -> list[Token]:
        """Recognise timeline samples [lo, hi); token times become timeline ms."""
        offset = lo * 1000.0 / self.p.sample_rate
        tokens = self._cheap_tokens(lo, hi)
        if tokens is None:
            tokens = self.recognizer.recognize(self._samples(lo, hi), self.p.sample_rate)
        return [
            Token(text=t.text, start_ms=t.start_ms + offset, end_ms=t.end_ms + offset, confidence=t.confidence)
            for t in tokens
        ]

    def _utterance_start(self) -> int:
        return self._pending_since if self._pending_since is not None else self._total

    def _interim(self, now: float) -> None:
        lo = max(self._utterance_start(), self._committed_to)
        tail = self._total - lo
        # Long tails with nothing stable (e.g. unknown speech) are re-recognised less and less often
        # (every 10% growth), so a 30 s utterance costs O(n log n), not O(n^2).
        if tail <= RECOMPUTE_FULL_S * self.p.sample_rate or self._total - self._recomputed_at >= tail // 10:
            self._recomputed_at = self._total
            audio_end_ms = self._total * 1000.0 / self.p.sample_rate
            for token in self._tokens(lo, self._total):
                if token.end_ms > audio_end_ms - HOLD_MS:
                    break
                self._committed.append(token)
                self._committed_to = math.ceil(token.end_ms * self.p.sample_rate / 1000.0)
        text = " ".join(t.text for t in self._committed)
        if not text:
            return
        start = self._speech_start if self._speech_start is not None else self._utterance_start()
        result = RtzrResult(
            seq=self._seq, start_at=self._ms(start), duration=0, final=False,
            alternatives=[Alternative(text="" if self.empty_text else text, confidence=self._confidence())],
        )
        self._queue(now, Send(encode_result(result).decode()))

    def _final(self, cut: int, due: float) -> None:
        """Close the open utterance at timeline sample ``cut``: compute its result, queue it."""
        since = self._utterance_start()
        lo = max(since, self._committed_to)
        tokens = self._committed + (self._tokens(lo, cut) if cut > lo else [])
        if self._speech_start is not None and self._speech_frames > 0:
            start, end = self._speech_start, max(self._speech_end, self._speech_start)
        else:
            start, end = since, cut
        start_ms = self._ms(start)
        text = "" if self.empty_text else " ".join(t.text for t in tokens)
        words = [] if self.empty_text else [
            Word(text=t.text, start_at=max(0, round(t.start_ms) - start_ms),
                 duration=max(0, round(t.end_ms - t.start_ms)), confidence=round(t.confidence, 3))
            for t in tokens
        ]
        conf = self._confidence(tokens)
        result = RtzrResult(
            seq=self._seq, start_at=start_ms, duration=max(0, self._ms(end) - start_ms), final=True,
            alternatives=[Alternative(text=text, confidence=conf, words=words)],
        )
        self._queue(due, Send(encode_result(result).decode()))
        self._seq += 1
        # Everything up to the cut is answered; audio after it is the start of what is pending next.
        self._pending_since = cut if cut < self._total else None
        self._drop_before(cut)
        self._forget_loud(cut)
        self._speech_start = None
        self._speech_frames = 0
        self._silence = 0
        self._since_interim = 0
        self._committed = []
        self._committed_to = cut
        # The frames after the cut may already hold speech that the loop will see next; nothing else to do.

    def _confidence(self, tokens: Sequence[Token] | None = None) -> float:
        tokens = self._committed if tokens is None else tokens
        return round(sum(t.confidence for t in tokens) / len(tokens), 3) if tokens else 0.0

    def _trim_silence(self) -> None:
        """Bound memory when a client streams silence for long: keep the last second of it."""
        if self._speech_start is not None:
            return
        limit = int(MAX_SILENT_BUFFER_S * self.p.sample_rate)
        if self._total - self._buf_start > limit:
            keep_from = self._total - self.p.sample_rate
            self._drop_before(keep_from)
            self._forget_loud(keep_from)
            self._committed_to = max(self._committed_to, keep_from)

    def _ms(self, sample: int) -> int:
        return round(sample * 1000 / self.p.sample_rate)

"""The sans-IO Endpointer: PCM16 in, SpeechStarted / SpeechAudio / SpeechEnded out.

Audio is cut into fixed frames (``frame_ms``; frame k covers samples ``[k*F, (k+1)*F)``
on the call timeline) and each frame is judged by a :class:`FrameClassifier`. Decisions
depend only on frame contents, never on how the audio was chunked into ``push`` calls,
so any chunking yields identical events. The state machine:

* idle → speech when a run of consecutive speech frames is too long to come from a burst
  shorter than ``start_ms`` (``ceil((start-2)/F) + 2`` frames, since a burst can straddle
  the frame grid: 4 frames = 80 ms at the defaults, 6 × 10 ms with ``frame_ms=10``).
  ``SpeechStarted`` is emitted at once (for barge-in) with ``start`` = first sample of that
  run and the pre-roll before it, followed by one ``SpeechAudio`` with the confirming run;
* while in speech every frame is emitted as one ``SpeechAudio``;
* speech → idle (``SpeechEnded(silence)``) after ``end_ms`` of consecutive non-speech
  frames (the hangover, emitted as audio too), or ``SpeechEnded(max_length)`` when the
  utterance reaches ``max_utterance_ms`` (a new one starts after ``start_ms`` more speech,
  without losing audio: its pre-roll covers the gap), or ``end_of_stream`` from :meth:`end`.

Continuations (``merge_ms``): when speech is confirmed again and its run starts no more than
``merge_ms`` after the previous utterance's last speech frame (``start - last_speech_end <=
merge_ms``), the new utterance is a *continuation*: its ``SpeechStarted`` has ``continues=True``
and its pre-roll reaches back to the previous utterance's end (whatever ``preroll_ms``), so the
two are contiguous and no audio between them is lost. The previous utterance's end stands (its
final is already on the way); the turn layer joins the two. ``merge_ms = 0`` disables it.
:attr:`Endpointer.continuation_possible` says whether a continuation of the last utterance can
still be confirmed, so the turn layer knows when a pause can no longer be one.

History as μ-law (``mulaw_history``, issue 13): when every sample pushed is a decoded μ-law code
(Twilio's audio, not resampled), the idle history behind the pre-roll keeps the codes, 1 byte per
sample instead of 2 (5.3 KiB less per call at the defaults), and decodes them when an utterance starts.
The caller hands the codes with the PCM (``codes``): one 160-byte copy into the ring per idle frame,
no more work than copying the int16 frame. It is lossless: the pre-roll is the very samples pushed,
since they are the codes' decodes; where no codes come along (a chunk cut across frames), the PCM is
re-encoded, also lossless, as ``decode(encode(decode(c))) == decode(c)`` for all 256 codes.

``min_utterance_ms``: an utterance is never ended by silence before it is this long
(``end - start``); a shorter one keeps its hangover running until then. It keeps short
replies ("네") from being finalised before a continuation, and caps how many tiny
utterances a noisy line can produce. 0 (default) disables it. It cannot retract a
``SpeechStarted`` already sent, so it never delays barge-in.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from engine.audio import mulaw
from engine.config import EndpointingConfig

from .classifiers import FrameClassifier, Frames, make_classifier
from .events import EndpointEvent, EndReason, SpeechAudio, SpeechEnded, SpeechStarted

Pcm = npt.NDArray[np.int16]
Codes = bytes | bytearray | memoryview | npt.NDArray[np.uint8]
_EMPTY = np.zeros(0, dtype=np.int16)
_INT16 = np.dtype(np.int16)
NO_EVENTS: Final[tuple[()]] = ()  # push_decided_lean's nothing: shared, no list built per quiet frame


class EndpointerError(ValueError):
    """Bad audio given to :meth:`Endpointer.push`, or use after :meth:`Endpointer.end`."""


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _encode(pcm: Pcm) -> npt.NDArray[np.uint8]:
    """μ-law codes of int16 PCM, as an array (the history's fallback when no codes came with a chunk)."""
    return mulaw.ENCODE_TABLE.take(pcm.view(np.uint16))


class Endpointer:
    """Per-call speech start/end detector; see the module docstring for the rules."""

    __slots__ = (
        "_cap",
        "_classifier",
        "_closed",
        "_codes",
        "_end_frames",
        "_flat",
        "_frame",
        "_frames_done",
        "_in_speech",
        "_last_speech_end",
        "_max_end",
        "_max_frames",
        "_merge",
        "_min_samples",
        "_mulaw",
        "_pending",
        "_preroll",
        "_prev_last_speech",
        "_ring",
        "_ring_end",
        "_ring_floor",
        "_ring_in",
        "_run",
        "_silence",
        "_start_frames",
        "_utt_start",
        "packet",
        "position",
        "sample_rate",
    )

    def __init__(
        self,
        config: EndpointingConfig,
        *,
        sample_rate: int | None = None,
        classifier: FrameClassifier | None = None,
        mulaw_history: bool = False,
    ) -> None:
        rate = config.sample_rate if sample_rate is None else sample_rate
        if rate <= 0:
            raise EndpointerError(f"invalid sample rate {rate}")
        self.sample_rate = rate
        if classifier is None:
            classifier = make_classifier(config.classifier, rate, frame_ms=config.frame_ms)
        self._classifier = classifier
        frame = int(classifier.frame_samples)
        if frame <= 0:
            raise EndpointerError(f"classifier frame size must be positive, got {frame}")
        self._frame = frame

        def samples(ms: int) -> int:
            return ms * rate // 1000

        # Confirm a run only when no burst shorter than start_ms could have produced it: a
        # burst of L samples touches at most ceil((L-1)/F) + 1 frames of the grid.
        self._start_frames = _ceil_div(max(samples(config.start_ms) - 2, 0), frame) + 2
        self._end_frames = max(1, _ceil_div(samples(config.end_ms), frame))
        self._preroll = samples(config.preroll_ms)
        self._max_frames = max(self._start_frames + 1, samples(config.max_utterance_ms) // frame)
        self._min_samples = samples(config.min_utterance_ms)
        self._merge = samples(config.merge_ms)
        # History of idle audio (pre-roll, or a continuation's whole gap, + a confirming run), ending at
        # the current frame base: int16 samples, or their μ-law codes (``mulaw_history``). Written through
        # _ring_in: the array itself, or a memoryview of the codes' array, which takes the caller's bytes
        # as they are and, unlike a bytearray, refuses a slice of another length instead of resizing.
        size = max(max(self._preroll, self._merge) + self._start_frames * frame, 1)
        self._ring: Pcm | npt.NDArray[np.uint8]
        self._ring_in: Any  # an int16 array or a memoryview: either takes what the history keeps, sliced
        self._mulaw = mulaw_history
        if mulaw_history:
            self._ring = np.zeros(size, dtype=np.uint8)
            self._ring_in = self._ring.data
        else:
            self._ring = self._ring_in = np.zeros(size, dtype=np.int16)
        self._cap = size
        self._codes: Codes | None = None  # the μ-law codes of _flat, when they came with it (then one whole frame)
        # The ring is indexed by absolute position: sample p of the call lives at p % _cap, so a write needs no
        # position of its own, only _ring_end. It holds [max(_ring_end - _cap, _ring_floor), _ring_end): the
        # last _cap samples remembered, none before the last _forget (_ring_floor).
        self._ring_end = 0
        self._ring_floor = 0
        self._pending: Pcm = _EMPTY
        self._flat: Pcm | None = None  # frames_ready's frames (flat), waiting for push_decided
        self.position = 0
        self._frames_done = 0
        self._in_speech = False
        self._run = 0
        self._silence = 0
        self._utt_start = 0
        self._max_end = 0
        self._last_speech_end = 0
        self._prev_last_speech: int | None = None  # last speech frame's end of the previous utterance
        self._closed = False
        # The μ-law bytes of a chunk push_packet takes whole now: one frame, while the history keeps codes,
        # nothing is pending and the stream is open (0: none). Kept by frames_ready and end.
        self.packet = frame if mulaw_history else 0

    @property
    def frame_samples(self) -> int:
        return self._frame

    @property
    def in_speech(self) -> bool:
        """True between a SpeechStarted and its SpeechEnded."""
        return self._in_speech

    @property
    def continuation_possible(self) -> bool:
        """True while idle if speech could still be confirmed as a continuation of the last utterance:
        a run of speech frames already under way, or one starting at the next frame, would begin
        within ``merge_ms`` of its last speech frame. False in speech, before any utterance, and
        with ``merge_ms = 0``."""
        prev = self._prev_last_speech
        if self._in_speech or prev is None or not self._merge:
            return False
        earliest = (self._frames_done - self._run) * self._frame
        return earliest - prev <= self._merge

    @property
    def classifier(self) -> FrameClassifier:
        """This stream's classifier (stateful: it must see this stream's frames, in order, and only them)."""
        return self._classifier

    @property
    def mulaw_history(self) -> bool:
        """The idle history keeps μ-law codes (every sample pushed must be a decoded μ-law code)."""
        return self._mulaw

    @property
    def history_bytes(self) -> int:
        """Bytes the idle history (pre-roll ring) holds for its whole life (tests, bench/call_memory.py)."""
        return int(self._ring.nbytes)

    @property
    def awaiting_decisions(self) -> bool:
        """True between :meth:`frames_ready` returning frames and :meth:`push_decided`."""
        return self._flat is not None

    def push(self, pcm: Pcm, codes: Codes | None = None) -> list[EndpointEvent]:
        """Consume the next chunk of audio (any length); return the events it completes. ``codes``: the
        μ-law codes ``pcm`` was decoded from, with ``mulaw_history`` (optional: see :meth:`frames_ready`)."""
        frames = self.frames_ready(pcm, codes)
        if frames is None:
            return []
        return self.push_decided(self._classifier.classify(frames))

    # Two phases, for a caller that classifies the frames of many streams in one batch (issue 13: the
    # Twilio reactor, one ``classify_batch`` per wake-up): ``frames_ready`` cuts the chunk into whole
    # frames and returns them; the caller gets one decision per frame from this stream's classifier
    # (``classifier``, alone or batched with other streams'), then ``push_decided`` runs the state machine.
    # ``push`` is exactly the two with ``classifier.classify`` between them.

    def frames_ready(self, pcm: Pcm, codes: Codes | None = None, *, owned: bool = False) -> Frames | None:
        """Consume the next chunk (any length); the whole frames it completes, shape ``(n, frame_samples)``,
        to be classified and given to :meth:`push_decided`, or None (no whole frame yet: nothing to decide).

        ``codes`` (with ``mulaw_history``; ignored without): the μ-law codes ``pcm`` was decoded from, one per
        sample, kept in the history as they are; without them the history encodes ``pcm`` (lossless for
        decoded μ-law, a little dearer). ``owned``: ``pcm`` is the caller's to give away (nothing writes to it
        afterwards, e.g. a slice of a batch's fresh decode): a whole packet's frame is then ``pcm`` itself, not a copy."""
        if self._closed:
            raise EndpointerError("push() after end()")
        if self._flat is not None:
            raise EndpointerError("frames_ready() again before push_decided()")
        # The check by identity first (~0.1 µs, per frame of every call): an int16 array's dtype is numpy's
        # one int16 dtype; a subclass, or an equal dtype that is another object, takes the exact test.
        if (type(pcm) is not np.ndarray or pcm.dtype is not _INT16 or pcm.ndim != 1) and (
            not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1
        ):
            raise EndpointerError("push() expects a 1-D int16 numpy array")
        n = pcm.shape[0]
        if n == 0:
            return None
        if codes is not None and len(codes) != n:
            raise EndpointerError(f"push() got {len(codes)} μ-law codes for {n} samples")
        self.position += n
        frame = self._frame
        pending = self._pending
        if n == frame and not pending.shape[0]:  # the hot path: one whole packet, nothing pending
            self._codes = codes if self._mulaw else None
            flat = self._flat = pcm if owned else pcm.copy()
            return flat[None]
        self._codes = None  # not aligned with the frames any more: the history encodes them if it needs to
        # A copy either way: events and the pending tail must not alias the caller's buffer.
        data = np.concatenate((pending, pcm)) if pending.shape[0] else pcm.copy()
        nf = data.shape[0] // frame
        used = nf * frame
        if used == data.shape[0]:
            self._pending = _EMPTY
            self.packet = frame if self._mulaw else 0
            flat = data
        else:
            self._pending = data[used:]
            self.packet = 0
            if nf == 0:
                return None
            flat = data[:used]
        self._flat = flat
        return flat[None] if nf == 1 else flat.reshape(nf, frame)

    def push_decided(self, decisions: list[bool]) -> list[EndpointEvent]:
        """The decisions for the frames :meth:`frames_ready` returned (one per frame, in order): the events."""
        flat = self._flat
        if flat is None:
            raise EndpointerError("push_decided() without frames_ready()")
        nf = flat.shape[0] // self._frame
        if len(decisions) != nf:  # the frames still wait for their decisions
            raise EndpointerError(f"push_decided() expects {nf} decisions, got {len(decisions)}")
        self._flat = None
        codes = self._codes
        if codes is not None:
            self._codes = None
        if not self._in_speech:
            if not any(decisions):
                # The common case, every idle frame on a quiet line: nothing can happen.
                self._run = 0
                self._frames_done += nf
                end = self._ring_end
                n = flat.shape[0]
                pos = end % self._cap
                if pos + n <= self._cap:  # inlined _remember, the case with no wrap
                    if codes is not None:
                        self._ring_in[pos : pos + n] = codes
                    elif not self._mulaw:
                        self._ring[pos : pos + n] = flat
                    else:
                        self._ring[pos : pos + n] = _encode(flat)
                    self._ring_end = end + n
                else:
                    self._remember(self._history(flat, codes))
                return []
        elif nf == 1:
            # The other common case, one frame of an utterance under way: _step's loop for that one frame.
            frame = self._frame
            base = self._frames_done * frame
            self._frames_done += 1
            end = base + frame
            audio = SpeechAudio(base, flat)
            if decisions[0]:
                self._silence = 0
                self._last_speech_end = end
            else:
                self._silence += 1
                if self._silence >= self._end_frames and end - self._utt_start >= self._min_samples:
                    return self._end(audio, end, "silence")
            if end >= self._max_end:
                return self._end(audio, end, "max_length")
            return [audio]
        return self._step(flat, decisions, codes)

    # The lean path (issue 13): per frame of every call, the two commonest cases cost no Python beyond the
    # state machine's own arithmetic: an idle frame judged not speech (nothing happens: the frame goes to the
    # history) and a frame of an utterance under way that ends nothing (its one SpeechAudio is not built).

    def push_decided_lean(self, decisions: list[bool]) -> list[EndpointEvent] | tuple[()] | None:
        """:meth:`push_decided` for a caller that stores utterance audio as the μ-law it received.

        The same state and events, except that two outcomes are not built: :data:`NO_EVENTS` (a shared empty
        tuple) when there are none, and None when the frames were one whole frame given to :meth:`frames_ready`
        with its ``codes`` (``mulaw_history``) and are audio of the utterance under way ending nothing. The one
        event push_decided returns then, ``SpeechAudio(position - frame_samples, frame)``, is those codes
        decoded: the caller stores the codes it passed. Anything else is push_decided's list."""
        codes = self._codes
        if codes is None or len(decisions) != 1:  # not one whole frame with its codes
            events = self.push_decided(decisions)
            return events if events else NO_EVENTS
        # _codes is set only with _flat (frames_ready's one-packet path): no check of _flat needed.
        flat = self._flat
        assert flat is not None
        self._codes = self._flat = None
        return self._take(flat, codes, decisions[0])

    def push_packet(self, pcm: Pcm, codes: Codes, speech: bool) -> list[EndpointEvent] | tuple[()] | None:
        """``frames_ready(pcm, codes, owned=True)`` then ``push_decided_lean([speech])``, in one call: the
        batch's commonest case (issue 13), one whole frame per Twilio packet. ``codes`` is a chunk of
        :attr:`packet` bytes (checked) and ``pcm`` its decode (not checked: the caller decoded it, and gives
        it away), judged ``speech`` by this stream's classifier; the same state and answers as the two."""
        frame = self._frame
        if self.packet != frame or len(codes) != frame or self._flat is not None:
            raise EndpointerError("push_packet() without a whole packet to take (see packet)")
        self.position += frame
        return self._take(pcm, codes, speech)

    def _take(self, pcm: Pcm, codes: Codes, speech: bool) -> list[EndpointEvent] | tuple[()] | None:
        """The state machine on one whole frame already counted in ``position`` (``pcm``, its μ-law ``codes``),
        judged ``speech``: the one body of push_packet and push_decided_lean's one-frame case."""
        frame = self._frame
        if self._in_speech:
            done = self._frames_done + 1
            self._frames_done = done
            end = done * frame
            if speech:
                self._silence = 0
                self._last_speech_end = end
                if end < self._max_end:
                    return None
            else:
                silence = self._silence + 1
                self._silence = silence
                if silence >= self._end_frames and end - self._utt_start >= self._min_samples:
                    return self._end(SpeechAudio(end - frame, pcm), end, "silence")
                if end < self._max_end:
                    return None
            return self._end(SpeechAudio(end - frame, pcm), end, "max_length")
        if speech:  # a run grows, perhaps to a start: the general loop
            return self._step(pcm, [True], codes) or NO_EVENTS
        # Idle and not speech: the codes into the history (absolute ring: no wrap unless it straddles).
        self._run = 0
        self._frames_done += 1
        end = self._ring_end
        pos = end % self._cap
        if pos + frame <= self._cap:
            self._ring_in[pos : pos + frame] = codes
            self._ring_end = end + frame
        else:
            self._remember(codes)
        return NO_EVENTS

    def _history(self, flat: Pcm, codes: Codes | None) -> Pcm | Codes:
        """What the history keeps of ``flat``: the samples, or their μ-law codes (given, else encoded)."""
        if not self._mulaw:
            return flat
        return _encode(flat) if codes is None else codes

    def _end(self, audio: SpeechAudio, end: int, reason: EndReason) -> list[EndpointEvent]:
        """_step's end of an utterance on its last frame (``audio``), for push_decided's one-frame path."""
        self._prev_last_speech = self._last_speech_end
        self._in_speech = False
        self._run = 0
        self._forget(end)
        return [audio, SpeechEnded(end, reason, self._last_speech_end)]

    def _step(self, flat: Pcm, decisions: list[bool], codes: Codes | None = None) -> list[EndpointEvent]:
        """Run the state machine over whole frames ``flat`` (decisions, one per frame; ``codes``: their μ-law)."""
        events: list[EndpointEvent] = []
        history = self._history(flat, codes)
        frame = self._frame
        base = self._frames_done * frame
        self._frames_done += len(decisions)
        idle_from = 0  # offset in flat where the current idle stretch began
        in_speech = self._in_speech
        for i, speech in enumerate(decisions):
            off = i * frame
            end = base + off + frame
            if not in_speech:
                if not speech:
                    self._run = 0
                    continue
                self._run += 1
                if self._run < self._start_frames:
                    continue
                self._remember(history[idle_from : off + frame])
                events.extend(self._start(end))
                in_speech = True
                continue
            events.append(SpeechAudio(base + off, flat[off : off + frame]))
            if speech:
                self._silence = 0
                self._last_speech_end = end
            else:
                self._silence += 1
            reason: EndReason | None = None
            if self._silence >= self._end_frames and end - self._utt_start >= self._min_samples:
                reason = "silence"
            elif end >= self._max_end:
                reason = "max_length"
            if reason is not None:
                events.append(SpeechEnded(end, reason, self._last_speech_end))
                self._prev_last_speech = self._last_speech_end
                in_speech = False
                self._run = 0
                self._forget(end)
                idle_from = off + frame
        self._in_speech = in_speech
        if not in_speech:
            self._remember(history[idle_from:])
        return events

    def _start(self, end: int) -> list[EndpointEvent]:
        """Speech confirmed on the frame ending at ``end``: emit Started + the confirming run."""
        start = end - self._run * self._frame
        prev = self._prev_last_speech
        continues = prev is not None and self._merge > 0 and start - prev <= self._merge
        earliest = max(self._ring_end - self._cap, self._ring_floor)  # the previous utterance's end, or the ring's capacity
        # A continuation's pre-roll is its whole gap (the ring holds merge_ms + a run, so ``earliest`` is
        # the previous end); otherwise preroll_ms, never into the previous utterance.
        pre_start = earliest if continues else max(start - self._preroll, earliest)
        preroll = self._recall(pre_start, start)
        run = self._recall(start, end)
        self._forget(end)
        self._utt_start = start
        self._max_end = start + self._max_frames * self._frame
        self._last_speech_end = end
        self._silence = 0
        self._run = 0
        return [SpeechStarted(start, preroll, pre_start, continues), SpeechAudio(start, run)]

    # History of idle audio: a ring holding the last pre-roll + confirming run, so the
    # hot idle path is one slice assignment, never an allocation.

    def _remember(self, audio: Pcm | Codes) -> None:
        """Append ``audio`` (as the history keeps it: samples or μ-law codes) to the history."""
        n = len(audio)
        if n == 0:
            return
        cap = self._cap
        end = self._ring_end + n
        self._ring_end = end
        if n > cap:  # only the last cap samples stay
            audio = audio[n - cap :]
            n = cap
        ring = self._ring_in
        pos = (end - n) % cap
        stop = pos + n
        if stop <= cap:
            ring[pos:stop] = audio
        else:
            k = cap - pos
            ring[pos:] = audio[:k]
            ring[: n - k] = audio[k:]

    def _recall(self, a: int, b: int) -> Pcm:
        """A copy of the remembered samples ``[a, b)`` (absolute positions, at most ``_cap`` before ``_ring_end``)."""
        if b <= a:
            return _EMPTY.copy()
        idx = np.arange(a, b)
        if self._mulaw:
            return mulaw.DECODE_TABLE.take(self._ring.take(idx, mode="wrap"))
        return self._ring.take(idx, mode="wrap")  # type: ignore[return-value]

    def _forget(self, position: int) -> None:
        """Drop the history: nothing before ``position`` may be used as pre-roll any more."""
        self._ring_end = position
        self._ring_floor = position

    def end(self) -> list[EndpointEvent]:
        """End of stream: flush a partial frame into an open utterance and close it."""
        if self._closed:
            return []
        if self._flat is not None:
            raise EndpointerError("end() before push_decided()")
        self._closed = True
        self.packet = 0
        if not self._in_speech:
            return []
        events: list[EndpointEvent] = []
        pending = self._pending
        if pending.shape[0]:
            events.append(SpeechAudio(self.position - pending.shape[0], pending))
        self._pending = _EMPTY
        self._in_speech = False
        events.append(SpeechEnded(self.position, "end_of_stream", self._last_speech_end))
        return events

    def may_start_within(self, samples: int) -> bool:
        """Whether the next ``samples`` samples could confirm speech (a :class:`SpeechStarted`), whatever their
        decisions: a caller that holds back another chunk's work until then (engine/call.py, a second chunk
        in one reactor pass) knows nothing may start meanwhile. In speech, an end must come first (a frame
        at least), then a whole confirming run."""
        frames = (int(self._pending.shape[0]) + samples) // self._frame
        if self._in_speech:
            return frames > self._start_frames
        return self._run + frames >= self._start_frames

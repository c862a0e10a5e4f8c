"""Frame classifiers: is this 10/20/30 ms frame speech?

A classifier sees whole frames, in order, as a 2-D int16 array ``(n, frame_samples)`` and
returns one bool per frame. It may keep state (noise floor) between calls, so one
classifier belongs to one stream. The default, :class:`EnergyClassifier`, costs a few
microseconds per frame; :class:`WebRtcClassifier` needs the ``webrtc`` extra.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Frames = npt.NDArray[np.int16]


class ClassifierError(ValueError):
    """Unknown classifier name, unsupported rate or frame size, or a missing optional extra."""


@runtime_checkable
class FrameClassifier(Protocol):
    """Judges fixed-size frames; ``frame_samples`` is the frame length at the stream's rate."""

    @property
    def frame_samples(self) -> int: ...

    def classify(self, frames: Frames) -> list[bool]:
        """One decision per row of ``frames`` (shape ``(n, frame_samples)``), in order."""
        ...


class EnergyClassifier:
    """Adaptive SNR detector: frame level against a tracked noise floor, with hysteresis.

    Why these choices, for telephone audio:

    * the level is the frame's variance (DC removed), so a DC offset or a constant signal
      is silence, not speech; no pre-emphasis, because tilting the spectrum up costs ~10 dB
      of SNR against white/line noise for the 300–1000 Hz band where telephone speech sits,
      and stationary hum or pink noise is handled by the floor anyway;
    * the noise floor follows quieter frames down quickly and rises slowly (faster when
      the frame is not speech), so it tracks the line's noise but not the talker;
    * hysteresis: a frame needs ``on_db`` above the floor to turn speech on and only
      ``off_db`` to keep it on, so weak word endings and short dips stay inside speech;
    * an absolute floor ``min_level_db`` so digital silence and the μ-law idle pattern
      never count as speech, however clean the line; such frames also leave the noise
      floor alone (hold/mute silence must not make the resuming line noise look like speech).

    Cost: one int16→float32 copy and one small matmul per call (Σx², Σx for every frame),
    then a few float operations per frame in Python.
    """

    __slots__ = (
        "_buf",
        "_down",
        "_floor",
        "_frame",
        "_min_floor_db",
        "_min_level_db",
        "_off_db",
        "_on_db",
        "_ones",
        "_rise_noise",
        "_rise_speech",
        "_speech",
        "sample_rate",
    )

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 20,
        *,
        on_db: float = 6.0,
        off_db: float = 3.0,
        min_level_db: float = 30.0,
        min_floor_db: float = 20.0,
        rise_noise_db_s: float = 6.0,
        rise_speech_db_s: float = 0.5,
        fall: float = 0.3,
    ) -> None:
        if sample_rate not in (8000, 16000):
            raise ClassifierError(f"energy classifier: unsupported sample rate {sample_rate}")
        if frame_ms not in (10, 20, 30):
            raise ClassifierError(f"energy classifier: frame_ms must be 10, 20 or 30, not {frame_ms}")
        self.sample_rate = sample_rate
        self._frame = sample_rate * frame_ms // 1000
        # Row 0 receives the frame; row 1 is ones, so buf @ buf[0] = (Σx², Σx) in one call.
        self._buf = np.ones((2, self._frame), dtype=np.float32)
        self._ones = np.ones(self._frame, dtype=np.float32)
        self._on_db = on_db
        self._off_db = off_db
        self._min_level_db = min_level_db
        self._min_floor_db = min_floor_db
        frames_per_s = 1000.0 / frame_ms
        self._rise_noise = rise_noise_db_s / frames_per_s
        self._rise_speech = rise_speech_db_s / frames_per_s
        self._down = fall
        self._floor: float | None = None
        self._speech = False

    @property
    def frame_samples(self) -> int:
        return self._frame

    @property
    def noise_floor_db(self) -> float | None:
        """The current noise-floor estimate (dB re 1 LSB²)."""
        return self._floor

    def levels_db(self, frames: Frames) -> list[float]:
        """Per-frame level: 10·log10(1 + variance), in dB re 1 LSB²."""
        n = self._frame
        if frames.shape[0] == 1:
            buf = self._buf
            buf[0] = frames[0]
            sq, s = (buf @ buf[0]).tolist()
            return [10.0 * math.log10(1.0 + max(sq - s * s / n, 0.0) / n)]
        x = frames.astype(np.float32)
        sqs = np.einsum("ij,ij->i", x, x).tolist()
        sums = (x @ self._ones).tolist()
        return [10.0 * math.log10(1.0 + max(sq - s * s / n, 0.0) / n) for sq, s in zip(sqs, sums, strict=True)]

    def classify(self, frames: Frames) -> list[bool]:
        if frames.shape[0] == 1:  # the hot path: one 20 ms frame per Twilio packet
            buf = self._buf
            buf[0] = frames[0]
            sq, s = (buf @ buf[0]).tolist()
            n = self._frame
            return [self._decide(10.0 * math.log10(1.0 + max(sq - s * s / n, 0.0) / n))]
        return [self._decide(lvl) for lvl in self.levels_db(frames)]

    def _decide(self, lvl: float) -> bool:
        """One frame: compare with the floor (hysteresis), then update the floor."""
        if lvl <= self._min_level_db:
            # Digital silence (μ-law 0xFF idle, hold, mute) or near it: never speech, and no
            # evidence about the line's noise, so the floor stays where the noise put it;
            # pulling it down would make the noise that resumes look like speech. Before
            # any noise was heard (a stream that opens with silence) the floor starts at its
            # minimum, so the first words are heard.
            if self._floor is None:
                self._floor = self._min_floor_db
            self._speech = False
            return False
        floor = self._floor
        if floor is None:
            floor = max(lvl, self._min_floor_db)
        speech = lvl > floor + (self._off_db if self._speech else self._on_db)
        if lvl < floor:
            floor = max(floor + self._down * (lvl - floor), self._min_floor_db)
        else:
            floor += min(lvl - floor, self._rise_speech if speech else self._rise_noise)
        self._floor = floor
        self._speech = speech
        return speech


_QUIET_SWING = 64


def quiet_frames(frames: Frames) -> list[bool]:
    """Frames whose peak-to-peak swing is under 64 LSB (so rms < 32 LSB, 30 dB re 1 LSB²,
    the energy classifier's ``min_level_db``): digital silence, the μ-law idle pattern."""
    return _quiet_mask(frames).tolist()  # type: ignore[no-any-return]


def _quiet_mask(frames: Frames) -> npt.NDArray[np.bool_]:
    """:func:`quiet_frames` as an array (int16 rows: the swing fits int32)."""
    return (frames.max(axis=1).astype(np.int32) - frames.min(axis=1)) < _QUIET_SWING  # type: ignore[no-any-return]


# Invariant (a bands classifier without the unmute window, i.e. ``bands``; alone, chunked or batched): a frame
# that quiet_frames calls digital silence has band ratios of exactly 1.0, so decide takes its digital-silence
# branch. The bands' own test (the loudest band under ``min_level_db``) alone let a chance frame of the μ-law
# idle pattern through (its band powers fluctuate; about one frame in several thousand reaches the bar), and
# against floors learnt on a quiet line that frame was speech: hold/mute silence starting an utterance (fuzz:
# digital silence after noise). With the unmute window such a frame is the one that ends digital silence, never
# speech, and the window lifts the floors to it; there the rule would only change decisions elsewhere (on
# babble's near-silent pauses: one more false start on several 20 dB rows), so it is not applied.
_QUIET_RULE_USED = False  # set once a classifier that needs the rule exists: no cost to a process without one


def _silence_quiet_rows(ratios: npt.NDArray[np.float32], frames: Frames, rows: list[bool] | None) -> None:
    """Set to 1.0, in place, the band ratios of the rows of ``frames`` that are digital silence (of those
    flagged in ``rows``, when given)."""
    quiet = _quiet_mask(frames)
    if rows is not None:
        quiet &= np.array(rows, dtype=bool)
    ratios[quiet] = 1.0


def _unless_quiet(ratios: list[float], frame: Frames) -> list[float]:
    """One frame's band ratios, or all 1.0 when the frame is digital silence (see _silence_quiet_rows)."""
    if int(frame.max()) - int(frame.min()) < _QUIET_SWING:
        return [1.0] * len(ratios)
    return ratios


class BandClassifier:
    """Per-band SNR in the voice band, against per-band noise floors (the ``bands`` classifier).

    Why, for telephone speech (measured on bench/corpus and bench/corpus_real, see BENCHMARKS.md):

    * only 300–3400 Hz counts: mains hum (50/60 Hz and low harmonics) and DC, which
      dominate a full-band level, are outside it;
    * six bands (300–500–800–1200–1800–2600–3400 Hz), each with its own noise floor: a
      quiet voiced tail that puts its energy in one or two bands stands several dB above
      those bands' floors while the full-band level sits within 1 dB of the noise (white
      or pink noise spreads over all bands; the tail does not);
    * the frame score is the mean over bands of the positive SNR (dB above the floor), so
      a stray peak in one band of babble is diluted while speech, which lifts several
      bands at once, is not; hysteresis (``on_db`` to start, ``off_db`` to stay) keeps weak
      endings in, but only once ``latch_frames`` consecutive frames reached ``on_db``: a
      click on the line (one loud frame) does not lower the bar for the noise after it;
    * floors fall quickly to quieter frames and rise slowly (faster outside speech), so
      they follow the line's noise, not the talker; a frame whose loudest band is below
      ``min_level_db`` is digital silence: never speech and no floor update;
    * the floors are learnt from the line: the first frame that is not digital silence
      sets them, whether the stream opened with it or with digital silence (a call that
      opens silent and then brings up its line noise must not hear that noise as speech);
      after that, digital silence (hold, mute) leaves them where the noise put them;
    * unmute (``resume_ms`` > 0, the ``bands-unmute`` classifier): the frame that ends digital
      silence is not speech and leaves the floors alone (it is mostly silence: it would pull
      them down), and for the ``resume_ms`` after it the floors rise (never fall) to the
      quietest level per band since the line came back, by at most ``resume_max_db`` (so a
      talker who speaks as the line comes back is still heard at once). Without it, noise that comes back
      louder than the floors left before the silence is heard as speech until the floors
      climb at the slow in-speech rate: seconds of run-on (bench/corpus_real_full
      dev_line_snr05_03, test_pink_snr05_05). 0 (the default) keeps the old behaviour.
    * clicks (``impulse_ratio`` > 0, the ``bands-click`` classifier): a frame that reaches ``on_db``
      but whose peak-to-peak swing exceeds ``impulse_ratio`` × its in-band rms is speech without
      engaging the hysteresis, so the next frame must reach ``on_db`` itself. Line clicks (one
      frame) then no longer let the noise after them confirm an utterance at the lower ``off_db``,
      which is what lets ``bands-click`` start at ``on_db`` 4.5 and hold weak endings down to
      ``off_db`` 2.0 (bench/corpus_real_full dev at 10 dB: not sent 1.2 → 0.8 %; see BENCHMARKS.md).

    Cost, the per-frame hot path (one 20 ms frame per Twilio packet): one int16→float32
    copy into a preallocated buffer, ``np.dot`` against a fixed windowed cos/sin basis into
    a preallocated output, an in-place square, a second ``np.dot`` summing bins into bands
    (a constant row adds the ``1 +`` of the ratios for free), then plain Python on six
    floats. :func:`classify_batch` shares the two matrix products across calls and decides the settled
    streams with numpy in one go (:func:`_step`, bit-identical to :meth:`decide`; a frame's swing is taken
    only when the click rule can matter, on an onset), their floors and runs kept in a struct of arrays
    between ticks (:class:`_Pool`, from 8 rows; subclasses: :func:`_decide_rows`, from 32 settled streams).
    """

    EDGES_HZ = (300.0, 500.0, 800.0, 1200.0, 1800.0, 2600.0, 3400.0)

    __slots__ = (
        "_basis",
        "_fall",
        "_fl",
        "_frame",
        "_group",
        "_impulse",
        "_informed",
        "_initial_cap",
        "_key",
        "_latch",
        "_nb",
        "_off_ratio",
        "_on_ratio",
        "_rescued",
        "_resume",
        "_resume_cap",
        "_resume_frames",
        "_resume_min",
        "_resume_top",
        "_rise_noise",
        "_rise_speech",
        "_rn",
        "_scratch",
        "_silence_ratio",
        "_slot",
        "_voiced_hold",
        "_voiced_ratio",
        "_voiced_start",
        "sample_rate",
    )

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 20,
        *,
        on_db: float = 5.0,
        off_db: float = 2.5,
        latch_frames: int = 1,
        min_level_db: float = 20.0,
        max_initial_floor_db: float = 40.0,
        rise_noise_db_s: float = 3.0,
        rise_speech_db_s: float = 0.3,
        fall: float = 0.1,
        resume_ms: int = 0,
        resume_max_db: float = 6.0,
        impulse_ratio: float = 0.0,
    ) -> None:
        if sample_rate not in (8000, 16000):
            raise ClassifierError(f"bands classifier: unsupported sample rate {sample_rate}")
        if frame_ms not in (10, 20, 30):
            raise ClassifierError(f"bands classifier: frame_ms must be 10, 20 or 30, not {frame_ms}")
        self.sample_rate = sample_rate
        frame = sample_rate * frame_ms // 1000
        self._frame = frame
        self._basis, self._group = _band_matrices(sample_rate, frame)
        nb = len(self.EDGES_HZ) - 1
        self._nb = nb
        self._scratch = (frame + 1) << 16 | self._basis.shape[1]  # its one-frame buffers' key (_buffers)
        frames_per_s = 1000.0 / frame_ms
        # As power ratios: a floor rises at most ×rise per frame; speech when the product of
        # the bands' ratios above their floors exceeds on_db (off_db) per band on average.
        self._rise_noise: float = 10.0 ** (rise_noise_db_s / frames_per_s / 10.0)
        self._rise_speech: float = 10.0 ** (rise_speech_db_s / frames_per_s / 10.0)
        self._fall = fall
        self._on_ratio: float = 10.0 ** (on_db * nb / 10.0)
        self._off_ratio: float = 10.0 ** (off_db * nb / 10.0)
        self._latch = max(1, latch_frames)
        self._silence_ratio: float = 10.0 ** (min_level_db / 10.0)  # 1 + the min power
        self._initial_cap: float = 10.0 ** (max_initial_floor_db / 10.0)
        # The floors and the run (consecutive speech frames; ≥ latch: hysteresis engaged) are here while the
        # stream is decided alone; once classify_batch has settled it, they live in the pool's row ``_slot``
        # (_Pool; 0: not in the pool) and ``_floors`` / ``_run`` read them there (decide takes them back first).
        self._fl: list[float] | None = None
        self._rn = 0
        self._slot = 0
        self._informed = False  # floors learnt from the line (not just digital silence)
        # Unmute: the first frames after digital silence lift the floors to what the line brings back.
        self._resume_frames = max(0, -(-resume_ms // frame_ms))
        if not self._resume_frames:
            global _QUIET_RULE_USED
            _QUIET_RULE_USED = True
        self._resume = 0  # frames of the resume window still to come (0: not resuming)
        self._resume_cap: float = 10.0 ** (resume_max_db / 10.0)  # the most a floor is lifted on unmute
        # Per band, the quietest level since the line came back, and the highest the floor may be lifted to:
        # lists during the resume window only, () outside it (issue 13: not two lists per call for its life).
        self._resume_min: Sequence[float] = ()
        self._resume_top: Sequence[float] = ()
        # Clicks: (peak-to-peak)² above impulse_ratio² × the in-band power per sample (0: off).
        self._impulse: float = impulse_ratio * impulse_ratio if impulse_ratio > 0 else 0.0
        # Periodic frames (``bands-pitch``, engine/endpointing/pitch.py): speech above this product (∞: off).
        self._voiced_ratio: float = math.inf
        self._voiced_hold: float = math.inf  # the periodicity that holds speech while the hysteresis is engaged
        self._voiced_start: float = math.inf  # ... that also counts outside it (starts a run)
        self._rescued = False  # the last frame was speech by its periodicity alone
        self._key: tuple[float, ...] | None = None  # the decision's parameters, for _decide_rows (set there)

    @property
    def frame_samples(self) -> int:
        return self._frame

    # The one-frame path's buffers (the frame + a constant 1.0, its spectrum, its bands) are scratch, written
    # before every read: one set per thread and shape for every bands classifier (_LOCAL), not 1.3 KiB per call
    # (issue 13; every call's first frames are classified alone, before it joins the reactor's batch).
    def _buffers(self) -> _Buffers:
        try:
            return _LOCAL.buffers[self._scratch]  # type: ignore[no-any-return]
        except AttributeError:
            _LOCAL.buffers = {}
        except KeyError:
            pass
        made: _Buffers = (np.ones(self._frame + 1, dtype=np.float32), np.zeros(self._basis.shape[1], dtype=np.float32),
                          np.zeros(self._nb, dtype=np.float32))
        _LOCAL.buffers[self._scratch] = made
        return made

    @property
    def _vec(self) -> npt.NDArray[np.float32]:
        return self._buffers()[0]

    @property
    def _spec(self) -> npt.NDArray[np.float32]:
        return self._buffers()[1]

    @property
    def _pow(self) -> npt.NDArray[np.float32]:
        return self._buffers()[2]

    @property
    def noise_floors_db(self) -> list[float] | None:
        """The per-band noise floors (dB), lowest band first; None before the first frame."""
        floors = self._floors
        return None if floors is None else [10.0 * math.log10(f) for f in floors]

    @property
    def _floors(self) -> list[float] | None:
        """Per band, 1 + the noise floor's power (None before the first frame), wherever it lives now."""
        if self._slot:
            with _LOCK:
                if self._slot:
                    return _POOL.floors[self._slot].tolist()  # type: ignore[no-any-return]
        return self._fl

    @_floors.setter
    def _floors(self, floors: list[float] | None) -> None:
        if self._slot:
            self._detach()
        self._fl = floors

    @property
    def _run(self) -> int:
        """Consecutive speech frames (≥ latch: the hysteresis is engaged), wherever it lives now."""
        if self._slot:
            with _LOCK:
                if self._slot:
                    return int(_POOL.run[self._slot])
        return self._rn

    @_run.setter
    def _run(self, run: int) -> None:
        if self._slot:
            self._detach()
        self._rn = run

    def _detach(self) -> None:
        """Take the floors and run back from classify_batch's pool (the stream is decided alone now)."""
        with _LOCK:
            if self._slot:
                _POOL.detach(self)

    def __getstate__(self) -> object:
        # A copy (copy, deepcopy, pickle) must not share the pool row: the state comes back into the object first.
        self._detach()
        return object.__getstate__(self)

    def __del__(self) -> None:
        # A call ends (its classifier goes) at any time: its pool row is free again. Only a list append, no
        # lock (a collection may run this inside the pool's own locked code); the row's data is just left.
        # (getattr: an __init__ that raised on its arguments never set it.)
        slot = getattr(self, "_slot", 0)
        if slot:
            _FREE_ROWS.append(slot)

    def band_ratios(self, frames: Frames) -> list[list[float]]:
        """Per frame, 1 + the mean power per bin of each band (≈ 1 + the variance of white noise)."""
        if frames.shape[0] == 1:
            vec, spec, pw = self._buffers()
            vec[: self._frame] = frames[0]
            np.dot(vec, self._basis, out=spec)
            np.multiply(spec, spec, out=spec)
            ratios = np.dot(spec, self._group, out=pw).tolist()
            return [ratios if self._resume_frames else _unless_quiet(ratios, frames[0])]
        return _band_ratios(self._basis, self._group, frames, not self._resume_frames)

    def ratios_and_swings(self, frames: Frames) -> tuple[list[list[float]], Sequence[float | Frames]]:
        """Per frame, :meth:`band_ratios` and what ``decide`` takes as its swing (the frame itself when the click
        rule may ask for it, else 0.0): the prelude of every subclass's ``classify`` that decides per frame."""
        if frames.shape[0] == 1:  # the hot path: one 20 ms frame per Twilio packet
            return self.band_ratios(frames), [frames[0] if self._impulse else 0.0]
        swings = _swings(frames) if self._impulse else [0.0] * frames.shape[0]
        return _band_ratios(self._basis, self._group, frames, not self._resume_frames), swings

    def band_powers(self, frames: Frames) -> list[list[float]]:
        """Per frame, the mean power per bin of each band (linear, ≈ the variance of white noise)."""
        return [[r - 1.0 for r in row] for row in self.band_ratios(frames)]

    def classify(self, frames: Frames) -> list[bool]:
        if frames.shape[0] == 1:  # the hot path, inlined: one 20 ms frame per Twilio packet
            try:
                vec, spec, pw = _LOCAL.buffers[self._scratch]
            except (AttributeError, KeyError):
                vec, spec, pw = self._buffers()
            vec[: self._frame] = frames[0]
            np.dot(vec, self._basis, out=spec)
            np.multiply(spec, spec, out=spec)
            ratios = np.dot(spec, self._group, out=pw).tolist()
            if not self._resume_frames:
                ratios = _unless_quiet(ratios, frames[0])
            return [self.decide(ratios, frames[0] if self._impulse else 0.0)]
        decide = self.decide
        all_ratios = _band_ratios(self._basis, self._group, frames, not self._resume_frames)
        if self._impulse:
            swings = _swings(frames)
            return [decide(r, w) for r, w in zip(all_ratios, swings, strict=True)]
        return [decide(ratios) for ratios in all_ratios]

    def _is_click(self, ratios: list[float], swing: float | Frames) -> bool:
        """Peak-to-peak swing beyond ``impulse_ratio`` × the in-band rms (``sum(ratios) - nb`` is nb × the power)."""
        if isinstance(swing, np.ndarray):
            swing = float(int(swing.max()) - int(swing.min()))
        return swing * swing * self._nb > self._impulse * (sum(ratios) - self._nb)

    @classmethod
    def classify_batch(cls, classifiers: Sequence[BandClassifier], frames: Frames) -> list[bool]:
        """One frame for each of many streams (row i → classifiers[i]): the matrix products once, and the
        decisions of every settled stream in one go (:func:`_decide_rows`)."""
        first = classifiers[0]
        if not all(map(operator.is_, map(_BASIS, classifiers), itertools.repeat(first._basis))):  # C loops, no genexpr
            return [c.classify(frames[i : i + 1])[0] for i, c in enumerate(classifiers)]
        bands = _band_array(first._basis, first._group, frames)
        if _QUIET_RULE_USED and cls is BandClassifier:
            _silence_quiet_rows(bands, frames, [not c._resume_frames for c in classifiers])
        # The frames stand for their swings: only an onset's is taken (the click rule; nothing without it).
        if cls is BandClassifier:  # its state may live in the pool (a subclass's state has more: its own way)
            return _decide_pooled(classifiers, bands, frames)
        return _decide_rows(classifiers, bands, frames, None)[0]

    #: Rows per classify_batch call that FrameBatch may give (engine/endpointing/batch.py): every row of a
    #: round, since the matrix products are cut into MATMUL_ROWS here and the decision's numpy cost is per
    #: call, not per row (issue 13: 2.6 µs/row at 32 rows, 1.2 at 200; BENCHMARKS.md § Capacity).
    batch_rows: ClassVar[int] = 1 << 16

    def _params(self) -> tuple[float, ...]:
        """The decision's parameters (fixed after construction), one shared tuple per distinct set."""
        key = self._key
        if key is None:
            key = (
                self._nb, self._silence_ratio, self._on_ratio, self._off_ratio, self._latch, self._fall,
                self._rise_speech, self._rise_noise, self._impulse, self._voiced_ratio, self._voiced_hold,
                self._voiced_start,
            )  # fmt: skip
            key = self._key = _PARAMS.setdefault(key, key)
            _KIDS.setdefault(key, len(_KIDS))
        return key

    def decide(self, ratios: list[float], swing: float | Frames = 0.0, voicing: float = 0.0) -> bool:
        """One frame, given its per-band ``1 + power`` (from :meth:`band_ratios`) and, for the click
        rule, its peak-to-peak swing or the frame itself (the swing is then computed only if needed);
        ``voicing``: the frame's periodicity (``bands-pitch``: a periodic frame needs only a product above
        the lower ``voiced_ratio``).

        Works on power ratios: the sum of per-band positive SNRs in dB is the log of the
        product of the ratios above 1, and a dB step up on a floor is a factor, so there is
        no logarithm per band."""
        if self._slot:  # settled in classify_batch's pool: its floors and run come back here first
            self._detach()
        floors = self._fl
        if not self._informed:
            if max(ratios) <= self._silence_ratio:
                # Digital silence before any line noise: floors at the minimum until the line shows.
                if floors is None:
                    self._fl = [self._silence_ratio] * self._nb
                self._rn = 0
                return False
            # The first frame that is not digital silence: the floors start at it. After
            # digital silence, no higher than the loudest plausible line noise, so a talker
            # who starts at once on a clean line is heard at once, while line noise coming
            # up after the silence is learnt as noise, not heard as speech.
            cap = self._initial_cap if floors is not None else math.inf
            floors = self._fl = [r if r < cap else cap for r in ratios]
            self._informed = True
        elif max(ratios) <= self._silence_ratio:
            # Digital silence (hold, mute): no evidence about the line's noise, so the floors
            # the noise set stay; the frames that bring the line back re-learn them (below).
            self._rn = 0
            self._resume = self._resume_frames + 1 if self._resume_frames else 0
            self._resume_min = ()
            return False
        elif self._resume:
            # Unmute: the noise that comes back after hold/mute may be louder than the floors
            # left before it (they sink during the last words, or the line changed); floors
            # rising at the slow speech rate would then hear it as speech for seconds. The
            # first frame after the silence straddles the edge (mostly silence): it is not
            # speech and says nothing about the noise. For the next ``resume_ms`` the floors
            # go up (never down, at most ``resume_max_db``) to the quietest level per band since
            # then: the resumed noise is learnt, while a talker who starts at once lifts them by
            # no more than the cap, and they fall back to the noise (``fall``) at the first quieter frame.
            resume = self._resume
            self._resume = resume - 1
            if resume > self._resume_frames:
                self._rn = 0
                return False
            low = self._resume_min
            if not low:  # the window's first frame: the most each floor may reach is fixed now
                self._resume_top = [fl * self._resume_cap for fl in floors]  # type: ignore[union-attr]
                low = self._resume_min = list(ratios)
            else:
                low = self._resume_min = [min(a, b) for a, b in zip(low, ratios, strict=True)]
            assert floors is not None
            floors = self._fl = [
                fl if fl > lo else (lo if lo < top else top)
                for fl, lo, top in zip(floors, low, self._resume_top, strict=True)
            ]
            if resume == 1:  # the window's last frame: nothing reads them until the next digital silence
                self._resume_min = self._resume_top = ()
        assert floors is not None
        product = 1.0
        for p, fl in zip(ratios, floors, strict=True):
            if p > fl:
                product *= p / fl
        run = self._rn
        speech = product > (self._off_ratio if run >= self._latch else self._on_ratio)
        self._rescued = False
        if (
            not speech
            and product > self._voiced_ratio
            and voicing >= (self._voiced_hold if run >= self._latch else self._voiced_start)
        ):
            # A periodic frame a little above the floors: a voiced syllable under stationary noise
            # (pink, hiss and clicks are aperiodic; hum is periodic but learnt by the floors).
            speech = self._rescued = True
        if speech and run < self._latch and self._impulse and self._is_click(ratios, swing):
            # A click on the line: its swing is far beyond what its in-band power allows for
            # voice or noise. It is speech (a plosive looks the same) but does not engage the
            # hysteresis: the next frame must reach on_db by itself, so the line noise after a
            # click cannot pass the lower bar and confirm an utterance.
            self._rn = 0
            rise = self._rise_speech
        elif speech:
            self._rn = run + 1
            rise = self._rise_speech
        else:
            self._rn = 0
            rise = self._rise_noise
        fall = self._fall
        # Down: a fraction ``fall`` of the way to the frame's level in dB; up: to it, at most ×rise.
        self._fl = [
            fl * (p / fl) ** fall if p < fl else (p if p < fl * rise else fl * rise)
            for p, fl in zip(ratios, floors, strict=True)
        ]
        return speech


_PARAMS: dict[tuple[float, ...], tuple[float, ...]] = {}
_Buffers = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]
_LOCAL = threading.local()  # .buffers: the one-frame scratch by shape; per thread, as np.dot releases the GIL

#: Fewer settled rows than this are decided row by row by _decide_rows (bands-hold, bands-pitch): the vectorised
#: decision costs ~60 µs per call whatever the rows (about 25 numpy operations), ``decide`` ~3 µs per row; they
#: break even at 24-32 rows (BENCHMARKS.md § Capacity, issue 13).
VECTOR_MIN_ROWS = 32
#: Fewer rows than this in a classify_batch of plain bands classifiers are decided row by row (their state taken
#: back from the pool): with the state already in arrays the vectorised decision costs ~20 µs per call, about
#: as much as ``decide`` for 6-8 rows (issue 13 round 5).
POOL_MIN_ROWS = 8


class _Pool:
    """The floors and runs of the settled plain bands classifiers (issue 13 round 5), as a struct of arrays.

    Why: gathering each stream's floors from its list into arrays and scattering them back, every tick, was
    most of the batched decision's per-row Python (attribute reads and writes, a list of six floats built per
    row). A stream that classify_batch finds settled (floors learnt from the line, no unmute window) moves its
    floors and run here, into its own row ``_slot``; from then a tick gathers and scatters every row with two
    numpy calls each. Row 0 is never given out (``_slot`` 0: not here; its ``key`` stays -1, so it matches no
    parameters). Invariant: a stream with a row is settled (``decide`` takes its state back before it runs: a
    stream decided alone, on digital silence, or by a small batch leaves; classify_batch brings it back once
    settled); ``key`` is the row's parameters' id (:data:`_KIDS`), so a tick vectorises only the rows decided
    by its own parameters. A stream that goes frees its row (``BandClassifier.__del__``). Every access to the
    arrays holds :data:`_LOCK` (they are replaced when the pool grows)."""

    __slots__ = ("floors", "free", "key", "run")

    def __init__(self, nb: int) -> None:
        self.floors = np.ones((1, nb), dtype=np.float64)
        self.run = np.zeros(1, dtype=np.int64)
        self.key = np.full(1, -1, dtype=np.int64)
        self.free: list[int] = []  # rows to give out (only ever appended to or popped: __del__ holds a reference)

    def attach(self, streams: Sequence[BandClassifier], kid: int) -> None:
        """Move settled streams' floors and runs into rows of their own (``kid``: their parameters' id)."""
        k = len(streams)
        if len(self.free) < k:
            have = self.floors.shape[0]
            size = max(2 * have, have + k)
            self.floors = np.concatenate([self.floors, np.ones((size - have, self.floors.shape[1]))])
            self.run = np.concatenate([self.run, np.zeros(size - have, dtype=np.int64)])
            self.key = np.concatenate([self.key, np.full(size - have, -1, dtype=np.int64)])
            self.free.extend(range(size - 1, have - 1, -1))
        rows = [self.free.pop() for _ in range(k)]
        self.floors[rows] = [c._fl for c in streams]
        self.run[rows] = [c._rn for c in streams]
        self.key[rows] = kid
        for c, row in zip(streams, rows, strict=True):
            c._slot = row
            c._fl = None  # the row holds them now (and a list of six floats per call is not kept)

    def detach(self, c: BandClassifier) -> None:
        """Give a stream its floors and run back, and free its row."""
        row = c._slot
        c._fl = self.floors[row].tolist()
        c._rn = int(self.run[row])
        c._slot = 0
        self.key[row] = -1
        self.free.append(row)


_POOL = _Pool(len(BandClassifier.EDGES_HZ) - 1)
_FREE_ROWS = _POOL.free
_LOCK = threading.Lock()
_KIDS: dict[tuple[float, ...], int] = {}  # parameters (BandClassifier._params) -> their id in _Pool.key
_SLOT = operator.attrgetter("_slot")


def _decide_pooled(classifiers: Sequence[BandClassifier], bands: npt.NDArray[np.float32], frames: Frames) -> list[bool]:
    """:meth:`BandClassifier.decide` for one frame of each of many plain bands streams (row i → classifiers[i];
    ``bands``: the rows' ``1 + band powers``; ``frames``: the rows, whose swing is taken only for an onset),
    the settled ones' state in the pool (:class:`_Pool`).

    The rows in the pool with the first stream's parameters, on a frame that is not digital silence (nearly
    all, every tick), are decided by :func:`_step` on their pool rows; every other row asks its own ``decide``
    (which takes its state out of the pool) and joins the pool afterwards if that left it settled."""
    n = len(classifiers)
    key = classifiers[0]._params()
    # Alone, a row's own frame stands for its swing (taken only if its own click rule asks: parameters may differ).
    if n < POOL_MIN_ROWS or key[9] != math.inf:  # few rows (or a periodicity rule, which needs its voicing): alone
        return [c.decide(r, f) for c, r, f in zip(classifiers, bands.tolist(), frames, strict=True)]
    kid = _KIDS[key]
    with _LOCK:
        pool = _POOL
        slots = np.fromiter(map(_SLOT, classifiers), np.intp, n)
        ok = pool.key.take(slots) == kid
        ok &= bands.max(axis=1) > key[1]
        if ok.all():  # the common case: every row settled in the pool, none digital silence
            return _pooled_step(pool, key, bands, slots, frames, at=None)
        out = [False] * n
        fast = np.flatnonzero(ok)
        if fast.size:
            at: list[int] = fast.tolist()
            for i, got in zip(at, _pooled_step(pool, key, bands[fast], slots[fast], frames, at=at), strict=True):
                out[i] = got
        slow: list[int] = np.flatnonzero(~ok).tolist()
        join = []
        for i, r in zip(slow, bands[slow].tolist(), strict=True):
            c = classifiers[i]
            if c._slot:  # digital silence, or another kind's parameters: decided alone, out of the pool
                pool.detach(c)
            out[i] = c.decide(r, frames[i])
            if c._informed and not c._resume and c._params() is key:
                join.append(c)
        if join:
            pool.attach(join, kid)
        return out


def _pooled_step(
    pool: _Pool, key: tuple[float, ...], bands: npt.NDArray[np.float32], slots: npt.NDArray[np.intp], frames: Frames,
    *, at: list[int] | None,
) -> list[bool]:
    """The rows of ``bands`` decided on their pool rows ``slots`` (``at``: their rows in ``frames``, None: the same)."""
    speech, floors, run, _ = _step(key, bands.astype(np.float64), pool.floors.take(slots, axis=0), pool.run.take(slots),
                                   swings=frames, at=at)
    pool.floors[slots] = floors
    pool.run[slots] = run
    return speech.tolist()  # type: ignore[no-any-return]


def _decide_rows(
    classifiers: Sequence[BandClassifier],
    bands: npt.NDArray[np.float32],
    swings: Sequence[float] | Frames | None,
    voicing: Sequence[float] | None,
    *,
    min_rows: int = 0,
) -> tuple[list[bool], list[bool]]:
    """:meth:`BandClassifier.decide` for one frame of each of many streams (row i → classifiers[i]; ``bands``:
    the rows' ``1 + band powers``; ``swings`` / ``voicing`` as ``decide``'s, None: 0; ``swings`` may be the
    rows' frames, of which a swing is taken only where the click rule asks for it), and whether each was
    rescued by its periodicity (``_rescued``); ``min_rows``: VECTOR_MIN_ROWS unless given (tests). The batched
    decision of ``bands-hold`` and ``bands-pitch``, whose state stays in their objects (plain ``bands``
    kinds: :func:`_decide_pooled`).

    Issue 13: the decision of a *settled* stream (floors learnt, no unmute window) on a frame that is not
    digital silence (the common case by far) is done for all such rows with numpy (:func:`_step`), on float64
    arrays gathered from the classifiers and scattered back; every other row asks its own ``decide``."""
    n = len(classifiers)
    if any(map(_SLOT, classifiers)):  # a plain bands stream settled in the pool: its state back in it first
        for c in classifiers:
            c._detach()
    if n < (min_rows or VECTOR_MIN_ROWS):  # too few rows to vectorise: decide's own cost, nothing added
        each: list[list[float]] = bands.tolist()
        if swings is None and voicing is None:
            alone = [c.decide(r) for c, r in zip(classifiers, each, strict=True)]
        else:
            ws = [0.0] * n if swings is None else swings
            vs = [0.0] * n if voicing is None else voicing
            alone = [c.decide(r, s, x) for c, r, s, x in zip(classifiers, each, ws, vs, strict=True)]
        return alone, [c._rescued for c in classifiers]
    key = classifiers[0]._params()
    silence, v_ratio = key[1], key[9]
    loud = (bands.max(axis=1) > silence).tolist()
    fast = [
        i
        for i, c in enumerate(classifiers)
        if loud[i] and c._informed and not c._resume and (c._key if c._key is not None else c._params()) is key
    ]
    if len(fast) < (min_rows or VECTOR_MIN_ROWS):  # numpy's fixed cost per call would outweigh the rows'
        fast = []
    every = len(fast) == n
    out: list[bool] = []
    rescued: list[bool] = []
    if not every:  # learning, unmute, digital silence, or other parameters: each its own decide
        out, rescued = [False] * n, [False] * n
        slow: Sequence[int]
        if fast:  # only the other rows' ratios as lists (issue 13: not every row's)
            fast_set = set(fast)
            slow = [i for i in range(n) if i not in fast_set]
            ratios: list[list[float]] = bands[slow].tolist()
        else:
            slow = range(n)
            ratios = bands.tolist()
        for i, r in zip(slow, ratios, strict=True):
            c = classifiers[i]
            out[i] = c.decide(r, 0.0 if swings is None else swings[i], 0.0 if voicing is None else voicing[i])
            rescued[i] = c._rescued
        if not fast:
            return out, rescued
    sel = classifiers if every else [classifiers[i] for i in fast]
    k = len(sel)
    p = bands.astype(np.float64) if every else bands[fast].astype(np.float64)
    # Gathered straight into arrays (no nested list for np.array to inspect): ~2x cheaper per row (issue 13).
    fl = np.fromiter(_chain(map(_FLOORS, sel)), np.float64, p.size).reshape(p.shape)
    run = np.fromiter(map(_RUN, sel), np.int64, k)
    v = None
    if voicing is not None and v_ratio != math.inf:
        v = np.array(voicing if every else [voicing[i] for i in fast], dtype=np.float64)
    speech, new, new_run, resc = _step(key, p, fl, run, voicing=v, swings=swings, at=None if every else fast)
    if v_ratio == math.inf:  # no periodicity rule: _rescued is never set, it stays False (decide's too)
        for c, f, r in zip(sel, new.tolist(), new_run.tolist(), strict=True):
            c._fl = f
            c._rn = r
    else:  # a periodicity rule but no voicing given: no row rescued (decide with voicing 0 says so)
        was_rescued = resc.tolist() if resc is not _NO_ROWS else [False] * k
        for c, f, r, x in zip(sel, new.tolist(), new_run.tolist(), was_rescued, strict=True):
            c._fl = f
            c._rn = r
            c._rescued = x
    got = speech.tolist()
    if resc is _NO_ROWS:  # no row rescued: ``rescued`` stays all False
        if every:
            return got, [False] * k
        for i, g in zip(fast, got, strict=True):
            out[i] = g
        return out, rescued
    was = resc.tolist()
    if every:
        return got, was
    for j, i in enumerate(fast):
        out[i] = got[j]
        rescued[i] = was[j]
    return out, rescued


_Rows = npt.NDArray[np.float64]


def _step(
    key: tuple[float, ...], p: _Rows, fl: _Rows, run: npt.NDArray[np.int64], *, voicing: _Rows | None = None,
    swings: Sequence[float] | Frames | None, at: list[int] | None,
) -> tuple[npt.NDArray[np.bool_], _Rows, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """``decide`` for settled streams on frames that are not digital silence, every row at once: ``p`` their
    ``1 + band powers``, ``fl`` their floors, ``run`` their runs, ``voicing`` their periodicity (None: no
    rescue), ``swings`` their swings or frames (rows ``at`` of it; None: the same rows). Gives the decisions,
    the new floors and runs, and the rows rescued by their periodicity (:data:`_NO_ROWS` without ``voicing``).

    The arrays repeat ``decide``'s operations in its order (products band by band, the swing test, the floors'
    update: the same IEEE float64 operations on the same values), so the floors and decisions are identical to
    ``decide`` row by row (tests/endpointing/test_classifier_vector.py, fuzz/test_endpointer_batch_props.py)."""
    nb, _, on, off, latch, fall, rise_speech, rise_noise, impulse, v_ratio, v_hold, v_start = key
    d = p / fl
    # The product of the ratios above the floors: decide multiplies band by band, skipping p <= fl, and
    # p / fl <= 1 exactly when p <= fl (division is monotonic), so x max(p / fl, 1) is the same product.
    product = np.maximum(d, 1.0).prod(axis=1)
    latched = run >= latch
    speech = product > np.where(latched, off, on)
    resc = _NO_ROWS
    if voicing is not None:
        resc = ~speech & (product > v_ratio) & (voicing >= np.where(latched, v_hold, v_start))
        speech |= resc
    grow = speech
    if impulse and swings is not None:
        # The click rule can only matter on an onset (speech, hysteresis not engaged): a few rows a tick. Each
        # is tested in Python as decide tests it (its swing, taken from its frame only now if ``swings`` holds
        # the frames; sum() of its ratios left to right), not by ~15 numpy calls over every row (issue 13).
        onset = np.flatnonzero(speech > latched).tolist()  # speech & ~latched, one call
        if onset:
            grow = speech.copy()
            onset_ratios: list[list[float]] = p[onset].tolist()
            rows = onset if at is None else [at[j] for j in onset]  # the onsets' rows in ``swings``
            onset_swings: Sequence[float | Frames]
            if isinstance(swings, np.ndarray) and len(rows) > 1:  # several: their swings in one go (~5 numpy calls)
                of = swings[rows]
                onset_swings = (of.max(axis=1).astype(np.int32) - of.min(axis=1)).tolist()
            else:
                onset_swings = [swings[i] for i in rows]
            for j, band_row, given in zip(onset, onset_ratios, onset_swings, strict=True):
                # one onset's frame: its swing, as decide takes it
                w = float(int(given.max()) - int(given.min())) if isinstance(given, np.ndarray) else given
                if w * w * nb > impulse * (sum(band_row) - nb):  # a click engages nothing
                    grow[j] = False
    new_run = np.where(grow, run + 1, 0)
    # up: to p, at most fl * rise (min(p, up) is decide's ``p if p < up else up``); down: fl * (p / fl) ** fall
    new = np.minimum(p, fl * np.where(speech, rise_speech, rise_noise)[:, None])
    down = p < fl
    # The fall's power is taken by Python's ``**`` (C's pow), as decide does, not by ``np.power``: numpy may
    # dispatch that to a vector library (SVML on AVX-512 machines) whose result can differ by an ulp, and
    # then the floors would drift from decide's on such a machine. One pow per falling band value.
    # (f * x**fall: the product of two float64 is the same IEEE operation in numpy as in Python.) pow(x, fall)
    # is ``x ** fall`` (float.__pow__), mapped in C straight into an array: no list for np.array to inspect.
    where = np.flatnonzero(down)
    if m := where.size:
        fallen = np.fromiter(map(pow, d.take(where).tolist(), _repeat(fall)), np.float64, m)
        np.put(new, where, fl.take(where) * fallen)
    return speech, new, new_run, resc


_NO_ROWS = np.zeros(0, dtype=bool)  # _decide_rows: no row rescued by its periodicity (no periodicity rule)


_chain = itertools.chain.from_iterable
_repeat = itertools.repeat
_FLOORS = operator.attrgetter("_fl")  # the floors of a stream decided in its object (not in the pool)
_RUN = operator.attrgetter("_rn")
_BASIS = operator.attrgetter("_basis")


def _row_sums(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each row's sum left to right, as Python's ``sum`` of the row's list (numpy's reduction may
    associate differently: not the same float)."""
    total = p[:, 0].copy()
    for b in range(1, p.shape[1]):
        total += p[:, b]
    return total


def _swings(frames: Frames) -> list[int]:
    """Peak-to-peak swing of every row (int16 rows: no overflow in int32)."""
    return (frames.max(axis=1).astype(np.int32) - frames.min(axis=1)).tolist()  # type: ignore[no-any-return]


@functools.cache
def _band_matrices(sample_rate: int, frame: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The bands classifier's two fixed matrices for a rate and frame size, shared by every call."""
    edges = BandClassifier.EDGES_HZ
    # 100 Hz apart whatever the frame length: a filter bank, not an orthogonal transform.
    freqs = np.arange(edges[0], edges[-1] + 1e-6, 100.0)
    nf = len(freqs)
    t = np.arange(frame) / sample_rate
    window = np.hanning(frame + 2)[1:-1]
    angle = 2 * np.pi * np.outer(t, freqs)
    cols = np.concatenate([np.cos(angle), np.sin(angle)], axis=1) * window[:, None]
    cols -= cols.mean(axis=0)  # a DC offset contributes nothing
    # One extra input (always 1.0) feeding one extra output column (always 1.0), which
    # the band sums add to every band: the products give 1 + power directly.
    basis = np.zeros((frame + 1, 2 * nf + 1))
    basis[:frame, : 2 * nf] = cols
    basis[frame, 2 * nf] = 1.0
    nb = len(edges) - 1
    band = np.clip(np.searchsorted(edges, freqs, side="right") - 1, 0, nb - 1)
    group = np.zeros((2 * nf + 1, nb))
    group[np.arange(nf), band] = 1.0
    group[np.arange(nf) + nf, band] = 1.0
    # mean power per bin, scaled so white noise of variance σ² reads ≈ σ² in every band
    group[: 2 * nf] /= group[: 2 * nf].sum(axis=0) * float((window**2).sum()) / 2
    group[2 * nf] = 1.0
    b32, g32 = basis.astype(np.float32), group.astype(np.float32)
    b32.setflags(write=False)
    g32.setflags(write=False)
    return b32, g32


#: Rows per matrix product when BLAS may run several threads: above ~50 rows OpenBLAS runs it on several
#: threads, which on a shared 2-core machine costs 3-10x more per row (BENCHMARKS.md § Capacity, issue 13);
#: 32 keeps one thread.
MATMUL_ROWS = 32


def _blas_single_threaded() -> bool:
    """Whether OpenBLAS was told to run one thread: the variables it reads (in its order) when numpy loads,
    which ``sori`` sets to 1 before that (engine/_threads.py). A variable set after numpy loaded is read as
    if it had been in time: the price is speed (threaded products above ~50 rows), never a wrong result."""
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            return value == "1"
    return False


#: Rows per product in _band_array: every row at once when BLAS is single-threaded (a whole round's 60 rows
#: in one product cost half what two products of 32 + 28 do: 25 vs 47 µs, issue 13), else MATMUL_ROWS.
_MATMUL_CUT = 1 << 30 if _blas_single_threaded() else MATMUL_ROWS


def _band_array(basis: npt.NDArray[np.float32], group: npt.NDArray[np.float32], frames: Frames) -> npt.NDArray[np.float32]:
    """1 + band powers for every row of ``frames`` (any number of rows, _MATMUL_CUT per product), as an array."""
    rows, n = frames.shape
    x = np.empty((rows, n + 1), dtype=np.float32)
    x[:, :n] = frames
    x[:, n] = 1.0
    cut = _MATMUL_CUT
    if rows <= cut:
        y = x @ basis
        np.multiply(y, y, out=y)
        out = y @ group
    else:
        out = np.empty((rows, group.shape[1]), dtype=np.float32)
        for at in range(0, rows, cut):
            y = x[at : at + cut] @ basis
            np.multiply(y, y, out=y)
            np.matmul(y, group, out=out[at : at + cut])
    return out  # type: ignore[no-any-return]


def _band_ratios(
    basis: npt.NDArray[np.float32], group: npt.NDArray[np.float32], frames: Frames, quiet_rule: bool = False
) -> list[list[float]]:
    """1 + band powers for every row of ``frames`` (any number of rows), two matrix products; with
    ``quiet_rule``, 1.0 for the rows that are digital silence (see _silence_quiet_rows)."""
    n = frames.shape[1]
    x = np.empty((frames.shape[0], n + 1), dtype=np.float32)
    x[:, :n] = frames
    x[:, n] = 1.0
    y = x @ basis
    np.multiply(y, y, out=y)
    out = y @ group
    if quiet_rule:
        _silence_quiet_rows(out, frames, None)
    return out.tolist()  # type: ignore[no-any-return]


class WebRtcClassifier:
    """Google's WebRTC VAD (GMM on sub-band energies), from the ``webrtc`` extra."""

    __slots__ = ("_frame", "_vad", "sample_rate")

    def __init__(self, sample_rate: int, frame_ms: int = 20, *, mode: int = 2) -> None:
        try:
            import webrtcvad
        except ImportError:
            raise ClassifierError("the webrtc classifier needs the 'webrtc' extra (webrtcvad-wheels)") from None
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ClassifierError(f"webrtc classifier: unsupported sample rate {sample_rate}")
        if frame_ms not in (10, 20, 30):
            raise ClassifierError(f"webrtc classifier: frame_ms must be 10, 20 or 30, not {frame_ms}")
        self.sample_rate = sample_rate
        self._frame = sample_rate * frame_ms // 1000
        self._vad = webrtcvad.Vad(mode)

    @property
    def frame_samples(self) -> int:
        return self._frame

    def classify(self, frames: Frames) -> list[bool]:
        vad = self._vad
        rate = self.sample_rate
        data = np.ascontiguousarray(frames, dtype="<i2")
        # WebRTC's hangover calls the first frames of digital silence after noise speech
        # (a false utterance on every hold/mute); a frame this quiet is never speech.
        quiet = quiet_frames(data)
        return [not q and bool(vad.is_speech(row.tobytes(), rate)) for row, q in zip(data, quiet, strict=True)]


CLASSIFIERS = ("bands", "energy", "webrtc", "silero", "bands-unmute", "bands-click", "bands-pitch", "bands-hold", "bands-level",
               "bands-judge")

#: The unmute window of the ``bands-unmute`` classifier (see :class:`BandClassifier`, ``resume_ms``).
UNMUTE_RESUME_MS = 60
#: ``bands-click``: a frame whose swing exceeds this × its in-band rms cannot engage the hysteresis
#: (a line click; also about half of the voice frames at an onset, which then latch one frame later).
#: Chosen on bench/corpus_real_full dev (4 / 4.5 / 5 / 6 / 8 / 10 swept; see BENCHMARKS.md).
CLICK_RATIO = 4.5
#: ``bands-click`` starts at 4.5 dB per band on average and holds speech down to 2.0 (``bands``: 5.0 / 2.5),
#: which its click rule affords: quiet utterances at 5 dB are heard, line clicks still start nothing.
CLICK_ON_DB = 4.5
CLICK_OFF_DB = 2.0
#: ``bands-pitch`` (engine/endpointing/pitch.py): a frame whose periodicity reaches PITCH_HOLD holds speech
#: (PITCH_START: also starts a run) when its bands are PITCH_DB per band above the floors on average.
#: Chosen on bench/corpus_real_full dev (hold / start 0.25–0.5 swept; see BENCHMARKS.md).
PITCH_HOLD = 0.3
PITCH_START = 0.45
PITCH_DB = 0.5
#: ... unless its in-band power fell under PITCH_DROP × the frame before's: the analysis window's first half
#: is the previous frame, so the frame after the last voiced one still reads periodic (+20 ms on every end of
#: bench/corpus_full's synthetic voices, p50 99–106 → 114–124 ms without it).
PITCH_DROP = 0.25


@runtime_checkable
class BatchClassifier(Protocol):
    """A classifier that can judge one frame of each of many streams in one go (see :func:`classify_batch`)."""

    @classmethod
    def classify_batch(cls, classifiers: Sequence[Any], frames: Frames) -> list[bool]: ...


_BATCHING: dict[type, bool] = {}  # classifier class → has a classify_batch (BatchClassifier); filled lazily


def classify_batch(classifiers: Sequence[FrameClassifier], frames: Frames) -> list[bool]:
    """One tick of many calls: row ``i`` of ``frames`` is the next frame of ``classifiers[i]``'s stream.

    The answer is exactly ``[c.classify(frames[i:i+1])[0] for i, c in enumerate(classifiers)]``
    (each classifier keeps its own state); when every classifier is of one kind that
    batches (``bands``: its two matrix products; ``silero``: one ONNX inference) the heavy
    part is done once for the whole batch. How a per-tick batch would use it (issue 13):
    each call's Endpointer cuts its 20 ms packet into a frame, a ticker collects the frames
    of all calls that have one, calls this once, and hands each call its decision.
    """
    n = len(classifiers)
    if frames.ndim != 2 or frames.shape[0] != n:
        raise ClassifierError(f"classify_batch: expected {n} frames, got shape {frames.shape}")
    if n == 0:
        return []
    kind = type(classifiers[0])
    batches = _BATCHING.get(kind)
    if batches is None:  # a runtime-checkable Protocol's isinstance costs ~8 µs: once per class, not per tick
        batches = _BATCHING[kind] = isinstance(classifiers[0], BatchClassifier)
    if batches and all(map(operator.is_, map(type, classifiers), itertools.repeat(kind))):  # type(c) is kind, in C
        return kind.classify_batch(classifiers, frames)  # type: ignore[attr-defined,no-any-return]
    return [c.classify(frames[i : i + 1])[0] for i, c in enumerate(classifiers)]


def make_classifier(name: str, sample_rate: int, *, frame_ms: int = 20) -> FrameClassifier:
    """Build a fresh classifier by its config name (``bands``, ``energy``, ``webrtc``, ``silero`` or
    ``bands-unmute``: ``bands`` that re-learns its floors when the line comes back after digital silence;
    ``bands-click``, the default: ``bands-unmute`` whose hysteresis a click cannot engage, starting at
    4.5 dB and holding speech down to 2.0 dB instead of 5.0 / 2.5).

    ``silero`` needs the ``silero`` extra and judges its model's own window (32 ms at both
    rates), whatever ``frame_ms`` says."""
    if name == "bands":
        return BandClassifier(sample_rate, frame_ms)
    if name == "bands-unmute":
        return BandClassifier(sample_rate, frame_ms, resume_ms=UNMUTE_RESUME_MS)
    if name == "bands-click":
        return BandClassifier(
            sample_rate,
            frame_ms,
            resume_ms=UNMUTE_RESUME_MS,
            on_db=CLICK_ON_DB,
            off_db=CLICK_OFF_DB,
            impulse_ratio=CLICK_RATIO,
        )
    if name == "bands-pitch":
        from .pitch import PitchBandClassifier

        return PitchBandClassifier(
            sample_rate,
            frame_ms,
            resume_ms=UNMUTE_RESUME_MS,
            on_db=CLICK_ON_DB,
            off_db=CLICK_OFF_DB,
            impulse_ratio=CLICK_RATIO,
            voiced=PITCH_HOLD,
            voiced_start=PITCH_START,
            voiced_db=PITCH_DB,
            voiced_drop=PITCH_DROP,
        )
    if name == "bands-hold":  # bands-click + a short syllable hold after the talker's words (engine/endpointing/hold.py)
        from .hold import HoldBandClassifier

        return HoldBandClassifier(sample_rate, frame_ms, resume_ms=UNMUTE_RESUME_MS, on_db=CLICK_ON_DB, off_db=CLICK_OFF_DB,
                                  impulse_ratio=CLICK_RATIO)
    if name == "bands-level":  # bands-click + a talker-level gate on busy (babble) lines (engine/endpointing/level.py)
        from .level import make_level

        return make_level(sample_rate, frame_ms)
    if name == "bands-judge":  # bands-click + Silero as a judge after the talker's words (engine/endpointing/judge.py)
        from .judge import make_judge

        return make_judge(sample_rate, frame_ms)
    if name == "energy":
        return EnergyClassifier(sample_rate, frame_ms)
    if name == "webrtc":
        return WebRtcClassifier(sample_rate, frame_ms)
    if name == "silero":
        from .silero import SileroClassifier

        return SileroClassifier(sample_rate)
    raise ClassifierError(f"unknown classifier {name!r} (expected one of {', '.join(CLASSIFIERS)})")

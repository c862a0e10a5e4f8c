"""Periodicity (pitch) cue for the bands classifier: the ``bands-pitch`` classifier (issue 12).

A voiced syllable is periodic (one voice, one F0); pink noise, line hiss and clicks are not, and a sum
of several voices is much less so. Under stationary noise a quiet voiced syllable can sit within a dB
or two of the per-band floors, where ``bands-click`` calls it silence, while its waveform is still
clearly periodic. ``bands-pitch`` calls such a frame speech when its periodicity is strong and it is
at least a little above the floors (goal "missed (anchor) ≤ Silero's"; measured in BENCHMARKS.md).

The periodicity of a frame (:func:`voicing`): the last 40 ms (this frame and the one before),
decimated to 4 kHz by pair sums (a crude low-pass: the voice's harmonics under 2 kHz dominate), its
power spectrum at the 256-point DFT's bins from 300 Hz up (mains hum and its low harmonics are
periodic too, and the line has nothing of the voice below 300 Hz), turned into the autocorrelation
at lags 2.5–16 ms (F0 400–62.5 Hz; no wrap: 160 samples + 64 lags ≤ 256) and corrected for the
shrinking overlap (``W/(W-τ)``); from it the line's own autocorrelation is subtracted (below), and the
peak over the lags is divided by the frame's power (lag 0). One periodic voice reads ≈ 0.9–1, three
voices summed ≈ 0.5, six ≈ 0.35, white or pink noise ≈ 0.2–0.3 (tests/endpointing/test_classifier_pitch.py).

The line's autocorrelation is a running mean over frames well clear of speech. Subtracting it is
linear (not a clipped spectral subtraction, whose leftover "musical" peaks look periodic), so what
is stationary on the line goes, periodic or not: mains hum's harmonics above 300 Hz are periodic,
but the same every frame. A lag where the line's autocorrelation is negative is not raised by it.

Cost: both the DFT and its inverse are matrix products with fixed bases (one BLAS call each for the
whole tick in :meth:`PitchBandClassifier.classify_batch`; a few µs for one frame, where an FFT call
costs tens in numpy's per-call overhead).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .classifiers import BandClassifier, ClassifierError, Frames, _band_array, _decide_rows, _row_sums

F32 = npt.NDArray[np.float32]

#: The analysis runs at 4 kHz on a 256-point DFT grid, lags 10–64 samples (F0 400 … 62.5 Hz).
PITCH_RATE = 4000
_NFFT = 256
_LAG_MIN = PITCH_RATE // 400
_LAG_MAX = 64
_BINS = np.arange(int(300.0 * _NFFT / PITCH_RATE), _NFFT // 2 + 1)  # 300 Hz – 2 kHz
#: Frames after the last speech frame before the line's autocorrelation learns again (200 ms at 20 ms):
#: the quiet frames inside and just after an utterance are often its weak syllables, not the line.
NOISE_AFTER_FRAMES = 10


def window_len(frame_ms: int) -> int:
    """Samples of the 4 kHz analysis window: 40 ms (2.5 periods at 62.5 Hz), 48 ms for 30 ms frames
    (the frame + 18 ms); at most 256 − 64, so the autocorrelation on the 256-point grid does not wrap."""
    return max(40, frame_ms + 18) * PITCH_RATE // 1000


def decimate(frames: Frames, sample_rate: int) -> F32:
    """Frames at 4 kHz, float32: sums of 2 (8 kHz) or 4 (16 kHz) consecutive samples."""
    step = sample_rate // PITCH_RATE
    n, f = frames.shape
    return frames.reshape(n, f // step, step).sum(axis=2, dtype=np.float32)  # type: ignore[no-any-return]


@functools.cache
def _basis(w: int) -> F32:
    """DFT basis for a ``w``-sample window: cos | sin columns at :data:`_BINS`, mean-free (a DC offset
    contributes nothing)."""
    angle = 2 * np.pi * np.outer(np.arange(w), _BINS) / _NFFT
    basis = np.concatenate([np.cos(angle), np.sin(angle)], axis=1)
    basis -= basis.mean(axis=0)
    b32 = basis.astype(np.float32)
    b32.setflags(write=False)
    return b32  # type: ignore[no-any-return]


@functools.cache
def _cosines(w: int) -> F32:
    """Power spectrum → autocorrelation at lag 0 and lags 10–64 (the inverse real DFT: every bin twice but
    Nyquist), the lags already multiplied by the overlap correction ``w / (w − τ)``."""
    lags = np.concatenate([[0], np.arange(_LAG_MIN, _LAG_MAX + 1)])
    gain = np.where(lags == 0, 1.0, w / (w - lags))
    weight = np.where(_BINS == _NFFT // 2, 1.0, 2.0) / _NFFT
    cosines = weight[:, None] * np.cos(2 * np.pi * np.outer(_BINS, lags) / _NFFT) * gain[None, :]
    c32 = cosines.astype(np.float32)
    c32.setflags(write=False)
    return c32  # type: ignore[no-any-return]


def autocorrelations(windows: F32) -> F32:
    """Per row of ``windows`` (4 kHz, ``(n, w)``): lag 0 then the overlap-corrected lags 10–64 (``(n, 56)``)."""
    basis = _basis(windows.shape[1])
    y = windows @ basis
    np.multiply(y, y, out=y)
    k = basis.shape[1] // 2
    return (y[:, :k] + y[:, k:]) @ _cosines(windows.shape[1])  # type: ignore[no-any-return]


_LAGS = np.concatenate([[0], np.arange(_LAG_MIN, _LAG_MAX + 1)])


def autocorrelations_fft(windows: F32) -> F32:
    """:func:`autocorrelations` through numpy's FFT: the same quantity (up to float rounding), cheaper for
    a whole tick of calls, dearer for one row (numpy's per-call overhead)."""
    w = windows.shape[1]
    x = windows - windows.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(x, _NFFT)
    power = spec.real * spec.real + spec.imag * spec.imag
    power[:, : _BINS[0]] = 0.0
    r = np.fft.irfft(power, _NFFT)[:, _LAGS]
    r[:, 1:] *= w / (w - _LAGS[1:])
    return r.astype(np.float32)  # type: ignore[no-any-return]


def voicing(r: F32, line: F32 | None = None) -> F32:
    """Periodicity per row of :func:`autocorrelations` ``r``, less ``line`` (the line's own autocorrelation,
    same layout, one row or one per row; only its positive lags count); 0 for a silent row."""
    lagged = r[:, 1:] if line is None else r[:, 1:] - np.maximum(line[..., 1:], 0.0)
    return lagged.max(axis=1) / np.maximum(r[:, 0], 1e-3)  # type: ignore[no-any-return]


class PitchBandClassifier(BandClassifier):
    """``bands-click`` plus the periodicity cue: a frame the floors call silence is speech when its voicing
    reaches ``voiced`` while the hysteresis is engaged (``voiced_start`` outside it: it starts a run; 0: never)
    and its bands are at least ``voiced_db`` per band above the floors on average, unless its in-band power
    fell under ``voiced_drop`` × the previous frame's (0: off): the window's older half is the previous
    frame, so the first frame after a voiced one reads periodic even when it is only noise.

    State beyond the bands': the last 40 ms at 4 kHz, the line's autocorrelation (a running mean, ``noise_rate``
    per frame, over frames at least :data:`NOISE_AFTER_FRAMES` after the last frame the floors called speech,
    never over digital silence: like the floors, hold/mute says nothing about the line). Frames that are
    speech by their periodicity alone still teach it: a periodic line (a pure hum tone in the band) would
    otherwise keep itself "speech" and never be learnt (bench/corpus_full hum: seconds of run-on)."""

    __slots__ = ("_dec", "_drop", "_last_power", "_line", "_line_pos", "_noise_rate", "_quiet", "_step_down", "_win", "_wlen")

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 20,
        *,
        voiced: float = 0.3,
        voiced_start: float = 0.45,
        voiced_db: float = 0.5,
        noise_rate: float = 0.1,
        voiced_drop: float = 0.0,
        **bands: float,
    ) -> None:
        super().__init__(sample_rate, frame_ms, **bands)  # type: ignore[arg-type]
        if not 0.0 < voiced <= 1.5 or not 0.0 <= voiced_start <= 1.5:
            raise ClassifierError(f"bands-pitch: voicing thresholds must be in (0, 1.5], not {voiced} / {voiced_start}")
        if not 0.0 < noise_rate <= 1.0:
            raise ClassifierError(f"bands-pitch: noise_rate must be in (0, 1], not {noise_rate}")
        if not 0.0 <= voiced_drop < 1.0:
            raise ClassifierError(f"bands-pitch: voiced_drop must be in [0, 1), not {voiced_drop}")
        if voiced_db < 0.0 or not math.isfinite(voiced_db):
            raise ClassifierError(f"bands-pitch: voiced_db must be ≥ 0, not {voiced_db}")
        self._voiced_hold = voiced
        self._voiced_start = voiced_start if voiced_start > 0 else math.inf
        self._voiced_ratio = 10.0 ** (voiced_db * self._nb / 10.0)
        self._noise_rate = noise_rate
        self._drop = voiced_drop  # no rescue for a frame this much quieter (power ratio) than the one before
        self._last_power = 0.0
        self._step_down = sample_rate // PITCH_RATE
        self._dec = self._frame // self._step_down
        self._wlen = window_len(frame_ms)
        self._win: F32 = np.zeros(self._wlen, dtype=np.float32)  # the analysis window, newest frame last
        self._line: F32 | None = None  # the line's autocorrelation (layout of :func:`autocorrelations`)
        self._line_pos: F32 | None = None  # its lags, negative ones zeroed
        self._quiet = 0  # frames since the last speech frame

    def voicing(self, frames: Frames) -> list[float]:
        """The periodicity of each frame as :meth:`classify` sees it (advances the window, not the decisions)."""
        out = []
        for row in frames:
            self._push(row)
            out.append(float(voicing(autocorrelations(self._win[None]), self._line)[0]))
        return out

    def _push(self, row: Frames) -> None:
        win, dec = self._win, self._dec
        win[: self._wlen - dec] = win[dec:]
        np.sum(row.reshape(dec, self._step_down), axis=1, dtype=np.float32, out=win[self._wlen - dec :])

    def _wanted(self, ratios: list[float]) -> bool:
        """Can this frame's periodicity change anything? Not when it is digital silence, nor when the floors
        already call it speech (the line's autocorrelation does not learn then either), nor when it is too
        faint to be rescued and too close to speech to teach the line. Skipping those rows is most of the
        cue's cost saved (a conversation is half speech); the same rule on every path keeps them identical."""
        floors = self._floors
        if floors is None or not self._informed or self._resume or self._line is None:
            return True
        if max(ratios) <= self._silence_ratio:
            return False
        product = 1.0
        for p, fl in zip(ratios, floors, strict=True):
            if p > fl:
                product *= p / fl
        if product > (self._off_ratio if self._run >= self._latch else self._on_ratio):
            return False
        return product > self._voiced_ratio or self._quiet >= NOISE_AFTER_FRAMES

    def classify(self, frames: Frames) -> list[bool]:
        # Frame by frame, through one code path whatever the chunking: the line's autocorrelation
        # moves with every decision.
        out = []
        vec, spec, frame = self._vec, self._spec, self._frame
        for row in frames:
            vec[:frame] = row
            np.dot(vec, self._basis, out=spec)
            np.multiply(spec, spec, out=spec)
            ratios = np.dot(spec, self._group, out=self._pow).tolist()
            self._push(row)
            v, r = 0.0, None
            if self._wanted(ratios):
                r = autocorrelations(self._win[None])[0]
                lagged = r[1:] if self._line_pos is None else r[1:] - self._line_pos
                v = float(lagged.max()) / max(float(r[0]), 1e-3)
            out.append(self._decide_voiced(ratios, row if self._impulse else 0.0, v, r))
        return out

    def _decide_voiced(self, ratios: list[float], swing: float | Frames, v: float, r: F32 | None) -> bool:
        """Decide one frame, then let a frame well clear of the floors' speech (not digital silence) teach the line."""
        speech, learn = self._judge(
            ratios, swing, v, r is not None, power=sum(ratios), audible=max(ratios) > self._silence_ratio
        )
        if learn:
            assert r is not None
            self._learn(r)
        return speech

    def _judge(
        self, ratios: list[float], swing: float | Frames, v: float, have_r: bool, *, power: float, audible: bool
    ) -> tuple[bool, bool]:
        """The decision, and whether the frame's autocorrelation should now teach the line's (``power``:
        ``sum(ratios)``; ``audible``: not digital silence, ``max(ratios) > silence``)."""
        if self._drop:
            if power - self._nb < self._drop * (self._last_power - self._nb):
                v = 0.0
            self._last_power = power
        speech = self.decide(ratios, swing, v)
        if speech and not self._rescued:
            self._quiet = 0
            return speech, False
        if not audible:
            return speech, False
        self._quiet += 1
        return speech, have_r and (self._line is None or self._quiet > NOISE_AFTER_FRAMES)

    def _learn(self, r: F32) -> None:
        line = self._line
        if line is None:
            line = self._line = r.copy()
        else:
            line += self._noise_rate * (r - line)
        self._line_pos = np.maximum(line[1:], 0.0)

    def _settled(self) -> bool:
        """Floors and line learnt, no unmute window: :meth:`_wanted` is then its vectorised form's."""
        return self._informed and not self._resume and self._line is not None and self._floors is not None

    @classmethod
    def classify_batch(cls, classifiers: Sequence[BandClassifier], frames: Frames) -> list[bool]:
        """One frame for each of many streams: the band products once for the tick, and one FFT pair over
        the rows whose periodicity can matter (:meth:`_wanted`)."""
        first = classifiers[0]
        pitchy = [c for c in classifiers if isinstance(c, PitchBandClassifier)]
        if len(pitchy) != len(classifiers) or any(
            c._basis is not first._basis or c._wlen != pitchy[0]._wlen or c._silence_ratio != first._silence_ratio
            for c in pitchy
        ):
            return [c.classify(frames[i : i + 1])[0] for i, c in enumerate(classifiers)]
        n, w, dec = len(pitchy), pitchy[0]._wlen, pitchy[0]._dec
        win = np.empty((n, w), dtype=np.float32)
        win[:, : w - dec] = np.stack([c._win for c in pitchy])[:, dec:]
        win[:, w - dec :] = decimate(frames, first.sample_rate)
        bands = _band_array(first._basis, first._group, frames)  # 1 + band powers
        ratios: list[list[float]] = bands.tolist()
        power = _row_sums(bands.astype(np.float64))  # sum(ratios), as on the one-frame path
        audible = (bands.max(axis=1) > first._silence_ratio).tolist()
        wanted = _wanted_rows(pitchy, bands, ratios)
        v = [0.0] * n
        at = [-1] * n  # row of the tick's autocorrelations for each stream (-1: not computed)
        r: F32 = np.zeros((0, len(_LAGS)), dtype=np.float32)
        if wanted:
            r = autocorrelations_fft(win[wanted])
            line = np.zeros((len(wanted), _LAG_MAX - _LAG_MIN + 1), dtype=np.float32)
            for j, i in enumerate(wanted):
                at[i] = j
                pos = pitchy[i]._line_pos
                if pos is not None:
                    line[j] = pos
            got = ((r[:, 1:] - line).max(axis=1) / np.maximum(r[:, 0], 1e-3)).tolist()
            for j, i in enumerate(wanted):
                v[i] = got[j]
        # _judge for every row at once: the drop rule on the voicing, the decisions (vectorised for settled
        # streams, _decide_rows), then each stream's quiet count and whether its line learns.
        last = np.array([c._last_power if c._drop else math.nan for c in pitchy])
        drop = np.array([c._drop for c in pitchy])
        nb = first._nb
        dropped = ((power - nb) < drop * (last - nb)).tolist()  # NaN (no drop rule): False
        voiced = [0.0 if x else y for x, y in zip(dropped, v, strict=True)]
        out, rescued = _decide_rows(pitchy, bands, frames, voiced)  # frames: the swings where asked
        learners: list[int] = []
        for i, (c, p, speech) in enumerate(zip(pitchy, power.tolist(), out, strict=True)):
            c._win = win[i]
            if c._drop:
                c._last_power = p
            if speech and not rescued[i]:
                c._quiet = 0
            elif audible[i]:
                c._quiet += 1
                if at[i] >= 0 and (c._line is None or c._quiet > NOISE_AFTER_FRAMES):
                    learners.append(i)
        if learners:
            # The lines' running means, all in one go (the same float32 operations as _learn, row by row).
            fresh = [i for i in learners if pitchy[i]._line is None]
            for i in fresh:
                pitchy[i]._learn(r[at[i]])
            old = [i for i in learners if pitchy[i]._line is not None and i not in fresh]
            if old:
                lines = np.stack([pitchy[i]._line for i in old])  # type: ignore[misc]
                rate = np.array([[pitchy[i]._noise_rate] for i in old], dtype=np.float32)
                lines += rate * (r[[at[i] for i in old]] - lines)
                pos = np.maximum(lines[:, 1:], 0.0)
                for j, i in enumerate(old):
                    pitchy[i]._line = lines[j]
                    pitchy[i]._line_pos = pos[j]
        return out


def _wanted_rows(streams: Sequence[PitchBandClassifier], bands: F32, ratios: list[list[float]]) -> list[int]:
    """The rows of a tick for which :meth:`PitchBandClassifier._wanted` holds, the band products for the
    whole tick in numpy (``bands``: the tick's ratios as an array; the same rule; a stream still learning its
    floors or line, or in an unmute window, asks its own :meth:`~PitchBandClassifier._wanted`)."""
    settled = [c._settled() for c in streams]
    ones = [1.0] * bands.shape[1]
    floors = np.array([c._floors if ok else ones for c, ok in zip(streams, settled, strict=True)])
    product = np.maximum(bands / floors, 1.0).prod(axis=1)
    bar = np.array([c._off_ratio if c._run >= c._latch else c._on_ratio for c in streams])
    low = np.array([c._voiced_ratio for c in streams])
    learning = np.array([c._quiet >= NOISE_AFTER_FRAMES for c in streams])
    audible = bands.max(axis=1) > np.array([c._silence_ratio for c in streams])
    keep = (audible & (product <= bar) & ((product > low) | learning)).tolist()
    return [i for i, (k, ok) in enumerate(zip(keep, settled, strict=True)) if (k if ok else streams[i]._wanted(ratios[i]))]

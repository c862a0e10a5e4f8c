"""Periodicity (pitch) cue for the bands classifier: the ``bands-pitch`` classifier.

A voiced syllable is periodic (one voice, one F0); pink noise, line hiss and clicks are not. Under
stationary noise a quiet voiced syllable can sit within a dB or two of the per-band floors, where
``bands-click`` calls it silence, while its waveform is still clearly periodic. ``bands-pitch``
calls such a frame speech when its periodicity is strong and it is at least a little above the
floors (issue 12, goal "missed (anchor) ≤ Silero's"; measured in BENCHMARKS.md).

The periodicity of a frame: the peak of the normalised autocorrelation of the last 40 ms (this
frame and the one before), decimated to 4 kHz by pair sums (its voiced harmonics sit under 2 kHz),
over lags 2.5–16 ms (F0 62.5–400 Hz), with everything under 300 Hz removed first (mains hum and its
low harmonics are periodic too; the line has nothing of the voice there). One real FFT of 256 points
per frame, batched over calls: ``|X|²`` → inverse FFT is the autocorrelation (no wrap: 160 samples +
64 lags ≤ 256), divided by its lag-0 value and corrected for the shrinking overlap (``W/(W-τ)``), so a
pure periodic signal reads ≈ 1 and white noise ≈ 0.2 at its best lag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .classifiers import BandClassifier, ClassifierError, Frames, _band_ratios, _swings

F32 = npt.NDArray[np.float32]

#: Decimated rate, window (samples at it), FFT size and the lag range (F0 400 … 62.5 Hz).
PITCH_RATE = 4000
_NFFT = 256
_LAG_MIN = PITCH_RATE // 400
_LAG_MAX = PITCH_RATE // 62  # 64: 62.5 Hz
#: Frames after the last speech frame before the line's autocorrelation learns again (200 ms at 20 ms).
_NOISE_AFTER = 10
_LOW_BIN = int(300.0 * _NFFT / PITCH_RATE)  # bins under 300 Hz are dropped


def _window_len(frame_ms: int) -> int:
    """Samples of the 4 kHz analysis window: 40 ms (2.5 periods at 62.5 Hz), 48 ms for 30 ms frames
    (the frame + 18 ms): at most 256 − 64, so the FFT's autocorrelation does not wrap."""
    return max(40, frame_ms + 18) * PITCH_RATE // 1000


def decimate(frames: Frames, sample_rate: int) -> F32:
    """Frames at 4 kHz: sums of 2 (8 kHz) or 4 (16 kHz) consecutive samples, float32 (a crude low-pass
    that is enough for a periodicity measure: the voice's harmonics under 2 kHz dominate)."""
    step = sample_rate // PITCH_RATE
    x = frames.astype(np.float32)
    if step == 1:
        return x
    return x.reshape(x.shape[0], x.shape[1] // step, step).sum(axis=2)  # type: ignore[no-any-return]


def spectra(windows: F32) -> F32:
    """Power spectra (``(n, 129)``) of the rows of ``windows`` (4 kHz), mean removed, nothing under 300 Hz."""
    x = windows - windows.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(x, _NFFT)
    power = (spec.real * spec.real + spec.imag * spec.imag).astype(np.float32)
    power[:, :_LOW_BIN] = 0.0
    return power  # type: ignore[no-any-return]


def autocorrelations(power: F32) -> F32:
    """Autocorrelation at lags 0–64 of each row's signal, from its power spectrum (``(n, 129)``)."""
    return np.fft.irfft(power, _NFFT)[:, : _LAG_MAX + 1].astype(np.float32)  # type: ignore[no-any-return]


def periodicity(r: F32, noise: F32 | None, w: int) -> F32:
    """Per row: the peak over lags 2.5–16 ms of the frame's autocorrelation ``r`` less the line's
    (``noise``, both ``(n, 65)``), over the frame's lag-0 power: ≈ the fraction of the frame's power that is
    one periodic voice. Subtracting the noise's autocorrelation (linear, not a clipped spectral
    subtraction, which leaves "musical" peaks that look periodic) removes what is stationary on the
    line, periodic or not: mains hum's harmonics above 300 Hz are periodic, but the same every frame.
    The subtraction never raises a lag above the frame's own value (a negative lobe of the noise's
    autocorrelation is not periodicity of the frame). 0 for a silent row."""
    own = r[:, _LAG_MIN:]
    lagged = own if noise is None else np.minimum(own, own - noise[..., _LAG_MIN:])
    peak = (lagged * _overlap_gain(w)).max(axis=1)
    return (peak / np.maximum(r[:, 0], 1e-3)).astype(np.float32)  # type: ignore[no-any-return]


_GAINS: dict[int, F32] = {}


def _overlap_gain(w: int) -> F32:
    g = _GAINS.get(w)
    if g is None:
        lags = np.arange(_LAG_MIN, _LAG_MAX + 1)
        g = _GAINS[w] = (w / (w - lags)).astype(np.float32)
    return g


class PitchBandClassifier(BandClassifier):
    """``bands-click`` plus a periodicity cue: a frame the floors call silence is speech when it is strongly
    periodic (``voiced`` ≥ the threshold) and its bands are at least ``voiced_db`` per band above the
    floors on average, while the hysteresis is engaged (``voiced_start``: also to start a run).

    State beyond the bands': the previous frame at 4 kHz (the window's first half) and the line's power
    spectrum, a running mean (``noise_rate`` per frame) over the frames judged not speech, never over
    digital silence (like the floors: hold/mute says nothing about the line)."""

    __slots__ = ("_noise", "_noise_rate", "_prev", "_quiet", "_voiced", "_win")

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 20,
        *,
        voiced: float = 0.4,
        voiced_db: float = 0.5,
        voiced_start: bool = False,
        noise_rate: float = 0.1,
        **bands: float,
    ) -> None:
        super().__init__(sample_rate, frame_ms, **bands)  # type: ignore[arg-type]
        if not 0.0 < voiced <= 1.5:
            raise ClassifierError(f"bands-pitch: voiced threshold must be in (0, 1.5], not {voiced}")
        if not 0.0 < noise_rate <= 1.0:
            raise ClassifierError(f"bands-pitch: noise_rate must be in (0, 1], not {noise_rate}")
        self._voiced = voiced
        self._voiced_ratio = 10.0 ** (voiced_db * self._nb / 10.0) if voiced_db > 0 else 1.0
        self._voiced_start = voiced_start
        self._noise_rate = noise_rate
        self._win = _window_len(frame_ms)
        self._prev: F32 = np.zeros(self._win - self._frame * PITCH_RATE // sample_rate, dtype=np.float32)
        self._noise: F32 | None = None  # the line's autocorrelation, lags 0–64
        self._quiet = 0  # frames since the last speech frame

    def classify(self, frames: Frames) -> list[bool]:
        dec = decimate(frames, self.sample_rate)
        hist = self._prev.shape[0]
        n, f = dec.shape
        flat = np.concatenate((self._prev, dec.reshape(-1)))
        windows = flat[np.arange(n)[:, None] * f + np.arange(hist + f)[None, :]]
        self._prev = flat[flat.shape[0] - hist :].copy()
        r = autocorrelations(spectra(windows))
        all_ratios = _band_ratios(self._basis, self._group, frames)
        swings: Sequence[float | Frames] = _swings(frames) if self._impulse else [0.0] * n
        out = []
        for i in range(n):
            # The noise spectrum moves frame by frame, so the periodicity is computed per frame here.
            v = float(periodicity(r[i : i + 1], self._noise, windows.shape[1])[0])
            out.append(self._step(all_ratios[i], swings[i], v, r[i]))
        return out

    def _step(self, ratios: list[float], swing: float | Frames, voicing: float, r: F32) -> bool:
        """Decide one frame, then let a frame well clear of speech (not digital silence) teach the line's
        autocorrelation: the quiet frames inside and just after an utterance are often its weak syllables."""
        speech = self.decide(ratios, swing, voicing >= self._voiced)
        if speech:
            self._quiet = 0
        elif max(ratios) > self._silence_ratio:
            self._quiet += 1
            noise = self._noise
            if noise is None:
                self._noise = r.copy()
            elif self._quiet > _NOISE_AFTER:
                noise += self._noise_rate * (r - noise)
        return speech

    @classmethod
    def classify_batch(cls, classifiers: Sequence[BandClassifier], frames: Frames) -> list[bool]:
        """One frame for each of many streams: the band products and the FFTs once for the whole tick."""
        first = classifiers[0]
        pitchy = [c for c in classifiers if isinstance(c, PitchBandClassifier)]
        if len(pitchy) != len(classifiers) or any(
            c._basis is not first._basis or c._win != pitchy[0]._win for c in pitchy
        ):
            return [c.classify(frames[i : i + 1])[0] for i, c in enumerate(classifiers)]
        n = len(pitchy)
        dec = decimate(frames, first.sample_rate)
        w = pitchy[0]._win
        hist = w - dec.shape[1]
        win = np.empty((n, w), dtype=np.float32)
        noise = np.zeros((n, _LAG_MAX + 1), dtype=np.float32)
        for i, c in enumerate(pitchy):
            win[i, :hist] = c._prev
            if c._noise is not None:
                noise[i] = c._noise
        win[:, hist:] = dec
        r = autocorrelations(spectra(win))
        voicing = periodicity(r, noise, w).tolist()
        tail = win[:, w - hist :]
        ratios = _band_ratios(first._basis, first._group, frames)
        swings: Sequence[float] = _swings(frames) if any(c._impulse for c in pitchy) else [0.0] * n
        out = []
        for i, c in enumerate(pitchy):
            c._prev = tail[i].copy()
            out.append(c._step(ratios[i], swings[i], voicing[i], r[i]))
        return out

"""Frame classifiers: is this 10/20/30 ms frame speech?

A classifier sees whole frames, in order, as a 2-D int16 array ``(n, frame_samples)`` and
returns one bool per frame. It may keep state (noise floor) between calls, so one
classifier belongs to one stream. The default, :class:`EnergyClassifier`, costs a few
microseconds per frame; :class:`WebRtcClassifier` needs the ``webrtc`` extra.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

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


def _quiet_frames(frames: Frames) -> list[bool]:
    """Frames whose peak-to-peak swing is under 64 LSB (so rms < 32 LSB, 30 dB re 1 LSB²,
    the energy classifier's ``min_level_db``): digital silence, the μ-law idle pattern."""
    swing = frames.max(axis=1).astype(np.int32) - frames.min(axis=1)
    return (swing < _QUIET_SWING).tolist()  # type: ignore[no-any-return]


class BandClassifier:
    """Per-band SNR in the voice band, against per-band noise floors (the ``bands`` classifier).

    Why, for telephone speech (measured on bench/corpus, see BENCHMARKS.md):

    * only 300–3400 Hz counts: mains hum (50/60 Hz and low harmonics) and DC, which
      dominate a full-band level, are outside it;
    * six bands (300–500–800–1200–1800–2600–3400 Hz), each with its own noise floor: a
      quiet voiced tail that puts its energy in one or two bands stands several dB above
      those bands' floors while the full-band level sits within 1 dB of the noise (white
      or pink noise spreads over all bands; the tail does not);
    * the frame score is the mean over bands of the positive SNR (dB above the floor), so
      a stray peak in one band of babble is diluted while speech, which lifts several
      bands at once, is not; hysteresis (``on_db`` to start, ``off_db`` to stay) keeps weak
      endings in;
    * floors fall quickly to quieter frames and rise slowly (faster outside speech), so
      they follow the line's noise, not the talker; a frame whose loudest band is below
      ``min_level_db`` is digital silence: never speech and no floor update.

    The spectrum is one float32 matmul against a fixed windowed cos/sin basis (DC
    removed), the band powers a second one; the per-band arithmetic is plain Python on six
    floats. About as cheap as a 256-point FFT call and with no per-sample Python loop.
    """

    EDGES_HZ = (300.0, 500.0, 800.0, 1200.0, 1800.0, 2600.0, 3400.0)

    __slots__ = (
        "_basis",
        "_buf",
        "_fall",
        "_floors",
        "_frame",
        "_group",
        "_min_power",
        "_nb",
        "_off_ratio",
        "_on_ratio",
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
        on_db: float = 5.0,
        off_db: float = 2.5,
        min_level_db: float = 20.0,
        rise_noise_db_s: float = 3.0,
        rise_speech_db_s: float = 0.3,
        fall: float = 0.1,
    ) -> None:
        if sample_rate not in (8000, 16000):
            raise ClassifierError(f"bands classifier: unsupported sample rate {sample_rate}")
        if frame_ms not in (10, 20, 30):
            raise ClassifierError(f"bands classifier: frame_ms must be 10, 20 or 30, not {frame_ms}")
        self.sample_rate = sample_rate
        frame = sample_rate * frame_ms // 1000
        self._frame = frame
        edges = self.EDGES_HZ
        # 100 Hz apart whatever the frame length: a filter bank, not an orthogonal transform.
        freqs = np.arange(edges[0], edges[-1] + 1e-6, 100.0)
        t = np.arange(frame) / sample_rate
        window = np.hanning(frame + 2)[1:-1]
        angle = 2 * np.pi * np.outer(t, freqs)
        basis = np.concatenate([np.cos(angle), np.sin(angle)], axis=1) * window[:, None]
        basis -= basis.mean(axis=0)  # a DC offset contributes nothing
        nb = len(edges) - 1
        band = np.clip(np.searchsorted(edges, freqs, side="right") - 1, 0, nb - 1)
        group = np.zeros((2 * len(freqs), nb))
        group[np.arange(len(freqs)), band] = 1.0
        group[np.arange(len(freqs)) + len(freqs), band] = 1.0
        # mean power per bin, scaled so white noise of variance σ² reads ≈ σ² in every band
        group /= group.sum(axis=0) * float((window**2).sum()) / 2
        self._basis = basis.astype(np.float32)
        self._group = group.astype(np.float32)
        self._nb = nb
        self._buf = np.zeros((1, frame), dtype=np.float32)
        frames_per_s = 1000.0 / frame_ms
        # As power ratios: a floor rises at most ×rise per frame; speech when the product of
        # the bands' ratios above their floors exceeds on_db (off_db) per band on average.
        self._rise_noise: float = 10.0 ** (rise_noise_db_s / frames_per_s / 10.0)
        self._rise_speech: float = 10.0 ** (rise_speech_db_s / frames_per_s / 10.0)
        self._fall = fall
        self._on_ratio: float = 10.0 ** (on_db * nb / 10.0)
        self._off_ratio: float = 10.0 ** (off_db * nb / 10.0)
        self._min_power: float = 10.0 ** (min_level_db / 10.0) - 1.0
        self._floors: list[float] | None = None
        self._speech = False

    @property
    def frame_samples(self) -> int:
        return self._frame

    @property
    def noise_floors_db(self) -> list[float] | None:
        """The per-band noise floors (dB), lowest band first; None before the first non-silent frame."""
        return None if self._floors is None else [10.0 * math.log10(f) for f in self._floors]

    def band_powers(self, frames: Frames) -> list[list[float]]:
        """Per frame, the mean power per bin of each band (linear, ≈ the variance of white noise)."""
        if frames.shape[0] == 1:
            buf = self._buf
            buf[0] = frames[0]
            y = buf @ self._basis
        else:
            y = frames.astype(np.float32) @ self._basis
        y *= y
        return (y @ self._group).tolist()  # type: ignore[no-any-return]

    def classify(self, frames: Frames) -> list[bool]:
        decide = self._decide
        return [decide(powers) for powers in self.band_powers(frames)]

    def _decide(self, powers: list[float]) -> bool:
        """One frame. Works on power ratios (1 + p, so 0 is safe): the sum of per-band
        positive SNRs in dB is the log of the product of the ratios above 1, and a dB step
        on a floor is a power of its ratio, so there is no logarithm per band."""
        if max(powers) <= self._min_power:
            # Digital silence: no evidence about the line's noise. Floors the noise set stay
            # (hold/mute silence must not make the resuming noise look like speech); before
            # any noise they start at the minimum, so a stream opening with silence hears
            # its first words.
            if self._floors is None:
                self._floors = [1.0 + self._min_power] * self._nb
            self._speech = False
            return False
        floors = self._floors
        if floors is None:
            floors = self._floors = [1.0 + p for p in powers]
        product = 1.0
        for p, fl in zip(powers, floors, strict=True):
            if 1.0 + p > fl:
                product *= (1.0 + p) / fl
        speech = product > (self._off_ratio if self._speech else self._on_ratio)
        rise = self._rise_speech if speech else self._rise_noise
        fall = self._fall
        for b, (p, fl) in enumerate(zip(powers, floors, strict=True)):
            r = (1.0 + p) / fl
            floors[b] = fl * (r**fall if r < 1.0 else (r if r < rise else rise))
        self._speech = speech
        return speech


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
        quiet = _quiet_frames(data)
        return [not q and bool(vad.is_speech(row.tobytes(), rate)) for row, q in zip(data, quiet, strict=True)]


CLASSIFIERS = ("bands", "energy", "webrtc")


def make_classifier(name: str, sample_rate: int, *, frame_ms: int = 20) -> FrameClassifier:
    """Build a fresh classifier by its config name (``bands``, ``energy`` or ``webrtc``)."""
    if name == "bands":
        return BandClassifier(sample_rate, frame_ms)
    if name == "energy":
        return EnergyClassifier(sample_rate, frame_ms)
    if name == "webrtc":
        return WebRtcClassifier(sample_rate, frame_ms)
    raise ClassifierError(f"unknown classifier {name!r} (expected one of {', '.join(CLASSIFIERS)})")

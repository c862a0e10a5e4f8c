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
      never count as speech, however clean the line.

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
        floor = self._floor
        if floor is None:
            floor = max(lvl, self._min_floor_db)
        speech = lvl > self._min_level_db and lvl > floor + (self._off_db if self._speech else self._on_db)
        if lvl < floor:
            floor = max(floor + self._down * (lvl - floor), self._min_floor_db)
        else:
            floor += min(lvl - floor, self._rise_speech if speech else self._rise_noise)
        self._floor = floor
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
        return [bool(vad.is_speech(row.tobytes(), rate)) for row in data]


def make_classifier(name: str, sample_rate: int, *, frame_ms: int = 20) -> FrameClassifier:
    """Build a fresh classifier by its config name (``energy`` or ``webrtc``)."""
    if name == "energy":
        return EnergyClassifier(sample_rate, frame_ms)
    if name == "webrtc":
        return WebRtcClassifier(sample_rate, frame_ms)
    raise ClassifierError(f"unknown classifier {name!r} (expected 'energy' or 'webrtc')")

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
    """Adaptive SNR detector: level of the pre-emphasised frame against a tracked noise floor.

    Why these features, for telephone audio:

    * pre-emphasis (``x[n] - a*x[n-1]``) removes DC and attenuates mains hum and the
      low-frequency rumble of pink noise by 20+ dB while keeping the 0.3–3.4 kHz speech band;
    * the noise floor follows quiet frames down quickly and rises slowly (faster when the
      frame is not speech), so it tracks the line's noise but not the talker;
    * hysteresis: a frame needs ``on_db`` above the floor to turn speech on and only
      ``off_db`` to keep it on, so weak word endings and short dips stay inside speech;
    * an absolute floor ``min_level_db`` so digital silence and the μ-law idle pattern
      never count as speech, however clean the line.
    """

    __slots__ = (
        "_a",
        "_down",
        "_floor",
        "_frame",
        "_inv_n",
        "_min_floor_db",
        "_min_level_db",
        "_off_db",
        "_on_db",
        "_rise_noise",
        "_rise_speech",
        "_speech",
        "sample_rate",
    )

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 10,
        *,
        on_db: float = 9.0,
        off_db: float = 4.0,
        min_level_db: float = 34.0,
        min_floor_db: float = 20.0,
        preemphasis: float = 0.95,
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
        self._inv_n = 1.0 / (self._frame - 1)
        self._a = np.float32(preemphasis)
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
        """The current noise-floor estimate (dB re 1 LSB² of the pre-emphasised signal)."""
        return self._floor

    def levels_db(self, frames: Frames) -> list[float]:
        """Per-frame level in dB of the pre-emphasised signal (vectorised)."""
        x = frames.astype(np.float32)
        d = x[:, 1:] - self._a * x[:, :-1]
        e = np.einsum("ij,ij->i", d, d)
        inv_n = self._inv_n
        return [10.0 * math.log10(v * inv_n + 1.0) for v in e.tolist()]

    def classify(self, frames: Frames) -> list[bool]:
        out: list[bool] = []
        floor = self._floor
        speech = self._speech
        min_level = self._min_level_db
        min_floor = self._min_floor_db
        for lvl in self.levels_db(frames):
            if floor is None:
                floor = max(lvl, min_floor)
            speech = lvl > min_level and lvl > floor + (self._off_db if speech else self._on_db)
            if lvl < floor:
                floor += self._down * (lvl - floor)
                floor = max(floor, min_floor)
            else:
                floor += min(lvl - floor, self._rise_speech if speech else self._rise_noise)
            out.append(speech)
        self._floor = floor
        self._speech = speech
        return out


class WebRtcClassifier:
    """Google's WebRTC VAD (GMM on sub-band energies), from the ``webrtc`` extra."""

    __slots__ = ("_frame", "_vad", "sample_rate")

    def __init__(self, sample_rate: int, frame_ms: int = 10, *, mode: int = 2) -> None:
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


def make_classifier(name: str, sample_rate: int, *, frame_ms: int = 10) -> FrameClassifier:
    """Build a fresh classifier by its config name (``energy`` or ``webrtc``)."""
    if name == "energy":
        return EnergyClassifier(sample_rate, frame_ms)
    if name == "webrtc":
        return WebRtcClassifier(sample_rate, frame_ms)
    raise ClassifierError(f"unknown classifier {name!r} (expected 'energy' or 'webrtc')")

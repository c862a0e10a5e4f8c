"""Deterministic synthetic signals for endpointing tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]


def silence(n: int) -> Pcm:
    return np.zeros(n, dtype=np.int16)


def noise(n: int, rms: float, seed: int = 0) -> Pcm:
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal(n) * rms, -32768, 32767).astype(np.int16)


def speechlike(n: int, rate: int, level: float = 3000.0, seed: int = 1) -> Pcm:
    """A voiced-speech stand-in: harmonics of a wobbling pitch, syllable-rate envelope that never drops to 0."""
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(2, 12))
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    y = level * env * x / np.max(np.abs(x))
    return np.clip(y, -32768, 32767).astype(np.int16)


def concat(*parts: Pcm) -> Pcm:
    return np.concatenate(parts).astype(np.int16)

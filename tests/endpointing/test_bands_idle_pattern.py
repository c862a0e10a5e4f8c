"""The μ-law idle pattern is digital silence for every bands classifier, alone and batched.

Found by fuzz/test_endpointer_props.py (digital silence after noise never starts speech) with random seeds: a
100 ms 440 Hz tone of 10 LSB, then the ±1-step idle pattern (samples 0 or 8 at random). Its 15th frame's
loudest band reached 100.9 against the 100.0 bar of ``min_level_db``, and ``bands`` (floors learnt on the quiet
tone) called that frame speech."""

from __future__ import annotations

import numpy as np
import pytest

from engine.endpointing.classifiers import classify_batch, make_classifier

RATE, FRAME = 8000, 160
BANDS = ["bands", "bands-unmute", "bands-click", "bands-pitch", "bands-hold", "bands-level"]


def _tone_then_idle() -> np.ndarray:
    t = np.arange(RATE // 10) / RATE
    tone = 10.0 * np.sin(2 * np.pi * 440 * t)
    idle = np.where(np.random.default_rng(1).random(2 * RATE) < 0.5, 8.0, 0.0)
    return np.concatenate([tone, idle]).astype(np.int16).reshape(-1, FRAME)


@pytest.mark.parametrize("name", BANDS)
def test_idle_pattern_is_never_speech_alone(name: str) -> None:
    frames = _tone_then_idle()
    alone = make_classifier(name, RATE, frame_ms=20)
    assert not any(alone.classify(frames[i : i + 1])[0] for i in range(len(frames)))
    chunked = make_classifier(name, RATE, frame_ms=20)
    assert not any(chunked.classify(frames))


@pytest.mark.parametrize("name", BANDS)
def test_idle_pattern_is_never_speech_batched(name: str) -> None:
    frames = _tone_then_idle()
    rows = 40  # enough for classify_batch's pooled path
    streams = [make_classifier(name, RATE, frame_ms=20) for _ in range(rows)]
    for frame in frames:
        assert not any(classify_batch(streams, np.repeat(frame[None], rows, axis=0)))

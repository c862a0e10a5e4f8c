"""Issue 13: a bands classifier whose frames are all classified in batches holds no one-frame buffers, and
making them on the first frame classified alone changes no decision."""

from __future__ import annotations

import numpy as np
import pytest

from engine.endpointing import BandClassifier, make_classifier
from engine.endpointing.classifiers import classify_batch

from .signals import concat, noise, speechlike


@pytest.mark.parametrize("kind", ["bands", "bands-click", "bands-pitch"])
def test_one_frame_buffers_are_made_only_when_a_frame_is_classified_alone(kind: str) -> None:
    sig = concat(noise(4000, 60.0, seed=1), speechlike(8000, 8000, seed=2), noise(4000, 60.0, seed=3))
    frames = sig[: len(sig) // 160 * 160].reshape(-1, 160)
    batched = [make_classifier(kind, 8000) for _ in range(3)]
    alone = make_classifier(kind, 8000)
    assert isinstance(alone, BandClassifier)
    got, want = [], []
    for row in frames:
        got.append(classify_batch(batched, np.stack([row, row, row]))[0])
        want += alone.classify(row[None])
    assert all(c._buf is None for c in batched)  # type: ignore[attr-defined]
    assert alone._buf is not None and alone._buf[0][-1] == 1.0  # the constant input stays 1.0
    assert got == want and any(want) and not all(want)

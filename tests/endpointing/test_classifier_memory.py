"""Issue 13: bands classifiers hold no one-frame buffers of their own (1.3 KiB per call before): the scratch is
one set per thread and shape, and sharing it changes no decision, even with streams' frames interleaved."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.endpointing import BandClassifier, make_classifier
from engine.endpointing.classifiers import classify_batch

from .signals import concat, noise, speechlike


def _frames(seed: int) -> np.ndarray:
    sig = concat(noise(4000, 60.0, seed=seed), speechlike(8000, 8000, seed=seed + 1), noise(4000, 60.0, seed=seed + 2))
    return sig[: len(sig) // 160 * 160].reshape(-1, 160)


@pytest.mark.parametrize("kind", ["bands", "bands-click", "bands-pitch", "bands-hold", "bands-level"])
def test_streams_sharing_the_scratch_decide_as_each_alone(kind: str) -> None:
    a, b = make_classifier(kind, 8000), make_classifier(kind, 8000)
    assert isinstance(a, BandClassifier) and isinstance(b, BandClassifier)
    assert a._buffers() is b._buffers()  # one set for the thread, not one per stream
    assert not any(isinstance(getattr(a, k, None), np.ndarray) for k in BandClassifier.__slots__ if k not in (
        "_basis", "_group"))  # the shared matrices only
    fa, fb = _frames(1), _frames(7)
    got_a, got_b = [], []
    for ra, rb in zip(fa, fb, strict=True):  # interleaved: each stream's frame overwrites the other's scratch
        got_a += a.classify(ra[None])
        got_b += b.classify(rb[None])
    # each stream alone from start to end (nothing between its frames), one frame at a time
    ref_a, ref_b = make_classifier(kind, 8000), make_classifier(kind, 8000)
    want_a = [ref_a.classify(r[None])[0] for r in fa]
    want_b = [ref_b.classify(r[None])[0] for r in fb]
    assert (got_a, got_b) == (want_a, want_b) and any(want_a) and not all(want_a)
    batched = [make_classifier(kind, 8000) for _ in range(2)]
    assert sum(classify_batch(batched, np.stack([ra, rb]))[0] for ra, rb in zip(fa, fb, strict=True)) > 0
    assert a._buffers()[0][-1] == 1.0  # the constant input stays 1.0


def test_each_thread_has_its_own_scratch() -> None:
    c = make_classifier("bands-click", 8000)
    assert isinstance(c, BandClassifier)
    mine = c._buffers()
    theirs: list[object] = []
    t = threading.Thread(target=lambda: theirs.append(c._buffers()))
    t.start()
    t.join(10)
    assert theirs and theirs[0] is not mine and c._buffers() is mine


def test_the_unmute_window_keeps_no_lists_after_it() -> None:
    """bands-unmute/-click: the per-band lists of the resume window exist only during it."""
    c = make_classifier("bands-click", 8000)
    assert isinstance(c, BandClassifier)
    line = noise(8000, 60.0, seed=4)
    sig = concat(line, np.zeros(4000, np.int16), noise(8000, 60.0, seed=5))
    frames = sig.reshape(-1, 160)
    seen_window = False
    for row in frames:
        c.classify(row[None])
        if c._resume_min:
            seen_window = True
    assert seen_window  # the window did run (its lists were filled) ...
    assert c._resume_min == () and c._resume_top == ()  # ... and left nothing behind

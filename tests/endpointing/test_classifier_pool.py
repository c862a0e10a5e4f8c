"""Issue 13 round 5: the plain bands classifiers' floors and runs in classify_batch's pool (``_Pool``).

A stream's state moves into the pool once classify_batch finds it settled and back out whenever it is decided
any other way; whatever the order of batched ticks (large, small, mixed parameters), frames classified alone,
streams that come and go, every decision and floor equals a twin's that is never in the pool (it decides the
same rows' band ratios by ``decide``, row by row: the batch's matrix product rounds unlike one frame's)."""

from __future__ import annotations

import copy
import gc
import sys

import numpy as np
import pytest

from engine.endpointing import BandClassifier, ClassifierError, make_classifier
from engine.endpointing.classifiers import _POOL, POOL_MIN_ROWS, _band_array, classify_batch

from .test_classifier_vector import stream

KINDS = ["bands", "bands-unmute", "bands-click"]


def _state(c: BandClassifier) -> tuple[object, ...]:
    return (c._floors, c._informed, c._run, c._resume, c._resume_min, c._resume_top, c._rescued)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pooled_streams_decide_as_alone_whatever_comes(seed: int) -> None:
    """Random ticks: a random subset of the live streams in a batch (sometimes under POOL_MIN_ROWS), the rest of
    the frames alone; streams end (their row freed) and new ones start at any tick; kinds mixed in some ticks."""
    rng = np.random.default_rng(seed)
    n_frames = 240
    live: dict[int, tuple[np.ndarray, BandClassifier, BandClassifier, list[int]]] = {}
    next_id = 0
    pooled_rows = 0
    mixed = seed % 2 == 1
    for _ in range(n_frames):
        while len(live) < 24 or (len(live) < 40 and rng.random() < 0.05):  # calls come
            kind = KINDS[int(rng.integers(0, 3))] if mixed else "bands-click"
            a, b = make_classifier(kind, 8000), make_classifier(kind, 8000)
            assert isinstance(a, BandClassifier) and isinstance(b, BandClassifier)
            live[next_id] = (stream(1000 * seed + next_id, n_frames), a, b, [0])
            next_id += 1
        for k in [k for k in live if rng.random() < 0.03 or live[k][3][0] >= n_frames]:  # calls go, at any time
            del live[k]
        ids = [k for k in rng.permutation(sorted(live)).tolist()]
        cut = int(rng.integers(0, len(ids) + 1)) if rng.random() < 0.3 else len(ids)
        if rng.random() < 0.2:
            cut = min(cut, POOL_MIN_ROWS - 1)  # a small batch: its streams leave the pool
        batch, alone = ids[:cut], ids[cut:]
        if batch:
            frames = np.stack([live[k][0][live[k][3][0]] for k in batch])
            got = classify_batch([live[k][2] for k in batch], frames)
            twin0 = live[batch[0]][1]
            ratios = _band_array(twin0._basis, twin0._group, frames).tolist()
            want = [live[k][1].decide(ratios[j], frames[j]) for j, k in enumerate(batch)]
            assert got == want
            pooled_rows += sum(1 for k in batch if live[k][2]._slot)
        for k in alone:
            f = live[k][0][live[k][3][0]][None]
            assert live[k][2].classify(f) == live[k][1].classify(f)
        for k in ids:
            live[k][3][0] += 1
            assert _state(live[k][2]) == _state(live[k][1])  # the floors to the bit, wherever they live
    assert pooled_rows > 4 * n_frames  # not vacuous: many batched rows were decided in the pool


def test_a_stream_that_goes_frees_its_row_and_keeps_nothing_else() -> None:
    calls = [stream(i, 40) for i in range(POOL_MIN_ROWS * 2)]
    clfs = [make_classifier("bands-click", 8000) for _ in calls]
    for t in range(40):
        classify_batch(clfs, np.stack([c[t] for c in calls]))
    rows = [c._slot for c in clfs if isinstance(c, BandClassifier) and c._slot]
    assert len(rows) > POOL_MIN_ROWS  # settled streams are in the pool ...
    assert all(c._fl is None for c in clfs if isinstance(c, BandClassifier) and c._slot)  # ... and only there
    free = set(_POOL.free)
    assert not free & set(rows)
    del clfs
    gc.collect()
    assert set(rows) <= set(_POOL.free)  # every row of the streams that went is free again
    assert len(_POOL.free) == len(set(_POOL.free))  # none twice


def test_reading_the_state_does_not_take_it_out_of_the_pool() -> None:
    calls = [stream(100 + i, 30) for i in range(POOL_MIN_ROWS)]
    clfs = [make_classifier("bands-click", 8000) for _ in calls]
    twins = [make_classifier("bands-click", 8000) for _ in calls]
    for t in range(30):
        frames = np.stack([c[t] for c in calls])
        classify_batch(clfs, frames)
        ratios = _band_array(clfs[0]._basis, clfs[0]._group, frames).tolist()  # type: ignore[attr-defined]
        for j, c in enumerate(twins):
            assert isinstance(c, BandClassifier)
            c.decide(ratios[j], frames[j])
    for c, twin in zip(clfs, twins, strict=True):
        assert isinstance(c, BandClassifier) and isinstance(twin, BandClassifier)
        slot = c._slot
        assert (c._floors, c._run, c.noise_floors_db) == (twin._floors, twin._run, twin.noise_floors_db)
        assert c._slot == slot


def test_a_copy_of_a_pooled_stream_has_its_own_state() -> None:
    calls = [stream(200 + i, 60) for i in range(POOL_MIN_ROWS)]
    clfs = [make_classifier("bands-click", 8000) for _ in calls]
    for t in range(30):
        classify_batch(clfs, np.stack([c[t] for c in calls]))
    first = clfs[0]
    assert isinstance(first, BandClassifier) and first._slot
    twin = copy.deepcopy(first)
    assert twin._slot == 0 and twin._floors == first._floors and twin._run == first._run
    for t in range(30, 60):
        frames = np.stack([c[t] for c in calls])
        got = classify_batch(clfs, frames)
        ratios = _band_array(first._basis, first._group, frames).tolist()
        assert got[0] == twin.decide(ratios[0], frames[0])
        assert twin._floors == first._floors


def test_a_classifier_whose_arguments_are_refused_goes_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its __del__ runs on an object __init__ left half-built: no 'Exception ignored' (unraisable) from it."""
    seen: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with pytest.raises(ClassifierError):
        BandClassifier(44100)
    gc.collect()
    assert seen == []

"""Issue 13: the bands decision vectorised across a tick's rows (``_decide_rows``) is ``decide`` row by row:
the same floors (to the bit), runs and decisions, for every bands kind, random streams and tick membership."""

from __future__ import annotations

import numpy as np
import pytest

from engine.endpointing import BandClassifier, make_classifier
from engine.endpointing.classifiers import _band_array, _decide_rows, _swings

from .signals import concat, noise, silence, speechlike

KINDS = ["bands", "bands-unmute", "bands-click", "bands-pitch", "bands-hold", "bands-level"]


def stream(i: int, n_frames: int, frame: int = 160) -> np.ndarray:
    """A call with digital silence (hold), noise, speech and clicks in an order that depends on ``i``."""
    rng = np.random.default_rng(i)
    parts = []
    while sum(p.shape[0] for p in parts) < n_frames * frame:
        k = int(rng.integers(0, 4))
        n = frame * int(rng.integers(2, 40))
        rms = float(rng.uniform(20, 400))
        if k == 0:
            parts.append(silence(n))
        elif k == 1:
            parts.append(noise(n, rms, seed=int(rng.integers(1 << 30))))
        elif k == 2:
            parts.append(speechlike(n, 8000, level=float(rng.uniform(300, 6000)), seed=int(rng.integers(1 << 30)))
                         + noise(n, rms, seed=int(rng.integers(1 << 30))))
        else:
            x = noise(n, rms, seed=int(rng.integers(1 << 30)))
            x[int(rng.integers(0, n))] = 20000  # a click
            parts.append(x)
    return concat(*parts)[: n_frames * frame].reshape(n_frames, frame)


def state(c: BandClassifier) -> tuple[object, ...]:
    return (c._floors, c._informed, c._run, c._resume, c._resume_min, c._resume_top, c._rescued)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("swings_as", ["list", "frames"])
def test_decide_rows_is_decide_row_by_row(kind: str, seed: int, swings_as: str) -> None:
    """``swings_as``: the swings as numbers, or the frames themselves (classify_batch's way: a swing is taken
    only for an onset, where the click rule can change the run)."""
    n_calls, n_frames = 12, 300
    calls = [stream(seed * 100 + i, n_frames) for i in range(n_calls)]
    alone = [make_classifier(kind, 8000) for _ in range(n_calls)]
    rows = [make_classifier(kind, 8000) for _ in range(n_calls)]
    rng = np.random.default_rng(seed)
    pos = [0] * n_calls
    heard = vectorised = 0
    while min(pos) < n_frames:
        # a random subset of the calls has a frame this tick (calls come and go, in any order)
        members = [i for i in rng.permutation(n_calls).tolist() if pos[i] < n_frames and rng.random() < 0.7]
        if not members:
            continue
        frames = np.stack([calls[i][pos[i]] for i in members])
        bands = _band_array(rows[0]._basis, rows[0]._group, frames)  # type: ignore[attr-defined]
        ratios = bands.tolist()
        swings = _swings(frames)
        voicing = rng.uniform(0.0, 1.0, len(members)).tolist()
        settled = sum(1 for i in members if rows[i]._informed and not rows[i]._resume)  # type: ignore[attr-defined]
        expected = []
        for j, i in enumerate(members):
            c = alone[i]
            assert isinstance(c, BandClassifier)
            expected.append(c.decide(ratios[j], swings[j], voicing[j]))
        given = swings if swings_as == "list" else frames
        got, rescued = _decide_rows([rows[i] for i in members], bands, given, voicing, min_rows=1)  # type: ignore[misc]
        assert got == expected
        for j, i in enumerate(members):
            a, r = alone[i], rows[i]
            assert isinstance(a, BandClassifier) and isinstance(r, BandClassifier)
            assert state(r) == state(a)  # the floors to the bit
            if got[j]:
                assert rescued[j] == a._rescued
            pos[i] += 1
        heard += sum(expected)
        vectorised += settled
    assert heard > n_calls * 20
    assert vectorised > n_calls * n_frames // 2  # most rows took the vectorised path


def test_classify_batch_mixed_parameters_same_type() -> None:
    """bands, bands-unmute and bands-click are one type with different parameters: one tick, each its own rule."""
    kinds = ["bands", "bands-unmute", "bands-click"] * 3
    calls = [stream(50 + i, 200) for i in range(len(kinds))]
    alone = [make_classifier(k, 8000) for k in kinds]
    batched = [make_classifier(k, 8000) for k in kinds]
    for t in range(200):
        frames = np.stack([c[t] for c in calls])
        expected = [c.classify(frames[i : i + 1])[0] for i, c in enumerate(alone)]
        assert BandClassifier.classify_batch(batched, frames) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cut", [True, False])
def test_classify_batch_of_many_rows_equals_one_call_at_a_time(kind: str, cut: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """More rows than MATMUL_ROWS in one classify_batch (FrameBatch gives the bands kinds a whole round):
    the products cut in pieces (BLAS possibly threaded) or in one (single-threaded BLAS), the decisions in one
    go, each stream as if alone."""
    from engine.endpointing import classifiers
    from engine.endpointing.classifiers import MATMUL_ROWS, classify_batch

    monkeypatch.setattr(classifiers, "_MATMUL_CUT", MATMUL_ROWS if cut else 1 << 30)

    n_calls, n_frames = MATMUL_ROWS * 2 + 7, 120
    calls = [stream(700 + i, n_frames) for i in range(n_calls)]
    alone = [make_classifier(kind, 8000) for _ in range(n_calls)]
    batched = [make_classifier(kind, 8000) for _ in range(n_calls)]
    heard = 0
    for t in range(n_frames):
        frames = np.stack([c[t] for c in calls])
        expected = [c.classify(frames[i : i + 1])[0] for i, c in enumerate(alone)]
        assert classify_batch(batched, frames) == expected
        heard += sum(expected)
    assert heard > n_calls * 10


def test_the_floors_fall_by_the_same_pow_as_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vectorised floors' fall must not use ``np.power``: numpy may dispatch it to a vector library
    (SVML on AVX-512 CPUs) whose result can be an ulp off C's ``pow``, and the floors would then drift from
    ``decide``'s on such a machine only. Here ``np.power`` is made an ulp off on purpose: nothing changes."""
    real_power = np.power

    def ulp_off(*args: object, **kwargs: object) -> object:
        out = real_power(*args, **kwargs)  # type: ignore[call-overload]
        return np.nextafter(out, np.inf) if isinstance(out, np.ndarray) else out

    monkeypatch.setattr(np, "power", ulp_off)
    n_calls, n_frames = 40, 200
    calls = [stream(900 + i, n_frames) for i in range(n_calls)]
    alone = [make_classifier("bands-click", 8000) for _ in range(n_calls)]
    rows = [make_classifier("bands-click", 8000) for _ in range(n_calls)]
    for t in range(n_frames):
        frames = np.stack([c[t] for c in calls])
        bands = _band_array(rows[0]._basis, rows[0]._group, frames)  # type: ignore[attr-defined]
        expected = [c.decide(r, s) for c, r, s in zip(alone, bands.tolist(), _swings(frames), strict=True)]
        got, _ = _decide_rows(rows, bands, _swings(frames), None, min_rows=2)  # type: ignore[arg-type]
        assert got == expected
        for a, r in zip(alone, rows, strict=True):
            assert isinstance(a, BandClassifier) and isinstance(r, BandClassifier)
            assert r._floors == a._floors


@pytest.mark.parametrize(
    ("env", "single"),
    [
        ({"OPENBLAS_NUM_THREADS": "1"}, True),
        ({"OPENBLAS_NUM_THREADS": "4", "OMP_NUM_THREADS": "1"}, False),  # OpenBLAS's own variable wins
        ({"OMP_NUM_THREADS": "1"}, True),
        ({"GOTO_NUM_THREADS": " 1 "}, True),
        ({}, False),  # OpenBLAS's default: as many threads as cores
    ],
)
def test_one_product_for_all_rows_only_with_single_threaded_blas(
    env: dict[str, str], single: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.endpointing.classifiers import _blas_single_threaded

    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _blas_single_threaded() is single

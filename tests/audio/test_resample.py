"""The streaming resampler: identity, chunking invariance against one-shot, flush, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from engine.audio.resample import ResampleError, Resampler


def signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 8000 * np.sin(2 * np.pi * 440 * t / 8000) + rng.standard_normal(n) * 2000
    x[n // 3 : n // 3 + 50] = 32767  # clipping
    return np.clip(x, -32768, 32767).astype(np.int16)


def one_shot(x: np.ndarray, a: int, b: int) -> np.ndarray:
    y = soxr.resample(x.astype(np.float32) / 32768, a, b, quality="HQ")
    return np.clip(np.rint(y * 32768), -32768, 32767).astype(np.int16)


def stream(r: Resampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, pos, i = [], 0, 0
    while pos < len(x):
        n = sizes[i % len(sizes)]
        i += 1
        out.append(r.process(x[pos : pos + n]))
        pos += n
    out.append(r.flush())
    return np.concatenate(out)


def test_identity_returns_the_same_object() -> None:
    r = Resampler(8000, 8000)
    x = signal(160)
    assert r.process(x) is x
    assert r.identity
    assert r.flush().shape == (0,)


@pytest.mark.parametrize(("a", "b"), [(8000, 16000), (16000, 8000), (8000, 24000), (48000, 8000)])
@pytest.mark.parametrize("sizes", [[160], [1], [0, 7, 0, 333], [4001], [10_000]])
def test_streaming_matches_one_shot(a: int, b: int, sizes: list[int]) -> None:
    x = signal(a)  # one second
    got = stream(Resampler(a, b), x, sizes)
    ref = one_shot(x, a, b)
    assert got.dtype == np.int16
    assert abs(len(got) - len(ref)) <= 1
    n = min(len(got), len(ref))
    assert np.abs(got[:n].astype(np.int32) - ref[:n]).max() <= 1
    assert len(got) == pytest.approx(len(x) * b / a, abs=2)


def test_chunkings_agree_exactly() -> None:
    x = signal(8000, seed=3)
    a = stream(Resampler(8000, 16000), x, [160])
    b = stream(Resampler(8000, 16000), x, [1, 2, 3, 0, 500])
    assert np.array_equal(a, b)


def test_extremes_do_not_wrap() -> None:
    x = np.tile(np.array([32767, -32768], np.int16), 4000)
    y = stream(Resampler(8000, 16000), x, [160])
    assert y.dtype == np.int16 and len(y) == 16000


def test_flush_is_final_and_idempotent() -> None:
    r = Resampler(8000, 16000)
    r.process(signal(800))
    assert r.flush().size > 0
    assert r.flush().size == 0
    with pytest.raises(ResampleError):
        r.process(signal(160))


def test_bad_input() -> None:
    with pytest.raises(ResampleError):
        Resampler(0, 8000)
    r = Resampler(8000, 16000)
    with pytest.raises(ResampleError):
        r.process(np.zeros((2, 80), np.int16))
    assert r.process(np.zeros(0, np.int16)).shape == (0,)

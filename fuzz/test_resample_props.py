"""Property: streamed resampling over any chunking equals one-shot within 1 LSB."""

from __future__ import annotations

import numpy as np
import soxr
from hypothesis import given
from hypothesis import strategies as st

from engine.audio.resample import Resampler

RATES = [8000, 16000, 24000, 44100, 48000]


@given(
    a=st.sampled_from(RATES),
    b=st.sampled_from(RATES),
    n=st.integers(0, 12_000),
    seed=st.integers(0, 2**32 - 1),
    level=st.sampled_from([0.0, 10.0, 3000.0, 40000.0]),
    chunks=st.lists(st.integers(0, 3000), min_size=1, max_size=8).filter(any),
)
def test_streaming_equals_one_shot(a: int, b: int, n: int, seed: int, level: float, chunks: list[int]) -> None:
    x = np.clip(np.random.default_rng(seed).standard_normal(n) * level, -32768, 32767).astype(np.int16)
    r = Resampler(a, b)
    out, pos, i = [], 0, 0
    while pos < n:
        k = chunks[i % len(chunks)]
        i += 1
        y = r.process(x[pos : pos + k])
        assert y.dtype == np.int16 and y.ndim == 1
        out.append(y)
        pos += k
    out.append(r.flush())
    got = np.concatenate(out)
    if a == b:
        assert np.array_equal(got, x)
        return
    ref = soxr.resample(x.astype(np.float32) / 32768, a, b, quality="HQ")
    ref = np.clip(np.rint(ref * 32768), -32768, 32767).astype(np.int16)
    assert abs(len(got) - len(ref)) <= 1
    m = min(len(got), len(ref))
    if m:
        assert int(np.abs(got[:m].astype(np.int32) - ref[:m]).max()) <= 1

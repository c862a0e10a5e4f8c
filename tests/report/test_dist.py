"""Bounded-memory percentiles: exact while small, within 1 ms of exact once binned."""

from __future__ import annotations

import numpy as np

from engine.report.dist import EXACT_LIMIT, Dist

from .helpers import nearest_rank


def test_exact_then_binned_within_a_millisecond():
    rng = np.random.default_rng(7)
    values = list(rng.gamma(4.0, 60.0, size=3 * EXACT_LIMIT))
    d = Dist()
    for v in values[:100]:
        d.add(v)
    assert d.quantile(0.5) == nearest_rank(values[:100], 0.5)  # exact
    for v in values[100:]:
        d.add(v)
    assert not d.exact  # binned: memory no longer grows with the values
    for q in (0.5, 0.95, 0.99):
        assert abs(d.quantile(q) - nearest_rank(values, q)) <= 1.0
    assert d.max == max(values) and d.count == len(values)
    hist = d.histogram(20, 1000.0)
    assert sum(hist) == len(values)


def test_empty():
    d = Dist()
    assert d.quantile(0.5) is None and d.stats()["max"] is None and d.histogram(5, 100.0) == [0] * 5

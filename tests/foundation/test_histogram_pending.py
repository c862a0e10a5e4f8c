"""Issue 13: values appended to Histogram.pending (the Twilio frame lag, per message) render exactly as if
each had been observed."""

from __future__ import annotations

import math
import random

import pytest

from engine.metrics import Histogram, Registry
from engine.twilio.server import FRAME_LAG_BUCKETS_MS


def _lags(rng: random.Random, n: int) -> list[float]:
    """Lags as the reader makes them: mostly small, some on and around the bucket bounds, a few huge."""
    out: list[float] = []
    for _ in range(n):
        pick = rng.random()
        if pick < 0.2:
            out.append(float(rng.choice(FRAME_LAG_BUCKETS_MS)) + rng.choice((0.0, 1e-9, -1e-9)))
        elif pick < 0.25:
            out.append(rng.uniform(5000, 1e6))
        else:
            out.append(rng.expovariate(1 / 8) * 1000 / 1000)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_pending_values_render_as_observed(seed: int) -> None:
    rng = random.Random(seed)
    observed, deferred = Registry(), Registry()
    a = observed.histogram("lag", "x", buckets=FRAME_LAG_BUCKETS_MS)
    b = deferred.histogram("lag", "x", buckets=FRAME_LAG_BUCKETS_MS)
    for _ in range(rng.randint(1, 5)):  # reads between batches of appends, and folds on the way (FOLD_AT)
        for value in _lags(rng, rng.randint(0, 3 * Histogram.FOLD_AT)):
            a.observe(value)
            b.pending.append(value)
            if len(b.pending) >= Histogram.FOLD_AT:
                b.fold()
        assert deferred.render() == observed.render()
        assert (b.count, b.sum, b.counts, b.quantile(0.99)) == (a.count, a.sum, a.counts, a.quantile(0.99))
        assert b.pending == []


def test_observe_after_pending_keeps_the_order() -> None:
    a, b = Histogram((1, 10)), Histogram((1, 10))
    values = (0.1, 1e16, 5.0, math.nan, math.inf, -math.inf, -1e16)  # float sums depend on the order
    for v in values:
        a.observe(v)
    b.pending.extend(values[:-1])
    b.observe(-1e16)
    assert (b.counts, b.count) == (a.counts, a.count) and math.isnan(a.sum) and math.isnan(b.sum)
    c, d = Histogram((1, 10)), Histogram((1, 10))
    for v in values[:3]:
        c.observe(v)
    d.pending.extend(values[:3])
    assert (d.sum, d.counts, d.count) == (c.sum, c.counts, c.count)

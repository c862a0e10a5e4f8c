"""The reactor's GC probe (``gc_pause_ms``) appends from inside a collection, and a collection can start in the
middle of Histogram.fold() (any allocation of a tracked object may trigger one): the histogram must still count
every pause once, in its buckets, its count and its sum (review 4)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from engine.metrics import Histogram, Registry
from engine.twilio.reactor import _GcProbe


class _Stops:
    """Counts the generation-0 collections that end while it is registered (each is one probe append)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 0:
            self.n += 1


@pytest.mark.parametrize("preload", [10, Histogram.FOLD_AT - 1])
def test_a_collection_during_fold_is_counted_once(preload: int) -> None:
    registry = Registry()

    def by_gen(gen: int) -> Histogram:
        return registry.histogram("gc_pause_ms", "x", f"generation={gen}", buckets=(0.1, 1.0, 10.0))

    probe = _GcProbe(by_gen)
    h = probe.by_gen[0]
    h.pending.extend([0.5] * preload)  # pauses noted earlier, not folded yet
    stops = _Stops()
    threshold = gc.get_threshold()
    gc.collect()
    gc.callbacks.extend([probe, stops])
    gc.set_threshold(1, 1_000_000, 1_000_000)  # a gen-0 collection at (almost) every tracked allocation
    try:
        h.fold()  # e.g. a /metrics render, while the reactor runs
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(probe)
        gc.callbacks.remove(stops)
    assert stops.n > 0  # the scenario happened: collections during the fold
    counts, count, total = h.counts, h.count, h.sum  # each read folds what is still pending first
    assert count == sum(counts) == preload + stops.n
    assert total >= 0.5 * preload

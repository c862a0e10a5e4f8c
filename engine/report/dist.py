"""A distribution of millisecond values in bounded memory: exact while small, 1 ms bins beyond.

Percentiles are nearest-rank (the smallest value with at least q of the values at or below it). Up to
``EXACT_LIMIT`` values they are exact; past it the values move into a fixed array of 1 ms bins up to
``MAX_MS`` (larger values land in the last bin; ``max`` stays exact), so a day of calls costs the same
memory as one call.
"""

from __future__ import annotations

import math

import numpy as np

EXACT_LIMIT = 4096
MAX_MS = 60_000


class Dist:
    __slots__ = ("_binned", "_bins", "_values", "count", "max", "sum")

    def __init__(self) -> None:
        self._values: list[float] = []  # exact values, or (once binned) a buffer flushed into the bins
        self._bins: np.ndarray | None = None
        self._binned = 0
        self.count = 0
        self.sum = 0.0
        self.max = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.max = max(self.max, value)
        self._values.append(value)
        if len(self._values) > EXACT_LIMIT:
            self._flush()

    def _flush(self) -> None:
        """Move the buffered values into the 1 ms bins (one numpy call per EXACT_LIMIT values)."""
        if not self._values:
            return
        values = np.clip(np.asarray(self._values, dtype=np.float64), 0, MAX_MS).astype(np.int64)
        counts = np.bincount(values, minlength=MAX_MS + 1).astype(np.int64)
        self._bins = counts if self._bins is None else self._bins + counts
        self._binned += len(self._values)
        self._values = []

    @property
    def exact(self) -> bool:
        return self._bins is None

    def quantile(self, q: float) -> float | None:
        """Nearest-rank percentile (q in 0..1), None when empty; 1 ms resolution once binned."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        if self._bins is None:
            return sorted(self._values)[rank - 1]
        self._flush()
        assert self._bins is not None
        index = int(np.searchsorted(np.cumsum(self._bins), rank))
        return float(min(index, self.max))

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def histogram(self, bins: int, upper: float) -> list[int]:
        """Counts in ``bins`` equal bins over [0, upper); values at or above upper go to the last one."""
        counts = [0] * bins
        if not self.count or upper <= 0:
            return counts
        width = upper / bins
        if self._bins is None:
            for value in self._values:
                counts[min(bins - 1, max(0, int(value / width)))] += 1
            return counts
        self._flush()
        edges = np.minimum(bins - 1, (np.arange(MAX_MS + 1) / width).astype(np.int64))
        return [int(c) for c in np.bincount(edges, weights=self._bins, minlength=bins)[:bins]]

    def stats(self) -> dict[str, float | int | None]:
        """count, p50, p95, max, mean, rounded to 0.1 ms (for JSON and the tables)."""
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {"count": self.count, "p50": r(self.quantile(0.5)), "p95": r(self.quantile(0.95)),
                "max": r(self.max if self.count else None), "mean": r(self.mean)}

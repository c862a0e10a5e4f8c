"""Counters, gauges and histograms, rendered in the Prometheus text format at GET /metrics.

A :class:`Registry` is created by the supervisor and handed to each component; there is no
process-global registry, so tests can build as many independent engines as they like.
Updates are plain attribute arithmetic: cheap enough for the per-frame path.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

import numpy as np

LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    """A monotonically increasing count."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Gauge:
    """A value that goes up and down (open sockets, live calls)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Histogram:
    """Cumulative-bucket histogram; also keeps count and sum.

    ``observe`` folds a value in at once. A per-frame caller may instead append values to ``pending`` (a
    C list append, ~15x cheaper than the Python call) and call :meth:`fold` when it holds ``FOLD_AT`` or
    more; every read (``counts``, ``sum``, ``count``, :meth:`quantile`, rendering) folds what is pending
    first, in order, so the histogram reads exactly as if each value had been observed (issue 13).
    """

    __slots__ = ("_count", "_counts", "_sum", "buckets", "pending")

    FOLD_AT = 1024

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)
        self._count = 0
        self._sum = 0.0
        self.pending: list[float] = []

    def observe(self, value: float) -> None:
        if self.pending:
            self.fold()
        self._counts[bisect.bisect_left(self.buckets, value)] += 1
        self._count += 1
        self._sum += value

    def fold(self) -> None:
        """Observe every pending value, in order (the same counts and the same float sum as ``observe``)."""
        pending = self.pending
        taken = len(pending)
        if not taken:
            return
        # Only the first ``taken`` values: a garbage collection may start during this fold (any allocation of a
        # tracked object can trigger one) and the reactor's GC probe appends its pause here (it never folds:
        # engine/twilio/reactor.py); what is appended meanwhile stays pending for the next fold.
        values = np.fromiter(pending, dtype=np.float64, count=taken)
        where = np.searchsorted(np.asarray(self.buckets, dtype=np.float64), values, side="left")  # = bisect_left
        where[np.isnan(values)] = 0  # where bisect_left puts a NaN (searchsorted: past the end)
        for i, n in enumerate(np.bincount(where, minlength=len(self._counts)).tolist()):
            self._counts[i] += n
        # The sum one value after another, as observe adds them (accumulate is sequential, not pairwise).
        self._sum = float(np.add.accumulate(np.concatenate(([self._sum], values)))[-1])
        self._count += taken
        del pending[:taken]

    @property
    def counts(self) -> list[int]:
        self.fold()
        return self._counts

    @property
    def count(self) -> int:
        self.fold()
        return self._count

    @property
    def sum(self) -> float:
        self.fold()
        return self._sum

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (coarse; for summaries, not science)."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            seen += n
            if seen >= target:
                return bound
        return math.inf


class Family:
    """A metric name with fixed label names; ``labels(...)`` returns one child per value tuple."""

    def __init__(self, kind: str, name: str, help_text: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.kind = kind
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets)
        self.children: dict[tuple[str, ...], Counter | Gauge | Histogram] = {}

    def _new(self) -> Counter | Gauge | Histogram:
        if self.kind == "counter":
            return Counter()
        if self.kind == "gauge":
            return Gauge()
        return Histogram(self.buckets)

    def child(self, values: tuple[str, ...]) -> Counter | Gauge | Histogram:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        found = self.children.get(values)
        if found is None:
            found = self.children[values] = self._new()
        return found

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for values, metric in sorted(self.children.items()):
            if isinstance(metric, Histogram):
                cumulative = 0
                for bound, n in zip((*metric.buckets, math.inf), metric.counts, strict=True):
                    cumulative += n
                    le = f'le="{_fmt(bound)}"'
                    yield f"{self.name}_bucket{_labels(self.labelnames, values, le)} {cumulative}"
                yield f"{self.name}_sum{_labels(self.labelnames, values)} {_fmt(metric.sum)}"
                yield f"{self.name}_count{_labels(self.labelnames, values)} {metric.count}"
            else:
                yield f"{self.name}{_labels(self.labelnames, values)} {_fmt(metric.value)}"


class Registry:
    """All metrics of one engine. Asking twice for the same name returns the same metric."""

    def __init__(self, prefix: str = "sori_") -> None:
        self.prefix = prefix
        self._families: dict[str, Family] = {}

    def _family(self, kind: str, name: str, help_text: str, labelnames: Sequence[str], buckets: Sequence[float]) -> Family:
        full = self.prefix + name
        fam = self._families.get(full)
        if fam is None:
            fam = self._families[full] = Family(kind, full, help_text, labelnames, buckets)
        elif fam.kind != kind or fam.labelnames != tuple(labelnames):
            raise ValueError(f"metric {full} re-registered with a different kind or labels")
        return fam

    def counter(self, name: str, help_text: str, *labels: str) -> Counter:
        """An unlabelled counter, or the child for ``labels`` given as name=value strings."""
        names, values = _split(labels)
        metric = self._family("counter", name, help_text, names, ()).child(values)
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str, help_text: str, *labels: str) -> Gauge:
        names, values = _split(labels)
        metric = self._family("gauge", name, help_text, names, ()).child(values)
        assert isinstance(metric, Gauge)
        return metric

    def histogram(self, name: str, help_text: str, *labels: str, buckets: Sequence[float] = LATENCY_BUCKETS_MS) -> Histogram:
        names, values = _split(labels)
        metric = self._family("histogram", name, help_text, names, buckets).child(values)
        assert isinstance(metric, Histogram)
        return metric

    def value(self, name: str, *labels: str) -> float:
        """Read a counter or gauge (0 when never touched); for tests and summaries."""
        _names, values = _split(labels)
        fam = self._families.get(self.prefix + name)
        if fam is None:
            return 0.0
        metric = fam.children.get(values)
        if metric is None:
            return 0.0
        if isinstance(metric, Histogram):
            return float(metric.count)
        return metric.value

    def render(self) -> str:
        lines: list[str] = []
        for fam in self._families.values():
            lines.extend(fam.render())
        return "\n".join(lines) + "\n"


def _split(labels: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    values: list[str] = []
    for item in labels:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"label {item!r} must be name=value")
        names.append(name)
        values.append(value)
    return tuple(names), tuple(values)

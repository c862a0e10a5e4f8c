"""The engine's RSS over a capacity step, by phase: what a peak-based figure per call contains that a steady one does not.

bench/capacity.py's historical figure is (peak RSS over the whole step − RSS of the ready, idle engine) / calls:
the peak is taken over the ramp, the window and the calls' last minute alike. This module keeps every 0.2 s
reading with the phase it fell in (``ramp``: calls starting, ``settle``, ``window``: every call live and
measured, ``after``: until the load generator ends) so that the report can print, labelled, both the peak-based
figure and a steady-state one (the window's mean RSS above idle), and where the peak fell. ``--rss-trace``
(diagnostics) also reads, once a second, RSS by kind of mapping (glibc's brk heap, 1 MiB anonymous maps =
pymalloc's arenas, other anonymous maps) and the RTZR pool's gauges, and writes everything as JSON.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = 4096
ARENA_KIB = 1024  # CPython >= 3.10: pymalloc's arenas are 1 MiB anonymous maps
POOL_GAUGES = ("sori_rtzr_pool_open", "sori_rtzr_pool_idle", "sori_rtzr_pool_leased", "sori_calls_active")


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def rss_by_mapping(pid: int) -> dict[str, int]:
    """RSS in KiB by kind of mapping: ``heap`` (glibc's brk heap), ``arenas`` (1 MiB anonymous maps: pymalloc),
    ``anon`` (other anonymous maps: glibc's mmapped chunks, numpy, thread stacks), ``file``, ``other``."""
    out = {"heap": 0, "arenas": 0, "anon": 0, "file": 0, "other": 0}
    kind = "other"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                name = head[5] if len(head) > 5 else ""
                if name == "[heap]":
                    kind = "heap"
                elif not name or name.startswith("[anon"):
                    kind = "arenas" if (hi - lo) == ARENA_KIB * 1024 else "anon"
                elif name.startswith("/"):
                    kind = "file"
                else:
                    kind = "other"
            elif head[0] == "Rss:":
                out[kind] += int(head[1])
    return out


def gauges(metrics_text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        name = line.split(" ", 1)[0]
        if name in POOL_GAUGES:
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class RssTrace:
    pid: int
    detail: bool = False  # smaps by mapping + pool gauges once a second (costs the engine a /metrics render)
    t0: float = field(default_factory=time.monotonic)
    idle: int = 0
    samples: list[tuple[float, int, str]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    _last_detail: float = -math.inf

    def start(self, idle_rss: int, metrics: str | None = None) -> None:
        self.idle, self.t0 = idle_rss, time.monotonic()
        if self.detail:
            self._detail("idle", metrics)

    def sample(self, phase: str, metrics: Any = None) -> int:
        """One reading (bytes); ``metrics``: a callable returning the /metrics text, for the detailed readings."""
        rss = rss_bytes(self.pid)
        now = time.monotonic()
        self.samples.append((now - self.t0, rss, phase))
        if self.detail and metrics is not None and now - self._last_detail >= 1.0:
            self._last_detail = now
            try:
                self._detail(phase, metrics())
            except OSError:
                pass
        return rss

    def _detail(self, phase: str, metrics: str | None) -> None:
        row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 2), "phase": phase,
                               "rss_kib": rss_bytes(self.pid) // 1024, **rss_by_mapping(self.pid)}
        if metrics:
            row.update(gauges(metrics))
        self.details.append(row)

    def summary(self, calls: int) -> dict[str, Any]:
        """Per call above idle (KiB): ``peak`` (the historical figure), ``window_mean`` / ``window_max`` (every call
        live: the steady state), and where the peak fell."""
        if not self.samples:
            return {}
        t_peak, peak, phase = max(self.samples, key=lambda s: s[1])
        window = [s[1] for s in self.samples if s[2] == "window"]

        def per(x: float) -> float:
            return (x - self.idle) / calls / 1024

        by_phase = {p: per(max(s[1] for s in self.samples if s[2] == p))
                    for p in dict.fromkeys(s[2] for s in self.samples)}
        return {"peak": per(peak), "peak_t": t_peak, "peak_phase": phase,
                "window_mean": per(statistics.fmean(window)) if window else math.nan,
                "window_max": per(max(window)) if window else math.nan, "max_by_phase": by_phase}

    def dump(self, path: Path, calls: int) -> None:
        path.write_text(json.dumps({"calls": calls, "idle": self.idle, "summary": self.summary(calls),
                                    "samples": self.samples, "details": self.details}))

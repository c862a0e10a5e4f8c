"""Why a one-process rig tick is late: a Trio Instrument timing every task step, I/O wait and GC pause.

``bench/rig.py --trace-late FILE`` installs it. For every tick whose wake-up is later than ``--trace-late-ms``
(the first of a run of late ticks) it sums what ran between the tick's due time and its wake-up, by task (steps, their time) plus the I/O waits and
GC pauses; over the whole load it keeps each task's step count, total and longest step, and how many tasks
ran in the batch before the ticker's own step. Diagnostic only: the hooks cost a few µs per task step.
"""

from __future__ import annotations

import gc
import json
import time
from collections import deque
from typing import Any

import trio

IO_WAIT = "<io wait>"
RING = 20_000


class LateTrace(trio.abc.Instrument):
    """Task steps, I/O waits and GC pauses in a ring; a late tick's window summed by name."""

    def __init__(self, late_ms: float = 3.0) -> None:
        self.late_s = late_ms / 1000
        self.ring: deque[tuple[float, float, str]] = deque(maxlen=RING)  # (start, duration, name)
        self.totals: dict[str, list[float]] = {}  # name: [steps, total s, longest s]
        self.late: list[dict[str, Any]] = []
        self.batch_before_ticker: list[int] = []  # task steps run since the last I/O wait, when the ticker steps
        self._t0 = 0.0
        self._gc_t0 = 0.0
        self._since_io = 0
        self.ticker_name = "Ticker.run"
        self.on = False
        self._was_late = False

    # -- trio.abc.Instrument
    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = time.perf_counter()
        if self.on and task.name.endswith(self.ticker_name):
            self.batch_before_ticker.append(self._since_io)
        self._since_io += 1

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        t = time.perf_counter()
        self._note(self._t0, t - self._t0, _short(task.name))

    def before_io_wait(self, timeout: float) -> None:
        self._t0 = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        t = time.perf_counter()
        self._note(self._t0, t - self._t0, IO_WAIT)
        self._since_io = 0

    # -- gc.callbacks
    def gc_event(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            t = time.perf_counter()
            self._note(self._gc_t0, t - self._gc_t0, f"<gc gen {info.get('generation')}>")

    def _note(self, start: float, dur: float, name: str) -> None:
        self.ring.append((start, dur, name))
        if self.on:
            tot = self.totals.get(name)
            if tot is None:
                self.totals[name] = [1, dur, dur]
            else:
                tot[0] += 1
                tot[1] += dur
                if dur > tot[2]:
                    tot[2] = dur

    def note_part(self, start: float, name: str) -> None:
        """A part of a task step (the ticker's drain of the emulator's input), from ``start`` to now."""
        self._note(start, time.perf_counter() - start, name)

    def tick_woke(self, late_s: float) -> None:
        """The ticker's wake-up, ``late_s`` after its due time: a late one's window, summed by name."""
        if not self.on or late_s < self.late_s:
            self._was_late = False
            return
        if self._was_late:  # the ticker catching up: only the first late tick of a run says why
            return
        self._was_late = True
        now = time.perf_counter()
        since = now - min(late_s, 0.2)
        by: dict[str, list[float]] = {}
        for start, dur, name in reversed(self.ring):
            if start + dur < since:
                break
            part = min(dur, start + dur - since)
            e = by.setdefault(name, [0, 0.0, 0.0])
            e[0] += 1
            e[1] += part
            e[2] = max(e[2], dur)
        self.late.append({"late_ms": round(1000 * late_s, 3), "t": round(now, 4), "by": {
            k: [int(v[0]), round(1000 * v[1], 3), round(1000 * v[2], 3)] for k, v in by.items()}})

    def start(self) -> None:
        self.on = True
        gc.callbacks.append(self.gc_event)

    def stop(self) -> None:
        self.on = False
        if self.gc_event in gc.callbacks:
            gc.callbacks.remove(self.gc_event)

    def summary(self) -> dict[str, Any]:
        agg: dict[str, list[float]] = {}
        for entry in self.late:
            for name, (n, ms, longest) in entry["by"].items():
                a = agg.setdefault(name, [0, 0.0, 0.0])
                a[0] += n
                a[1] += ms
                a[2] = max(a[2], longest)
        b = sorted(self.batch_before_ticker)
        return {
            "late_ticks": len(self.late),
            "late_windows_by_name": {k: {"steps": int(v[0]), "ms": round(v[1], 2), "longest_ms": v[2]}
                                     for k, v in sorted(agg.items(), key=lambda kv: -kv[1][1])},
            "steps_by_name": {k: {"steps": int(v[0]), "ms": round(1000 * v[1], 1), "longest_ms": round(1000 * v[2], 3)}
                              for k, v in sorted(self.totals.items(), key=lambda kv: -kv[1][1])},
            "steps_before_ticker_p50_p99_max": [b[len(b) // 2], b[int(len(b) * 0.99)], b[-1]] if b else [],
            "worst": sorted(self.late, key=lambda e: -e["late_ms"])[:15],
        }

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.summary(), f, indent=1)


def _short(name: str) -> str:
    """A task's name without its module path (``engine.rtzr.emulator.server.Emulator._handle`` → ``Emulator._handle``)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if len(parts) > 1 else name

"""How bench/capacity.py starts the load rig: one process (bench/rig.py, the default) or two (bench/loadgen.py +
``sori emulate-rtzr``, kept for A/B), with the same options, pinning and SCHED_FIFO priorities.

Both give capacity.py the same handles: the emulator's port (listening after :meth:`start_emulator`), the
load started by :meth:`start_load` (at once for two processes; the one process gets SIGUSR1, its emulator
already serving), :meth:`load_running`, the processes whose CPU is the rig's, and :meth:`split`, the rig's CPU
as load generator + emulator (one process: the ticker's own thread CPU per tick, from the load document,
against the rest of the process).
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as c

KINDS = ("one-process", "two-process")


@dataclass(frozen=True)
class RigOptions:
    pin: bool  # the rig on core 1
    rt: bool  # the load generator (the one process) SCHED_FIFO
    load_prio: int  # its priority
    emulator_rt: bool  # two processes: the emulator SCHED_FIFO 1 too
    cheap: bool
    final_ms: int
    read_batch_ms: float
    lag_probe_ms: int = 10
    root: Path | None = None  # two processes: another checkout's emulator (an A/B)


def window_sum(load: dict[str, Any], key: str, t_from: float, t_to: float) -> float:
    """Sum of a per-tick series of the load document (ms) over the ticks due in [t_from, t_to) (wall clock)."""
    start, step = float(load["tick_start_wall"]), float(load["tick_step_s"])
    values: list[float] = load.get(key) or []
    lo = max(0, int((t_from - start) / step))
    hi = min(len(values), int((t_to - start) / step))
    return float(sum(values[lo:hi])) if hi > lo else math.nan


def deferred_pct(load: dict[str, Any], t_from: float, t_to: float) -> float:
    """One-process rig: % of the window's ticks whose emulator reads stopped at the next tick with input left
    (NaN for the two-process rig, whose emulator reads on its own)."""
    if not load.get("tick_deferred"):
        return math.nan
    ticks = (t_to - t_from) / float(load["tick_step_s"])
    return 100 * window_sum(load, "tick_deferred", t_from, t_to) / ticks if ticks > 0 else math.nan


def spill_ms(load: dict[str, Any], t_from: float, t_to: float) -> tuple[float, float]:
    """One-process rig, over the window's ticks: p99 and max of how long the emulator's reads had been spilling
    over (the run of consecutive spilled ticks up to each tick, ms): how late a message waited to be read
    (NaN for the two-process rig). A single spilled tick is normal (a tick wakes up to 1 ms late: epoll's
    millisecond timeout); long runs mean the reads fell behind."""
    flags: list[int] = load.get("tick_deferred") or []
    if not flags:
        return math.nan, math.nan
    start, step = float(load["tick_start_wall"]), float(load["tick_step_s"])
    lo, hi = max(0, int((t_from - start) / step)), min(len(flags), int((t_to - start) / step))
    runs: list[float] = []
    run = 0
    for flag in flags[lo:hi]:
        run = run + 1 if flag else 0
        runs.append(1000 * step * run)
    if not runs:
        return math.nan, math.nan
    return c.percentile(runs, 99), max(runs)


class Rig:
    """One rig for one step; ``kind`` is one of :data:`KINDS`."""

    def __init__(self, kind: str, emu_port: int, max_sessions: int, work: Path, tag: str, opts: RigOptions) -> None:
        if kind not in KINDS:
            raise ValueError(f"rig kind {kind!r}")
        if kind == "one-process" and opts.root is not None:
            raise ValueError("another checkout's emulator runs only in the two-process rig")
        self.kind, self.emu_port, self.max_sessions, self.work, self.tag, self.opts = \
            kind, emu_port, max_sessions, work, tag, opts
        self.emulator: subprocess.Popen[bytes] | None = None
        self.gen: subprocess.Popen[bytes] | None = None
        self.progress: Path | None = None

    @property
    def one(self) -> bool:
        return self.kind == "one-process"

    def _emulator_args(self) -> list[str]:
        o = self.opts
        args = ["--port", str(self.emu_port), "--handshake-ms", "100", "--final-ms", str(o.final_ms), "--interim-ms", "1000",
                "--max-sessions", str(self.max_sessions), "--log-level", "warning", "--idle-timeout-s", "600"]
        if o.cheap:
            args.append("--cheap")
        if o.lag_probe_ms:
            args += ["--lag-probe-ms", str(o.lag_probe_ms)]
        if o.read_batch_ms:
            args += ["--read-batch-ms", f"{o.read_batch_ms:g}"]
        return args

    def _rt(self, cmd: list[str]) -> list[str]:
        return c.realtime(cmd, self.opts.load_prio) if self.opts.rt else cmd

    def start_emulator(self, load_args: list[str]) -> None:
        """The emulator listening on ``emu_port``; the one process also gets the load's options now (it starts
        the load at :meth:`start_load`)."""
        o = self.opts
        cpu = 1 if o.pin else None
        log = self.work / f"emu-{self.tag}.log"
        if self.one:
            self.progress = Path(load_args[load_args.index("--progress") + 1])
            self.emulator = c.spawn(self._rt([c.PY, str(c.ROOT / "bench" / "rig.py"), *load_args, *self._emulator_args(),
                                             "--wait-signal", "--linger-s", "inf"]), cpu=cpu, log=log)
            c.wait_port(self.emu_port, self.emulator)
        else:
            self.emulator = c.start_emulator(self.emu_port, max_sessions=self.max_sessions, log=log, cpu=cpu,
                                             final_ms=o.final_ms, cheap=o.cheap, lag_probe_ms=o.lag_probe_ms,
                                             root=o.root or c.ROOT, rt=o.emulator_rt, read_batch_ms=o.read_batch_ms)
        self._load_args = load_args

    def start_load(self) -> None:
        assert self.emulator is not None
        if self.one:
            self.emulator.send_signal(signal.SIGUSR1)
            self.gen = self.emulator
        else:
            self.gen = c.spawn(self._rt([c.PY, str(c.ROOT / "bench" / "loadgen.py"), *self._load_args]),
                               cpu=1 if self.opts.pin else None, log=self.work / f"load-{self.tag}.log")

    def load_running(self) -> bool:
        """The load generator still sending (one process: its ``load_done`` not yet written, the process alive)."""
        if self.gen is None or self.gen.poll() is not None:
            return False
        if self.one:
            assert self.progress is not None
            return not (self.progress.exists() and '"load_done"' in self.progress.read_text())
        return True

    def wait_load(self, poll_s: float = 0.2) -> None:
        while self.load_running():
            time.sleep(poll_s)

    def pids(self) -> list[int]:
        """The rig's processes (load generator first)."""
        procs = [self.emulator] if self.one else [self.gen, self.emulator]
        return [p.pid for p in procs if p is not None]

    def split(self, load: dict[str, Any], t_a: float, t_b: float, percents: list[float]) -> tuple[float, float]:
        """The rig's CPU over [t_a, t_b] as (load generator, emulator), % of a core; ``percents`` per :meth:`pids`.
        One process: the ticker's thread CPU over the ticks due in the window; the rest (the emulator, the
        shared Trio loop, the idle per-call reader tasks) is the emulator's."""
        if not self.one:
            return percents[0], percents[1]
        ticker = window_sum(load, "tick_cpu_ms", t_a, t_b) / 1000 / (t_b - t_a) * 100
        return ticker, percents[0] - ticker

    def stop(self) -> None:
        for proc in (self.gen, self.emulator):
            if proc is not None:
                c.stop(proc)

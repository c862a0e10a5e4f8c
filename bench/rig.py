"""The load rig in one process: the RTZR emulator's server and the load generator's ticker in one Trio run.

Two interpreters on one core (bench/loadgen.py and ``sori emulate-rtzr --cheap``) preempt each other every
2 ms, the load generator's tick. Here both run in one Trio loop: one ``epoll_wait`` serves the ticker's
deadline and every emulator socket, no context switch between them, and (``--read-on-tick``, the default) the
emulator's read hub never wakes on its own: after each tick's writes the ticker reads every ready emulator
socket (``ReadHub.drain``), stopping ``--read-overrun-ms`` (1 ms) after the next tick is due (but reading
at least ``--read-least-ms``, 0.5 ms, per tick, so a late ticker catching up does not starve the emulator) so
the ticker keeps its pace, as the two-process rig's load generator preempts the emulator (SCHED_FIFO 2 over 1); sockets
left unread stay ready for the next tick, and the ticks where that happened are recorded (``tick_deferred``;
bench/capacity.py checks the longest run of them).
Each message is thus read up to one tick (2 ms) later than by a self-woken hub (as ``--read-batch-ms 2``).

The emulator's loop lag (``--lag-probe-ms``, ``GET /stats``) is, while the load runs, each tick's wake-up lag
(``--lag-from-ticker``, the default: one loop, so the ticker's lag is the loop's; the probe task's 100 wake-ups
a second are not run).

``--trace-late FILE`` (diagnostic; bench/rig_trace.py): a Trio Instrument times every task step, I/O wait and
GC pause and writes what ran before each late tick.

The code is theirs, called as is: :class:`engine.rtzr.emulator.Emulator` (its HTTP auth endpoint, WebSocket
sessions, read hub, ``--lag-probe-ms`` and ``GET /stats``) and :func:`loadgen.main_async` (the ticker, its
tick lag and thread CPU, the ``--progress`` events). The options are the union of both tools' (``--port``
is the emulator's; the positional URL is the engine's).

Order, for bench/capacity.py: the emulator listens first (the engine needs it to start); with
``--wait-signal`` the load starts at SIGUSR1 (once the engine is ready); when the load is over the rig writes
``--out`` (loadgen's document plus ``emulator_stats``), appends ``{"event": "load_done"}`` to ``--progress`` and
keeps the emulator answering (the engine's last EOS) for ``--linger-s`` (``inf``: until SIGTERM).

    python bench/rig.py ws://127.0.0.1:8080/twilio/media --calls 300 --audio a.wav --repeat 2 \\
        --port 8765 --cheap --max-sessions 400 --lag-probe-ms 10 --out load.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import time

import _common  # noqa: F401  (puts the repo on sys.path)
import loadgen
import msgspec
import trio
from rig_trace import LateTrace

from engine.log import setup_logging
from engine.rtzr.emulator.cli import config_from_args
from engine.rtzr.emulator.cli import configure_parser as configure_emulator
from engine.rtzr.emulator.reader import ReadHub
from engine.rtzr.emulator.server import Emulator

TICK_S = loadgen.FRAME_S / loadgen.GROUPS


def configure_parser(p: argparse.ArgumentParser) -> None:
    loadgen.configure_parser(p)
    configure_emulator(p)
    p.add_argument("--wait-signal", action="store_true", help="start the load at SIGUSR1, not at once")
    p.add_argument("--read-on-tick", action=argparse.BooleanOptionalAction, default=True,
                   help="the emulator reads its input after each tick's writes, not on its own wake-ups "
                        "(each message read up to one tick, 2 ms, later)")
    p.add_argument("--read-overrun-ms", type=float, default=1.0,
                   help="with --read-on-tick: stop reading this long after the next tick is due (the rest "
                        "stays for the next tick)")
    p.add_argument("--read-least-ms", type=float, default=0.5,
                   help="with --read-on-tick: read for at least this long after each tick (a late ticker too)")
    p.add_argument("--lag-from-ticker", action=argparse.BooleanOptionalAction, default=True,
                   help="with --lag-probe-ms: the emulator's loop-lag histogram gets the ticker's wake-up lag of "
                        "every tick instead of running its own probe task")
    p.add_argument("--demote-reads", action=argparse.BooleanOptionalAction, default=False,
                   help="a SCHED_FIFO rig reads the emulator's input as SCHED_OTHER nice -20, out of the kernel's "
                        "real-time budget (an experiment: on a busy machine other processes then take the core; "
                        "BENCHMARKS.md round 7)")
    p.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True,
                   help="freeze start-up objects and raise the GC thresholds for the load (fewer pauses of the ticker)")
    p.add_argument("--profile", metavar="FILE", help="cProfile the whole run into FILE (pstats; slows the rig)")
    p.add_argument("--trace-late", metavar="FILE",
                   help="diagnostic: time every Trio task step, I/O wait and GC pause; write what ran before each "
                        "late tick (bench/rig_trace.py) to FILE")
    p.add_argument("--trace-late-ms", type=float, default=3.0, help="with --trace-late: a tick this late is traced")
    p.add_argument("--trace-after-s", type=float, default=8.0,
                   help="with --trace-late: start tracing this long after the load starts (once every call is live)")
    p.add_argument("--trace-for-s", type=float, default=12.0, help="with --trace-late: trace this long")
    p.add_argument("--linger-s", type=float, default=2.0,
                   help="after the load, keep the emulator serving this long (inf: until SIGTERM)")


class Demoted:
    """While entered, this SCHED_FIFO thread runs as SCHED_OTHER at nice −20 (its real-time policy back on exit).

    The kernel lets all SCHED_FIFO tasks of a core run 950 ms per second (``kernel.sched_rt_runtime_us``); a rig
    that needs more in some second is stopped for the rest of it, up to 50 ms (BENCHMARKS.md, round 7: every ≈ 50 ms
    tick stall of the one-process rig at 600 calls). Its emulator reads (``ReadHub.drain``, ≈ 30 % of the core at
    600 calls) run demoted, so only the ticker's writes and the session tasks spend the real-time budget (≈ 50 %):
    nice −20 still gives the reads ≈ 99 % of the core against normal tasks. Two ``sched_setscheduler`` calls per
    tick. Nothing happens for a thread that is not SCHED_FIFO (``--no-rt``, no permission). Off by default: on the
    shared VM other processes took the demoted reads' core (1157 involuntary switches in 10 s, reads seconds
    behind, ticks 17–61 ms late at p99); untried on a quiet machine."""

    def __init__(self, fifo: os.sched_param | None) -> None:
        self._fifo = fifo
        self._other = os.sched_param(0)

    @staticmethod
    def of_this_thread() -> Demoted:
        if not hasattr(os, "sched_getscheduler") or os.sched_getscheduler(0) != os.SCHED_FIFO:
            return Demoted(None)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -20)  # the demoted share against normal tasks (this thread)
        except OSError:
            pass
        return Demoted(os.sched_getparam(0))

    def __enter__(self) -> None:
        if self._fifo is not None:
            os.sched_setscheduler(0, os.SCHED_OTHER, self._other)

    def __exit__(self, *exc: object) -> None:
        if self._fifo is not None:
            os.sched_setscheduler(0, os.SCHED_FIFO, self._fifo)


def note(progress: str | None, event: str) -> None:
    if progress:
        with open(progress, "a") as f:
            f.write(json.dumps({"event": event, "t_wall": time.time()}) + "\n")


async def drain_every(hub: ReadHub, period_s: float = TICK_S) -> None:
    """A driven hub's reads while the ticker does not run (before and after the load): every ``period_s``."""
    while True:
        await trio.sleep(period_s)
        hub.drain()


async def run_load(emulator: Emulator, args: argparse.Namespace) -> dict[str, object]:
    """The load generator against ``args.url`` while ``emulator`` serves in the same run; its document, with
    the emulator's counters at the end of the load. A ``read_driven`` emulator reads after every tick."""
    hub = emulator.hub if emulator.config.read_driven else None
    trace: LateTrace | None = getattr(args, "trace", None)
    overrun, least = args.read_overrun_ms / 1000, args.read_least_ms / 1000
    demoted = Demoted.of_this_thread() if getattr(args, "demote_reads", False) else contextlib.nullcontext()

    def read_until(next_due: float, ticks: int) -> bool:
        # The ticker comes first: reads stop this long after the next tick is due (the rest stay ready for the
        # next tick), so a burst of emulator input delays a tick by about that much at most. Not before it is
        # due: a tick wakes up to 1 ms late anyway (epoll's timeout is in whole ms), time reads would lose.
        # But never less than `least`: a late ticker catching up must not starve the emulator. After a catch-up
        # (``ticks`` > 1 written back to back) no more than that: the next tick's frames come first, and the
        # backlog of input is read in the ticks that follow, up to `overrun` past each.
        assert hub is not None
        until = max(next_due + overrun, trio.current_time() + least)
        with demoted:
            if trace is not None and trace.on:
                t = time.perf_counter()
                done = hub.drain(until)
                trace.note_part(t, "<drain, in Ticker.run>")
                return done
            return hub.drain(until)

    if args.gc_freeze:
        # One process: the emulator's garbage collections pause the ticker too (full ones every ~0.3 s at 300
        # calls, 5-40 ms tick-lag spikes). Start-up's objects frozen, young collections rare, full ones none
        # within a run (the engine's "throughput" policy).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
    lag = emulator.stats.loop_lag

    trace_from = trio.current_time() + args.trace_after_s

    def on_wake(late_s: float) -> None:
        lag.add(1000 * late_s)
        if trace is not None:
            now = trio.current_time()
            if not trace.on and trace_from <= now < trace_from + args.trace_for_s:
                trace.start()
            elif trace.on and now >= trace_from + args.trace_for_s:
                trace.stop()
            trace.tick_woke(late_s)

    # One loop: the ticker's wake-up lag is the emulator's loop lag (its own probe task is not run, see main_async).
    doc = await loadgen.main_async(args, None if hub is None else read_until, on_wake if getattr(args, "lag_from_ticker", False) else None)
    if trace is not None:
        trace.stop()
        trace.write(args.trace_late)
    doc["emulator_stats"] = msgspec.json.decode(emulator.stats_json())
    doc["rig"] = "one-process"
    return doc


async def main_async(args: argparse.Namespace, go: trio.Event | None = None, *,
                     task_status: trio.TaskStatus[Emulator] = trio.TASK_STATUS_IGNORED) -> None:
    """The emulator serving (``task_status.started(emulator)`` once it listens), then the load: when ``go`` is
    set if given, else at SIGUSR1 with ``--wait-signal``, else at once; then ``--linger-s``. SIGTERM/SIGINT end it."""
    config = config_from_args(args)
    if args.read_on_tick:
        config = msgspec.structs.replace(config, read_driven=True)
    if getattr(args, "lag_from_ticker", False) and config.lag_probe_ms:
        # The probe task's 100 wake-ups a second cost ≈ 1 % of a core; while the load runs, each tick's wake-up lag
        # goes into the same histogram (GET /stats loop_lag) instead (before and after the load: none).
        config = msgspec.structs.replace(config, lag_probe_ms=0)
    emulator = Emulator(config)
    at_once = go is None and not args.wait_signal
    go = trio.Event() if go is None else go
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        go.set()
                    else:
                        stop.set()
                        nursery.cancel_scope.cancel()

            nursery.start_soon(on_signals)
            await nursery.start(emulator.run)
            hub = emulator.hub if config.read_driven else None
            idle = trio.CancelScope()

            async def drain_while_idle() -> None:
                with idle:
                    if hub is not None:
                        await drain_every(hub)

            nursery.start_soon(drain_while_idle)
            print(f"rig: emulator on {emulator.api_base}; load {'at SIGUSR1' if args.wait_signal else 'now'}", flush=True)
            task_status.started(emulator)
            if at_once:
                go.set()
            await go.wait()
            idle.cancel()  # the ticker drains the hub from now on
            doc = await run_load(emulator, args)
            if hub is not None:
                nursery.start_soon(drain_every, hub)
            loadgen.write_doc(doc, args.out)
            note(args.progress, "load_done")
            if math.isinf(args.linger_s):
                await stop.wait()
            else:
                await trio.sleep(args.linger_s)
            nursery.cancel_scope.cancel()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure_parser(p)
    args = p.parse_args()
    setup_logging(args.log_level)
    if args.profile:
        import cProfile

        with cProfile.Profile() as prof:
            try:
                trio.run(main_async, args)
            finally:
                prof.dump_stats(args.profile)
        return 0
    if args.trace_late:
        args.trace = LateTrace(args.trace_late_ms)
        trio.run(main_async, args, instruments=[args.trace])
        return 0
    trio.run(main_async, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

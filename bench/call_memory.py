"""Where a live call's memory goes: tracemalloc in the engine, idle vs N live calls, per call by source line.

Starts the ``--cheap`` RTZR emulator, ``sori serve`` under tracemalloc (traces allocations by Python code and
numpy; not the interpreter's own arenas or the kernel's socket buffers) and ``bench/loadgen.py`` with N calls.
Snapshots the engine once ready and idle, and again ``--settle-s`` after every call is live; prints the
difference per call grouped by file (and the top source lines), and the RSS per call for comparison.
tracemalloc slows the engine ~2-3x, so keep N small enough for it to keep up (30 by default).

    .venv/bin/python bench/call_memory.py [--calls 30] [--settle-s 8] [--top 25]
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import _common as c

# Runs inside the engine process: start tracing, dump a snapshot to $SORI_MEMPROBE_DIR/<n>.pickle on SIGUSR1.
_PROBE = """
import os, pickle, runpy, signal, sys, tracemalloc
if not os.environ.get("SORI_MEMPROBE_RSS_ONLY"):
    tracemalloc.start(int(os.environ.get("SORI_MEMPROBE_FRAMES", "1")))
_n = [0]
def _dump(signum, frame):
    _n[0] += 1
    snap = tracemalloc.take_snapshot()
    with open(os.path.join(os.environ["SORI_MEMPROBE_DIR"], f"{_n[0]}.pickle"), "wb") as f:
        pickle.dump(snap, f)
signal.signal(signal.SIGUSR1, _dump)
sys.argv = ["engine", *sys.argv[1:]]
runpy.run_module("engine", run_name="__main__")
"""


def snapshot(pid: int, folder: Path, n: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    path = folder / f"{n}.pickle"
    deadline = time.monotonic() + 60
    size = -1
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size == size and size > 0:
            break
        size = path.stat().st_size if path.exists() else -1
        time.sleep(0.5)
    with path.open("rb") as f:
        snap: tracemalloc.Snapshot = pickle.load(f)
    return snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                               tracemalloc.Filter(False, "<frozen importlib._bootstrap>")])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--settle-s", type=float, default=8.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--rss-only", action="store_true", help="no tracemalloc: RSS per call only (an A/B across trees)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    n = args.calls
    work = Path(tempfile.mkdtemp(prefix="sori-memprobe-"))
    corpus = c.load_corpus()
    emu_port, port, admin = c.free_port(), c.free_port(), c.free_port()
    emulator = c.start_emulator(emu_port, max_sessions=n + 50, log=work / "emu.log", cpu=None, cheap=True)
    engine = gen = None
    try:
        env = {"SORI_MEMPROBE_DIR": str(work), **({"SORI_MEMPROBE_RSS_ONLY": "1"} if args.rss_only else {})}
        probe = work / "probe.py"
        probe.write_text(_PROBE)
        orig = c.PY
        # start_engine runs `python -m engine`; run the same command through the probe instead.
        cmd_engine = [orig, str(probe), "serve", "--stt", "rtzr", "--allow-unsigned", "--port", str(port),
                      "--admin-port", str(admin), "--log-level", "warning",
                      "--set", f"rtzr.api_base=http://127.0.0.1:{emu_port}",
                      "--set", f"rtzr.ws_url=ws://127.0.0.1:{emu_port}/v1/transcribe:streaming",
                      "--set", "rtzr.client_id=sori-emulator", "--set", "rtzr.client_secret=sori-emulator-secret",
                      "--set", f"sinks.jsonl={work / 'events.jsonl'}", "--set", "server.max_calls=5000",
                      "--set", f"rtzr.pool.max_sessions={n + 20}", "--set", "rtzr.pool.spare=20"]
        for s in args.settings:
            cmd_engine += ["--set", s]
        engine = c.spawn(cmd_engine, cpu=None, log=work / "engine.log", env=env)
        c.wait_port(port, engine)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                c.scrape_metrics(admin)
                break
            except OSError:
                time.sleep(0.3)
        time.sleep(3.0)
        rss_idle = c.proc_rss(engine.pid)
        idle = None if args.rss_only else snapshot(engine.pid, work, 1)
        progress = work / "progress.jsonl"
        gen = c.spawn([orig, str(c.ROOT / "bench" / "loadgen.py"), f"ws://127.0.0.1:{port}/twilio/media",
                       "--calls", str(n), "--stagger-ms", "20", "--repeat", "3", "--progress", str(progress),
                       "--out", str(work / "load.json"), "--audio", *[str(k.wav) for k in corpus]],
                      cpu=None, log=work / "load.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (progress.exists() and "all_live" in progress.read_text()):
            time.sleep(0.2)
        time.sleep(args.settle_s)
        rss_live = c.proc_rss(engine.pid)
        if idle is None:
            print(f"{n} live calls vs idle: RSS +{(rss_live - rss_idle) / n / 1024:.1f} KiB per call "
                  f"({rss_idle / 2**20:.1f} → {rss_live / 2**20:.1f} MiB)")
            return 0
        live = snapshot(engine.pid, work, 2)
        diff = live.compare_to(idle, "filename")
        total = sum(d.size_diff for d in diff)
        print(f"{n} live calls vs idle: traced +{total / n / 1024:.1f} KiB per call; "
              f"RSS +{(rss_live - rss_idle) / n / 1024:.1f} KiB per call ({rss_idle / 2**20:.0f} → "
              f"{rss_live / 2**20:.0f} MiB)")
        print(f"{'KiB/call':>9} {'blocks/call':>11}  file")
        for d in diff[:args.top]:
            print(f"{d.size_diff / n / 1024:9.1f} {d.count_diff / n:11.1f}  {d.traceback[0].filename}")
        print()
        print(f"{'KiB/call':>9} {'blocks/call':>11}  line")
        for d in live.compare_to(idle, "lineno")[:args.top]:
            frame = d.traceback[0]
            print(f"{d.size_diff / n / 1024:9.1f} {d.count_diff / n:11.1f}  {frame.filename}:{frame.lineno}")
    finally:
        for proc in (gen, engine, emulator):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except Exception:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

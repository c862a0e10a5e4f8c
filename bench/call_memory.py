"""Where a live call's memory goes: tracemalloc in the engine, idle vs N live calls, per call by source line.

Starts the ``--cheap`` RTZR emulator, ``sori serve`` under tracemalloc (traces allocations by Python code and
numpy; not the interpreter's own arenas or the kernel's socket buffers) and ``bench/loadgen.py`` with N calls.
Snapshots the engine once ready and idle, and again ``--settle-s`` after every call is live; prints the RSS
per call, a census per call (objects by kind, Trio tasks by coroutine, the cyclic garbage not yet collected
under the GC policy) and, when tracing, the difference per call grouped by file and by source line, counting
only what is still reachable after a full collection.
tracemalloc slows the engine ~2-3x, so keep N small enough for it to keep up (30 by default).

    .venv/bin/python bench/call_memory.py [--calls 30] [--settle-s 8] [--top 25]
    .venv/bin/python bench/call_memory.py --rss-only --calls 100 --settle-s 15 --idle-line --tree /work/wt-base

``--idle-line`` plays line noise only (no utterances: the per-call floor, steady run to run); ``--tree`` runs
the engine of another checkout (its own .venv) under the same probe, for an A/B.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import _common as c

# Runs inside the engine process: start tracing, dump a snapshot to $SORI_MEMPROBE_DIR/<n>.pickle on SIGUSR1.
_PROBE = """
import collections, gc, json, os, pickle, runpy, signal, sys, tracemalloc
@SIZES_BY_KIND@
@ALLOCATORS@
if not os.environ.get("SORI_MEMPROBE_RSS_ONLY"):
    tracemalloc.start(int(os.environ.get("SORI_MEMPROBE_FRAMES", "1")))
_n = [0]
_KINDS = ("Task", "CancelScope", "CancelStatus", "Nursery", "Event", "MemoryChannelState", "ParkingLot",
          "Utterance", "UtteranceAudio", "RtzrSocket", "Call", "WsServerConnection", "WsClientConnection",
          "Connection", "H11Connection", "frame", "coroutine", "Cancelled", "traceback")
def _census():
    # What is alive, counted by kind (no tracemalloc needed), and what a full collection would free.
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    tasks = collections.Counter()
    try:
        import trio
        def walk(task):
            coro = task.coro
            names = []
            while coro is not None and len(names) < 12:
                code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
                if code is None:
                    break
                names.append(code.co_qualname)
                coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
            tasks[" > ".join(names[:1] + names[-1:])] += 1
            for nursery in task.child_nurseries:
                for child in nursery.child_tasks:
                    walk(child)
        walk(trio.lowlevel.current_root_task())
    except Exception as exc:
        tasks[f"error: {exc!r}"] += 1
    # Buffers by owner (bytes of data, not headers): utterance audio held for replay, the endpointers' idle
    # history (pre-roll ring), the classifiers' scratch.
    buffers = collections.Counter()
    for o in gc.get_objects():
        kind = type(o).__name__
        if kind == "UtteranceAudio":
            buffers["utterance_audio"] += getattr(o, "held_bytes", 0)
        elif kind == "Endpointer":
            ring = getattr(o, "_ring", None)
            buffers["endpointer_history"] += getattr(ring, "nbytes", 0)
        elif kind in ("BandClassifier", "PitchBandClassifier"):
            # one set per thread since issue 13's second pass (_buffers): nothing per call
            arrays = () if hasattr(type(o), "_buffers") else [getattr(o, k, None) for k in ("_vec", "_spec", "_pow")]
            buffers["classifier_scratch"] += sum(getattr(a, "nbytes", 0) for a in arrays)
    # Who keeps exceptions (and, through their tracebacks, frames) alive: the nearest holder that is neither
    # an exception, a traceback, a frame nor a container.
    held = collections.Counter()
    for o in gc.get_objects():
        if not isinstance(o, BaseException):
            continue
        names = []
        for r in gc.get_referrers(o):
            if isinstance(r, dict):
                names.extend(f"{type(h).__name__}.{k}" for h in gc.get_referrers(r) if getattr(h, "__dict__", None) is r
                             for k, v in r.items() if v is o)
            elif not isinstance(r, (BaseException, list, tuple, set)) and type(r).__name__ not in ("frame", "traceback"):
                names.append(type(r).__name__)
        held[f"{type(o).__name__} held by {'/'.join(sorted(set(names))[:3]) or '?'}"] += 1
    return {"objects": {k: counts.get(k, 0) for k in _KINDS}, "tasks": dict(tasks), "gc_count": list(gc.get_count()),
            "buffers": dict(buffers), "exceptions": dict(held)}
def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def _dump(signum, frame):
    _n[0] += 1
    base = os.path.join(os.environ["SORI_MEMPROBE_DIR"], str(_n[0]))
    info = {"rss": _rss(), "allocators": allocators(), **_census()}
    if tracemalloc.is_tracing():
        with open(base + ".pickle", "wb") as f:
            pickle.dump(tracemalloc.take_snapshot(), f)
    info["garbage_objects"] = gc.collect()  # cyclic garbage the GC policy had not collected yet
    info["rss_after_collect"] = _rss()
    info["rss_after_trim"] = info["rss_after_collect"]
    # Heap that malloc keeps free but resident (a measurement: the engine never trims). Live snapshot only:
    # pages returned at idle would be touched again and counted against the calls.
    if _n[0] > 1:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        info["rss_after_trim"] = _rss()
    if tracemalloc.is_tracing():
        with open(base + ".collected.pickle", "wb") as f:
            pickle.dump(tracemalloc.take_snapshot(), f)
    info["sizes"] = sizes_by_kind()  # last: its own allocations must not move the readings above
    with open(base + ".json", "w") as f:
        json.dump(info, f)
signal.signal(signal.SIGUSR1, _dump)
sys.argv = ["engine", *sys.argv[1:]]
runpy.run_module("engine", run_name="__main__")
"""

def allocators() -> dict[str, int]:
    """Where the process's heap memory is, by allocator: pymalloc (objects ≤ 512 bytes: bytes in live blocks,
    free blocks inside used pools, unused pools, arenas) from ``sys._debugmallocstats`` and glibc malloc
    (larger objects, numpy data: ``mallinfo2``). RSS minus live blocks is slack: free blocks and pools
    pymalloc keeps resident (fragmentation), free heap malloc keeps."""
    import ctypes
    import os
    import re
    import sys
    import tempfile

    out: dict[str, int] = {}
    with tempfile.TemporaryFile() as f:  # the stats go to the C stderr: borrow fd 2 for the call
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    patterns = {"pymalloc_live": r"# bytes in allocated blocks\s*=\s*([\d,]+)",
                "pymalloc_free_blocks": r"# bytes in available blocks\s*=\s*([\d,]+)",
                "pymalloc_unused_pools": r"unused pools \* \d+ bytes\s*=\s*([\d,]+)",
                "pymalloc_arenas": r"arenas \* \d+ bytes/arena\s*=\s*([\d,]+)"}
    for key, pattern in patterns.items():
        match = re.search(pattern, text)
        if match:
            out[key] = int(match.group(1).replace(",", ""))

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                          "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        out.update(malloc_heap=info.arena, malloc_live=info.uordblks, malloc_free=info.fordblks,
                   malloc_mmap=info.hblkhd)
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        pass
    return out


def sizes_by_kind() -> dict[str, list[int]]:
    """Bytes (``sys.getsizeof``) and count of every object the collector tracks and of what they refer to
    directly (bytes, str, numbers: untracked), by type; an instance ``__dict__`` counts as ``X.__dict__``
    for its owner's type X, a ``set`` / ``list`` / ``deque`` held by an instance of X as ``X>set`` etc.
    No tracemalloc: what the objects themselves weigh (not the allocator's slack), for a census."""
    import collections
    import gc
    import sys
    import types

    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    seen: set[int] = set()
    owner: dict[int, str] = {}
    tracked = gc.get_objects()
    mine = {id(seen), id(owner), id(out), id(tracked)}  # this census's own containers (they grow meanwhile)
    skip = (type, types.ModuleType, types.FunctionType, types.CodeType)
    containers = (set, list, collections.deque, bytearray)
    for o in tracked:  # owners first: an instance's __dict__ and containers are named after it
        t = type(o)
        if isinstance(o, skip) or t in (dict, list, tuple, set, types.FrameType, types.CellType):
            continue
        name = t.__name__
        # Referents, never ``o.__dict__``: reading it would make a dict for an instance whose attributes are
        # stored inline (Python 3.11+), which then costs memory that was not there before the census.
        for r in gc.get_referents(o):
            kind = type(r)
            if kind is dict and t.__dictoffset__:
                owner.setdefault(id(r), f"{name}.__dict__")
                for v in r.values():
                    if type(v) in containers:
                        owner.setdefault(id(v), f"{name}>{type(v).__name__}")
            elif kind in containers:
                owner.setdefault(id(r), f"{name}>{kind.__name__}")
    for o in tracked:
        if id(o) in mine:
            continue
        for obj in (o, *gc.get_referents(o)):
            if id(obj) in seen or isinstance(obj, skip):
                continue
            seen.add(id(obj))
            try:
                size = sys.getsizeof(obj)
            except Exception:
                continue
            row = out[owner.get(id(obj), type(obj).__name__)]
            row[0] += size
            row[1] += 1
    del tracked
    return dict(out)


def snapshot(pid: int, folder: Path, n: int) -> tuple[dict[str, Any], tracemalloc.Snapshot | None,
                                                    tracemalloc.Snapshot | None]:
    """Signal the probe; its census, and its tracemalloc snapshots before / after a full collection (if tracing)."""
    os.kill(pid, signal.SIGUSR1)
    info_path = folder / f"{n}.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not info_path.exists():
        time.sleep(0.5)
    time.sleep(0.5)
    info: dict[str, Any] = json.loads(info_path.read_text())
    snaps: list[tracemalloc.Snapshot | None] = []
    for name in (f"{n}.pickle", f"{n}.collected.pickle"):
        path = folder / name
        if not path.exists():
            snaps.append(None)
            continue
        with path.open("rb") as f:
            snap: tracemalloc.Snapshot = pickle.load(f)
        snaps.append(snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                         tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]))
    return info, snaps[0], snaps[1]


def print_census(idle: dict[str, Any], live: dict[str, Any], n: int, top: int = 30) -> None:
    """Per live call: objects by kind, Trio tasks by coroutine (outermost > innermost), uncollected garbage."""
    print(f"census per call (live - idle) / {n}:")
    print("  objects: " + ", ".join(f"{k} {(live['objects'][k] - idle['objects'][k]) / n:.2f}"
                                     for k in live["objects"]))
    tasks = {k: live["tasks"].get(k, 0) - idle["tasks"].get(k, 0) for k in {*live["tasks"], *idle["tasks"]}}
    print(f"  tasks: {sum(tasks.values()) / n:.2f} per call")
    for name, count in sorted(tasks.items(), key=lambda kv: -kv[1]):
        if count:
            print(f"    {count / n:6.2f}  {name}")
    print(f"  uncollected cyclic garbage: {live['garbage_objects'] / n:.0f} objects per call "
          f"(gc counts {live['gc_count']}); RSS {live['rss'] / 2**20:.1f} → {live['rss_after_collect'] / 2**20:.1f} "
          "MiB after a full collection")
    trim = live.get("rss_after_trim", live["rss_after_collect"]) - live["rss_after_collect"]
    print(f"  malloc_trim(0) then returns {-trim / n / 1024:.1f} KiB per call to the system (heap kept free by malloc)")
    buffers = {k: live.get("buffers", {}).get(k, 0) - idle.get("buffers", {}).get(k, 0)
               for k in {*live.get("buffers", {}), *idle.get("buffers", {})}}
    print("  buffers per call (data bytes): " + ", ".join(f"{k} {v / n / 1024:.1f} KiB" for k, v in sorted(buffers.items())))
    held = {k: live.get("exceptions", {}).get(k, 0) - idle.get("exceptions", {}).get(k, 0)
            for k in {*live.get("exceptions", {}), *idle.get("exceptions", {})}}
    if any(held.values()):
        print("  exceptions alive per call: " + ", ".join(f"{k} {v / n:.2f}" for k, v in
                                                          sorted(held.items(), key=lambda kv: -kv[1]) if v))
    alloc_live, alloc_idle = live.get("allocators", {}), idle.get("allocators", {})
    if alloc_live:
        print("  heap by allocator (live - idle), KiB per call: " + ", ".join(
            f"{k} {(v - alloc_idle.get(k, 0)) / n / 1024:.1f}" for k, v in alloc_live.items()))
    sizes = {k: (v[0] - idle.get("sizes", {}).get(k, [0, 0])[0], v[1] - idle.get("sizes", {}).get(k, [0, 0])[1])
             for k, v in live.get("sizes", {}).items()}
    if sizes:
        print(f"  objects by type (sys.getsizeof, live - idle): {sum(v[0] for v in sizes.values()) / n / 1024:.1f} KiB "
              "per call; largest, KiB and count per call:")
        for k, (size, count) in sorted(sizes.items(), key=lambda kv: -kv[1][0])[:top]:
            print(f"    {size / n / 1024:6.2f} {count / n:7.2f}  {k}")
    waiting = sum(v for k, v in live["tasks"].items() if k.startswith("Call._transcribe > _AsyncGeneratorContextManager"))
    if waiting > n / 10:
        print(f"  WARNING: {waiting / n:.2f} utterances per call wait for an RTZR socket (pool or emulator not keeping"
              " up on this machine): their audio inflates the figures")


def by_engine_line(diffs: list[tracemalloc.StatisticDiff]) -> list[tuple[str, int, int]]:
    """Differences grouped by the innermost frame in the engine's own code (else the innermost frame), largest first."""
    sizes: dict[str, list[int]] = {}
    for d in diffs:
        frames = list(reversed(d.traceback))  # a Traceback runs oldest first
        frame = next((f for f in frames if "/engine/" in f.filename), frames[0])
        key = f"{frame.filename.split('/engine/')[-1]}:{frame.lineno}"
        entry = sizes.setdefault(key, [0, 0])
        entry[0] += d.size_diff
        entry[1] += d.count_diff
    return sorted(((k, v[0], v[1]) for k, v in sizes.items()), key=lambda t: -t[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--settle-s", type=float, default=8.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--rss-only", action="store_true", help="no tracemalloc: RSS per call only (an A/B across trees)")
    p.add_argument("--frames", type=int, default=1,
                   help="traceback depth traced; > 1 also groups by the innermost engine/ line (who allocated "
                        "Trio's tasks, scopes, events...), slower")
    p.add_argument("--idle-line", action="store_true",
                   help="play bench/corpus's noise-only calls but babble (hum, pink, white line noise: no speech): the per-call floor without "
                        "utterance audio or leases, which otherwise move the figure by tens of KiB run to run")
    p.add_argument("--tree", type=Path, default=None,
                   help="run the engine from this checkout with its own .venv (an A/B from one script; the "
                        "load generator and corpus stay this tree's)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    n = args.calls
    work = Path(tempfile.mkdtemp(prefix="sori-memprobe-"))
    audio = ([str(w) for w in sorted(c.CORPUS_DIR.glob("noiseonly_*.wav")) if "babble" not in w.name] if args.idle_line
             else [str(k.wav) for k in c.load_corpus()])
    emu_port, port, admin = c.free_port(), c.free_port(), c.free_port()
    emulator = c.start_emulator(emu_port, max_sessions=n + 50, log=work / "emu.log", cpu=None, cheap=True)
    engine = gen = None
    try:
        env = {"SORI_MEMPROBE_DIR": str(work), "SORI_MEMPROBE_FRAMES": str(max(1, args.frames)),
               **({"SORI_MEMPROBE_RSS_ONLY": "1"} if args.rss_only else {})}
        probe = work / "probe.py"
        probe.write_text(_PROBE.replace("@SIZES_BY_KIND@", inspect.getsource(sizes_by_kind))
                         .replace("@ALLOCATORS@", inspect.getsource(allocators)))
        orig = c.PY
        # start_engine runs `python -m engine`; run the same command through the probe instead.
        tree = args.tree.resolve() if args.tree else c.ROOT
        engine_py = str(tree / ".venv" / "bin" / "python") if args.tree else orig
        cmd_engine = [engine_py, str(probe), "serve", "--stt", "rtzr", "--allow-unsigned", "--port", str(port),
                      "--admin-port", str(admin), "--log-level", "warning",
                      "--set", f"rtzr.api_base=http://127.0.0.1:{emu_port}",
                      "--set", f"rtzr.ws_url=ws://127.0.0.1:{emu_port}/v1/transcribe:streaming",
                      "--set", "rtzr.client_id=sori-emulator", "--set", "rtzr.client_secret=sori-emulator-secret",
                      "--set", f"sinks.jsonl={work / 'events.jsonl'}", "--set", "server.max_calls=5000",
                      "--set", f"rtzr.pool.max_sessions={n + 20}", "--set", "rtzr.pool.spare=20"]
        for s in args.settings:
            cmd_engine += ["--set", s]
        engine = c.spawn(cmd_engine, cpu=None, log=work / "engine.log", env=env, root=tree)
        c.wait_port(port, engine, timeout=120.0)  # tracemalloc (deep tracebacks) slows the start
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                c.scrape_metrics(admin)
                break
            except OSError:
                time.sleep(0.3)
        time.sleep(3.0)
        rss_idle = c.proc_rss(engine.pid)
        idle_info, idle, idle_collected = snapshot(engine.pid, work, 1)
        progress = work / "progress.jsonl"
        gen = c.spawn([orig, str(c.ROOT / "bench" / "loadgen.py"), f"ws://127.0.0.1:{port}/twilio/media",
                       "--calls", str(n), "--stagger-ms", "20", "--repeat", "3", "--progress", str(progress),
                       "--out", str(work / "load.json"), "--audio", *audio],
                      cpu=None, log=work / "load.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (progress.exists() and "all_live" in progress.read_text()):
            time.sleep(0.2)
        time.sleep(args.settle_s)
        rss_live = c.proc_rss(engine.pid)  # before the census (whose full collection would change it)
        print(f"{n} live calls vs idle: RSS +{(rss_live - rss_idle) / n / 1024:.1f} KiB per call "
              f"({rss_idle / 2**20:.1f} → {rss_live / 2**20:.1f} MiB)")
        live_info, live, live_collected = snapshot(engine.pid, work, 2)
        print_census(idle_info, live_info, n, args.top)
        # Steadier than RSS for an A/B: the heap malloc keeps free at the reading moment moves RSS by ±5 KiB a call.
        print(f"RSS per call after malloc_trim(0): +{(live_info['rss_after_trim'] - rss_idle) / n / 1024:.1f} KiB")
        if live is None or idle is None or live_collected is None or idle_collected is None:
            return 0
        diff = live.compare_to(idle, "filename")
        total = sum(d.size_diff for d in diff)
        kept = sum(d.size_diff for d in live_collected.compare_to(idle_collected, "filename"))
        print(f"traced +{total / n / 1024:.1f} KiB per call, of which +{kept / n / 1024:.1f} KiB still reachable "
              "after a full collection")
        print(f"{'KiB/call':>9} {'blocks/call':>11}  file (reachable only)")
        for d in live_collected.compare_to(idle_collected, "filename")[:args.top]:
            print(f"{d.size_diff / n / 1024:9.1f} {d.count_diff / n:11.1f}  {d.traceback[0].filename}")
        print()
        print(f"{'KiB/call':>9} {'blocks/call':>11}  line (reachable only)")
        for d in live_collected.compare_to(idle_collected, "lineno")[:args.top]:
            frame = d.traceback[0]
            print(f"{d.size_diff / n / 1024:9.1f} {d.count_diff / n:11.1f}  {frame.filename}:{frame.lineno}")
        if args.frames > 1:
            print()
            print(f"{'KiB/call':>9} {'blocks/call':>11}  innermost engine/ line of the traceback (reachable only)")
            for (where, size, count) in by_engine_line(live_collected.compare_to(idle_collected, "traceback"))[:args.top]:
                print(f"{size / n / 1024:9.1f} {count / n:11.1f}  {where}")
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

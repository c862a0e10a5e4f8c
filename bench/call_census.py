"""What N live calls hold, in one process, independent of the machine's load: an A/B of memory per call.

``bench/call_memory.py`` reads RSS of a real engine fed in real time: on a loaded machine the emulator and
the load generator fall behind, calls are not all live at the reading and utterances queue for sockets, so
its figure moves by tens of KiB run to run. Here one process runs the real
:class:`~engine.twilio.server.TwilioServer` with the engine's own handler (``ControlledCall`` of a ``Call``
and its ``CallControl``, as ``engine/app.py`` builds it), an STT pool that leases at once and answers each
Finalize with a final (``bench/ingest_ab.py``'s), and ``--calls`` raw TCP clients that send the demo call's
frames; every call gets ``--frames`` frames, then the census is taken once every frame was handled and the
utterance tasks that could finish have. Reported per call: Trio tasks, tracemalloc's traced bytes (what
the calls allocated and still hold, after a full collection), objects by type (``sys.getsizeof``), the
utterances open and their audio. Deterministic but for the instant STT's scheduling; run it from each
tree's venv with that tree as the working directory (``engine`` is imported from there):

    cd /work/wt-base3 && .venv/bin/python /work/wt-mem/bench/call_census.py --calls 100 --frames 400

``--rss`` (no tracemalloc: its tables would be the largest thing resident) reads RSS instead, under what ``sori
serve`` applies at start-up in that tree (its GC policy, the heap frozen after the warm-up call, its periodic
``malloc_trim`` if it has one): per call, RSS by mapping (glibc's heap, anonymous mmaps = pymalloc's arenas,
files), the allocators' split (pymalloc live / free blocks / unused pools, malloc live / free), the cyclic
garbage a full collection then finds and RSS after it, and RSS after ``malloc_trim(0)``. ``--corpus`` plays the
capacity rig's calls (bench/corpus, long utterances), ``--stt-ws`` gives each open utterance a real RTZR socket
object, ``--every`` reads along the way (RSS, live heap, utterance audio), ``--trim-every`` times the trims:

    cd /work/wt-base5 && .venv/bin/python /work/wt-r5-mem/bench/call_census.py --rss --calls 300 --frames 1000 \
        --corpus --stt-ws --every 250

``--rss`` also splits RSS per call into the open utterances' audio and the rest. ``--max-utterance-ms`` sets
``endpointing.max_utterance_ms`` (default: the tree's own; issue 13 round 6 took it from 30 to 15 s), and
``--by-line`` (tracemalloc) lists the traced bytes by source line instead of by file.

Reading it beside ``bench/capacity.py`` (issue 13 round 7): one reading is a point on the workload's cycle (the
babble calls' audio grows to the 15 s ``max_utterance_ms`` cut and is freed; the trim every 10 s), so the 20 s
reading (70 KiB at 300 calls) is a trough and the ``peak`` printed beside it (VmHWM, 91 KiB) is the figure to set
against capacity.py's peak-based one; and the census models no pooled RTZR socket (no reader task, no idle sockets,
no handshake), which in the engine costs 16-26 KiB of RSS each (more when many handshakes overlap) (BENCHMARKS.md § Capacity, "round 7: RSS per call").
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import logging
import os
import resource
import socket
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())  # the tree this runs from
sys.path.insert(1, str(Path(__file__).resolve().parent))

import msgspec
import trio

import engine
from engine.budgets import Budgets
from engine.call import Call
from engine.config import Config
from engine.media import AudioReceived
from engine.metrics import Registry
from engine.nursery import CallHost
from engine.playback_driver import CallControl, ControlledCall
from engine.twilio.server import TwilioServer, stream_started
from engine.twilio.simulator import frames_of, load_audio

# The engine is imported (from the working directory's tree) before these: bench/_common.py puts this script's
# own tree first on sys.path, which must not decide which engine runs.
ENGINE_TREE = Path(engine.__file__).resolve().parent.parent
from _common import load_corpus  # noqa: E402
from call_memory import allocators, sizes_by_kind  # noqa: E402
from ingest_ab import _client_frame, _InstantPool, _media  # noqa: E402

DEMO_WAV = Path(os.getcwd()) / "engine" / "demo" / "call.wav"


def memory() -> dict[str, int]:
    """This process's resident memory, bytes: VmRSS and VmHWM (its peak since the last reset), and RSS by kind of
    mapping from /proc/self/smaps: ``heap`` (glibc's brk heap: objects > 512 bytes, numpy data), ``anon``
    (anonymous mmaps: pymalloc's 1 MiB arenas, glibc's mmapped chunks and thread arenas, thread stacks),
    ``file`` (code and data of the interpreter and libraries), ``stack``."""
    out: dict[str, int] = {"heap": 0, "anon": 0, "file": 0, "stack": 0}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    kind = "anon"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
                name = head[5] if len(head) > 5 else ""
                kind = ("heap" if name == "[heap]" else "stack" if name.startswith("[stack") else
                        "anon" if not name or name.startswith("[anon") else "file" if name.startswith("/") else "other")
                out.setdefault(kind, 0)
            elif head[0] == "Rss:":
                out[kind] += int(head[1]) * 1024
    return out


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0: ``5`` to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def malloc_trim() -> None:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(c) for n in task.child_nurseries for c in n.child_tasks)
    return count(trio.lowlevel.current_root_task())


async def run(calls: int, frames_n: int, rss: bool = False, gc_freeze: bool = False,
              stt_ws: bool = False, corpus: bool = False, every: int = 0, trim_every: int = 0,
              max_utterance_ms: int | None = None, by_line: bool = False) -> dict[str, Any]:
    config = Config()
    if max_utterance_ms is not None:  # --max-utterance-ms: the one endpointing setting an A/B in one tree may vary
        config = msgspec.structs.replace(config, endpointing=msgspec.structs.replace(
            config.endpointing, max_utterance_ms=max_utterance_ms))
    config.server.host = "127.0.0.1"
    config.server.port = 0
    config.server.allow_unsigned = True
    config.server.max_calls = calls + 10
    config = msgspec.structs.replace(config, call=msgspec.structs.replace(config.call, audio_buffer_ms=3_600_000))
    audio_frames = frames_of(load_audio(str(DEMO_WAV)))
    # --corpus: call i plays bench/corpus's calls (as the capacity rig: SNR >= 20, speech), the i-th in turn, looped.
    names = [k.name for k in load_corpus()] if corpus else ["demo"]
    plays = [frames_of(load_audio(str(k.wav))) for k in load_corpus()] if corpus else [audio_frames]
    metrics = Registry()
    budgets = Budgets(config.budgets)
    pool = _InstantPool((config, budgets, metrics) if stt_ws else None)
    handled = [0]
    made: list[Call] = []

    class Counting(Call):
        __slots__ = ()

        def on_event(self, event: Any) -> None:
            super().on_event(event)
            if type(event) is AudioReceived:
                handled[0] += 1

    def factory(session: Any) -> ControlledCall:  # as engine/app.py's new_call
        started = stream_started(session.started)
        control = CallControl(session, config.playback, lambda e: None, metrics, bytes_per_ms=started.bytes_per_ms)

        def emit(event: Any) -> None:
            control.on_engine_event(event)

        call = Counting(started, config=config, pool=pool, emit=emit, metrics=metrics, budgets=budgets,
                        stream_stats=session.stats)
        made.append(call)
        return ControlledCall(call, control)

    out: dict[str, Any] = {}
    async with trio.open_nursery() as calls_nursery:
        host = CallHost(calls_nursery, metrics)
        server = TwilioServer(config, host=host, handler_factory=factory, metrics=metrics, budgets=budgets)
        async with trio.open_nursery() as serving:
            port = await serving.start(server.run)
            # Warm-up: one call through the whole path (caches, metric families, first-use allocations).
            def connect(first: int, n: int) -> list[tuple[socket.socket, str]]:
                out = []
                for i in range(first, first + n):
                    s = socket.create_connection(("127.0.0.1", port))
                    key = base64.b64encode(os.urandom(16)).decode()
                    s.sendall((f"GET /twilio/media HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                               ).encode())
                    s.setblocking(False)
                    out.append((s, f"MZ{i:032x}"))
                return out

            async def start_and_feed(group: list[tuple[socket.socket, str]], n_started: int,
                                     hook: Any = None) -> None:
                for i, (s, sid) in enumerate(group):
                    start = {"event": "start", "sequenceNumber": "1", "streamSid": sid,
                             "start": {"accountSid": "AC" + "1" * 32, "streamSid": sid, "callSid": "CA" + sid[2:],
                                       "tracks": ["inbound"], "customParameters": {},
                                       "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
                    s.send(_client_frame('{"event":"connected","protocol":"Call","version":"1.0.0"}')
                           + _client_frame(json.dumps(start)))
                    if i % 20 == 19:
                        await trio.sleep(0.01)
                with trio.fail_after(120):
                    while len(made) < n_started:
                        await trio.sleep(0.02)
                for s, _ in group:  # the 101 responses
                    try:
                        s.recv(65536)
                    except BlockingIOError:
                        pass
                target = handled[0]
                for k in range(frames_n):
                    for s, sid in group:
                        play = plays[int(sid[2:], 16) % len(plays)]
                        frame = _client_frame(_media(sid, k + 2, k + 1, play[k % len(play)]))
                        s.send(frame)
                    target += len(group)
                    pool.drain()
                    with trio.fail_after(120):
                        while handled[0] < target:
                            await trio.sleep(0.001)
                    if hook is not None:
                        hook(k + 1)
                # Let what the frames started settle: utterance tasks whose final the instant STT gives at once.
                for _ in range(50):
                    await trio.sleep(0.01)

            warm = connect(0, 1)[0]
            await start_and_feed([warm], 1)
            warm[0].send(_client_frame(json.dumps({"event": "stop", "sequenceNumber": str(frames_n + 2),
                                                   "streamSid": warm[1], "stop": {"accountSid": "AC" + "1" * 32,
                                                                                 "callSid": "CA" + warm[1][2:]}})))
            with trio.fail_after(60):
                while host.live_calls:
                    await trio.sleep(0.02)
            gc.collect()
            tasks0 = _tasks()
            if rss:
                # As ``sori serve`` once ready (engine.app.freeze_when_ready): the start-up heap frozen.
                if gc_freeze:
                    gc.freeze()
                if trim_every:  # a periodic trim has run at idle too: the idle engine's free heap is not the calls'
                    malloc_trim()
                mem0, alloc0 = memory(), allocators()
                reset_peak()
                rest = connect(1, calls)
                series: list[tuple[int, float, float, float]] = []
                trims: list[tuple[float, int]] = []
                out["series"], out["trims"] = series, trims

                def hook(k: int) -> None:
                    if trim_every and k % trim_every == 0:  # a periodic malloc_trim(0): its time, the pages it gave back
                        before = memory()["VmRSS"]
                        t0, c0 = time.perf_counter(), time.thread_time()
                        malloc_trim()
                        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
                        trims.append((wall, before - memory()["VmRSS"], cpu))
                    if every and k % every == 0:
                        audio = sum(u.audio.held_bytes for c in made[1:] for u in c._open)
                        a = allocators()
                        series.append((k, (memory()["VmRSS"] - mem0["VmRSS"]) / calls / 1024,
                                       (a.get("pymalloc_live", 0) + a.get("malloc_live", 0) - alloc0.get("pymalloc_live", 0)
                                        - alloc0.get("malloc_live", 0)) / calls / 1024, audio / calls / 1024))

                ru0 = resource.getrusage(resource.RUSAGE_SELF)
                await start_and_feed(rest, calls + 1, hook)
                ru1 = resource.getrusage(resource.RUSAGE_SELF)
                out["minor_faults"] = ru1.ru_minflt - ru0.ru_minflt
                out["cpu_s"] = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
                # Read as the capacity probe does: nothing collected, nothing trimmed.
                mem1, alloc1, counts = memory(), allocators(), gc.get_count()
                out["gc_count"] = list(counts)
                out["garbage_objects"] = gc.collect()
                mem2 = memory()
                malloc_trim()
                mem3 = memory()
                out["mem"] = {"idle": mem0, "live": mem1, "collected": mem2, "trimmed": mem3}
                out["alloc"] = {"idle": alloc0, "live": alloc1, "collected": allocators()}
                out["tasks_per_call"] = (_tasks() - tasks0) / calls
                live = made[1:]
                out["open_utterances_per_call"] = sum(len(c._open) for c in live) / calls
                out["utterance_audio_kib_per_call"] = sum(u.audio.held_bytes for c in live for u in c._open) / calls / 1024
                out["utterances_per_call"] = sum(c.stats.utterances for c in live) / calls
                by_play: dict[str, list[int]] = {}
                for c in live:
                    by_play.setdefault(names[int(c.stream_sid[2:], 16) % len(plays)], []).append(
                        sum(u.audio.held_bytes for u in c._open))
                out["audio_by_play"] = {k: sum(v) / len(v) / 1024 for k, v in sorted(by_play.items())}
                for s, _ in [warm, *rest]:
                    s.close()
                with trio.move_on_after(10):
                    await host.wait_idle()
                serving.cancel_scope.cancel()
                calls_nursery.cancel_scope.cancel()
                return out
            sizes0 = sizes_by_kind()
            tracemalloc.start()
            snap0 = tracemalloc.take_snapshot()
            rest = connect(1, calls)
            await start_and_feed(rest, calls + 1)
            gc.collect()
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            out["tasks_per_call"] = (_tasks() - tasks0) / calls
            diff = snap1.compare_to(snap0, "lineno" if by_line else "filename")
            out["traced_kib_per_call"] = sum(d.size_diff for d in diff) / calls / 1024
            out["traced_by_file"] = [(d.traceback[0].filename.split("/site-packages/")[-1].split("/wt-")[-1]
                                      + (f":{d.traceback[0].lineno}" if by_line else ""),
                                      d.size_diff / calls / 1024) for d in diff[:25 if by_line else 15]]
            del snap0, snap1, diff  # not counted by the object census
            gc.collect()
            sizes1 = sizes_by_kind()
            sizes = {k: (v[0] - sizes0.get(k, [0, 0])[0], v[1] - sizes0.get(k, [0, 0])[1]) for k, v in sizes1.items()}
            out["objects_kib_per_call"] = sum(v[0] for v in sizes.values()) / calls / 1024
            out["objects_top"] = [(k, v[0] / calls / 1024, v[1] / calls)
                                  for k, v in sorted(sizes.items(), key=lambda kv: -kv[1][0])[:30]]
            live = made[1:]
            out["open_utterances_per_call"] = sum(len(c._open) for c in live) / calls
            out["utterance_audio_kib_per_call"] = sum(u.audio.held_bytes for c in live for u in c._open) / calls / 1024
            out["utterances_per_call"] = sum(c.stats.utterances for c in live) / calls
            for s, _ in [warm, *rest]:
                s.close()
            with trio.move_on_after(10):
                await host.wait_idle()
            serving.cancel_scope.cancel()
        calls_nursery.cancel_scope.cancel()
    return out


def production_policy(gc_policy: str, trim_every: int | None) -> tuple[bool, int, str]:
    """Apply what ``sori serve`` applies at start-up in the tree this runs from: its GC policy (``engine`` = the
    tree's default) and, where the tree has one (from branch r5-mem on), its periodic ``malloc_trim``, here
    every ``server.malloc_trim_interval_ms`` / 20 frames unless ``trim_every`` says otherwise. Returns whether
    to freeze the heap once the warm-up call is done, the trim interval in frames (0: none) and a description."""
    from engine import app

    policy = Config().server.gc_policy if gc_policy == "engine" else gc_policy
    freeze = app.apply_gc_policy(policy)
    said = f"gc {policy} {gc.get_threshold()}{' + freeze' if freeze else ''}"
    interval_ms = getattr(Config().server, "malloc_trim_interval_ms", 0)
    if trim_every is None:
        trim_every = interval_ms // 20
    said += f"; malloc_trim every {trim_every} frames" if trim_every else "; no malloc_trim"
    return freeze, trim_every, said


def print_rss(out: dict[str, Any], calls: int) -> None:
    mem, alloc = out["mem"], out["alloc"]

    def per(a: dict[str, int], b: dict[str, int], key: str) -> float:
        return (b.get(key, 0) - a.get(key, 0)) / calls / 1024

    idle, live = mem["idle"], mem["live"]
    print(f"  RSS idle {idle['VmRSS'] / 2**20:.1f} MiB, threads {idle['threads']} idle / {live['threads']} live; "
          f"per call (live - idle) / {calls}, KiB:")
    print(f"    RSS {per(idle, live, 'VmRSS'):.1f}  (peak {(live['VmHWM'] - idle['VmRSS']) / calls / 1024:.1f}; heap {per(idle, live, 'heap'):.1f}, "
          f"anon mmaps {per(idle, live, 'anon'):.1f}, file {per(idle, live, 'file'):.1f})")
    print(f"    after a full collection {per(idle, mem['collected'], 'VmRSS'):.1f} ({out['garbage_objects'] / calls:.0f} "
          f"garbage objects per call, gc counts {out['gc_count']}); after malloc_trim(0) "
          f"{per(idle, mem['trimmed'], 'VmRSS'):.1f}")
    a0, a1, a2 = alloc["idle"], alloc["live"], alloc["collected"]
    slack = ("pymalloc_free_blocks", "pymalloc_unused_pools")
    for name, a in (("live", a1), ("collected", a2)):
        arenas_other = per(a0, a, "pymalloc_arenas") - sum(per(a0, a, k) for k in ("pymalloc_live", *slack))
        print(f"    allocators, {name}: pymalloc live {per(a0, a, 'pymalloc_live'):.1f}, free blocks "
              f"{per(a0, a, 'pymalloc_free_blocks'):.1f}, unused pools {per(a0, a, 'pymalloc_unused_pools'):.1f}, "
              f"other arena bytes {arenas_other:.1f} (arenas {per(a0, a, 'pymalloc_arenas'):.1f}); malloc live "
              f"{per(a0, a, 'malloc_live'):.1f}, free {per(a0, a, 'malloc_free'):.1f}, mmapped {per(a0, a, 'malloc_mmap'):.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--frames", type=int, default=400, help="frames per call (50 = 1 s of the demo call)")
    p.add_argument("--rss", action="store_true",
                   help="no tracemalloc: RSS per call (VmRSS, peak, by mapping), the allocators' split, then RSS "
                        "after a full collection and after malloc_trim, under the daemon's start-up policy (--gc)")
    p.add_argument("--gc", default="engine", choices=["engine", "throughput", "default"],
                   help="--rss: the GC policy (engine = the tree's default, as sori serve applies it)")
    p.add_argument("--every", type=int, default=0, metavar="FRAMES",
                   help="--rss: also read RSS, live heap and utterance audio per call every FRAMES frames")
    p.add_argument("--trim-every", type=int, default=None, metavar="FRAMES",
                   help="--rss: malloc_trim(0) every FRAMES frames (20 ms each), timed (a periodic trim's cost); "
                        "default: the tree's server.malloc_trim_interval_ms / 20 ms, as sori serve (0: never)")
    p.add_argument("--corpus", action="store_true",
                   help="calls play bench/corpus's speech calls in turn (the capacity rig's audio), not the demo call")
    p.add_argument("--stt-ws", action="store_true",
                   help="each lease a real RtzrSocket and WebSocket connection onto a local socket pair "
                        "(bench/ingest_ab.py's --stt-ws): an open utterance holds an RTZR socket, as in the capacity runs")
    p.add_argument("--by-line", action="store_true",
                   help="without --rss: tracemalloc's traced bytes by source line (the 25 largest), not by file")
    p.add_argument("--max-utterance-ms", type=int, default=None, metavar="MS",
                   help="endpointing.max_utterance_ms for the calls (default: the tree's own default)")
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the unsigned-upgrade warning of every call
    freeze, trim_every, said = production_policy(args.gc, args.trim_every) if args.rss else (False, 0, "")
    out = trio.run(run, args.calls, args.frames, args.rss, freeze, args.stt_ws, args.corpus, args.every,
                   trim_every, args.max_utterance_ms, args.by_line)
    max_ms = Config().endpointing.max_utterance_ms if args.max_utterance_ms is None else args.max_utterance_ms
    if args.rss:
        print(f"{sys.prefix}, engine from {ENGINE_TREE}: {args.calls} calls x {args.frames} frames; {said}; "
              f"max_utterance_ms {max_ms}")
        print(f"  tasks per call {out['tasks_per_call']:.2f}; utterances {out['utterances_per_call']:.2f} per call, "
              f"open {out['open_utterances_per_call']:.2f}, their audio {out['utterance_audio_kib_per_call']:.1f} KiB")
        print_rss(out, args.calls)
        rss_kib = (out["mem"]["live"]["VmRSS"] - out["mem"]["idle"]["VmRSS"]) / args.calls / 1024
        print(f"    split: open utterance audio {out['utterance_audio_kib_per_call']:.1f} + the rest "
              f"{rss_kib - out['utterance_audio_kib_per_call']:.1f} KiB per call")
        print("  utterance audio held per call, KiB, by what it plays: " + ", ".join(
            f"{k} {v:.0f}" for k, v in out["audio_by_play"].items()))
        print(f"  feeding: {out['cpu_s']:.2f} s CPU, {out['minor_faults']} minor page faults")
        if out["trims"]:
            t = sorted(x[0] for x in out["trims"])
            cpu = sorted(x[2] for x in out["trims"])
            print(f"  malloc_trim(0) x {len(t)}: {t[len(t) // 2] * 1e3:.2f} ms median, {t[-1] * 1e3:.2f} max "
                  f"(CPU {cpu[len(cpu) // 2] * 1e3:.2f} / {cpu[-1] * 1e3:.2f}); gave back "
                  f"{sum(x[1] for x in out['trims']) / len(t) / 2**10:.0f} KiB per trim")
        for k, rss_kib, live_kib, audio_kib in out["series"]:
            print(f"    frame {k:5d}: RSS {rss_kib:6.1f}, live heap (pymalloc + malloc) {live_kib:6.1f}, "
                  f"utterance audio {audio_kib:5.1f} KiB per call")
        return 0
    print(f"{sys.prefix}, engine from {ENGINE_TREE}: {args.calls} calls x {args.frames} frames")
    print(f"  tasks per call {out['tasks_per_call']:.2f}; utterances {out['utterances_per_call']:.2f} per call, open "
          f"{out['open_utterances_per_call']:.2f}, their audio {out['utterance_audio_kib_per_call']:.1f} KiB per call")
    print(f"  traced (tracemalloc, after a full collection): {out['traced_kib_per_call']:.1f} KiB per call")
    for name, kib in out["traced_by_file"]:
        print(f"    {kib:6.2f}  {name}")
    print(f"  objects (sys.getsizeof): {out['objects_kib_per_call']:.1f} KiB per call; largest, KiB and count per call:")
    for name, kib, count in out["objects_top"]:
        print(f"    {kib:6.2f} {count:7.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import logging
import os
import socket
import sys
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
from call_memory import sizes_by_kind  # noqa: E402
from ingest_ab import _client_frame, _InstantPool, _media  # noqa: E402

DEMO_WAV = Path(os.getcwd()) / "engine" / "demo" / "call.wav"


def _tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(c) for n in task.child_nurseries for c in n.child_tasks)
    return count(trio.lowlevel.current_root_task())


async def run(calls: int, frames_n: int) -> dict[str, Any]:
    config = Config()
    config.server.host = "127.0.0.1"
    config.server.port = 0
    config.server.allow_unsigned = True
    config.server.max_calls = calls + 10
    config = msgspec.structs.replace(config, call=msgspec.structs.replace(config.call, audio_buffer_ms=3_600_000))
    audio_frames = frames_of(load_audio(str(DEMO_WAV)))
    metrics = Registry()
    budgets = Budgets(config.budgets)
    pool = _InstantPool()
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

            async def start_and_feed(group: list[tuple[socket.socket, str]], n_started: int) -> None:
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
                        frame = _client_frame(_media(sid, k + 2, k + 1, audio_frames[k % len(audio_frames)]))
                        s.send(frame)
                    target += len(group)
                    with trio.fail_after(120):
                        while handled[0] < target:
                            await trio.sleep(0.001)
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
            sizes0 = sizes_by_kind()
            tracemalloc.start()
            snap0 = tracemalloc.take_snapshot()
            rest = connect(1, calls)
            await start_and_feed(rest, calls + 1)
            gc.collect()
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            out["tasks_per_call"] = (_tasks() - tasks0) / calls
            diff = snap1.compare_to(snap0, "filename")
            out["traced_kib_per_call"] = sum(d.size_diff for d in diff) / calls / 1024
            out["traced_by_file"] = [(d.traceback[0].filename.split("/site-packages/")[-1].split("/wt-")[-1],
                                      d.size_diff / calls / 1024) for d in diff[:15]]
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--frames", type=int, default=400, help="frames per call (50 = 1 s of the demo call)")
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the unsigned-upgrade warning of every call
    out = trio.run(run, args.calls, args.frames)
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

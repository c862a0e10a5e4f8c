"""CPU per 20 ms frame of the whole Twilio → Call path for many calls in one process, by CPU time, not pace.

Why this and not only ``bench/capacity.py``: on a shared machine the capacity steps go INVALID whenever
other processes take the engine's core; CPU time per frame processed (``time.process_time``) is a
far steadier A/B. One process runs the real :class:`engine.twilio.server.TwilioServer` with real
:class:`engine.call.Call` handlers (a pool that never hands out a socket, and an audio buffer large enough
that nothing overflows: STT is not measured here) and ``--calls`` raw TCP clients in the same process. The
clients send the demo call's media frames as the load generator does: the calls in ``--groups`` phase
groups, each group's next frame written in one go (one non-blocking ``send`` per call), then the
process waits until the server has handled them. Reported: process CPU µs per frame (the clients' sends
included, the same in every tree; with ``--clients-process`` the clients send from a forked child, paced by
a pipe, and the CPU is the engine's alone), and wall µs per frame. Runs against whichever tree's ``engine`` is
importable, so an A/B is this script run by two trees' venvs:

    .venv/bin/python bench/ingest_ab.py --calls 200 --frames 250
    /tmp/cap-base/.venv/bin/python bench/ingest_ab.py --calls 200 --frames 250   # same file, the old tree

``--stt`` adds the STT side of a speaking call (issue 13): a pool that leases at once, to a fake socket that
accepts every send and Finalize instantly (one checkpoint, as a socket's ``send_all``) and answers the
Finalize with a final, so the utterances' sender tasks, their buffers and the batches they send are measured
too (not RTZR's socket and WebSocket framing: engine/rtzr's own). ``--frames 522`` is the whole demo call
(about half of its frames in an utterance); ``speaking_share`` reports that share. ``--direct`` leaves out
the server and the sockets: the calls get their frames straight from this loop, in one
:class:`~engine.endpointing.batch.FrameBatch` per phase group (as the reactor's wake-ups), so only the call
path (decode, endpointing, utterance audio, with ``--stt`` the senders) is measured.

``--gc throughput`` applies the daemon's policy (engine/app.py: thresholds, and the heap frozen once the
calls are set up) instead of CPython's defaults; either way every collection in the measured loop is timed
in CPU ms by generation (``gc``: count, total, longest, per second of audio): what the collector costs the
calls, and how long it stops every frame at once (the frame-lag tail, issue 13).

``--doubled S``: a share S of the calls (every round(1/S)-th) gets its frames two at a time, frames k-1 and
k in one send (one wake-up) at every odd k, as a call whose socket holds two frames when a pass is late
(issue 13: the second chunk joins the first in the batch, or the first was decided alone).
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import logging
import os
import socket
import statistics
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

sys.path.insert(0, os.getcwd())  # the tree this runs from (its own venv's editable install points there too)

from engine.budgets import Budgets
from engine.call import Call
from engine.config import Config
from engine.endpointing.batch import FrameBatch
from engine.media import AudioReceived, StreamStarted
from engine.metrics import Registry
from engine.nursery import CallHost
from engine.rtzr.tracker import LeaseResult
from engine.twilio.server import TwilioServer, stream_started
from engine.twilio.simulator import frames_of, load_audio

DEMO_WAV = Path(os.getcwd()) / "engine" / "demo" / "call.wav"  # the tree run from


class _NoPool:
    """Never hands out a socket (STT is not measured); the call's utterance tasks just wait."""

    @asynccontextmanager
    async def lease(self) -> Any:
        await trio.sleep_forever()
        yield None


class _InstantLease:
    """A socket that takes every send at once; answers Finalize with a closing final."""

    lease_ms = 0.0
    pool_hit = True

    def __init__(self) -> None:
        self.sent = 0
        self._sends = 0
        self._finalized = trio.Event()

    @property
    def has_pending(self) -> bool:
        return self.sent > 0

    async def send_audio(self, pcm: bytes) -> None:
        # As RTZR's WsClientConnection: a whole write returns with no schedule point but every 8th in a row.
        self.sent += len(pcm)
        self._sends += 1
        if not self._sends & 7:
            await trio.lowlevel.cancel_shielded_checkpoint()

    # engine.stt.PushLease, as RTZR's lease: a tree whose Call pushes batches from the append uses these
    write_pending = False

    def send_audio_nowait(self, pcm: bytes) -> bool:
        self.sent += len(pcm)
        return True

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        await trio.lowlevel.checkpoint()
        if not self.sent:
            return False
        self._finalized.set()
        return True

    async def receive(self) -> Any:
        await self._finalized.wait()
        self._finalized = trio.Event()
        return LeaseResult(final=True, text="", confidence=None, start_ms=0.0, duration_ms=self.sent / 16, seq=0,
                           closes=True)


def rtzr_socket_on_pair(config: Config, budgets: Budgets, metrics: Registry) -> tuple[Any, socket.socket]:
    """A leased :class:`~engine.rtzr.stream.RtzrSocket` whose upgraded WebSocket writes onto a local socket pair
    (no handshake, no token: nothing answers), and the pair's other end, for the caller to drain."""
    from wsproto import ConnectionType
    from wsproto.connection import Connection

    from engine.rtzr.stream import RtzrSocket
    from engine.rtzr.wsclient import WsClientConnection

    ours, peer = socket.socketpair()
    for s in (ours, peer):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    conn = WsClientConnection(trio.SocketStream(trio.socket.from_stdlib_socket(ours)),
                              send_budget=budgets.send, max_message_size=1 << 20)
    conn._ws = Connection(ConnectionType.CLIENT)  # upgraded (no handshake: nothing answers)
    sock = RtzrSocket(config.rtzr, None, budgets, metrics)  # type: ignore[arg-type]  # no token needed
    sock._ws = conn
    sock.tracker.begin_lease()
    return sock, peer


class _WsLease(_InstantLease):
    """``--stt-ws``: as :class:`_InstantLease`, but every send goes through a real
    :class:`~engine.rtzr.stream.RtzrSocket` and its WebSocket connection (framing, masking, the write) onto a
    local socket pair whose other end the loop drains; only the results are made up (no server answers)."""

    def __init__(self, config: Config, budgets: Budgets, metrics: Registry) -> None:
        super().__init__()
        sock, self.peer = rtzr_socket_on_pair(config, budgets, metrics)
        self.sock = sock
        self.send_audio = sock.send_audio  # type: ignore[method-assign]
        self.send_audio_nowait = sock.send_audio_nowait if sock.pushable else None  # type: ignore[method-assign,assignment]
        self.flush = sock.flush  # type: ignore[method-assign]

    @property
    def write_pending(self) -> bool:  # type: ignore[override]
        return self.sock.write_pending

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        self.sent = self.sock.tracker.bytes_sent
        if not await self.sock.finalize(speech_end_ms):
            return False
        self._finalized.set()
        return True

    def drain(self) -> None:
        try:
            while self.peer.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


class _InstantPool:
    """Leases at once (``--stt``); counts the audio its leases were sent. ``ws``: :class:`_WsLease` leases."""

    def __init__(self, ws: tuple[Config, Budgets, Registry] | None = None) -> None:
        self.leases = 0
        self.sent = 0
        self._ws = ws
        self._live: list[_WsLease] = []

    @asynccontextmanager
    async def lease(self) -> Any:
        lease = _InstantLease() if self._ws is None else _WsLease(*self._ws)
        self.leases += 1
        if isinstance(lease, _WsLease):
            self._live.append(lease)
        try:
            yield lease
        finally:
            if isinstance(lease, _WsLease):
                self._live.remove(lease)
                lease.sent = lease.sock.tracker.bytes_sent
                lease.drain()
                lease.peer.close()
            self.sent += lease.sent

    def drain(self) -> None:
        """Empty the peers' receive buffers (``--stt-ws``), as RTZR reads what we send."""
        for lease in self._live:
            lease.drain()


def _client_frame(text: str) -> bytes:
    """A masked client text frame with the zero key (what the load generator sends)."""
    data = text.encode()
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + b"\0\0\0\0" + data


def _media(sid: str, seq: int, chunk: int, payload: bytes) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": sid,
                       "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
                                 "payload": base64.b64encode(payload).decode()}}, separators=(",", ":"))


class _GcTimer:
    """A ``gc.callbacks`` entry: CPU ms of every collection, by generation, while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.started = 0.0
        self.ms: list[list[float]] = [[], [], []]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if not self.on:
            return
        if phase == "start":
            self.started = time.process_time()
        else:
            self.ms[info["generation"]].append((time.process_time() - self.started) * 1000)

    def summary(self, audio_s: float) -> dict[str, Any]:
        return {f"gen{g}": {"count": len(v), "per_s": round(len(v) / audio_s, 2), "total_ms": round(sum(v), 1),
                            "max_ms": round(max(v, default=0.0), 2)} for g, v in enumerate(self.ms)}


GC_TIMER = _GcTimer()


def _start_gc_timer(policy: str) -> None:
    """The measured loop starts: the daemon's GC policy if asked (its thresholds, then the set-up heap frozen)."""
    if policy == "throughput":
        from engine.app import GC_THROUGHPUT_THRESHOLDS

        gc.set_threshold(*GC_THROUGHPUT_THRESHOLDS)
        gc.collect()
        gc.freeze()
    GC_TIMER.ms = [[], [], []]
    GC_TIMER.on = True


def _due(k: int, frames_n: int, doubled: bool) -> list[int]:
    """The frames a call gets at step ``k``: frame k; a doubled call frames k-1 and k at odd k (the last one
    alone when frames_n is odd), nothing at even k."""
    if not doubled:
        return [k]
    if k % 2:
        return [k - 1, k]
    return [k] if k == frames_n - 1 else []


def _doubled_calls(calls: int, share: float) -> set[int]:
    if share <= 0:
        return set()
    every = max(1, round(1 / share))
    return set(range(0, calls, every))


async def run(calls: int, frames_n: int, groups: int, clients_process: bool = False,
              stt: bool = False, doubled_share: float = 0.0, gc_policy: str = "default") -> dict[str, Any]:
    config = Config()
    config.server.host = "127.0.0.1"
    config.server.port = 0
    config.server.allow_unsigned = True
    config.server.max_calls = calls + 10
    # The frames are built after every call has started, which takes longer than a real call's 15 s idle limit on
    # a loaded machine or under callgrind: the calls would idle out and the driver wait for them forever.
    config.twilio.read_idle_ms = 3_600_000
    config = msgspec.structs.replace(config, call=msgspec.structs.replace(config.call, audio_buffer_ms=3_600_000))
    audio_frames = frames_of(load_audio(str(DEMO_WAV)))
    metrics = Registry()
    budgets = Budgets(config.budgets)
    handled = [0]
    target = [0]
    reached = trio.Event()
    box = [reached]
    speaking = [0]
    pool: Any = _InstantPool() if stt else _NoPool()

    class Counting(Call):
        def on_event(self, event: Any) -> None:
            super().on_event(event)
            if type(event) is AudioReceived:
                handled[0] += 1
                speaking[0] += self._current is not None
                if handled[0] >= target[0]:
                    box[0].set()

    started = [0]

    def factory(session: Any) -> Call:
        started[0] += 1
        return Counting(stream_started(session.started), config=config, pool=pool, emit=lambda e: None, metrics=metrics,
                        budgets=budgets)

    async with trio.open_nursery() as calls_nursery:
        host = CallHost(calls_nursery, metrics)
        server = TwilioServer(config, host=host, handler_factory=factory, metrics=metrics, budgets=budgets)
        async with trio.open_nursery() as serving:
            port = await serving.start(server.run)
            socks = []
            for i in range(calls):
                s = socket.create_connection(("127.0.0.1", port))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Twilio's proxy and bench/loadgen.py send
                key = base64.b64encode(os.urandom(16)).decode()
                s.sendall((f"GET /twilio/media HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
                s.setblocking(False)
                sid = f"MZ{i:032x}"
                start = {"event": "start", "sequenceNumber": "1", "streamSid": sid,
                         "start": {"accountSid": "AC" + "1" * 32, "streamSid": sid, "callSid": f"CA{i:032x}",
                                   "tracks": ["inbound"], "customParameters": {},
                                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
                s.send(_client_frame('{"event":"connected","protocol":"Call","version":"1.0.0"}')
                       + _client_frame(json.dumps(start)))
                socks.append((s, sid))
                await trio.sleep(0)
            with trio.fail_after(60):
                while started[0] < calls:  # every call has read its start
                    await trio.sleep(0.05)
            for s, _ in socks:  # drain the 101 responses
                try:
                    s.recv(65536)
                except BlockingIOError:
                    pass
            encoded = [[_client_frame(_media(sid, k + 2, k + 1, audio_frames[k % len(audio_frames)]))
                        for k in range(frames_n)] for _s, sid in socks]
            group_of = [list(range(g, calls, groups)) for g in range(groups)]
            doubled = _doubled_calls(calls, doubled_share)
            due = [[_due(k, frames_n, i in doubled) for k in range(frames_n)] for i in range(calls)]
            go_w = child = -1
            if clients_process:
                # The clients in a child process: this process's CPU is then the engine's alone (plus one
                # 1-byte pipe write per group, ≈ 1 syscall per 20-30 frames).
                go_r, go_w = os.pipe()
                child = os.fork()
                if child == 0:  # plain blocking code only: no Trio in the child
                    os.close(go_w)
                    for s, _ in socks:
                        s.setblocking(True)
                    for k in range(frames_n):
                        for members in group_of:
                            if os.read(go_r, 1) != b"g":
                                os._exit(1)
                            for i in members:
                                if due[i][k]:
                                    socks[i][0].sendall(b"".join(encoded[i][j] for j in due[i][k]))
                    os._exit(0)
                os.close(go_r)
            _start_gc_timer(gc_policy)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for k in range(frames_n):
                for members in group_of:
                    target[0] += sum(len(due[i][k]) for i in members)
                    box[0] = trio.Event()
                    if clients_process:
                        os.write(go_w, b"g")
                    else:
                        for i in members:
                            if due[i][k]:
                                socks[i][0].send(b"".join(encoded[i][j] for j in due[i][k]))
                    if handled[0] < target[0]:
                        await box[0].wait()
            cpu1, wall1 = time.process_time(), time.perf_counter()
            GC_TIMER.on = False
            if clients_process:
                os.close(go_w)
                os.waitpid(child, 0)
            for s, _ in socks:
                s.close()
            with trio.move_on_after(10):
                await host.wait_idle()
            serving.cancel_scope.cancel()
        calls_nursery.cancel_scope.cancel()
    total = calls * frames_n
    return {"cpu_us_per_frame": (cpu1 - cpu0) / total * 1e6, "wall_us_per_frame": (wall1 - wall0) / total * 1e6,
            "frames": total, "speaking_share": speaking[0] / total,
            "stt_ms_sent_per_call": pool.sent / 16 / calls if stt else 0.0, "gc": GC_TIMER.summary(frames_n * 0.02)}


async def run_direct(calls: int, frames_n: int, groups: int, stt: bool = False,
                     doubled_share: float = 0.0, gc_policy: str = "default", stt_ws: bool = False) -> dict[str, Any]:
    """``--direct``: no server, no sockets; one FrameBatch wake-up per phase group, then one checkpoint (the
    woken utterance tasks run, as when the reactor goes back to epoll)."""
    config = Config()
    config = msgspec.structs.replace(config, call=msgspec.structs.replace(config.call, audio_buffer_ms=3_600_000))
    audio_frames = frames_of(load_audio(str(DEMO_WAV)))
    metrics = Registry()
    budgets = Budgets(config.budgets)
    pool: Any = _InstantPool((config, budgets, metrics) if stt_ws else None) if stt or stt_ws else _NoPool()
    batch = FrameBatch()
    speaking = 0
    async with trio.open_nursery() as nursery:
        handlers = []
        for i in range(calls):
            started = StreamStarted(stream_id=f"MZ{i:032x}", call_id=f"CA{i:032x}", account_id="AC" + "1" * 32,
                                    encoding="mulaw", sample_rate=8000, provider="twilio")
            call = Call(started, config=config, pool=pool, emit=lambda e: None, metrics=metrics, budgets=budgets)
            call.attach_batch(batch)
            nursery.start_soon(call.run)
            handlers.append(call)
        media = [AudioReceived(audio_frames[k % len(audio_frames)], k * 20.0) for k in range(frames_n)]
        doubled = _doubled_calls(calls, doubled_share)
        group_of = [[(handlers[i], i in doubled) for i in range(g, calls, groups)] for g in range(groups)]
        await trio.sleep(0)
        _start_gc_timer(gc_policy)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for k in range(frames_n):
            event = media[k]
            for members in group_of:
                batch.begin()
                for call, twice in members:
                    if not twice:
                        call.on_event(event)
                    else:
                        for j in _due(k, frames_n, True):
                            call.on_event(media[j])
                batch.end()
                await trio.sleep(0)
            speaking += sum(c._current is not None for c in handlers)
            if stt_ws:
                pool.drain()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        GC_TIMER.on = False
        for call in handlers:
            call.on_close("stop")
        with trio.move_on_after(10):
            while nursery.child_tasks:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    total = calls * frames_n
    return {"cpu_us_per_frame": (cpu1 - cpu0) / total * 1e6, "wall_us_per_frame": (wall1 - wall0) / total * 1e6,
            "frames": total, "speaking_share": speaking / total,
            "stt_ms_sent_per_call": pool.sent / 16 / calls if stt or stt_ws else 0.0,
            "gc": GC_TIMER.summary(frames_n * 0.02)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--frames", type=int, default=250, help="frames per call (50 = 1 s of audio)")
    p.add_argument("--groups", type=int, default=10, help="phase groups, as the load generator's 10 × 2 ms")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--clients-process", action="store_true",
                   help="send from a forked child process: the CPU measured is the engine's alone")
    p.add_argument("--stt", action="store_true",
                   help="lease an instant fake socket per utterance: the speaking call's STT side is measured too")
    p.add_argument("--stt-ws", action="store_true",
                   help="with --direct: as --stt, but the sends go through a real RtzrSocket and its WebSocket framing "
                        "and write, onto a local socket pair (engine/rtzr's send side measured too)")
    p.add_argument("--direct", action="store_true",
                   help="no server or sockets: frames handed to the calls in FrameBatch wake-ups (the call path alone)")
    p.add_argument("--gc", choices=["default", "throughput"], default="default",
                   help="CPython's collector as it is, or the daemon's policy (engine/app.py)")
    p.add_argument("--doubled", type=float, default=0.0, metavar="SHARE",
                   help="this share of the calls gets two frames per send (one wake-up) at every other step")
    args = p.parse_args()
    logging.disable(logging.ERROR)  # the per-call info/warning lines (closing calls) are not measured
    gc.callbacks.append(GC_TIMER)
    if args.direct:
        runs = [trio.run(run_direct, args.calls, args.frames, args.groups, args.stt, args.doubled, args.gc,
                         args.stt_ws) for _ in range(args.repeat)]
    else:
        runs = [trio.run(run, args.calls, args.frames, args.groups, args.clients_process, args.stt, args.doubled,
                         args.gc) for _ in range(args.repeat)]
    cpu = statistics.median(r["cpu_us_per_frame"] for r in runs)
    wall = statistics.median(r["wall_us_per_frame"] for r in runs)
    import engine
    print(json.dumps({"tree": str(Path(engine.__file__).resolve().parent.parent), "calls": args.calls,
                      "clients": "none (direct)" if args.direct else
                      "child process" if args.clients_process else "same process",
                      "frames_per_call": args.frames, "groups": args.groups, "stt": args.stt,
                      "stt_ws": args.stt_ws,
                      "doubled": args.doubled, "gc_policy": args.gc, "gc": runs[0]["gc"],
                      "speaking_share": round(runs[0]["speaking_share"], 3),
                      "stt_ms_sent_per_call": round(runs[0]["stt_ms_sent_per_call"]),
                      "cpu_us_per_frame": round(cpu, 1), "wall_us_per_frame": round(wall, 1),
                      "cpu_runs": [round(r["cpu_us_per_frame"], 1) for r in runs],
                      "calls_per_core_at_90pct": round(0.9 * 20000 / cpu)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

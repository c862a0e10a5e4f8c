"""Micro-benchmarks of the per-frame path, in µs per 20 ms Twilio frame (median of repeated runs).

Each stage runs alone over realistic input (the demo call, Twilio's JSON shape), then the whole
``Call.on_event`` path, then the WebSocket layers: RTZR audio sends (wsproto frame encode, and
trio-websocket ``send_message`` over loopback, per 60 ms batch divided by 3) and the Twilio ingest
(trio-websocket ``get_message`` vs a bare wsproto parse of the same bytes vs our own
``engine.twilio.wsconn``, which the server runs), and many sockets with one frame each per tick read by a
task per socket (the old ingest) vs one :class:`engine.twilio.reactor.Reactor` (the server's now).

    .venv/bin/python bench/hotpath.py [--repeat 7] [--frames 2000] [--json]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import _common  # sets sys.path
import msgspec
import numpy as np
import trio
import trio_websocket
import wsproto
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from engine.audio import mulaw
from engine.audio.resample import Resampler
from engine.config import Config, EndpointingConfig
from engine.endpointing import Endpointer, FrameClassifier, make_classifier
from engine.endpointing.batch import FrameBatch
from engine.twilio.protocol import (
    ConnectedMessage,
    InboundMedia,
    MediaFormat,
    MediaMessage,
    StartInfo,
    StartMessage,
    TwilioStream,
    encode,
)
from engine.twilio.simulator import frames_of, load_audio

SID = "MZ" + "0" * 32
BATCH_MS = Config().call.send_batch_ms  # what the call sends per RTZR message (default 100 ms)


def twilio_messages(frames: list[bytes]) -> tuple[list[str], list[str]]:
    """(connected + start, media messages) exactly as the simulator sends them."""
    head = [encode(ConnectedMessage()), encode(StartMessage(
        stream_sid=SID, sequence_number="1", start=StartInfo(stream_sid=SID, account_sid="AC" + "1" * 32,
                                                             call_sid="CA" + "2" * 32, tracks=["inbound"],
                                                             custom_parameters={}, media_format=MediaFormat())))]
    media = [encode(MediaMessage(stream_sid=SID, sequence_number=str(i + 2), media=InboundMedia(
        chunk=str(i + 1), timestamp=str(40 + i * 20), payload=f, track="inbound"))) for i, f in enumerate(frames)]
    return head, media


def timed(fn: Callable[[], int], repeat: int) -> float:
    """Median over ``repeat`` runs of (seconds / frames) → µs per frame; fn returns its frame count."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def bench_sync(frames: list[bytes], repeat: int) -> list[tuple[str, float]]:
    head, media = twilio_messages(frames)
    b64 = [base64.b64encode(f) for f in frames]
    pcm8 = [mulaw.decode(f) for f in frames]
    cfg = Config().endpointing
    rows: list[tuple[str, float]] = []

    def parse() -> int:
        proto = TwilioStream()
        for m in head:
            proto.receive_text(m)
        for m in media:
            proto.receive_text(m)
        return len(media)

    rows.append(("Twilio JSON parse + base64 (TwilioStream.receive_text)", timed(parse, repeat)))

    def b64dec() -> int:
        for s in b64:
            binascii.a2b_base64(s)
        return len(b64)

    rows.append(("  of which base64 decode (binascii, 160 B)", timed(b64dec, repeat)))

    def decode() -> int:
        for f in frames:
            mulaw.decode(f)
        return len(frames)

    rows.append(("μ-law decode (160 samples)", timed(decode, repeat)))

    def resample(out_rate: int) -> Callable[[], int]:
        def run() -> int:
            r = Resampler(8000, out_rate)
            for p in pcm8:
                r.process(p)
            return len(pcm8)
        return run

    rows.append(("resample 8k→16k (soxr HQ, streaming)", timed(resample(16000), repeat)))
    rows.append(("resample 8k→8k (identity)", timed(resample(8000), repeat)))

    def classify() -> int:
        c = make_classifier(cfg.classifier, 8000)
        for p in pcm8:
            c.classify(p.reshape(1, -1))
        return len(pcm8)

    rows.append((f"classifier ({cfg.classifier}, 8 kHz)", timed(classify, repeat)))

    def endpoint() -> int:
        ep = Endpointer(cfg, classifier=make_classifier(cfg.classifier, 8000))
        for p in pcm8:
            ep.push(p)
        return len(pcm8)

    rows.append(("endpointer push (incl. classifier)", timed(endpoint, repeat)))

    def decode_push() -> int:
        ep = Endpointer(cfg, classifier=make_classifier(cfg.classifier, 8000))
        for f in frames:
            ep.push(mulaw.decode(f))
        return len(frames)

    rows.append(("μ-law decode + endpointer push, one call alone", timed(decode_push, repeat)))

    def batched(n: int) -> Callable[[], int]:
        def run() -> int:
            streams = [_BatchStream(cfg) for _ in range(n)]
            batch = FrameBatch()
            for f in frames:
                batch.begin()
                for s in streams:
                    s.feed(f, batch)
                batch.end()
            return len(frames) * n
        return run

    for n in (20, 200):
        rows.append((f"μ-law decode + endpointer, FrameBatch of {n} calls per wake-up, per call-frame",
                     timed(batched(n), max(1, repeat // 2))))
    return rows


class _BatchStream:
    """One call's endpointer in a FrameBatch as engine.call.Call drives it (μ-law payload deferred)."""

    def __init__(self, cfg: EndpointingConfig) -> None:
        self.ep = Endpointer(cfg, classifier=make_classifier(cfg.classifier, 8000))
        self.batch_payload: bytes | None = None
        self.batch_frames: np.ndarray | None = None
        self.events = 0

    @property
    def batch_classifier(self) -> FrameClassifier:
        return self.ep.classifier

    def feed(self, payload: bytes, batch: FrameBatch) -> None:
        self.batch_payload = payload
        batch.add(self)

    def batch_audio(self, pcm: np.ndarray) -> None:
        self.batch_payload = None
        self.batch_frames = self.ep.frames_ready(pcm)

    def batch_decided(self, decisions: list[bool]) -> None:
        self.batch_frames = None
        self.events += len(self.ep.push_decided(decisions))

    def batch_failed(self, exc: Exception) -> None:
        raise exc


def bench_call(frames: list[bytes], repeat: int) -> float:
    """The whole synchronous reader path: parse → Call.on_event (decode, resample, endpoint, buffer)."""
    from engine.budgets import Budgets
    from engine.call import Call
    from engine.media import AudioReceived
    from engine.metrics import Registry
    from engine.twilio.protocol import Started
    from engine.twilio.server import stream_started

    head, media = twilio_messages(frames)
    config = Config()
    # No STT in this measurement: keep every utterance's audio buffered instead of reporting overflow.
    config = msgspec.structs.replace(config, call=msgspec.structs.replace(config.call, audio_buffer_ms=600_000))

    async def main() -> float:
        samples = []
        for _ in range(repeat):
            proto = TwilioStream()
            started = None
            for m in head:
                for e in proto.receive_text(m):
                    started = e
            assert started is not None
            assert isinstance(started, Started)
            call = Call(stream_started(started), config=config, pool=None,  # type: ignore[arg-type]
                        emit=lambda e: None, metrics=Registry(), budgets=Budgets(config.budgets))
            t0 = time.perf_counter()
            for m in media:
                for e in proto.receive_text(m):
                    assert type(e) is AudioReceived  # the neutral event itself, as the server's reader hands it
                    call.on_event(e)
            samples.append((time.perf_counter() - t0) / len(media) * 1e6)
        return statistics.median(samples)

    return trio.run(main)


# ---------------------------------------------------------------------------------------------
# WebSocket layers


async def _raw_ws_sink(stream: trio.SocketStream) -> None:
    """Accept a WebSocket upgrade with wsproto, then discard every byte (no parsing cost)."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
                while await stream.receive_some(1 << 20):
                    pass
                return


async def bench_trio_ws_send(batches: list[bytes], repeat: int) -> float:
    """trio-websocket send_message of 60 ms batches to a loopback sink, µs per 20 ms of audio."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _raw_ws_sink, 0)
        port = listeners[0].socket.getsockname()[1]
        samples = []
        try:
            async with trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False,
                                                     disconnect_timeout=0.2) as ws:
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    for b in batches:
                        await ws.send_message(b)
                    samples.append((time.perf_counter() - t0) / (len(batches) * BATCH_MS // 20) * 1e6)
        except trio_websocket.DisconnectionTimeout:
            pass  # the sink never answers the close handshake
        nursery.cancel_scope.cancel()
    return statistics.median(samples)


async def bench_trio_ws_rtzr_send(batches: list[bytes], repeat: int) -> float:
    """What RtzrSocket._send ran before wsclient: budgets.send + trio.Lock + trio-websocket send_message."""
    from engine.budgets import Budget

    budget = Budget("send", 1000)
    lock = trio.Lock()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _raw_ws_sink, 0)
        port = listeners[0].socket.getsockname()[1]
        samples = []
        try:
            async with trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False,
                                                     disconnect_timeout=0.2) as ws:
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    for b in batches:
                        with budget():
                            async with lock:
                                await ws.send_message(b)
                    samples.append((time.perf_counter() - t0) / (len(batches) * BATCH_MS // 20) * 1e6)
        except trio_websocket.DisconnectionTimeout:
            pass
        nursery.cancel_scope.cancel()
    return statistics.median(samples)


async def bench_wsclient_send(batches: list[bytes], repeat: int) -> float:
    """engine.rtzr.wsclient send_bytes (what RtzrSocket.send_audio now runs) to the same sink."""
    from engine.budgets import Budget
    from engine.rtzr.wsclient import WsClientConnection

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _raw_ws_sink, 0)
        port = listeners[0].socket.getsockname()[1]
        conn = await WsClientConnection.connect(f"ws://127.0.0.1:{port}/", send_budget=Budget("send", 1000),
                                                max_message_size=1 << 20)
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for b in batches:
                await conn.send_bytes(b)
            samples.append((time.perf_counter() - t0) / (len(batches) * BATCH_MS // 20) * 1e6)
        await conn.aclose(grace=0.2)  # the sink never answers the close frame
        nursery.cancel_scope.cancel()
    return statistics.median(samples)


async def _ingest_trio_ws(blob: bytes, count: int, buffer: int | None) -> float:
    """Server side: trio-websocket get_message over loopback for ``count`` pre-framed client messages."""
    done = trio.Event()
    result: list[float] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        t0 = time.perf_counter()
        for _ in range(count):
            await ws.get_message()
        result.append(time.perf_counter() - t0)
        done.set()

    async with trio.open_nursery() as nursery:
        kwargs: dict[str, Any] = {"handler_nursery": nursery}
        if buffer is not None:
            kwargs["receive_buffer_size"] = buffer
        server = await nursery.start(lambda task_status: trio_websocket.serve_websocket(
            handler, "127.0.0.1", 0, ssl_context=None, task_status=task_status, **kwargs))
        port = server.port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host="127.0.0.1", target="/")))
        while True:
            client.receive_data(await stream.receive_some(65536))
            if any(isinstance(e, AcceptConnection) for e in client.events()):
                break
        await stream.send_all(blob)
        await done.wait()
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return result[0] / count * 1e6


async def _ingest_wsproto(blob: bytes, count: int) -> float:
    """Server side: a bare wsproto-on-trio receive loop (receive_some → receive_data → events)."""
    done = trio.Event()
    result: list[float] = []

    async def handler(stream: trio.SocketStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        got = 0
        t0 = 0.0
        while got < count:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                    t0 = time.perf_counter()
                elif isinstance(event, TextMessage):
                    got += 1
        result.append(time.perf_counter() - t0)
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host="127.0.0.1", target="/")))
        while True:
            client.receive_data(await stream.receive_some(65536))
            if any(isinstance(e, AcceptConnection) for e in client.events()):
                break
        await stream.send_all(blob)
        await done.wait()
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return result[0] / count * 1e6


async def _ingest_wsconn(blob: bytes, count: int) -> float:
    """Server side: engine.twilio.wsconn (what TwilioServer runs), receive_message per message."""
    from engine.budgets import Budget
    from engine.twilio.wsconn import WsServerConnection

    done = trio.Event()
    result: list[float] = []

    async def handler(stream: trio.SocketStream) -> None:
        ws = WsServerConnection(stream, send_budget=Budget("send", 1000), max_message_size=1 << 20)
        await ws.read_request()
        await ws.accept()
        t0 = time.perf_counter()
        for _ in range(count):
            await ws.receive_message()
        result.append(time.perf_counter() - t0)
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host="127.0.0.1", target="/")))
        while True:
            client.receive_data(await stream.receive_some(65536))
            if any(isinstance(e, AcceptConnection) for e in client.events()):
                break
        await stream.send_all(blob)
        await done.wait()
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return result[0] / count * 1e6


async def _ingest_many(frame: bytes, sockets: int, ticks: int, *, reactor: bool) -> float:
    """µs per frame for ``sockets`` TCP connections that each get one frame per tick (the real shape of
    many calls), read either by one task per socket (``receive_some``, the old ingest) or by one
    :class:`engine.twilio.reactor.Reactor` (the server's now). Both decode with ``TextFrameDecoder``; the
    client's own sends (one non-blocking ``send`` per frame, the same in both) are included."""
    import socket

    from engine.twilio.reactor import KEEP, Reactor
    from engine.twilio.wsconn import TextFrameDecoder

    listener = socket.create_server(("127.0.0.1", 0))
    clients, servers = [], []
    for _ in range(sockets):
        c = socket.create_connection(listener.getsockname())
        s, _addr = listener.accept()
        s.setblocking(False)
        clients.append(c)
        servers.append(s)
    listener.close()
    total = sockets * ticks
    got = [0]
    done = trio.Event()

    def on_frames(n: int) -> None:
        got[0] += n
        if got[0] >= total:
            done.set()

    class _Reader:
        def __init__(self) -> None:
            self.decoder = TextFrameDecoder(1 << 20)

        def readable(self, data: bytes, now: float) -> bool:
            on_frames(len(self.decoder.feed(data)[0]))
            return KEEP

        def failed(self, exc: Exception) -> None:
            raise exc

    async def per_socket(sock: socket.socket) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        decoder = TextFrameDecoder(1 << 20)
        while got[0] < total:
            data = await stream.receive_some(65536)
            on_frames(len(decoder.feed(data)[0]))

    try:
        async with trio.open_nursery() as nursery:
            r = Reactor()
            if reactor:
                for sock in servers:
                    r.register(sock.fileno(), _Reader(), nursery)
            else:
                for sock in servers:
                    nursery.start_soon(per_socket, sock)
            await trio.sleep(0.05)
            t0 = time.perf_counter()
            for tick in range(ticks):
                for c in clients:
                    c.send(frame)
                with trio.fail_after(10):
                    while got[0] < sockets * (tick + 1):
                        await trio.sleep(0)
            elapsed = time.perf_counter() - t0
            await done.wait()
            for sock in servers:
                r.unregister(sock.fileno())
            nursery.cancel_scope.cancel()
    finally:
        for sock in clients + servers:
            sock.close()
    return elapsed / total * 1e6


def bench_ingest_many(media: list[str], repeat: int, sockets: int = 200, ticks: int = 50) -> list[tuple[str, float]]:
    frame = client_blob(media[:1])
    return [(f"Twilio ingest, {sockets} sockets x 1 frame per tick: one task per socket (old)",
             statistics.median(trio.run(partial(_ingest_many, reactor=False), frame, sockets, ticks)
                               for _ in range(repeat))),
            (f"Twilio ingest, {sockets} sockets x 1 frame per tick: one Reactor for all (new)",
             statistics.median(trio.run(partial(_ingest_many, reactor=True), frame, sockets, ticks)
                               for _ in range(repeat)))]


def client_blob(messages: list[str]) -> bytes:
    """Masked client frames for these text messages, as a Twilio client writes them."""
    from wsproto.connection import Connection, ConnectionType

    conn = Connection(ConnectionType.CLIENT)
    return b"".join(conn.send(TextMessage(m)) for m in messages)


def bench_ingest(media: list[str], repeat: int) -> list[tuple[str, float]]:
    blob = client_blob(media)
    rows = []
    for label, buf in (("default receive_buffer_size (4 KiB)", None), ("receive_buffer_size=64 KiB", 65536)):
        rows.append((f"Twilio ingest: trio-websocket get_message, {label}",
                     statistics.median(trio.run(_ingest_trio_ws, blob, len(media), buf) for _ in range(repeat))))
    rows.append(("Twilio ingest: bare wsproto on trio (receive_some → events)",
                 statistics.median(trio.run(_ingest_wsproto, blob, len(media)) for _ in range(repeat))))
    rows.append(("Twilio ingest: engine.twilio.wsconn receive_message (the server's layer)",
                 statistics.median(trio.run(_ingest_wsconn, blob, len(media)) for _ in range(repeat))))
    return rows


def bench_rtzr_send(pcm: np.ndarray, repeat: int) -> list[tuple[str, float]]:
    """RTZR audio: LINEAR16 8 kHz in batches of send_batch_ms (the default), per 20 ms of audio."""
    from wsproto.connection import Connection, ConnectionType

    from engine.rtzr.wsclient import encode_frame

    raw = pcm.astype("<i2").tobytes()
    step = 8 * 2 * BATCH_MS
    batches = [raw[i:i + step] for i in range(0, len(raw) - step, step)]

    def encode_only() -> int:
        conn = Connection(ConnectionType.CLIENT)
        for b in batches:
            conn.send(BytesMessage(b))
        return len(batches) * BATCH_MS // 20

    def encode_ours() -> int:
        for b in batches:
            encode_frame(0x2, b, os.urandom(4))
        return len(batches) * BATCH_MS // 20

    rows = [(f"RTZR frame encode: wsproto, {BATCH_MS} ms batch (masking), per 20 ms", timed(encode_only, repeat)),
            (f"RTZR frame encode: wsclient.encode_frame + os.urandom, {BATCH_MS} ms batch, per 20 ms",
             timed(encode_ours, repeat))]
    rows.append(("RTZR frame send: trio-websocket send_message over loopback, per 20 ms",
                 trio.run(bench_trio_ws_send, batches, repeat)))
    rows.append(("RTZR send as RtzrSocket ran it before: budgets.send + Lock + trio-websocket send_message",
                 trio.run(bench_trio_ws_rtzr_send, batches, repeat)))
    rows.append(("RTZR frame send: engine.rtzr.wsclient send_bytes over loopback (RtzrSocket's layer), per 20 ms",
                 trio.run(bench_wsclient_send, batches, repeat)))
    return rows


def run(repeat: int, frames_n: int) -> list[tuple[str, float]]:
    audio = load_audio(str(_common.DEMO_WAV))
    frames = frames_of(audio)
    while len(frames) < frames_n:
        frames = frames + frames
    frames = frames[:frames_n]
    rows = bench_sync(frames, repeat)
    rows.append(("whole reader path: parse + Call.on_event (decode, resample, endpoint, buffer)",
                 bench_call(frames, repeat)))
    rows.extend(bench_rtzr_send(mulaw.decode(b"".join(frames)), repeat))
    _head, media = twilio_messages(frames)
    rows.extend(bench_ingest(media, max(3, repeat // 2)))
    rows.extend(bench_ingest_many(media, max(3, repeat // 2)))
    return rows


def table(rows: list[tuple[str, float]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'stage':<{width}}  µs/frame  calls/core", f"{'-' * width}  --------  ----------"]
    for name, us in rows:
        # One call sends 50 frames/s: a stage costing `us` per frame alone caps a core at 20000/us calls.
        lines.append(f"{name:<{width}}  {us:8.2f}  {20000 / us:10.0f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = run(args.repeat, args.frames)
    if args.json:
        print(json.dumps({name: round(us, 3) for name, us in rows}, ensure_ascii=False))
    else:
        print(f"hot path, {args.frames} frames of the demo call, median of {args.repeat} runs; {_common.machine()}")
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A light Twilio Media Streams load generator for the benchmarks (its own process).

The same wire as ``sori simulate-call`` (connected, start, 160-byte μ-law media frames every 20 ms with
sequence numbers, chunks and timestamps, stop, close), but built for hundreds of calls per core:
bare wsproto on trio sockets and one ticker instead of one timer per call. Calls are spread over
10 phase groups 2 ms apart, as independent Twilio calls would be, instead of all sending in the
same instant. Prints one JSON document: per call its ``t0_wall`` (Unix time at which audio position 0
started, so frame k is sent at ``t0_wall + (k + 1) * 20 ms``), and the sender's own lag.

    python bench/loadgen.py ws://127.0.0.1:8080/twilio/media --calls 50 --audio a.wav b.wav --repeat 1
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import _common  # sets sys.path
import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

from engine.twilio.protocol import (
    SILENCE,
    ConnectedMessage,
    InboundMedia,
    MediaFormat,
    MediaMessage,
    StartInfo,
    StartMessage,
    StopInfo,
    StopMessage,
    encode,
)
from engine.twilio.simulator import frames_of, load_audio

FRAME_S = 0.020
GROUPS = 10


@dataclass
class Conn:
    index: int
    name: str
    frames: list[bytes]
    stream: trio.SocketStream | None = None
    ws: wsproto.WSConnection = field(default_factory=lambda: wsproto.WSConnection(wsproto.ConnectionType.CLIENT))
    stream_sid: str = ""
    call_sid: str = ""
    account_sid: str = ""
    seq: int = 0
    sent: int = 0
    t0: float = 0.0  # trio clock: audio position 0
    error: str | None = None
    done: trio.Event = field(default_factory=trio.Event)
    closed: trio.Event = field(default_factory=trio.Event)
    # The ticker and the reader (answering a close or ping) both write: one at a time.
    send_lock: trio.StrictFIFOLock = field(default_factory=trio.StrictFIFOLock)

    def next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)


class Ticker:
    """Sends one frame for every active call of the current phase group every 2 ms."""

    def __init__(self) -> None:
        self.groups: list[list[Conn]] = [[] for _ in range(GROUPS)]
        self.lag: list[float] = []
        self.pending: list[Conn] = []

    async def run(self, start: float) -> None:
        tick = 0
        step = FRAME_S / GROUPS
        while True:
            due = start + tick * step
            await trio.sleep_until(due)
            self.lag.append(trio.current_time() - due)
            group = self.groups[tick % GROUPS]
            for conn in list(group):
                if conn.t0 == 0.0:
                    conn.t0 = due - FRAME_S
                await self._send_frame(conn, group)
            tick += 1

    async def _send_frame(self, conn: Conn, group: list[Conn]) -> None:
        assert conn.stream is not None
        try:
            if conn.sent < len(conn.frames):
                k = conn.sent
                msg = encode(MediaMessage(stream_sid=conn.stream_sid, sequence_number=conn.next_seq(), media=InboundMedia(
                    chunk=str(k + 1), timestamp=str(40 + k * 20), payload=conn.frames[k], track="inbound")))
                conn.sent += 1
                async with conn.send_lock:
                    await conn.stream.send_all(conn.ws.send(TextMessage(msg)))
                return
            group.remove(conn)
            stop = encode(StopMessage(stream_sid=conn.stream_sid, sequence_number=conn.next_seq(),
                                      stop=StopInfo(account_sid=conn.account_sid, call_sid=conn.call_sid)))
            async with conn.send_lock:
                await conn.stream.send_all(conn.ws.send(TextMessage(stop)))
            conn.done.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, wsproto.utilities.LocalProtocolError) as exc:
            if conn in group:
                group.remove(conn)
            conn.error = f"send: {type(exc).__name__}"
            conn.done.set()


async def run_call(conn: Conn, host: str, port: int, path: str, ticker: Ticker, rng: random.Random) -> None:
    conn.stream_sid = f"MZ{rng.getrandbits(128):032x}"
    conn.call_sid = f"CA{rng.getrandbits(128):032x}"
    conn.account_sid = f"AC{rng.getrandbits(128):032x}"
    try:
        with trio.fail_after(20):
            conn.stream = await trio.open_tcp_stream(host, port)
            await conn.stream.send_all(conn.ws.send(Request(host=f"{host}:{port}", target=path,
                                                            extra_headers=[(b"User-Agent", b"Twilio.TmeWs/1.0")])))
            accepted = False
            while not accepted:
                data = await conn.stream.receive_some(65536)
                if not data:
                    raise ConnectionError("closed during handshake")
                conn.ws.receive_data(data)
                for event in conn.ws.events():
                    if isinstance(event, RejectConnection):
                        raise ConnectionError(f"rejected {event.status_code}")
                    if isinstance(event, AcceptConnection):
                        accepted = True
            head = [encode(ConnectedMessage()), encode(StartMessage(
                stream_sid=conn.stream_sid, sequence_number=conn.next_seq(), start=StartInfo(
                    stream_sid=conn.stream_sid, account_sid=conn.account_sid, call_sid=conn.call_sid,
                    tracks=["inbound"], custom_parameters={"corpus": conn.name}, media_format=MediaFormat())))]
            # connected carries no sequence number; start is 1
            await conn.stream.send_all(b"".join(conn.ws.send(TextMessage(m)) for m in head))
    except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        conn.error = f"connect: {type(exc).__name__}: {exc}"
        conn.done.set()
        conn.closed.set()
        return
    ticker.groups[conn.index % GROUPS].append(conn)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_reader, conn)
        await conn.done.wait()
        with trio.move_on_after(30):
            await conn.closed.wait()
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(conn.stream)


async def _reader(conn: Conn) -> None:
    assert conn.stream is not None
    try:
        while True:
            data = await conn.stream.receive_some(65536)
            if not data:
                break
            conn.ws.receive_data(data)
            for event in conn.ws.events():
                if isinstance(event, CloseConnection):
                    if conn.ws.state == wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        async with conn.send_lock:
                            await conn.stream.send_all(conn.ws.send(event.response()))
                    conn.closed.set()
                    return
                if isinstance(event, Ping):
                    async with conn.send_lock:
                        await conn.stream.send_all(conn.ws.send(event.response()))
    except (trio.BrokenResourceError, trio.ClosedResourceError, wsproto.utilities.RemoteProtocolError):
        pass
    conn.closed.set()


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    audio = {p: frames_of(load_audio(p)) for p in args.audio}
    silence = frames_of(bytes([SILENCE]) * (args.trailing_silence_ms * 8))
    conns: list[Conn] = []
    for i in range(args.calls):
        p = args.audio[i % len(args.audio)]
        frames: list[bytes] = []
        for _ in range(args.repeat):
            frames += audio[p]
        conns.append(Conn(i, p, frames + silence))
    ticker = Ticker()
    rng = random.Random(args.seed)
    wall_offset = time.time() - trio.current_time()
    began = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run, trio.current_time())
        async with trio.open_nursery() as calls:
            for conn in conns:
                calls.start_soon(run_call, conn, host, port, path, ticker, rng)
                await trio.sleep(args.stagger_ms / 1000)
        nursery.cancel_scope.cancel()
    lags = sorted(ticker.lag)
    return {
        "calls": [{"index": c.index, "audio": c.name, "stream_sid": c.stream_sid, "call_sid": c.call_sid,
                   "t0_wall": c.t0 + wall_offset, "frames_sent": c.sent, "error": c.error} for c in conns],
        "ok": sum(c.error is None for c in conns),
        "sender_lag_ms_p50": 1000 * _common.percentile(lags, 50) if lags else 0.0,
        "sender_lag_ms_p99": 1000 * _common.percentile(lags, 99) if lags else 0.0,
        "duration_s": round(time.monotonic() - began, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--audio", nargs="+", required=True)
    p.add_argument("--repeat", type=int, default=1, help="play each call's audio this many times")
    p.add_argument("--stagger-ms", type=float, default=10.0)
    p.add_argument("--trailing-silence-ms", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="-")
    args = p.parse_args()
    doc = trio.run(main_async, args)
    text = json.dumps(doc)
    if args.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The driver processes of bench/answer_latency.py: simulated Twilio callers, and the answering application.

Split across processes so that the rig is not the limit at 100 calls (one Python process for 100 callers
and the application fell 214 ms behind). Every process stamps with ``time.monotonic()`` (CLOCK_MONOTONIC,
one clock for the whole machine on Linux), so the parent can subtract times taken in different processes.

- ``caller``: the calls given in the spec, on raw sockets; frames pre-encoded once; ONE ticker per
  process sends every call's due frames with a synchronous non-blocking write (no task wake-up per frame);
  a receive task per call stamps the first media frame of each answer (the first ``media`` after the start
  or after a ``mark``) and echoes marks at once (as if played: the answers are short).
- ``app``: one application-channel connection subscribed to every call; on each ``speech.ended`` it writes a
  pre-encoded ``play`` (200 ms of μ-law) for that call at once, and stamps when the event arrived.

Each process also reports its own lag: the callers' per-frame sender lag (sent − due), the application's
ticker lag (a 5 ms sleep loop's oversleep), so the parent can mark a run invalid when the rig fell behind.

    python bench/answer_driver.py caller SPEC.json OUT.json
    python bench/answer_driver.py app SPEC.json OUT.json
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
import wsproto
from loadgen import client_text_frame
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request, TextMessage

from engine.audio import mulaw
from engine.twilio.protocol import (
    ConnectedMessage,
    InboundMedia,
    MarkInfo,
    MarkMessage,
    MediaFormat,
    MediaMessage,
    StartInfo,
    StartMessage,
    StopMessage,
    encode,
)

SECRET = "bench-app-secret"
SID_MARK = "MZ" + "#" * 10  # the length of the bench's streamSids (MZbench00000)
PHRASE = Path(__file__).resolve().parents[1] / "engine" / "demo" / "phrases" / "thanks.wav"
ANSWER = mulaw.encode((np.sin(np.arange(1600) / 4) * 6000).astype(np.int16))  # 200 ms
SLOT_S = 0.005  # default: calls start on 5 ms slots (4 phases per 20 ms), one ticker wake-up per slot


def call_audio(turns: int, gap_ms: int) -> bytes:
    with wave.open(str(PHRASE), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    one = np.concatenate([pcm, np.zeros(gap_ms * 8, np.int16)])
    return mulaw.encode(np.concatenate([np.zeros(400 * 8, np.int16), *([one] * turns)]))


def encode_frames(audio: bytes) -> list[bytes]:
    """Every media message of a call, framed once, with a placeholder streamSid of the same length."""
    return [client_text_frame(encode(MediaMessage(
        stream_sid=SID_MARK, sequence_number=str(i + 2),
        media=InboundMedia(chunk=str(i + 1), timestamp=str(i * 20), payload=audio[i * 160:(i + 1) * 160]))).encode())
        for i in range(len(audio) // 160)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class RawWriter:
    """Non-blocking writes in order on one socket: what the kernel does not take now waits for the next write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""
        self.stalls = 0

    def write(self, data: bytes) -> None:
        self.pending += data
        try:
            n = os.write(self.fd, self.pending)
        except BlockingIOError:
            n = 0
        if n < len(self.pending):
            self.stalls += 1
        self.pending = self.pending[n:]


async def ws_connect(port: int, target: str, headers: list[tuple[bytes, bytes]]) -> tuple[trio.SocketStream, wsproto.WSConnection, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = wsproto.WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target=target, extra_headers=headers)))
    while True:
        ws.receive_data(await stream.receive_some(65536))
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return stream, ws, b""
            if isinstance(event, RejectConnection):
                raise RuntimeError(f"{target} rejected: {event.status_code}")


# -- callers ----------------------------------------------------------------------------------------
@dataclass
class Call:
    sid: str
    start: float  # monotonic time of its first frame's due time − 20 ms
    frames: list[bytes]
    writer: RawWriter | None = None
    next_frame: int = 0
    sent: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)  # monotonic time of each answer's first frame
    done: trio.Event = field(default_factory=trio.Event)


async def receive_call(stream: trio.SocketStream, ws: wsproto.WSConnection, call: Call) -> None:
    expecting = True  # the next media message is the first frame of an answer
    buffer = ""
    while True:
        data = await stream.receive_some(65536)
        now = time.monotonic()
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if not isinstance(event, TextMessage):
                continue
            buffer += event.data
            if not event.message_finished:
                continue
            text, buffer = buffer, ""
            if '"event":"media"' in text:
                if expecting:
                    call.answers.append(now)
                    expecting = False
            elif '"event":"mark"' in text:
                name = json.loads(text)["mark"]["name"]
                assert call.writer is not None
                call.writer.write(client_text_frame(encode(MarkMessage(stream_sid=call.sid, mark=MarkInfo(name=name))).encode()))
                expecting = True


async def run_callers(spec: dict[str, Any]) -> dict[str, Any]:
    slot = spec["slot_s"]
    frames = encode_frames(call_audio(spec["turns"], spec["gap_ms"]))
    calls = [Call(sid, start, [f.replace(SID_MARK.encode(), sid.encode(), 1) for f in frames])
             for sid, start in zip(spec["sids"], spec["starts"], strict=True)]
    base = await ready_then_go(spec)
    for call in calls:
        call.start += base
    streams: list[trio.SocketStream] = []
    port = spec["port"]
    async with trio.open_nursery() as nursery:
        offset = trio.current_time() - time.monotonic()  # trio time = monotonic + offset

        async def open_call(call: Call) -> None:
            """Connect 0.5 s before the call's first frame, send ``connected`` + ``start`` 0.1 s before it."""
            await trio.sleep_until(call.start - 0.5 + offset)
            stream, ws, _ = await ws_connect(port, "/twilio/media", [])
            streams.append(stream)
            writer = RawWriter(stream.socket.fileno())
            nursery.start_soon(receive_call, stream, ws, call)
            await trio.sleep_until(call.start - 0.1 + offset)
            writer.write(client_text_frame(encode(ConnectedMessage()).encode()))
            writer.write(client_text_frame(encode(StartMessage(stream_sid=call.sid, sequence_number="1", start=StartInfo(
                stream_sid=call.sid, call_sid="CA" + call.sid[2:], media_format=MediaFormat()))).encode()))
            call.writer = writer  # from now on the ticker sends its frames

        for call in calls:
            nursery.start_soon(open_call, call)
        # One ticker for every call: each wake-up sends every frame due (late ones included, with their lag).
        live = list(calls)
        tick = min(c.start for c in calls) + 0.02
        while live:
            await trio.sleep_until(tick + offset)
            now = time.monotonic()
            for call in live:
                while call.writer is not None and call.next_frame < len(call.frames):
                    due = call.start + (call.next_frame + 1) * 0.02
                    if due > now + 1e-4:
                        break
                    call.writer.write(call.frames[call.next_frame])
                    t = time.monotonic()
                    call.sent.append(t)
                    call.lags.append((t - due) * 1000)
                    call.next_frame += 1
            for call in [c for c in live if c.next_frame == len(c.frames)]:
                live.remove(call)
                nursery.start_soon(finish_call, call)
            tick += slot
            behind = time.monotonic() - tick
            if behind > 0:  # skip the slots already past (their frames go out, late, at the next wake-up)
                tick += (behind // slot + 1) * slot
        for call in calls:
            await call.done.wait()
        nursery.cancel_scope.cancel()
    for stream in streams:
        await trio.aclose_forcefully(stream)
    lags = [lag for c in calls for lag in c.lags]
    return {"calls": {c.sid: {"start": c.start, "sent": c.sent, "answers": c.answers} for c in calls},
            "sender_lag_p50_p99_max": [round(pct(lags, 0.5), 3), round(pct(lags, 0.99), 3), round(max(lags, default=0), 3)],
            "write_stalls": sum(c.writer.stalls for c in calls if c.writer)}


async def finish_call(call: Call) -> None:
    await trio.sleep(0.5)
    assert call.writer is not None
    call.writer.write(client_text_frame(encode(StopMessage(stream_sid=call.sid)).encode()))
    await trio.sleep(0.3)
    call.done.set()


# -- the application ----------------------------------------------------------------------------------
async def run_app(spec: dict[str, Any]) -> dict[str, Any]:
    answer = base64.b64encode(ANSWER).decode()
    plays = {sid: client_text_frame(json.dumps({"type": "play", "stream_sid": sid, "audio": answer}).encode())
             for sid in spec["sids"]}
    stream, ws, _ = await ws_connect(spec["port"], "/app", [(b"Authorization", f"Bearer {SECRET}".encode())])
    writer = RawWriter(stream.socket.fileno())
    base = await ready_then_go(spec)
    stop_at = base + spec["stop_at"]
    turns: list[dict[str, Any]] = []
    lags: list[float] = []
    counts: dict[str, int] = {}

    async def ticker() -> None:
        """How late this process runs a task: the oversleep of a 5 ms sleep loop."""
        while time.monotonic() < stop_at:
            due = time.monotonic() + SLOT_S
            await trio.sleep(SLOT_S)
            if due > base + spec["record_from"]:  # from the first call's start (not the process's own start-up)
                lags.append((time.monotonic() - due) * 1000)

    async def receive() -> None:
        buffer = ""
        while True:
            data = await stream.receive_some(65536)
            now = time.monotonic()
            if not data:
                return
            counts["bytes"] = counts.get("bytes", 0) + len(data)
            ws.receive_data(data)
            for event in ws.events():
                counts[type(event).__name__] = counts.get(type(event).__name__, 0) + 1
                if not isinstance(event, TextMessage):
                    continue
                buffer += event.data
                if not event.message_finished:
                    continue
                text, buffer = buffer, ""
                if '"speech.ended"' not in text:
                    continue
                msg = json.loads(text)
                writer.write(plays[msg["stream_sid"]])
                turns.append({"sid": msg["stream_sid"], "end_ms": msg["end_ms"], "last_speech_ms": msg["last_speech_ms"],
                              "event_at": now, "play_at": time.monotonic()})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await ticker()
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(stream)
    return {"turns": turns, "ticker_lag_p50_p99_max": [round(pct(lags, 0.5), 3), round(pct(lags, 0.99), 3),
                                                       round(max(lags, default=0), 3)], "write_stalls": writer.stalls, "received": counts}


async def ready_then_go(spec: dict[str, Any]) -> float:
    """Tell the parent this process is set up (``<out>.ready``), wait for its go (``go``: the common base time)."""
    Path(spec["out"] + ".ready").write_text("1")
    go = Path(spec["go"])
    while not go.exists():
        await trio.sleep(0.01)
    return float(go.read_text())


def main() -> None:
    role, spec_path, out_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    spec["out"] = out_path
    result = trio.run(run_callers if role == "caller" else run_app, spec)
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()

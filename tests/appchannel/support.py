"""Test helpers: an engine with the application channel, a Twilio peer driven step by step, an app client."""

from __future__ import annotations

import base64
import json
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import trio
from trio_websocket import WebSocketConnection, open_websocket

from engine import events as ev
from engine.app import Engine, serve
from engine.audio import mulaw
from engine.config import Config, cli_overrides, load
from engine.rtzr.emulator import EmulatorConfig
from engine.rtzr.emulator.local import in_process
from engine.twilio.protocol import (
    ConnectedMessage,
    DtmfInfo,
    DtmfMessage,
    InboundMedia,
    InboundMessage,
    MarkInfo,
    MarkMessage,
    MediaFormat,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    OutboundMessage,
    StartInfo,
    StartMessage,
    StopMessage,
    decode_outbound,
    encode,
)

SECRET = "s3cret-for-tests"
DEMO = Path(__file__).resolve().parents[2] / "engine" / "demo"


def make_config(*assignments: str) -> Config:
    return load(environ={"SORI_APP_SECRET": SECRET}, cli=cli_overrides([
        "server.port=0", "server.admin_port=0", "server.allow_unsigned=true", "sinks.jsonl=",
        "app_channel.enabled=true", "app_channel.port=0", "endpointing.end_ms=200", *assignments]))


def phrase_pcm(name: str = "diary.wav") -> np.ndarray:
    with wave.open(str(DEMO / "phrases" / name), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def silence(ms: int) -> bytes:
    return b"\xff" * (ms * 8)


class Collector:
    """Every event the engine emitted (the embedding API's on_event), with waits on conditions."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.changed = trio.Event()
        self.hook: Callable[[ev.Event], None] | None = None

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)
        if self.hook is not None:
            self.hook(event)
        self.changed.set()
        self.changed = trio.Event()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(self, pred: Callable[[], Any]) -> Any:
        while not (result := pred()):
            await self.changed.wait()
        return result


@asynccontextmanager
async def running_engine(config: Config) -> AsyncIterator[tuple[Engine, Collector]]:
    collector = Collector()
    emu = EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=20, final_ms=60)
    async with trio.open_nursery() as nursery:
        engine: Engine = await nursery.start(
            lambda task_status: serve(config, on_event=collector, stt=in_process(emu), handle_signals=False,
                                      task_status=task_status))
        yield engine, collector
        engine.shutdown()
        engine.shutdown()


class TwilioPeer:
    """Twilio's side of one stream, one message at a time; echoes marks as soon as they arrive (no audio
    is really played here) unless ``echo_marks`` is False."""

    def __init__(self, ws: WebSocketConnection, stream_sid: str = "MZtest0001", call_sid: str = "CAtest0001") -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.seq = 0
        self.chunk = 0
        self.received: list[OutboundMessage] = []
        self.changed = trio.Event()
        self.echo_marks = True
        self.closed = False

    async def send(self, message: InboundMessage) -> None:
        if not isinstance(message, ConnectedMessage):
            self.seq += 1
            message.sequence_number = str(self.seq)
        await self.ws.send_message(encode(message))

    async def start(self) -> None:
        await self.send(ConnectedMessage())
        await self.send(StartMessage(stream_sid=self.stream_sid, start=StartInfo(
            stream_sid=self.stream_sid, call_sid=self.call_sid, account_sid="ACtest", media_format=MediaFormat())))

    async def audio(self, data: bytes) -> None:
        for i in range(0, len(data), 160):
            self.chunk += 1
            await self.send(_media(self.stream_sid, self.chunk, data[i:i + 160].ljust(160, b"\xff")))

    async def dtmf(self, digit: str) -> None:
        await self.send(DtmfMessage(stream_sid=self.stream_sid, dtmf=DtmfInfo(digit=digit)))

    async def echo(self, name: str) -> None:
        await self.send(MarkMessage(stream_sid=self.stream_sid, mark=MarkInfo(name=name)))

    async def stop(self) -> None:
        await self.send(StopMessage(stream_sid=self.stream_sid))

    async def receive_loop(self) -> None:
        try:
            while True:
                message = decode_outbound(await self.ws.get_message())
                self.received.append(message)
                if isinstance(message, OutboundMark) and self.echo_marks:
                    await self.echo(message.mark.name)
                self.changed.set()
                self.changed = trio.Event()
        except Exception:
            self.closed = True
            self.changed.set()

    def media_bytes(self) -> int:
        return sum(len(m.media.payload) for m in self.received if isinstance(m, OutboundMedia))

    def count(self, kind: type[Any]) -> int:
        return sum(isinstance(m, kind) for m in self.received)

    async def wait(self, pred: Callable[[], Any]) -> Any:
        while not (result := pred()):
            await self.changed.wait()
        return result


def _media(sid: str, chunk: int, payload: bytes) -> InboundMessage:
    from engine.twilio.protocol import MediaMessage

    return MediaMessage(stream_sid=sid, media=InboundMedia(chunk=str(chunk), timestamp=str(chunk * 20), payload=payload))


@asynccontextmanager
async def twilio_peer(engine: Engine, nursery: trio.Nursery, **kwargs: str) -> AsyncIterator[TwilioPeer]:
    async with open_websocket("127.0.0.1", engine.twilio.port or 0, engine.config.twilio.path, use_ssl=False) as ws:
        peer = TwilioPeer(ws, **kwargs)
        nursery.start_soon(peer.receive_loop)
        await peer.start()
        yield peer


class AppClient:
    """An application on the channel: collects what sori sends, sends commands."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.changed = trio.Event()
        self.reading = True

    async def receive_loop(self) -> None:
        try:
            while True:
                self.messages.append(json.loads(await self.ws.get_message()))
                self.changed.set()
                self.changed = trio.Event()
        except Exception:
            self.changed.set()

    async def send(self, **command: Any) -> None:
        await self.ws.send_message(json.dumps(command))

    async def play(self, stream_sid: str, audio: bytes, **kw: Any) -> None:
        await self.send(type="play", stream_sid=stream_sid, audio=base64.b64encode(audio).decode(), **kw)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def wait(self, pred: Callable[[], Any]) -> Any:
        while not (result := pred()):
            await self.changed.wait()
        return result


@asynccontextmanager
async def app_client(engine: Engine, nursery: trio.Nursery, *, call: str | None = None, read: bool = True,
                     secret: str = SECRET) -> AsyncIterator[AppClient]:
    resource = engine.config.app_channel.path + (f"?call={call}" if call else "")
    assert engine.app_channel is not None
    async with open_websocket("127.0.0.1", engine.app_channel.port or 0, resource, use_ssl=False,
                              extra_headers=[(b"Authorization", f"Bearer {secret}".encode())],
                              message_queue_size=1) as ws:
        client = AppClient(ws)
        if read:
            nursery.start_soon(client.receive_loop)
        yield client


def mulaw_of(pcm: np.ndarray) -> bytes:
    return mulaw.encode(pcm)


__all__ = ["OutboundClear", "OutboundMark", "OutboundMedia"]

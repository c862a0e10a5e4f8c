"""Test support: a real server on 127.0.0.1:0 under a real CallHost, and a recording handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import trio

from engine.audio import mulaw
from engine.config import Config
from engine.media import AudioReceived, MediaEvent, StreamStopped
from engine.metrics import Registry
from engine.nursery import CallHost
from engine.twilio.server import CallHandler, TwilioServer, TwilioSession

TOKEN = "test-auth-token-123"


class RecordingHandler:
    """Counts decoded samples (numpy, no per-sample loop) and records every event and the close."""

    def __init__(self, session: TwilioSession) -> None:
        self.session = session
        self.events: list[MediaEvent] = []
        self.pcm: list[np.ndarray] = []
        self.samples = 0
        self.filled_bytes = 0
        self.close_reasons: list[str] = []
        self.saw_stop = False
        self.done = trio.Event()
        self.run_returned = False

    def on_event(self, event: MediaEvent) -> None:
        self.events.append(event)
        if isinstance(event, AudioReceived):
            pcm = mulaw.decode(event.payload)
            self.pcm.append(pcm)
            self.samples += len(pcm)
            if event.filled:
                self.filled_bytes += len(event.payload)
        elif isinstance(event, StreamStopped):
            self.saw_stop = True

    async def run(self) -> None:
        await self.done.wait()
        self.run_returned = True

    def on_close(self, reason: str) -> None:
        self.close_reasons.append(reason)
        self.done.set()

    def audio(self) -> np.ndarray:
        return np.concatenate(self.pcm) if self.pcm else np.zeros(0, np.int16)


@dataclass
class Running:
    port: int
    host: CallHost
    handlers: list[RecordingHandler]
    metrics: Registry
    server: TwilioServer

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/media"


def make_config(**server: object) -> Config:
    cfg = Config()
    cfg.server.host = "127.0.0.1"
    cfg.server.port = 0
    cfg.twilio.auth_token = TOKEN
    for key, value in server.items():
        section, _, name = key.partition("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


@asynccontextmanager
async def running_server(
    config: Config | None = None,
    factory: Callable[[TwilioSession], CallHandler] | None = None,
) -> AsyncIterator[Running]:
    config = config or make_config()
    metrics = Registry()
    handlers: list[RecordingHandler] = []

    def default_factory(session: TwilioSession) -> CallHandler:
        handler = RecordingHandler(session)
        handlers.append(handler)
        return handler

    async with trio.open_nursery() as calls:
        host = CallHost(calls, metrics)
        server = TwilioServer(config, host=host, handler_factory=factory or default_factory, metrics=metrics)
        async with trio.open_nursery() as serving:
            port = await serving.start(server.run)
            yield Running(port, host, handlers, metrics, server)
            serving.cancel_scope.cancel()
        with trio.move_on_after(5):
            await host.wait_idle()
        calls.cancel_scope.cancel()

"""The reliability rig: the real engine (``engine.app.build``) against the real RTZR emulator, in-process.

The emulator runs in its own cancel scope so a test can stop it and start a new one on the same port;
the auth endpoint can be routed through :class:`TcpGate`, a forwarder a test can shut (connection
refused) and reopen. :class:`Ledger` records every event and does the accounting the suite is about:
each utterance that started is delivered (a ``transcript.final``), reported (an ``error`` naming it)
or lost.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import trio

from engine import events as ev
from engine.app import Engine, build
from engine.config import Config, cli_overrides, load
from engine.rtzr.emulator import Emulator, EmulatorConfig
from engine.twilio.protocol import SILENCE
from engine.twilio.simulator import CallReport, load_audio, simulate_call

DEMO = Path(__file__).resolve().parents[2] / "engine" / "demo"
TWILIO_TOKEN = "twilio-auth-" + secrets.token_hex(12)
WEBHOOK_SECRET = "webhook-secret-" + secrets.token_hex(12)
RTZR_SECRET = "rtzr-client-secret-" + secrets.token_hex(12)
RTZR_ID = "rtzr-client-id"


# ----------------------------------------------------------------------------------------------- audio
@cache
def phrase(name: str) -> bytes:
    """One bundled phrase clip as 8 kHz μ-law (the emulator's phrasebook knows it)."""
    return load_audio(DEMO / "phrases" / f"{name}.wav")


@cache
def demo_call() -> bytes:
    """The bundled 10.4 s call: four phrases (see engine/demo/call.json)."""
    return load_audio(DEMO / "call.wav")


DEMO_TEXTS = ["안녕 오늘 일지 쓰려", "오늘 밤", "먹었어", "모르겠어"]
TEXTS = {"ate": "먹었어", "dunno": "모르겠어", "tonight": "오늘 밤", "thanks": "고마워요", "wait": "잠깐만요",
         "okay": "네 알겠습니다", "diary": "안녕 오늘 일지 쓰려"}


def quiet(ms: int) -> bytes:
    return bytes([SILENCE]) * (ms * 8)


def script(*names: str, gap_ms: int = 700, lead_ms: int = 300) -> tuple[bytes, list[str]]:
    """Phrases separated by silence: (μ-law audio, expected texts in order)."""
    audio = quiet(lead_ms)
    for name in names:
        audio += phrase(name) + quiet(gap_ms)
    return audio, [TEXTS[n] for n in names]


# ----------------------------------------------------------------------------------------------- ledger
@dataclass
class Account:
    """Per-utterance outcome counts: every started utterance is delivered, reported, or lost."""

    started: int = 0
    delivered: int = 0
    reported: int = 0
    lost: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"started={self.started} delivered={self.delivered} reported={self.reported} lost={len(self.lost)}"


class Ledger:
    """Every event the engine emitted, with the accounting helpers the tests assert on."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._ended: dict[str, trio.Event] = {}
        self.changed = trio.Event()

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)
        if isinstance(event, ev.CallEnded):
            self._ended.setdefault(event.stream_sid, trio.Event()).set()
        self.changed.set()
        self.changed = trio.Event()

    def of(self, kind: type[Any], stream_sid: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (stream_sid is None or e.stream_sid == stream_sid)]

    def finals(self, stream_sid: str | None = None) -> list[ev.TranscriptFinal]:
        return self.of(ev.TranscriptFinal, stream_sid)

    def texts(self, stream_sid: str) -> list[str]:
        return [f.text for f in self.finals(stream_sid)]

    def errors(self, stream_sid: str | None = None) -> list[ev.ErrorEvent]:
        return self.of(ev.ErrorEvent, stream_sid)

    def ended(self, stream_sid: str) -> ev.CallEnded | None:
        found = self.of(ev.CallEnded, stream_sid)
        return found[0] if found else None

    async def wait_ended(self, stream_sids: list[str], timeout: float) -> None:
        with trio.fail_after(timeout):
            for sid in stream_sids:
                await self._ended.setdefault(sid, trio.Event()).wait()

    def account(self, stream_sid: str | None = None) -> Account:
        acc = Account()
        finals = {f.utterance_id for f in self.finals(stream_sid)}
        reported = {e.utterance_id for e in self.errors(stream_sid) if e.utterance_id}
        for s in self.of(ev.SpeechStarted, stream_sid):
            acc.started += 1
            if s.utterance_id in finals:
                acc.delivered += 1
            elif s.utterance_id in reported:
                acc.reported += 1
            else:
                acc.lost.append(s.utterance_id)
        return acc


# ----------------------------------------------------------------------------------------------- emulator
class EmulatorControl:
    """Runs an emulator in its own cancel scope: stop it, start a fresh one on the same port."""

    def __init__(self, nursery: trio.Nursery, config: EmulatorConfig) -> None:
        self.nursery = nursery
        self.config = config
        self.emulator: Emulator | None = None
        self.port = config.port
        self.history: list[Emulator] = []
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None

    async def start(self) -> Emulator:
        import msgspec

        emu = Emulator(msgspec.structs.replace(self.config, port=self.port))
        self._scope, self._done = await self.nursery.start(_scoped, emu)
        self.emulator = emu
        self.port = emu.port
        self.history.append(emu)
        return emu

    async def stop(self) -> None:
        assert self._scope is not None and self._done is not None
        self._scope.cancel()
        await self._done.wait()

    def total(self, stat: str) -> int:
        return sum(int(getattr(e.stats, stat)) for e in self.history)


async def _scoped(emu: Emulator, *, task_status: Any) -> None:
    done = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as n:
                await n.start(emu.run)
                task_status.started((scope, done))
    finally:
        done.set()


class TcpGate:
    """A loopback TCP forwarder to ``target_port`` that a test can shut (refusing connections) and reopen."""

    def __init__(self, nursery: trio.Nursery, target_port: int) -> None:
        self.nursery = nursery
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._scope: trio.CancelScope | None = None

    async def up(self) -> None:
        self._scope = await self.nursery.start(self._serve)

    async def down(self) -> None:
        """Close the listener and every forwarded connection: the next connect is refused."""
        assert self._scope is not None
        self._scope.cancel()
        self._scope = None
        await trio.sleep(0)

    async def _serve(self, *, task_status: Any) -> None:
        with trio.CancelScope() as scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as n:
                await n.start(trio.serve_listeners, self._forward, listeners)
                task_status.started(scope)

    async def _forward(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            with trio.fail_after(10):
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except (OSError, trio.TooSlowError):
            await client.aclose()
            return

        async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
            try:
                async for chunk in src:
                    await dst.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(dst)

        async with client, upstream, trio.open_nursery() as n:
            n.start_soon(pump, client, upstream)
            n.start_soon(pump, upstream, client)


# ----------------------------------------------------------------------------------------------- the rig
def fast_emulator(**kw: Any) -> EmulatorConfig:
    """A quick emulator (short handshake and final delay) with the rig's credentials."""
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "handshake_ms": 10, "final_ms": 40, "interim_ms": 300,
                            "max_sessions": 20, "client_id": RTZR_ID, "client_secret": RTZR_SECRET}
    base.update(kw)
    return EmulatorConfig(**base)


@dataclass
class Rig:
    engine: Engine
    config: Config
    ledger: Ledger
    emu: EmulatorControl
    gate: TcpGate | None
    nursery: trio.Nursery
    done: trio.Event

    @property
    def url(self) -> str:
        return self.engine.twilio_url

    @property
    def metrics(self) -> Any:
        return self.engine.metrics

    def metric(self, name: str, *labels: str) -> float:
        return self.engine.metrics.value(name, *labels)

    async def call(self, audio: bytes, *, wait_s: float = 15.0, **kw: Any) -> CallReport:
        """One signed simulated call (fast unless told); returns once the engine emitted ``call.ended``."""
        kw.setdefault("speed", "fast")
        report = await simulate_call(self.url, audio, auth_token=TWILIO_TOKEN, **kw)
        assert report.ok, report.summary()
        await self.ledger.wait_ended([report.stream_sid], wait_s)
        return report

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful drain (bounded by the drain budget), then make sure everything stopped."""
        self.engine.shutdown()
        with trio.move_on_after(timeout):
            await self.done.wait()
        if not self.done.is_set():
            self.engine.shutdown()  # second request: cancel at once
            with trio.fail_after(5):
                await self.done.wait()


def rig_config(emu: Emulator, auth_base: str, *sets: str) -> Config:
    return load(environ={}, cli=cli_overrides([
        "server.port=0", "server.admin_port=0", "sinks.jsonl=", f"twilio.auth_token={TWILIO_TOKEN}",
        f"rtzr.api_base={auth_base}", f"rtzr.ws_url={emu.ws_url}", f"rtzr.client_id={RTZR_ID}",
        f"rtzr.client_secret={RTZR_SECRET}", "rtzr.pool.max_sessions=20", "rtzr.pool.token_min_remaining_ms=0",
        "budgets.drain=5000",
        # one utterance per demo phrase (its words are 90 ms apart; end_ms 80 would make each word a
        # continuation): these tests are about faults, the continuation policy is tested in tests/pipeline
        "endpointing.end_ms=200", *sets]))


@asynccontextmanager
async def rig(*sets: str, emulator: EmulatorConfig | None = None, gate: bool = False, handle_signals: bool = False,
              on_event: Callable[[ev.Event], None] | None = None, emulator_up: bool = True,
              gate_up: bool = True) -> AsyncIterator[Rig]:
    """Emulator (+ optional auth gate) + engine, ready; ``sets`` are ``section.key=value`` overrides.

    ``emulator_up=False`` reserves the emulator's port but leaves it down (start it with ``rig.emu.start()``).
    """
    ledger = Ledger()

    def record(event: ev.Event) -> None:
        ledger(event)
        if on_event is not None:
            on_event(event)

    async with trio.open_nursery() as nursery:
        control = EmulatorControl(nursery, emulator or fast_emulator())
        emu = await control.start()
        if not emulator_up:
            await control.stop()
        tcp_gate = None
        auth_base = emu.api_base
        if gate:
            tcp_gate = TcpGate(nursery, emu.port)
            await tcp_gate.up()
            if not gate_up:
                await tcp_gate.down()
            auth_base = f"http://127.0.0.1:{tcp_gate.port}"
        config = rig_config(emu, auth_base, *sets)
        engine = build(config, on_event=record, handle_signals=handle_signals, stt_service=emu)
        done = trio.Event()
        await nursery.start(_supervise, engine, done)
        r = Rig(engine, config, ledger, control, tcp_gate, nursery, done)
        try:
            yield r
        finally:
            with trio.CancelScope(shield=True):
                await r.stop()
            nursery.cancel_scope.cancel()


async def _supervise(engine: Engine, done: trio.Event, *, task_status: Any) -> None:
    try:
        await engine.supervisor.run(task_status=task_status)
    finally:
        done.set()


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


def tally(case: str, **counts: object) -> None:
    """Append one outcome line to $SORI_REL_TALLY (JSON lines) when set: the numbers in RELIABILITY.md."""
    import json
    import os

    path = os.environ.get("SORI_REL_TALLY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"case": case, **counts}, ensure_ascii=False) + "\n")


def tally_account(case: str, ledger: Ledger, stream_sid: str | None = None, **extra: object) -> None:
    acc = ledger.account(stream_sid)
    recovered = sum(1 for f in ledger.finals(stream_sid) if f.replayed)
    tally(case, utterances=acc.started, delivered=acc.delivered, replayed=recovered, reported=acc.reported,
          lost=len(acc.lost), **extra)

"""Assembles the engine: token manager, RTZR pool, sinks, admin and Twilio servers under the supervisor.

``serve(config, on_event=...)`` is the embedding API (run it with ``trio.run`` or inside your own
nursery with ``nursery.start``); ``sori serve`` and ``sori demo`` use it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from engine.admin import AdminServer
from engine.budgets import Budgets
from engine.call import Call
from engine.config import Config
from engine.events import Event
from engine.log import get_logger
from engine.metrics import Registry
from engine.nursery import CallHost, Supervisor
from engine.rtzr import RtzrPool, TokenManager
from engine.sinks import EventSinks
from engine.twilio.server import TwilioServer, TwilioSession

log = get_logger(__name__)


@dataclass
class Engine:
    """Handles to a running engine (for tests, the demo and benchmarks)."""

    config: Config
    supervisor: Supervisor
    metrics: Registry
    sinks: EventSinks
    pool: RtzrPool
    tokens: TokenManager
    twilio: TwilioServer
    admin: AdminServer
    emulator: object | None = None

    @property
    def twilio_url(self) -> str:
        """The local WebSocket URL of the Twilio endpoint."""
        return f"ws://{self.config.server.host}:{self.twilio.port}{self.config.twilio.path}"

    def shutdown(self) -> None:
        """Graceful drain (a second call cancels at once), as SIGTERM does."""
        self.supervisor.request_shutdown()


async def serve(
    config: Config,
    *,
    on_event: Callable[[Event], None] | None = None,
    stt: str = "rtzr",
    handle_signals: bool = True,
    emulator_config: Any = None,
    task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the engine until drained.

    ``stt="emulator"`` starts the RTZR emulator in-process (``emulator_config``: an
    ``engine.rtzr.emulator.EmulatorConfig``; default: loopback, 100 ms handshake, 150 ms final).
    """
    async with trio.open_nursery() as outer:
        emulator = None
        if stt == "emulator":
            from engine.rtzr.emulator import Emulator, EmulatorConfig

            emu_config = emulator_config or EmulatorConfig(host="127.0.0.1", port=0)
            emulator = await outer.start(Emulator(emu_config).run)
            config = msgspec.structs.replace(config, rtzr=msgspec.structs.replace(
                config.rtzr, api_base=emulator.api_base, ws_url=emulator.ws_url,
                client_id=emulator.config.client_id, client_secret=emulator.config.client_secret))
            log.warning("stt_emulator_in_use", api_base=emulator.api_base,
                        notice="TRANSCRIPTS ARE EMULATED: the RTZR emulator is running in-process, not the real RTZR")
        engine = build(config, on_event=on_event, handle_signals=handle_signals, emulator=emulator)
        await outer.start(_run_then_cancel, engine, outer.cancel_scope)
        task_status.started(engine)


async def _run_then_cancel(engine: Engine, scope: trio.CancelScope, *,
                           task_status: trio.TaskStatus[CallHost] = trio.TASK_STATUS_IGNORED) -> None:
    await engine.supervisor.run(task_status=task_status)
    scope.cancel()  # the supervisor has drained: stop the in-process emulator too


def build(config: Config, *, on_event: Callable[[Event], None] | None = None, handle_signals: bool = True,
          emulator: object | None = None) -> Engine:
    """Create every component; nothing runs until ``engine.supervisor.run``."""
    metrics = Registry()
    budgets = Budgets(config.budgets)
    tokens = TokenManager(config.rtzr, budgets, metrics)
    pool = RtzrPool(config.rtzr, tokens, budgets, metrics)
    sinks = EventSinks(config.sinks, metrics, on_event=on_event)
    supervisor = Supervisor([], budgets=budgets, metrics=metrics, handle_signals=handle_signals)

    live_streams: dict[str, int] = {}  # streamSid -> live sockets (Twilio has opened two for one call)

    def new_call(session: TwilioSession) -> Call:
        sid = session.stream_sid
        duplicate = live_streams.get(sid, 0)
        live_streams[sid] = duplicate + 1

        def ended() -> None:
            live_streams[sid] -= 1
            if not live_streams[sid]:
                del live_streams[sid]

        return Call(session.started, config=config, pool=pool, emit=sinks.emit, metrics=metrics, budgets=budgets,
                    stream_stats=session.stats, duplicate=duplicate, on_ended=ended)

    twilio = TwilioServer(config, host=supervisor, handler_factory=new_call, metrics=metrics, budgets=budgets)
    admin = AdminServer(config.server.admin_host, config.server.admin_port, metrics,
                        supervisor.draining.is_set)
    supervisor.services = [tokens, pool, sinks, admin, twilio]
    return Engine(config, supervisor, metrics, sinks, pool, tokens, twilio, admin, emulator)


async def run_engine(config: Config, stt: str = "rtzr") -> None:
    """``sori serve``: the engine with JSONL/webhook sinks until SIGTERM/SIGINT."""
    await serve(config, stt=stt)

"""Assembles the engine: token manager, RTZR pool, sinks, admin and Twilio servers under the supervisor.

``serve(config, on_event=...)`` is the embedding API (run it with ``trio.run`` or inside your own
nursery with ``nursery.start``); ``sori serve`` and ``sori demo`` use it too. ``engine.control(stream_sid)``
is the application's handle on a live call (play, mark, clear, stop), the same one the application channel
(``app_channel``, a WebSocket on its own listener) drives.

Start order: admin first (so /livez and /metrics answer, and /readyz explains what is missing, while
the RTZR pool warms up; a taken admin port also fails fast, before any RTZR socket is opened), then
the token manager, the pool, the sinks, and the Twilio listener last (a call is accepted only once
everything it needs is up).
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from engine.admin import AdminServer, Readiness
from engine.appchannel import AppChannelServer, AppHub
from engine.budgets import Budgets
from engine.call import Call
from engine.config import Config
from engine.events import Event
from engine.log import get_logger
from engine.metrics import Registry
from engine.nursery import Service, StartupError, Supervisor, root_cause
from engine.playback_driver import CallControl, ControlledCall
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
    readiness: Readiness
    emulator: object | None = None
    hub: AppHub | None = None
    app_channel: AppChannelServer | None = None
    controls: dict[str, CallControl] = field(default_factory=dict)

    def control(self, stream_sid: str) -> CallControl | None:
        """The live call's handle (``play``, ``mark``, ``clear``, ``stop``), from its ``call.started`` on."""
        return self.controls.get(stream_sid)

    @property
    def app_url(self) -> str:
        """The local WebSocket URL of the application channel (when enabled)."""
        assert self.app_channel is not None, "app_channel.enabled is false"
        return f"ws://{self.config.app_channel.host}:{self.app_channel.port}{self.config.app_channel.path}"

    @property
    def twilio_url(self) -> str:
        """The local WebSocket URL of the Twilio endpoint."""
        return f"ws://{self.config.server.host}:{self.twilio.port}{self.config.twilio.path}"

    def not_ready_reason(self) -> str | None:
        """What /readyz answers: None when ready, else the first failing reason."""
        return self.readiness.reason()

    async def wait_ready(self) -> None:
        """Return once /readyz would answer 200; bound it with a deadline."""
        await self.readiness.wait()

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
    after_start: Callable[[Engine], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the engine until drained.

    ``stt="emulator"`` starts the RTZR emulator in-process (``emulator_config``: an
    ``engine.rtzr.emulator.EmulatorConfig``; default: loopback, 100 ms handshake, 150 ms final).

    Reports started once every service has started (the pool may still be warming: await
    ``engine.wait_ready()`` for readiness). Raises :class:`engine.nursery.StartupError` if a service
    cannot start (a port already in use). If shutdown is requested during start-up (SIGTERM), it
    returns without reporting started.

    ``after_start(engine)``, if given, runs as a task beside the engine once it has started, and is
    cancelled when the engine has drained (``run_engine`` uses it to freeze the heap once ready).
    """
    try:
        async with trio.open_nursery() as outer:
            emulator = None
            if stt == "emulator":
                emulator = await _start_emulator(outer, emulator_config)
                config = msgspec.structs.replace(config, rtzr=msgspec.structs.replace(
                    config.rtzr, api_base=emulator.api_base, ws_url=emulator.ws_url,
                    client_id=emulator.config.client_id, client_secret=emulator.config.client_secret))
                log.warning("stt_emulator_in_use", api_base=emulator.api_base,
                            notice="TRANSCRIPTS ARE EMULATED: the RTZR emulator is running in-process, not the real RTZR")
            engine = build(config, on_event=on_event, handle_signals=handle_signals, emulator=emulator)
            outer.start_soon(_run_then_cancel, engine, outer.cancel_scope)
            await engine.supervisor.ready.wait()  # cancelled if the supervisor stops during start-up
            if after_start is not None:
                outer.start_soon(after_start, engine)
            task_status.started(engine)
    except BaseExceptionGroup as group:
        cause = root_cause(group)
        if isinstance(cause, StartupError):
            raise cause from cause.cause
        raise


async def _start_emulator(nursery: trio.Nursery, emulator_config: Any) -> Any:
    from engine.rtzr.emulator import Emulator, EmulatorConfig

    emu_config = emulator_config or EmulatorConfig(host="127.0.0.1", port=0)
    try:
        return await nursery.start(Emulator(emu_config).run)
    except Exception as exc:
        raise StartupError("rtzr emulator", root_cause(exc), (emu_config.host, emu_config.port)) from exc


async def _run_then_cancel(engine: Engine, scope: trio.CancelScope) -> None:
    await engine.supervisor.run()
    scope.cancel()  # the supervisor has drained (or stopped during start-up): stop the in-process emulator too


def build(config: Config, *, on_event: Callable[[Event], None] | None = None, handle_signals: bool = True,
          emulator: object | None = None) -> Engine:
    """Create every component; nothing runs until ``engine.supervisor.run``."""
    metrics = Registry()
    budgets = Budgets(config.budgets)
    tokens = TokenManager(config.rtzr, budgets, metrics)
    pool = RtzrPool(config.rtzr, tokens, budgets, metrics)
    sinks = EventSinks(config.sinks, metrics, on_event=on_event)
    controls: dict[str, CallControl] = {}
    hub = AppHub(controls, metrics)
    app_channel = AppChannelServer(config.app_channel, hub, metrics=metrics, budgets=budgets) \
        if config.app_channel.enabled else None
    listen = {AdminServer.name: (config.server.admin_host, config.server.admin_port),
              TwilioServer.name: (config.server.host, config.server.port)}
    if app_channel is not None:
        listen[AppChannelServer.name] = (config.app_channel.host, config.app_channel.port)

    def emit(event: Event) -> None:
        """The engine's one emit path: the sinks (and on_event), then the application channel."""
        sinks.emit(event)
        hub.publish(event)
    supervisor = Supervisor([], budgets=budgets, metrics=metrics, handle_signals=handle_signals,
                            listen_addresses=listen)

    live_streams: dict[str, int] = {}  # streamSid -> live sockets (Twilio has opened two for one call)

    def new_call(session: TwilioSession) -> ControlledCall:
        sid = session.stream_sid
        duplicate = live_streams.get(sid, 0)
        live_streams[sid] = duplicate + 1
        control = CallControl(session, config.playback, emit, metrics)
        controls.setdefault(sid, control)  # a duplicate socket of a live stream is not addressable

        def ended() -> None:
            live_streams[sid] -= 1
            if not live_streams[sid]:
                del live_streams[sid]

        def control_ended() -> None:
            if controls.get(sid) is control:
                del controls[sid]

        def call_emit(event: Event) -> None:
            emit(event)
            control.on_engine_event(event)  # barge-in: after speech.started went out

        call = Call(session.started, config=config, pool=pool, emit=call_emit, metrics=metrics, budgets=budgets,
                    stream_stats=session.stats, duplicate=duplicate, on_ended=ended)
        return ControlledCall(call, control, on_ended=control_ended)

    twilio = TwilioServer(config, host=supervisor, handler_factory=new_call, metrics=metrics, budgets=budgets)
    readiness = engine_readiness(supervisor, tokens, twilio, pool)
    admin = AdminServer(config.server.admin_host, config.server.admin_port, metrics, readiness.reason)
    services: list[Service] = [admin, tokens, pool, sinks, twilio]
    if app_channel is not None:
        services.insert(-1, app_channel)  # applications can connect before the first call
    supervisor.services = services
    return Engine(config, supervisor, metrics, sinks, pool, tokens, twilio, admin, readiness, emulator,
                  hub=hub, app_channel=app_channel, controls=controls)


def engine_readiness(supervisor: Supervisor, tokens: TokenManager, twilio: TwilioServer, pool: RtzrPool) -> Readiness:
    """The /readyz contract, in order: not draining, a valid RTZR token, the Twilio listener bound,
    the RTZR pool holding its spares (or at least one idle socket)."""

    def not_draining() -> str | None:
        return "draining" if supervisor.draining.is_set() else None

    def twilio_bound() -> str | None:
        return None if supervisor.is_running(twilio.name) else "Twilio listener not bound"

    return Readiness([not_draining, tokens.not_ready_reason, twilio_bound, pool.not_ready_reason])


# Garbage-collector policy (process-wide, so applied by the daemon only: see ServerConfig.gc_policy and
# docs/architecture.md, "GC policy"). CPython's default (700, 10, 10) runs a gen-0 collection every 700 net
# container allocations, i.e. several times per 20 ms tick at 200 calls, and a full collection that walks the
# whole heap every 70 000: those pauses were most of the frame-lag tail at 150–200 calls (issue 13).
GC_THROUGHPUT_THRESHOLDS = (50_000, 50, 100)


def apply_gc_policy(policy: str) -> bool:
    """Set the collector's thresholds for ``policy``; True when the heap should be frozen once ready."""
    if policy == "throughput":
        gc.set_threshold(*GC_THROUGHPUT_THRESHOLDS)
        return True
    return False


async def freeze_when_ready(engine: Engine) -> None:
    """Once the engine is first ready (services started, pool warm): collect, then freeze what survived.

    Frozen objects (modules, config, services, pool sockets) are never scanned by later collections, so a
    full collection costs only what calls allocated since.
    """
    await engine.wait_ready()
    gc.collect()
    gc.freeze()
    log.info("gc_frozen", objects=gc.get_freeze_count(), threshold=list(gc.get_threshold()))


async def run_engine(config: Config, stt: str = "rtzr", *,
                     task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
    """``sori serve``: the engine with JSONL/webhook sinks until SIGTERM/SIGINT, under ``server.gc_policy``."""
    freeze = apply_gc_policy(config.server.gc_policy)
    await serve(config, stt=stt, after_start=freeze_when_ready if freeze else None, task_status=task_status)

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
from typing import Protocol

import trio

from engine.admin import AdminServer, Readiness
from engine.appchannel import AppChannelServer, AppHub
from engine.budgets import Budgets
from engine.call import Call
from engine.config import Config, ServerConfig
from engine.events import Event
from engine.log import get_logger
from engine.memory import malloc_policy, trim_heap_every
from engine.metrics import Registry
from engine.nursery import Service, StartupError, Supervisor, root_cause
from engine.playback_driver import CallControl, ControlledCall
from engine.report.live import LiveStatus
from engine.rtzr import RtzrPool, TokenManager
from engine.rtzr.budget import session_budget
from engine.sinks import EventSinks
from engine.task_steps import TaskSteps
from engine.twilio.server import TwilioServer, TwilioSession, stream_started

log = get_logger(__name__)


class SttLauncher(Protocol):
    """Starts a local STT service beside the engine, for development and tests (the RTZR emulator:
    ``engine.rtzr.emulator.local.in_process()``; ``sori serve --stt emulator`` and ``sori demo`` wire it).

    It starts the service in ``nursery`` (cancelled once the engine has drained) and returns the config
    that points the engine at it, and a handle to the service (``Engine.stt_service``). It raises
    :class:`engine.nursery.StartupError` if the service cannot start.
    """

    async def __call__(self, nursery: trio.Nursery, config: Config, /) -> tuple[Config, object]: ...


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
    stt_service: object | None = None  # what an SttLauncher started (the in-process emulator), if any
    hub: AppHub | None = None
    app_channel: AppChannelServer | None = None
    controls: dict[str, CallControl] = field(default_factory=dict)

    @property
    def emulator(self) -> object | None:
        """The in-process STT service (the RTZR emulator in tests and the demo); None on the real RTZR."""
        return self.stt_service

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
    stt: SttLauncher | str | None = None,
    handle_signals: bool = True,
    after_start: Callable[[Engine], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the engine until drained.

    ``stt``: None (or ``"rtzr"``) for the STT in ``config.rtzr``; an :class:`SttLauncher` to start a local
    one first, e.g. ``stt=engine.rtzr.emulator.local.in_process(EmulatorConfig(...))`` (the RTZR emulator
    in-process; loopback, 100 ms handshake, 150 ms final by default).

    Reports started once every service has started (the pool may still be warming: await
    ``engine.wait_ready()`` for readiness). Raises :class:`engine.nursery.StartupError` if a service
    cannot start (a port already in use). If shutdown is requested during start-up (SIGTERM), it
    returns without reporting started.

    ``after_start(engine)``, if given, runs as a task beside the engine once it has started, and is
    cancelled when the engine has drained (``run_engine`` uses it to freeze the heap once ready and to
    trim the C heap periodically).
    """
    launcher = _launcher(stt)
    try:
        async with trio.open_nursery() as outer:
            stt_service = None
            if launcher is not None:
                config, stt_service = await launcher(outer, config)
            engine = build(config, on_event=on_event, handle_signals=handle_signals, stt_service=stt_service)
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


def _launcher(stt: SttLauncher | str | None) -> SttLauncher | None:
    if stt is None or stt == "rtzr":
        return None
    if isinstance(stt, str):  # the engine knows no emulator by name: the CLI, the demo and tests wire one
        raise TypeError(f"stt={stt!r}: pass None for config.rtzr, or an SttLauncher "
                         "(the emulator: stt=engine.rtzr.emulator.local.in_process())")
    return stt


async def _run_then_cancel(engine: Engine, scope: trio.CancelScope) -> None:
    await engine.supervisor.run()
    scope.cancel()  # the supervisor has drained (or stopped during start-up): stop a launched STT service too


def build(config: Config, *, on_event: Callable[[Event], None] | None = None, handle_signals: bool = True,
          stt_service: object | None = None) -> Engine:
    """Create every component; nothing runs until ``engine.supervisor.run``."""
    metrics = Registry()
    budgets = Budgets(config.budgets)
    tokens = TokenManager(config.rtzr, budgets, metrics)
    pool = RtzrPool(config.rtzr, tokens, budgets, metrics,
                    session_budget(config.redis, config.rtzr.pool.max_sessions, metrics))
    sinks = EventSinks(config.sinks, metrics, on_event=on_event)
    controls: dict[str, CallControl] = {}
    hub = AppHub(controls, metrics)
    app_channel = AppChannelServer(config.app_channel, hub, metrics=metrics, budgets=budgets) \
        if config.app_channel.enabled else None
    listen = {AdminServer.name: (config.server.admin_host, config.server.admin_port),
              TwilioServer.name: (config.server.host, config.server.port)}
    if app_channel is not None:
        listen[AppChannelServer.name] = (config.app_channel.host, config.app_channel.port)
    supervisor = Supervisor([], budgets=budgets, metrics=metrics, handle_signals=handle_signals,
                            listen_addresses=listen)

    live_streams: dict[str, int] = {}  # streamSid -> live sockets (Twilio has opened two for one call)
    live = LiveStatus(pool, tokens, metrics)  # the admin /status page (issue 15)

    def emit(event: Event) -> None:
        """The engine's one emit path: the live status page, the sinks (and on_event), the application channel."""
        live.observe(event)
        sinks.emit(event)
        hub.publish(event)

    def new_call(session: TwilioSession) -> ControlledCall:
        sid = session.stream_sid
        duplicate = live_streams.get(sid, 0)
        live_streams[sid] = duplicate + 1
        started = stream_started(session.started)
        control = CallControl(session, config.playback, emit, metrics, bytes_per_ms=started.bytes_per_ms)
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

        call = Call(started, config=config, pool=pool, emit=call_emit, metrics=metrics,
                    budgets=budgets,
                    stream_stats=session.stats, duplicate=duplicate, on_ended=ended)
        return ControlledCall(call, control, on_ended=control_ended)

    twilio = TwilioServer(config, host=supervisor, handler_factory=new_call, metrics=metrics, budgets=budgets)
    readiness = engine_readiness(supervisor, tokens, twilio, pool)
    admin = AdminServer(config.server.admin_host, config.server.admin_port, metrics, readiness.reason,
                        status=lambda: live.page(readiness.reason(), draining=supervisor.draining.is_set()))
    services: list[Service] = [admin, tokens, pool, sinks, twilio]
    if app_channel is not None:
        services.insert(-1, app_channel)  # applications can connect before the first call
    supervisor.services = services
    return Engine(config, supervisor, metrics, sinks, pool, tokens, twilio, admin, readiness, stt_service,
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


def apply_memory_policy(server: ServerConfig) -> Callable[[], int] | None:
    """The daemon's malloc policy (engine/memory.py): the trim to run every ``server.malloc_trim_interval_ms``,
    or None (off, or not glibc); logged either way."""
    trim, said = malloc_policy(server.malloc_trim_interval_ms)
    log.info("malloc_policy", policy=said)
    return trim


async def run_engine(config: Config, stt: SttLauncher | None = None, *,
                     task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
    """``sori serve``: the engine with JSONL/webhook sinks until SIGTERM/SIGINT, under ``server.gc_policy``
    and ``server.malloc_trim_interval_ms``."""
    freeze = apply_gc_policy(config.server.gc_policy)
    trim = apply_memory_policy(config.server)
    steps_ms = config.server.task_steps_slow_ms

    async def after_start(engine: Engine) -> None:
        if steps_ms > 0:  # the diagnostic instrument (engine/task_steps.py), on until the run ends
            trio.lowlevel.add_instrument(TaskSteps(engine.metrics, steps_ms))
        if freeze:
            await freeze_when_ready(engine)
        if trim is not None:
            await trim_heap_every(config.server.malloc_trim_interval_ms / 1000, trim)

    await serve(config, stt=stt, after_start=after_start if freeze or trim is not None or steps_ms > 0 else None,
                task_status=task_status)

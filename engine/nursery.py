"""The supervisor: the root nursery that owns services, the calls nursery, and the drain.

Shape (see docs/architecture.md)::

    Supervisor.run ── root nursery
    ├── services nursery   each service started in order with ``nursery.start`` (ready means ready),
    │                      restarted with capped exponential backoff when it fails after having started
    ├── calls nursery      one child task (with its own nursery) per call; a failing call is logged
    │                      and never disturbs another call or a service
    └── signal watcher     SIGTERM/SIGINT → drain; a second signal cancels at once

Start-up: a service that fails before it first reports started (a port already taken, a bad host)
is a start-up failure, not something a restart can fix: the supervisor cancels what it had started,
drains nothing, and raises :class:`StartupError` (the CLI prints it as one line and exits 1). Only a
service that fails *after* having started once is restarted with backoff. A shutdown requested
during start-up (SIGTERM while the pool warms up) cancels the start-up at once: there are no calls
to drain yet.

Drain: set ``draining`` (the Twilio server stops accepting, /readyz answers 503), wait for live calls
to finish up to ``budgets.drain``, cancel the calls still running, then cancel the services (each
service closes its own resources in a shielded cleanup with a deadline).
"""

from __future__ import annotations

import random
import signal
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import trio

from engine.budgets import Budgets
from engine.log import get_logger
from engine.metrics import Registry

log = get_logger(__name__)


class Service(Protocol):
    """A long-lived component run by the supervisor (token manager, RTZR pool, sinks, servers)."""

    name: str

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None: ...


class StartupError(Exception):
    """A service failed before it first reported started: the engine cannot run.

    ``address`` is the (host, port) the service listens on, when it has one, so that a bind
    failure reads ``cannot listen on 127.0.0.1:9090 (admin): [Errno 98] Address already in use``.
    """

    def __init__(self, service: str, cause: BaseException, address: tuple[str, int] | None = None) -> None:
        self.service = service
        self.cause = cause
        self.address = address
        super().__init__(_describe_startup_failure(service, cause, address))


def _describe_startup_failure(service: str, cause: BaseException, address: tuple[str, int] | None) -> str:
    if address is not None and isinstance(cause, OSError):
        host, port = address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"cannot listen on {where} ({service}): {cause}"
    detail = str(cause) if isinstance(cause, OSError) else f"{type(cause).__name__}: {cause}"
    return f"cannot start {service}: {detail}"


def root_cause(exc: BaseException) -> BaseException:
    """The exception inside trio's ExceptionGroup wrappers (the first one that is not a Cancelled)."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)] or list(exc.exceptions)
        exc = inner[0]
    return exc


class Backoff:
    """Capped exponential backoff with jitter; ``reset()`` after a service has been stable."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0, factor: float = 2.0, jitter: float = 0.1,
                 rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return base * (1.0 + self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0


class CallHost:
    """What the Twilio server needs from the supervisor: where calls run, and whether we drain."""

    def __init__(self, calls_nursery: trio.Nursery, metrics: Registry | None = None,
                 draining: trio.Event | None = None) -> None:
        self.calls_nursery = calls_nursery
        self.draining = draining if draining is not None else trio.Event()
        self.live_calls = 0
        self._idle = trio.Event()
        self._idle.set()
        self._metrics = metrics or Registry()
        self._live_gauge = self._metrics.gauge("calls_live", "calls currently running")

    @contextmanager
    def track_call(self, key: str) -> Iterator[None]:
        """Count a live call for its whole lifetime; the drain waits until none is left."""
        self.live_calls += 1
        self._live_gauge.set(self.live_calls)
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            yield
        finally:
            self.live_calls -= 1
            self._live_gauge.set(self.live_calls)
            if self.live_calls == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return when no call is live."""
        while self.live_calls:
            await self._idle.wait()

    def spawn(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` as a call task; its failure is logged and contained."""
        self.calls_nursery.start_soon(_contained, name, fn, self._metrics, name=name)


async def _contained(name: str, fn: Callable[[], Awaitable[None]], metrics: Registry) -> None:
    try:
        await fn()
    except Exception as exc:
        metrics.counter("call_crashes_total", "calls ended by an unexpected exception").inc()
        log.error("call_crashed", call=name, exc=exc)


class Supervisor:
    """Runs services and calls under one root nursery, with restarts and a two-phase shutdown."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        budgets: Budgets,
        metrics: Registry | None = None,
        handle_signals: bool = True,
        backoff_initial: float = 0.5,
        backoff_cap: float = 30.0,
        stable_after: float = 60.0,
        listen_addresses: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        self.services = list(services)
        self.budgets = budgets
        self.metrics = metrics or Registry()
        self.handle_signals = handle_signals
        self.backoff_initial = backoff_initial
        self.backoff_cap = backoff_cap
        self.stable_after = stable_after
        self.listen_addresses = dict(listen_addresses or {})  # service name -> (host, port), for StartupError
        self._shutdown = trio.Event()
        self.draining = trio.Event()
        self.ready = trio.Event()  # every service has reported started (set once, never cleared)
        self._running: set[str] = set()  # services up now (started and not failed since)
        self._shutdown_requests = 0
        self._root: trio.Nursery | None = None
        self.host: CallHost | None = None
        self.restarts = self.metrics.counter("service_restarts_total", "service restarts after a failure")

    # -- control -------------------------------------------------------------------------------
    def request_shutdown(self) -> None:
        """Before ready: stop start-up at once. Then, first call: graceful drain; second: cancel at once."""
        self._shutdown_requests += 1
        if not self.ready.is_set():
            log.info("shutdown_requested", mode="abort_startup")
            self._shutdown.set()
            if self._root is not None:
                self._root.cancel_scope.cancel()
        elif self._shutdown_requests == 1:
            log.info("shutdown_requested", mode="drain", drain_ms=self.budgets.drain.ms)
            self._shutdown.set()
        elif self._root is not None:
            log.warning("shutdown_requested", mode="immediate")
            self._root.cancel_scope.cancel()

    def is_running(self, name: str) -> bool:
        """Whether service ``name`` is up now: it reported started and has not failed or exited since."""
        return name in self._running

    # -- the CallHost view, so the Twilio server can be built before the supervisor runs ----------
    @property
    def calls_nursery(self) -> trio.Nursery:
        return self._require_host().calls_nursery

    @property
    def live_calls(self) -> int:
        return self.host.live_calls if self.host is not None else 0

    def track_call(self, key: str) -> AbstractContextManager[None]:
        return self._require_host().track_call(key)

    def _require_host(self) -> CallHost:
        if self.host is None:
            raise RuntimeError("the supervisor is not running yet")
        return self.host

    # -- run -----------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[CallHost] = trio.TASK_STATUS_IGNORED) -> None:
        """Start calls nursery and services in order, report ready, then run until drained.

        Raises :class:`StartupError` if a service fails before it first reports started. Returns
        without reporting started if a shutdown is requested during start-up.
        """
        failure: StartupError | None = None
        async with trio.open_nursery() as root:
            self._root = root
            if self._shutdown.is_set():  # asked to stop before we even began
                root.cancel_scope.cancel()
            if self.handle_signals:
                root.start_soon(self._watch_signals)
            services = await root.start(_hold_nursery)
            calls = await root.start(_hold_nursery)
            host = self.host = CallHost(calls.nursery, self.metrics, self.draining)
            try:
                for service in self.services:
                    await services.nursery.start(self._supervise, service)
            except StartupError as exc:
                failure = exc
                log.error("engine_start_failed", service=exc.service, reason=str(exc))
                root.cancel_scope.cancel()  # stop what had started; there are no calls to drain
            else:
                self.ready.set()
                log.info("engine_ready", services=",".join(s.name for s in self.services))
                task_status.started(host)
                await self._shutdown.wait()
                host.draining.set()
                await self._drain(host, calls, services)
                root.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if not self.ready.is_set():
            log.info("engine_stopped_during_startup")

    async def _drain(self, host: CallHost, calls: _HeldNursery, services: _HeldNursery) -> None:
        live = host.live_calls
        with trio.move_on_after(self.budgets.drain.seconds) as scope:
            await host.wait_idle()
        if scope.cancelled_caught:
            log.warning("drain_deadline", cancelled_calls=host.live_calls, budget="drain")
            self.metrics.counter("drain_cancelled_calls_total", "calls cancelled at the drain deadline").inc(
                host.live_calls
            )
        else:
            log.info("drain_complete", calls=live)
        await calls.close()
        await services.close()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal", signal=signal.Signals(signum).name)
                self.request_shutdown()

    async def _supervise(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Run a service; a failure before its first start is a StartupError, after it a restart with backoff."""
        backoff = Backoff(self.backoff_initial, self.backoff_cap)
        started_once = False
        while True:
            started_at = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(_run_service, service)
                    self._running.add(service.name)
                    log.info("service_started", service=service.name)
                    if not started_once:
                        started_once = True
                        task_status.started()
                log.warning("service_exited", service=service.name)
            except Exception as exc:
                cause = root_cause(exc)
                if not started_once:
                    raise StartupError(service.name, cause, self.listen_addresses.get(service.name)) from cause
                log.error("service_failed", service=service.name, exc=cause)
            finally:
                self._running.discard(service.name)
            self.restarts.inc()
            if trio.current_time() - started_at >= self.stable_after:
                backoff.reset()
            delay = backoff.next_delay()
            log.info("service_restart_scheduled", service=service.name, delay_s=round(delay, 3))
            await trio.sleep(delay)


async def _run_service(service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    await service.run(task_status=task_status)


class _HeldNursery:
    """A nursery kept open by a task until ``close()`` cancels it and waits for it to finish."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.closed = trio.Event()

    async def close(self) -> None:
        self.nursery.cancel_scope.cancel()
        await self.closed.wait()


async def _hold_nursery(*, task_status: trio.TaskStatus[_HeldNursery] = trio.TASK_STATUS_IGNORED) -> None:
    held: _HeldNursery | None = None
    try:
        async with trio.open_nursery() as nursery:
            held = _HeldNursery(nursery)
            task_status.started(held)
            await trio.sleep_forever()
    finally:
        if held is not None:
            held.closed.set()

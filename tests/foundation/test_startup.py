"""Start-up failures and shutdown during start-up (the supervisor, with stand-in services).

A service that fails before it first reports started stops the engine with a StartupError (no
endless restart loop); a shutdown requested while a start is blocked returns at once.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

import pytest
import trio
import trio.testing

from engine.budgets import Budgets
from engine.config import BudgetsConfig
from engine.nursery import StartupError, Supervisor, root_cause


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []


class Steady:
    """Starts at once and runs until cancelled."""

    def __init__(self, name: str, rec: Recorder) -> None:
        self.name = name
        self.rec = rec
        self.runs = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        self.rec.events.append(f"{self.name}:started")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.rec.events.append(f"{self.name}:closed")


class BindFails:
    """Fails before reporting started, from inside a nursery (so trio wraps it in an ExceptionGroup)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runs = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        async with trio.open_nursery():
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


class BlockedStart:
    """Its start never completes (a warm-up stuck on a dead network)."""

    name = "blocked"

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.entered = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.entered.set()
        try:
            await trio.sleep_forever()
        finally:
            self.rec.events.append("blocked:cancelled")


class FailsOnSecondRun:
    """Starts, then fails once it has run a while; its restart then fails before started."""

    name = "flaky"

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.runs == 2:
            raise OSError(errno.EADDRINUSE, "taken for a moment")
        task_status.started()
        if self.runs == 1:
            await trio.sleep(1.0)
            raise RuntimeError("lost it")
        await trio.sleep_forever()


def budgets() -> Budgets:
    return Budgets(BudgetsConfig(drain=30_000))


async def test_a_service_failing_before_its_first_start_is_a_startup_error(
        autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    first, later = Steady("tokens", rec), Steady("twilio", rec)
    admin = BindFails("admin")
    sup = Supervisor([first, admin, later], budgets=budgets(), handle_signals=False,
                     listen_addresses={"admin": ("127.0.0.1", 9090)})
    with trio.fail_after(600):  # the old supervisor retried forever (8, 16, 32 s ...): this fired
        with pytest.raises(StartupError) as info:
            await sup.run()
    err = info.value
    assert admin.runs == 1  # not restarted
    assert err.service == "admin" and err.address == ("127.0.0.1", 9090)
    assert isinstance(err.cause, OSError) and err.cause.errno == errno.EADDRINUSE  # unwrapped from the group
    assert str(err) == f"cannot listen on 127.0.0.1:9090 (admin): [Errno {errno.EADDRINUSE}] " \
                       f"{os.strerror(errno.EADDRINUSE)}"
    assert rec.events == ["tokens:started", "tokens:closed"]  # what had started is stopped, the rest never starts
    assert later.runs == 0
    assert not sup.ready.is_set()


async def test_shutdown_while_a_start_is_blocked_finishes_at_once(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    blocked = BlockedStart(rec)
    sup = Supervisor([Steady("admin", rec), blocked], budgets=budgets(), handle_signals=False)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await blocked.entered.wait()
            t0 = trio.current_time()
            sup.request_shutdown()
    assert trio.current_time() - t0 == 0.0  # no drain budget spent: there are no calls yet
    assert rec.events[0] == "admin:started"
    assert sorted(rec.events[1:]) == ["admin:closed", "blocked:cancelled"]
    assert not sup.ready.is_set()


async def test_sigterm_while_a_start_is_blocked_stops_the_supervisor(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    blocked = BlockedStart(rec)
    sup = Supervisor([blocked], budgets=budgets(), handle_signals=True)
    with trio.fail_after(60):  # the old supervisor ignored SIGTERM until the start completed
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await blocked.entered.wait()
            await trio.testing.wait_all_tasks_blocked()  # the signal watcher is listening
            os.kill(os.getpid(), signal.SIGTERM)
    assert rec.events == ["blocked:cancelled"]


async def test_shutdown_requested_before_run_starts_nothing(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sup = Supervisor([Steady("admin", rec)], budgets=budgets(), handle_signals=False)
    sup.request_shutdown()
    with trio.fail_after(60):
        await sup.run()
    assert rec.events == []


async def test_a_service_that_had_started_is_restarted_even_if_a_restart_fails_to_start(
        autojump_clock: trio.testing.MockClock) -> None:
    flaky = FailsOnSecondRun()
    sup = Supervisor([flaky], budgets=budgets(), handle_signals=False, backoff_initial=1.0, backoff_cap=4.0)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert sup.is_running("flaky")
            while flaky.runs < 3 or not sup.is_running("flaky"):
                await trio.sleep(0.5)
            sup.request_shutdown()
    assert flaky.runs == 3
    assert sup.metrics.value("service_restarts_total") == 2


async def test_is_running_is_false_while_a_service_waits_to_restart(autojump_clock: trio.testing.MockClock) -> None:
    flaky = FailsOnSecondRun()
    sup = Supervisor([flaky], budgets=budgets(), handle_signals=False, backoff_initial=10.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert sup.is_running("flaky")
            await trio.sleep(2.0)  # mock clock: the service failed at 1.0 s and waits 10 s to restart
            assert flaky.runs == 1 and not sup.is_running("flaky")
            sup.request_shutdown()


def test_startup_error_messages() -> None:
    bind = OSError(errno.EADDRINUSE, "Address already in use")
    assert str(StartupError("twilio", bind, ("::1", 8080))) == \
        f"cannot listen on [::1]:8080 (twilio): [Errno {errno.EADDRINUSE}] Address already in use"
    assert str(StartupError("sinks", PermissionError(errno.EACCES, "Permission denied"))) == \
        f"cannot start sinks: [Errno {errno.EACCES}] Permission denied"
    assert str(StartupError("rtzr_pool", ValueError("bad query"), ("127.0.0.1", 1))) == \
        "cannot start rtzr_pool: ValueError: bad query"


def test_root_cause_skips_group_wrappers_and_cancellations() -> None:
    inner = OSError(errno.EADDRINUSE, "x")
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [inner])])
    assert root_cause(group) is inner
    assert root_cause(inner) is inner

"""Supervisor: ordered start, restart with backoff, drain on SIGTERM, second signal cancels at once."""

from __future__ import annotations

import itertools
import os
import signal
from typing import Any

import pytest
import trio
import trio.testing

from engine.admin import AdminServer
from engine.budgets import Budgets
from engine.config import BudgetsConfig
from engine.metrics import Registry
from engine.nursery import Backoff, CallHost, Supervisor


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []

    def add(self, what: str) -> None:
        self.events.append((trio.current_time(), what))

    def names(self) -> list[str]:
        return [what for _, what in self.events]


class SlowStartService:
    def __init__(self, name: str, rec: Recorder, delay: float) -> None:
        self.name = name
        self.rec = rec
        self.delay = delay

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.rec.add(f"{self.name}:starting")
        await trio.sleep(self.delay)
        self.rec.add(f"{self.name}:ready")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.rec.add(f"{self.name}:closed")


class CrashingService:
    name = "crashy"

    def __init__(self, rec: Recorder, crashes: int) -> None:
        self.rec = rec
        self.crashes = crashes
        self.runs = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        task_status.started()
        self.rec.add(f"run{self.runs}")
        if self.runs <= self.crashes:
            await trio.sleep(0.1)
            raise RuntimeError("boom")
        await trio.sleep_forever()


def budgets(drain_ms: int = 1000) -> Budgets:
    return Budgets(BudgetsConfig(drain=drain_ms))


async def test_services_start_in_order_and_ready_means_ready(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    services = [SlowStartService("auth", rec, 2.0), SlowStartService("pool", rec, 1.0), SlowStartService("server", rec, 0.5)]
    sup = Supervisor(services, budgets=budgets(), handle_signals=False)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            rec.add("engine:ready")
            sup.request_shutdown()
    assert rec.names()[:7] == [
        "auth:starting", "auth:ready", "pool:starting", "pool:ready", "server:starting", "server:ready", "engine:ready",
    ]
    assert {"auth:closed", "pool:closed", "server:closed"} <= set(rec.names())


async def test_crashing_service_restarts_with_backoff_and_calls_keep_running(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    crashy = CrashingService(rec, crashes=4)
    metrics = Registry()
    sup = Supervisor([crashy], budgets=budgets(), metrics=metrics, handle_signals=False,
                     backoff_initial=1.0, backoff_cap=4.0)
    ticks: list[float] = []

    async def fake_call() -> None:
        for _ in range(40):
            ticks.append(trio.current_time())
            await trio.sleep(0.5)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            host: CallHost = await nursery.start(sup.run)
            done = trio.Event()

            async def call() -> None:
                with host.track_call("CA1"):
                    await fake_call()
                done.set()

            host.spawn("CA1", call)
            await done.wait()
            sup.request_shutdown()
    starts = [t for t, what in rec.events if what.startswith("run")]
    assert crashy.runs == 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # crash after 0.1 s, then backoff 1, 2, 4, 4 (capped) with up to 10 % jitter
    for gap, expected in zip(gaps, [1.1, 2.1, 4.1, 4.1]):
        assert expected <= gap <= expected * 1.11
    assert len(ticks) == 40  # the call ran to completion undisturbed
    assert metrics.value("service_restarts_total") == 4


async def test_drain_lets_short_calls_finish_and_cancels_long_ones(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor([], budgets=budgets(drain_ms=5000), handle_signals=False)
    outcome: dict[str, str] = {}

    async def call(name: str, length: float) -> None:
        assert sup.host is not None
        with sup.host.track_call(name):
            try:
                await trio.sleep(length)
                outcome[name] = "finished"
            except trio.Cancelled:
                outcome[name] = "cancelled"
                raise

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            host: CallHost = await nursery.start(sup.run)
            host.spawn("short", lambda: call("short", 3.0))
            host.spawn("long", lambda: call("long", 100.0))
            await trio.sleep(1.0)
            t0 = trio.current_time()
            sup.request_shutdown()
            await trio.testing.wait_all_tasks_blocked()
            assert host.draining.is_set()
    assert outcome == {"short": "finished", "long": "cancelled"}
    assert trio.current_time() - t0 == pytest.approx(5.0)


async def test_drain_ends_early_when_calls_finish(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor([], budgets=budgets(drain_ms=30000), handle_signals=False)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            host: CallHost = await nursery.start(sup.run)

            async def call() -> None:
                with host.track_call("c"):
                    await trio.sleep(2.0)

            host.spawn("c", call)
            await trio.sleep(0.1)
            t0 = trio.current_time()
            sup.request_shutdown()
    assert trio.current_time() - t0 == pytest.approx(1.9)


async def test_second_request_cancels_at_once(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor([], budgets=budgets(drain_ms=30000), handle_signals=False)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            host: CallHost = await nursery.start(sup.run)

            async def call() -> None:
                with host.track_call("c"):
                    await trio.sleep(1000)

            host.spawn("c", call)
            sup.request_shutdown()
            await trio.sleep(1.0)
            t0 = trio.current_time()
            sup.request_shutdown()
    assert trio.current_time() - t0 == pytest.approx(0.0)


async def test_real_sigterm_drains_and_second_sigterm_cancels(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor([], budgets=budgets(drain_ms=30000), handle_signals=True)
    cancelled = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            host: CallHost = await nursery.start(sup.run)

            async def call() -> None:
                with host.track_call("c"):
                    try:
                        await trio.sleep(1000)
                    finally:
                        cancelled.set()

            host.spawn("c", call)
            await trio.testing.wait_all_tasks_blocked()
            os.kill(os.getpid(), signal.SIGTERM)
            while not host.draining.is_set():
                await trio.sleep(0.01)
            assert not cancelled.is_set()
            os.kill(os.getpid(), signal.SIGTERM)
            await cancelled.wait()


async def test_failing_call_is_contained(autojump_clock: trio.testing.MockClock) -> None:
    metrics = Registry()
    sup = Supervisor([], budgets=budgets(), metrics=metrics, handle_signals=False)
    survivor_done = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            host: CallHost = await nursery.start(sup.run)

            async def bad() -> None:
                raise ValueError("bad call")

            async def good() -> None:
                await trio.sleep(2)
                survivor_done.set()

            host.spawn("good", good)
            host.spawn("bad", bad)
            await survivor_done.wait()
            sup.request_shutdown()
    assert metrics.value("call_crashes_total") == 1


def test_backoff_is_capped_and_resets() -> None:
    b = Backoff(initial=0.5, cap=4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


async def test_admin_health_and_metrics_over_http() -> None:
    metrics = Registry()
    metrics.counter("things_total", "things").inc(3)
    reason: str | None = None
    admin = AdminServer("127.0.0.1", 0, metrics, lambda: reason)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(admin.run)

            async def get(path: str) -> bytes:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
                await stream.aclose()
                return data

            ok = await get("/healthz")
            assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"ok\n")
            text = await get("/metrics")
            assert b"sori_things_total 3" in text
            assert (await get("/nope")).startswith(b"HTTP/1.1 404")
            reason = "draining"
            drained = await get("/readyz")
            assert drained.startswith(b"HTTP/1.1 503") and drained.endswith(b"draining\n")
            assert (await get("/livez")).startswith(b"HTTP/1.1 200")
            nursery.cancel_scope.cancel()

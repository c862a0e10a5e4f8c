"""RtzrPools sharing one Redis budget against the emulator (which answers 429 past its session limit)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from engine.budgets import BudgetExpired
from engine.config import BudgetsConfig, RedisConfig
from engine.rtzr.budget import LocalSessionBudget, RedisSessionBudget, SessionBudget
from engine.rtzr.pool import Lease, RtzrPool
from engine.rtzr.stream import RtzrConnectError, RtzrSocketLost
from tests.rtzr.rtzr_env import Stack, emulator_config, stack, tone

from .redis_server import RedisServer

LIMIT = 5


async def utterance(lease: Lease, ms: int) -> str:
    await lease.send_audio(tone(ms))
    assert await lease.finalize()
    while True:
        r = await lease.receive()
        if r.final:
            return r.text


@asynccontextmanager
async def pools(s: Stack, budgets: list[SessionBudget]) -> AsyncIterator[list[RtzrPool]]:
    async with trio.open_nursery() as n:
        out = []
        for b in budgets:
            pool = RtzrPool(s.config, s.tokens, s.budgets, s.metrics, b)
            await n.start(pool.run)
            out.append(pool)
        yield out
        n.cancel_scope.cancel()


async def burst(s: Stack, budgets: list[SessionBudget], users: int) -> tuple[int, int, int]:
    """``users`` onsets at once spread over the pools; returns (transcribed, failed, peak RTZR sessions)."""
    done = failed = 0
    peak = 0

    async def sample(scope: trio.CancelScope) -> None:
        nonlocal peak
        while True:  # a sampler of the emulator's own count (it cannot miss an excess for long: sockets stay open)
            peak = max(peak, s.emulator.stats.sessions_active)
            await trio.sleep(0.001)

    async with pools(s, budgets) as ps:
        async with trio.open_nursery() as outer:
            outer.start_soon(sample, outer.cancel_scope)

            async def user(pool: RtzrPool) -> None:
                nonlocal done, failed
                try:
                    async with pool.lease() as lease:
                        await utterance(lease, 200)
                    done += 1
                except (BudgetExpired, RtzrConnectError, RtzrSocketLost):
                    failed += 1

            async with trio.open_nursery() as n:
                for k in range(users):
                    n.start_soon(user, ps[k % len(ps)])
            outer.cancel_scope.cancel()
    return done, failed, peak


async def test_limit_held_across_four_pools_under_a_burst(redis_server: RedisServer) -> None:
    rc = RedisConfig(url=redis_server.url, key="burst", lease_ttl_ms=3000, retry_ms=20)
    with trio.fail_after(60):
        async with stack(emulator_config(max_sessions=LIMIT), budgets=BudgetsConfig(lease=20_000),
                         spare=2, max_sessions=LIMIT) as s:
            budgets: list[SessionBudget] = [RedisSessionBudget(rc, LIMIT, s.metrics) for _ in range(4)]
            done, failed, peak = await burst(s, budgets, 40)
            assert done == 40 and failed == 0
            assert s.emulator.stats.rejected.get(429, 0) == 0  # RTZR never had to refuse: the budget held
            assert peak <= LIMIT
            assert redis_server.zcard("burst") == 0  # every pool gave its leases back when it stopped


async def test_without_a_shared_budget_four_pools_exceed_the_limit() -> None:
    """The control: local budgets (before scale-out) let four processes ask for more than the organisation has."""
    with trio.fail_after(60):
        async with stack(emulator_config(max_sessions=LIMIT), budgets=BudgetsConfig(lease=3000),
                         spare=2, max_sessions=LIMIT) as s:
            budgets: list[SessionBudget] = [LocalSessionBudget(LIMIT) for _ in range(4)]
            done, failed, _ = await burst(s, budgets, 40)
            assert done + failed == 40
            assert s.emulator.stats.rejected.get(429, 0) > 0  # RTZR had to refuse them


async def test_redis_restart_mid_load_loses_no_utterance_that_had_a_socket(redis_server: RedisServer) -> None:
    rc = RedisConfig(url=redis_server.url, key="restart", lease_ttl_ms=1500, retry_ms=20, timeout_ms=300)
    with trio.fail_after(60):
        async with stack(emulator_config(max_sessions=LIMIT), budgets=BudgetsConfig(lease=20_000),
                         spare=1, max_sessions=LIMIT) as s:
            budgets: list[SessionBudget] = [RedisSessionBudget(rc, LIMIT, s.metrics) for _ in range(2)]
            async with pools(s, budgets) as ps:
                had_socket = 0
                finals = 0
                restarted = trio.Event()
                leased = trio.Event()

                async def user(pool: RtzrPool) -> None:
                    nonlocal had_socket, finals
                    async with pool.lease() as lease:
                        had_socket += 1
                        if had_socket == 4:
                            leased.set()
                        await lease.send_audio(tone(200))
                        await restarted.wait()  # the utterance straddles the Redis restart
                        await lease.send_audio(tone(200))
                        assert await lease.finalize()
                        while not (await lease.receive()).final:
                            pass
                        finals += 1

                async with trio.open_nursery() as n:
                    for k in range(4):
                        n.start_soon(user, ps[k % 2])
                    await leased.wait()
                    redis_server.stop()
                    await trio.sleep(0)
                    redis_server.start()  # empty: the holders must re-add their leases
                    restarted.set()
                assert finals == had_socket == 4
                # after Redis returned, the leases still held are known again and new opens work
                async with trio.open_nursery() as n:
                    for k in range(4):
                        n.start_soon(user, ps[k % 2])
                assert finals == 8
                assert s.emulator.stats.rejected.get(429, 0) == 0


async def test_redis_unreachable_serves_on_held_sockets_reports_and_recovers(redis_server: RedisServer) -> None:
    rc = RedisConfig(url=redis_server.url, key="outage", lease_ttl_ms=1500, retry_ms=20, timeout_ms=300)
    with trio.fail_after(60):
        async with stack(emulator_config(max_sessions=LIMIT), spare=1, max_sessions=LIMIT) as s:
            budget = RedisSessionBudget(rc, LIMIT, s.metrics)
            async with pools(s, [budget]) as (pool,):
                while pool.idle_count < 1:
                    await trio.sleep(0.01)
                assert pool.not_ready_reason() is None
                redis_server.stop()
                async with pool.lease() as lease:  # the socket already held serves the utterance
                    assert lease.pool_hit
                    assert await utterance(lease, 200) is not None
                    # no idle socket now, and none can be opened: readiness says why (Redis), metrics too
                    while "Redis unreachable" not in (pool.not_ready_reason() or ""):
                        await trio.sleep(0.01)
                    assert s.metrics.value("session_budget_redis_up") == 0
                    opened = s.emulator.stats.sessions_opened
                assert s.emulator.stats.sessions_opened == opened == 1  # nothing opened without a lease
                redis_server.start()
                while not s.metrics.value("session_budget_redis_up"):  # recovers by itself
                    await trio.sleep(0.01)
                async with pool.lease():  # the spare is replaced again: a new lease, a new socket
                    while pool.idle_count < 1:
                        await trio.sleep(0.01)
                    assert s.emulator.stats.sessions_opened == 2
                    assert redis_server.zcard("outage") == 2
                    assert pool.not_ready_reason() is None

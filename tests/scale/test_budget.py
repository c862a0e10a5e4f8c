"""The shared RTZR session budget against a real redis-server: limit, expiry, outage, recovery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from engine.config import RedisConfig
from engine.metrics import Registry
from engine.rtzr.budget import BudgetFull, BudgetUnavailable, LocalSessionBudget, RedisSessionBudget

from .redis_server import RedisServer

KEY = "test:sessions"


def cfg(server: RedisServer, **kw: int | str) -> RedisConfig:
    base: dict[str, int | str] = {"url": server.url, "key": KEY, "lease_ttl_ms": 1500, "timeout_ms": 500,
                                  "retry_ms": 50}
    base.update(kw)
    return RedisConfig(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def running(*budgets: RedisSessionBudget) -> AsyncIterator[None]:
    async with trio.open_nursery() as n:
        for b in budgets:
            await n.start(b.run)
        yield
        n.cancel_scope.cancel()


async def wait_until(predicate: object, step: float = 0.02) -> None:
    while not predicate():  # type: ignore[operator]
        await trio.sleep(step)


async def acquire_eventually(budget: RedisSessionBudget) -> str:
    """Acquire, retrying while refused (a dead holder's lease expiring, the grace after Redis lost its data)."""
    while True:
        try:
            return await budget.acquire()
        except BudgetFull:
            await trio.sleep(0.05)


async def test_limit_holds_for_a_burst_across_four_clients(redis_server: RedisServer) -> None:
    budgets = [RedisSessionBudget(cfg(redis_server), 5, Registry()) for _ in range(4)]
    granted: list[tuple[int, str]] = []
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        try:
            granted.append((i, await budgets[i].acquire()))
        except BudgetFull:
            refused += 1

    with trio.fail_after(15):
        async with running(*budgets):
            async with trio.open_nursery() as n:
                for k in range(40):
                    n.start_soon(one, k % 4)
            assert len(granted) == 5 and refused == 35
            assert redis_server.zcard(KEY) == 5
            assert sum(b.held for b in budgets) == 5
            i, lease = granted[0]
            budgets[i].release(lease)  # released promptly (not at the renewal): another client gets it
            await wait_until(lambda: redis_server.zcard(KEY) == 4)
            await budgets[(i + 1) % 4].acquire()
            with pytest.raises(BudgetFull):
                await budgets[i].acquire()
        assert redis_server.zcard(KEY) == 0  # each client gave its leases back when it stopped


async def test_renewal_keeps_leases_beyond_the_ttl_and_a_dead_holder_expires(redis_server: RedisServer) -> None:
    alive, dead, other = (RedisSessionBudget(cfg(redis_server, lease_ttl_ms=600), 2, Registry()) for _ in range(3))
    with trio.fail_after(15):
        async with running(alive, other):
            await alive.acquire()
            async with trio.open_nursery() as n:  # the "dead" holder: its renewals stop without a release
                await n.start(dead.run)
                await dead.acquire()
                dead._held.clear()  # as if the process died: nothing renews or releases its lease
                n.cancel_scope.cancel()
            with pytest.raises(BudgetFull):
                await other.acquire()
            # the dead holder's lease comes back within the TTL; the live one is renewed and stays
            await acquire_eventually(other)
            assert alive.held == 1 and redis_server.zcard(KEY) == 2
            with pytest.raises(BudgetFull):
                await other.acquire()


async def test_outage_refuses_new_leases_keeps_held_and_recovers(redis_server: RedisServer) -> None:
    metrics = Registry()
    budget = RedisSessionBudget(cfg(redis_server), 3, metrics)
    with trio.fail_after(30):
        async with running(budget):
            held = [await budget.acquire(), await budget.acquire()]
            assert metrics.value("session_budget_redis_up") == 1
            redis_server.stop()
            with pytest.raises(BudgetUnavailable):
                await budget.acquire()
            assert budget.held == 2  # what was held is still held: its sockets keep serving
            assert metrics.value("session_budget_redis_up") == 0
            assert budget.not_ready_reason() is not None
            assert metrics.value("session_budget_refusals_total", "reason=unavailable") == 1
            redis_server.start()  # comes back empty (no persistence)
            # the renewal re-adds the leases still held (test_lost_data_... shows the grace before new ones)
            await wait_until(lambda: budget.up and metrics.value("session_budget_leases_readded_total") == 2)
            assert redis_server.zcard(KEY) == 2
            await acquire_eventually(budget)
            with pytest.raises(BudgetFull):
                await budget.acquire()
            budget.release(held[0])
            await wait_until(lambda: redis_server.zcard(KEY) == 2)


async def test_lost_data_refuses_new_leases_until_holders_reregister(redis_server: RedisServer) -> None:
    """Redis restarted empty (FLUSHALL here): a new lease on the empty set could exceed the limit beside
    sockets not yet re-registered, so acquire waits out a grace (long here: retry_ms) while holders renew."""
    holder = RedisSessionBudget(cfg(redis_server), 1, Registry())
    newcomer = RedisSessionBudget(cfg(redis_server, retry_ms=30_000), 1, Registry())
    with trio.fail_after(15):
        async with running(holder, newcomer):
            await holder.acquire()
            assert redis_server.command("FLUSHALL").startswith(b"+OK")
            with pytest.raises(BudgetFull, match="lost its data"):
                await newcomer.acquire()  # the set is empty, but the grace refuses
            await wait_until(lambda: redis_server.zcard(KEY) == 1)  # the holder's renewal re-added its lease
            with pytest.raises(BudgetFull):
                await newcomer.acquire()


async def test_unreachable_at_start_then_recovers(redis_server: RedisServer) -> None:
    redis_server.stop()
    budget = RedisSessionBudget(cfg(redis_server), 2, Registry())
    with trio.fail_after(30):
        async with running(budget):  # starts anyway: the engine comes up and says why it cannot open sockets
            assert budget.up is False and "Redis unreachable" in (budget.not_ready_reason() or "")
            with pytest.raises(BudgetUnavailable):
                await budget.acquire()
            redis_server.start()
            await wait_until(lambda: budget.up)
            await acquire_eventually(budget)
            assert redis_server.zcard(KEY) == 1


async def test_local_budget_limit() -> None:
    budget = LocalSessionBudget(2)
    a = await budget.acquire()
    await budget.acquire()
    with pytest.raises(BudgetFull):
        await budget.acquire()
    budget.release(a)
    budget.release(a)  # idempotent
    assert budget.held == 1
    await budget.acquire()

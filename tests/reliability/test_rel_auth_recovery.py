"""When RTZR auth comes back, the pool opens its sockets at once instead of sitting out its open backoff."""

from __future__ import annotations

import trio

from .rel_rig import rig, wait_until


async def test_pool_opens_as_soon_as_a_token_arrives_not_at_its_backoff() -> None:
    with trio.fail_after(60):
        async with rig("rtzr.auth_retry_base_ms=50", "rtzr.auth_retry_max_ms=200", "budgets.connect=1000",
                       gate=True, gate_up=False) as r:
            assert r.gate is not None
            pool = r.engine.pool
            # six failed opens: the next scheduled retry is at least 0.25 s * 2**5 * 0.5 = 4 s away
            await wait_until(lambda: r.engine.metrics.value("rtzr_pool_open_failures_total") >= 6, 50)
            scheduled_retry = pool._retry_at
            assert scheduled_retry - trio.current_time() > 2.0
            await r.gate.up()
            await wait_until(lambda: pool.idle_count >= 2, 30)
            assert trio.current_time() < scheduled_retry  # woken by the token, not by the backoff
            assert pool.not_ready_reason() is None

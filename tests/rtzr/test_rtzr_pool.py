"""RtzrPool against the emulator: pre-warm, limits, leases, recycling, faults, restart."""

from __future__ import annotations

import pytest
import trio

from engine.budgets import BudgetExpired
from engine.config import BudgetsConfig
from engine.rtzr.emulator.config import Fault
from engine.rtzr.emulator.server import Emulator
from engine.rtzr.pool import Lease
from engine.rtzr.stream import RtzrSocketLost
from engine.rtzr.tracker import LeaseResult

from .rtzr_env import emulator_config, running_pool, stack, tone, wait_for


async def utterance(lease: Lease, ms: int) -> LeaseResult:
    await lease.send_audio(tone(ms))
    assert lease.has_pending
    assert await lease.finalize()
    while True:
        r = await lease.receive()
        if r.final:
            assert not lease.has_pending
            return r


async def test_prewarm_reaches_spare_and_lease_hits() -> None:
    with trio.fail_after(10):
        async with stack(spare=2) as s, running_pool(s) as pool:
            await wait_for(lambda: pool.idle_count == 2)
            assert s.emulator.stats.sessions_opened == 2
            async with pool.lease() as lease:
                assert lease.pool_hit and lease.lease_ms < 50
                assert not await lease.finalize()  # nothing pending: returns at once
                r = await utterance(lease, 500)
                assert r.seq == 0
            # while it was leased the pool warmed a replacement; the leased one came back clean
            await wait_for(lambda: pool.idle_count == 3)
            assert pool.open_count == 3 and s.emulator.stats.sessions_opened == 3
            assert s.metrics.value("rtzr_pool_leases_total", "result=hit") == 1


async def test_timeline_and_seq_across_lessees_on_one_socket() -> None:
    with trio.fail_after(10):
        async with stack(spare=1, max_sessions=1) as s, running_pool(s) as pool:
            await wait_for(lambda: pool.idle_count == 1)
            seen = []
            for ms in (400, 700, 300):
                async with pool.lease() as lease:
                    r = await utterance(lease, ms)
                    seen.append((r.seq, r.start_ms, r.duration_ms, lease.sent_ms))
            assert [x[0] for x in seen] == [0, 1, 2]  # one socket, three utterances
            for (_, start, duration, sent), ms in zip(seen, (400, 700, 300), strict=True):
                assert 0 <= start < 60  # each lessee's own timeline starts at its first byte
                assert sent == ms and ms - 100 <= duration <= ms + 20
            assert s.emulator.stats.sessions_opened == 1


async def test_never_exceeds_max_sessions_under_50_concurrent_leases() -> None:
    with trio.fail_after(20):
        async with stack(emulator_config(max_sessions=5), budgets=BudgetsConfig(lease=3000), spare=2, max_sessions=5) as s:
            async with running_pool(s) as pool:
                done = 0
                peak = 0

                async def user() -> None:
                    nonlocal done, peak
                    async with pool.lease() as lease:
                        peak = max(peak, pool.open_count)
                        await utterance(lease, 100)
                    done += 1

                async with trio.open_nursery() as n:
                    for _ in range(50):
                        n.start_soon(user)
                assert done == 50
                assert pool.high_water <= 5 and peak <= 5
                assert s.emulator.stats.rejected.get(429, 0) == 0
                assert s.emulator.stats.sessions_opened <= 5


async def test_lease_times_out_when_all_busy() -> None:
    with trio.fail_after(10):
        # spare=1 and a wait for it: the first lease is a hit. With spare=0 it had to open its socket (auth,
        # connect, handshake) within the 100 ms budget, which failed with the test on a loaded core.
        async with stack(budgets=BudgetsConfig(lease=100), spare=1, max_sessions=1) as s, running_pool(s) as pool:
            await wait_for(lambda: pool.idle_count == 1)
            async with pool.lease() as first:
                assert first.pool_hit
                with pytest.raises(BudgetExpired) as info:
                    async with pool.lease():
                        pass
                assert info.value.budget == "lease"
            assert s.metrics.value("rtzr_pool_leases_total", "result=timeout") == 1


async def test_recycles_idle_and_old_sockets() -> None:
    with trio.fail_after(10):
        async with stack(spare=1, max_idle_ms=200) as s, running_pool(s) as pool:
            await wait_for(lambda: s.emulator.stats.sessions_opened >= 3)
            assert s.metrics.value("rtzr_pool_recycles_total", "reason=idle") >= 2
            assert pool.open_count <= 2
        async with stack(spare=1, max_age_ms=200) as s, running_pool(s) as pool:
            await wait_for(lambda: s.emulator.stats.sessions_opened >= 3)
            assert s.metrics.value("rtzr_pool_recycles_total", "reason=age") >= 2


async def test_recycles_socket_whose_token_is_about_to_expire() -> None:
    with trio.fail_after(10):
        # tokens live 3 s; sockets must keep at least 2.5 s of token -> recycled after ~0.5 s
        async with stack(emulator_config(token_lifetime_s=3.0), spare=1, token_min_remaining_ms=2500) as s:
            async with running_pool(s) as pool:
                await wait_for(lambda: s.metrics.value("rtzr_pool_recycles_total", "reason=token") >= 1)
                await wait_for(lambda: pool.idle_count == 1)


async def test_abrupt_close_discards_socket() -> None:
    with trio.fail_after(10):
        async with stack(spare=0, max_sessions=2) as s, running_pool(s) as pool:
            s.emulator.inject(Fault.close_after(100))
            with pytest.raises(RtzrSocketLost):
                async with pool.lease() as lease:
                    await lease.send_audio(tone(300))
                    await trio.sleep(0.3)
                    await lease.finalize()
                    await lease.receive()
            await wait_for(lambda: pool.open_count == 0)
            async with pool.lease() as lease:  # a fresh socket works
                assert not lease.pool_hit
                await utterance(lease, 300)


async def test_finalize_timeout_discards_socket() -> None:
    with trio.fail_after(10):
        async with stack(budgets=BudgetsConfig(finalize=300), spare=0) as s, running_pool(s) as pool:
            s.emulator.inject(Fault.stall(0))
            with pytest.raises(BudgetExpired) as info:
                async with pool.lease() as lease:
                    await lease.send_audio(tone(300))
                    assert await lease.finalize()
                    while True:
                        await lease.receive()
            assert info.value.budget == "finalize"
            await wait_for(lambda: pool.open_count == 0)
            assert s.metrics.value("rtzr_pool_recycles_total", "reason=finalize_timeout") == 1


async def test_unfinished_lease_is_not_returned() -> None:
    with trio.fail_after(10):
        async with stack(spare=0) as s, running_pool(s) as pool:
            async with pool.lease() as lease:
                await lease.send_audio(tone(300))  # no final awaited
            await wait_for(lambda: pool.open_count == 0)
            assert s.metrics.value("rtzr_pool_recycles_total", "reason=unclean") == 1


async def test_saturated_pool_backs_off() -> None:
    with trio.fail_after(10):
        async with stack(emulator_config(max_sessions=0), spare=2) as s, running_pool(s):
            # it retries (a condition: the first attempts' auth and connect take longer on a loaded machine) ...
            await wait_for(lambda: s.emulator.stats.rejected.get(429, 0) >= 2)
            await trio.sleep(1.0)
            # ... and backs off exponentially from 0.25 s: a handful of attempts, not a busy loop (slowness
            # only lowers the count)
            assert s.emulator.stats.rejected.get(429, 0) <= 12


async def test_connect_per_utterance_mode() -> None:
    with trio.fail_after(10):
        async with stack(mode="connect-per-utterance", spare=2) as s, running_pool(s) as pool:
            for _ in range(2):
                async with pool.lease() as lease:
                    assert not lease.pool_hit
                    await utterance(lease, 200)
            await wait_for(lambda: pool.open_count == 0)
            assert s.emulator.stats.sessions_opened == 2


async def test_survives_emulator_restart() -> None:
    with trio.fail_after(20):
        cfg = emulator_config()
        async with stack(cfg, spare=1) as s:
            async with running_pool(s) as pool:
                await wait_for(lambda: pool.idle_count == 1)
                async with pool.lease() as lease:
                    await utterance(lease, 200)
                port = s.emulator.port
                # restart: a new emulator on the same port that knows none of the old tokens
                await s.stop_emulator()
                await wait_for(lambda: pool.idle_count == 0)  # the idle socket died with the server
                emu2 = Emulator(emulator_config(port=port))
                await s.start_emulator(emu2)
                await wait_for(lambda: pool.idle_count == 1, timeout=10)
                async with pool.lease() as lease:
                    r = await utterance(lease, 200)
                    assert r.final
                assert emu2.stats.auth_requests >= 1  # the 401 made the client fetch a new token

"""Issue 11 at the pool API, on the emulator: clean sockets only, fair queueing, warm-up, 429, restarts."""

from __future__ import annotations

import msgspec
import pytest
import trio

from engine.rtzr.pool import Lease, RtzrPool
from engine.rtzr.tracker import LeaseResult

from .rtzr_env import emulator_config, running_pool, stack, tone, wait_for


async def _until_closed(lease: Lease) -> list[LeaseResult]:
    finals = []
    while True:
        r = await lease.receive()
        if r.final:
            finals.append(r)
        if r.closes:
            return finals


async def test_server_cut_before_finalize_never_reaches_the_next_lessee() -> None:
    """Defect 1 (privacy): RTZR cuts lease A at 1.2 s (max_utter_duration) just before A's Finalize. The cut
    final used to settle the socket; the answer to A's Finalize (A's last 0.4 s) went to lease B."""
    with trio.fail_after(15):
        async with stack(emulator_config(final_ms=100), spare=1, max_sessions=1) as s:
            s.config = msgspec.structs.replace(s.config, max_utter_duration=1.2)
            async with running_pool(s) as pool:
                async with pool.lease() as a:
                    await a.send_audio(tone(1000) + tone(600, freq=300.0))
                    assert await a.finalize(speech_end_ms=1600)
                    finals_a = await _until_closed(a)
                # A got both: the cut and the answer to its Finalize, covering all of its audio
                assert len(finals_a) == 2
                assert finals_a[-1].start_ms + finals_a[-1].duration_ms >= 1600 - 20
                async with pool.lease() as b:
                    assert b.pool_hit  # the same, now provably clean, socket
                    await b.send_audio(tone(300))
                    assert await b.finalize(speech_end_ms=300)
                    finals_b = await _until_closed(b)
                assert [f.seq for f in finals_b] == [finals_a[-1].seq + 1]
                assert 0 <= finals_b[0].start_ms and finals_b[0].duration_ms <= 320  # B's own 300 ms, nothing of A's
                assert s.metrics.value("rtzr_foreign_results_total") == 0


async def test_pool_reports_started_only_when_warm() -> None:
    """'started' (and so serve()'s started and /readyz) used to come before any spare socket was open."""
    with trio.fail_after(10):
        async with stack(emulator_config(handshake_ms=200), spare=2) as s, running_pool(s) as pool:
            assert pool.idle_count == 2 and pool.not_ready_reason() is None
            async with pool.lease() as lease:
                assert lease.pool_hit and lease.lease_ms < 5


async def test_a_restarted_pool_comes_back_whole() -> None:
    """Defect 3: _draining survived a restart, so every lease failed 'pool is shutting down' forever."""
    with trio.fail_after(15):
        async with stack(spare=1) as s:
            pool = RtzrPool(s.config, s.tokens, s.budgets, s.metrics)
            for _ in range(2):  # run, stop (as a crash does), run again
                async with trio.open_nursery() as n:
                    await n.start(pool.run)
                    async with pool.lease() as lease:
                        await lease.send_audio(tone(300))
                        assert await lease.finalize()
                        await _until_closed(lease)
                    n.cancel_scope.cancel()


async def test_an_unexpected_connect_error_backs_off_instead_of_killing_the_pool() -> None:
    """Defect 3: an IDNA error from a bad host name escaped _open_spare and crashed the pool."""
    with trio.fail_after(10):
        async with stack(spare=1) as s:
            s.config = msgspec.structs.replace(s.config, ws_url="ws://" + "a" * 70 + ".example/v1/transcribe:streaming")
            async with running_pool(s) as pool:  # starts (cold) instead of raising
                await wait_for(lambda: s.metrics.value("rtzr_pool_open_failures_total") >= 2)
                reason = pool.not_ready_reason()
                assert reason is not None and "cannot open RTZR sockets" in reason


async def test_waiters_are_served_first_come_first_served() -> None:
    with trio.fail_after(15):
        async with stack(spare=1, max_sessions=1) as s, running_pool(s) as pool:
            order: list[int] = []
            all_queued = trio.Event()

            async def user(i: int) -> None:
                async with pool.lease() as lease:
                    order.append(i)
                    if i == 0:
                        await all_queued.wait()
                    await lease.send_audio(tone(100))
                    assert await lease.finalize()
                    await _until_closed(lease)

            async with trio.open_nursery() as n:
                n.start_soon(user, 0)
                await wait_for(lambda: order == [0])
                for i in range(1, 6):
                    n.start_soon(user, i)
                    await wait_for(lambda i=i: pool.waiting_count == i)
                all_queued.set()
            assert order == list(range(6))
            assert s.emulator.stats.sessions_opened == 1


async def test_saturation_429_waits_for_a_returned_socket_instead_of_failing() -> None:
    """Defect 8: a 429 (the organisation limit, e.g. reached by another process) failed the utterance at once."""
    with trio.fail_after(15):
        async with stack(emulator_config(max_sessions=1), spare=0, max_sessions=3) as s, running_pool(s) as pool:
            holding = trio.Event()
            release = trio.Event()

            async def first() -> None:
                async with pool.lease() as lease:
                    holding.set()
                    await release.wait()
                    await lease.send_audio(tone(200))
                    assert await lease.finalize()
                    await _until_closed(lease)

            async with trio.open_nursery() as n:
                n.start_soon(first)
                await holding.wait()
                got: list[LeaseResult] = []

                async def second() -> None:
                    async with pool.lease() as lease:
                        await lease.send_audio(tone(200))
                        assert await lease.finalize()
                        got.extend(await _until_closed(lease))

                n.start_soon(second)
                await wait_for(lambda: s.metrics.value("rtzr_pool_saturated_total") >= 1)
                assert pool.saturated and pool.waiting_count == 1
                release.set()
            assert len(got) == 1 and got[0].closes
            assert s.metrics.value("rtzr_pool_leases_total", "result=timeout") == 0


async def test_a_lessee_giving_up_keeps_the_connect_under_way() -> None:
    """Defect 8: the lease budget cancelled the connect and threw the half-open socket away."""
    with trio.fail_after(10):
        async with stack(emulator_config(handshake_ms=300), spare=0) as s:
            async with running_pool(s) as pool:
                with trio.CancelScope() as lessee:
                    async with trio.open_nursery() as n:

                        async def give_up_once_connecting() -> None:
                            await wait_for(lambda: pool.open_count == 1)  # the pool is opening a socket for us
                            lessee.cancel()  # as a budget expiring mid-connect does

                        n.start_soon(give_up_once_connecting)
                        async with pool.lease():
                            pytest.fail("the handshake takes 300 ms; the lessee gave up before")
                assert lessee.cancelled_caught
                await wait_for(lambda: pool.idle_count == 1)  # the connect finished, for the next lessee
                async with pool.lease() as lease:
                    assert lease.pool_hit
                assert s.emulator.stats.sessions_opened == 1


async def test_shutdown_counts_a_leased_socket_once() -> None:
    """Item 10: _close_all counted leased sockets twice (leased and closing)."""
    with trio.fail_after(10):
        async with stack(spare=1, max_sessions=1) as s:
            pool = RtzrPool(s.config, s.tokens, s.budgets, s.metrics)
            async with trio.open_nursery() as n:
                await n.start(pool.run)
                async with pool.lease():
                    n.cancel_scope.cancel()  # the pool closes every socket while this one is still leased
            assert pool.high_water == 1 and pool.open_count == 0


async def test_recycling_never_exceeds_max_sessions() -> None:
    """Review finding: a socket being recycled was counted nowhere until its close task ran, so the maintainer
    opened its replacement first (high_water 2 of 1; against RTZR's own limit, a 429)."""
    with trio.fail_after(20):
        async with stack(emulator_config(max_sessions=1), spare=1, max_sessions=1, max_age_ms=300) as s:
            async with running_pool(s) as pool:
                await wait_for(lambda: s.emulator.stats.sessions_opened >= 4, timeout=15)
                assert pool.high_water == 1
                assert s.metrics.value("rtzr_pool_saturated_total") == 0

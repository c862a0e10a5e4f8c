"""RtzrSocket against the emulator: handshake, 401 retry, 429, Finalize, EOS, in-band error."""

from __future__ import annotations

import pytest
import trio

from engine.budgets import BudgetExpired
from engine.rtzr.emulator.config import Fault
from engine.rtzr.stream import RtzrHandshakeError, RtzrSaturated, RtzrSocket, RtzrSocketLost, _Lost
from engine.rtzr.tracker import LeaseResult

from .rtzr_env import emulator_config, stack, tone


async def _next_final(results: trio.MemoryReceiveChannel[LeaseResult | _Lost]) -> LeaseResult:
    while True:
        item = await results.receive()
        if isinstance(item, _Lost):
            raise RtzrSocketLost(item.reason)
        if item.final:
            return item


async def test_finalize_with_and_without_pending_audio() -> None:
    with trio.fail_after(10):
        async with stack() as s:
            sock = await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            assert sock.handshake_ms > 0 and sock.is_open
            results = sock.attach()
            assert not await sock.finalize()  # nothing pending: nothing sent, nothing awaited
            await sock.send_audio(tone(600))
            assert sock.tracker.pending and sock.bytes_sent == 9600
            assert await sock.finalize()
            final = await _next_final(results)
            assert final.seq == 0 and not sock.tracker.pending and sock.usable
            assert 0 <= final.start_ms < 100 and 400 <= final.duration_ms <= 700
            assert not await sock.finalize()
            # a second utterance on the same socket
            results2 = sock.attach()
            await sock.send_audio(tone(400))
            assert await sock.finalize()
            second = await _next_final(results2)
            assert second.seq == 1 and second.start_ms < 100
            assert s.emulator.stats.sessions_opened == 1
            await sock.close()
            assert not sock.is_open


async def test_eos_gets_final_then_server_closes() -> None:
    with trio.fail_after(10):
        async with stack() as s:
            sock = await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            results = sock.attach()
            await sock.send_audio(tone(500))
            await sock.end()
            final = await _next_final(results)
            assert final.final
            await sock.wait_closed()
            assert "closed by server: 1000" in sock.close_reason
            with pytest.raises(RtzrSocketLost):
                await sock.send_audio(tone(20))


async def test_401_refreshes_once_and_retries() -> None:
    with trio.fail_after(10):
        async with stack() as s:
            await s.tokens.get()
            assert s.emulator.stats.auth_requests == 1
            s.emulator.inject(Fault.reject(401))
            sock = await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            assert sock.is_open
            assert s.emulator.stats.auth_requests == 2
            assert s.emulator.stats.handshakes == 2
            # two 401s in a row: a typed error, no third attempt
            s.emulator.inject(Fault(kind="reject", value=401, sessions=2))
            with pytest.raises(RtzrHandshakeError) as info:
                await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            assert info.value.status == 401
            assert s.emulator.stats.handshakes == 4


async def test_429_is_typed() -> None:
    with trio.fail_after(10):
        async with stack(emulator_config(max_sessions=1)) as s:
            first = await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            with pytest.raises(RtzrSaturated) as info:
                await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            assert info.value.status == 429
            await first.close()


async def test_other_status_and_in_band_error() -> None:
    with trio.fail_after(10):
        async with stack() as s:
            s.emulator.inject(Fault.reject(500))
            with pytest.raises(RtzrHandshakeError) as info:
                await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            assert info.value.status == 500 and not isinstance(info.value, RtzrSaturated)
            s.emulator.inject(Fault.error_after(50))
            sock = await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            results = sock.attach()
            await sock.send_audio(tone(200))
            with pytest.raises(RtzrSocketLost, match="server error"):
                await _next_final(results)
            assert not sock.usable


async def test_connect_budget_expires_on_slow_handshake() -> None:
    from engine.config import BudgetsConfig

    with trio.fail_after(10):
        async with stack(emulator_config(handshake_ms=1000), budgets=BudgetsConfig(connect=100)) as s:
            await s.tokens.get()
            with pytest.raises(BudgetExpired) as info:
                await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            assert info.value.budget == "connect"

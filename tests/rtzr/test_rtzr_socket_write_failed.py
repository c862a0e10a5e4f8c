"""RtzrSocket's two awaited writes (``_send`` and ``flush``) turn a failed write into a lost socket the same way
(one helper, ``_write_failed``): a closed connection is RtzrSocketLost, an expired send budget is re-raised;
either way the socket is lost with the reason, and the pool's callback is told once."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from engine.budgets import BudgetExpired, Budgets
from engine.config import Config
from engine.metrics import Registry
from engine.rtzr.stream import RtzrSocket, RtzrSocketLost
from engine.rtzr.wsclient import ConnectionClosed


class _FailingWs:
    """A connection with a partly written push whose writes fail with ``exc``."""

    pending = True

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def flush(self) -> None:
        raise self.exc

    async def send_bytes(self, data: bytes) -> None:
        raise self.exc


def _socket(exc: Exception) -> tuple[RtzrSocket, list[RtzrSocket]]:
    config = Config()
    sock = RtzrSocket(config.rtzr, None, Budgets(config.budgets), Registry())  # type: ignore[arg-type]
    sock._ws = _FailingWs(exc)  # type: ignore[assignment]
    closed: list[RtzrSocket] = []
    sock.on_closed = closed.append
    return sock, closed


@pytest.mark.parametrize("write", ["flush", "send_audio"])
async def test_a_closed_connection_loses_the_socket(write: str) -> None:
    sock, closed = _socket(ConnectionClosed(1006, "gone"))
    call: Any = sock.flush() if write == "flush" else sock.send_audio(b"\0" * 1600)
    with pytest.raises(RtzrSocketLost, match="closed while sending"):
        await call
    assert sock.lost and sock.bad and sock.close_reason == "closed while sending" and closed == [sock]
    assert sock.send_audio_nowait(b"\0" * 1600) == 0  # a lost socket takes no push


@pytest.mark.parametrize("write", ["flush", "send_audio"])
async def test_an_expired_send_budget_is_raised_and_loses_the_socket(write: str) -> None:
    expired = BudgetExpired("send", 200.0)
    sock, closed = _socket(expired)
    with trio.fail_after(5), pytest.raises(BudgetExpired) as raised:
        await (sock.flush() if write == "flush" else sock.send_audio(b"\0" * 1600))
    assert raised.value is expired
    assert sock.lost and sock.close_reason == "send timeout" and closed == [sock]

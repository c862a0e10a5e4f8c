"""The one accept step: capacity errors pause the loop, anything else is the listener's own failure."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from engine.listeners import ACCEPT_PAUSE_S, accept_or_pause


def _failing(code: int) -> Callable[[], Awaitable[str]]:
    async def accept() -> str:
        raise OSError(code, "boom")
    return accept


async def test_out_of_fds_pauses_and_returns_none(autojump_clock: trio.testing.MockClock) -> None:
    clock = autojump_clock
    start = clock.current_time()
    assert await accept_or_pause(_failing(errno.EMFILE), "test_accept_failed") is None
    assert clock.current_time() - start >= ACCEPT_PAUSE_S


async def test_other_errors_are_raised() -> None:
    with pytest.raises(OSError) as info:
        await accept_or_pause(_failing(errno.EBADF), "test_accept_failed")
    assert info.value.errno == errno.EBADF


async def test_a_connection_is_returned() -> None:
    async def accept() -> str:
        return "conn"
    assert await accept_or_pause(accept, "test_accept_failed") == "conn"


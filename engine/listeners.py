"""Accepting connections without dying at the process's limits: the one accept step every listener uses
(the Twilio server, the application channel, the ``--workers`` parent)."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from engine.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")

# Out of file descriptors or memory: transient under a burst, so the loop pauses and goes on (as
# trio.serve_listeners does) instead of ending the service; any other error is the listener's own.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_PAUSE_S = 0.1


async def accept_or_pause(accept: Callable[[], Awaitable[T]], failed_event: str) -> T | None:
    """One ``accept()``; on a capacity error, log ``failed_event``, pause, and return None (the caller loops)."""
    try:
        return await accept()
    except OSError as exc:
        if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
            raise
        log.error(failed_event, error=errno.errorcode.get(exc.errno or 0, "?"))
        await trio.sleep(ACCEPT_PAUSE_S)
        return None

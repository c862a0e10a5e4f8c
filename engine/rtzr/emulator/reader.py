"""The emulator's read side: one task reads every session socket that is ready, many per wake-up.

A task per session that awaits ``receive_some`` costs a Trio wake-up, a cancel-scope check, an epoll re-arm
and an extra ``recv`` that meets EAGAIN for every audio message (≈ 200 µs of the ≈ 250 µs an emulated
100 ms message cost under load). Here one task waits on a selector (epoll on Linux, kqueue on BSD/macOS)
that holds every registered session socket, and on each wake-up calls ``readable()`` on each ready one;
the reader does one non-blocking ``os.read`` and runs its session's sans-IO logic at once. Under load
many sessions are ready per wake-up, so the per-wake cost is shared. Writes stay with each session's task.

Registration is level-triggered: a reader that leaves bytes in its socket is simply called again on the
next wake-up. A paused reader is unregistered (not masked: epoll reports hang-ups even on an empty mask).

``after_pass`` runs at the end of every pass that read something (the emulator's
:class:`~engine.rtzr.emulator.batch.AudioBatch`: the pass's audio handled together).

``driven=True`` (the one-process load rig, bench/rig.py): the hub never wakes itself; its owner calls
:meth:`drain` (the rig's ticker, after each 2 ms tick's writes), so reading costs no Trio wake-up of its own.
"""

from __future__ import annotations

import math
import selectors
from collections.abc import Callable
from typing import Protocol

import trio

from engine.log import get_logger

log = get_logger(__name__)


class Reader(Protocol):
    fd: int

    def readable(self) -> None:
        """The socket has bytes (or EOF): read without blocking and handle them."""

    def fail(self, exc: Exception) -> None:
        """``readable`` raised (a bug): the hub has dropped this reader; its owner must end it."""


class ReadHub:
    """Many sockets, one waiting task. ``add``/``pause``/``resume``/``remove`` are synchronous and idempotent."""

    def __init__(self, *, batch_s: float = 0.0, driven: bool = False, after_pass: Callable[[], None] | None = None) -> None:
        # > 0: at most one wake-up per batch_s (load tests: more sockets per wake-up, each read up to batch_s later)
        self._batch_s = batch_s
        self._driven = driven  # only drain() reads (its owner calls it)
        self._after_pass = after_pass  # called at the end of every pass that read (the emulator's AudioBatch)
        self._selector: selectors.BaseSelector | None = None
        self._fileno = -1
        self._readers: dict[int, Reader] = {}  # registered or paused, by fd
        self._active: set[int] = set()  # registered with the selector
        self.wakeups = 0  # selector wake-ups that found a ready socket
        self.reads = 0  # readable() calls

    async def run(self, *, task_status: trio.TaskStatus[ReadHub] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        selector = selectors.DefaultSelector()
        fileno = getattr(selector, "fileno", None)
        if fileno is None:  # select()/poll() selectors have no fd to wait on
            selector.close()
            raise RuntimeError("the RTZR emulator needs epoll or kqueue (Linux, BSD, macOS)")
        self._selector, self._fileno = selector, int(fileno())
        task_status.started(self)
        try:
            if self._driven:
                await trio.sleep_forever()
            while True:
                await trio.lowlevel.wait_readable(self._fileno)
                if self._batch_s:
                    await trio.sleep(self._batch_s)
                self.drain()
        finally:
            self._selector = None
            self._readers.clear()
            self._active.clear()
            trio.lowlevel.notify_closing(self._fileno)
            selector.close()

    def drain(self, until: float = math.inf) -> bool:
        """Read every ready socket once (without waiting); False when it stopped at Trio time ``until`` (checked
        after each read, so at least one is read) with sockets still ready: they stay ready for the next call.
        A no-op when the hub is not running."""
        if self._selector is None:
            return True
        ready = self._selector.select(0)
        if not ready:
            return True
        self.wakeups += 1
        bounded = until != math.inf
        try:
            for i, (key, _mask) in enumerate(ready):
                if bounded and i and trio.current_time() >= until:
                    return False
                if key.fd in self._active:  # an earlier reader of this batch may have removed it
                    self.reads += 1
                    reader: Reader = key.data
                    try:
                        reader.readable()
                    except Exception as exc:  # one session's bug must not stop every session's input
                        self.drop(reader, exc)
        finally:
            if self._after_pass is not None:
                self._after_pass()
        return True

    def drop(self, reader: Reader, exc: Exception) -> None:
        """``reader`` raised (a bug): log it, stop reading it, tell it."""
        log.error("rtzr_emulator_reader_failed", exc=exc)
        self.remove(reader)
        reader.fail(exc)

    def add(self, reader: Reader) -> None:
        self._readers[reader.fd] = reader
        self.resume(reader)

    def pause(self, reader: Reader) -> None:
        """Stop reading ``reader`` until :meth:`resume` (its task has work that must come first)."""
        if reader.fd in self._active and self._selector is not None:
            self._active.discard(reader.fd)
            self._selector.unregister(reader.fd)

    def resume(self, reader: Reader) -> None:
        if self._readers.get(reader.fd) is reader and reader.fd not in self._active:
            if self._selector is None:
                raise RuntimeError("the read hub is not running")
            self._selector.register(reader.fd, selectors.EVENT_READ, reader)
            self._active.add(reader.fd)

    def remove(self, reader: Reader) -> None:
        """Forget ``reader``; call before its socket is closed (its fd number may be reused at once)."""
        if self._readers.get(reader.fd) is reader:
            self.pause(reader)
            del self._readers[reader.fd]

    def __len__(self) -> int:
        return len(self._readers)

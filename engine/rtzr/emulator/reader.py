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

import contextlib
import math
import select
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


class _Epoll:
    """``select.epoll`` used directly (Linux): the ready fds without a SelectorKey and a mask check per socket."""

    def __init__(self) -> None:
        self._ep = select.epoll()

    def fileno(self) -> int:
        return self._ep.fileno()

    def register(self, fd: int) -> None:
        self._ep.register(fd, select.EPOLLIN)

    def unregister(self, fd: int) -> None:
        with contextlib.suppress(OSError):  # already closed (epoll forgot it), as selectors.EpollSelector tolerates
            self._ep.unregister(fd)

    def ready(self, most: int) -> list[tuple[int, int]]:
        return self._ep.poll(0, most)

    def close(self) -> None:
        self._ep.close()


class _Selector:
    """Any other platform's selector (kqueue on BSD/macOS) behind the same four calls."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        fileno = getattr(self._sel, "fileno", None)
        if fileno is None:  # select()/poll() selectors have no fd to wait on
            self._sel.close()
            raise RuntimeError("the RTZR emulator needs epoll or kqueue (Linux, BSD, macOS)")
        self._fileno = int(fileno())

    def fileno(self) -> int:
        return self._fileno

    def register(self, fd: int) -> None:
        self._sel.register(fd, selectors.EVENT_READ)

    def unregister(self, fd: int) -> None:
        self._sel.unregister(fd)

    def ready(self, most: int) -> list[tuple[int, int]]:
        return [(key.fd, mask) for key, mask in self._sel.select(0)]

    def close(self) -> None:
        self._sel.close()


class ReadHub:
    """Many sockets, one waiting task. ``add``/``pause``/``resume``/``remove`` are synchronous and idempotent."""

    def __init__(self, *, batch_s: float = 0.0, driven: bool = False, after_pass: Callable[[], None] | None = None) -> None:
        # > 0: at most one wake-up per batch_s (load tests: more sockets per wake-up, each read up to batch_s later)
        self._batch_s = batch_s
        self._driven = driven  # only drain() reads (its owner calls it)
        self._after_pass = after_pass  # called at the end of every pass that read (the emulator's AudioBatch)
        self._selector: _Epoll | _Selector | None = None
        self._fileno = -1
        self._readers: dict[int, Reader] = {}  # registered or paused, by fd
        self._active: dict[int, Reader] = {}  # registered with the selector, by fd
        self.wakeups = 0  # selector wake-ups that found a ready socket
        self.reads = 0  # readable() calls

    async def run(self, *, task_status: trio.TaskStatus[ReadHub] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        selector = _Epoll() if hasattr(select, "epoll") else _Selector()
        self._selector, self._fileno = selector, selector.fileno()
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
        active = self._active
        ready = self._selector.ready(max(1, len(active)))
        if not ready:
            return True
        self.wakeups += 1
        bounded = until != math.inf
        try:
            for i, (fd, _mask) in enumerate(ready):
                if bounded and i and trio.current_time() >= until:
                    return False
                reader = active.get(fd)
                if reader is not None:  # an earlier reader of this batch may have removed it
                    self.reads += 1
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
            del self._active[reader.fd]
            self._selector.unregister(reader.fd)

    def resume(self, reader: Reader) -> None:
        if self._readers.get(reader.fd) is reader and reader.fd not in self._active:
            if self._selector is None:
                raise RuntimeError("the read hub is not running")
            self._selector.register(reader.fd)
            self._active[reader.fd] = reader

    def remove(self, reader: Reader) -> None:
        """Forget ``reader``; call before its socket is closed (its fd number may be reused at once)."""
        if self._readers.get(reader.fd) is reader:
            self.pause(reader)
            del self._readers[reader.fd]

    def __len__(self) -> int:
        return len(self._readers)

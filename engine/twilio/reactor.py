"""One Trio task that reads many sockets per wake-up (the Twilio ingest's multi-socket reader).

Why: with a reader task per call, every 20 ms frame of every call cost one Trio wake-up, one
``receive_some`` and one trip through the scheduler — about three quarters of the engine's per-frame
time at 75–100 calls (BENCHMARKS.md, Profile). Here a single task owns an ``epoll`` of every registered
socket, waits on the epoll's own fd with :func:`trio.lowlevel.wait_readable`, and on each wake-up reads
every ready socket with a non-blocking ``os.read`` and hands the bytes to that socket's
:class:`Reader` synchronously: one wake-up for all the frames that arrived meanwhile.

What stays per connection: each registered socket belongs to a task of its own (the call's, in its own
nursery) that owns its budgets and its cancellation. The reactor never awaits on a connection's behalf:
a reader that needs its task (a control frame to answer, the end of the stream, an exception while
processing) returns :data:`PAUSE` (or raises), the reactor stops reading that socket, and the reader
wakes its task, which calls :meth:`Reactor.resume` once it is done or :meth:`Reactor.unregister` when it
ends. An exception from one reader is handed to that reader (:meth:`Reader.failed`) and never reaches the
reactor or another socket.

Work that pays to batch over a wake-up (issue 13: the endpointer's frame classification, one
``classify_batch`` for every call read in the wake-up) goes in the optional :class:`PassHook`: the
readers queue it during the pass, ``hook.end()`` runs it once after the last ready socket, and a
failure there for one connection comes back through :meth:`Reactor.fail` (pause + ``Reader.failed``).

**Pass interval.** Under load, frames of different calls arrive a fraction of a millisecond apart, and a
pass per wake-up would handle a few calls at a time: each pass pays the epoll wait, Trio's scheduling and
the batched work's fixed cost (a ``classify_batch`` of 4 rows costs ~4× per row what one of 64 does). With
``min_pass_interval`` > 0 a pass starts no sooner than that long after the previous one started: bytes that
arrive meanwhile wait in the kernel and are read together by the next pass. A frame waits at most the
interval, and only when passes come that close; a lone call (a pass every 20 ms) never waits.

The task runs in the nursery given to :meth:`Reactor.register` (the calls nursery) while any socket is
registered, and exits (closing its epoll) when the last one leaves; the next registration starts it
again. A registration must be removed before its socket is closed (fd numbers are reused).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
from typing import Final, Protocol

import trio

from engine.log import get_logger
from engine.metrics import Counter

log = get_logger(__name__)

RECEIVE_SIZE: Final = 64 * 1024
PAUSE: Final = True  # Reader.readable's answer: stop reading this socket until resume()
KEEP: Final = False


class Reader(Protocol):
    """A registered socket's synchronous side, called from the reactor's task."""

    def readable(self, data: bytes, now: float) -> bool:
        """Bytes read from the socket (b"" at EOF or a read error), at Trio time ``now``.

        Must not block. Returns :data:`PAUSE` to hand the connection to its own task (the reactor
        stops reading it until :meth:`Reactor.resume`), else :data:`KEEP`.
        """
        ...

    def failed(self, exc: Exception) -> None:
        """:meth:`readable` raised ``exc``: the socket is paused; hand the error to the connection's task."""
        ...


class PassHook(Protocol):
    """Work batched over one wake-up (e.g. :class:`engine.endpointing.batch.FrameBatch`): ``begin`` before
    the first ready socket is handed to its reader, ``end`` after the last (also when a reader raised)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


class Reactor:
    """Many sockets, one reader task (see the module docstring). Not thread-safe; one Trio run."""

    def __init__(self, hook: PassHook | None = None, *, min_pass_interval: float = 0.0,
                 passes: Counter | None = None, reads: Counter | None = None) -> None:
        if min_pass_interval < 0:
            raise ValueError(f"min_pass_interval must be >= 0, got {min_pass_interval}")
        self.hook = hook
        self.min_pass_interval = min_pass_interval  # seconds; see the module docstring
        self._passes = passes or Counter()  # the server's sori_twilio_ingest_passes_total
        self._reads = reads or Counter()  # ... and sori_twilio_ingest_reads_total (reads / passes = calls per pass)
        self._readers: dict[int, Reader] = {}
        self._epoll: select.epoll | None = None  # the running task's; None: no task
        self._scope: trio.CancelScope | None = None

    @property
    def wakeups(self) -> int:
        """Passes so far (each one wake-up, whatever the interval made it wait)."""
        return int(self._passes.value)

    @property
    def reads(self) -> int:
        """Socket reads so far."""
        return int(self._reads.value)

    @property
    def registered(self) -> int:
        return len(self._readers)

    @property
    def running(self) -> bool:
        return self._epoll is not None

    def register(self, fd: int, reader: Reader, nursery: trio.Nursery) -> None:
        """Start reading ``fd`` (non-blocking, owned by the caller) for ``reader``; starts the task if needed."""
        if fd in self._readers:
            raise RuntimeError(f"fd {fd} is already registered")
        epoll = self._epoll
        if epoll is None:
            epoll = select.epoll()
            scope = trio.CancelScope()
            try:
                nursery.start_soon(self._run, epoll, scope)
            except BaseException:
                epoll.close()
                raise
            self._epoll, self._scope = epoll, scope
        epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = reader

    def unregister(self, fd: int) -> None:
        """Stop reading ``fd`` for good (idempotent); call before the socket is closed."""
        if self._readers.pop(fd, None) is None:
            return
        epoll = self._epoll
        if epoll is None:
            return
        with contextlib.suppress(OSError):  # already gone from the epoll (closed elsewhere): nothing to undo
            epoll.unregister(fd)
        if not self._readers:  # the last one: the task ends (it would wait on an empty epoll forever)
            self._detach()

    def resume(self, fd: int) -> None:
        """Read ``fd`` again after its reader paused it."""
        if fd in self._readers and self._epoll is not None:
            self._epoll.modify(fd, select.EPOLLIN)

    def fail(self, fd: int, exc: Exception) -> None:
        """``fd``'s reader failed outside :meth:`Reader.readable` (in the pass hook's batched work): pause the
        socket and hand ``exc`` to its reader, as if ``readable`` had raised it."""
        reader = self._readers.get(fd)
        if reader is None:
            return
        self._pause(fd)
        self._fail(reader, exc)

    def _pause(self, fd: int) -> None:
        if self._epoll is not None:
            with contextlib.suppress(OSError):  # gone from the epoll: nothing left to pause
                self._epoll.modify(fd, 0)

    @staticmethod
    def _fail(reader: Reader, exc: Exception) -> None:
        try:
            reader.failed(exc)
        except Exception as bug:  # a reader's own bug: logged, never raised from the reactor
            log.error("reactor_reader_failed_raised", exc=bug)

    @staticmethod
    def _end_pass(hook: PassHook) -> None:
        try:
            hook.end()  # its streams' failures are theirs (FrameBatch hands them over, see Reactor.fail)
        except Exception as bug:  # the hook's own bug: logged, never the end of the reactor
            log.error("reactor_pass_hook_failed", exc=bug)

    def _detach(self) -> None:
        """Let the running task go (it closes its epoll); the next register() starts a new one."""
        if self._scope is not None:
            self._scope.cancel()
        self._epoll = self._scope = None

    async def _run(self, epoll: select.epoll, scope: trio.CancelScope) -> None:
        epfd = epoll.fileno()
        readers = self._readers
        hook = self.hook
        passes, reads = self._passes, self._reads
        interval = self.min_pass_interval
        next_pass = -math.inf  # the earliest start of the next pass
        try:
            with scope:
                while True:
                    await trio.lowlevel.wait_readable(epfd)
                    now = trio.current_time()
                    if now < next_pass:  # passes this close: let more calls' frames arrive first
                        await trio.sleep_until(next_pass)
                        now = trio.current_time()
                    next_pass = now + interval
                    passes.value += 1
                    if hook is not None:
                        hook.begin()
                    try:
                        for fd, _mask in epoll.poll(0):
                            reader = readers.get(fd)
                            if reader is None:
                                continue
                            try:
                                data = os.read(fd, RECEIVE_SIZE)
                            except BlockingIOError:
                                continue
                            except OSError:  # reset, or the like: the end of this stream, like EOF
                                data = b""
                            reads.value += 1
                            try:
                                pause = reader.readable(data, now)
                            except Exception as exc:  # contained: that connection's task gets it
                                self._pause(fd)
                                self._fail(reader, exc)
                                continue
                            if pause:
                                self._pause(fd)
                    finally:
                        if hook is not None:
                            self._end_pass(hook)
        except Exception as exc:  # a reactor bug: each registered call fails on its own (finally), never the nursery
            log.error("reactor_failed", exc=exc)
        finally:
            current = self._epoll is epoll
            trio.lowlevel.notify_closing(epfd)
            epoll.close()
            if current:  # not detached: we are cancelled with our nursery, or failed ourselves
                self._epoll = self._scope = None
                stranded = list(readers.values())
                readers.clear()
                for reader in stranded:  # their tasks must not wait for bytes that no one reads
                    self._fail(reader, RuntimeError("the socket reactor stopped"))

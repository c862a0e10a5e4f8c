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

**Why a frame is late** (issue 13, the frame-lag tail): the reactor times each pass from the ``now`` it
already has to one clock read at its end (``pass_ms``: a frame read late in a long pass waited that long,
and frames that arrived meanwhile wait for the next), the time between one pass's end and the next one's
start (``gap_ms``: other tasks, Trio's scheduler, or idle), and, while it runs, every garbage collection
(``gc_ms``, by generation, from ``gc.callbacks``): a pause in any task delays every frame waiting.

**Delayed ACKs** (issue 13, the kernel's share of a frame): a read that empties a socket which received a small
pushed segment makes Linux send an ACK from inside ``read`` (``tcp_cleanup_rbuf``: the connection is not
"interactive", so the pushed segment is acked at once); on loopback that ACK also runs the sender's receive
path in our context. At 300 calls that was ~65 % of the kernel time of every Twilio read (one a frame; perf,
BENCHMARKS.md § Capacity, "Issue 13 round 7: the kernel's share"). With ``delayed_ack`` the reactor puts
each TCP socket in delayed-ACK mode (``TCP_QUICKACK`` 0, which the kernel forgets, hence once before every
read): the ACK goes out with the next segment's arrival (every second segment), or the delayed-ACK timer.
This is only safe when the peer sends with ``TCP_NODELAY`` (Twilio's media streams through nginx's WebSocket
proxying, the load generator): a sender running Nagle's algorithm would hold every second frame until the
timer (~40 ms). Off by default (``twilio.delayed_ack``, engine/config.py: it delayed frames at 300 calls). Sockets
that are not TCP are read as before.

The task runs in the nursery given to :meth:`Reactor.register` (the calls nursery) while any socket is
registered, and exits (closing its epoll) when the last one leaves; the next registration starts it
again. A registration must be removed before its socket is closed (fd numbers are reused).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import trio

from engine.log import get_logger
from engine.metrics import Counter, Histogram

log = get_logger(__name__)

RECEIVE_SIZE: Final = 64 * 1024
# The delayed-ACK request (see the module docstring); 12 on Linux, absent elsewhere (-1: never made).
_TCP_QUICKACK: Final[int] = getattr(socket, "TCP_QUICKACK", -1)
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
                 passes: Counter | None = None, reads: Counter | None = None, pass_ms: Histogram | None = None,
                 gap_ms: Histogram | None = None, gc_ms: Callable[[int], Histogram] | None = None,
                 delayed_ack: bool = False) -> None:
        if min_pass_interval < 0:
            raise ValueError(f"min_pass_interval must be >= 0, got {min_pass_interval}")
        self.hook = hook
        self.min_pass_interval = min_pass_interval  # seconds; see the module docstring
        self._passes = passes or Counter()  # the server's sori_twilio_ingest_passes_total
        self._reads = reads or Counter()  # ... and sori_twilio_ingest_reads_total (reads / passes = calls per pass)
        # Why frames are late (module docstring): pass durations, gaps between passes, GC pauses by generation.
        self._pass_ms = pass_ms
        self._gap_ms = gap_ms
        self._gc_ms = gc_ms
        self._readers: dict[int, Reader] = {}
        # The running pass's wake-up (wait_readable returned) and start (after the pass interval's sleep), Trio
        # time: the hook reads them to split a late frame's wait (engine/twilio/late.py; issue 13, r7-tail).
        self.woke = self.started = -math.inf
        # With delayed_ack (module docstring): per registered TCP fd, a socket object on it (never closed by us:
        # detached on unregister) whose setsockopt asks for a delayed ACK before each read.
        self.delayed_ack = delayed_ack and _TCP_QUICKACK >= 0
        self._ack_socks: dict[int, socket.socket] = {}
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
        if self.delayed_ack:
            self._track_ack(fd)

    def _track_ack(self, fd: int) -> None:
        """Keep a socket object on ``fd`` for its delayed-ACK requests, if it is TCP (else: nothing to ask)."""
        try:
            sock = socket.socket(fileno=fd)  # wraps fd, no dup; detached, never closed, by _untrack_ack
        except OSError:  # not a socket (a pipe, in tests)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 0)
        except OSError:  # a socket without TCP options (AF_UNIX)
            sock.detach()
            return
        self._ack_socks[fd] = sock

    def _untrack_ack(self, fd: int) -> None:
        sock = self._ack_socks.pop(fd, None)
        if sock is not None:
            sock.detach()  # the fd stays open: it is its owner's to close

    def unregister(self, fd: int) -> None:
        """Stop reading ``fd`` for good (idempotent); call before the socket is closed."""
        if self._readers.pop(fd, None) is None:
            return
        self._untrack_ack(fd)
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

    def _fold(self, gc_probe: _GcProbe | None) -> None:
        for h in (self._pass_ms, self._gap_ms, *(gc_probe.by_gen if gc_probe is not None else ())):
            if h is not None:
                h.fold()

    def _detach(self) -> None:
        """Let the running task go (it closes its epoll); the next register() starts a new one."""
        if self._scope is not None:
            self._scope.cancel()
        self._epoll = self._scope = None

    async def _run(self, epoll: select.epoll, scope: trio.CancelScope) -> None:
        epfd = epoll.fileno()
        readers = self._readers
        acks = self._ack_socks if self.delayed_ack else None
        tcp, quickack = socket.IPPROTO_TCP, _TCP_QUICKACK
        hook = self.hook
        passes, reads = self._passes, self._reads
        interval = self.min_pass_interval
        next_pass = -math.inf  # the earliest start of the next pass
        clock = trio.lowlevel.current_clock()
        # Per pass, one clock read at its end and a list append (folded per FOLD_AT, engine/metrics.py).
        timed = self._pass_ms is not None and self._gap_ms is not None  # the server gives both
        pass_ms = self._pass_ms.pending if self._pass_ms is not None else []
        gap_ms = self._gap_ms.pending if self._gap_ms is not None else []
        ended = math.inf  # the previous pass's end (none yet)
        gc_probe = None if self._gc_ms is None else _GcProbe(self._gc_ms)
        if gc_probe is not None:
            gc.callbacks.append(gc_probe)
        try:
            with scope:
                while True:
                    await trio.lowlevel.wait_readable(epfd)
                    now = self.woke = trio.current_time()
                    if now < next_pass:  # passes this close: let more calls' frames arrive first
                        await trio.sleep_until(next_pass)
                    # The pass's time is read after its poll (issue 13, r7-tail): every frame it reads was in its
                    # socket by then, even if this task was preempted between a clock read and the poll. A stream's
                    # frame-lag origin is its least-delayed frame: one frame given a time before it arrived made
                    # every later frame of that stream look that much later, for the rest of the call.
                    ready = epoll.poll(0)
                    now = self.started = clock.current_time()
                    next_pass = now + interval
                    passes.value += 1
                    if hook is not None:
                        hook.begin()
                    try:
                        for fd, _mask in ready:
                            reader = readers.get(fd)
                            if reader is None:
                                continue
                            if acks is not None and (sock := acks.get(fd)) is not None:
                                try:  # noqa: SIM105  (a with-statement costs more, once per frame)
                                    sock.setsockopt(tcp, quickack, 0)  # this read's ACK may wait (docstring)
                                except OSError:  # the socket failed: the read says how
                                    pass
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
                    if timed:
                        end = clock.current_time()
                        pass_ms.append((end - now) * 1000)
                        if ended <= now:
                            gap_ms.append((now - ended) * 1000)
                        ended = end
                        if len(pass_ms) >= Histogram.FOLD_AT:
                            self._fold(gc_probe)
        except Exception as exc:  # a reactor bug: each registered call fails on its own (finally), never the nursery
            log.error("reactor_failed", exc=exc)
        finally:
            if gc_probe is not None:
                with contextlib.suppress(ValueError):
                    gc.callbacks.remove(gc_probe)
            current = self._epoll is epoll
            trio.lowlevel.notify_closing(epfd)
            epoll.close()
            if current:  # not detached: we are cancelled with our nursery, or failed ourselves
                self._epoll = self._scope = None
                stranded = list(readers.values())
                readers.clear()
                for fd in list(self._ack_socks):
                    self._untrack_ack(fd)
                for reader in stranded:  # their tasks must not wait for bytes that no one reads
                    self._fail(reader, RuntimeError("the socket reactor stopped"))


class _GcProbe:
    """A ``gc.callbacks`` entry timing every collection (ms, by generation) while the reactor runs: ~1 µs
    per collection, and the GC pauses every task, the reactor's frames included (the frame-lag tail)."""

    __slots__ = ("by_gen", "started")

    def __init__(self, histogram: Callable[[int], Histogram]) -> None:
        self.by_gen = [histogram(g) for g in range(3)]
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        # Only an append: this runs inside a collection, which may have started in the middle of a fold of this
        # very histogram (a /metrics render); folding here would fold the values that fold is reading. The reactor
        # folds these with its pass histograms (_fold), and every read folds what is pending.
        self.by_gen[info["generation"]].pending.append((time.perf_counter() - self.started) * 1000)

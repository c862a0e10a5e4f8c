"""Event delivery off the hot path: JSON lines (stdout or a file), a signed webhook, a Python callback.

``EventSinks.emit(event)`` is synchronous and never blocks a call: it hands the encoded event to
bounded queues drained by worker tasks in the supervisor. A full queue drops the event and counts it.

Each sink fails alone: a JSONL write error (a full disk, a reader that went away) or a webhook that is
down never stops the other sink, nor the service. A failed JSONL write is retried with capped backoff,
then its batch is dropped; a failed webhook request is retried, then its event is dropped. Every drop is
counted (``events_dropped_total{sink}`` and ``sink_events_dropped_total{sink,reason}``) and logged, at
most one line per sink every ``LOG_EVERY_S`` plus one when a sink starts failing and one when it recovers.

On shutdown the workers flush what is queued under ``FLUSH_DEADLINE_S`` (shielded: the flush always gets
its chance, and never more than that); what is still undelivered then is counted (reason ``shutdown``) and
logged in one line per sink. Writing to a pipe, a terminal or a socket never blocks the event loop and
stays cancellable: the descriptor is written without blocking and the worker waits until it is writable.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import io
import os
import random
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import IO, Protocol

import httpx
import trio

from engine.config import SinksConfig
from engine.events import Event, encode
from engine.log import get_logger
from engine.metrics import Counter, Registry
from engine.nursery import Backoff

log = get_logger(__name__)

FLUSH_DEADLINE_S = 2.0
JSONL_QUEUE = 100_000
JSONL_RETRIES = 3  # a failed batch is tried this many more times (with backoff) before it is dropped
WRITE_BACKOFF_INITIAL_S = 0.1
WRITE_BACKOFF_CAP_S = 5.0
LOG_EVERY_S = 10.0  # at most one ``event_dropped`` line per sink in this many seconds
SIGNATURE_HEADER = "X-Sori-Signature"
DELIVERY_HEADER = "X-Sori-Delivery"
SIGNATURE_TOLERANCE_S = 300.0


# -- webhook signatures --------------------------------------------------------------------------
def _digest(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Sori-Signature`` value: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>``.

    Signing the time with the body lets a receiver refuse a replayed request (see :func:`verify`).
    """
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(secret: str | bytes, header: str, body: bytes, *, now: float,
           tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """For receivers: is ``header`` (``X-Sori-Signature``) a signature of ``body`` made within ``tolerance_s`` of ``now``?

    ``now`` is the receiver's Unix time (``time.time()``). Compares in constant time; accepts several
    ``v1=`` entries (a secret being rotated); answers False, never raises, for a malformed header.
    """
    if not secret or not isinstance(header, str) or len(header) > 4096:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()) or len(value) > 12:
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if not abs(now - timestamp) <= tolerance_s:  # written so that a NaN ``now`` is refused too
        return False
    expected = _digest(secret, timestamp, body)
    return any(c.isascii() and hmac.compare_digest(expected, c) for c in candidates)


# -- drop accounting -----------------------------------------------------------------------------
class _DropReport:
    """One sink's dropped events: counted by reason, logged without flooding.

    ``event_dropped`` is logged at once for the first drop, then at most once per ``LOG_EVERY_S`` with
    the number dropped since the previous line (a webhook that is down must not write a log line per
    event). ``sink_failing`` and ``sink_recovered`` mark a failure episode, also at most once per
    ``LOG_EVERY_S`` (a webhook failing one request in two must not log two lines per request).
    Fields are the sink name, counts and an error name: never a URL, a path or a body.
    """

    def __init__(self, sink: str, metrics: Registry) -> None:
        self.sink = sink
        self._metrics = metrics
        self._total = metrics.counter("events_dropped_total", "events dropped by a sink", f"sink={sink}")
        self._by_reason: dict[str, Counter] = {}
        self._unlogged: dict[str, int] = {}
        self._dropped_logged_at: float | None = None
        self._failing_logged_at: float | None = None
        self._failing_since: float | None = None
        self._announced = False  # this episode's ``sink_failing`` line was written
        self._episode_drops = 0

    def drop(self, reason: str, n: int = 1, *, cause: str = "") -> None:
        if n <= 0:
            return
        self._count(reason, n)
        self._unlogged[reason] = self._unlogged.get(reason, 0) + n
        now = _now()
        if self._dropped_logged_at is None or now - self._dropped_logged_at >= LOG_EVERY_S:
            self._dropped_logged_at = now
            self._log_unlogged(cause)

    def failing(self, cause: str) -> None:
        """A write or a request failed."""
        if self._failing_since is not None:
            return
        now = self._failing_since = _now()
        self._episode_drops = 0
        self._announced = self._failing_logged_at is None or now - self._failing_logged_at >= LOG_EVERY_S
        if self._announced:
            self._failing_logged_at = now
            log.warning("sink_failing", sink=self.sink, cause=cause)

    def recovered(self) -> None:
        """A write or a request succeeded: ends the failure episode, if any."""
        if self._failing_since is None:
            return
        if self._announced:
            self._log_unlogged("")
            log.info("sink_recovered", sink=self.sink, dropped=self._episode_drops,
                     failed_s=round(_now() - self._failing_since, 3))
        self._failing_since = None

    def shutdown(self, n: int) -> None:
        """Events still undelivered when the shutdown flush ended: counted and logged in one line."""
        self._log_unlogged("")
        if n > 0:
            self._count("shutdown", n)
            log.warning("events_dropped_at_shutdown", sink=self.sink, dropped=n, flush_deadline_s=FLUSH_DEADLINE_S)

    def _count(self, reason: str, n: int) -> None:
        counter = self._by_reason.get(reason)
        if counter is None:
            counter = self._by_reason[reason] = self._metrics.counter(
                "sink_events_dropped_total", "events dropped by a sink, by reason", f"sink={self.sink}",
                f"reason={reason}")
        counter.inc(n)
        self._total.inc(n)
        self._episode_drops += n

    def _log_unlogged(self, cause: str) -> None:
        if not self._unlogged:
            return
        reasons = ",".join(f"{reason}={n}" for reason, n in sorted(self._unlogged.items()))
        log.warning("event_dropped", sink=self.sink, dropped=sum(self._unlogged.values()), reasons=reasons,
                    cause=cause or None)
        self._unlogged.clear()


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # emit() called outside Trio (an embedding application's thread)
        return time.monotonic()


def _cause(exc: BaseException) -> str:
    """An error's name for logs: ``ENOSPC``, ``EPIPE`` or the exception type (never its message)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, type(exc).__name__)
    return type(exc).__name__


# -- JSON lines: the pending bytes and the outputs ----------------------------------------------------
class _LineBuffer:
    """The JSON lines of the batch being written, and how far the write got.

    A write can stop part-way through a line: a pipe takes what fits, a disk fills up, a cancellation
    arrives while waiting for the reader. The offset is kept so the next write continues exactly there,
    and when a batch is given up the rest of a line already started is kept and written first: another
    line is never written into the middle of one.
    """

    def __init__(self) -> None:
        self._data = b""
        self._off = 0
        self._mid_line = False  # the bytes written so far end inside a line

    @property
    def empty(self) -> bool:
        return self._off >= len(self._data)

    def extend(self, lines: list[bytes]) -> None:
        if lines:
            self._data = self._data[self._off:] + b"\n".join(lines) + b"\n"
            self._off = 0

    def unwritten(self) -> memoryview:
        return memoryview(self._data)[self._off:]

    def advance(self, n: int) -> None:
        """``n`` more bytes were written."""
        if n > 0:
            self._off += n
            self._mid_line = self._data[self._off - 1] != 0x0A

    def lines_left(self) -> int:
        """Lines not completely written (a half-written one counts)."""
        return self._data.count(b"\n", self._off)

    def give_up(self) -> int:
        """Drop the unwritten lines but the rest of one already started; returns how many were dropped."""
        rest = self._data[self._off:]
        keep = rest.index(b"\n") + 1 if self._mid_line else 0
        self._data, self._off = rest[:keep], 0
        return rest.count(b"\n", keep)


class _Out(Protocol):
    async def write(self, data: memoryview) -> int:
        """Write some of ``data`` (at least one byte); returns how many bytes. Raises OSError."""
        ...

    def close(self) -> None: ...


class _TextOut:
    """A stream without a file descriptor (a StringIO, an embedding application's writer): written inline."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    async def write(self, data: memoryview) -> int:
        self._out.write(str(data, "utf-8"))
        self._out.flush()
        return len(data)

    def close(self) -> None:
        pass


class _FileOut:
    """A regular file: a write goes to the page cache in microseconds, so it is made inline."""

    def __init__(self, fd: int, *, owned: bool) -> None:
        self._fd = fd
        self._owned = owned

    async def write(self, data: memoryview) -> int:
        return os.write(self._fd, data)

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)


class _StreamOut:
    """A pipe, a terminal or a socket, whose reader may be slow or stalled.

    Written without blocking; when it is full the worker waits in ``wait_writable``, which a cancellation
    (the shutdown flush deadline, a second signal) interrupts at once. A blocking write in a worker thread
    could not be interrupted and kept SIGTERM waiting forever on a stalled reader.
    """

    def __init__(self, fd: int, send: Callable[[memoryview], int], release: Callable[[], None]) -> None:
        self._fd = fd
        self._send = send
        self._release = release

    async def write(self, data: memoryview) -> int:
        while True:
            try:
                return self._send(data)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._fd)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        self._release()


_shared_nonblocking_logged = False


def _private_nonblocking(fd: int) -> int:
    """A descriptor of our own, non-blocking, for the pipe or terminal behind ``fd``.

    ``O_NONBLOCK`` belongs to the open file description, which ``dup`` shares: setting it on stdout would
    also make stderr (often the same pipe) and any other writer non-blocking. Reopening through
    ``/proc/self/fd`` (Linux) gives a description of our own. Elsewhere, fall back to sharing it, as
    ``trio.lowlevel.FdStream`` does.
    """
    global _shared_nonblocking_logged
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a pipe without a reader
            raise BrokenPipeError(errno.EPIPE, "the pipe has no reader") from exc
        if not _shared_nonblocking_logged:
            _shared_nonblocking_logged = True
            log.warning("jsonl_stdout_nonblocking_shared", cause=_cause(exc))
    shared = os.dup(fd)
    os.set_blocking(shared, False)
    return shared


def _fd_out(fd: int, *, owned: bool) -> _Out:
    """The right output for a descriptor: inline for a regular file, non-blocking otherwise."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return _FileOut(fd, owned=owned)
    if stat.S_ISSOCK(mode):  # e.g. systemd's journal: MSG_DONTWAIT makes one send non-blocking, not the socket
        sock = socket.socket(fileno=os.dup(fd))
        if owned:
            os.close(fd)
        return _StreamOut(sock.fileno(), lambda data: sock.send(data, socket.MSG_DONTWAIT), sock.close)
    if not owned:
        fd = _private_nonblocking(fd)
    return _StreamOut(fd, partial(os.write, fd), partial(os.close, fd))


# -- the service ---------------------------------------------------------------------------------
class _Delivery:
    """One event for the webhook; its id stays the same across retries, so a receiver can de-duplicate."""

    __slots__ = ("body", "id")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.id = uuid.uuid4().hex


class EventSinks:
    """All configured sinks; run by the supervisor as the ``sinks`` service.

    The queues belong to the object, so ``emit()`` works before the service starts and across a restart;
    everything a run needs (the open output, the HTTP client, the batch being written, backoff) is built
    in ``run()``.
    """

    name = "sinks"

    def __init__(
        self,
        config: SinksConfig,
        metrics: Registry,
        *,
        on_event: Callable[[Event], None] | None = None,
        stdout: IO[str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.on_event = on_event
        self._stdout = stdout
        self._http_client = http_client
        self._jsonl_send, self._jsonl_recv = trio.open_memory_channel[bytes](JSONL_QUEUE if config.jsonl else 0)
        # Webhook lanes: events of one call always take the same lane, so each call's events arrive in order,
        # while up to ``webhook_workers`` requests are in flight (a 50 ms webhook must not cap the whole engine
        # at 20 events/s). The queue bound is shared out between the lanes.
        lanes = config.webhook_workers
        self._hook_lanes = [trio.open_memory_channel[bytes](max(1, config.webhook_queue // lanes)) for _ in range(lanes)]
        self._emitted = metrics.counter("events_total", "events emitted")
        self._jsonl_drops = _DropReport("jsonl", metrics)
        self._hook_drops = _DropReport("webhook", metrics)
        self._delivered_hook = metrics.counter("webhook_delivered_total", "webhook deliveries that got a 2xx")
        self._hook_failures = metrics.counter("webhook_failures_total", "webhook attempts that failed")
        self._jsonl_failures = metrics.counter("jsonl_write_failures_total", "JSONL writes that failed")

    def emit(self, event: Event) -> None:
        """Deliver an event to every sink without blocking; drops are counted and logged."""
        self._emitted.inc()
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:
                log.error("on_event_callback_failed", exc=exc)
        if not (self.config.jsonl or self.config.webhook_url):
            return
        body = encode(event)
        if self.config.jsonl:
            try:
                self._jsonl_send.send_nowait(body)
            except trio.WouldBlock:
                self._jsonl_drops.drop("queue_full")
        if self.config.webhook_url:
            try:
                self._hook_lanes[hash(event.call_sid) % len(self._hook_lanes)][0].send_nowait(body)
            except trio.WouldBlock:
                self._hook_drops.drop("queue_full")

    def webhook_queued(self) -> int:
        """Events waiting for the webhook, across lanes (for metrics and tests)."""
        return sum(send.statistics().current_buffer_used for send, _ in self._hook_lanes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.config.jsonl:
                nursery.start_soon(self._jsonl_worker)
            if self.config.webhook_url:
                nursery.start_soon(self._webhook_workers)
            task_status.started()
            await trio.sleep_forever()  # a service runs until cancelled, even with no worker

    # -- JSON lines ----------------------------------------------------------------------------
    def _queued_lines(self) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            try:
                lines.append(self._jsonl_recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return lines

    def _open_jsonl(self) -> _Out:
        target = self.config.jsonl
        if target == "-":
            out = self._stdout or sys.stdout
            try:
                fd = out.fileno()
            except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
                return _TextOut(out)  # no descriptor: a StringIO in tests, or an application's writer
            return _fd_out(fd, owned=False)
        # O_NONBLOCK: a named pipe without a reader fails at once (ENXIO) instead of blocking the open, and a
        # pipe opened by name is a description of our own. A regular file ignores it.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        fd = os.open(target, flags, 0o644)
        try:
            return _fd_out(fd, owned=True)
        except BaseException:
            os.close(fd)
            raise

    async def _write_all(self, out: _Out, buf: _LineBuffer) -> None:
        while not buf.empty:
            buf.advance(await out.write(buf.unwritten()))

    async def _jsonl_worker(self) -> None:
        """Write batches of lines; on an error retry with backoff, then drop the batch and carry on."""
        buf = _LineBuffer()
        out: _Out | None = None
        backoff = Backoff(WRITE_BACKOFF_INITIAL_S, WRITE_BACKOFF_CAP_S)
        failed_tries = 0
        try:
            while True:
                if buf.empty:
                    first = await self._jsonl_recv.receive()
                    buf.extend([first, *self._queued_lines()])
                try:
                    if out is None:
                        out = self._open_jsonl()
                    await self._write_all(out, buf)
                except Exception as exc:  # ENOSPC, EPIPE, EIO, a closed stream...: this sink fails alone
                    self._jsonl_failures.inc()
                    self._jsonl_drops.failing(_cause(exc))
                    if out is not None:
                        _close_quietly(out)
                        out = None  # reopened on the next try (a rotated file, a reader that came back)
                    failed_tries += 1
                    if failed_tries > JSONL_RETRIES:
                        failed_tries = 0
                        self._jsonl_drops.drop("write_error", buf.give_up(), cause=_cause(exc))
                    await trio.sleep(backoff.next_delay())
                    continue
                failed_tries = 0
                backoff.reset()
                self._jsonl_drops.recovered()
        finally:
            with trio.move_on_after(FLUSH_DEADLINE_S, shield=True):
                buf.extend(self._queued_lines())
                try:
                    if out is None:
                        out = self._open_jsonl()
                    await self._write_all(out, buf)
                except Exception as exc:
                    self._jsonl_drops.failing(_cause(exc))
            self._jsonl_drops.shutdown(buf.lines_left() + len(self._queued_lines()))
            if out is not None:
                _close_quietly(out)

    # -- webhook -------------------------------------------------------------------------------
    async def _webhook_workers(self) -> None:
        client = self._http_client or httpx.AsyncClient(timeout=self.config.webhook_timeout_ms / 1000)
        undelivered: list[int] = []  # each lane adds what it could not deliver by the flush deadline
        try:
            async with trio.open_nursery() as nursery:
                for _, receive in self._hook_lanes:
                    nursery.start_soon(self._webhook_worker, client, receive, undelivered)
        finally:
            self._hook_drops.shutdown(sum(undelivered))
            if self._http_client is None:
                with trio.move_on_after(1.0, shield=True):
                    await client.aclose()

    async def _webhook_worker(self, client: httpx.AsyncClient, receive: trio.MemoryReceiveChannel[bytes],
                              undelivered: list[int]) -> None:
        current: _Delivery | None = None
        try:
            while True:
                current = _Delivery(await receive.receive())
                await self._deliver(client, current)
                current = None
        finally:
            # The lanes flush side by side, each under the same deadline: one try per event, the one that
            # was in hand (mid-request or waiting to retry) first, with its delivery id.
            with trio.move_on_after(FLUSH_DEADLINE_S, shield=True):
                while True:
                    if current is None:
                        try:
                            current = _Delivery(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._deliver(client, current, retries=0)
                    current = None
            # Whatever is left is counted as dropped at shutdown, so it must not be delivered by a later run.
            left = self._queued_deliveries(receive) + (current is not None)
            undelivered.append(left)

    @staticmethod
    def _queued_deliveries(receive: trio.MemoryReceiveChannel[bytes]) -> int:
        """Empty a lane; returns how many events it held."""
        n = 0
        while True:
            try:
                receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return n
            n += 1

    def _headers(self, delivery: _Delivery) -> dict[str, str]:
        headers = {"content-type": "application/json", DELIVERY_HEADER: delivery.id}
        if self.config.webhook_secret:
            # Signed at each attempt: a retry minutes later carries a fresh timestamp.
            headers[SIGNATURE_HEADER] = sign(self.config.webhook_secret, delivery.body, int(time.time()))
        return headers

    async def _deliver(self, client: httpx.AsyncClient, delivery: _Delivery, retries: int | None = None) -> None:
        assert self.config.webhook_url is not None
        attempts = 1 + (self.config.webhook_retries if retries is None else retries)
        timeout_s = self.config.webhook_timeout_ms / 1000
        problem = "no attempt"
        for attempt in range(attempts):
            try:
                with trio.fail_after(timeout_s):
                    response = await client.post(self.config.webhook_url, content=delivery.body,
                                                 headers=self._headers(delivery))
                if response.status_code < 300:
                    self._delivered_hook.inc()
                    self._hook_drops.recovered()
                    return
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    problem = f"rejected with status {response.status_code}"
                    break
                problem = f"status {response.status_code}"
            except Exception as exc:  # httpx errors, the timeout, an invalid URL...: one failed attempt
                problem = _cause(exc)
            self._hook_failures.inc()
            self._hook_drops.failing(problem)
            if attempt + 1 < attempts:
                await trio.sleep(min(10.0, 0.2 * 2**attempt) * (1 + 0.2 * random.random()))
        self._hook_drops.failing(problem)
        self._hook_drops.drop("delivery_failed", cause=problem)


def _close_quietly(out: _Out) -> None:
    with contextlib.suppress(OSError):
        out.close()

"""JSONL sink: a stalled reader never holds up shutdown, a write error never takes down the other sink,
every event that is not written is counted and logged, and lines are never cut into one another."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading

import httpx
import pytest
import trio
import trio.testing

from engine.config import SinksConfig
from engine.events import Latency, TranscriptFinal, encode
from engine.metrics import Registry
from engine.sinks import FLUSH_DEADLINE_S, EventSinks

WATCHDOG_S = 10.0  # real seconds: turns a hang of the code under test into a failure


def final(n: int, call: str = "CA1") -> TranscriptFinal:
    return TranscriptFinal(call_sid=call, stream_sid="MZ1", utterance_id=f"MZ1:{n}", text=f"말 {n} " + "가" * 60,
                           confidence=0.9, start_ms=100.0 * n, end_ms=100.0 * n + 50, ts=1_800_000_000.0 + n,
                           latency=Latency(endpoint_ms=200, lease_ms=0, stt_ms=150, total_ms=352))


def line(n: int) -> bytes:
    """The JSON line of ``final(n)``."""
    return encode(final(n)) + b"\n"


class StalledPipe:
    """A pipe filled to the brim (with newlines) whose reader does not read.

    A watchdog thread closes the read end after ``watchdog_s`` real seconds: a writer that cannot be
    cancelled (a blocking write in a thread) then gets EPIPE and the test fails instead of hanging.
    """

    def __init__(self, watchdog_s: float = WATCHDOG_S) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        self.filler = 0
        try:
            while True:
                self.filler += os.write(self.w, b"\n" * 65536)
        except BlockingIOError:
            pass
        os.set_blocking(self.w, True)
        self._lock = threading.Lock()
        self._closed = False
        self._watchdog = threading.Timer(watchdog_s, self._close_reader)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _close_reader(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.r)

    def read_available(self) -> bytes:
        """Everything in the pipe now (the test's reader wakes up)."""
        os.set_blocking(self.r, False)
        chunks = []
        try:
            while True:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except BlockingIOError:
            pass
        return b"".join(chunks)

    def close(self) -> None:
        self._watchdog.cancel()
        self._close_reader()
        os.close(self.w)


def dropped(metrics: Registry, sink: str, reason: str) -> float:
    return metrics.value("sink_events_dropped_total", f"sink={sink}", f"reason={reason}")


def records(caplog: pytest.LogCaptureFixture, event: str, sink: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event and r.fields.get("sink") == sink]  # type: ignore[attr-defined]


async def wait_for(predicate, step: float = 0.01) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await trio.sleep(step)


# -- shutdown with a stalled reader ----------------------------------------------------------------
async def test_shutdown_with_stdout_pipe_stalled_ends_at_flush_deadline_and_counts_the_rest(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pipe = StalledPipe()
    metrics = Registry()
    sinks = EventSinks(SinksConfig(jsonl="-"), metrics, stdout=os.fdopen(pipe.w, "w", closefd=False))
    try:
        with trio.fail_after(FLUSH_DEADLINE_S + 5):
            async with trio.open_nursery() as nursery:
                await nursery.start(sinks.run)
                for n in range(3):
                    sinks.emit(final(n))
                await trio.testing.wait_all_tasks_blocked()  # the writer waits for the reader
                t0 = trio.current_time()
                nursery.cancel_scope.cancel()  # shutdown: the flush gets FLUSH_DEADLINE_S, no more
        assert trio.current_time() - t0 == pytest.approx(FLUSH_DEADLINE_S, abs=0.1)
        assert dropped(metrics, "jsonl", "shutdown") == 3
        assert metrics.value("events_dropped_total", "sink=jsonl") == 3
        [line] = records(caplog, "events_dropped_at_shutdown", "jsonl")
        assert line.fields["dropped"] == 3  # type: ignore[attr-defined]
        assert pipe.read_available() == b"\n" * pipe.filler  # nothing of ours, not even half a line
    finally:
        pipe.close()


async def test_shutdown_cuts_a_half_written_batch_and_counts_the_lines_not_written_whole(
        autojump_clock: trio.testing.MockClock) -> None:
    pipe = StalledPipe()
    metrics = Registry()
    sinks = EventSinks(SinksConfig(jsonl="-"), metrics, stdout=os.fdopen(pipe.w, "w", closefd=False))
    lines = 40  # ~10 kB: more than the 4 kB the reader makes room for
    try:
        with trio.fail_after(FLUSH_DEADLINE_S + 5):
            async with trio.open_nursery() as nursery:
                await nursery.start(sinks.run)
                for n in range(lines):
                    sinks.emit(final(n))
                await trio.testing.wait_all_tasks_blocked()
                assert len(os.read(pipe.r, 4096)) == 4096  # the reader takes one page, then stalls again
                await trio.testing.wait_all_tasks_blocked()  # the writer wrote what fits and waits
                nursery.cancel_scope.cancel()
        ours = pipe.read_available().lstrip(b"\n")
        assert ours, "the writer used the room the reader made"
        expected = b"".join(line(n) for n in range(lines))
        assert expected.startswith(ours)
        whole = ours.count(b"\n")
        assert 0 < whole < lines
        assert dropped(metrics, "jsonl", "shutdown") == lines - whole  # a half-written line is not delivered
    finally:
        pipe.close()


async def test_shutdown_with_stdout_socket_stalled_ends_at_flush_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    ours, peer = socket.socketpair()  # stdout as systemd's journal gives it: a stream socket
    filled = 0
    try:
        while True:
            filled += ours.send(b"\n" * 65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass
    watchdog = threading.Timer(WATCHDOG_S, peer.shutdown, (socket.SHUT_RDWR,))
    watchdog.start()
    metrics = Registry()
    sinks = EventSinks(SinksConfig(jsonl="-"), metrics, stdout=os.fdopen(ours.fileno(), "w", closefd=False))
    try:
        with trio.fail_after(FLUSH_DEADLINE_S + 5):
            async with trio.open_nursery() as nursery:
                await nursery.start(sinks.run)
                for n in range(3):
                    sinks.emit(final(n))
                await trio.testing.wait_all_tasks_blocked()
                t0 = trio.current_time()
                nursery.cancel_scope.cancel()
        assert trio.current_time() - t0 == pytest.approx(FLUSH_DEADLINE_S, abs=0.1)
        assert dropped(metrics, "jsonl", "shutdown") == 3
        assert ours.getblocking()  # MSG_DONTWAIT per send: the socket others share was left as it was
    finally:
        watchdog.cancel()
        ours.close()
        peer.close()


async def test_stdout_pipe_keeps_its_blocking_mode_for_other_writers() -> None:
    r, w = os.pipe()
    try:
        sinks = EventSinks(SinksConfig(jsonl="-"), Registry(), stdout=os.fdopen(w, "w", closefd=False))
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(sinks.run)
                sinks.emit(final(1))
                await trio.testing.wait_all_tasks_blocked()
                assert os.get_blocking(w)  # stderr is often this same pipe: it must not turn non-blocking
                nursery.cancel_scope.cancel()
        assert os.read(r, 65536) == line(1)
    finally:
        os.close(r)
        os.close(w)


async def test_a_slow_reader_gets_every_line_whole_and_in_order() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    received = bytearray()
    lines = 600  # ~180 kB: several times the pipe, so writes stop part-way through lines
    expected = b"".join(line(n) for n in range(lines))
    sinks = EventSinks(SinksConfig(jsonl="-"), Registry(), stdout=os.fdopen(w, "w", closefd=False))
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(sinks.run)
                for n in range(lines):
                    sinks.emit(final(n))
                    if n % 100 == 0:
                        await trio.testing.wait_all_tasks_blocked()  # a few batches, not one
                while len(received) < len(expected):
                    await trio.lowlevel.wait_readable(r)
                    received += os.read(r, 1000)  # a reader slower than the writer
                nursery.cancel_scope.cancel()
        assert bytes(received) == expected
    finally:
        os.close(r)
        os.close(w)


# -- write errors: this sink fails alone ------------------------------------------------------------
class FlakyOut:
    """A stdout replacement whose writes fail with ``error`` while it is set, then work again."""

    def __init__(self) -> None:
        self.error: int | None = None
        self.text = ""

    def write(self, text: str) -> int:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def hook_client(received: list[httpx.Request]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EPIPE])
async def test_write_error_drops_are_counted_logged_once_and_writing_resumes_while_webhook_delivers(
        code: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    out = FlakyOut()
    hooked: list[httpx.Request] = []
    metrics = Registry()
    cfg = SinksConfig(jsonl="-", webhook_url="http://hook.invalid/events", webhook_secret="whsec-never-logged")
    sinks = EventSinks(cfg, metrics, stdout=out, http_client=hook_client(hooked))  # type: ignore[arg-type]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            out.error = code
            for n in range(5):
                sinks.emit(final(n))
            await wait_for(lambda: dropped(metrics, "jsonl", "write_error") == 5)
            await wait_for(lambda: metrics.value("webhook_delivered_total") == 5)  # the webhook never noticed
            out.error = None
            for n in range(5, 10):
                sinks.emit(final(n))
            await wait_for(lambda: out.text.count("\n") == 5)
            await wait_for(lambda: metrics.value("webhook_delivered_total") == 10)
            nursery.cancel_scope.cancel()
    assert [json.loads(line)["utterance_id"] for line in out.text.splitlines()] == [f"MZ1:{n}" for n in range(5, 10)]
    assert metrics.value("events_dropped_total", "sink=jsonl") == 5
    assert metrics.value("jsonl_write_failures_total") == 4  # the first try and 3 retries, with backoff
    assert metrics.value("events_dropped_total", "sink=webhook") == 0
    [failing] = records(caplog, "sink_failing", "jsonl")
    assert failing.fields["cause"] == errno.errorcode[code]  # type: ignore[attr-defined]
    assert len(records(caplog, "sink_recovered", "jsonl")) == 1
    assert sum(r.fields["dropped"] for r in records(caplog, "event_dropped", "jsonl")) == 5  # type: ignore[attr-defined]
    ours = " ".join(f"{r.getMessage()} {r.fields}" for r in caplog.records if r.name == "engine.sinks")  # type: ignore[attr-defined]
    assert "whsec-never-logged" not in ours and "hook.invalid" not in ours


async def test_disk_full_for_real_never_stops_the_webhook(autojump_clock: trio.testing.MockClock) -> None:
    hooked: list[httpx.Request] = []
    metrics = Registry()
    cfg = SinksConfig(jsonl="/dev/full", webhook_url="http://hook.invalid/events")  # every write: ENOSPC
    sinks = EventSinks(cfg, metrics, http_client=hook_client(hooked))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            for n in range(5):
                sinks.emit(final(n))
            await wait_for(lambda: dropped(metrics, "jsonl", "write_error") == 5)
            for n in range(5, 8):
                sinks.emit(final(n))
            await wait_for(lambda: metrics.value("webhook_delivered_total") == 8)
            nursery.cancel_scope.cancel()
    assert len(hooked) == 8
    # the second batch was being retried when the service stopped: counted at shutdown
    assert metrics.value("events_dropped_total", "sink=jsonl") == 8


async def test_stdout_reader_gone_is_counted_and_never_stops_the_webhook(
        autojump_clock: trio.testing.MockClock) -> None:
    r, w = os.pipe()
    os.close(r)  # the program reading our stdout exited: EPIPE
    hooked: list[httpx.Request] = []
    metrics = Registry()
    cfg = SinksConfig(jsonl="-", webhook_url="http://hook.invalid/events")
    sinks = EventSinks(cfg, metrics, stdout=os.fdopen(w, "w", closefd=False), http_client=hook_client(hooked))
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(sinks.run)
                for n in range(4):
                    sinks.emit(final(n))
                await wait_for(lambda: dropped(metrics, "jsonl", "write_error") == 4)
                await wait_for(lambda: metrics.value("webhook_delivered_total") == 4)
                nursery.cancel_scope.cancel()
    finally:
        os.close(w)


# -- the line buffer ---------------------------------------------------------------------------------
def test_line_buffer_continues_a_cut_write_and_keeps_a_started_line_when_giving_up() -> None:
    from engine.sinks import _LineBuffer

    buf = _LineBuffer()
    buf.extend([b"aaaa", b"bbbb", b"cccc"])
    assert bytes(buf.unwritten()) == b"aaaa\nbbbb\ncccc\n"
    buf.advance(7)  # "aaaa\nbb" written
    assert buf.lines_left() == 2
    assert bytes(buf.unwritten()) == b"bb\ncccc\n"
    buf.extend([b"dddd"])
    assert bytes(buf.unwritten()) == b"bb\ncccc\ndddd\n"
    assert buf.give_up() == 2  # cccc, dddd dropped; the rest of bbbb kept so the next line starts clean
    assert bytes(buf.unwritten()) == b"bb\n" and not buf.empty
    buf.advance(3)
    assert buf.empty and buf.lines_left() == 0
    buf.extend([b"eeee"])
    assert buf.give_up() == 1 and buf.empty  # nothing started: the whole line goes


async def test_without_proc_the_pipe_is_shared_non_blocking_and_still_written(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import engine.sinks

    real_open = os.open

    def no_proc(path, *args, **kw):  # type: ignore[no-untyped-def]
        if str(path).startswith("/proc/self/fd/"):
            raise FileNotFoundError(errno.ENOENT, "no /proc here (not Linux)")
        return real_open(path, *args, **kw)

    monkeypatch.setattr(engine.sinks.os, "open", no_proc)
    monkeypatch.setattr(engine.sinks, "_shared_nonblocking_logged", False)
    r, w = os.pipe()
    try:
        sinks = EventSinks(SinksConfig(jsonl="-"), Registry(), stdout=os.fdopen(w, "w", closefd=False))
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(sinks.run)
                sinks.emit(final(1))
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
        assert os.read(r, 65536) == line(1)
        assert not os.get_blocking(w)  # the fallback's cost, logged once
        assert [rec.getMessage() for rec in caplog.records].count("jsonl_stdout_nonblocking_shared") == 1
    finally:
        os.close(r)
        os.close(w)

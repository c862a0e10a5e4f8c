"""The emulator's read hub (many sockets, one waiting task) and the session wire it feeds."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import msgspec
import numpy as np
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Ping

from engine.rtzr.emulator import Emulator, EmulatorConfig, SessionParams, SkipRecognizer, StreamSession
from engine.rtzr.emulator.reader import ReadHub
from engine.rtzr.emulator.server import LagHistogram
from engine.rtzr.emulator.session import Close, Send
from engine.rtzr.emulator.wire import Done, SessionWire


class Recorder:
    """A reader that drains its socket and notes every read."""

    def __init__(self, sock: socket.socket, log: list[tuple[int, bytes]], *, boom: bool = False) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.log = log
        self.boom = boom
        self.failed: Exception | None = None
        self.got = trio.Event()

    def readable(self) -> None:
        data = self.sock.recv(65536)
        if self.boom:
            raise ValueError("reader bug")
        self.log.append((self.fd, data))
        self.got.set()

    def fail(self, exc: Exception) -> None:
        self.failed = exc
        self.got.set()


@contextmanager
def pairs(n: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(n)]
    for a, _b in made:
        a.setblocking(False)
    try:
        yield made
    finally:
        for a, b in made:
            a.close()
            b.close()


@asynccontextmanager
async def hub_running() -> AsyncIterator[ReadHub]:
    async with trio.open_nursery() as nursery:
        hub = await nursery.start(ReadHub().run)
        yield hub
        nursery.cancel_scope.cancel()


async def test_one_wakeup_reads_every_ready_socket() -> None:
    log: list[tuple[int, bytes]] = []
    with trio.fail_after(10), pairs(4) as socks:
        async with hub_running() as hub:
            readers = [Recorder(a, log) for a, _b in socks]
            for r in readers:
                hub.add(r)
            for i, (_a, b) in enumerate(socks):  # all ready before the hub's task runs again
                b.send(b"x" * (i + 1))
            for r in readers:
                await r.got.wait()
            assert hub.wakeups == 1 and hub.reads == 4
            assert sorted(len(data) for _fd, data in log) == [1, 2, 3, 4]


async def test_a_read_batch_gathers_sockets_that_become_ready_within_it(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[int, bytes]] = []
    with trio.fail_after(10), pairs(2) as socks:
        async with trio.open_nursery() as nursery:
            hub = await nursery.start(ReadHub(batch_s=0.010).run)
            first, second = Recorder(socks[0][0], log), Recorder(socks[1][0], log)
            hub.add(first)
            hub.add(second)
            socks[0][1].send(b"a")
            await trio.sleep(0.005)  # the hub has woken for "a" and waits out its batch
            socks[1][1].send(b"b")
            await first.got.wait()
            await second.got.wait()
            assert hub.wakeups == 1 and hub.reads == 2
            nursery.cancel_scope.cancel()


async def test_a_paused_reader_is_not_read_until_resumed() -> None:
    log: list[tuple[int, bytes]] = []
    with trio.fail_after(10), pairs(2) as socks:
        async with hub_running() as hub:
            paused, other = Recorder(socks[0][0], log), Recorder(socks[1][0], log)
            hub.add(paused)
            hub.add(other)
            hub.pause(paused)
            socks[0][1].send(b"held")
            socks[1][1].send(b"read")
            await other.got.wait()  # the wake-up that would have read both
            assert log == [(other.fd, b"read")]
            hub.resume(paused)
            await paused.got.wait()
            assert log[-1] == (paused.fd, b"held")


async def test_a_failing_reader_is_dropped_and_told_and_the_others_go_on() -> None:
    log: list[tuple[int, bytes]] = []
    with trio.fail_after(10), pairs(2) as socks:
        async with hub_running() as hub:
            bad, good = Recorder(socks[0][0], log, boom=True), Recorder(socks[1][0], log)
            hub.add(bad)
            hub.add(good)
            socks[0][1].send(b"x")
            await bad.got.wait()
            assert isinstance(bad.failed, ValueError) and len(hub) == 1
            socks[1][1].send(b"y")
            await good.got.wait()
            assert log == [(good.fd, b"y")]


# ---------------------------------------------------------------------------------------------- wire (sans-IO part)

PARAMS = SessionParams(sample_rate=8000, encoding="LINEAR16", final_ms=150, interim_ms=300, epd_time=0.5)


def masked(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 65536
    head = bytes([0x80 | opcode, 0x80 | 126]) + len(payload).to_bytes(2, "big") if len(payload) >= 126 \
        else bytes([0x80 | opcode, 0x80 | len(payload)])
    return head + b"\0\0\0\0" + payload


def loud(ms: int) -> bytes:
    t = np.arange(ms * 8) / 8000
    return (np.sin(2 * np.pi * 300 * t) * 8000).astype("<i2").tobytes()


class Counter:
    bytes_received = 0


def wire_for(max_message_bytes: int = 1 << 20) -> tuple[SessionWire, Counter]:
    stats = Counter()
    session = StreamSession(PARAMS, SkipRecognizer(-45.0), [], trio.current_time())
    return SessionWire(-1, Connection(ConnectionType.SERVER), session, ReadHub(), stats,
                       max_message_bytes=max_message_bytes), stats


async def test_messages_behind_a_control_frame_wait_for_the_task() -> None:
    wire, stats = wire_for()
    audio = loud(100)
    wire.feed(masked(0x2, audio) + masked(0x9, b"p") + masked(0x2, audio))
    assert stats.bytes_received == len(audio)  # the first message at once, the second behind the ping
    assert [type(e) for e in wire.pending] == [Ping, np.ndarray]  # the fast path's audio, behind the ping
    assert wire.wake.is_set()


async def test_finalize_is_handled_at_once_and_its_final_queued_when_due(autojump_clock: trio.testing.MockClock) -> None:
    wire, _ = wire_for()
    wire.feed(masked(0x2, loud(300)) + masked(0x1, b'{"type":"Finalize"}'))
    assert not wire.pending and not wire.actions  # the final is due final_ms later
    await trio.sleep(0.15)
    wire.poll()
    assert len(wire.actions) == 1
    action = wire.actions[0]
    assert isinstance(action, Send) and '"final":true' in action.text


async def test_eos_hands_the_socket_to_the_task_once_the_close_is_due(autojump_clock: trio.testing.MockClock) -> None:
    wire, _ = wire_for()
    wire.feed(masked(0x2, loud(300)) + masked(0x1, b"EOS"))
    await trio.sleep(0.15)
    wire.poll()
    assert [type(a) for a in wire.actions] == [Send, Close]
    wire.resume()  # the hub must not read again: the close handshake is the task's (no hub running: no error)


async def test_a_message_above_the_limit_ends_the_session() -> None:
    wire, _ = wire_for(max_message_bytes=1024)
    wire.feed(masked(0x1, b"x" * 2000))
    assert isinstance(wire.fatal, Done) and wire.wake.is_set()


async def test_a_fragmented_text_message_is_one_message(autojump_clock: trio.testing.MockClock) -> None:
    wire, _ = wire_for()
    wire.feed(bytes([0x01, 0x80 | 1]) + b"\0\0\0\0E" + bytes([0x80, 0x80 | 2]) + b"\0\0\0\0OS")  # "E" + "OS"
    assert not wire.pending
    await trio.sleep(0.15)
    wire.poll()
    assert [type(a) for a in wire.actions] == [Close]  # EOS with nothing pending: close at once


# ---------------------------------------------------------------------------------------------- lag probe


def test_lag_histogram_buckets() -> None:
    h = LagHistogram()
    for lag in (0.0, 1.0, 1.5, 20.0, 20.5, 5000.0):
        h.add(lag)
    assert h.counts[0] == 2 and h.counts[1] == 1 and h.counts[4] == 1 and h.counts[5] == 1 and h.counts[-1] == 1
    assert h.max_ms == 5000.0


async def test_lag_probe_and_stats_endpoint(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            emu = await nursery.start(Emulator(EmulatorConfig(handshake_ms=5, final_ms=20, lag_probe_ms=10)).run)
            await trio.sleep(1.0)
            async with httpx.AsyncClient() as client:
                doc = (await client.get(emu.api_base + "/stats")).json()
            assert sum(doc["loop_lag"]["counts"]) >= 99
            assert doc["sessions_active"] == 0 and "read_wakeups" in doc
            assert msgspec.json.decode(emu.stats_json())["loop_lag"]["bounds_ms"][0] == 1.0
            nursery.cancel_scope.cancel()


async def test_no_probe_by_default(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        emu = await nursery.start(Emulator(EmulatorConfig(handshake_ms=5)).run)
        await trio.sleep(1.0)
        assert sum(emu.stats.loop_lag.counts) == 0
        nursery.cancel_scope.cancel()


def test_cli_load_test_flags() -> None:
    import argparse

    from engine.rtzr.emulator.cli import config_from_args, configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    config = config_from_args(parser.parse_args(["--lag-probe-ms", "10", "--read-batch-ms", "2.5"]))
    assert (config.lag_probe_ms, config.read_batch_ms) == (10, 2.5)
    defaults = config_from_args(parser.parse_args([]))
    assert (defaults.lag_probe_ms, defaults.read_batch_ms) == (0, 0.0)

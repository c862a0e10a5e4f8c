"""A driven read hub (the one-process load rig's emulator): nothing is read until its owner calls ``drain``."""

from __future__ import annotations

import socket

import trio
import trio.testing

from engine.rtzr.emulator.reader import ReadHub


class Recorder:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.data: list[bytes] = []

    def readable(self) -> None:
        self.data.append(self.sock.recv(65536))

    def fail(self, exc: Exception) -> None:
        raise AssertionError(exc)


async def test_a_driven_hub_reads_only_when_drained() -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                hub = await nursery.start(ReadHub(driven=True).run)
                readers = [Recorder(a) for a, _b in pairs]
                for (a, b), r in zip(pairs, readers, strict=True):
                    a.setblocking(False)
                    hub.add(r)
                    b.send(b"x")
                await trio.testing.wait_all_tasks_blocked()
                assert [r.data for r in readers] == [[], [], []] and hub.reads == 0
                hub.drain()
                assert [r.data for r in readers] == [[b"x"]] * 3 and (hub.wakeups, hub.reads) == (1, 3)
                hub.drain()  # nothing ready: no wake-up counted
                assert (hub.wakeups, hub.reads) == (1, 3)
                nursery.cancel_scope.cancel()
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_drain_before_the_hub_runs_is_a_no_op() -> None:
    ReadHub(driven=True).drain()


async def test_a_bounded_drain_stops_at_its_time_and_leaves_the_rest_ready(mock_clock: trio.testing.MockClock) -> None:
    clock = mock_clock
    pairs = [socket.socketpair() for _ in range(3)]

    class Slow(Recorder):
        def readable(self) -> None:
            super().readable()
            clock.jump(1.0)  # each read takes a second of (mock) time

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                hub = await nursery.start(ReadHub(driven=True).run)
                readers = [Slow(a) for a, _b in pairs]
                for (a, b), r in zip(pairs, readers, strict=True):
                    a.setblocking(False)
                    hub.add(r)
                    b.send(b"x")
                assert hub.drain(until=trio.current_time() + 0.5) is False  # one read, then past its time
                assert hub.reads == 1
                assert hub.drain() is True  # the other two were still ready
                assert hub.reads == 3 and all(r.data == [b"x"] for r in readers)
                nursery.cancel_scope.cancel()
    finally:
        for a, b in pairs:
            a.close()
            b.close()

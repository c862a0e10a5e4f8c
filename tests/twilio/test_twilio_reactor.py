"""The multi-socket reader (engine/twilio/reactor.py): many sockets per wake-up, each call still its own.

Unit tests on AF_UNIX socket pairs (a write is readable on the other end at once, so what one wake-up sees
is deterministic), then the Twilio server over loopback: many calls on one reactor, one call's bad frame,
exception or silence not disturbing the others, control frames handed to the call's own task.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from engine.media import AudioReceived
from engine.twilio.reactor import KEEP, PAUSE, Reactor
from engine.twilio.server import CallHandler, TwilioSession
from tests.twilio.test_twilio_protocol import connected, media, start, stop
from tests.twilio.test_twilio_server import raw_client, wait_for
from tests.twilio.twilio_support import RecordingHandler, running_server


class Collect:
    """A Reader that records what it got; raises on b"boom", pauses on b"pause"."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.errors: list[Exception] = []
        self.changed = trio.Event()

    def readable(self, data: bytes, now: float) -> bool:
        self.changed.set()
        if not data:
            self.eof = True
            return PAUSE
        if data == b"boom":
            raise ValueError("bad frame")
        self.data += data
        return PAUSE if data == b"pause" else KEEP

    def failed(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.changed.set()


@contextmanager
def socket_pairs(n: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    pairs = [socket.socketpair() for _ in range(n)]
    for ours, _theirs in pairs:
        ours.setblocking(False)
    try:
        yield pairs
    finally:
        for a, b in pairs:
            a.close()
            b.close()


async def until(predicate: object) -> None:
    """Let the reactor run until ``predicate()`` holds (checkpoints, no clock)."""
    while not predicate():  # type: ignore[operator]
        await trio.sleep(0)


async def test_one_wakeup_reads_every_ready_socket() -> None:
    reactor = Reactor()
    with trio.fail_after(5), socket_pairs(50) as pairs:
        async with trio.open_nursery() as nursery:
            readers = [Collect() for _ in pairs]
            for (ours, _), reader in zip(pairs, readers, strict=True):
                reactor.register(ours.fileno(), reader, nursery)
            await trio.sleep(0)  # the reactor is now waiting on its epoll
            for i, (_, theirs) in enumerate(pairs):  # no checkpoint between the writes
                theirs.send(b"frame %d" % i)
            await until(lambda: all(r.data for r in readers))
            assert [bytes(r.data) for r in readers] == [b"frame %d" % i for i in range(50)]
            assert reactor.reads == 50
            assert reactor.wakeups == 1  # fifty sockets, one wake-up
            for ours, _ in pairs:
                reactor.unregister(ours.fileno())
        assert not reactor.running  # the last unregister let the task go


async def test_a_reader_that_raises_is_paused_and_told_others_go_on() -> None:
    reactor = Reactor()
    with trio.fail_after(5), socket_pairs(3) as pairs:
        async with trio.open_nursery() as nursery:
            readers = [Collect() for _ in pairs]
            for (ours, _), reader in zip(pairs, readers, strict=True):
                reactor.register(ours.fileno(), reader, nursery)
            pairs[1][1].send(b"boom")
            await until(lambda: readers[1].errors)
            assert isinstance(readers[1].errors[0], ValueError)
            for _, theirs in pairs:
                theirs.send(b"more")
            await until(lambda: readers[0].data and readers[2].data)
            assert readers[1].data == b""  # paused after its failure: nothing more is read for it
            assert reactor.running
            reactor.resume(pairs[1][0].fileno())  # its task decides to go on
            await until(lambda: readers[1].data)
            assert readers[1].data == b"more"
            for ours, _ in pairs:
                reactor.unregister(ours.fileno())


async def test_pause_until_resume_and_eof() -> None:
    reactor = Reactor()
    with trio.fail_after(5), socket_pairs(1) as pairs:
        (ours, theirs), = pairs
        reader = Collect()
        async with trio.open_nursery() as nursery:
            reactor.register(ours.fileno(), reader, nursery)
            theirs.send(b"pause")
            await until(lambda: reader.data)
            theirs.send(b"x")
            for _ in range(20):
                await trio.sleep(0)
            assert reader.data == b"pause"  # paused: the byte waits in the socket
            reactor.resume(ours.fileno())
            await until(lambda: reader.data == b"pausex")
            theirs.close()
            await until(lambda: reader.eof)
            reactor.unregister(ours.fileno())


async def test_each_registration_is_cancellable_on_its_own() -> None:
    """Per-connection tasks on one reactor: cancelling one leaves the reactor and the others running."""
    reactor = Reactor()
    with trio.fail_after(5), socket_pairs(3) as pairs:
        readers = [Collect() for _ in pairs]
        scopes = [trio.CancelScope() for _ in pairs]
        done: list[int] = []

        async def connection(i: int, nursery: trio.Nursery) -> None:
            fd = pairs[i][0].fileno()
            with scopes[i]:
                reactor.register(fd, readers[i], nursery)
                try:
                    await trio.sleep_forever()
                finally:
                    reactor.unregister(fd)
            done.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(connection, i, nursery)
            await until(lambda: reactor.registered == 3)
            scopes[1].cancel()
            await until(lambda: done == [1])
            assert reactor.registered == 2 and reactor.running
            for _, theirs in pairs:
                theirs.send(b"a")
            await until(lambda: readers[0].data and readers[2].data)
            assert readers[1].data == b""
            scopes[0].cancel()
            scopes[2].cancel()
        assert sorted(done) == [0, 1, 2]
        assert not reactor.running


async def test_cancelled_reactor_fails_its_readers_and_a_new_one_starts() -> None:
    reactor = Reactor()
    with trio.fail_after(5), socket_pairs(2) as pairs:
        first = Collect()
        async with trio.open_nursery() as nursery:
            reactor.register(pairs[0][0].fileno(), first, nursery)
            await trio.sleep(0)
            nursery.cancel_scope.cancel()
        assert first.errors and "stopped" in str(first.errors[0])
        assert not reactor.running and reactor.registered == 0
        second = Collect()
        async with trio.open_nursery() as nursery:
            reactor.register(pairs[1][0].fileno(), second, nursery)
            pairs[1][1].send(b"hi")
            await until(lambda: second.data)
            reactor.unregister(pairs[1][0].fileno())
        assert second.data == b"hi"


async def test_double_registration_is_refused() -> None:
    reactor = Reactor()
    with trio.fail_after(5), socket_pairs(1) as pairs:
        async with trio.open_nursery() as nursery:
            fd = pairs[0][0].fileno()
            reactor.register(fd, Collect(), nursery)
            with pytest.raises(RuntimeError):
                reactor.register(fd, Collect(), nursery)
            reactor.unregister(fd)
            reactor.unregister(fd)  # idempotent


# -- the server on one reactor ------------------------------------------------------------------

FRAMES = 25


class RaisingHandler(RecordingHandler):
    """A pipeline bug in the per-frame path: raises on the frame whose payload starts with 0x7E."""

    def on_event(self, event: object) -> None:
        if isinstance(event, AudioReceived) and event.payload[:1] == b"\x7e":
            raise RuntimeError("per-frame bug")
        super().on_event(event)  # type: ignore[arg-type]


async def test_many_calls_share_one_reactor() -> None:
    n = 12
    with trio.fail_after(20):
        async with running_server() as srv:
            async with trio.open_nursery() as nursery:
                ready = trio.Event()

                async def call(i: int) -> None:
                    async with raw_client(srv.port) as ws:
                        await ws.send_message(connected())
                        await ws.send_message(start())
                        await ready.wait()
                        for k in range(FRAMES):
                            await ws.send_message(media(k + 2, k + 1, k * 20, bytes([i + 1]) * 160))
                        await ws.send_message(stop(FRAMES + 2))
                        await wait_for(lambda: len(srv.handlers) == n and all(h.close_reasons for h in srv.handlers))

                for i in range(n):
                    nursery.start_soon(call, i)
                reactor = srv.server._reactor
                await wait_for(lambda: reactor.registered == n)  # every call is on the one reactor at once
                ready.set()
            assert reactor.reads > 0 and not reactor.running
    assert sorted(h.close_reasons[0] for h in srv.handlers) == ["stop"] * n
    assert all(h.samples == FRAMES * 160 and h.saw_stop for h in srv.handlers)
    assert srv.metrics.value("twilio_frames_total") == n * FRAMES


async def test_a_bad_frame_or_a_bug_in_one_call_leaves_the_others_alone() -> None:
    """Call 0 sends junk (dropped, counted); call 1's handler raises on a frame (that call fails alone);
    call 2 goes silent (its own idle deadline ends it); call 3 pings (answered by its own task). Every
    other frame of every call arrives."""
    from tests.twilio.twilio_support import make_config

    handlers: list[RecordingHandler] = []

    def factory(session: TwilioSession) -> CallHandler:
        cls = RaisingHandler if session.custom_parameters.get("lang") == "bug" else RecordingHandler
        handler = cls(session)
        handlers.append(handler)
        return handler

    cfg = make_config(twilio__read_idle_ms=1500)
    results: dict[int, str] = {}
    with trio.fail_after(20):
        async with running_server(cfg, factory=factory) as srv:
            async with trio.open_nursery() as nursery:
                go = trio.Event()

                async def call(i: int) -> None:
                    async with raw_client(srv.port) as ws:
                        await ws.send_message(connected())
                        await ws.send_message(start() if i != 1 else start().replace('"ko"', '"bug"'))
                        await go.wait()
                        if i == 2:  # silent from here on: the idle deadline, not the others, ends it
                            await wait_for(lambda: any(h.close_reasons == ["idle_timeout"] for h in handlers))
                            results[i] = "idle"
                            return
                        for k in range(FRAMES):
                            payload = b"\x7e" * 160 if (i == 1 and k == 5) else bytes([0x20 + i]) * 160
                            try:
                                await ws.send_message(media(k + 2, k + 1, k * 20, payload))
                            except ConnectionClosed:
                                assert i == 1  # the failing call is cut; no one else is
                                break
                            if i == 0 and k == 3:
                                await ws.send_message('{"event": "media", "junk')
                            if i == 3 and k == 7:
                                await ws.ping(b"are you there")
                            await trio.sleep(0.002)
                        if i != 1:
                            await ws.send_message(stop(FRAMES + 2))
                        await wait_for(lambda: len(handlers) == 4 and sum(bool(h.close_reasons) for h in handlers) >= 3)
                        results[i] = "sent"

                for i in range(4):
                    nursery.start_soon(call, i)
                await wait_for(lambda: srv.server._reactor.registered == 4)
                go.set()
                await wait_for(lambda: len(results) == 4 and all(h.close_reasons for h in handlers), timeout=15)
    by_param = {h.session.custom_parameters["lang"]: h for h in handlers}
    bug = by_param["bug"]
    assert bug.close_reasons == ["handler_error"] and bug.samples == 5 * 160
    assert srv.metrics.value("twilio_connection_failures_total") == 1
    reasons = sorted(h.close_reasons[0] for h in handlers if h is not bug)
    assert reasons == ["idle_timeout", "stop", "stop"]
    full = [h for h in handlers if h.close_reasons == ["stop"]]
    assert all(h.samples == FRAMES * 160 for h in full)
    assert srv.metrics.value("twilio_protocol_errors_total", "kind=json") == 1


async def test_a_failure_of_the_reactor_itself_fails_each_reader_not_the_nursery(monkeypatch: pytest.MonkeyPatch) -> None:
    reactor = Reactor()
    with trio.fail_after(5), socket_pairs(2) as pairs:
        readers = [Collect(), Collect()]
        async with trio.open_nursery() as nursery:  # would raise here if the reactor's error escaped
            for (ours, _), reader in zip(pairs, readers, strict=True):
                reactor.register(ours.fileno(), reader, nursery)
            await trio.sleep(0)

            def broken_read(fd: int, n: int) -> bytes:
                raise ValueError("reactor bug")

            monkeypatch.setattr("engine.twilio.reactor.os.read", broken_read)
            pairs[0][1].send(b"x")
            await until(lambda: all(r.errors for r in readers))
        assert all("stopped" in str(r.errors[0]) for r in readers)
        assert not reactor.running


async def test_a_close_in_the_same_read_as_start_ends_the_call_at_once() -> None:
    """The peer's close arrived with `start` (handled before the reactor): the call ends "closed" at once,
    not after the idle deadline, although the peer keeps its TCP connection open."""
    import wsproto
    from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

    from tests.twilio.twilio_support import make_config

    cfg = make_config(server__allow_unsigned=True, twilio__read_idle_ms=60_000)
    with trio.fail_after(10):
        async with running_server(cfg) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            await stream.send_all(client.send(Request(host=f"127.0.0.1:{srv.port}", target="/twilio/media")))
            accepted = False
            while not accepted:
                client.receive_data(await stream.receive_some(65536))
                accepted = any(isinstance(e, AcceptConnection) for e in client.events())
            await stream.send_all(client.send(TextMessage(connected())) + client.send(TextMessage(start()))
                                  + client.send(TextMessage(media(2, 1, 0))) + client.send(CloseConnection(1000)))
            await wait_for(lambda: srv.handlers and srv.handlers[0].close_reasons)
            await stream.aclose()
    assert srv.handlers[0].close_reasons == ["closed"]
    assert srv.handlers[0].samples == 160


class Hook:
    """A PassHook that records the passes and what the readers did inside them."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.inside = False

    def begin(self) -> None:
        self.inside = True
        self.log.append("begin")

    def end(self) -> None:
        self.inside = False
        self.log.append("end")


async def test_pass_hook_wraps_every_wakeup_even_when_a_reader_raises() -> None:
    hook = Hook()
    reactor = Reactor(hook)
    with trio.fail_after(5), socket_pairs(3) as pairs:
        readers = [Collect(), Collect(), Collect()]  # the third: a live socket, to know a pass went by
        seen_inside: list[bool] = []
        orig = readers[1].readable

        def readable(data: bytes, now: float) -> bool:
            seen_inside.append(hook.inside)
            return orig(data, now)

        readers[1].readable = readable  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            for (ours, _), reader in zip(pairs, readers, strict=True):
                reactor.register(ours.fileno(), reader, nursery)
            pairs[0][1].send(b"boom")  # reader 0 raises in the same wake-up as reader 1 reads
            pairs[1][1].send(b"abc")
            await until(lambda: readers[0].errors and readers[1].data)
            assert hook.log[-1] == "end" and not hook.inside  # the pass ended through the hook despite the raise
            assert seen_inside == [True]
            # A failure found in the hook's batched work: that reader is paused and told, the other reads on.
            reactor.fail(pairs[1][0].fileno(), RuntimeError("batched work failed"))
            assert isinstance(readers[1].errors[0], RuntimeError)
            pairs[1][1].send(b"more")
            pairs[0][1].send(b"x")  # reader 0 was paused by its own raise: nothing reads it either
            pairs[2][1].send(b"live")  # sent last: the pass that reads it saw the paused sockets ready too
            await until(lambda: readers[2].data)
            assert bytes(readers[1].data) == b"abc" and not readers[0].data
            reactor.fail(12345, RuntimeError("unknown fd: ignored"))
            nursery.cancel_scope.cancel()
    assert hook.log.count("begin") == hook.log.count("end") >= 1


# The pass interval (issue 13): passes that would come closer than min_pass_interval wait, so one pass
# reads more calls. A manual MockClock: the reactor's wait is visible as "every task blocked, clock still".


async def test_frames_sooner_than_the_pass_interval_wait_for_the_next_pass_together(
        mock_clock: trio.testing.MockClock) -> None:
    clock = mock_clock
    hook = Hook()
    reactor = Reactor(hook, min_pass_interval=0.005)
    with trio.fail_after(5), socket_pairs(3) as pairs:
        readers = [Collect() for _ in pairs]
        async with trio.open_nursery() as nursery:
            for (ours, _), reader in zip(pairs, readers, strict=True):
                reactor.register(ours.fileno(), reader, nursery)
            pairs[0][1].send(b"a")
            await until(lambda: readers[0].data)
            first = trio.current_time()
            assert reactor.wakeups == 1
            pairs[1][1].send(b"b")  # 0 ms after the first pass started: it must wait for the interval
            await trio.testing.wait_all_tasks_blocked()
            pairs[2][1].send(b"c")
            await trio.testing.wait_all_tasks_blocked()
            assert not readers[1].data and not readers[2].data and trio.current_time() == first
            clock.jump(0.005)
            await until(lambda: readers[1].data and readers[2].data)
            assert reactor.wakeups == 2 and reactor.reads == 3  # both late frames in one pass
            assert hook.log == ["begin", "end", "begin", "end"]
            nursery.cancel_scope.cancel()


async def test_a_frame_after_a_quiet_interval_is_read_at_once(mock_clock: trio.testing.MockClock) -> None:
    clock = mock_clock
    reactor = Reactor(min_pass_interval=0.005)
    with trio.fail_after(5), socket_pairs(1) as pairs:
        reader = Collect()
        async with trio.open_nursery() as nursery:
            reactor.register(pairs[0][0].fileno(), reader, nursery)
            pairs[0][1].send(b"a")
            await until(lambda: reader.data)
            clock.jump(0.020)  # a lone call: the next frame comes 20 ms later, long after the interval
            pairs[0][1].send(b"b")
            await trio.testing.wait_all_tasks_blocked()
            assert bytes(reader.data) == b"ab" and reactor.wakeups == 2  # read without the clock moving
            nursery.cancel_scope.cancel()


def test_a_negative_pass_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="min_pass_interval"):
        Reactor(min_pass_interval=-0.001)

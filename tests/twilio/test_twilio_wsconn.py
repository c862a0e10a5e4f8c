"""WsServerConnection over real loopback sockets, driven by a raw wsproto client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from engine.budgets import Budget, BudgetExpired
from engine.twilio.wsconn import ConnectionClosed, HandshakeFailed, TextFrameDecoder, WsServerConnection
from tests.twilio.twilio_support import make_config, running_server

Serve = Callable[[WsServerConnection], Awaitable[None]]


class Client:
    """A raw wsproto client: full control of frames, no hidden replies."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.eof = False
        self.pending: list[Event] = []

    async def upgrade(self, *, then: bytes = b"") -> None:
        await self.stream.send_all(self.ws.send(Request(host="127.0.0.1", target="/ws")) + then)
        await self.until(AcceptConnection)  # what came in the same read (a first message) stays pending

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.ws.send(e) for e in events))

    async def events(self) -> list[Event]:
        """Everything that arrives in the next read (EOF sets ``eof``)."""
        data = await self.stream.receive_some(1 << 16)
        if not data:
            self.eof = True
            return []
        self.ws.receive_data(data)
        return list(self.ws.events())

    async def until(self, kind: type[Event]) -> Event:
        """The next event of ``kind``; later events of the same read are kept for the next call."""
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if isinstance(event, kind):
                    return event
            if self.eof:
                raise AssertionError(f"EOF before {kind.__name__}")
            self.pending = await self.events()


@asynccontextmanager
async def pair(serve: Serve, *, max_message_size: int = 1 << 20, send_ms: int = 2000,
               upgrade: bool = True) -> AsyncIterator[tuple[Client, list[BaseException]]]:
    """A one-connection server running ``serve(conn)`` after the upgrade; exceptions are collected."""
    errors: list[BaseException] = []

    async def handler(stream: trio.SocketStream) -> None:
        conn = WsServerConnection(stream, send_budget=Budget("send", send_ms), max_message_size=max_message_size)
        try:
            await conn.read_request()
            await conn.accept()
            await serve(conn)
        except Exception as exc:
            errors.append(exc)
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = Client(await trio.open_tcp_stream("127.0.0.1", port))
        if upgrade:
            await client.upgrade()
        yield client, errors
        await client.stream.aclose()
        nursery.cancel_scope.cancel()


def collect_until_closed(into: list[str | bytes], closed: list[ConnectionClosed]) -> Serve:
    async def serve(conn: WsServerConnection) -> None:
        try:
            while True:
                into.append(await conn.receive_message())
        except ConnectionClosed as exc:
            closed.append(exc)
            assert conn.closed is exc
    return serve


async def test_single_and_fragmented_text_and_binary_messages() -> None:
    got: list[str | bytes] = []
    closed: list[ConnectionClosed] = []
    with trio.fail_after(10):
        async with pair(collect_until_closed(got, closed)) as (client, errors):
            await client.send(TextMessage("whole"),
                              TextMessage("ab", message_finished=False), TextMessage("c한", message_finished=False),
                              TextMessage("d", message_finished=True),
                              BytesMessage(b"\x00\x01", message_finished=False), BytesMessage(b"\x02"))
            await client.send(TextMessage("last"), CloseConnection(1000, "bye"))
            reply = await client.until(CloseConnection)
    assert got == ["whole", "abc한d", b"\x00\x01\x02", "last"]
    assert isinstance(reply, CloseConnection) and reply.code == 1000
    assert closed[0].code == 1000 and closed[0].reason == "bye" and errors == []


async def test_fragments_split_across_tcp_writes() -> None:
    got: list[str | bytes] = []
    closed: list[ConnectionClosed] = []
    with trio.fail_after(10):
        async with pair(collect_until_closed(got, closed)) as (client, _errors):
            data = client.ws.send(TextMessage("x" * 3000))
            for i in range(0, len(data), 7):  # byte-dribbled frames are reassembled, not mis-parsed
                await client.stream.send_all(data[i:i + 7])
            await client.send(CloseConnection(1000))
            await client.until(CloseConnection)
    assert got == ["x" * 3000]


async def test_ping_is_answered_while_the_reader_waits() -> None:
    got: list[str | bytes] = []
    closed: list[ConnectionClosed] = []
    with trio.fail_after(10):
        async with pair(collect_until_closed(got, closed)) as (client, _errors):
            await client.send(Ping(b"hello"))
            pong = await client.until(Pong)
            await client.send(TextMessage("after"), CloseConnection(1000))
            await client.until(CloseConnection)
    assert isinstance(pong, Pong) and pong.payload == b"hello"
    assert got == ["after"]


@pytest.mark.parametrize("fragmented", [False, True])
async def test_message_over_the_limit_closes_with_1009(fragmented: bool) -> None:
    got: list[str | bytes] = []
    closed: list[ConnectionClosed] = []
    with trio.fail_after(10):
        async with pair(collect_until_closed(got, closed), max_message_size=1000) as (client, _errors):
            await client.send(TextMessage("ok" * 500))  # exactly at the limit
            if fragmented:
                await client.send(*(TextMessage("y" * 300, message_finished=False) for _ in range(4)))
            else:
                await client.send(TextMessage("y" * 1001))
            close = await client.until(CloseConnection)
    assert got == ["ok" * 500]
    assert isinstance(close, CloseConnection) and close.code == 1009
    assert closed[0].code == 1009


async def test_protocol_violation_closes_with_1002() -> None:
    closed: list[ConnectionClosed] = []
    with trio.fail_after(10):
        async with pair(collect_until_closed([], closed)) as (client, _errors):
            await client.stream.send_all(b"\x81\x02hi")  # an unmasked client frame is a protocol error
            close = await client.until(CloseConnection)
    assert isinstance(close, CloseConnection) and close.code == 1002 and closed[0].code == 1002


async def test_abrupt_peer_close_is_1006() -> None:
    got: list[str | bytes] = []
    closed: list[ConnectionClosed] = []
    with trio.fail_after(10):
        async with pair(collect_until_closed(got, closed)) as (client, _errors):
            await client.send(TextMessage("one"))
            await trio.aclose_forcefully(client.stream)
            while not closed:
                await trio.sleep(0.01)
    assert got == ["one"] and closed[0].code == 1006


async def test_server_close_handshake_and_sends_after_close() -> None:
    results: list[object] = []

    async def serve(conn: WsServerConnection) -> None:
        await conn.send_text("hi")
        with trio.fail_after(5):
            await conn.aclose(1000, "done")
        results.append(conn.closed)
        with pytest.raises(ConnectionClosed):
            await conn.send_text("too late")
        with pytest.raises(ConnectionClosed):
            await conn.receive_message()
        results.append("checked")

    with trio.fail_after(10):
        async with pair(serve) as (client, errors):
            msg = await client.until(TextMessage)
            close = await client.until(CloseConnection)
            assert isinstance(close, CloseConnection)
            await client.send(close.response())  # answer: the server's aclose returns
            while not client.eof:
                await client.events()
            while len(results) < 2 and not errors:  # the server side finishes its checks
                await trio.sleep(0.01)
    assert isinstance(msg, TextMessage) and msg.data == "hi"
    assert close.code == 1000 and close.reason == "done"
    assert errors == [] and len(results) == 2, (errors, results)
    closed = results[0]
    assert isinstance(closed, ConnectionClosed) and closed.code == 1000
    assert results[1] == "checked" and errors == []


async def test_send_to_a_peer_that_stopped_reading_expires_the_budget() -> None:
    outcome: list[BaseException] = []

    async def serve(conn: WsServerConnection) -> None:
        try:
            while True:
                await conn.send_text("z" * 65536)
        except (BudgetExpired, ConnectionClosed) as exc:
            outcome.append(exc)
        with pytest.raises(ConnectionClosed):  # a half-written frame: the connection is unusable
            await conn.send_text("more")

    with trio.fail_after(10):
        async with pair(serve, send_ms=300) as (_client, errors):
            while not outcome and not errors:
                await trio.sleep(0.05)
    assert isinstance(outcome[0], BudgetExpired) and errors == []


async def test_bytes_right_behind_the_request_head_are_not_lost() -> None:
    got: list[str | bytes] = []
    closed: list[ConnectionClosed] = []
    with trio.fail_after(10):
        async with pair(collect_until_closed(got, closed), upgrade=False) as (client, _errors):
            # frames sent before the 101 arrived, in the same TCP write as the request
            frames = Connection(ConnectionType.CLIENT).send(TextMessage("early"))
            await client.upgrade(then=frames)
            await client.send(TextMessage("late"), CloseConnection(1000))
            await client.until(CloseConnection)
    assert got == ["early", "late"]


async def test_slowloris_request_head_is_cut_by_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """On the MockClock: the cut is measured against the 300 ms budget, not the machine's speed."""
    outcome: list[str] = []

    async def handler(stream: trio.SocketStream) -> None:
        conn = WsServerConnection(stream, send_budget=Budget("send", 1000), max_message_size=1 << 20)
        try:
            with Budget("twilio_start", 300)():
                await conn.read_request()
            outcome.append("request")
        except BudgetExpired:
            outcome.append("cut")
        await trio.aclose_forcefully(stream)

    head = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            stream = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
            began = trio.current_time()
            eof = False
            try:
                for i in range(len(head)):
                    await stream.send_all(head[i:i + 1])
                    with trio.move_on_after(0.05):
                        if not await stream.receive_some(100):
                            eof = True
                            break
            except trio.BrokenResourceError:
                eof = True
            elapsed = trio.current_time() - began
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert outcome == ["cut"] and eof
    assert 0.25 <= elapsed < 2.0


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # a TLS ClientHello
    b"GET /twilio/media HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP, no upgrade
    b"POST /twilio/media HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
])
async def test_garbage_before_the_upgrade_gets_400_and_no_call(garbage: bytes) -> None:
    with trio.fail_after(10):
        async with running_server(make_config()) as srv:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            await stream.send_all(garbage)
            response = b""
            while chunk := await stream.receive_some(4096):
                response += chunk
            await stream.aclose()
    assert response.startswith(b"HTTP/1.1 400 ")
    assert srv.metrics.value("twilio_calls_rejected_total", "status=400") == 1
    assert srv.handlers == [] and srv.host.live_calls == 0


async def test_handshake_failures_are_typed() -> None:
    outcome: list[BaseException] = []

    async def handler(stream: trio.SocketStream) -> None:
        conn = WsServerConnection(stream, send_budget=Budget("send", 1000), max_message_size=1 << 20)
        try:
            await conn.read_request()
        except HandshakeFailed as exc:
            outcome.append(exc)
        await trio.aclose_forcefully(stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.aclose()  # gone before sending anything: status 0, nothing to answer
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                  b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5aw==\r\n\r\n")
            while len(outcome) < 2:
                await trio.sleep(0.01)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    statuses = sorted(e.status for e in outcome if isinstance(e, HandshakeFailed))
    assert statuses == [0, 426]  # an unsupported WebSocket version: 426 Upgrade Required


async def test_reject_writes_an_http_response() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        conn = WsServerConnection(stream, send_budget=Budget("send", 1000), max_message_size=1 << 20)
        await conn.read_request()
        await conn.reject(503, b"at capacity\n")
        await trio.aclose_forcefully(stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            client = Client(await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1]))
            await client.stream.send_all(client.ws.send(Request(host="127.0.0.1", target="/ws")))
            events: list[Event] = []
            while not client.eof:
                events += await client.events()
            nursery.cancel_scope.cancel()
    reject = events[0]
    assert isinstance(reject, RejectConnection) and reject.status_code == 503
    assert b"".join(bytes(e.data) for e in events if isinstance(e, RejectData)) == b"at capacity\n"


# -- the fast text-frame decoder (its differential test against wsproto: fuzz/test_twilio_wsconn_fuzz.py) --

def test_fast_decoder_hands_over_oversized_frames() -> None:
    client = Connection(ConnectionType.CLIENT)
    data = client.send(TextMessage("a" * 100)) + client.send(TextMessage("b" * 200)) + client.send(TextMessage("c"))
    messages, rest = TextFrameDecoder(150).feed(data)
    assert messages == ["a" * 100] and rest is not None
    server = Connection(ConnectionType.SERVER)  # wsproto resumes at the frame boundary
    server.receive_data(rest)
    assert [e.data for e in server.events() if isinstance(e, TextMessage)] == ["b" * 200, "c"]


async def test_frame_nowait_takes_a_whole_frame_and_only_when_the_order_allows() -> None:
    """The per-message path: a read that is one whole masked text frame comes back as its payload at once; with a
    message queued before it, wsproto in charge, the connection closed or not upgraded, it is None and nothing is
    consumed (feed_nowait then takes the same bytes, in order)."""
    client = Connection(ConnectionType.CLIENT)
    big = [client.send(TextMessage(f"{k}" * 200)) for k in range(3)]  # 16-bit lengths, as Twilio's media
    small = client.send(TextMessage("s"))
    ping = client.send(Ping(b"p"))
    done = trio.Event()

    async def serve(conn: WsServerConnection) -> None:
        stream = conn._stream
        assert isinstance(stream, trio.SocketStream)
        fresh = WsServerConnection(stream, send_budget=Budget("send", 2000), max_message_size=1 << 20)
        assert fresh.frame_nowait(big[0]) is None  # not upgraded
        assert conn.frame_nowait(big[0]) == b"0" * 200 and not conn.received
        assert conn.frame_nowait(big[0][:-1]) is None and not conn.received  # incomplete: nothing consumed
        assert conn.frame_nowait(big[1] + small) is None and not conn.received  # more than one frame
        assert conn.feed_nowait(small) is False and list(conn.received) == ["s"]
        assert conn.frame_nowait(big[1]) is None  # a message is queued before it: order first
        assert conn.feed_nowait(big[1]) is False and list(conn.received) == ["s", "1" * 200]
        conn.received.clear()
        assert conn.feed_nowait(ping) is True  # a control frame: wsproto parses from here on
        assert conn.frame_nowait(big[2]) is None
        assert conn.feed_nowait(big[2]) is True
        await conn.process_events()
        assert list(conn.received) == ["2" * 200]
        done.set()

    async def serve_closed(conn: WsServerConnection) -> None:
        conn._set_closed(1011, "closed by a failed write")  # the fast decoder is still in charge
        assert conn.frame_nowait(big[0]) is None
        assert conn.feed_nowait(big[0]) is True and not conn.received  # the connection's task sees the close
        done.set()

    for run in (serve, serve_closed):
        done = trio.Event()
        with trio.fail_after(10):
            async with pair(run) as (_client, errors):
                await done.wait()
        assert not errors


async def test_a_send_cancelled_while_waiting_for_the_lock_leaves_the_connection_usable() -> None:
    """Nothing of a send that never got the lock was written: unlike a half-written frame, it must not break
    the connection (the shared layer's rule; the server used to mark it broken and fail every later send)."""
    big = "z" * (16 << 20)  # more than loopback buffers: the first send blocks until the client reads
    client_may_read = trio.Event()
    outcome: list[object] = []

    async def serve(conn: WsServerConnection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send_text, big)
            while not conn._send_lock.statistics().locked:  # the big send holds the lock (a state, not a clock)
                await trio.sleep(0.001)
            with trio.move_on_after(0.2) as scope:
                await conn.send_text("never")  # queued behind the big one, then cancelled by its caller
            outcome.append(scope.cancelled_caught)
            client_may_read.set()
        await conn.send_text("after")
        outcome.append(conn.closed)

    with trio.fail_after(60):
        async with pair(serve, send_ms=50_000) as (client, errors):
            await client_may_read.wait()
            texts: list[str] = []
            while "after" not in texts and not client.eof and not errors:
                texts.extend(e.data for e in await client.events() if isinstance(e, TextMessage))
            while len(outcome) < 2 and not errors:
                await trio.sleep(0.01)
    assert errors == [] and outcome == [True, None]
    assert texts[-1] == "after" and "".join(texts[:-1]) == big

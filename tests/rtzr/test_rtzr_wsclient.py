"""engine.rtzr.wsclient against scripted wsproto servers on 127.0.0.1 (real sockets, real time)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

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
    Request,
    TextMessage,
)

from engine.budgets import Budget, BudgetExpired
from engine.rtzr.wsclient import (
    ConnectionClosed,
    WsClientConnection,
    WsHandshakeError,
    WsRejected,
    encode_frame,
)

Handler = Callable[["Peer"], Awaitable[None]]


class Peer:
    """The server side of one connection: wsproto on the accepted stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.request: Request | None = None
        self.pending: list[Event] = []

    async def read_request(self) -> Request:
        while self.request is None:
            data = await self.stream.receive_some(65536)
            assert data
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    self.request = event
        return self.request

    async def accept(self, *trailing: Event) -> None:
        """Accept; ``trailing`` messages go out in the same write as the 101."""
        await self.read_request()
        await self.stream.send_all(self.ws.send(AcceptConnection()) + b"".join(self.ws.send(e) for e in trailing))

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.ws.send(e) for e in events))

    async def next_event(self) -> Event:
        """The next event from the client (None-safe: EOF yields wsproto's CloseConnection 1006)."""
        while not self.pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    """ws:// URL of a loopback server running ``handler`` per connection."""

    async def serve_one(stream: trio.SocketStream) -> None:
        await handler(Peer(stream))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/transcribe:streaming?sample_rate=8000"
        nursery.cancel_scope.cancel()


async def connect(url: str, *, send_ms: int = 2000, max_size: int = 1 << 20) -> WsClientConnection:
    return await WsClientConnection.connect(
        url, send_budget=Budget("send", send_ms), max_message_size=max_size,
        extra_headers=[(b"Authorization", b"Bearer tok")])


@pytest.mark.parametrize("n", [0, 1, 3, 125, 126, 127, 1600, 65535, 65536, 200_000])
def test_encode_frame_decodes_with_wsproto(n: int) -> None:
    server = Connection(ConnectionType.SERVER)
    payload = bytes(i * 7 % 256 for i in range(n))
    server.receive_data(encode_frame(0x2, payload, b"\x01\x82\x03\xfe") + encode_frame(0x1, "한국어".encode(), b"abcd"))
    events = list(server.events())
    got = b"".join(bytes(e.data) for e in events if isinstance(e, BytesMessage))
    assert got == payload
    assert [e.data for e in events if isinstance(e, TextMessage)] == ["한국어"]


async def test_handshake_sends_request_and_exchanges_messages() -> None:
    seen: list[object] = []

    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        seen.append(request)
        # The first result right behind the 101, in the same write.
        await peer.accept(TextMessage('{"seq":0}'))
        for _ in range(2):
            event = await peer.next_event()
            seen.append(event)
        await peer.send(TextMessage("ok"))
        seen.append(await peer.next_event())  # the close frame

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            assert await conn.receive_message() == '{"seq":0}'
            await conn.send_bytes(b"\x00\x01" * 800)
            await conn.send_text('{"type":"Finalize"}')
            assert await conn.receive_message() == "ok"
            await conn.aclose(1000, grace=1.0)
            assert conn.closed is not None and conn.closed.code == 1000
    request = seen[0]
    assert isinstance(request, Request)
    assert request.target == "/v1/transcribe:streaming?sample_rate=8000"
    assert request.host.startswith("127.0.0.1:")
    assert (b"authorization", b"Bearer tok") in [(k.lower(), v) for k, v in request.extra_headers]
    assert isinstance(seen[1], BytesMessage) and bytes(seen[1].data) == b"\x00\x01" * 800
    assert isinstance(seen[2], TextMessage) and seen[2].data == '{"type":"Finalize"}'
    assert isinstance(seen[3], CloseConnection) and seen[3].code == 1000


@pytest.mark.parametrize(("status", "body"), [(401, b'{"code":"H0002"}'), (429, b"too many"), (500, b""),
                                              (404, b"not found")])
async def test_rejection_carries_status_and_body(status: int, body: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        await peer.stream.send_all(head + body)
        await peer.stream.aclose()

    with trio.fail_after(5):
        async with server(handler) as url:
            with pytest.raises(WsRejected) as info:
                await connect(url)
    assert info.value.status == status and info.value.body == body


async def test_rejection_body_until_eof_and_garbage_and_early_close() -> None:
    replies = [b"HTTP/1.1 503 Busy\r\nconnection: close\r\n\r\nbusy, try later", b"SSH-2.0-OpenSSH\r\n\r\n", b""]

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.stream.send_all(replies.pop(0))
        await peer.stream.aclose()

    with trio.fail_after(5):
        async with server(handler) as url:
            with pytest.raises(WsRejected) as info:
                await connect(url)
            assert info.value.status == 503 and info.value.body == b"busy, try later"
            with pytest.raises(WsHandshakeError, match="bad upgrade response"):
                await connect(url)
            with pytest.raises(WsHandshakeError, match="closed during the upgrade"):
                await connect(url)


async def test_bad_accept_token_is_a_handshake_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                                   b"connection: Upgrade\r\nsec-websocket-accept: wrong\r\n\r\n")
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with server(handler) as url:
            with pytest.raises(WsHandshakeError):
                await connect(url)


async def test_refused_connection_is_oserror() -> None:
    with trio.fail_after(5):
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()  # nothing listens there now
        with pytest.raises(OSError):
            await connect(f"ws://127.0.0.1:{port}/")
        with pytest.raises(WsHandshakeError):
            await connect("http://127.0.0.1/")


async def test_fragmented_messages_are_reassembled() -> None:
    async def handler(peer: Peer) -> None:
        await peer.accept()
        await peer.send(TextMessage('{"alternatives":[{"text":"안', message_finished=False),
                        Ping(b"mid"),  # control frames may interleave with fragments
                        TextMessage('녕"}]}', message_finished=True),
                        BytesMessage(b"ab", message_finished=False), BytesMessage(b"cd", message_finished=True))
        assert isinstance(await peer.next_event(), Pong)
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            assert await conn.receive_message() == '{"alternatives":[{"text":"안녕"}]}'
            assert await conn.receive_message() == b"abcd"
            await conn.aclose(grace=0.2)


async def test_server_ping_is_answered_and_client_ping_waits_for_pong() -> None:
    got: list[Event] = []

    async def handler(peer: Peer) -> None:
        await peer.accept()
        await peer.send(Ping(b"srv"))
        got.extend([await peer.next_event(), await peer.next_event()])  # our pong and the client's ping, any order
        got.sort(key=lambda e: not isinstance(e, Pong))
        ping = got[1]
        assert isinstance(ping, Ping)
        await trio.sleep(0.1)
        await peer.send(ping.response())
        got.append(await peer.next_event())  # a second ping: never answered
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            async with trio.open_nursery() as nursery:
                async def reader() -> None:
                    with pytest.raises(ConnectionClosed):
                        while True:
                            await conn.receive_message()
                nursery.start_soon(reader)
                t0 = trio.current_time()
                await conn.ping(b"\x00" * 7 + b"\x01")
                assert trio.current_time() - t0 >= 0.09
                with trio.move_on_after(0.3) as unanswered:
                    await conn.ping(b"\x00" * 7 + b"\x02")
                assert unanswered.cancelled_caught
                nursery.cancel_scope.cancel()
            await conn.aclose(grace=0.1)
    assert isinstance(got[0], Pong) and got[0].payload == b"srv"
    assert isinstance(got[1], Ping) and got[1].payload == b"\x00" * 7 + b"\x01"
    assert isinstance(got[2], Ping)


async def test_server_close_is_answered_after_pending_messages() -> None:
    got: list[Event] = []

    async def handler(peer: Peer) -> None:
        await peer.accept()
        await peer.send(TextMessage('{"final":true}'), CloseConnection(code=1000, reason="EOS"))
        got.append(await peer.next_event())
        await peer.stream.aclose()

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            assert await conn.receive_message() == '{"final":true}'
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_message()
            assert (info.value.code, info.value.reason) == (1000, "EOS")
            with pytest.raises(ConnectionClosed):
                await conn.send_bytes(b"late")
            with pytest.raises(ConnectionClosed):
                await conn.ping(b"p")
            await conn.aclose(grace=0.2)
    assert isinstance(got[0], CloseConnection) and got[0].code == 1000


async def test_abrupt_close_is_1006_and_wakes_a_waiting_ping() -> None:
    async def handler(peer: Peer) -> None:
        await peer.accept()
        await peer.next_event()  # the ping
        await peer.stream.aclose()  # no close frame

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            async with trio.open_nursery() as nursery:
                async def pinger() -> None:
                    with pytest.raises(ConnectionClosed) as info:
                        await conn.ping(b"12345678")
                    assert info.value.code == 1006
                nursery.start_soon(pinger)
                with pytest.raises(ConnectionClosed) as info:
                    await conn.receive_message()
                assert info.value.code == 1006
            with pytest.raises(ConnectionClosed):
                await conn.send_bytes(b"x")
            await conn.aclose(grace=0.2)


@pytest.mark.parametrize("fragmented", [False, True])
async def test_oversize_message_closes_with_1009(fragmented: bool) -> None:
    got: list[Event] = []

    async def handler(peer: Peer) -> None:
        await peer.accept()
        if fragmented:
            await peer.send(TextMessage("ok"), *(TextMessage("x" * 600, message_finished=False) for _ in range(3)))
        else:
            await peer.send(TextMessage("ok"), TextMessage("x" * 2000))
        event = await peer.next_event()
        got.append(event)
        assert isinstance(event, CloseConnection)
        await peer.send(event.response())
        await peer.stream.aclose()

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url, max_size=1024)
            assert await conn.receive_message() == "ok"
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_message()
            assert info.value.code == 1009
            await conn.aclose(grace=1.0)
    assert isinstance(got[0], CloseConnection) and got[0].code == 1009


async def test_send_budget_expires_when_the_server_stops_reading(autojump_clock: trio.testing.MockClock) -> None:
    """On the MockClock: time passes only while the send is blocked, so the bound checks the budget, not speed."""
    async def handler(peer: Peer) -> None:
        await peer.accept()
        await trio.sleep_forever()  # never reads: the socket buffers fill up

    with trio.fail_after(10):
        async with server(handler) as url:
            conn = await connect(url, send_ms=200)
            chunk = bytes(1 << 20)
            t0 = trio.current_time()
            with pytest.raises(BudgetExpired) as info:
                for _ in range(200):
                    await conn.send_bytes(chunk)
            assert info.value.budget == "send"
            assert trio.current_time() - t0 < 5
            # A frame may be half written: the connection is unusable from here on.
            assert conn.closed is not None and conn.closed.code == 1006
            with pytest.raises(ConnectionClosed):
                await conn.send_text("more")
            await conn.aclose(grace=0.2)


async def test_concurrent_senders_do_not_interleave_frames() -> None:
    received: list[bytes] = []

    async def handler(peer: Peer) -> None:
        await peer.accept()
        part = b""
        while len(received) < 20:
            event = await peer.next_event()
            assert isinstance(event, BytesMessage)  # wsproto hands big frames over in pieces
            part += bytes(event.data)
            if event.message_finished:
                received.append(part)
                part = b""
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with server(handler) as url:
            conn = await connect(url, send_ms=5000)
            async with trio.open_nursery() as nursery:
                for k in range(4):
                    async def sender(k: int = k) -> None:
                        for _ in range(5):
                            await conn.send_bytes(bytes([k]) * 100_000)
                    nursery.start_soon(sender)
            while len(received) < 20:
                await trio.sleep(0.01)
            await conn.aclose(grace=0.1)
    assert sorted(b[0] for b in received) == sorted(list(range(4)) * 5)
    assert all(len(b) == 100_000 and b == bytes([b[0]]) * 100_000 for b in received)


async def test_aclose_is_bounded_when_the_server_never_answers(autojump_clock: trio.testing.MockClock) -> None:
    """The grace is measured on the MockClock: on the wall clock a stalled machine could exceed any bound."""
    async def handler(peer: Peer) -> None:
        await peer.accept()
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            t0 = trio.current_time()
            with trio.CancelScope() as scope:
                scope.cancel()  # cleanup runs in cancelled scopes: the close must still go out
                await conn.aclose(1001, grace=0.2)
            assert 0.15 <= trio.current_time() - t0 < 1.0
            assert conn.closed is not None and conn.closed.code == 1001


async def test_send_to_a_reset_connection_is_connection_closed() -> None:
    import socket
    import struct

    async def handler(peer: Peer) -> None:
        await peer.accept()
        # RST instead of FIN: the client's next writes fail with ECONNRESET / EPIPE.
        peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.stream.aclose()

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            with pytest.raises(ConnectionClosed) as info:
                for _ in range(100):
                    await conn.send_bytes(bytes(3200))
                    await trio.sleep(0.01)
            assert info.value.code == 1006
            with pytest.raises(ConnectionClosed):
                await conn.send_text("more")
            await conn.aclose(grace=0.2)


async def test_plain_tcp_reader_reads_split_frames_then_a_reset_is_1006() -> None:
    """The plain-TCP wait (wait_readable + one read, WsClientConnection.receive_message_before): a frame split
    across TCP segments is reassembled, several frames in one read are each delivered, a reset is 1006."""
    import socket
    import struct

    frame = b"\x81\x09" + b'{"seq":1}'
    two = b"\x81\x09" + b'{"seq":2}' + b"\x81\x09" + b'{"seq":3}'
    go, step, read = trio.Event(), trio.Event(), trio.Event()

    async def handler(peer: Peer) -> None:
        await peer.accept()
        await go.wait()  # not in the 101's read: wsproto would parse that part, and the fast decoder never start
        await peer.stream.send_all(frame[:3])
        await step.wait()
        await peer.stream.send_all(frame[3:] + two)
        await read.wait()
        peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.stream.aclose()

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            assert conn._socket is not None and conn._fast is not None  # the path under test
            go.set()
            assert await conn.receive_message_before(trio.current_time() + 0.05) is None  # 3 bytes: not a message
            step.set()
            assert [await conn.receive_message() for _ in range(3)] == ['{"seq":1}', '{"seq":2}', '{"seq":3}']
            read.set()
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_message()
            assert info.value.code == 1006
            await conn.aclose(grace=0.2)


async def test_plain_tcp_reader_sees_its_stream_closed_under_the_wait() -> None:
    """Another task closing the stream while the reader waits ends the wait as EOF (1006), not a hang."""

    async def handler(peer: Peer) -> None:
        await peer.accept()
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with server(handler) as url:
            conn = await connect(url)
            async with trio.open_nursery() as nursery:
                async def reader() -> None:
                    with pytest.raises(ConnectionClosed) as info:
                        await conn.receive_message()
                    assert info.value.code == 1006

                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                await trio.aclose_forcefully(conn._stream)

"""WsConnection._write_nowait, the one non-blocking write both sides use (the RTZR client's audio frames,
the Twilio server's ``send_text_nowait``): a partial write, EAGAIN, a closed socket, concurrent senders, TLS.

No timing: each test checks what the peer received, or the state right after the synchronous call.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import ssl
import struct

import pytest
import trio
from wsproto.connection import Connection, ConnectionType

from engine.budgets import Budget
from engine.rtzr.wsclient import WsClientConnection
from engine.twilio.wsconn import WsServerConnection
from engine.ws import connection
from engine.ws.connection import ConnectionClosed, WsConnection
from tests.rtzr.test_rtzr_wsclient import connect, server
from tests.rtzr.test_rtzr_wsclient_send import collect


def tcp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """Two connected loopback TCP sockets (port 0)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return trio.socket.from_stdlib_socket(a), trio.socket.from_stdlib_socket(b)


def plain_pair() -> tuple[WsConnection, trio.SocketStream]:
    """A WsConnection on one end of a connected TCP pair; the raw other end."""
    a, b = tcp_pair()
    conn = WsConnection(trio.SocketStream(a), send_budget=Budget("send", 2000), max_message_size=1 << 20)
    return conn, trio.SocketStream(b)


def reset(peer: trio.SocketStream) -> None:
    """Close ``peer`` with a TCP reset (linger 0): the other end's next write fails at once."""
    peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.socket.close()


async def read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk
        data += chunk
    return data


async def test_a_whole_write_leaves_nothing_pending() -> None:
    conn, peer = plain_pair()
    with trio.fail_after(5):
        assert conn._write_nowait(b"frame-1")
        assert conn._pending == b""
        assert await read_exactly(peer, 7) == b"frame-1"


async def test_a_partial_write_keeps_the_tail_which_the_flush_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    conn, peer = plain_pair()
    real_write = os.write
    monkeypatch.setattr(connection.os, "write", lambda fd, data: real_write(fd, data[:3]))
    assert conn._write_nowait(b"abcdefgh")
    assert conn._pending == b"defgh"
    monkeypatch.setattr(connection.os, "write", real_write)
    assert not conn._write_nowait(b"XY")  # nothing may overtake the cut frame
    with trio.fail_after(5):
        await conn._flush_pending()
        assert conn._pending == b""
        assert await read_exactly(peer, 8) == b"abcdefgh"


async def test_eagain_keeps_the_whole_frame_and_the_next_awaited_write_sends_it_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, peer = plain_pair()

    def full(fd: int, data: bytes) -> int:
        raise BlockingIOError(errno.EAGAIN, "full")

    monkeypatch.setattr(connection.os, "write", full)
    assert conn._write_nowait(b"first")  # taken: it goes out before anything written after it
    assert conn._pending == b"first"
    monkeypatch.undo()
    with trio.fail_after(5):
        await conn._write(b"second")  # another sender's awaited write
        assert await read_exactly(peer, 11) == b"firstsecond"
    assert conn.closed is None


async def test_a_held_lock_refuses_and_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    conn, _peer = plain_pair()

    def never(fd: int, data: bytes) -> int:
        raise AssertionError("written while another task holds the lock")

    monkeypatch.setattr(connection.os, "write", never)
    conn._send_lock.acquire_nowait()
    assert not conn._write_nowait(b"x")
    assert conn._pending == b""


async def test_a_reset_socket_breaks_the_connection() -> None:
    conn, peer = plain_pair()
    reset(peer)  # the peer is gone: the write fails (ECONNRESET)
    assert not conn._write_nowait(b"lost")
    assert conn._broken
    assert conn.closed is not None and conn.closed.code == 1006


async def test_a_closed_stream_is_never_written_by_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once our stream is closed its fd number may belong to another socket: nothing is written to it."""
    conn, _peer = plain_pair()
    await conn._stream.aclose()

    def never(fd: int, data: bytes) -> int:
        raise AssertionError(f"wrote to fd {fd} after the stream closed")

    monkeypatch.setattr(connection.os, "write", never)
    assert not conn._write_nowait(b"x")


async def test_tls_never_takes_the_nowait_path(monkeypatch: pytest.MonkeyPatch) -> None:
    a, _b = tcp_pair()
    tls = trio.SSLStream(trio.SocketStream(a), ssl.create_default_context(), server_hostname="x")
    conn = WsClientConnection(tls, send_budget=Budget("send", 2000), max_message_size=1 << 20)

    def never(fd: int, data: bytes) -> int:
        raise AssertionError("a TLS stream written around its SSL layer")

    monkeypatch.setattr(connection.os, "write", never)
    assert not conn._write_nowait(b"x")
    assert not conn.nowait_capable  # an RTZR lease on TLS offers no push (Lease.send_audio_nowait is None)


def upgraded_server() -> tuple[WsServerConnection, trio.SocketStream]:
    a, b = tcp_pair()
    conn = WsServerConnection(trio.SocketStream(a), send_budget=Budget("send", 2000), max_message_size=1 << 20)
    conn._ws = Connection(ConnectionType.SERVER)  # as accept() leaves it
    return conn, trio.SocketStream(b)


async def test_the_server_side_refuses_a_dead_socket_and_the_awaited_send_reports_it() -> None:
    conn, peer = upgraded_server()
    reset(peer)
    assert not conn.send_text_nowait(b"x")
    assert not conn.pending
    assert conn.closed is not None and conn.closed.code == 1006
    with trio.fail_after(5), pytest.raises(ConnectionClosed):
        await conn.send_text("x")


async def test_concurrent_senders_keep_every_frame_whole_and_each_senders_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Senders race while the kernel takes random parts of frames (or nothing): every message arrives whole,
    and each sender's messages in the order it sent them."""
    rng = random.Random(13)
    real_write = os.write

    def choppy(fd: int, data: bytes) -> int:
        roll = rng.random()
        if roll < 0.2:
            raise BlockingIOError(errno.EAGAIN, "full")
        if roll < 0.5:
            return real_write(fd, data[:rng.randrange(1, len(data))])
        return real_write(fd, data)

    senders, each = 4, 25
    got: list[bytes] = []
    with trio.fail_after(20):
        async with server(lambda peer: collect(peer, senders * each, got)) as url:
            conn = await connect(url)
            monkeypatch.setattr(connection.os, "write", choppy)

            async def send(k: int) -> None:
                for i in range(each):
                    await conn.send_bytes(bytes([k, i]) * (100 + 37 * i))

            async with trio.open_nursery() as nursery:
                for k in range(senders):
                    nursery.start_soon(send, k)
            assert not conn._pending
            monkeypatch.undo()
            while len(got) < senders * each:
                await trio.sleep(0.01)
            await conn.aclose(grace=0.1)
    for k in range(senders):
        mine = [m for m in got if m[0] == k]
        assert mine == [bytes([k, i]) * (100 + 37 * i) for i in range(each)]


async def test_the_server_side_uses_the_same_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """send_text_nowait on an upgraded server connection goes through _write_nowait (one mechanism)."""
    calls: list[bytes] = []
    real = WsConnection._write_nowait

    def spy(self: WsConnection, frame: bytes) -> bool:
        calls.append(frame)
        return real(self, frame)

    monkeypatch.setattr(WsConnection, "_write_nowait", spy)
    conn, peer = upgraded_server()
    assert conn.send_text_nowait(b"hi")
    assert calls == [b"\x81\x02hi"]
    with trio.fail_after(5):
        assert await read_exactly(peer, 4) == b"\x81\x02hi"

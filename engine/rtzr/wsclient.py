"""A thin client-side WebSocket connection: wsproto (sans-IO) on a Trio stream, nothing else.

Why not trio-websocket: every ``send_message`` goes through its lock, wsproto's generic frame
encoder and a ``send_all``, and every socket runs a reader task that hands results through a memory
channel; at 60 calls that was ~12 % of the engine (BENCHMARKS.md, Profile). Here wsproto does the
handshake and parses what the server sends (results are rare: a few per second); the audio we send
is framed by :func:`encode_frame` (one numpy or big-int XOR to mask, no per-byte loop) and written
under the ``send`` budget through one lock; on plain TCP a write the kernel takes at once, while no
task holds the lock, needs neither the lock, nor a cancel scope, nor a task switch (see :meth:`_send_data`).

The caller's own task reads (:meth:`WsClientConnection.receive_message`): pings are answered, pongs
wake :meth:`~WsClientConnection.ping`, fragments are reassembled, a close frame is answered. A
send that failed or timed out leaves the connection unusable (a half-written frame cannot be
recovered). Only one task may receive at a time; any task may send; call
:meth:`~WsClientConnection.aclose` once the reader has stopped.

What the client and the Twilio server share (receive loop, closing handshake, serialized writes,
:class:`ConnectionClosed`) is :class:`engine.ws.connection.WsConnection`; this module adds the
client's handshake, its hot data path and ping/pong.
"""

from __future__ import annotations

import functools
import os
import ssl
import struct
from typing import Any
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.frame_protocol import CloseReason, Opcode
from wsproto.utilities import RemoteProtocolError

from engine.budgets import Budget
from engine.ws.client_frames import UnmaskedFrameDecoder
from engine.ws.connection import RECEIVE_SIZE, ConnectionClosed, WsConnection, lean_events
from engine.ws.frames import c_unmask, encode_frame, mask_key

__all__ = [
    "MAX_REJECT_BODY",
    "RECEIVE_SIZE",
    "ConnectionClosed",
    "WsClientConnection",
    "WsHandshakeError",
    "WsRejected",
    "default_ssl_context",
    "encode_frame",
]

MAX_REJECT_BODY = 4096  # what we keep of an HTTP error body (for the error message)
# A sender whose frames the kernel takes at once yields to the scheduler once per this many (see _send_data).
YIELD_EVERY = 8
# Bound once: an Enum attribute lookup costs ~0.2 µs on CPython 3.11, per audio frame sent.
_BINARY = Opcode.BINARY
_TEXT = Opcode.TEXT
_OPEN = ConnectionState.OPEN
_BINARY_HEAD16 = struct.Struct("!BBH")  # FIN + binary, masked + 126, the 16-bit length (RFC 6455 5.2)


class WsHandshakeError(Exception):
    """The upgrade failed without an HTTP status (connection lost, not a valid HTTP/WebSocket answer)."""


class WsRejected(WsHandshakeError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def _at_frame_boundary(connection: Connection) -> bool:
    """wsproto holds no part of a frame or message (nothing came behind the 101, or only whole messages): the
    fast decoder may start. Reads wsproto's private state; if that ever moves, wsproto parses everything, as before."""
    proto: Any = getattr(connection, "_proto", None)
    try:
        decoder, message = proto._frame_decoder, proto._message_decoder
        return bool(decoder.header is None and len(decoder.buffer) == 0 and message.opcode is None)
    except (AttributeError, TypeError):
        return False


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """One verifying client context per process (building one loads the CA store: milliseconds)."""
    return ssl.create_default_context()


class WsClientConnection(WsConnection):
    """One client-side WebSocket on ``stream``: handshake, receive loop, serialized sends."""

    def __init__(self, stream: trio.abc.Stream, *, send_budget: Budget, max_message_size: int) -> None:
        super().__init__(stream, send_budget=send_budget, max_message_size=max_message_size)
        # The handshake (wsproto over h11); after the upgrade only its frame layer is kept (issue 13: the
        # h11 connection and its buffers are dropped, not carried for the socket's whole life).
        self._client: WSConnection | None = WSConnection(ConnectionType.CLIENT)
        self._ws = self._client
        self.accepted: AcceptConnection | None = None
        self._unyielded = 0  # whole writes in a row without a schedule point (_send_data)
        # After the upgrade: the decoder in front of wsproto for results and pongs; None once wsproto parses.
        self._fast: UnmaskedFrameDecoder | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        send_budget: Budget,
        max_message_size: int,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> WsClientConnection:
        """TCP (+ TLS for ``wss://``) and the upgrade; the caller bounds it all with a deadline.

        Raises :class:`WsRejected` (an HTTP status), :class:`WsHandshakeError`, ``OSError`` or
        ``trio.BrokenResourceError`` (TLS / network).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise WsHandshakeError(f"not a ws:// or wss:// URL: {parts.scheme}://{parts.hostname or ''}")
        secure = parts.scheme == "wss"
        host = parts.hostname
        port = parts.port or (443 if secure else 80)
        host_header = f"[{host}]" if ":" in host else host
        if port != (443 if secure else 80):
            host_header += f":{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        try:
            if secure:
                tls = trio.SSLStream(stream, ssl_context or default_ssl_context(), server_hostname=host,
                                     https_compatible=True)
                stream = tls
                await tls.do_handshake()
            conn = cls(stream, send_budget=send_budget, max_message_size=max_message_size)
            await conn._handshake(host_header, target, extra_headers or [])
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return conn

    async def _handshake(self, host: str, target: str, extra_headers: list[tuple[bytes, bytes]]) -> None:
        client = self._client
        assert client is not None, "one handshake per connection"
        await self._stream.send_all(client.send(Request(host=host, target=target, extra_headers=extra_headers)))
        rejected: RejectConnection | None = None
        body = b""
        while True:
            data = await self._receive_some()
            if not data and rejected is None:
                raise WsHandshakeError("connection closed during the upgrade")
            try:
                client.receive_data(data or None)
                for event in client.events():
                    if isinstance(event, AcceptConnection):
                        self.accepted = event
                        assert client.connection is not None  # wsproto sets it with the accept
                        self._ws = client.connection
                        lean_events(client.connection)
                        self._client = None
                        if _at_frame_boundary(client.connection):
                            self._fast = UnmaskedFrameDecoder(self._assembler.max_size)
                        # Frames the server sent right behind the 101 are parsed by wsproto already.
                        await self._process_events()
                        return
                    if isinstance(event, RejectConnection):
                        rejected = event
                        if not event.has_body:
                            raise WsRejected(event.status_code, b"")
                    elif isinstance(event, RejectData):
                        body = (body + event.data)[:MAX_REJECT_BODY]
                        if event.body_finished:
                            assert rejected is not None
                            raise WsRejected(rejected.status_code, body)
            except RemoteProtocolError as exc:
                raise WsHandshakeError(f"bad upgrade response: {exc}") from None
            if not data and rejected is not None:  # a body delimited by EOF
                raise WsRejected(rejected.status_code, body)

    # -- receiving: the fast decoder in front of wsproto --------------------------------------

    async def receive_message_before(self, deadline: float) -> str | bytes | None:
        """The shared receive loop (:class:`~engine.ws.connection.WsConnection`), with a leaner wait on plain TCP.

        Once per RTZR result (issue 13: the utterances' STT tasks were ~9 % of the engine): while the fast decoder
        parses (a healthy server) on plain TCP, the reader waits with ``wait_readable`` and then reads the socket
        with one non-blocking ``read``. ``SocketStream.receive_some`` first tries a read that fails (EAGAIN: a
        syscall and an exception per result, the reader having just emptied the socket) and goes through
        three wrappers and a checkpoint context. Errors end as there: a reset or a socket closed under the wait
        is EOF (wsproto then reports 1006); TLS, or wsproto parsing, takes the shared loop.
        """
        messages = self._messages
        while not messages:
            sock = self._socket
            fd = -1 if sock is None else sock.fileno()
            if fd < 0 or self._fast is None or self._closed is not None or self._ws is None:
                return await super().receive_message_before(deadline)
            ws = self._ws
            try:
                with trio.CancelScope(deadline=deadline) as waited:
                    await trio.lowlevel.wait_readable(fd)
                if waited.cancelled_caught:
                    return None
                data = os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                continue  # woken with nothing to read
            except (OSError, trio.ClosedResourceError):
                data = b""  # reset, or closed by another task: EOF, as the shared loop
            if ws.state is ConnectionState.CLOSED:  # closed by a sender meanwhile
                self._set_closed(CloseReason.ABNORMAL_CLOSURE, "connection closed")
                continue
            if self._feed(data):
                await self._process_events()
        return messages.pop(0)

    def _feed(self, data: bytes) -> bool:
        """Parse received bytes (b"": EOF); True when wsproto has events to look at."""
        fast = self._fast
        if fast is not None:
            if data:
                messages, pongs, rest = fast.feed(data)
                self._messages.extend(messages)
                for payload in pongs:
                    self._on_pong(payload)
                if rest is None:
                    return False
                data = rest
            self._fast = None  # from here on (or at EOF) wsproto parses everything
        return super()._feed(data)

    # -- sending ----------------------------------------------------------------------------

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message; raises :class:`ConnectionClosed` or ``BudgetExpired('send')``."""
        await self._send_data(_BINARY, data)

    async def send_text(self, text: str) -> None:
        """Send one text message; raises :class:`ConnectionClosed` or ``BudgetExpired('send')``."""
        await self._send_data(_TEXT, text.encode())

    async def _send_data(self, opcode: int, payload: bytes) -> None:
        """The hot path: frame it ourselves (wsproto only checks state and masks, slowly).

        On plain TCP, when no task is writing (the lock is free), the frame goes out at once by
        :meth:`~engine.ws.connection.WsConnection._write_nowait` (one non-blocking ``write``, no lock);
        only the part the kernel did not take is awaited, under the lock and ``budgets.send`` (a Trio cancel
        scope costs more than the write itself). A whole write returns without a schedule point, as the
        Twilio side's ``send_text_nowait`` does (issue 13: a task switch per 100 ms audio message), except
        every ``YIELD_EVERY``-th in a row, so that a sender with a backlog (a replay) still lets the other
        tasks run.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        ws = self._ws
        if self._broken or ws is None or ws.state is not _OPEN:
            raise self._closed or ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, "connection closed")
        frame = encode_frame(opcode, payload, mask_key())
        if self._write_nowait(frame):
            if self._pending:  # rare: the socket buffer was full
                self._unyielded = 0
                await self._flush_pending()
                return
            self._unyielded += 1
            if self._unyielded >= YIELD_EVERY:
                self._unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._unyielded = 0
        await self._send_locked(frame)

    def send_bytes_nowait(self, payload: bytes) -> int:
        """Send one binary message from synchronous code (audio pushed as it arrives, engine/call.py): 1 when it
        is written, 2 when it is started with its tail :attr:`pending` (the caller must then ``await``
        :meth:`flush`); 0, nothing written, when the awaited :meth:`send_bytes` must do it (another task
        writing, a tail pending, TLS, the connection not open or its socket failed: that send then raises)."""
        ws = self._ws
        if self._broken or ws is None or ws.state is not _OPEN or self._socket is None:
            return 0
        n = len(payload)
        key = mask_key()
        if 126 <= n < 1 << 16 and c_unmask is not None:
            # Every audio batch (1600 bytes): encode_frame's branch for it, inlined (a call less per push).
            frame = b"".join((_BINARY_HEAD16.pack(0x82, 0xFE, n), key, c_unmask(payload, key)))
        else:
            frame = encode_frame(_BINARY, payload, key)
        if not self._write_nowait(frame):
            return 0
        return 2 if self._pending else 1

    @property
    def nowait_capable(self) -> bool:
        """:meth:`send_bytes_nowait` can ever write (plain TCP; on TLS it always says False)."""
        return self._socket is not None

    @property
    def pending(self) -> bool:
        """A :meth:`send_bytes_nowait` frame is partly written: :meth:`flush` must complete it."""
        return bool(self._pending)

    async def flush(self) -> None:
        """Write what :meth:`send_bytes_nowait` left (under the lock and ``budgets.send``); raises as :meth:`send_bytes`."""
        await self._flush_pending()

    async def _send_locked(self, frame: bytes) -> None:
        """Another task is writing (or TLS, or the socket failed): wait for the lock, within ``budgets.send``."""
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # TLS, uncontended: no extra scheduling round
        except trio.WouldBlock:
            with self._send_budget():
                await lock.acquire()
        try:
            # Checked under the lock: a close frame written meanwhile ends the data stream.
            ws = self._ws
            if self._broken or ws is None or ws.state is not _OPEN:
                raise self._closed or ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, "connection closed")
            with self._send_budget():
                await self._write_held(frame)
        finally:
            lock.release()

    async def aclose(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "", *, grace: float = 0.5) -> None:
        """Send a close frame and wait up to ``grace`` seconds for the server's; always closes the stream.

        Shielded (it is cleanup, and runs in cancelled scopes) but bounded by ``grace``.
        """
        with trio.move_on_after(grace, shield=True):
            try:
                await self._close_handshake(code, reason)
            finally:
                self._set_closed(code, reason)
                await trio.aclose_forcefully(self._stream)

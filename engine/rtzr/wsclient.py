"""A thin client-side WebSocket connection: wsproto (sans-IO) on a Trio stream, nothing else.

Why not trio-websocket: every ``send_message`` goes through its lock, wsproto's generic frame
encoder and a ``send_all``, and every socket runs a reader task that hands results through a memory
channel; at 60 calls that was ~12 % of the engine (BENCHMARKS.md, Profile). Here wsproto does the
handshake and parses what the server sends (results are rare: a few per second); the audio we send
is framed by :func:`encode_frame` (one big-int XOR to mask, no per-byte loop) and written under the
``send`` budget through one lock whose uncontended path costs no extra scheduling round (on plain
TCP a write the kernel takes at once needs no cancel scope at all: see :meth:`_send_data`).

The caller's own task reads (:meth:`WsClientConnection.receive_message`): pings are answered, pongs
wake :meth:`~WsClientConnection.ping`, fragments are reassembled, a close frame is answered. A
send that failed or timed out leaves the connection unusable (a half-written frame cannot be
recovered). Only one task may receive at a time; any task may send; call
:meth:`~WsClientConnection.aclose` once the reader has stopped.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
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
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from engine.budgets import Budget, BudgetExpired
from engine.ws_messages import MessageAssembler, MessageTooBig, apply_mask

RECEIVE_SIZE = 64 * 1024
MAX_REJECT_BODY = 4096  # what we keep of an HTTP error body (for the error message)
MESSAGE_TOO_BIG = 1009
ABNORMAL = 1006  # no close frame: the TCP connection ended (RFC 6455 7.1.5)
OP_TEXT = 0x1
OP_BINARY = 0x2


class ConnectionClosed(Exception):
    """The WebSocket is closed (by either side, or the TCP connection broke); ``code`` per RFC 6455."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason


class WsHandshakeError(Exception):
    """The upgrade failed without an HTTP status (connection lost, not a valid HTTP/WebSocket answer)."""


class WsRejected(WsHandshakeError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def encode_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One whole (FIN) client frame, masked with the 4-byte ``mask`` (RFC 6455 5.2/5.3). Sans-IO."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + mask + apply_mask(payload, mask)


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """One verifying client context per process (building one loads the CA store: milliseconds)."""
    return ssl.create_default_context()


class WsClientConnection:
    """One client-side WebSocket on ``stream``: handshake, receive loop, serialized sends."""

    def __init__(self, stream: trio.abc.Stream, *, send_budget: Budget, max_message_size: int) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._send_budget = send_budget
        self._send_lock = trio.StrictFIFOLock()
        self._messages: deque[str | bytes] = deque()
        self._assembler = MessageAssembler(max_message_size)
        self._pings: dict[bytes, trio.Event] = {}  # in flight, oldest first
        self._closed: ConnectionClosed | None = None
        self._broken = False  # a write failed: nothing more may be written
        self.accepted: AcceptConnection | None = None
        # Plain TCP: the fd for the non-blocking fast path of _send_data (TLS always goes through send_all).
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1

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
        await self._stream.send_all(self._ws.send(Request(host=host, target=target, extra_headers=extra_headers)))
        rejected: RejectConnection | None = None
        body = b""
        while True:
            data = await self._receive_some()
            if not data and rejected is None:
                raise WsHandshakeError("connection closed during the upgrade")
            try:
                self._ws.receive_data(data or None)
                for event in self._ws.events():
                    if isinstance(event, AcceptConnection):
                        self.accepted = event
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

    @property
    def closed(self) -> ConnectionClosed | None:
        """None while open; else why it closed (the code we or the peer sent, 1006 for a dropped TCP)."""
        return self._closed

    def _set_closed(self, code: int, reason: str) -> None:
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
        for event in self._pings.values():  # waiting pings see the close
            event.set()
        self._pings.clear()

    async def _receive_some(self) -> bytes:
        try:
            return cast("bytes", await self._stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    # -- receiving --------------------------------------------------------------------------

    async def receive_message(self) -> str | bytes:
        """The next complete message: ``str`` for text, ``bytes`` for binary.

        Raises :class:`ConnectionClosed` once the server closed (after we answered its close frame),
        the TCP connection broke, or a message exceeded ``max_message_size`` (we close with 1009).
        Messages that arrived before the close are delivered first.
        """
        messages = self._messages
        while not messages:
            if self._closed is not None:
                raise self._closed
            if self._ws.state is ConnectionState.CLOSED:  # closed by a sender meanwhile
                self._set_closed(ABNORMAL, "connection closed")
                continue
            data = await self._receive_some()
            self._ws.receive_data(data or None)  # None: EOF → CloseConnection(1006)
            await self._process_events()
        return messages.popleft()

    async def _process_events(self) -> None:
        for event in self._ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                try:
                    message = self._assembler.add(cast("TextMessage | BytesMessage", event))
                except MessageTooBig:
                    await self._fail(MESSAGE_TOO_BIG, "message too big")
                    return
                if message is not None:
                    self._messages.append(message)
            elif kind is Ping:
                assert isinstance(event, Ping)
                # A pong that cannot go out leaves the connection closed: the reader sees that next.
                await self._send_event(event.response(), quiet=True)
            elif kind is Pong:
                assert isinstance(event, Pong)
                self._on_pong(bytes(event.payload))
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                await self._on_close(event)
                return

    def _on_pong(self, payload: bytes) -> None:
        """Wake the ping with this payload and every older one (a peer may answer several with one pong)."""
        if payload not in self._pings:
            return
        while self._pings:
            key, event = next(iter(self._pings.items()))
            del self._pings[key]
            event.set()
            if key == payload:
                return

    async def _on_close(self, event: CloseConnection) -> None:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:  # the server closed first: answer, then done
            self._set_closed(event.code, event.reason or "")
            await self._send_event(event.response(), quiet=True)
        elif state is ConnectionState.OPEN:  # wsproto reports a protocol violation as a close event
            await self._fail(event.code, event.reason or "protocol error")
        else:  # CLOSED: the server answered our close, or the TCP connection ended
            self._set_closed(event.code, event.reason or "")

    async def _fail(self, code: int, reason: str) -> None:
        self._set_closed(code, reason)  # messages already complete are still delivered
        await self._send_event(CloseConnection(code=code, reason=reason), quiet=True)

    # -- sending ----------------------------------------------------------------------------

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message; raises :class:`ConnectionClosed` or ``BudgetExpired('send')``."""
        await self._send_data(OP_BINARY, data)

    async def send_text(self, text: str) -> None:
        """Send one text message; raises :class:`ConnectionClosed` or ``BudgetExpired('send')``."""
        await self._send_data(OP_TEXT, text.encode())

    async def ping(self, payload: bytes) -> None:
        """Send a ping and wait for its pong (delivered by the reader); the caller bounds the wait.

        Raises :class:`ConnectionClosed` if the connection is or becomes closed, ``ValueError`` if
        a ping with this payload is already in flight.
        """
        if self._closed is not None:
            raise self._closed
        if payload in self._pings:
            raise ValueError("a ping with this payload is already in flight")
        answered = trio.Event()
        self._pings[payload] = answered
        try:
            await self._send_event(Ping(payload=payload))
            await answered.wait()
        finally:
            if self._pings.get(payload) is answered:
                del self._pings[payload]
        if self._closed is not None:
            raise self._closed

    async def _send_data(self, opcode: int, payload: bytes) -> None:
        """The hot path: frame it ourselves (wsproto only checks state and masks, slowly).

        On plain TCP the frame is first written with one non-blocking ``write``; only the part
        the kernel did not take is awaited, under ``budgets.send`` (a Trio cancel scope costs more
        than the write itself, and a write that does not block cannot overrun a deadline).
        """
        lock = self._send_lock
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            lock.acquire_nowait()  # uncontended: no extra scheduling round
        except trio.WouldBlock:
            with self._send_budget():
                await lock.acquire()
        try:
            # Checked under the lock: a close frame written meanwhile ends the data stream.
            if self._broken or self._ws.state is not ConnectionState.OPEN:
                raise self._closed or ConnectionClosed(ABNORMAL, "connection closed")
            frame = encode_frame(opcode, payload, os.urandom(4))
            if self._fd >= 0:
                try:
                    written = os.write(self._fd, frame)
                except BlockingIOError:
                    written = 0
                except OSError:
                    self._break()
                    raise ConnectionClosed(ABNORMAL, "connection lost") from None
                if written == len(frame):
                    await trio.lowlevel.cancel_shielded_checkpoint()  # what trio's own send does
                    return
                frame = frame[written:]
            with self._send_budget():
                await self._write(frame)
        finally:
            lock.release()

    async def _write(self, data: bytes) -> None:
        """Write under the held lock; a write that did not finish (error, budget, cancel) breaks it."""
        ok = False
        try:
            await self._stream.send_all(data)
            ok = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(ABNORMAL, "connection lost") from None
        finally:
            if not ok:
                self._break()

    async def _send_event(self, event: Event, *, quiet: bool = False) -> None:
        """Control frames (pong, ping, close) through wsproto, which tracks the closing handshake."""
        try:
            with self._send_budget():
                async with self._send_lock:
                    if self._broken or self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                        raise self._closed or ConnectionClosed(ABNORMAL, "connection closed")
                    try:
                        data = self._ws.send(event)
                    except LocalProtocolError:
                        raise self._closed or ConnectionClosed(ABNORMAL, "connection closed") from None
                    await self._write(data)
        except (ConnectionClosed, BudgetExpired):
            if not quiet:
                raise

    def _break(self) -> None:
        self._broken = True
        self._set_closed(ABNORMAL, "send failed")

    async def aclose(self, code: int = 1000, reason: str = "", *, grace: float = 0.5) -> None:
        """Send a close frame and wait up to ``grace`` seconds for the server's; always closes the stream.

        Shielded (it is cleanup, and runs in cancelled scopes) but bounded by ``grace``.
        """
        with trio.move_on_after(grace, shield=True):
            try:
                if self._ws.state is ConnectionState.OPEN and not self._broken:
                    self._set_closed(code, reason)
                    await self._send_event(CloseConnection(code=code, reason=reason), quiet=True)
                while self._ws.state is ConnectionState.LOCAL_CLOSING and not self._broken:
                    data = await self._receive_some()
                    self._ws.receive_data(data or None)
                    for _event in self._ws.events():
                        pass  # the server's close reply (or EOF) moves wsproto to CLOSED
                    self._messages.clear()  # messages after our close are dropped
            finally:
                self._set_closed(code, reason)
                await trio.aclose_forcefully(self._stream)

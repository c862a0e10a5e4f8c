"""A thin server-side WebSocket connection: wsproto (sans-IO) on a Trio stream, nothing else.

Why not trio-websocket: it runs a reader task per connection and hands every message through a
memory channel, which costs ~2x a bare wsproto receive loop per 20 ms Twilio frame, and wsproto's
generic frame bookkeeping is itself ~40 µs per message (BENCHMARKS.md, Hot path: this layer is 6 µs
vs 93 µs). Here the caller's own task reads: :meth:`WsServerConnection.receive_message` pulls bytes,
decodes Twilio's frames with :class:`TextFrameDecoder` (wsproto takes over at the first frame of any
other shape) and returns the next complete message (pings answered, fragments reassembled) with no
extra task or channel. All writes (pong, close, outbound messages) go through one FIFO lock under
the ``send`` budget; a send that failed or timed out leaves the connection unusable (a half-written
frame cannot be recovered).

Only one task may receive at a time (the reader); any task may send.
"""

from __future__ import annotations

from collections import deque
from typing import cast

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from engine.budgets import Budget, BudgetExpired
from engine.ws_messages import MessageAssembler, MessageTooBig

RECEIVE_SIZE = 64 * 1024
MESSAGE_TOO_BIG = 1009
ABNORMAL = 1006  # no close frame: the TCP connection ended (RFC 6455 7.1.5)


class ConnectionClosed(Exception):
    """The WebSocket is closed (by either side, or the TCP connection broke); ``code`` per RFC 6455."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason


class HandshakeFailed(Exception):
    """No usable upgrade request: ``status`` is the HTTP error to answer with (0: the peer left)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(f"{status} {why}")
        self.status = status
        self.why = why


class TextFrameDecoder:
    """Sans-IO decoder for the one frame shape Twilio sends: a whole, masked text message.

    wsproto spends ~40 µs per 20 ms media frame in generic frame bookkeeping; this parses FIN + text +
    mask + RSV 0 frames in a few µs (the unmasking is one big-int XOR, no per-byte loop). On the first
    frame of any other shape (control, fragment, binary, unmasked, extension bits, 64-bit or
    over-limit length, bad UTF-8) :meth:`feed` returns the bytes from that frame on, and the caller
    hands them, and everything after, to wsproto, which starts there at a frame boundary.
    """

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buffer = b""  # an incomplete fast frame

    def feed(self, data: bytes) -> tuple[list[str], bytes | None]:
        """Decode ``data``: (complete messages, None), or (messages before it, bytes for wsproto)."""
        buf = self._buffer + data if self._buffer else data
        self._buffer = b""
        out: list[str] = []
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= 2:
            if buf[pos] != 0x81 or buf[pos + 1] < 0x80:  # FIN + RSV 0 + text, and masked
                return out, buf[pos:]
            length = buf[pos + 1] & 0x7F
            head = pos + 2
            if length == 126:
                if end_of_data - head < 2:
                    break
                length = int.from_bytes(buf[head:head + 2], "big")
                head += 2
                if length < 126:  # not the minimal encoding: a protocol error, wsproto reports it
                    return out, buf[pos:]
            elif length == 127:
                return out, buf[pos:]
            if length > self.max_message_size:  # wsproto streams it; the caller closes with 1009
                return out, buf[pos:]
            end = head + 4 + length
            if end > end_of_data:
                break
            mask = buf[head:head + 4]
            key = (mask * (length // 4 + 1))[:length]
            raw = (int.from_bytes(buf[head + 4:end], "little") ^ int.from_bytes(key, "little")).to_bytes(
                length, "little")
            try:
                out.append(raw.decode())
            except UnicodeDecodeError:
                return out, buf[pos:]
            pos = end
        self._buffer = buf[pos:]
        return out, None


class WsServerConnection:
    """One server-side WebSocket on ``stream``: handshake, receive loop, serialized sends."""

    def __init__(self, stream: trio.SocketStream, *, send_budget: Budget, max_message_size: int) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.SERVER)
        self._send_budget = send_budget
        self._send_lock = trio.StrictFIFOLock()
        self._messages: deque[str | bytes] = deque()
        self._fast: TextFrameDecoder | None = TextFrameDecoder(max_message_size)  # None: wsproto parses
        self._assembler = MessageAssembler(max_message_size)
        self._closed: ConnectionClosed | None = None
        self._broken = False  # a write failed: nothing more may be written
        self.request: Request | None = None
        try:
            host, port = stream.socket.getpeername()[:2]
            self.remote = f"{host}:{port}"
        except OSError:
            self.remote = ""

    @property
    def closed(self) -> ConnectionClosed | None:
        """None while open; else why it closed (the code we or the peer sent, 1006 for a dropped TCP)."""
        return self._closed

    # -- handshake --------------------------------------------------------------------------

    async def read_request(self) -> Request:
        """Read the HTTP upgrade request head (the caller bounds this with a deadline)."""
        while True:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                raise HandshakeFailed(0, "connection closed before the request")
            try:
                self._ws.receive_data(data)
                for event in self._ws.events():
                    if isinstance(event, Request):
                        self.request = event
                        return event
            except RemoteProtocolError as exc:
                hint = exc.event_hint
                status = hint.status_code if isinstance(hint, RejectConnection) else 400
                raise HandshakeFailed(status, str(exc)) from None

    async def reject(self, status: int, body: bytes) -> None:
        """Answer the request with an HTTP error (before any upgrade) and end the connection."""
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        data = self._ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += self._ws.send(RejectData(data=body))
        await self._write(data)
        self._closed = ConnectionClosed(ABNORMAL, f"rejected {status}")

    async def accept(self) -> None:
        """Complete the upgrade (no subprotocol, no extensions: Twilio offers none)."""
        await self._write(self._ws.send(AcceptConnection()))
        # Bytes the client sent right behind the request head belong to the WebSocket.
        trailing = self._ws.handshake._h11_connection.trailing_data[0]
        if trailing and self._feed(bytes(trailing)):
            await self._process_events()

    # -- receiving --------------------------------------------------------------------------

    async def receive_message(self) -> str | bytes:
        """The next complete message: ``str`` for text, ``bytes`` for binary.

        Raises :class:`ConnectionClosed` once the peer closed (after we answered its close frame),
        the TCP connection broke, or a message exceeded ``max_message_size`` (we close with 1009).
        """
        messages = self._messages
        while not messages:
            if self._closed is not None:
                raise self._closed
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if self._ws.state is ConnectionState.CLOSED:  # closed by a sender meanwhile
                self._closed = self._closed or ConnectionClosed(ABNORMAL, "connection closed")
                continue
            if self._feed(data):
                await self._process_events()
        return messages.popleft()

    def _feed(self, data: bytes) -> bool:
        """Parse received bytes (b"": EOF); True when wsproto has events to look at."""
        fast = self._fast
        if fast is not None:
            if data:
                messages, rest = fast.feed(data)
                self._messages.extend(messages)
                if rest is None:
                    return False
                data = rest
            self._fast = None  # from here on (or at EOF) wsproto parses everything
        self._ws.receive_data(data or None)  # None: EOF → CloseConnection(1006)
        return True

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
                await self._send_frame(event.response(), quiet=True)
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                await self._on_close(event)
                return

    async def _on_close(self, event: CloseConnection) -> None:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer closed first: answer, then done
            self._closed = ConnectionClosed(event.code, event.reason or "")
            await self._send_frame(event.response(), quiet=True)
        elif state is ConnectionState.OPEN:  # wsproto reports a protocol violation as a close event
            await self._fail(event.code, event.reason or "protocol error")
        elif self._closed is None:  # CLOSED: the peer answered our close, or the TCP connection ended
            self._closed = ConnectionClosed(event.code, event.reason or "")

    async def _fail(self, code: int, reason: str) -> None:
        self._closed = ConnectionClosed(code, reason)  # messages already complete are still delivered
        await self._send_frame(CloseConnection(code=code, reason=reason), quiet=True)

    # -- sending ----------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send one text message; raises :class:`ConnectionClosed` or ``BudgetExpired``."""
        await self._send_frame(TextMessage(data=text))

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, wait (within the caller's deadline) for the peer's, close the stream."""
        try:
            if self._ws.state is ConnectionState.OPEN:
                self._closed = ConnectionClosed(code, reason)
                await self._send_frame(CloseConnection(code=code, reason=reason), quiet=True)
            while self._ws.state is ConnectionState.LOCAL_CLOSING and not self._broken:
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if self._feed(data):
                    for _event in self._ws.events():
                        pass  # the peer's close reply (or EOF) moves wsproto to CLOSED
                self._messages.clear()  # messages after our close are dropped
        finally:
            await trio.aclose_forcefully(self._stream)

    async def _send_frame(self, event: Event, *, quiet: bool = False) -> None:
        if self._broken or self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            if quiet:
                return
            raise self._closed or ConnectionClosed(ABNORMAL, "connection closed")
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            if quiet:
                return
            raise self._closed or ConnectionClosed(ABNORMAL, "connection closed") from None
        try:
            await self._write(data)
        except (ConnectionClosed, BudgetExpired):
            if not quiet:
                raise

    async def _write(self, data: bytes) -> None:
        """One whole write under the lock and ``budgets.send``; any failure breaks the connection."""
        ok = False
        try:
            with self._send_budget():
                async with self._send_lock:
                    await self._stream.send_all(data)
            ok = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(ABNORMAL, "connection lost") from None
        finally:
            if not ok:
                self._broken = True
                if self._closed is None:
                    self._closed = ConnectionClosed(ABNORMAL, "send failed")

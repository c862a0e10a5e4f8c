"""A thin server-side WebSocket connection: h11 for the upgrade, wsproto (sans-IO) frames, on a Trio stream.

Why not trio-websocket: it runs a reader task per connection and hands every message through a
memory channel, which costs ~2x a bare wsproto receive loop per 20 ms Twilio frame, and wsproto's
generic frame bookkeeping is itself ~40 µs per message (BENCHMARKS.md, Hot path: this layer is 6 µs
vs 93 µs). Here the caller's own task reads: :meth:`WsServerConnection.receive_message` pulls bytes,
decodes Twilio's frames with :class:`TextFrameDecoder` (wsproto takes over at the first frame of any
other shape) and returns the next complete message (pings answered, fragments reassembled) with no
extra task or channel. All writes (pong, close, outbound messages) go through one FIFO lock under
the ``send`` budget; a send that failed or timed out leaves the connection unusable (a half-written
frame cannot be recovered).

The upgrade is ours, as in hypercorn: :class:`UpgradeHandshake` parses the request with h11 and checks
it (RFC 6455 4.2.1), the caller admits it, then we answer 101 (or an HTTP error) through the same h11
connection and hand the bytes the client sent behind the request head (h11's public
``trailing_data``) to a wsproto :class:`~wsproto.connection.Connection` (the post-handshake frame
layer), through the fast decoder first. wsproto's own handshake object is not used.

Only one task may receive at a time (the reader); any task may send.
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from dataclasses import dataclass
from typing import cast

import h11
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, generate_accept_token

from engine.budgets import Budget, BudgetExpired
from engine.ws_messages import MessageAssembler, MessageTooBig, apply_mask

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
            raw = apply_mask(bytes(buf[head + 4:end]), bytes(buf[head:head + 4]))
            try:
                out.append(raw.decode())
            except UnicodeDecodeError:
                return out, buf[pos:]
            pos = end
        self._buffer = buf[pos:]
        return out, None


# -- the opening handshake (sans-IO) ---------------------------------------------------------

WEBSOCKET_VERSION = b"13"  # RFC 6455 4.1: the only version; anything else gets 426 + this version
MAX_REQUEST_HEAD = 16 * 1024  # h11's default: a longer head is 431


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A checked WebSocket upgrade request (RFC 6455 4.2.1).

    ``headers`` are all the request's headers as received (``Host`` included), names lower-cased by
    h11. ``subprotocols`` and ``extensions`` are what the client offered; we select none (Twilio
    offers none, and an unselected offer is a valid answer).
    """

    target: str
    host: str
    key: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    subprotocols: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` lower case), or None."""
        return next((value for key, value in self.headers if key == name), None)


def _tokens(values: list[bytes]) -> list[bytes]:
    """The comma-separated tokens of a header's values, stripped and lower-cased."""
    return [token.strip().lower() for value in values for token in value.split(b",") if token.strip()]


def _check_upgrade(event: h11.Request) -> UpgradeRequest:
    """An h11 request as a WebSocket upgrade (RFC 6455 4.2.1), or HandshakeFailed with the status to answer."""
    if event.method != b"GET":
        raise HandshakeFailed(400, f"method {event.method.decode('ascii', 'replace')} is not GET")
    if event.http_version != b"1.1":  # 4.1: "The method of the request MUST be GET, and the HTTP version MUST be at least 1.1"
        raise HandshakeFailed(400, "HTTP/1.1 is required")
    values: dict[bytes, list[bytes]] = {}
    for name, value in event.headers:  # h11 lower-cases names and validates the syntax
        values.setdefault(name, []).append(value)
    if b"upgrade" not in _tokens(values.get(b"connection", [])):
        raise HandshakeFailed(400, "missing Connection: Upgrade")
    if b"websocket" not in _tokens(values.get(b"upgrade", [])):
        raise HandshakeFailed(400, "missing Upgrade: websocket")
    versions = values.get(b"sec-websocket-version", [])
    if versions != [WEBSOCKET_VERSION]:
        raise HandshakeFailed(426 if versions else 400, "Sec-WebSocket-Version must be 13")
    keys = values.get(b"sec-websocket-key", [])
    try:
        valid_key = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16  # 4.2.1 item 5
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeFailed(400, "bad Sec-WebSocket-Key")
    hosts = values.get(b"host", [])  # h11 already requires one for HTTP/1.1
    if len(hosts) != 1 or not hosts[0] or not hosts[0].isascii():
        raise HandshakeFailed(400, "bad Host")
    return UpgradeRequest(
        target=event.target.decode("ascii"),  # h11 admits only visible ASCII in the target
        host=hosts[0].decode("ascii"),  # as sent: the signed URL uses it verbatim (no IDNA decoding)
        key=keys[0],
        headers=tuple((name, value) for name, value in event.headers),
        subprotocols=tuple(t.decode("latin-1") for t in _tokens(values.get(b"sec-websocket-protocol", []))),
        extensions=tuple(t.decode("latin-1") for t in _tokens(values.get(b"sec-websocket-extensions", []))),
    )


class UpgradeHandshake:
    """The server side of the opening handshake on h11, sans-IO (hypercorn's way, not wsproto's handshake).

    Feed the request bytes to :meth:`receive_data` until it returns the checked request; the caller
    decides, then :meth:`accept` gives the 101 response and the bytes the client sent behind the
    request head (its first WebSocket frames, for a wsproto ``Connection``), or :meth:`reject` gives
    an HTTP error response. Anything that is not an upgrade raises :class:`HandshakeFailed` with the
    status to answer (400, 426 wrong version, 431 head too long), which :meth:`reject` can still send.
    """

    def __init__(self, max_head: int = MAX_REQUEST_HEAD) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._max_head = max_head
        self._method = b""
        self._checked: UpgradeRequest | None = None  # the request head, checked; complete at PAUSED
        self.request: UpgradeRequest | None = None

    def receive_data(self, data: bytes) -> UpgradeRequest | None:
        """Feed received bytes (not EOF); the request once it is complete, else None (send more)."""
        if self.request is not None:
            raise RuntimeError("the upgrade request is complete; answer it")
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HandshakeFailed(exc.error_status_hint, str(exc) or "bad HTTP request") from None
            if event is h11.NEED_DATA:
                return None
            if event is h11.PAUSED:  # the request is complete; h11 waits for our answer to its Upgrade
                self.request = self._checked
                return self.request
            if isinstance(event, h11.Request):
                self._method = event.method
                # h11 bounds only an incomplete head; one that arrives whole in a read is bounded here.
                if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > self._max_head:
                    raise HandshakeFailed(431, "request head too long")
                self._checked = _check_upgrade(event)
            elif isinstance(event, h11.Data):
                raise HandshakeFailed(400, "an upgrade request has no body")
            elif not isinstance(event, h11.EndOfMessage):  # ConnectionClosed: we never feed EOF
                raise HandshakeFailed(400, f"unexpected {type(event).__name__}")

    def accept(self) -> tuple[bytes, bytes]:
        """The 101 response (no subprotocol, no extension), and the bytes received after the request head."""
        if self.request is None:
            raise RuntimeError("no complete upgrade request to accept")
        headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                   (b"sec-websocket-accept", generate_accept_token(self.request.key))]
        response = self._h11.send(h11.InformationalResponse(status_code=101, headers=headers,
                                                            reason=b"Switching Protocols"))
        # h11 is now SWITCHED_PROTOCOL: what it buffered past the request is the WebSocket's, by its public API.
        trailing, _eof = self._h11.trailing_data
        return response or b"", trailing

    def reject(self, status: int, body: bytes) -> bytes:
        """An HTTP error response (the connection is to be closed after it); b"" if none can be sent now."""
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        if status == 426:  # RFC 6455 4.4: tell the client the versions we speak
            headers.append((b"sec-websocket-version", WEBSOCKET_VERSION))
        try:
            data = self._h11.send(h11.Response(status_code=status, headers=headers)) or b""
            if self._method != b"HEAD":  # a response to HEAD has no body
                data += self._h11.send(h11.Data(data=body)) or b""
            data += self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # already answered (101 sent): nothing valid to say in HTTP
            return b""
        return data


class WsServerConnection:
    """One server-side WebSocket on ``stream``: handshake, receive loop, serialized sends."""

    def __init__(self, stream: trio.SocketStream, *, send_budget: Budget, max_message_size: int) -> None:
        self._stream = stream
        self._handshake = UpgradeHandshake()
        self._ws: Connection | None = None  # wsproto's frame layer, from the 101 on
        self._send_budget = send_budget
        self._send_lock = trio.StrictFIFOLock()
        self._messages: deque[str | bytes] = deque()
        self._fast: TextFrameDecoder | None = TextFrameDecoder(max_message_size)  # None: wsproto parses
        self._assembler = MessageAssembler(max_message_size)
        self._closed: ConnectionClosed | None = None
        self._broken = False  # a write failed: nothing more may be written
        self.request: UpgradeRequest | None = None
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

    async def read_request(self) -> UpgradeRequest:
        """Read and check the HTTP upgrade request (the caller bounds this with a deadline).

        Raises :class:`HandshakeFailed`: status 0 if the peer left first, else the HTTP error to
        answer with :meth:`reject`.
        """
        while True:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                raise HandshakeFailed(0, "connection closed before the request")
            request = self._handshake.receive_data(data)
            if request is not None:
                self.request = request
                return request

    async def reject(self, status: int, body: bytes) -> None:
        """Answer the request with an HTTP error (before any upgrade); the caller closes the stream."""
        data = self._handshake.reject(status, body)
        if data:
            await self._write(data)
        self._closed = ConnectionClosed(ABNORMAL, f"rejected {status}")

    async def accept(self) -> None:
        """Complete the upgrade (no subprotocol, no extensions: Twilio offers none)."""
        response, trailing = self._handshake.accept()
        self._ws = Connection(ConnectionType.SERVER)  # no extensions negotiated
        await self._write(response)
        # Bytes the client sent right behind the request head belong to the WebSocket.
        if trailing and self._feed(trailing):
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
            ws = self._ws
            if ws is None:
                raise ConnectionClosed(ABNORMAL, "not upgraded")
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if ws.state is ConnectionState.CLOSED:  # closed by a sender meanwhile
                self._closed = self._closed or ConnectionClosed(ABNORMAL, "connection closed")
                continue
            if self._feed(data):
                await self._process_events()
        return messages.popleft()

    def _feed(self, data: bytes) -> bool:
        """Parse received bytes (b"": EOF) after the upgrade; True when wsproto has events to look at."""
        fast = self._fast
        if fast is not None:
            if data:
                messages, rest = fast.feed(data)
                self._messages.extend(messages)
                if rest is None:
                    return False
                data = rest
            self._fast = None  # from here on (or at EOF) wsproto parses everything
        self._upgraded().receive_data(data or None)  # None: EOF → CloseConnection(1006)
        return True

    def _upgraded(self) -> Connection:
        if self._ws is None:
            raise ConnectionClosed(ABNORMAL, "not upgraded")
        return self._ws

    async def _process_events(self) -> None:
        for event in self._upgraded().events():
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
        state = self._upgraded().state
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
        ws = self._ws
        try:
            if ws is None:  # never upgraded: nothing to say in WebSocket
                return
            if ws.state is ConnectionState.OPEN:
                self._closed = ConnectionClosed(code, reason)
                await self._send_frame(CloseConnection(code=code, reason=reason), quiet=True)
            while ws.state is ConnectionState.LOCAL_CLOSING and not self._broken:
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if self._feed(data):
                    for _event in ws.events():
                        pass  # the peer's close reply (or EOF) moves wsproto to CLOSED
                self._messages.clear()  # messages after our close are dropped
        finally:
            await trio.aclose_forcefully(self._stream)

    async def _send_frame(self, event: Event, *, quiet: bool = False) -> None:
        ws = self._ws
        if self._broken or ws is None or ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            if quiet:
                return
            raise self._closed or ConnectionClosed(ABNORMAL, "connection closed")
        try:
            data = ws.send(event)
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

    # -- for a caller that reads the socket itself (engine.twilio.reactor) ----------------------

    @property
    def received(self) -> deque[str | bytes]:
        """Complete messages not yet taken (``popleft`` to take one), as :meth:`receive_message` would return them."""
        return self._messages

    def feed_nowait(self, data: bytes) -> bool:
        """Take bytes the caller read from this connection's socket (b"": EOF, or a read error), without awaiting.

        Complete messages go to :attr:`received`. True when the connection's own task must now call
        :meth:`process_events` (wsproto has events: a control frame to answer, a close, EOF) or the
        connection is closed (:attr:`closed`); the caller then stops feeding until that is done.
        """
        ws = self._ws
        if self._closed is not None or ws is None or ws.state is ConnectionState.CLOSED:
            self._closed = self._closed or ConnectionClosed(ABNORMAL, "connection closed")
            return True
        return self._feed(data)

    async def process_events(self) -> None:
        """Handle what :meth:`feed_nowait` left to wsproto (pings answered, close completed, messages queued)."""
        if self._ws is not None and self._closed is None:
            await self._process_events()

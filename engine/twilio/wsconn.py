"""A thin server-side WebSocket connection: h11 for the upgrade, wsproto (sans-IO) frames, on a Trio stream.

Why not trio-websocket: it runs a reader task per connection and hands every message through a
memory channel, which costs ~2x a bare wsproto receive loop per 20 ms Twilio frame, and wsproto's
generic frame bookkeeping is itself ~40 µs per message (BENCHMARKS.md, Hot path: this layer is 6 µs
vs 93 µs). Here the caller's own task reads: :meth:`WsServerConnection.receive_message` pulls bytes,
decodes Twilio's frames with :class:`TextFrameDecoder` (wsproto takes over at the first frame of any
other shape) and returns the next complete message (pings answered, fragments reassembled) with no
extra task or channel.

What the server and the RTZR client share (receive loop, closing handshake, serialized writes under
the ``send`` budget, :class:`ConnectionClosed`) is :class:`engine.ws.connection.WsConnection`; the
upgrade is :class:`engine.ws.handshake.UpgradeHandshake` (h11, hypercorn's way). This module adds the
server's side: read the request, answer it, and the fast decoder in front of wsproto.

Only one task may receive at a time (the reader); any task may send.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import TextMessage
from wsproto.frame_protocol import CloseReason, Opcode

from engine.budgets import Budget
from engine.ws.connection import RECEIVE_SIZE, ConnectionClosed, WsConnection, lean_events
from engine.ws.frames import TextFrameDecoder, encode_frame
from engine.ws.handshake import (
    MAX_REQUEST_HEAD,
    WEBSOCKET_VERSION,
    HandshakeFailed,
    UpgradeHandshake,
    UpgradeRequest,
)

__all__ = [
    "MAX_REQUEST_HEAD",
    "RECEIVE_SIZE",
    "WEBSOCKET_VERSION",
    "ConnectionClosed",
    "HandshakeFailed",
    "TextFrameDecoder",
    "UpgradeHandshake",
    "UpgradeRequest",
    "WsServerConnection",
]


class WsServerConnection(WsConnection):
    """One server-side WebSocket on ``stream``: handshake, receive loop, serialized sends."""

    def __init__(self, stream: trio.SocketStream, *, send_budget: Budget, max_message_size: int) -> None:
        super().__init__(stream, send_budget=send_budget, max_message_size=max_message_size)
        # h11's state, needed only until the upgrade: dropped by accept() (issue 13, memory per call)
        self._handshake: UpgradeHandshake | None = UpgradeHandshake()
        # Set at the upgrade (accept); None before it and once wsproto parses (everything from then on).
        self._fast: TextFrameDecoder | None = None
        self.request: UpgradeRequest | None = None
        try:
            host, port = stream.socket.getpeername()[:2]
            self.remote = f"{host}:{port}"
        except OSError:
            self.remote = ""

    # -- handshake --------------------------------------------------------------------------

    async def read_request(self) -> UpgradeRequest:
        """Read and check the HTTP upgrade request (the caller bounds this with a deadline).

        Raises :class:`HandshakeFailed`: status 0 if the peer left first, else the HTTP error to
        answer with :meth:`reject`.
        """
        while True:
            data = await self._receive_some()
            if not data:
                raise HandshakeFailed(0, "connection closed before the request")
            request = self._shake().receive_data(data)
            if request is not None:
                self.request = request
                return request

    async def reject(self, status: int, body: bytes) -> None:
        """Answer the request with an HTTP error (before any upgrade); the caller closes the stream."""
        data = self._shake().reject(status, body)
        if data:
            await self._write(data)
        self._set_closed(CloseReason.ABNORMAL_CLOSURE, f"rejected {status}")

    async def accept(self) -> None:
        """Complete the upgrade (no subprotocol, no extensions: Twilio offers none)."""
        response, trailing = self._shake().accept()
        self._handshake = None
        self.request = None  # the caller has it; the connection no longer needs the head
        self._ws = Connection(ConnectionType.SERVER)  # no extensions negotiated
        lean_events(self._ws)
        self._fast = TextFrameDecoder(self._assembler.max_size)
        await self._write(response)
        # Bytes the client sent right behind the request head belong to the WebSocket.
        if trailing and self._feed(trailing):
            await self._process_events()

    def _shake(self) -> UpgradeHandshake:
        if self._handshake is None:
            raise RuntimeError("the connection is already upgraded")
        return self._handshake

    # -- receiving: the fast decoder in front of wsproto --------------------------------------

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

    # -- sending ----------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send one text message; raises :class:`ConnectionClosed` or ``BudgetExpired``.

        Uncontended (the usual case), the frame is written before the task's first schedule point (as
        trio's own ``send`` does: the checkpoint comes after the write), not a scheduler pass later.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.send_text_nowait(text.encode()):
            if self._pending:
                await self.flush()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._send_event(TextMessage(data=text))

    async def send_texts(self, payloads: Sequence[bytes]) -> None:
        """Send UTF-8 text messages in one write (an application channel's queued events); raises as
        :meth:`send_text`."""
        data = b"".join(server_text_frame(p) for p in payloads)
        with self._send_budget():
            async with self._send_lock:
                if not self._sendable:
                    raise self._closed or ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, "connection closed")
                await self._write_held(data)

    def send_text_nowait(self, payload: bytes) -> bool:
        """Send one UTF-8 text message from synchronous code, with no task wake-up (the first frame of an
        answer, an event to an application): True when it is written, in order.

        Only when no task is writing (the send lock is free, nothing :attr:`pending`), the connection is open
        and on a plain socket; else False and nothing is written (the caller awaits :meth:`send_text`). What
        the kernel does not take at once waits in :attr:`pending`: the caller must then ``await``
        :meth:`flush`; any later write sends it first, so the order on the wire is the order of the calls.
        (The write itself is :meth:`WsConnection._write_nowait`, shared with the RTZR client's audio path.)
        """
        return self._sendable and self._write_nowait(server_text_frame(payload))

    @property
    def pending(self) -> bool:
        """A :meth:`send_text_nowait` frame is partly written: :meth:`flush` must complete it."""
        return bool(self._pending)

    async def flush(self) -> None:
        """Write what :meth:`send_text_nowait` left (under the lock and the send budget); raises as :meth:`send_text`."""
        await self._flush_pending()

    async def aclose(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame, wait (within the caller's deadline) for the peer's, close the stream."""
        try:
            if self._ws is not None:  # never upgraded: nothing to say in WebSocket
                await self._close_handshake(code, reason)
        finally:
            await trio.aclose_forcefully(self._stream)

    # -- for a caller that reads the socket itself (engine.twilio.reactor) ----------------------

    @property
    def received(self) -> list[str | bytes]:
        """Complete messages not yet taken (``pop(0)`` to take one), as :meth:`receive_message` would return them."""
        return self._messages

    def frame_nowait(self, data: bytes) -> bytes | None:
        """The unmasked payload of the one whole, masked text frame ``data`` is (a Twilio media message as it is
        read, one per read; :meth:`TextFrameDecoder.raw`), taken at once; else None, with nothing consumed: the
        caller then hands ``data`` to :meth:`feed_nowait`. The caller decodes the payload (``raw.decode()``), or,
        when that fails, hands ``data`` to :meth:`feed_nowait` too (wsproto reports it, 1007).

        Only while the fast decoder is in charge (upgraded; wsproto has received nothing, so it cannot be
        CLOSED), the connection is not closed and no message is queued before it (their order is kept).

        The per-message path of the Twilio reader: its fixed-layout parse takes the bytes as they are
        (:meth:`engine.twilio.protocol.TwilioStream.receive_frame`), with no ``str`` of the message built.
        """
        fast = self._fast
        if fast is None or self._closed is not None or self._messages:
            return None
        return fast.raw(data)

    def feed_nowait(self, data: bytes) -> bool:
        """Take bytes the caller read from this connection's socket (b"": EOF, or a read error), without awaiting.

        Complete messages go to :attr:`received`. True when the connection's own task must now call
        :meth:`process_events` (wsproto has events: a control frame to answer, a close, EOF) or the
        connection is closed (:attr:`closed`); the caller then stops feeding until that is done.
        """
        ws = self._ws
        # While the fast decoder is in charge wsproto has received nothing, so it cannot be CLOSED (its state is
        # a property call: skipped per read).
        if self._closed is not None or ws is None or (self._fast is None and ws.state is ConnectionState.CLOSED):
            self._closed = self._closed or ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, "connection closed")
            return True
        return self._feed(data)

    async def process_events(self) -> None:
        """Handle what :meth:`feed_nowait` left to wsproto (pings answered, close completed, messages queued)."""
        if self._ws is not None and self._closed is None:
            await self._process_events()


def server_text_frame(payload: bytes) -> bytes:
    """One whole, unmasked text frame carrying UTF-8 ``payload`` (what a server sends). Sans-IO."""
    return encode_frame(Opcode.TEXT, payload, None)

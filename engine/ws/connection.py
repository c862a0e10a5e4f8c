"""The frame-level half of a WebSocket that the server (Twilio) and the client (RTZR) share, on a Trio stream.

As in wsproto, the two sides differ by who does the handshake and how data frames go out, not by a copy
of the rest: :class:`WsConnection` holds the receive loop (messages reassembled, pings answered, the
closing handshake), the close/fail bookkeeping and the serialized writes; the subclasses
(:class:`engine.twilio.wsconn.WsServerConnection`, :class:`engine.rtzr.wsclient.WsClientConnection`)
add their handshake and their send paths.

Invariants every subclass keeps:
- Only one task receives (the caller's own reader: no reader task, no channel); any task may send.
- Every write goes through ``_send_lock`` under the ``send`` budget; a write that did not finish
  (error, budget, cancel) sets ``_broken``: a half-written frame cannot be recovered, so nothing more
  is written and :attr:`closed` says 1006. The one exception is :meth:`_write_nowait` (plain TCP, lock
  free, nothing pending): one non-blocking write, no await; what the kernel did not take waits in
  ``_pending``, and every later write (``_write_held``) sends it first, so frames stay whole and in order.
- :attr:`closed` is set once, by the first reason (our close, the peer's, a protocol error, a lost
  TCP connection); messages that completed before it are still delivered.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Generator
from typing import Protocol, cast

import trio
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from engine.budgets import Budget, BudgetExpired
from engine.ws.frames import MessageAssembler, MessageTooBig

RECEIVE_SIZE = 64 * 1024
_SENDABLE = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)  # wsproto accepts frames from us


class ConnectionClosed(Exception):
    """The WebSocket is closed (by either side, or the TCP connection broke); ``code`` per RFC 6455 7.4."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed ({int(code)}) {reason}".rstrip())
        self.code = code
        self.reason = reason


class FrameLayer(Protocol):
    """What wsproto offers after the handshake: ``Connection`` (our server) and ``WSConnection`` (our client)."""

    @property
    def state(self) -> ConnectionState: ...

    def send(self, event: Event) -> bytes: ...

    def receive_data(self, data: bytes | None) -> None: ...

    def events(self) -> Generator[Event, None, None]: ...


class _EventList(list[Event]):
    """wsproto's ``Connection._events`` as a list: wsproto (1.3) only appends to it, tests it and pops its front."""

    __slots__ = ()

    def popleft(self) -> Event:
        return self.pop(0)


def lean_events(layer: object) -> None:
    """Swap the deque in which wsproto's frame layer queues its events (0.74 KiB empty, on every Twilio call and
    RTZR socket, and almost always empty: our frame fast paths bypass it) for a list holding the same events
    (issue 13). Anything else (another wsproto, a fake layer) is left as it is."""
    events = getattr(layer, "_events", None)
    if type(events) is deque:
        layer._events = _EventList(events)  # type: ignore[attr-defined]


class WsConnection:
    """A WebSocket on ``stream`` once upgraded: receive loop, closing handshake, serialized writes."""

    def __init__(self, stream: trio.abc.Stream, *, send_budget: Budget, max_message_size: int) -> None:
        self._stream = stream
        self._ws: FrameLayer | None = None  # wsproto's frame layer; the subclass sets it (at the upgrade)
        self._send_budget = send_budget
        self._send_lock = trio.StrictFIFOLock()
        # A list, not a deque: an empty deque is 0.7 KiB, paid by every Twilio call and RTZR socket (issue 13);
        # it holds the few messages of one read, taken from the front.
        self._messages: list[str | bytes] = []
        self._assembler = MessageAssembler(max_message_size)
        self._closed: ConnectionClosed | None = None
        self._broken = False  # a write failed: nothing more may be written
        self._pings: dict[bytes, trio.Event] = {}  # in flight, oldest first
        # Plain TCP only: the socket for _write_nowait (TLS always goes through send_all).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._pending = b""  # the tail of a _write_nowait frame the kernel did not take (written first)

    @property
    def closed(self) -> ConnectionClosed | None:
        """None while open; else why it closed (the code we or the peer sent, 1006 for a dropped TCP)."""
        return self._closed

    def _set_closed(self, code: int, reason: str) -> None:
        """Record why the connection closed; the first reason wins."""
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
        for event in self._pings.values():  # waiting pings see the close
            event.set()
        self._pings.clear()

    @property
    def _sendable(self) -> bool:
        """Frames may be written: upgraded, no write failed, and wsproto accepts frames from us."""
        ws = self._ws
        return not self._broken and ws is not None and ws.state in _SENDABLE

    def _upgraded(self) -> FrameLayer:
        if self._ws is None:
            raise ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, "not upgraded")
        return self._ws

    async def _receive_some(self) -> bytes:
        try:
            return cast("bytes", await self._stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    # -- receiving --------------------------------------------------------------------------

    async def receive_message(self) -> str | bytes:
        """The next complete message: ``str`` for text, ``bytes`` for binary.

        Raises :class:`ConnectionClosed` once the peer closed (after we answered its close frame),
        the TCP connection broke, or a message exceeded ``max_message_size`` (we close with 1009).
        Messages that arrived before the close are delivered first.
        """
        message = await self.receive_message_before(math.inf)
        assert message is not None  # no deadline: only a message or an exception ends the wait
        return message

    async def receive_message_before(self, deadline: float) -> str | bytes | None:
        """:meth:`receive_message`, or None once Trio's clock reaches ``deadline`` with no message complete.

        Only the wait for bytes is bounded: bytes received are always parsed and their control frames
        answered, so a deadline never cuts a pong or a close reply in half (it is how the RTZR socket's
        reader doubles as its pinger, with no task of its own).
        """
        messages = self._messages
        while not messages:
            if self._closed is not None:
                raise self._closed
            ws = self._ws
            if ws is None:
                raise ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, "not upgraded")
            data = b""
            with trio.CancelScope(deadline=deadline) as waited:
                try:  # inlined _receive_some: one coroutine less in every waiting reader's chain
                    data = cast("bytes", await self._stream.receive_some(RECEIVE_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            if waited.cancelled_caught:
                return None
            if ws.state is ConnectionState.CLOSED:  # closed by a sender meanwhile
                self._set_closed(CloseReason.ABNORMAL_CLOSURE, "connection closed")
                continue
            if self._feed(data):
                await self._process_events()
        return messages.pop(0)

    def _feed(self, data: bytes) -> bool:
        """Parse received bytes (b"": EOF); True when wsproto has events to look at."""
        self._upgraded().receive_data(data or None)  # None: EOF → CloseConnection(1006)
        return True

    async def _process_events(self) -> None:
        for event in self._upgraded().events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                try:
                    message = self._assembler.add(cast("TextMessage | BytesMessage", event))
                except MessageTooBig:
                    await self._fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
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
        """Wake the ping with this payload and every older one (a peer may answer several with one pong;
        unsolicited pongs are allowed, RFC 6455 5.5.3)."""
        if payload not in self._pings:
            return
        while self._pings:
            key, event = next(iter(self._pings.items()))
            del self._pings[key]
            event.set()
            if key == payload:
                return

    async def send_ping(self, payload: bytes) -> trio.Event:
        """Send a ping; the returned event is set when its pong arrives (or the connection closes).

        For a caller that is itself the reader (the pong is delivered by its own receive calls). Raises
        :class:`ConnectionClosed`, ``BudgetExpired('send')``, or ``ValueError`` if a ping with this
        payload is already in flight.
        """
        if self._closed is not None:
            raise self._closed
        if payload in self._pings:
            raise ValueError("a ping with this payload is already in flight")
        answered = trio.Event()
        self._pings[payload] = answered
        try:
            await self._send_event(Ping(payload=payload))
        except BaseException:
            if self._pings.get(payload) is answered:
                del self._pings[payload]
            raise
        return answered

    async def ping(self, payload: bytes) -> None:
        """Send a ping and wait for its pong (delivered by the reader); the caller bounds the wait.

        Raises :class:`ConnectionClosed` if the connection is or becomes closed, ``ValueError`` if
        a ping with this payload is already in flight.
        """
        answered = await self.send_ping(payload)
        try:
            await answered.wait()
        finally:
            if self._pings.get(payload) is answered:
                del self._pings[payload]
        if self._closed is not None:
            raise self._closed


    async def _on_close(self, event: CloseConnection) -> None:
        state = self._upgraded().state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer closed first: answer, then done
            self._set_closed(event.code, event.reason or "")
            await self._send_event(event.response(), quiet=True)
        elif state is ConnectionState.OPEN:  # wsproto reports a protocol violation as a close event
            await self._fail(event.code, event.reason or "protocol error")
        else:  # CLOSED: the peer answered our close, or the TCP connection ended
            self._set_closed(event.code, event.reason or "")

    async def _fail(self, code: int, reason: str) -> None:
        self._set_closed(code, reason)  # messages already complete are still delivered
        await self._send_event(CloseConnection(code=code, reason=reason), quiet=True)

    # -- closing ----------------------------------------------------------------------------

    async def _close_handshake(self, code: int, reason: str) -> None:
        """Send our close frame (if still open) and read until the peer's reply or EOF (RFC 6455 7.1.2)."""
        ws = self._upgraded()
        if ws.state is ConnectionState.OPEN and not self._broken:
            self._set_closed(code, reason)
            await self._send_event(CloseConnection(code=code, reason=reason), quiet=True)
        while ws.state is ConnectionState.LOCAL_CLOSING and not self._broken:
            data = await self._receive_some()
            if self._feed(data):
                for _event in ws.events():
                    pass  # the peer's close reply (or EOF) moves wsproto to CLOSED
            self._messages.clear()  # messages after our close are dropped

    # -- writing ----------------------------------------------------------------------------

    async def _send_event(self, event: Event, *, quiet: bool = False) -> None:
        """A frame through wsproto, which tracks the closing handshake; ``quiet``: a failure is not raised."""
        try:
            with self._send_budget():
                async with self._send_lock:
                    # Checked under the lock: a close frame written meanwhile ends the data stream.
                    if not self._sendable:
                        raise self._closed or ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, "connection closed")
                    try:
                        data = self._upgraded().send(event)
                    except LocalProtocolError:
                        raise self._closed or ConnectionClosed(
                            CloseReason.ABNORMAL_CLOSURE, "connection closed") from None
                    await self._write_held(data)
        except (ConnectionClosed, BudgetExpired):
            if not quiet:
                raise

    async def _write(self, data: bytes) -> None:
        """One whole write (e.g. a handshake answer) under the lock and ``budgets.send``."""
        with self._send_budget():
            async with self._send_lock:
                await self._write_held(data)

    def _write_nowait(self, frame: bytes) -> bool:
        """Write one whole ``frame`` now, from synchronous code, with one non-blocking ``write``: True when it is
        written, or started with its tail kept in ``_pending`` (the caller then awaits :meth:`_flush_pending`).

        False, and nothing written, unless on plain TCP with no task writing (the send lock free) and nothing
        pending: the caller then takes the awaited path (lock, ``budgets.send``), which writes ``_pending``
        first. Nothing is awaited between the check and the write, so no other frame can come between; a
        write that does not block cannot overrun a deadline. The caller checks the connection's state.
        """
        # The fd is read each time: once the stream is closed it is -1 (its number may belong to another socket).
        sock = self._socket
        fd = -1 if sock is None else sock.fileno()
        if fd < 0 or self._pending or self._send_lock.locked():
            return False
        try:
            written = os.write(fd, frame)
        except BlockingIOError:
            written = 0
        except OSError:  # reset, broken pipe: nothing was written, and nothing more can be
            self._break()
            return False
        if written != len(frame):
            self._pending = frame[written:]
        return True

    async def _flush_pending(self) -> None:
        """Write what :meth:`_write_nowait` left, under the lock and ``budgets.send`` (rare: the socket
        buffer was full); raises :class:`ConnectionClosed` or ``BudgetExpired('send')``."""
        if self._pending:
            await self._write(b"")

    async def _write_held(self, data: bytes) -> None:
        """Write under the held lock; a write that did not finish (error, budget, cancel) breaks it."""
        if self._pending:  # a frame started by _write_nowait goes out whole, before anything else
            data, self._pending = self._pending + data, b""
        ok = False
        try:
            await self._stream.send_all(data)
            ok = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(CloseReason.ABNORMAL_CLOSURE, "connection lost") from None
        finally:
            if not ok:
                self._break()

    def _break(self) -> None:
        self._broken = True
        self._pending = b""  # nothing more is written
        self._set_closed(CloseReason.ABNORMAL_CLOSURE, "send failed")

"""One upgraded session's input, driven by the ReadHub: bytes in, session logic at once, work out for its task.

The hub calls :meth:`SessionWire.readable` when the socket has bytes. Audio and text messages go straight
to the sans-IO :class:`StreamSession` (no I/O); with a batch (``batch=``, LINEAR16 sessions) once the hub's
pass is over: the read's whole audio messages are left masked for the batch to unmask and score with the
pass's other messages, then :meth:`SessionWire.process` runs the read's events in order. Whatever needs a
write or an await — a control frame and everything after it, due results, the end of the session — is
queued here and the session's task woken.
Invariants the task relies on:

- Messages reach the session in wire order: once a control frame is queued, every later event queues
  behind it, and the hub stops reading this socket (``pause``) until the task has handled the queue.
- Once a Close/Abort is due, or EOF or a fatal error is seen, the hub reads no more of this socket: the
  task owns it (a close handshake reads the peer's reply itself).
- The task's wait is bounded by the session's next deadline; a message that brings it earlier moves the
  task's scope deadline directly, without a wake-up.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Sequence
from typing import Protocol, cast

import numpy as np
import trio
from wsproto.connection import Connection
from wsproto.events import BytesMessage, Event, TextMessage

from engine.rtzr.emulator.batch import AudioBatch, Decoded
from engine.rtzr.emulator.reader import ReadHub
from engine.rtzr.emulator.session import Abort, Action, Close, StreamSession
from engine.rtzr.emulator.wsfast import Audio, FrameSplitter, Masked

READ_SIZE = 65536


class Done(Exception):
    """The session is over (closed by either side, or its input is unusable)."""


class ByteCounter(Protocol):
    """Where a wire adds the audio bytes it received (the emulator's stats)."""

    bytes_received: int


class SessionWire:
    """The input half of one session, plus the queues its task drains."""

    def __init__(self, fd: int, ws: Connection, session: StreamSession, hub: ReadHub, stats: ByteCounter,
                 *, max_message_bytes: int, batch: AudioBatch | None = None) -> None:
        self.fd = fd
        self.ws = ws
        self.session = session
        self.frames = FrameSplitter(ws)
        self.pending: deque[Event | Audio | Decoded] = deque()  # events the task must handle itself, in wire order
        self.actions: deque[Action] = deque()  # due results/closes, in order
        self.eof = False  # the peer closed (or reset) its side; handle what is queued, then end
        self.fatal: BaseException | None = None  # end at once (message too large, or a bug)
        self.wake = trio.Event()
        self.scope: trio.CancelScope | None = None  # the task's wait, while it waits
        self._hub = hub
        self._stats = stats
        self._text = bytearray()
        self._max_message = max_message_bytes
        self._closing = False  # a Close/Abort is queued: the task owns the socket from now on
        # LINEAR16 audio read by the hub is unmasked, decoded and scored with the pass's other messages
        self._batch = batch if session.decoder.encoding == "LINEAR16" else None

    # ------------------------------------------------------------------ hub side
    def readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # reset by the peer: like EOF (the old receive_some raised and the session ended)
            data = b""
        if not data:
            self.eof = True
            self._hub.remove(self)
            self.wake.set()
            return
        if self._batch is not None:
            events = self.frames.feed(data, defer=True)
            if events:
                self._batch.add(self, cast("list[Event | Audio | Masked | Decoded]", events))  # process()ed after the pass
            return
        self.feed(data)

    def fail(self, exc: Exception) -> None:
        self.fatal = exc
        self.wake.set()

    def feed(self, data: bytes) -> None:
        """Split ``data`` into messages and hand them on (also used for bytes that came with the upgrade)."""
        self.process(self.frames.feed(data), trio.current_time())

    def process(self, events: Sequence[Event | Audio | Masked | Decoded], now: float) -> None:
        """Hand split messages on in wire order (none :class:`Masked`: a batch has decoded those)."""
        pending = self.pending
        queued = self.session.queued
        try:
            for event in events:
                assert not isinstance(event, Masked)
                if pending:
                    pending.append(event)
                elif type(event) is Decoded:  # data_event's first case, inlined (the batch's audio: most events)
                    self.session.receive_pcm(event.samples, event.loud, now)
                    self._stats.bytes_received += 2 * event.samples.size
                elif not self.data_event(event, now):
                    pending.append(event)
        except Done as exc:
            self._hub.remove(self)
            self.fatal = exc
            self.wake.set()
            return
        # Only what these messages queued can be due now and unknown to the task: anything queued before has set
        # the task's deadline (it polls then), so a message that queued nothing needs no poll here.
        due = self.session.poll(now) if self.session.queued != queued else []
        if due:
            self.actions.extend(due)
            if any(isinstance(a, Close | Abort) for a in due):
                self.take_over()
        if pending or due:
            if pending:
                self._hub.pause(self)
            self.wake.set()
        elif self.scope is not None and self.session.queued != queued:  # else the deadline can only have moved later
            deadline = self.session.next_deadline()
            if deadline is not None and deadline < self.scope.deadline:
                self.scope.deadline = deadline

    def data_event(self, event: Event | Audio | Decoded, now: float) -> bool:
        """Handle an audio or text message at once (no I/O); False for anything else."""
        if type(event) is Decoded:  # the batch's audio
            self.session.receive_pcm(event.samples, event.loud, now)
            self._stats.bytes_received += 2 * event.samples.size
            return True
        if isinstance(event, np.ndarray):  # the fast path's audio
            self.session.receive_audio(event, now)
            self._stats.bytes_received += event.size
            return True
        if isinstance(event, BytesMessage):
            before = self.session.counters.bytes_received
            self.session.receive_audio(bytes(event.data), now)
            self._stats.bytes_received += self.session.counters.bytes_received - before
            return True
        if isinstance(event, TextMessage):
            self._text.extend(event.data.encode("utf-8", "surrogatepass"))
            if len(self._text) > self._max_message:
                raise Done("message too large")
            if event.message_finished:
                self.session.receive_text(self._text.decode("utf-8", "replace"), now)
                self._text.clear()
            return True
        return False

    # ------------------------------------------------------------------ task side
    def take_over(self) -> None:
        """A Close/Abort is due: stop the hub reading and give wsproto any partial frame (for the close handshake)."""
        if not self._closing:
            self._closing = True
            self._hub.remove(self)
            self.ws.receive_data(self.frames.rest())

    def poll(self) -> None:
        """Queue what is due now (the task calls this after its deadline)."""
        due = self.session.poll(trio.current_time())
        if due:
            self.actions.extend(due)
            if any(isinstance(a, Close | Abort) for a in due):
                self.take_over()

    def resume(self) -> None:
        """The task has handled the pending events: read again (unless the socket is the task's now)."""
        if not self._closing and not self.eof and self.fatal is None:
            self._hub.resume(self)

    async def wait(self) -> None:
        """Until the hub queues work, or the session's next deadline."""
        if self.pending or self.actions or self.eof or self.fatal is not None:
            return
        self.wake = trio.Event()
        deadline = self.session.next_deadline()
        with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as self.scope:
            await self.wake.wait()
        self.scope = None

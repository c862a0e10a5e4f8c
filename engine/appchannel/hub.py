"""Routing between the engine and application connections, without I/O.

Events: :meth:`AppHub.publish` is on the engine's one emit path (synchronous, never blocks): each event is
encoded once and handed to every connection subscribed to its call: written to its socket at once when
nothing of that connection is queued or being written (``Subscriber.send_now``: no wake-up of its writer
task, which at 100 calls waits a whole scheduler pass), else appended to its queue. A queue holds at most
``limit`` messages; past that the event is dropped for that connection only, counted
(``app_channel_events_dropped_total``) and announced to the application by a ``channel.dropped`` message
once it reads again. The call never waits for an application.

Commands: :meth:`AppHub.command` applies one decoded command to the call's :class:`CallControl` and returns
the error to answer, if any. A connection may command only the calls it is subscribed to.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

import trio

from engine import events as ev
from engine.appchannel import messages as msg
from engine.log import get_logger
from engine.metrics import Registry
from engine.playback import PlaybackError
from engine.playback_driver import CallControl

log = get_logger(__name__)


class Subscriber:
    """One application connection's view: which calls it follows and its bounded outgoing queue."""

    def __init__(self, call: str | None, limit: int) -> None:
        self.call = call  # a stream_sid or call_sid; None: every call
        self.limit = limit
        self.queue: deque[bytes] = deque()
        self.dropped = 0
        self.unreported = 0  # drops not yet told to the application
        self.wake = trio.Event()
        # Writes a message now if it can (nothing else queued or being written), without blocking; set by the
        # connection once its greeting is out. False: the message is queued for the writer task.
        self.send_now: Callable[[bytes], bool] | None = None

    def follows(self, stream_sid: str, call_sid: str) -> bool:
        return self.call is None or self.call in (stream_sid, call_sid)

    def push(self, body: bytes) -> bool:
        """Send a message now, or queue it; False (and counted) when the queue is full."""
        if not self.queue and not self.unreported and self.send_now is not None and self.send_now(body):
            return True
        if len(self.queue) >= self.limit:
            self.dropped += 1
            self.unreported += 1
            return False
        self.queue.append(body)
        self.wake.set()
        return True

    def take(self) -> list[bytes]:
        """Everything queued (a ``channel.dropped`` notice first if events were lost), oldest first."""
        out: list[bytes] = []
        if self.unreported:
            out.append(msg.encode(msg.Dropped(count=self.unreported)))
            self.unreported = 0
        out.extend(self.queue)
        self.queue.clear()
        self.wake = trio.Event()
        return out


class AppHub:
    """Every connected application, and the live calls' controls (by stream_sid)."""

    def __init__(self, controls: Mapping[str, CallControl], metrics: Registry) -> None:
        self.controls = controls
        self.subscribers: list[Subscriber] = []
        self._m_dropped = metrics.counter("app_channel_events_dropped_total",
                                          "events not delivered to a slow application (its queue was full)")
        self._m_commands = metrics.counter("app_channel_commands_total", "commands applied")
        self._m_refused = metrics.counter("app_channel_commands_refused_total", "commands answered with channel.error")

    def subscribe(self, call: str | None, limit: int) -> Subscriber:
        sub = Subscriber(call, limit)
        self.subscribers.append(sub)
        return sub

    def live_calls(self, sub: Subscriber) -> list[str]:
        """The stream_sids of the live calls ``sub`` follows."""
        return [sid for sid, c in self.controls.items() if not c.closed and sub.follows(sid, c.call_sid)]

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def publish(self, event: ev.Event) -> None:
        """Hand an event to every connection following its call (the engine's emit path: never blocks)."""
        body: bytes | None = None
        for sub in self.subscribers:
            if sub.follows(event.stream_sid, event.call_sid):
                if body is None:
                    body = ev.encode(event)
                if not sub.push(body):
                    self._m_dropped.inc()

    def command(self, sub: Subscriber, data: str | bytes) -> msg.ChannelError | None:
        """Apply one message from ``sub``'s application; the error to answer, or None."""
        try:
            cmd = msg.decode_command(data)
        except msg.BadCommand as exc:
            return self._refuse(exc.code, str(exc), exc.ref, exc.stream_sid)
        control = self.controls.get(cmd.stream_sid)
        if control is None or control.closed or not sub.follows(control.stream_sid, control.call_sid):
            return self._refuse("unknown_call", f"no live call {cmd.stream_sid[:64]!r} on this connection",
                                cmd.ref, cmd.stream_sid)
        try:
            if isinstance(cmd, msg.Play):
                control.play_nowait(cmd.audio, encoding=cmd.encoding, sample_rate=cmd.sample_rate,
                                    playback_id=cmd.playback_id)
            elif isinstance(cmd, msg.Mark):
                control.mark_nowait(cmd.name)
            elif isinstance(cmd, msg.Clear):
                control.clear_nowait()
            else:
                control.stop_nowait()
        except PlaybackError as exc:
            return self._refuse(exc.code, str(exc), cmd.ref, cmd.stream_sid)
        self._m_commands.inc()
        return None

    def _refuse(self, code: str, message: str, ref: str | None, stream_sid: str | None) -> msg.ChannelError:
        self._m_refused.inc()
        return msg.ChannelError(code=code, message=message, ref=ref, stream_sid=stream_sid)

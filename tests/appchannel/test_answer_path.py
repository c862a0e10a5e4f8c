"""The answer's path without task wake-ups (issue 14, answer latency): an event to the application and the
first frames of a ``play`` are written from the synchronous call that produced them, in order.

No timing: each test checks what is on the wire (or in the fake session) before the code under test
could have yielded to the scheduler, or the order of writes.
"""

from __future__ import annotations

import socket

import trio
import trio.testing
from wsproto.events import TextMessage

from engine import events as ev
from engine.appchannel.hub import Subscriber
from engine.config import PlaybackConfig
from engine.metrics import Registry
from engine.playback_driver import CallControl
from engine.twilio.wsconn import WsServerConnection, server_text_frame
from tests.twilio.test_twilio_wsconn import Client, pair

SID, CID = "MZn", "CAn"


async def go(conn: WsServerConnection) -> None:
    """Wait for the client's first message: nothing the server writes can then arrive with the upgrade answer."""
    assert await conn.receive_message() == "go"


async def whole_message(client: Client) -> str:
    """The next complete text message (wsproto hands a big one over in parts)."""
    parts = []
    while True:
        event = await client.until(TextMessage)
        assert isinstance(event, TextMessage)
        parts.append(event.data)
        if event.message_finished:
            return "".join(parts)


# -- the connection: send_text_nowait ------------------------------------------------------------------
async def test_send_text_nowait_writes_the_frame_before_returning() -> None:
    got: list[str] = []

    async def serve(conn: WsServerConnection) -> None:
        await go(conn)
        assert conn.send_text_nowait(b'{"a":1}')  # synchronous: written before any checkpoint
        assert not conn.pending
        assert conn.send_text_nowait("é".encode())
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with pair(serve) as (client, errors):
            await client.send(TextMessage(data="go"))
            while len(got) < 2 and not errors:
                got.append(await whole_message(client))
            assert errors == []
    assert got == ['{"a":1}', "é"]


async def test_send_text_nowait_refuses_while_a_task_writes() -> None:
    results: list[bool] = []

    async def serve(conn: WsServerConnection) -> None:
        await go(conn)
        async with conn._send_lock:  # a task in the middle of a write
            results.append(conn.send_text_nowait(b"x"))
        results.append(conn.send_text_nowait(b"y"))
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with pair(serve) as (client, errors):
            await client.send(TextMessage(data="go"))
            msg = await whole_message(client)
            assert errors == []
    assert results == [False, True]
    assert msg == "y"


async def test_a_partly_written_nowait_frame_is_completed_first_and_whole() -> None:
    big = b"a" * (1 << 20)
    received: list[str] = []
    sent: list[int] = []

    async def serve(conn: WsServerConnection) -> None:
        await go(conn)
        conn._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[attr-defined]
        # Synchronous writes while the client cannot read: the kernel's buffers fill, one frame is cut.
        while not conn.pending:
            assert conn.send_text_nowait(big) and len(sent) < 256
            sent.append(len(big))
        assert not conn.send_text_nowait(b"refused while pending")  # nothing may overtake the cut frame
        await conn.send_text("after")  # writes the pending tail first
        assert not conn.pending
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with pair(serve, max_message_size=2 << 20) as (client, errors):
            await client.send(TextMessage(data="go"))
            while (not sent or len(received) < len(sent) + 1) and not errors:
                received.append(await whole_message(client))
            assert errors == []
    assert received == [big.decode()] * len(sent) + ["after"]


def test_server_text_frame_lengths() -> None:
    assert server_text_frame(b"hi") == b"\x81\x02hi"
    assert server_text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert server_text_frame(b"x" * 70000)[:2] == b"\x81\x7f"


# -- the application channel: events written from the emit path ---------------------------------------
def test_an_event_goes_out_from_publish_itself_when_nothing_is_queued() -> None:
    sub = Subscriber(None, limit=4)
    written: list[bytes] = []
    sub.send_now = lambda body: written.append(body) is None
    assert sub.push(b"e1")
    assert written == [b"e1"] and not sub.queue  # no writer task needed


def test_events_queue_behind_what_is_queued_and_when_the_socket_is_busy() -> None:
    sub = Subscriber(None, limit=4)
    busy = [True]
    written: list[bytes] = []

    def send_now(body: bytes) -> bool:
        if busy[0]:
            return False
        written.append(body)
        return True

    sub.send_now = send_now
    assert sub.push(b"e1")  # the socket is busy: queued
    busy[0] = False
    assert sub.push(b"e2")  # e1 is still queued: e2 may not overtake it
    assert written == [] and list(sub.queue) == [b"e1", b"e2"]
    assert sub.take() == [b"e1", b"e2"]
    assert sub.push(b"e3") and written == [b"e3"]


# -- playback: the first frames of a play on an idle call -----------------------------------------------
class NowaitSession:
    """Twilio's socket with the synchronous sends (as TwilioSession); ``busy``: a send is in flight."""

    stream_sid = SID
    call_sid = CID

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []
        self.busy = False
        self.send_pending = False

    def send_media_nowait(self, audio: bytes) -> bool:
        if self.busy:
            return False
        self.sent.append(("media", len(audio)))
        return True

    def send_mark_nowait(self, name: str) -> bool:
        if self.busy:
            return False
        self.sent.append(("mark", name))
        return True

    async def flush(self) -> bool:
        return True

    async def send_media(self, audio: bytes) -> bool:
        self.sent.append(("media-async", len(audio)))
        await trio.lowlevel.checkpoint()
        return True

    async def send_mark(self, name: str) -> bool:
        self.sent.append(("mark-async", name))
        return True

    async def clear(self) -> bool:
        self.sent.append(("clear", None))
        return True

    def end(self, reason: str) -> None:
        pass


def make() -> tuple[CallControl, NowaitSession, list[ev.Event]]:
    session = NowaitSession()
    events: list[ev.Event] = []
    control = CallControl(session, PlaybackConfig(lead_ms=60), events.append, Registry())  # type: ignore[arg-type]
    return control, session, events


async def test_play_on_an_idle_call_writes_its_first_frames_from_the_command() -> None:
    control, session, events = make()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        await trio.testing.wait_all_tasks_blocked()
        control.play_nowait(b"\x00" * 160 * 10, playback_id="a")
        # Before any checkpoint: the lead's worth of frames (60 ms) is on the socket, no task woke for it.
        assert session.sent == [("media", 160)] * 3
        # playback.started is not emitted from inside the command (an on_event callback would be re-entered) ...
        assert not any(isinstance(e, ev.PlaybackStarted) for e in events)
        await trio.testing.wait_all_tasks_blocked()
        # ... but by the task, right after.
        assert [e.playback_id for e in events if isinstance(e, ev.PlaybackStarted)] == ["a"]
        control.close()


async def test_play_while_a_send_is_in_flight_goes_through_the_task_in_order() -> None:
    control, session, events = make()
    session.busy = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        await trio.testing.wait_all_tasks_blocked()
        control.play_nowait(b"\x00" * 160 * 2, playback_id="a")
        assert session.sent == []  # refused now: queued for the task, nothing lost or reordered
        await trio.testing.wait_all_tasks_blocked()
        assert session.sent == [("media-async", 160), ("media-async", 160), ("mark-async", "sori-1")]
        assert [type(e) for e in events] == [ev.PlaybackStarted]
        control.close()


async def test_a_clear_right_after_a_nowait_play_reports_started_before_interrupted() -> None:
    control, _session, events = make()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        await trio.testing.wait_all_tasks_blocked()
        control.play_nowait(b"\x00" * 160 * 10, playback_id="a")
        control.clear_nowait()  # before the task ran: the deferred notice still comes first
        assert [type(e) for e in events] == [ev.PlaybackStarted, ev.PlaybackInterrupted]
        control.close()

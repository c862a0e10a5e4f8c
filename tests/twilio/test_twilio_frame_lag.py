"""The frame-lag metric (``twilio_frame_lag_ms``): handled minus due, with no clock read per message (issue 13).

A frame read by the reactor is handled at the end of its pass (the batched endpointer decides it there), so
the lag is taken then (:class:`engine.twilio.server.IngestPass`), from the due time the reader noted with the
pass's ``now``; frames the call's own task delivers are observed at the end of that delivery. Every real frame is
observed exactly once on either path.
"""

from __future__ import annotations

import base64
import math
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from engine.budgets import Budgets
from engine.metrics import Histogram, Registry
from engine.twilio.protocol import TwilioStream
from engine.twilio.server import IngestPass, _CallReader, _ErrorPolicy, _Metrics, _StatsReporter
from engine.twilio.wsconn import WsServerConnection
from engine.ws.frames import encode_frame
from tests.twilio.test_twilio_protocol import dtmf, media, start, stop
from tests.twilio.test_twilio_server import raw_client, wait_for
from tests.twilio.twilio_support import make_config, running_server


class _Counting:
    def __init__(self) -> None:
        self.events = 0

    def on_event(self, event: object) -> None:
        self.events += 1

    async def run(self) -> None:
        return None

    def on_close(self, reason: str) -> None:
        return None


def _masked(text: str) -> bytes:
    return encode_frame(0x1, text.encode(), os.urandom(4))


@asynccontextmanager
async def _reader(ingest: IngestPass) -> AsyncIterator[tuple[_CallReader, TwilioStream]]:
    """A reader on a real upgraded connection (the upgrade's bytes are written before they are read)."""
    lsock = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lsock.getsockname())
    server = trio.socket.from_stdlib_socket(lsock.accept()[0])
    lsock.close()
    try:
        ws = WsServerConnection(trio.SocketStream(server), send_budget=Budgets().send, max_message_size=64 * 1024)
        key = base64.b64encode(os.urandom(16)).decode()
        client.sendall((f"GET /twilio/media HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await ws.read_request()
        await ws.accept()
        proto = TwilioStream()
        proto.receive_text(start())
        metrics = _Metrics(Registry())
        reader = _CallReader(ws, proto, _Counting(), errors=_ErrorPolicy(10, metrics, "c"),  # type: ignore[arg-type]
                             reporter=_StatsReporter(proto.stats, metrics), ingest=ingest, idle_s=15.0, debug=False)
        yield reader, proto
    finally:
        server.close()
        client.close()


def _lags(hist: Histogram) -> list[float]:
    return sorted(hist.pending)


async def test_a_reactor_pass_observes_its_frames_lag_at_its_end(mock_clock: trio.testing.MockClock) -> None:
    """The pass's work (here 200 ms of it, as a slow batch) is in the lag of every frame read in the pass, and
    nothing reads the clock per message: the reader only notes due times."""
    hist = Histogram((10, 100, 1000))
    ingest = IngestPass(hist)
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, proto):
            t0 = trio.current_time()
            ingest.begin()
            assert reader.readable(_masked(media(2, 1, 0)), t0) is False  # the timeline's first frame
            # 20 ms of audio later in the same read time: the origin moves 20 ms earlier (its due time is t0 too)
            assert reader.readable(_masked(media(3, 2, 20)), t0) is False
            mock_clock.jump(0.2)
            assert not hist.pending  # nothing observed before the pass ends
            ingest.end()
            assert _lags(hist) == pytest.approx([200.0, 200.0])
            # The next pass 300 ms after the first started: the frame, due 40 ms after the origin (t0 - 20 ms), is
            # 280 ms late.
            mock_clock.jump(0.1)
            ingest.begin()
            assert reader.readable(_masked(media(4, 3, 40)), trio.current_time()) is False
            ingest.end()
            assert _lags(hist) == pytest.approx([200.0, 200.0, 280.0])
            assert proto.stats.frames == 3 and not ingest.dues


async def test_a_second_frame_in_one_reactor_read_does_not_move_the_origin(mock_clock: trio.testing.MockClock) -> None:
    """Issue 13 round 8: the second message of a reactor read may have arrived while the pass ran, after the
    pass's ``now``; taken as the origin it made the origin too early, and every later frame of the call looked that
    much later for the rest of the call (the 'missed' part of the late frames at 300 calls). Only the first message
    of a read, which made the socket readable, may move the origin."""
    hist = Histogram((10, 100, 1000))
    ingest = IngestPass(hist)
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, _proto):
            t0 = trio.current_time()
            ingest.begin()
            assert reader.readable(_masked(media(2, 1, 0)), t0) is False  # the origin: t0
            ingest.end()
            mock_clock.jump(0.025)
            ingest.begin()  # one read, two frames: offset 20 ms (5 ms late) and 40 ms (arrived after the poll)
            assert reader.readable(_masked(media(3, 2, 20)) + _masked(media(4, 3, 40)), trio.current_time()) is False
            ingest.end()
            assert ingest.origin_skipped.value == 1  # the 40 ms frame would have moved the origin 15 ms earlier
            mock_clock.jump(0.035)  # t0 + 60 ms: the 60 ms frame, on time
            ingest.begin()
            assert reader.readable(_masked(media(5, 4, 60)), trio.current_time()) is False
            ingest.end()
            assert _lags(hist) == pytest.approx([-15.0, 0.0, 0.0, 5.0])  # old: [0, 0, 5, 15] (origin t0 - 15 ms)


async def test_a_read_of_several_frames_before_any_origin_sets_a_provisional_one(
        mock_clock: trio.testing.MockClock) -> None:
    """Before a call has an origin, a frame that is not first in its read gives a provisional one (its frame needs a
    due time); the next first-in-read frame replaces it even when later (a min would keep the too-early one)."""
    hist = Histogram((10, 100, 1000))
    ingest = IngestPass(hist)
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, _proto):
            t0 = trio.current_time()
            ingest.begin()  # one read: a DTMF event (first), then the frame at 0 ms (may have come after the poll)
            assert reader.readable(_masked(dtmf(2)) + _masked(media(3, 1, 0)), t0) is False
            ingest.end()
            assert reader.origin == math.inf and reader.origin_provisional == pytest.approx(t0)
            mock_clock.jump(0.030)
            ingest.begin()  # the 20 ms frame alone, 10 ms late by the provisional origin: it becomes the origin
            assert reader.readable(_masked(media(4, 2, 20)), trio.current_time()) is False
            ingest.end()
            assert reader.origin == pytest.approx(t0 + 0.010)
            mock_clock.jump(0.020)
            ingest.begin()
            assert reader.readable(_masked(media(5, 3, 40)), trio.current_time()) is False
            ingest.end()
            assert _lags(hist) == pytest.approx([0.0, 0.0, 0.0])


async def test_frames_the_calls_task_delivers_are_observed_once_it_is_done(mock_clock: trio.testing.MockClock) -> None:
    hist = Histogram((10, 100, 1000))
    ingest = IngestPass(hist)
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, _proto):
            reader.ws.feed_nowait(_masked(media(2, 1, 0)) + _masked(media(3, 2, 20)))
            assert len(reader.ws.received) == 2
            assert reader.deliver() is None  # outside any pass: observed at once, not left for a pass's end
            assert _lags(hist) == pytest.approx([0.0, 0.0]) and not ingest.dues


async def test_every_real_frame_of_a_call_is_observed_once() -> None:
    """Through the real server and reactor: the count of the lag histogram is the call's frames (messages that
    came with ``start``, frames read one per read and several per read, a gap's filled silence not counted)."""
    cfg = make_config(server__allow_unsigned=True)
    frames = 120
    with trio.fail_after(30):
        async with running_server(cfg) as srv, raw_client(srv.port) as ws:
            await ws.send_message(start())
            await ws.send_message(media(2, 1, 0))  # may come in the same read as start: the task's delivery
            for k in range(2, frames + 1):
                if k == 50:
                    continue  # a lost frame: the next one brings filled silence, which is not a frame of the call
                await ws.send_message(media(k + 1, k, (k - 1) * 20))
                if k % 20 == 0:
                    await trio.sleep(0.01)  # reads of one frame and reads of several
            await ws.send_message(stop(frames + 2))
            await wait_for(lambda: srv.handlers and srv.handlers[0].saw_stop)
            hist = srv.server.metrics.frame_lag
            assert hist.count == frames - 1
            assert srv.handlers[0].filled_bytes == 160

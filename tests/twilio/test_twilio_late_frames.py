"""Why a frame is late (issue 13, r7-tail): the late-frame split (engine/twilio/late.py), the pass handing its frames
to the endpointer in batches (``twilio.pass_batch_frames``), and a reader failed mid-pass reading nothing more."""

from __future__ import annotations

import math
import select
import socket

import pytest
import trio
import trio.testing

from engine.endpointing.batch import FrameBatch
from engine.metrics import Histogram
from engine.twilio import reactor as reactor_mod
from engine.twilio.late import PARTS, LateFrames
from engine.twilio.reactor import KEEP, PAUSE, Reactor
from engine.twilio.server import IngestPass
from engine.twilio.simulator import frames_of, load_audio
from tests.twilio.test_twilio_batch import DEMO, FRAMES, _BrokenCall, _expected, _run_calls
from tests.twilio.test_twilio_frame_lag import _masked, _reader
from tests.twilio.test_twilio_frame_path import layout
from tests.twilio.twilio_support import make_config


def _parts(late: LateFrames) -> dict[str, list[float]]:
    return {name: list(h.pending) for name, h in zip(PARTS, late.parts, strict=True)}


def _late(late_ms: float = 5.0) -> LateFrames:
    return LateFrames(lambda _part: Histogram((1, 10, 100)), late_ms=late_ms)


def test_a_late_frames_parts_add_up_to_its_lag() -> None:
    """Previous pass 100-106 ms, this one woken at 108, started at 110 (the interval's sleep), ended at 116."""
    late = _late(late_ms=5.0)
    dues = [0.098, 0.104, 0.1065, 0.109]
    end = 0.116
    for due in dues:
        late.split(due, prev=(0.100, 0.106), woke=0.108, start=0.110, end=end)
    got = _parts(late)
    # due before the previous pass started (missed 2), during it (prev_pass), after it (between), in the sleep
    assert got["missed"] == pytest.approx([2.0, 0.0, 0.0, 0.0])
    assert got["prev_pass"] == pytest.approx([6.0, 2.0, 0.0, 0.0])
    assert got["between"] == pytest.approx([2.0, 2.0, 1.5, 0.0])
    assert got["interval"] == pytest.approx([2.0, 2.0, 2.0, 1.0])
    assert got["pass"] == pytest.approx([6.0] * 4)
    for i, due in enumerate(dues):
        assert sum(got[p][i] for p in PARTS) == pytest.approx((end - due) * 1000)


def test_before_the_first_pass_the_wait_is_between() -> None:
    late = _late()
    late.split(0.0, prev=(-math.inf, -math.inf), woke=0.012, start=0.012, end=0.020)
    got = _parts(late)
    assert got["between"] == pytest.approx([12.0]) and got["missed"] == [0.0] and got["prev_pass"] == [0.0]
    assert got["pass"] == pytest.approx([8.0])


async def test_an_ingest_pass_splits_its_late_frames_with_the_reactors_times(mock_clock: trio.testing.MockClock) -> None:
    hist = Histogram((10, 100))
    late = _late(late_ms=15.0)
    ingest = IngestPass(hist, late)
    reactor = Reactor(ingest)
    ingest.reactor = reactor
    t0 = trio.current_time()
    reactor.woke = reactor.started = t0
    ingest.begin()
    mock_clock.jump(0.006)
    ingest.end()  # the previous pass: t0 .. t0 + 6 ms, nothing read
    mock_clock.jump(0.004)
    reactor.woke, reactor.started = trio.current_time() - 0.002, trio.current_time()  # slept 2 ms
    ingest.begin()
    # 2 ms before the previous pass started; 1 ms before this one started; 3 ms before the previous one ended
    ingest.dues.extend([t0 - 0.002, t0 + 0.009, t0 + 0.003])
    mock_clock.jump(0.006)
    ingest.end()
    assert sorted(hist.pending) == pytest.approx([7.0, 13.0, 18.0])
    got = _parts(late)  # only the pass's latest frame (18 ms): missed 2, prev pass 6, between 2, interval 2, pass 6
    assert [got[p] for p in PARTS] == [pytest.approx([v]) for v in (2.0, 6.0, 2.0, 2.0, 6.0)]
    assert ingest.prev == pytest.approx((t0 + 0.010, t0 + 0.016))


async def test_a_long_pass_hands_its_frames_over_in_batches(mock_clock: trio.testing.MockClock) -> None:
    """With ``batch_frames`` 2 the first two frames of a pass are decided (and their lag taken) once the second is
    read, not at the end of the pass: a frame read early no longer waits for every later read of its pass."""
    hist = Histogram((10, 100, 1000))
    ingest = IngestPass(hist, batch_frames=2)
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, _proto):
            now = trio.current_time()
            ingest.begin()
            # The first frame takes the general path (it sets the timeline's head); the next two the per-message one.
            assert reader.readable(_masked(layout(2, 1, 0)), now) is KEEP
            mock_clock.jump(0.005)
            assert reader.readable(_masked(layout(3, 2, 20)), now) is KEEP
            assert sorted(hist.pending) == pytest.approx([5.0, 5.0])  # decided 5 ms into the pass
            assert not ingest.dues and ingest.collecting  # the pass goes on with a new batch
            mock_clock.jump(0.010)
            assert reader.readable(_masked(layout(4, 3, 40)), now) is KEEP
            mock_clock.jump(0.005)
            ingest.end()
            assert sorted(hist.pending) == pytest.approx([5.0, 5.0, 20.0])
            assert reader.handler.events == 3  # type: ignore[attr-defined]
            assert not ingest.collecting


async def test_whole_pass_batches_when_batch_frames_is_0(mock_clock: trio.testing.MockClock) -> None:
    hist = Histogram((10, 100, 1000))
    ingest = IngestPass(hist, batch_frames=0)
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, _proto):
            now = trio.current_time()
            ingest.begin()
            for k in range(1, 40):
                assert reader.readable(_masked(layout(k + 1, k, 20 * (k - 1))), now) is KEEP
            assert not hist.pending
            mock_clock.jump(0.005)
            ingest.end()
            assert hist.pending == pytest.approx([5.0] * 39)


async def test_a_reader_failed_earlier_in_the_pass_reads_nothing_more() -> None:
    """A batch decided mid-pass can fail a call whose socket is still ahead in the pass's list: its reader hands
    nothing more to the call (its task ends it) and asks to be paused."""
    ingest = IngestPass(Histogram((10, 100)))
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, proto):
            now = trio.current_time()
            ingest.begin()
            assert reader.readable(_masked(layout(2, 1, 0)), now) is KEEP
            reader.failed(RuntimeError("the batch failed this call"))
            assert reader.readable(_masked(layout(3, 2, 20)), now) is PAUSE
            ingest.end()
            assert reader.handler.events == 1 and proto.stats.frames == 1  # type: ignore[attr-defined]


async def test_calls_batched_in_small_batches_within_a_pass_keep_their_own_endpointer_events(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real server and real calls, a pass's frames decided two at a time: each call's speech events are still
    those its own Endpointer gives for the same audio (batching does not change decisions)."""
    flushes = [0]
    flush = IngestPass.flush

    def counted(self: IngestPass) -> None:
        flushes[0] += 1
        flush(self)

    monkeypatch.setattr(IngestPass, "flush", counted)
    cfg = make_config(server__allow_unsigned=True, twilio__pass_batch_frames=2)
    expected = _expected(cfg, frames_of(load_audio(str(DEMO)))[:FRAMES])
    with trio.fail_after(30):
        calls, seen, batch = await _run_calls(6, cfg)
    assert isinstance(batch, IngestPass) and batch.batch_frames == 2
    assert flushes[0] > 0 and batch.batches > 0 and batch.frames > 0  # passes did decide frames mid-pass
    for i in range(6):
        assert seen[i] == expected, f"call {i}"
    assert all(c._closed_reason == "stop" for c in calls)


async def test_a_call_failed_by_a_mid_pass_batch_ends_alone() -> None:
    cfg = make_config(server__allow_unsigned=True, twilio__pass_batch_frames=2)
    expected = _expected(cfg, frames_of(load_audio(str(DEMO)))[:FRAMES])
    with trio.fail_after(30):
        calls, seen, _batch = await _run_calls(4, cfg, _BrokenCall)
    by_id = {c.started.custom_parameters["lang"]: c for c in calls}
    assert by_id["0"]._closed_reason == "handler_error"
    for i in (1, 2, 3):
        assert by_id[str(i)]._closed_reason == "stop"
        assert seen[i] == expected


class _Recorder:
    """A reactor Reader noting the ``now`` each read was handed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.nows: list[float] = []
        self.read = trio.Event()

    def readable(self, data: bytes, now: float) -> bool:
        self.nows.append(now)
        self.read.set()
        return KEEP

    def failed(self, exc: Exception) -> None:
        raise AssertionError(exc)


async def test_a_pass_never_hands_a_read_a_time_before_its_bytes_arrived(
        mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass's ``now`` is read after its poll. Here the task is held 5 ms just before the poll (as a preempted
    task is) and B's bytes arrive meanwhile: the poll finds them, so the pass reads them, and their time must not be
    the wake-up's (before, it was: B's stream origin went 5 ms early and every later frame of B looked 5 ms late)."""
    sent_b: list[float] = []
    pair_a, pair_b = socket.socketpair(), socket.socketpair()

    class _HeldEpoll:
        """select.epoll whose first poll is held 5 ms, during which B's bytes arrive."""

        def __init__(self) -> None:
            self.inner = real_epoll()
            self.polls = 0

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
            self.polls += 1
            if self.polls == 1:
                mock_clock.jump(0.005)
                sent_b.append(trio.current_time())
                pair_b[1].send(b"b")
            return self.inner.poll(timeout)

    real_epoll = select.epoll
    monkeypatch.setattr(reactor_mod.select, "epoll", _HeldEpoll)
    try:
        for s in (*pair_a, *pair_b):
            s.setblocking(False)
        a, b = _Recorder(pair_a[0]), _Recorder(pair_b[0])
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                reactor = Reactor()
                reactor.register(pair_a[0].fileno(), a, nursery)
                reactor.register(pair_b[0].fileno(), b, nursery)
                pair_a[1].send(b"a")  # wakes the reactor
                await b.read.wait()
                reactor.unregister(pair_a[0].fileno())
                reactor.unregister(pair_b[0].fileno())
        assert sent_b and b.nows and b.nows[0] >= sent_b[0]
        assert a.nows and a.nows[0] >= sent_b[0]  # the same pass: one time, after its poll
    finally:
        for s in (*pair_a, *pair_b):
            s.close()


async def test_a_bug_in_a_mid_pass_batch_is_not_the_reading_calls_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's own bug (not one stream's) during a mid-pass batch is logged, as at a pass's end: the call whose
    read filled the batch goes on, and the frames' lag is still taken."""
    hist = Histogram((10, 100))
    ingest = IngestPass(hist, batch_frames=1)

    def broken(self: FrameBatch) -> None:
        self.collecting = False
        raise RuntimeError("a FrameBatch bug")

    monkeypatch.setattr(FrameBatch, "end", broken)
    with trio.fail_after(10):
        async with _reader(ingest) as (reader, _proto):
            now = trio.current_time()
            ingest.begin()
            assert reader.readable(_masked(layout(2, 1, 0)), now) is KEEP
            assert reader.error is None and len(hist.pending) == 1 and ingest.collecting

"""The load generator's ticker held up (bench/loadgen.py): overdue ticks go out back to back, the emulator's reads
after them, and every frame's send lag (the engine's frame-lag rule: the call's least-delayed frame is the origin)
is counted; capacity.py's window reading of those counts."""

from __future__ import annotations

import math
import socket
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import loadgen

STALL_AT = 25  # the after_tick call (tick 24) that holds the ticker up: every group's call has started by then
STALL_S = 0.021  # tick 24 due at 48 ms: the clock at 69 ms, ticks 25..34 (due 50..68 ms) overdue


async def run_held_up_ticker(catch_up: bool) -> tuple[loadgen.Ticker, list[int]]:
    pairs = [socket.socketpair() for _ in range(loadgen.GROUPS)]
    try:
        frames = loadgen.Encoded.of([b"\xff" * 160] * 200)
        ticker = loadgen.Ticker(loadgen.GROUPS, None, use_timerfd=False, catch_up=catch_up)
        for i, (a, _b) in enumerate(pairs):
            a.setblocking(False)
            conn = loadgen.Conn(i, "a", frames, raw=a)
            conn.send, conn.sid = a.send, loadgen.SID_PLACEHOLDER.encode()
            ticker.groups[i].append(conn)
        written: list[int] = []
        done = trio.Event()
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)

        def after_tick(next_due: float, ticks: int) -> bool:
            written.append(ticks)
            if len(written) == STALL_AT:
                clock.jump(STALL_S)  # the process held up (a stall of the VM's core, RT throttling)
            if sum(written) >= 60:
                done.set()
            return True

        ticker.after_tick = after_tick
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run, trio.current_time())
            await done.wait()
            nursery.cancel_scope.cancel()
        return ticker, written
    finally:
        for a, b in pairs:
            a.close()
            b.close()


async def test_a_held_up_ticker_writes_every_overdue_tick_before_the_emulator_reads(
        autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        ticker, written = await run_held_up_ticker(catch_up=True)
    assert written[:STALL_AT] == [1] * STALL_AT
    assert written[STALL_AT] == 10  # ticks 25..34 written back to back, then one read of their input
    assert set(written[STALL_AT + 1:]) == {1}
    assert ticker.merged == 9 and len(ticker.deferred) == sum(written) == len(ticker.lag)


async def test_without_catch_up_the_emulator_reads_after_every_tick(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        ticker, written = await run_held_up_ticker(catch_up=False)
    assert set(written) == {1} and ticker.merged == 0


async def test_each_frame_counts_its_send_lag_from_its_call_least_delayed_frame(
        autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        ticker, written = await run_held_up_ticker(catch_up=True)
    counts = [sum(h[i] for h in ticker.frame_hist if i < len(h)) for i in range(loadgen.LAG_BUCKETS + 1)]
    assert sum(counts) == sum(written)  # one frame per tick (one call per group)
    # the overdue ticks' frames were sent at 69 ms, due at 50, 52, ..., 68 ms: 19, 17, ..., 1 ms late; the rest on time
    late = {round(2 * k - 1) for k in range(1, 11)}
    for ms in late:
        assert counts[int(ms * loadgen.LAG_PER_S / 1000)] >= 1, ms
    assert counts[0] == sum(written) - 10
    assert max(ticker.frame_max) == pytest.approx(0.019)


def test_frame_lag_reads_the_window_whole_seconds() -> None:
    width = loadgen.LAG_BUCKET_MS
    doc = {"tick_start_wall": 100.0, "frame_lag_bucket_ms": width,
           "frame_lag_hist": [[0, 0, 0, 0, 5], [98, 1, 1], [50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50]],
           "frame_lag_max_ms": [2.2, 1.4, 5.3]}
    # only second 1 lies inside [100.5, 102.5): 98 % in bucket 0, the 99th percentile in bucket 1
    assert loadgen.frame_lag(doc, 100.5, 102.5) == (2 * width, 1.4, 100)
    p99, top, frames = loadgen.frame_lag(doc, 101.0, 103.0)
    assert (p99, top, frames) == (11 * width, 5.3, 200)
    assert math.isnan(loadgen.frame_lag({"frame_lag_hist": []}, 0, 1)[0])


def test_the_rig_is_judged_on_its_frame_send_lag_and_an_older_document_on_its_tick_lag() -> None:
    import argparse

    import capacity

    args = argparse.Namespace(send_lag_ms=5.0, rig_lag_ms=5.0)
    assert capacity.rig_lag_invalid(5.0, 30.0, args) == []  # the frames were on time: a late tick wrote none late
    assert capacity.rig_lag_invalid(5.5, 1.0, args) == ["load generator per-frame send lag p99 5.5 ms > 5"]
    assert capacity.rig_lag_invalid(math.nan, 1.0, args) == []
    assert capacity.rig_lag_invalid(math.nan, 7.25, args) == ["load generator tick lag p99 7.2 ms > 5"]
    assert capacity.rig_lag_invalid(math.nan, math.nan, args) != []  # no figure at all: not shown to keep up


def test_a_real_time_rig_reads_demoted_and_is_real_time_again_after(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import rig

    calls: list[object] = []
    policy = {"now": getattr(os, "SCHED_FIFO", 1)}
    monkeypatch.setattr(os, "SCHED_FIFO", policy["now"], raising=False)
    monkeypatch.setattr(os, "SCHED_OTHER", 0, raising=False)
    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: policy["now"], raising=False)
    monkeypatch.setattr(os, "sched_getparam", lambda pid: "fifo 2", raising=False)
    monkeypatch.setattr(os, "setpriority", lambda *a: calls.append(("nice", a[2])))

    def setscheduler(pid: int, pol: int, param: object) -> None:
        calls.append((pol, param if pol else "other"))
        policy["now"] = pol

    monkeypatch.setattr(os, "sched_setscheduler", setscheduler, raising=False)
    fifo = os.SCHED_FIFO
    demoted = rig.Demoted.of_this_thread()
    with demoted:
        assert policy["now"] == os.SCHED_OTHER  # the reads: out of the real-time budget
    assert calls == [("nice", -20), (os.SCHED_OTHER, "other"), (fifo, "fifo 2")]
    with pytest.raises(ValueError), demoted:  # a read that raised still gives the ticker its priority back
        raise ValueError
    assert policy["now"] == fifo
    calls.clear()
    policy["now"] = os.SCHED_OTHER  # a rig that is not real-time (--no-rt) is left alone
    with rig.Demoted.of_this_thread():
        pass
    assert calls == []


def test_frame_lag_past_the_last_bucket_is_its_lower_bound() -> None:
    doc = {"tick_start_wall": 0.0, "frame_lag_bucket_ms": loadgen.LAG_BUCKET_MS,
           "frame_lag_hist": [[1] + [0] * (loadgen.LAG_BUCKETS - 1) + [99]], "frame_lag_max_ms": [250.0]}
    assert loadgen.frame_lag(doc, 0.0, 1.0) == (loadgen.LAG_BUCKETS * loadgen.LAG_BUCKET_MS, 250.0, 100)

"""Issue 13, why frames are late: the reactor times its passes, the gaps between them, and garbage collections.

A manual MockClock: a reader that moves the clock while the reactor reads makes a pass exactly that long."""

from __future__ import annotations

import gc

import trio
import trio.testing

from engine.metrics import Histogram, Registry
from engine.twilio.reactor import KEEP, Reactor
from tests.twilio.test_twilio_reactor import socket_pairs, until


class _Slow:
    """A reader whose work takes ``cost`` s of the (mock) clock per read; collects garbage when asked."""

    def __init__(self, clock: trio.testing.MockClock, cost: float) -> None:
        self.clock = clock
        self.cost = cost
        self.reads = 0
        self.collect = False
        self.error: Exception | None = None

    def readable(self, data: bytes, now: float) -> bool:
        self.reads += 1
        self.clock.jump(self.cost)
        if self.collect:
            gc.collect()
        return KEEP

    def failed(self, exc: Exception) -> None:
        self.error = exc  # only "the socket reactor stopped", at the test's cancel


async def test_pass_durations_gaps_and_gc_pauses_are_observed(mock_clock: trio.testing.MockClock) -> None:
    registry = Registry()
    pass_ms = registry.histogram("pass_ms", "x", buckets=(1, 5, 10, 20))
    gap_ms = registry.histogram("gap_ms", "x", buckets=(1, 5, 10, 20))

    def gc_ms(gen: int) -> Histogram:
        return registry.histogram("gc_ms", "x", f"generation={gen}", buckets=(1000,))

    reactor = Reactor(pass_ms=pass_ms, gap_ms=gap_ms, gc_ms=gc_ms)
    before = len(gc.callbacks)
    with trio.fail_after(5), socket_pairs(2) as pairs:
        readers = [_Slow(mock_clock, 0.007), _Slow(mock_clock, 0.004)]
        async with trio.open_nursery() as nursery:
            for (ours, _), reader in zip(pairs, readers, strict=True):
                reactor.register(ours.fileno(), reader, nursery)
            pairs[0][1].send(b"a")
            pairs[1][1].send(b"b")
            await until(lambda: all(r.reads for r in readers))
            assert len(gc.callbacks) == before + 1  # the probe, while the reactor runs
            mock_clock.jump(0.003)  # the reactor is away (idle here) 3 ms before its next pass
            readers[1].collect = True
            pairs[1][1].send(b"c")
            await until(lambda: readers[1].reads == 2)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(gc.callbacks) == before  # removed when the reactor ends
    assert reactor.wakeups == 2
    assert pass_ms.count == 2 and abs(pass_ms.sum - 15.0) < 1e-6  # both readers in the first pass, one in the second
    assert gap_ms.count == 1 and abs(gap_ms.sum - 3.0) < 1e-6  # no gap before the first pass
    assert registry.histogram("gc_ms", "x", "generation=2", buckets=(1000,)).count >= 1

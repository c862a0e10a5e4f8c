"""Traced bytes a Call keeps per call, independent of the rig: no sockets, no STT, no timing.

Builds ``--calls`` :class:`engine.call.Call` objects for Twilio-style μ-law streams in one process, gives each
its first frame alone (as before the reactor's batch) and then ``--frames`` frames of line noise through a
:class:`FrameBatch` (as the reactor does), and reports tracemalloc's difference per call by file: the
endpointing side's state (pre-roll history, classifier, Call's own fields), steady to the byte run to run.
Run it from each tree's venv for an A/B (it imports whichever ``engine`` the venv points at):

    .venv/bin/python bench/call_state.py [--calls 200] [--frames 50]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc

import numpy as np
import trio

from engine.audio import mulaw
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config
from engine.endpointing.batch import FrameBatch
from engine.media import AudioReceived, StreamStarted
from engine.metrics import Registry


async def measure(n: int, frames: int) -> None:
    rng = np.random.default_rng(5)
    payloads = [mulaw.encode(rng.normal(0, 150, 160).astype(np.int16)) for _ in range(frames)]
    config, metrics, budgets = Config(), Registry(), Budgets(BudgetsConfig())

    def make(i: int) -> Call:
        started = StreamStarted(stream_id=f"MZ{i}", call_id=f"CA{i}", account_id="AC1", encoding="mulaw",
                                sample_rate=8000, provider="bench")
        return Call(started, config=config, pool=None, emit=lambda e: None,  # type: ignore[arg-type]
                    metrics=metrics, budgets=budgets)

    make(-1).on_event(AudioReceived(payloads[0], 0.0))  # caches: matrices, metric families, scratch
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    calls = [make(i) for i in range(n)]
    batch = FrameBatch()
    for call in calls:
        call.on_event(AudioReceived(payloads[0], 0.0))
        call.attach_batch(batch)
    for k, payload in enumerate(payloads[1:], 1):
        batch.begin()
        for call in calls:
            call.on_event(AudioReceived(payload, k * 20.0))
        batch.end()
    gc.collect()
    diff = tracemalloc.take_snapshot().compare_to(before, "filename")
    tracemalloc.stop()
    print(f"{sys.prefix}: traced {sum(d.size_diff for d in diff) / n / 1024:.2f} KiB per Call")
    for d in diff[:8]:
        print(f"  {d.size_diff / n / 1024:7.2f} KiB  {d.traceback[0].filename.split('/site-packages/')[-1]}")
    assert len(calls) == n  # alive until the snapshot


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--frames", type=int, default=50)
    args = p.parse_args()
    trio.run(measure, args.calls, max(1, args.frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())

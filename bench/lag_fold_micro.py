"""Per-message cost of the Twilio frame-lag histogram: ``Histogram.observe`` vs ``Histogram.pending`` + ``fold``
(issue 13). Run from the tree to measure, with its venv (the engine is imported from the working directory)."""

from __future__ import annotations

import os
import random
import sys
import timeit

sys.path.insert(0, os.getcwd())

from engine.metrics import Histogram
from engine.twilio.server import FRAME_LAG_BUCKETS_MS

VALUES = [random.expovariate(1 / 8) for _ in range(100_000)]
HIST = Histogram(FRAME_LAG_BUCKETS_MS)


def observed() -> None:
    for v in VALUES:
        HIST.observe(v)


def appended() -> None:
    for v in VALUES:  # the lines of engine/twilio/server.py _CallReader._message
        pending = HIST.pending
        pending.append(v)
        if len(pending) >= Histogram.FOLD_AT:
            HIST.fold()


if __name__ == "__main__":
    if hasattr(Histogram, "FOLD_AT"):
        print("append + fold ns/value", round(min(timeit.repeat(appended, number=1, repeat=7)) / len(VALUES) * 1e9))
    print("observe ns/value", round(min(timeit.repeat(observed, number=1, repeat=7)) / len(VALUES) * 1e9))

"""Why a frame is late (issue 13, the frame-lag tail): a late frame's lag split into where it waited, at the end
of the pass that handled it, cheaply enough to stay on in production.

A frame the ingest reactor reads is handled at the end of that pass (:class:`engine.twilio.server.IngestPass`),
so its lag is ``e1 - d`` (handled minus due; ``d <= s1`` by the origin rule: the stream's origin is its
least-delayed frame's). Five times the reactor already has split it, with no clock read per frame:
``s0``/``e0`` the previous pass's start (read right after its poll) and end, ``w`` this pass's wake-up (its
``wait_readable`` returned), ``s1`` its start (after the pass interval's sleep and the poll) and ``e1`` its end
(of the frame's batch). Each part counts only the time after ``d``:

- ``missed``: ``s0 - d``. Due before the previous pass started, yet not read by it: the bytes were not in the
  socket when that pass polled (the client sent them late -- the load rig's share --, the kernel delivered them
  late, or the stream's origin came from a less-delayed frame than this one).
- ``prev_pass``: the previous pass after ``d``: the frame arrived while a pass ran that had already polled.
- ``between``: ``e0`` to ``w``: the reactor had ended a pass and was not woken yet: other tasks' steps, Trio's
  scheduler and I/O wait (or idle, had the bytes not come yet).
- ``interval``: ``w`` to ``s1``: the min pass interval's sleep (``twilio.pass_interval_ms``).
- ``pass``: ``s1`` to ``e1``: the reading pass itself (every read, parse and frame, and the batched
  classification at its end).

The parts of one frame add up to its lag. Split per batch (a pass, or one of its batches: ``twilio.pass_batch_frames``)
whose latest frame is later than ``late_ms``: that frame only, the batch's worst (its lag is already computed;
one ``max`` per batch, then a few float operations and five list appends, folded like every histogram). A
split of every late frame costs ~3 µs each in Python, ~2 % of the engine in a bad minute (a quarter of the frames
late): not cheap enough to stay on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from engine.metrics import Histogram

LATE_FRAME_MS: Final = 15.0  # the frames that threaten the rule's 20 ms (the 15-20 and 20-25 ms buckets)
PARTS: Final = ("missed", "prev_pass", "between", "interval", "pass")


class LateFrames:
    """The per-part histograms of late frames (ms; every split frame adds one value, maybe 0, to each)."""

    __slots__ = ("late_ms", "parts")

    def __init__(self, part: Callable[[str], Histogram], late_ms: float = LATE_FRAME_MS) -> None:
        self.late_ms = late_ms
        self.parts = [part(name) for name in PARTS]

    def split(self, due: float, *, prev: tuple[float, float], woke: float, start: float, end: float) -> None:
        """The frame due at ``due`` (Trio time) was handled at ``end`` by the pass woken at ``woke`` and started at
        ``start``; ``prev`` is the previous pass's (start, end), or (-inf, -inf) before the first."""
        s0, e0 = prev
        missed, prev_pass, between, interval, own = (h.pending for h in self.parts)
        missed.append(max(0.0, s0 - due) * 1000)
        prev_pass.append(max(0.0, e0 - max(due, s0)) * 1000)
        between.append(max(0.0, woke - max(due, e0)) * 1000)
        interval.append(max(0.0, start - max(due, woke)) * 1000)
        own.append((end - start) * 1000)
        if len(own) >= Histogram.FOLD_AT:
            for h in self.parts:
                h.fold()

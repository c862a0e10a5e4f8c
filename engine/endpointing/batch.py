"""Many streams' frames classified together: one ``classify_batch`` per classifier kind per batch.

Why (issue 13): every call's 20 ms packet costs the bands classifier three small numpy products when
classified alone; the Twilio reactor reads many calls per wake-up, so their frames can share one matrix
product (``classify_batch``), leaving only each classifier's per-frame decision in Python.

Sans-IO. A stream with frames to classify (a :class:`Deferred`, e.g. :class:`engine.call.Call`) sets its
``batch_frames`` (from :meth:`Endpointer.frames_ready`) and :meth:`FrameBatch.add` s itself while the batch
is collecting (between :meth:`FrameBatch.begin` and :meth:`FrameBatch.end`, one reactor wake-up);
:meth:`FrameBatch.end` classifies every stream still waiting and hands each its decisions
(:meth:`Deferred.batch_decided`). A stream that cannot wait (another event of its own arrived) decides
alone and clears ``batch_frames`` first: the batch then skips it (its classifier must never see a frame
twice). Decisions equal per-stream ``classify`` up to float rounding of the matrix product (the same
difference as between one push of several frames and several pushes of one).

Failures stay per stream: an exception from one stream's ``batch_decided`` goes to that stream's
``batch_failed``; if a batched ``classify_batch`` itself raises, every stream of that group is classified
alone, and only a stream whose own classifier raises fails.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from engine.log import get_logger

from .classifiers import FrameClassifier, Frames, classify_batch

log = get_logger(__name__)


class Deferred(Protocol):
    """A stream waiting in a :class:`FrameBatch`."""

    batch_frames: Frames | None  # the frames to classify, shape (n, frame); None: nothing (any more)

    @property
    def batch_classifier(self) -> FrameClassifier: ...

    def batch_decided(self, decisions: list[bool]) -> None:
        """One decision per row of ``batch_frames`` (which the stream clears)."""
        ...

    def batch_failed(self, exc: Exception) -> None:
        """Classifying or :meth:`batch_decided` raised ``exc``: the stream's own failure."""
        ...


class FrameBatch:
    """Collects streams during one wake-up (``begin`` … ``end``) and classifies them together at ``end``."""

    __slots__ = ("_waiting", "batches", "collecting", "frames")

    def __init__(self) -> None:
        self.collecting = False
        self._waiting: list[Deferred] = []
        self.batches = 0  # classify_batch calls so far (tests, benchmarks)
        self.frames = 0  # frames classified in batches so far

    def begin(self) -> None:
        self.collecting = True

    def add(self, stream: Deferred) -> None:
        """``stream.batch_frames`` waits for :meth:`end` (only while collecting, once per stream)."""
        self._waiting.append(stream)

    def end(self) -> None:
        """Stop collecting; classify every waiting stream and hand each its decisions."""
        self.collecting = False
        waiting = self._waiting
        if not waiting:
            return
        self._waiting = []
        groups: dict[tuple[type, int], list[Deferred]] = {}
        for stream in waiting:
            frames = stream.batch_frames
            if frames is None:  # decided alone meanwhile
                continue
            key = (type(stream.batch_classifier), frames.shape[1])
            group = groups.get(key)
            if group is None:
                groups[key] = [stream]
            else:
                group.append(stream)
        for group in groups.values():
            self._decide(group)

    def _decide(self, group: list[Deferred]) -> None:
        frames = [s.batch_frames for s in group]
        decided: list[list[bool]] = [[] for _ in group]
        rows = max(f.shape[0] for f in frames if f is not None)
        try:
            # Round r: row r of every stream that has one (a classifier sees its frames in order, one per round).
            for r in range(rows):
                members = [i for i, f in enumerate(frames) if f is not None and f.shape[0] > r]
                if len(members) == len(frames) and rows == 1:
                    stack = np.concatenate(frames)  # type: ignore[arg-type]
                else:
                    stack = np.stack([frames[i][r] for i in members])  # type: ignore[index]
                out = classify_batch([group[i].batch_classifier for i in members], stack)
                self.batches += 1
                self.frames += len(members)
                for i, d in zip(members, out, strict=True):
                    decided[i].append(d)
        except Exception as exc:  # a classifier bug: each stream alone, so only a broken one fails
            log.error("frame_batch_failed", streams=len(group), exc=exc)
            for i, (stream, f) in enumerate(zip(group, frames, strict=True)):
                if f is not None and len(decided[i]) < f.shape[0]:
                    try:
                        decided[i].extend(stream.batch_classifier.classify(f[len(decided[i]):]))
                    except Exception as own:
                        decided[i] = []
                        stream.batch_frames = None
                        self._fail(stream, own)
        for stream, decisions in zip(group, decided, strict=True):
            if stream.batch_frames is None:
                continue
            try:
                stream.batch_decided(decisions)
            except Exception as exc:
                self._fail(stream, exc)

    @staticmethod
    def _fail(stream: Deferred, exc: Exception) -> None:
        try:
            stream.batch_failed(exc)
        except Exception as bug:  # never raised into the reactor or another stream
            log.error("frame_batch_stream_failed_raised", exc=bug)

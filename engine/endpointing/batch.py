"""Many streams' frames classified together: one ``classify_batch`` per classifier kind per batch.

Why (issue 13): every call's 20 ms packet costs the bands classifier three small numpy products when
classified alone; the Twilio reactor reads many calls per wake-up, so their frames can share one matrix
product (``classify_batch``), leaving only each classifier's per-frame decision in Python.

Sans-IO. A stream with frames to classify (a :class:`Deferred`, e.g. :class:`engine.call.Call`) sets its
``batch_frames`` (from :meth:`Endpointer.frames_ready`), or its μ-law ``batch_payload`` when nothing but the
decode stands before the endpointer, and :meth:`FrameBatch.add` s itself while the batch is collecting
(between :meth:`FrameBatch.begin` and :meth:`FrameBatch.end`, one reactor wake-up). :meth:`FrameBatch.end`
decodes every waiting payload in one table lookup (each stream gets its slice, :meth:`Deferred.batch_audio`),
then classifies every stream still waiting and hands each its decisions (:meth:`Deferred.batch_decided`).
A stream that cannot wait (another event of its own arrived) decides alone and clears its fields first:
the batch then skips it (its classifier must never see a frame twice). Decisions equal per-stream
``classify`` up to float rounding of the matrix product (the same difference as between one push of
several frames and several pushes of one).

The commonest case has a path of its own (issue 13, round 4): a stream whose wait is exactly one frame of
μ-law that its endpointer takes whole (a :class:`Packet`, e.g. a Twilio call between utterance edges or in one)
is added by :meth:`FrameBatch.add_packet`. At :meth:`FrameBatch.end` every such stream's payload is decoded
in one lookup whose rows are the frames themselves (no per-stream cut, no stacking), classified by one
``classify_batch`` and handed back with one call each (:meth:`Packet.batch_packet`: the frame, its
decision). A late pass (the knee, issue 13, round 5) leaves two packets of one call in its socket: the
second joins the first and the stream re-adds itself with both (:meth:`FrameBatch.add_packets`); such a
pass is decided in rounds, round r the r-th frame of every stream that has one, from one decode laid out
round after round (each round a view, one ``classify_batch``), and each stream gets one call
(:meth:`Packet.batch_packets` for several frames). A packet stream whose wait changed otherwise (a chunk
joined it without a re-add) takes the general path; one that decided alone is skipped.

Failures stay per stream: an exception from one stream's ``batch_decided`` goes to that stream's
``batch_failed``; if a batched ``classify_batch`` itself raises, every stream of that group is classified
alone, and only a stream whose own classifier raises fails.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from engine.audio import mulaw
from engine.log import get_logger

from .classifiers import FrameClassifier, Frames, classify_batch
from .endpointer import Pcm

log = get_logger(__name__)

# Rows per classify_batch call for a classifier kind that does not name its own ``batch_rows`` (the bands
# kinds take a whole round: they cut their matrix products themselves, classifiers._MATMUL_CUT). Above ~50
# rows a multi-threaded OpenBLAS runs a product on several threads, 3-10x dearer per row on a shared 2-core
# machine (BENCHMARKS.md § Capacity); ``sori`` runs BLAS single-threaded (engine/_threads.py), an embedder
# may not.
MAX_ROWS = 32

_PAYLOAD = operator.attrgetter("batch_payload")

# A group of streams to classify together: the streams, their frames, their classifiers, [most rows of one stream].
_Group = tuple[list["Deferred"], list[Frames], list[FrameClassifier], list[int]]


class Deferred(Protocol):
    """A stream waiting in a :class:`FrameBatch`."""

    batch_payload: bytes | None  # μ-law still to decode (then batch_audio), or None
    batch_frames: Frames | None  # the frames to classify, shape (n, frame); None: nothing (any more)

    def batch_audio(self, pcm: Pcm) -> None:
        """``batch_payload`` decoded (the stream clears it): set ``batch_frames``, or finish if no frame is whole.
        ``pcm`` is the stream's to keep without a copy (a slice of the wake-up's fresh decode, nothing else's)."""
        ...

    @property
    def batch_classifier(self) -> FrameClassifier: ...

    def batch_decided(self, decisions: list[bool]) -> None:
        """One decision per row of ``batch_frames`` (which the stream clears)."""
        ...

    def batch_failed(self, exc: Exception) -> None:
        """Classifying or :meth:`batch_decided` raised ``exc``: the stream's own failure."""
        ...


class Packet(Deferred, Protocol):
    """A stream that can wait with one whole frame of μ-law (:meth:`FrameBatch.add_packet`)."""

    def batch_packet(self, pcm: Pcm, speech: bool) -> None:
        """``batch_payload`` (the stream clears it) was one frame: ``pcm``, its decode (the stream's to keep),
        judged ``speech`` by ``batch_classifier``."""
        ...

    def batch_packets(self, pcms: list[Pcm], speech: list[bool]) -> None:
        """``batch_payload`` (the stream clears it) was ``len(pcms)`` whole frames (:meth:`FrameBatch.add_packets`):
        ``pcms`` their decodes (the stream's to keep), judged ``speech``; as a ``batch_packet`` for each, in order."""
        ...


class FrameBatch:
    """Collects streams during one wake-up (``begin`` … ``end``) and classifies them together at ``end``."""

    __slots__ = ("_packets", "_payloads", "_several", "_waiting", "batches", "collecting", "decoded", "frames")

    def __init__(self) -> None:
        self.collecting = False
        self._waiting: list[Deferred] = []
        self._packets: list[Packet] = []
        self._payloads: list[bytes] = []  # each packet stream's batch_payload when it was added
        self._several: dict[Packet, tuple[bytes, int]] = {}  # add_packets: the payload, its frames
        self.batches = 0  # classify_batch calls so far (tests, benchmarks)
        self.frames = 0  # frames classified in batches so far
        self.decoded = 0  # μ-law payloads decoded in batches so far

    def begin(self) -> None:
        self.collecting = True

    def add(self, stream: Deferred) -> None:
        """``stream.batch_payload`` or ``batch_frames`` waits for :meth:`end` (while collecting; adding a stream
        again in the same wake-up, after it decided alone, is harmless)."""
        self._waiting.append(stream)

    def add_packet(self, stream: Packet, payload: bytes) -> None:
        """``payload``, ``stream.batch_payload``, is one whole frame of μ-law for its endpointer (while
        collecting): decided by :meth:`Packet.batch_packet` at :meth:`end`, or on the general path if the wait
        changed meanwhile (the stream's ``batch_payload`` is no longer this very object)."""
        self._packets.append(stream)
        self._payloads.append(payload)

    def add_packets(self, stream: Packet, payload: bytes, count: int) -> None:
        """``payload``, ``stream.batch_payload``, is ``count`` whole frames of μ-law for its endpointer (while
        collecting; e.g. a late pass's second packet joined the first): decided in :meth:`end`'s rounds, one frame
        per round, and handed back by one :meth:`Packet.batch_packets`. Replaces the stream's earlier add."""
        self._packets.append(stream)
        self._payloads.append(payload)
        self._several[stream] = (payload, count)

    def end(self) -> None:
        """Stop collecting; classify every waiting stream and hand each its decisions."""
        self.collecting = False
        if self._packets:
            self._end_packets()
        waiting = self._waiting
        if not waiting:
            return
        self._waiting = []
        # A stream that decided alone and deferred again within the wake-up was added twice: once each.
        waiting = list(dict.fromkeys(waiting))
        self._decode(waiting)
        # Per group: its streams, their frames and classifiers (each read once), and its most rows per stream.
        groups: dict[tuple[type, int], _Group] = {}
        for stream in waiting:
            frames = stream.batch_frames
            if frames is None:  # decided alone meanwhile, or nothing whole to classify
                continue
            clf = stream.batch_classifier
            rows, width = frames.shape
            key = (type(clf), width)
            group = groups.get(key)
            if group is None:
                groups[key] = ([stream], [frames], [clf], [rows])
            else:
                group[0].append(stream)
                group[1].append(frames)
                group[2].append(clf)
                if rows != 1:  # a stream with several frames (rare): the rounds
                    group[3][0] = max(group[3][0], rows)
        for group in groups.values():
            self._decide(*group)

    def _end_packets(self) -> None:
        """The packet streams decided (see the module docstring); one whose wait changed since its add (a
        chunk joined it without :meth:`add_packets`) joins the general path's ``_waiting``."""
        packets, payloads = self._packets, self._payloads
        self._packets, self._payloads = [], []
        n = len(packets)
        # Common case, checked in C: every wait is still the payload added, no stream twice, one width.
        if self._several or not (all(map(operator.is_, map(_PAYLOAD, packets), payloads)) and len(set(packets)) == n
                                 and len(set(map(len, payloads))) == 1):
            self._end_rounds(packets, payloads)
            return
        width = len(payloads[0])
        frames = mulaw.decode(b"".join(payloads)).reshape(n, width)  # type: ignore[arg-type]
        self.decoded += n
        clfs = [s.batch_classifier for s in packets]
        decided = self._round(packets, clfs, frames)
        for stream, pcm, speech in zip(packets, frames, decided, strict=True):
            if stream.batch_payload is None:  # failed above
                continue
            try:
                stream.batch_packet(pcm, speech)
            except Exception as exc:
                stream.batch_payload = None
                self._fail(stream, exc)

    def _round(self, streams: Sequence[Packet], clfs: list[FrameClassifier], frames: Frames) -> list[bool]:
        """Row i of ``frames`` classified by ``clfs[i]`` (one classify_batch); if that raises, each row alone, and
        a stream whose own classifier raises fails (its ``batch_payload`` cleared: the batch skips it from then on)."""
        try:
            return self._classify_rows(clfs, frames)
        except Exception as exc:  # a classifier bug: each stream alone, so only a broken one fails
            log.error("frame_batch_failed", streams=len(streams), exc=exc)
            decided: list[bool] = []
            for i, (stream, clf) in enumerate(zip(streams, clfs, strict=True)):
                try:
                    decided.append(clf.classify(frames[i : i + 1])[0])
                except Exception as own:
                    decided.append(False)
                    stream.batch_payload = None
                    self._fail(stream, own)
            return decided

    def _end_rounds(self, packets: list[Packet], payloads: list[bytes]) -> None:
        """The packet path's rarer passes (issue 13, the knee): a stream added twice (decided alone in between), or
        waiting with several whole frames (:meth:`add_packets`: a late pass left two packets in its socket).

        Per stream its last add stands if its wait is still that payload, of the pass's first width met (another
        width, or a wait changed since, goes on the general path; a wait gone was decided alone). The frames are
        then decided in rounds, round r the r-th frame of every stream that has one (a classifier sees its frames
        in order, once each): one decode for all, laid out round after round so each round is one view, one
        classify_batch per round, and one ``batch_packet`` (one frame) or ``batch_packets`` per stream."""
        several, self._several = self._several, {}
        streams: list[Packet] = []
        counts: list[int] = []
        rounds: list[list[bytes]] = [[]]  # round r: the r-th frame's codes of every stream that has one
        width = -1
        last = dict(zip(packets, payloads, strict=True))  # per stream its last add (in first-add order)
        for stream, payload in last.items():
            now = stream.batch_payload
            if now is not payload:
                if now is not None:  # joined by a chunk since: the general path (deduplicated there)
                    self._waiting.append(stream)
                continue  # else decided alone since (a later add would be the last)
            got = several.get(stream)
            count = got[1] if got is not None and got[0] is payload else 1
            size = len(payload) // count
            if width < 0:
                width = size
            elif size != width:
                self._waiting.append(stream)
                continue
            streams.append(stream)
            counts.append(count)
            if count == 1:
                rounds[0].append(payload)
            else:
                rounds.extend([] for _ in range(count - len(rounds)))
                for r in range(count):
                    rounds[r].append(payload[r * size : r * size + size])
        if not streams:
            return
        pcm = mulaw.decode(b"".join([c for codes in rounds for c in codes])).reshape(-1, width)
        self.decoded += len(streams)
        clfs = [s.batch_classifier for s in streams]
        # Per stream, its rows and decisions so far (those with one frame take round 0's directly).
        rows: list[list[Pcm]] = [[] for _ in streams]
        decisions: list[list[bool]] = [[] for _ in streams]
        members: Sequence[int] = range(len(streams))
        at = 0
        for r, codes in enumerate(rounds):
            if r:
                members = [i for i in members if counts[i] > r]
            frames = pcm[at : at + len(codes)]
            at += len(codes)
            live = [j for j, i in enumerate(members) if streams[i].batch_payload is not None]
            if len(live) < len(members):  # failed in an earlier round: its later frames are not classified
                frames = frames[live]
                members = [members[j] for j in live]
                if not members:
                    break
            decided = self._round([streams[i] for i in members], [clfs[i] for i in members], frames)
            for i, row, speech in zip(members, frames, decided, strict=True):
                rows[i].append(row)
                decisions[i].append(speech)
        for stream, count, own_rows, said in zip(streams, counts, rows, decisions, strict=True):
            if stream.batch_payload is None:  # failed above, or decided alone meanwhile
                continue
            try:
                if count == 1:
                    stream.batch_packet(own_rows[0], said[0])
                else:
                    stream.batch_packets(own_rows, said)
            except Exception as exc:
                stream.batch_payload = None
                self._fail(stream, exc)

    def _classify_rows(self, clfs: list[FrameClassifier], frames: Frames) -> list[bool]:
        """Row i of ``frames`` classified by ``clfs[i]``: one classify_batch (``batch_rows`` rows at most each)."""
        n = len(clfs)
        step = getattr(type(clfs[0]), "batch_rows", MAX_ROWS)
        decided: list[bool] = []
        for at in range(0, n, step):
            decided += classify_batch(clfs[at : at + step] if n > step else clfs, frames[at : at + step])
            self.batches += 1
        if len(decided) != n:
            raise ValueError(f"classify_batch gave {len(decided)} decisions for {n} frames")
        self.frames += n
        return decided

    def _decode(self, waiting: list[Deferred]) -> None:
        """Every waiting μ-law payload decoded by one table lookup; each stream gets its slice."""
        # The slices are fixed here, before any stream runs: a stream's batch_audio may make another stream decide
        # alone (its payload taken), and the batch then skips that one without moving the others' slices.
        taken = [(s, p) for s in waiting if (p := s.batch_payload) is not None]
        if not taken:
            return
        pcm = mulaw.decode(b"".join([p for _s, p in taken]))
        self.decoded += len(taken)
        at = 0
        for stream, payload in taken:
            n = len(payload)
            if stream.batch_payload is payload:  # else decided alone meanwhile: skipped, its slice unused
                try:
                    stream.batch_audio(pcm[at : at + n])
                except Exception as exc:
                    stream.batch_payload = stream.batch_frames = None
                    self._fail(stream, exc)
            at += n

    def _decide(self, streams: list[Deferred], frames: list[Frames], clfs: list[FrameClassifier], most: list[int]) -> None:
        """One group (one classifier kind and frame size): its streams' frames classified, each stream decided."""
        n = len(streams)
        rows = most[0]
        step = getattr(type(clfs[0]), "batch_rows", MAX_ROWS)
        decided: list[list[bool]] = []
        try:
            if rows == 1 and n <= step:  # the common case: one frame per stream, one classify_batch
                out = classify_batch(clfs, np.concatenate(frames))
                self.batches += 1
                self.frames += n
                decided = [[d] for _s, d in zip(streams, out, strict=True)]  # a wrong count: contained below
            else:
                decided = [[] for _ in streams]
                # Round r: row r of every stream that has one (a classifier sees its frames in order, one per round).
                for r in range(rows):
                    every: Sequence[int]
                    every = range(n) if r == 0 else [i for i, f in enumerate(frames) if f.shape[0] > r]
                    for at in range(0, len(every), step):
                        members = every[at : at + step]
                        if rows == 1:
                            stack = np.concatenate([frames[i] for i in members])
                        else:
                            stack = np.stack([frames[i][r] for i in members])
                        out = classify_batch([clfs[i] for i in members], stack)
                        self.batches += 1
                        self.frames += len(members)
                        for i, d in zip(members, out, strict=True):
                            decided[i].append(d)
        except Exception as exc:  # a classifier bug: each stream alone, so only a broken one fails
            log.error("frame_batch_failed", streams=n, exc=exc)
            if len(decided) != n:  # the one-call case raised: nothing decided yet
                decided = [[] for _ in streams]
            for stream, f, clf, got in zip(streams, frames, clfs, decided, strict=True):
                if len(got) < f.shape[0]:
                    try:
                        got.extend(clf.classify(f[len(got) :]))
                    except Exception as own:
                        stream.batch_frames = None
                        self._fail(stream, own)
        for stream, f, decisions in zip(streams, frames, decided, strict=True):
            if stream.batch_frames is not f:  # failed above
                continue
            try:
                stream.batch_decided(decisions)
            except Exception as exc:
                stream.batch_frames = None
                self._fail(stream, exc)

    @staticmethod
    def _fail(stream: Deferred, exc: Exception) -> None:
        try:
            stream.batch_failed(exc)
        except Exception as bug:  # never raised into the reactor or another stream
            log.error("frame_batch_stream_failed_raised", exc=bug)

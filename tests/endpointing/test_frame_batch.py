"""FrameBatch (engine/endpointing/batch.py): grouping, rounds, and failures kept to the stream that failed."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import BandClassifier, Endpointer, EndpointerError, EndpointEvent, FrameClassifier
from engine.endpointing.batch import MAX_ROWS, FrameBatch
from engine.endpointing.classifiers import Frames
from engine.endpointing.endpointer import Pcm

from .signals import concat, noise, speechlike


class Stream:
    def __init__(self, cfg: EndpointingConfig | None = None) -> None:
        self.ep = Endpointer(cfg or EndpointingConfig())
        self.batch_payload: bytes | None = None
        self.batch_frames: Frames | None = None
        self.events: list[EndpointEvent] = []
        self.failures: list[Exception] = []
        self.decided = 0

    @property
    def batch_classifier(self) -> FrameClassifier:
        return self.ep.classifier

    def batch_audio(self, pcm: Pcm) -> None:
        self.batch_payload = None
        self.batch_frames = self.ep.frames_ready(pcm)

    def batch_decided(self, decisions: list[bool]) -> None:
        self.batch_frames = None
        self.decided += len(decisions)
        self.events += self.ep.push_decided(decisions)

    def batch_failed(self, exc: Exception) -> None:
        self.failures.append(exc)


def _audio(seed: int) -> Pcm:
    return concat(noise(1600, 80.0, seed=seed), speechlike(4000, 8000, level=2500.0, seed=seed), noise(4000, 80.0,
                                                                                                       seed=seed + 9))


def test_frames_ready_and_push_decided_are_push() -> None:
    sig = _audio(1)
    a, b = Endpointer(EndpointingConfig()), Endpointer(EndpointingConfig())
    got: list[EndpointEvent] = []
    want: list[EndpointEvent] = []
    for i in range(0, len(sig), 123):  # chunks that straddle frames: some give no whole frame
        chunk = sig[i : i + 123]
        want += a.push(chunk)
        frames = b.frames_ready(chunk)
        if frames is not None:
            assert b.awaiting_decisions
            got += b.push_decided(b.classifier.classify(frames))
    assert [type(e) for e in got] == [type(e) for e in want] and len(want) >= 3
    with pytest.raises(EndpointerError):
        b.push_decided([True])  # nothing waits
    frames = b.frames_ready(sig[:480])
    assert frames is not None and frames.shape == (3, 160)
    with pytest.raises(EndpointerError):
        b.frames_ready(sig[:160])  # the earlier frames' decisions first
    with pytest.raises(EndpointerError):
        b.end()
    with pytest.raises(EndpointerError):
        b.push_decided([True])  # wrong count
    assert b.push_decided([False, False, False]) is not None


def test_payloads_are_decoded_once_and_sliced_per_stream() -> None:
    streams = [Stream() for _ in range(3)]
    payloads = [mulaw.encode(_audio(i)[:320]) for i in range(3)]
    batch = FrameBatch()
    batch.begin()
    for s, p in zip(streams, payloads, strict=True):
        s.batch_payload = p
        batch.add(s)
    batch.end()
    assert not batch.collecting and batch.decoded == 3 and batch.frames == 6 and batch.batches == 2
    for s, p in zip(streams, payloads, strict=True):
        assert s.decided == 2 and s.ep.position == 320 and s.batch_payload is None and s.batch_frames is None
        # the stream's own audio reached its endpointer (the pre-roll ring holds it)
        assert np.array_equal(s.ep._recall(0, 320), mulaw.decode(p))


def test_more_streams_than_max_rows_and_uneven_frames() -> None:
    n = MAX_ROWS + 5
    streams = [Stream() for _ in range(n)]
    batch = FrameBatch()
    batch.begin()
    for i, s in enumerate(streams):
        s.batch_frames = s.ep.frames_ready(_audio(i)[: 160 * (1 + i % 3)])
        batch.add(s)
    batch.end()
    assert [s.decided for s in streams] == [1 + i % 3 for i in range(n)]
    assert batch.frames == sum(1 + i % 3 for i in range(n))


class _Exploding(BandClassifier):
    """A classifier with a bug: batches raise, and alone it raises too."""

    @classmethod
    def classify_batch(cls, classifiers: object, frames: Frames) -> list[bool]:  # type: ignore[override]
        raise RuntimeError("batch bug")

    def classify(self, frames: Frames) -> list[bool]:
        raise RuntimeError("own bug")


def test_a_failing_batch_is_retried_alone_and_only_the_broken_stream_fails() -> None:
    good = [Stream() for _ in range(3)]
    bad = Stream()
    bad.ep = Endpointer(EndpointingConfig(), classifier=_Exploding(8000))
    batch = FrameBatch()
    batch.begin()
    for i, s in enumerate([*good, bad]):
        s.batch_frames = s.ep.frames_ready(_audio(i)[:160])
        batch.add(s)
    batch.end()
    assert all(s.decided == 1 and not s.failures for s in good)
    assert bad.failures and "own bug" in str(bad.failures[0]) and bad.batch_frames is None

    # A bug in one stream's own handling of its decisions: only that stream hears of it.
    class Raising(Stream):
        def batch_decided(self, decisions: list[bool]) -> None:
            self.batch_frames = None
            raise ValueError("per-call bug")

    r, ok = Raising(), Stream()
    batch.begin()
    for s in (r, ok):
        s.batch_frames = s.ep.frames_ready(_audio(5)[:160])
        batch.add(s)
    batch.end()
    assert isinstance(r.failures[0], ValueError) and ok.decided == 1 and not ok.failures


def test_a_stream_that_decided_alone_is_skipped_and_one_added_twice_runs_once() -> None:
    a, b = Stream(), Stream()
    batch = FrameBatch()
    batch.begin()
    a.batch_frames = a.ep.frames_ready(_audio(1)[:160])
    batch.add(a)
    a.batch_decided(a.ep.classifier.classify(a.batch_frames))  # decided alone meanwhile
    a.batch_frames = a.ep.frames_ready(_audio(1)[160:320])  # and deferred again
    batch.add(a)
    b.batch_frames = b.ep.frames_ready(_audio(2)[:160])
    batch.add(b)
    batch.end()
    assert a.decided == 2 and b.decided == 1 and batch.frames == 2


class _Miscounting(BandClassifier):
    """A classifier kind whose batch gives one decision too few (a bug); alone it is right."""

    @classmethod
    def classify_batch(cls, classifiers: object, frames: Frames) -> list[bool]:  # type: ignore[override]
        return [False] * (frames.shape[0] - 1)


def test_a_batch_with_the_wrong_count_is_classified_alone() -> None:
    """The one-classify_batch case (a frame per stream) checks the count as the rounds do: each stream then
    decides alone, with the decisions its own classifier gives, and none fails."""
    streams = [Stream() for _ in range(4)]
    alone = [BandClassifier(8000) for _ in streams]
    batch = FrameBatch()
    batch.begin()
    for i, s in enumerate(streams):
        s.ep = Endpointer(EndpointingConfig(), classifier=_Miscounting(8000))
        s.batch_frames = s.ep.frames_ready(_audio(i)[:160])
        batch.add(s)
    batch.end()
    assert all(s.decided == 1 and not s.failures and s.batch_frames is None for s in streams)
    for i, c in enumerate(alone):
        c.classify(_audio(i)[:160][None])
    assert [s.ep.classifier._floors for s in streams] == [c._floors for c in alone]  # each saw its frame once


def test_frames_ready_keeps_an_owned_packet_and_copies_any_other() -> None:
    """``owned``: a whole packet's frame is the caller's array itself (a batch's fresh decode, issue 13);
    without it the frame is a copy, so a caller reusing its buffer cannot change what waits."""
    pcm = _audio(3)[:160].copy()
    ep = Endpointer(EndpointingConfig())
    frames = ep.frames_ready(pcm, owned=True)
    assert frames is not None and np.shares_memory(frames, pcm)
    ep.push_decided([False])
    other = pcm.copy()
    frames = ep.frames_ready(other)
    assert frames is not None and not np.shares_memory(frames, other)
    before = frames.copy()
    other[:] = 0
    assert np.array_equal(frames, before)


def test_frames_ready_checks_the_dtype_by_value() -> None:
    """The identity check is a shortcut: an int16 array subclass passes, a big-endian or 2-D array does not."""

    class Sub(np.ndarray):  # type: ignore[type-arg]
        pass

    ep = Endpointer(EndpointingConfig())
    frames = ep.frames_ready(np.zeros(160, dtype=np.int16).view(Sub))
    assert frames is not None and frames.shape == (1, 160)
    ep.push_decided([False])
    for bad in (np.zeros(160, dtype=">i2"), np.zeros((1, 160), dtype=np.int16), np.zeros(160, dtype=np.int32)):
        with pytest.raises(EndpointerError):
            ep.frames_ready(bad)  # type: ignore[arg-type]

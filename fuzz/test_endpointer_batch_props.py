"""Property: frames classified in a FrameBatch (one batch per wake-up, many streams) give every stream the
events its own ``Endpointer.push`` gives, for random streams, chunkings and interleavings (issue 13).

Each stream is driven as :class:`engine.call.Call` drives it: during a wake-up a chunk is deferred to the
batch (its μ-law payload, or the frames ``frames_ready`` cut); a second chunk of the same stream in one
wake-up joins the waiting μ-law payload (``join``, as Call does when it may) or first decides the earlier one
alone; the wake-up's end classifies every waiting stream together (a stream with several frames in the rounds).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import Endpointer, EndpointEvent, FrameClassifier, make_classifier
from engine.endpointing.batch import FrameBatch
from engine.endpointing.classifiers import Frames
from engine.endpointing.endpointer import Pcm
from fuzz.test_endpointer_props import chunkings, configs, signals
from tests.endpointing.helpers import key


class Stream:
    """A stream in the batch the way Call is (payload or frames deferred; alone when it cannot wait)."""

    def __init__(self, cfg: EndpointingConfig, rate: int, *, as_mulaw: bool, join: bool = False) -> None:
        self.ep = Endpointer(cfg, sample_rate=rate, classifier=make_classifier(cfg.classifier, rate,
                                                                                frame_ms=cfg.frame_ms))
        self.as_mulaw = as_mulaw
        self.join = join
        self.batch_payload: bytes | None = None
        self.batch_frames: Frames | None = None
        self.events: list[EndpointEvent] = []

    @property
    def batch_classifier(self) -> FrameClassifier:
        return self.ep.classifier

    def feed(self, chunk: bytes | Pcm, batch: FrameBatch) -> None:
        if self.join and self.batch_payload is not None and batch.collecting and isinstance(chunk, bytes):
            self.batch_payload += chunk  # decoded and classified with the waiting chunk at the wake-up's end
            return
        if self.batch_payload is not None or self.batch_frames is not None:
            self.alone()
        if batch.collecting and isinstance(chunk, bytes):
            self.batch_payload = chunk
            batch.add(self)
            return
        pcm = mulaw.decode(chunk) if isinstance(chunk, bytes) else chunk
        if batch.collecting:
            ready = self.ep.frames_ready(pcm)
            if ready is not None:
                self.batch_frames = ready
                batch.add(self)
            return
        self.events += self.ep.push(pcm)

    def alone(self) -> None:
        if self.batch_payload is not None:
            payload, self.batch_payload = self.batch_payload, None
            ready = self.ep.frames_ready(mulaw.decode(payload))
            if ready is None:
                return
            self.batch_frames = ready
        frames, self.batch_frames = self.batch_frames, None
        assert frames is not None
        self.events += self.ep.push_decided(self.ep.classifier.classify(frames))

    def batch_audio(self, pcm: Pcm) -> None:
        self.batch_payload = None
        self.batch_frames = self.ep.frames_ready(pcm)

    def batch_decided(self, decisions: list[bool]) -> None:
        self.batch_frames = None
        self.events += self.ep.push_decided(decisions)

    def batch_failed(self, exc: Exception) -> None:
        raise AssertionError(f"no stream may fail here: {exc!r}")


def _chunks(sig: Pcm, sizes: list[int], as_mulaw: bool) -> list[bytes | Pcm]:
    out: list[bytes | Pcm] = []
    pos = 0
    i = 0
    while pos < len(sig):
        n = sizes[i % len(sizes)] or 1
        i += 1
        part = sig[pos : pos + n]
        out.append(mulaw.encode(part) if as_mulaw else part)
        pos += n
    return out


@given(data=st.data())
def test_batched_events_equal_per_stream_push(data: st.DataObject) -> None:
    n_streams = data.draw(st.integers(1, 5))
    streams: list[Stream] = []
    refs: list[Endpointer] = []
    inputs: list[list[bytes | Pcm]] = []
    for _ in range(n_streams):
        cfg, rate = data.draw(configs())
        as_mulaw = rate == 8000 and data.draw(st.booleans())
        sig = data.draw(signals(rate, max_ms=2500))
        if as_mulaw:  # the reference must see the same samples the μ-law codes give
            sig = mulaw.decode(mulaw.encode(sig))
        streams.append(Stream(cfg, rate, as_mulaw=as_mulaw, join=data.draw(st.booleans())))
        refs.append(Endpointer(cfg, sample_rate=rate,
                               classifier=make_classifier(cfg.classifier, rate, frame_ms=cfg.frame_ms)))
        inputs.append(_chunks(sig, data.draw(chunkings), as_mulaw))
    # The reference: every stream on its own, chunk by chunk.
    expected = []
    for ref, chunks in zip(refs, inputs, strict=True):
        events: list[EndpointEvent] = []
        for chunk in chunks:
            events += ref.push(mulaw.decode(chunk) if isinstance(chunk, bytes) else chunk)
        events += ref.end()
        expected.append([key(e) for e in events])
    # Batched: wake-ups that each deliver the next chunk of a random multiset of streams.
    batch = FrameBatch()
    nxt = [0] * n_streams
    wakeups = data.draw(st.lists(st.lists(st.integers(0, n_streams - 1), max_size=8), max_size=40))
    wakeups.append([i for i in range(n_streams) for _ in inputs[i]])  # the rest, in a last wake-up
    for wake in wakeups:
        batch.begin()
        for i in wake:
            if nxt[i] < len(inputs[i]):
                streams[i].feed(inputs[i][nxt[i]], batch)
                nxt[i] += 1
        batch.end()
    for s in streams:
        assert s.batch_payload is None and s.batch_frames is None
        s.events += s.ep.end()
    assert [[key(e) for e in s.events] for s in streams] == expected
    assert all(n == len(c) for n, c in zip(nxt, inputs, strict=True))


def test_batch_shares_one_classify_per_wakeup() -> None:
    """Not vacuous: a wake-up of many streams of one kind is one classify_batch, its μ-law one decode."""
    cfg = EndpointingConfig(classifier="bands-click")
    streams = [Stream(cfg, 8000, as_mulaw=True) for _ in range(30)]
    rng = np.random.default_rng(3)
    batch = FrameBatch()
    for _tick in range(20):
        batch.begin()
        for s in streams:
            s.feed(mulaw.encode((rng.standard_normal(160) * 500).astype(np.int16)), batch)
        batch.end()
    assert batch.batches == 20 and batch.frames == 600 and batch.decoded == 600


BANDS_KINDS = ["bands", "bands-unmute", "bands-click", "bands-pitch", "bands-hold", "bands-level"]


@given(data=st.data())
def test_vectorised_decision_is_decide_row_by_row(data: st.DataObject) -> None:
    """Issue 13: ``_decide_rows`` (the bands decision for a tick's rows in numpy) leaves every classifier in
    exactly the state ``decide`` leaves it in (floors to the bit) and gives the same decisions, for random
    band levels (digital silence, noise, speech, clicks), voicing and tick membership, one kind or mixed."""
    from engine.endpointing import BandClassifier
    from engine.endpointing.classifiers import _decide_rows

    n = data.draw(st.integers(1, 12))
    kinds = data.draw(st.one_of(st.sampled_from(BANDS_KINDS).map(lambda k: [k] * n),
                                st.lists(st.sampled_from(BANDS_KINDS[:3]), min_size=n, max_size=n)))
    alone = [make_classifier(k, 8000) for k in kinds]
    rows = [make_classifier(k, 8000) for k in kinds]
    level = st.one_of(st.floats(1.0, 90.0), st.floats(90.0, 2e3), st.floats(2e3, 1e7))  # 1 + power per band
    for _tick in range(data.draw(st.integers(1, 60))):
        members = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
        if not members or (kinds[members[0]] == "bands-pitch") != all(kinds[i] == "bands-pitch" for i in members):
            continue
        loudness = data.draw(st.sampled_from([0.0, 1.0, 1.0, 1.0]))  # sometimes a tick of digital silence
        bands = np.array([[1.0 + loudness * (data.draw(level) - 1.0) for _ in range(6)] for _ in members],
                         dtype=np.float32)
        swings = [data.draw(st.integers(0, 65535)) for _ in members]
        voicing = [data.draw(st.floats(0.0, 1.2)) for _ in members]
        expected = []
        for j, i in enumerate(members):
            a = alone[i]
            assert isinstance(a, BandClassifier)
            expected.append(a.decide(bands[j].tolist(), swings[j], voicing[j]))
        got, _rescued = _decide_rows([rows[i] for i in members], bands, swings, voicing, min_rows=1)  # type: ignore[misc]
        assert got == expected
        for i in members:
            a, r = alone[i], rows[i]
            assert isinstance(a, BandClassifier) and isinstance(r, BandClassifier)
            assert (r._floors, r._informed, r._run, r._resume, r._resume_min, r._resume_top) == (
                a._floors, a._informed, a._run, a._resume, a._resume_min, a._resume_top)


@given(data=st.data())
def test_many_streams_of_one_bands_kind_batched_equal_per_stream_push(data: st.DataObject) -> None:
    """Issue 13: many streams of one bands kind (one vectorised decision per round), random signals and
    wake-ups: each stream's events are its own push's."""
    kind = data.draw(st.sampled_from(BANDS_KINDS))
    n_streams = data.draw(st.integers(2, 12))
    cfg = EndpointingConfig(classifier=kind)  # type: ignore[arg-type]
    join = data.draw(st.booleans())  # a stream's chunks of one wake-up joined in the batch (Call), or alone first
    streams = [Stream(cfg, 8000, as_mulaw=True, join=join) for _ in range(n_streams)]
    refs = [Endpointer(cfg, sample_rate=8000, classifier=make_classifier(kind, 8000)) for _ in range(n_streams)]
    inputs = []
    expected = []
    for ref in refs:
        sig = mulaw.decode(mulaw.encode(data.draw(signals(8000, max_ms=2500))))
        chunks = _chunks(sig, data.draw(st.sampled_from([[160], [160, 320], [80, 240], [160, 160, 1]])), True)
        inputs.append(chunks)
        events: list[EndpointEvent] = []
        for chunk in chunks:
            assert isinstance(chunk, bytes)
            events += ref.push(mulaw.decode(chunk))
        expected.append([key(e) for e in events + ref.end()])
    batch = FrameBatch()
    nxt = [0] * n_streams
    wakeups = data.draw(st.lists(st.lists(st.integers(0, n_streams - 1), max_size=2 * n_streams), max_size=60))
    while any(nxt[i] < len(inputs[i]) for i in range(n_streams)):  # then one chunk of every stream per wake-up
        wakeups.append(list(range(n_streams)))
        for wake in wakeups:
            batch.begin()
            for i in wake:
                if nxt[i] < len(inputs[i]):
                    streams[i].feed(inputs[i][nxt[i]], batch)
                    nxt[i] += 1
            batch.end()
        wakeups = []
    for s in streams:
        s.events += s.ep.end()
    assert [[key(e) for e in s.events] for s in streams] == expected

"""Property: ``Endpointer.push_packet`` is ``frames_ready`` + ``push_decided_lean`` (issue 13, round 4: the
batch's packet path), for arbitrary decisions and chunkings.

Two μ-law-history endpointers get the same chunks (mostly whole packets, now and then any length, which
misaligns the frames until a chunk realigns them) and the same decisions; one always runs the two phases, the
other ``push_packet`` whenever the chunk is exactly ``packet`` bytes (``packet`` must say 0 while anything is
pending). The events, field for field, and the whole state after every chunk must be equal.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import Endpointer, EndpointerError, EndpointEvent, FrameClassifier, SpeechAudio, make_classifier
from engine.endpointing.batch import FrameBatch
from engine.endpointing.classifiers import Frames
from engine.endpointing.endpointer import NO_EVENTS, Pcm
from tests.endpointing.helpers import key

from .test_endpointer_lean_props import _config, _decisions, _Fixed, _state
from .test_endpointer_props import signals


def _expand(out: object, ep: Endpointer, chunk: bytes) -> list[EndpointEvent]:
    """The lean answers as push_decided's events: None is the frame's SpeechAudio (its codes decoded)."""
    if out is None:
        return [SpeechAudio(ep.position - len(chunk), mulaw.decode(chunk))]
    assert out or out is NO_EVENTS
    return list(out)  # type: ignore[call-overload]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_push_packet_equals_the_two_phases(data: st.DataObject) -> None:
    cfg, frame = _config(data)
    ref = Endpointer(cfg, sample_rate=8000, classifier=_Fixed(frame), mulaw_history=True)
    pk = Endpointer(cfg, sample_rate=8000, classifier=_Fixed(frame), mulaw_history=True)
    total = data.draw(st.integers(0, 600)) * frame + data.draw(st.integers(0, frame - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 256, total, dtype=np.uint8).tobytes()
    decisions = data.draw(_decisions(total // frame + 1))
    odd = data.draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    got: list[EndpointEvent] = []
    want: list[EndpointEvent] = []
    packets = done = pos = 0
    while pos < total:
        n = frame if rng.random() >= odd else int(rng.integers(1, 3 * frame))
        chunk = codes[pos : pos + n]
        pos += len(chunk)
        pcm = mulaw.decode(chunk)
        aligned = pk.packet == frame
        assert aligned == (ref._pending.shape[0] == 0)  # packet: nothing pending (and the history keeps codes)
        a = ref.frames_ready(pcm, chunk)
        if a is not None:
            d = decisions[done : done + a.shape[0]]
            done += a.shape[0]
            want += _expand(ref.push_decided_lean(list(d)), ref, chunk)
        if aligned and len(chunk) == frame:
            assert a is not None
            packets += 1
            got += _expand(pk.push_packet(pcm.copy(), chunk, d[0]), pk, chunk)
        else:
            b = pk.frames_ready(pcm.copy(), chunk)
            assert (a is None) == (b is None)
            if b is not None:
                got += _expand(pk.push_decided_lean(list(d)), pk, chunk)
        assert _state(pk) == _state(ref)
        assert [key(e) for e in got] == [key(e) for e in want]
    got += pk.end()
    want += ref.end()
    assert [key(e) for e in got] == [key(e) for e in want]
    assert pk.packet == 0  # ended: nothing more is taken
    if odd == 0.0 and total >= frame:
        assert packets > 0  # not vacuous


def test_push_packet_refuses_what_it_cannot_take() -> None:
    ep = Endpointer(EndpointingConfig(), sample_rate=8000, classifier=_Fixed(160), mulaw_history=True)
    quiet = b"\xff" * 160
    with pytest.raises(EndpointerError):
        ep.push_packet(mulaw.decode(quiet[:80]), quiet[:80], False)  # not a whole frame
    assert ep.frames_ready(mulaw.decode(quiet[:80]), quiet[:80]) is None  # half a frame pending
    assert ep.packet == 0
    with pytest.raises(EndpointerError):
        ep.push_packet(mulaw.decode(quiet), quiet, False)
    assert ep.frames_ready(mulaw.decode(quiet[:80]), quiet[:80]) is not None  # realigned
    ep.push_decided_lean([False])
    assert ep.packet == 160
    assert ep.push_packet(mulaw.decode(quiet), quiet, False) is NO_EVENTS
    plain = Endpointer(EndpointingConfig(), sample_rate=8000, classifier=_Fixed(160))  # history of samples
    assert plain.packet == 0


# -- FrameBatch's packet path with several packets per stream in one pass (issue 13, round 5: the knee) --------


class _Packets:
    """A stream the way Call drives it in a late pass: a whole packet waits on the packet path; a second chunk
    joins the wait and the stream re-adds itself with every whole packet so far (``add_packets``), unless it
    may not (``alone``: the wait is decided first, alone, as Call does when ``_may_join`` says no)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.ep = Endpointer(EndpointingConfig(classifier=kind), sample_rate=8000,  # type: ignore[arg-type]
                             classifier=make_classifier(kind, 8000), mulaw_history=True)
        self.batch_payload: bytes | None = None
        self.batch_frames: Frames | None = None
        self.events: list[EndpointEvent] = []
        self.decisions: list[bool] = []
        self.paths = {"packet": 0, "packets": 0, "general": 0, "alone": 0}

    @property
    def batch_classifier(self) -> FrameClassifier:
        return self.ep.classifier

    def feed(self, chunk: bytes, batch: FrameBatch, *, may_join: bool) -> None:
        if self.batch_payload is not None and may_join:
            joined = self.batch_payload = self.batch_payload + chunk
            if self.ep.packet and not len(joined) % self.ep.packet:
                batch.add_packets(self, joined, len(joined) // self.ep.packet)
            return
        if self.batch_payload is not None or self.batch_frames is not None:
            self.alone()
        self.batch_payload = chunk
        if len(chunk) == self.ep.packet:
            batch.add_packet(self, chunk)
        else:
            batch.add(self)

    def alone(self) -> None:
        self.paths["alone"] += 1
        payload = self.batch_payload
        if payload is not None:
            self.batch_payload = None
            self.batch_frames = self.ep.frames_ready(mulaw.decode(payload), payload)
        frames = self.batch_frames
        if frames is not None:
            self._decided(self.ep.classifier.classify(frames))

    def _decided(self, decisions: list[bool]) -> None:
        self.batch_frames = None
        self.decisions += decisions
        self.events += self.ep.push_decided(decisions)

    def batch_audio(self, pcm: Pcm) -> None:
        payload, self.batch_payload = self.batch_payload, None
        self.batch_frames = self.ep.frames_ready(pcm, payload, owned=True)

    def batch_decided(self, decisions: list[bool]) -> None:
        self.paths["general"] += 1
        self._decided(decisions)

    def batch_packet(self, pcm: Pcm, speech: bool) -> None:
        self.paths["packet"] += 1
        payload, self.batch_payload = self.batch_payload, None
        assert payload is not None
        self.decisions.append(speech)
        self.events += _expand(self.ep.push_packet(pcm, payload, speech), self.ep, payload)

    def batch_packets(self, pcms: list[Pcm], speech: list[bool]) -> None:  # as Call.batch_packets
        self.paths["packets"] += 1
        payload = self.batch_payload
        assert payload is not None and len(payload) == 160 * len(pcms)
        for i, (pcm, decision) in enumerate(zip(pcms, speech, strict=True)):
            self.batch_payload = payload[i * 160 : i * 160 + 160]
            self.batch_packet(pcm, decision)
        self.paths["packet"] -= len(pcms)

    def batch_failed(self, exc: Exception) -> None:
        raise AssertionError(f"no stream may fail here: {exc!r}")


def _alone(kind: str, chunks: list[bytes]) -> tuple[list[bool], list[EndpointEvent]]:
    """The reference: the stream on its own, chunk by chunk, its classifier one frame at a time."""
    ep = Endpointer(EndpointingConfig(classifier=kind), sample_rate=8000,  # type: ignore[arg-type]
                    classifier=make_classifier(kind, 8000), mulaw_history=True)
    clf = make_classifier(kind, 8000)
    decisions: list[bool] = []
    events: list[EndpointEvent] = []
    for chunk in chunks:
        frames = ep.frames_ready(mulaw.decode(chunk), chunk)
        if frames is not None:
            got = [clf.classify(frames[i : i + 1])[0] for i in range(frames.shape[0])]
            decisions += got
            events += ep.push_decided(got)
    return decisions, events


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_passes_with_several_packets_per_stream_equal_each_stream_alone(data: st.DataObject) -> None:
    """Streams of the bands kinds fed whole packets (now and then an odd chunk), each pass giving each stream
    0-3 of its chunks (joined as Call joins them, or the earlier ones decided alone first): every stream's
    decisions are, bit for bit, those of its own classifier frame by frame, and its events its own."""
    kinds = data.draw(st.sampled_from([["bands-click"], ["bands"], ["bands-hold"], ["bands-click", "bands"]]))
    n = data.draw(st.integers(1, 10))
    streams = [_Packets(kinds[i % len(kinds)]) for i in range(n)]
    inputs: list[list[bytes]] = []
    for _ in range(n):
        sig = mulaw.encode(data.draw(signals(8000, max_ms=2000)))
        odd = data.draw(st.sampled_from([0.0, 0.0, 0.1]))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        chunks, pos = [], 0
        while pos < len(sig):
            size = 160 if rng.random() >= odd else int(rng.integers(1, 400))
            chunks.append(sig[pos : pos + size])
            pos += size
        inputs.append(chunks)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    join = data.draw(st.sampled_from([1.0, 0.8]))
    batch = FrameBatch()
    nxt = [0] * n
    while any(k < len(c) for k, c in zip(nxt, inputs, strict=True)):
        batch.begin()
        for i in rng.permutation(n):
            for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
                if nxt[i] < len(inputs[i]):
                    streams[i].feed(inputs[i][nxt[i]], batch, may_join=rng.random() < join)
                    nxt[i] += 1
        batch.end()
        assert all(s.batch_payload is None and s.batch_frames is None for s in streams)
    for s, chunks in zip(streams, inputs, strict=True):
        decisions, events = _alone(s.kind, chunks)
        assert s.decisions == decisions
        assert _marks(s.events) == _marks(events)
        assert _audio(s.events) == _audio(events)


def _marks(events: list[EndpointEvent]) -> list[tuple[object, ...]]:
    return [key(e) for e in events if not isinstance(e, SpeechAudio)]


def _audio(events: list[EndpointEvent]) -> bytes:
    """Every SpeechAudio's samples in order (a chunk of several frames may come as one event or one per frame)."""
    return b"".join(e.pcm.tobytes() for e in events if isinstance(e, SpeechAudio))

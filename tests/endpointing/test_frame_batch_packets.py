"""FrameBatch's packet path (issue 13, round 4): streams waiting with one whole frame of μ-law are decoded,
classified and handed back in one go; a wait that changed since its add takes the general path, once.
Round 5 (the knee): a stream that re-adds itself with several whole packets (add_packets, as Call does when a
late pass leaves a second packet in its socket) stays on the packet path, decided in rounds."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import BandClassifier, Endpointer, EndpointEvent
from engine.endpointing.batch import FrameBatch
from engine.endpointing.classifiers import Frames
from engine.endpointing.endpointer import Pcm
from tests.endpointing.helpers import key

from .signals import concat, noise, speechlike
from .test_frame_batch import Stream


class PacketStream(Stream):
    """A Call-like stream: a whole frame of μ-law waits as a packet, anything else on the general path."""

    def __init__(self, *, readd: bool = False) -> None:
        super().__init__()
        self.ep = Endpointer(EndpointingConfig(), mulaw_history=True)
        self.packets = 0
        self.several = 0  # batch_packets calls
        self.general = 0  # batch_audio calls (the general path)
        self.alone_frames = 0
        self.readd = readd  # a join re-adds the stream with its whole packets (as Call, round 5)
        self.raise_in_packet = False

    def feed(self, chunk: bytes, batch: FrameBatch) -> None:
        if self.batch_payload is not None and len(self.batch_payload) % 160 == 0 and len(chunk) == 160:
            joined = self.batch_payload = self.batch_payload + chunk  # joins the wait (as Call._may_join)
            if self.readd:
                batch.add_packets(self, joined, len(joined) // 160)
            return
        if self.batch_payload is not None or self.batch_frames is not None:
            self.alone()
        self.batch_payload = chunk
        if len(chunk) == self.ep.packet:
            batch.add_packet(self, chunk)
        else:
            batch.add(self)

    def alone(self) -> None:
        payload, self.batch_payload = self.batch_payload, None
        if payload is not None:
            self.batch_frames = self.ep.frames_ready(mulaw.decode(payload), payload)
        frames = self.batch_frames
        if frames is not None:
            self.alone_frames += frames.shape[0]
            self.batch_decided(self.ep.classifier.classify(frames))

    def batch_audio(self, pcm: Pcm) -> None:
        self.general += 1
        payload, self.batch_payload = self.batch_payload, None
        self.batch_frames = self.ep.frames_ready(pcm, payload)

    def batch_packet(self, pcm: Pcm, speech: bool) -> None:
        payload, self.batch_payload = self.batch_payload, None
        assert payload is not None
        if self.raise_in_packet:
            raise ValueError("per-call bug")
        self.packets += 1
        self.decided += 1
        out = self.ep.push_packet(pcm, payload, speech)
        self.events += [] if out is None else list(out)  # None: a frame of the utterance (not compared here)

    def batch_packets(self, pcms: list[Pcm], speech: list[bool]) -> None:  # as Call.batch_packets
        self.several += 1
        payload = self.batch_payload
        assert payload is not None and len(payload) == 160 * len(pcms)
        for i, (pcm, decision) in enumerate(zip(pcms, speech, strict=True)):
            self.batch_payload = payload[i * 160 : i * 160 + 160]
            self.batch_packet(pcm, decision)


def _codes(seed: int) -> bytes:
    sig = concat(noise(1600, 80.0, seed=seed), speechlike(4000, 8000, level=2500.0, seed=seed),
                 noise(4000, 80.0, seed=seed + 9))
    return mulaw.encode(sig)


def _reference(codes: bytes) -> list[EndpointEvent]:
    ep = Endpointer(EndpointingConfig(), mulaw_history=True)
    events: list[EndpointEvent] = []
    for at in range(0, len(codes) - 159, 160):
        chunk = codes[at : at + 160]
        events += ep.push(mulaw.decode(chunk), chunk)
    return [e for e in events if type(e).__name__ != "SpeechAudio"]


@pytest.mark.parametrize("readd", [False, True])
def test_packets_joins_and_second_adds_give_each_stream_its_own_events(readd: bool) -> None:
    """40 streams (the vector decision), a pass now and then in which some get two chunks (joined: the general
    path, or with ``readd`` the packet path's rounds) or decide alone and wait again (added twice): each
    stream's events are those of its audio alone."""
    streams = [PacketStream(readd=readd) for _ in range(40)]
    codes = [_codes(i) for i in range(40)]
    rng = np.random.default_rng(3)
    batch = FrameBatch()
    at = [0] * 40
    n = len(codes[0]) // 160
    while min(at) < n:
        batch.begin()
        for i, s in enumerate(streams):
            reads = 1 if rng.random() < 0.8 else 2
            for _ in range(reads):
                if at[i] < n:
                    if reads == 2 and rng.random() < 0.5 and s.batch_payload is not None:
                        s.alone()  # decided alone, then waits again (a second add in one pass)
                    s.feed(codes[i][at[i] * 160 : at[i] * 160 + 160], batch)
                    at[i] += 1
        batch.end()
        assert all(s.batch_payload is None and s.batch_frames is None for s in streams)
    for s, c in zip(streams, codes, strict=True):
        got = [e for e in s.events if type(e).__name__ != "SpeechAudio"]
        assert [key(e) for e in got] == [key(e) for e in _reference(c)]
        assert s.ep.position == n * 160 and not s.failures
    assert sum(s.packets for s in streams) > 20 * n  # most frames took the packet path
    if readd:  # every frame did: the joined ones in rounds
        assert sum(s.packets for s in streams) == 40 * n - sum(s.alone_frames for s in streams)
        assert sum(s.several for s in streams) > n and not any(s.general for s in streams)


def test_a_failing_packet_fails_its_stream_alone() -> None:
    streams = [PacketStream() for _ in range(3)]
    streams[1].raise_in_packet = True
    batch = FrameBatch()
    batch.begin()
    for i, s in enumerate(streams):
        s.feed(_codes(i)[:160], batch)
    batch.end()
    assert [len(s.failures) for s in streams] == [0, 1, 0]
    assert streams[0].decided == streams[2].decided == 1 and streams[1].batch_payload is None
    assert batch.decoded == 3 and batch.batches == 1 and batch.frames == 3


def test_a_two_packet_pass_is_one_decode_and_one_classify_batch_per_round() -> None:
    """Round 5 (the knee): two of five streams hold two packets; the pass is one decode (one payload per
    stream), a classify_batch per round (5 rows, then 2), one batch_packets for each of the two."""
    streams = [PacketStream(readd=True) for _ in range(5)]
    codes = [_codes(i) for i in range(5)]
    batch = FrameBatch()
    batch.begin()
    for i, s in enumerate(streams):
        s.feed(codes[i][:160], batch)
        if i in (1, 3):
            s.feed(codes[i][160:320], batch)
    batch.end()
    assert batch.decoded == 5 and batch.batches == 2 and batch.frames == 7
    assert [s.packets for s in streams] == [1, 2, 1, 2, 1] and [s.several for s in streams] == [0, 1, 0, 1, 0]
    assert [s.ep.position for s in streams] == [160, 320, 160, 320, 160]
    assert not any(s.general or s.failures or s.batch_payload for s in streams)


class _SecondFails(BandClassifier):
    """A classifier with a bug that shows on its second frame (alone or batched: another kind's rows are
    classified one by one)."""

    def __init__(self) -> None:
        super().__init__(8000)
        self.seen = 0

    def classify(self, frames: Frames) -> list[bool]:
        self.seen += 1
        if self.seen > 1:
            raise RuntimeError("own bug")
        return super().classify(frames)


def test_a_stream_failing_in_a_later_round_fails_alone() -> None:
    bad = PacketStream(readd=True)
    bad.ep = Endpointer(EndpointingConfig(), classifier=_SecondFails(), mulaw_history=True)
    good = [PacketStream(readd=True) for _ in range(3)]
    batch = FrameBatch()
    batch.begin()
    for i, s in enumerate([bad, *good]):  # bad first: its round-1 row raises before the others are classified
        s.feed(_codes(i)[:160], batch)
        s.feed(_codes(i)[160:320], batch)
    batch.end()
    assert len(bad.failures) == 1 and "own bug" in str(bad.failures[0])
    assert bad.batch_payload is None and bad.packets == 0  # nothing of it handed back, not even round 0
    assert all(s.packets == 2 and s.several == 1 and not s.failures for s in good)

    # A bug in one stream's handling of its packets: only that stream hears of it.
    r, ok = PacketStream(readd=True), PacketStream(readd=True)
    r.raise_in_packet = True
    batch.begin()
    for s in (r, ok):
        s.feed(_codes(7)[:160], batch)
        s.feed(_codes(7)[160:320], batch)
    batch.end()
    assert isinstance(r.failures[0], ValueError) and r.batch_payload is None
    assert ok.packets == 2 and not ok.failures


def test_a_stream_decided_alone_mid_pass_is_never_decided_twice() -> None:
    """A stream with two packets waiting that decides alone before the pass ends (a third chunk it could not
    join; or, while the batch hands out decisions, another stream's handling makes it decide) is skipped:
    each frame is decided once, its last packet (added again) on the packet path."""
    a, b = PacketStream(readd=True), PacketStream(readd=True)
    codes = _codes(4)
    batch = FrameBatch()
    batch.begin()
    a.feed(codes[:160], batch)
    a.feed(codes[160:320], batch)  # joined: add_packets
    a.alone()  # could not join the third: the two decided alone
    a.feed(codes[320:480], batch)  # and the third waits as a packet again
    b.feed(codes[:160], batch)
    batch.end()
    assert a.alone_frames == 2 and a.packets == 1 and a.several == 0 and a.ep.position == 480
    assert b.packets == 1 and batch.frames == 2

    class Nudging(PacketStream):
        def batch_packet(self, pcm: Pcm, speech: bool) -> None:
            super().batch_packet(pcm, speech)
            if c.batch_payload is not None:
                c.alone()

    n, c = Nudging(readd=True), PacketStream(readd=True)
    batch.begin()
    n.feed(codes[:160], batch)
    c.feed(codes[:160], batch)
    c.feed(codes[160:320], batch)
    batch.end()
    assert n.packets == 1 and c.alone_frames == 2 and c.packets == 0 and c.several == 0 and c.ep.position == 320
    assert not c.failures and c.batch_payload is None

"""FrameBatch's packet path (issue 13, round 4): streams waiting with one whole frame of μ-law are decoded,
classified and handed back in one go; a wait that changed since its add takes the general path, once."""

from __future__ import annotations

import numpy as np

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import Endpointer, EndpointEvent
from engine.endpointing.batch import FrameBatch
from engine.endpointing.endpointer import Pcm
from tests.endpointing.helpers import key

from .signals import concat, noise, speechlike
from .test_frame_batch import Stream


class PacketStream(Stream):
    """A Call-like stream: a whole frame of μ-law waits as a packet, anything else on the general path."""

    def __init__(self) -> None:
        super().__init__()
        self.ep = Endpointer(EndpointingConfig(), mulaw_history=True)
        self.packets = 0
        self.raise_in_packet = False

    def feed(self, chunk: bytes, batch: FrameBatch) -> None:
        if self.batch_payload is not None and len(self.batch_payload) == 160 and len(chunk) == 160:
            self.batch_payload += chunk  # joins the wait (as Call._may_join)
            return
        if self.batch_payload is not None or self.batch_frames is not None:
            self.alone()
        self.batch_payload = chunk
        if len(chunk) == self.ep.packet:
            batch.add_packet(self, chunk)
        else:
            batch.add(self)

    def alone(self) -> None:
        payload = self.batch_payload
        if payload is not None:
            self.batch_audio(mulaw.decode(payload))
        frames = self.batch_frames
        if frames is not None:
            self.batch_decided(self.ep.classifier.classify(frames))

    def batch_audio(self, pcm: Pcm) -> None:
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


def test_packets_joins_and_second_adds_give_each_stream_its_own_events() -> None:
    """40 streams (the vector decision), a pass now and then in which some get two chunks (joined: the general
    path) or decide alone and wait again (added twice): each stream's events are those of its audio alone."""
    streams = [PacketStream() for _ in range(40)]
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

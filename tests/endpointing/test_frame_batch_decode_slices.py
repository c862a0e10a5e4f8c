"""FrameBatch._decode hands each stream its own slice of the wake-up's decode even when a stream decides alone
while an earlier stream's batch_audio runs (review 4): the batch skips that stream, as its docstring promises,
and no later stream gets the skipped stream's samples (audio of one call reaching another)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.audio import mulaw
from engine.endpointing.batch import FrameBatch
from engine.endpointing.classifiers import FrameClassifier, Frames
from engine.endpointing.endpointer import Pcm


class _Stream:
    """A Deferred that records the samples it is handed; ``on_audio`` runs inside its batch_audio."""

    def __init__(self, payload: bytes) -> None:
        self.batch_payload: bytes | None = payload
        self.batch_frames: Frames | None = None
        self.got: list[Pcm] = []
        self.on_audio: Callable[[], None] | None = None

    @property
    def batch_classifier(self) -> FrameClassifier:  # pragma: no cover - no frames reach a group here
        raise AssertionError

    def batch_audio(self, pcm: Pcm) -> None:
        self.batch_payload = None
        self.got.append(pcm.copy())
        if self.on_audio is not None:
            self.on_audio()

    def decide_alone(self) -> None:
        """What Call._decide_alone does with a waiting payload: decode it itself, clear the batch's fields."""
        payload = self.batch_payload
        assert payload is not None
        self.batch_audio(mulaw.decode(payload))

    def batch_decided(self, decisions: list[bool]) -> None:  # pragma: no cover
        raise AssertionError

    def batch_failed(self, exc: Exception) -> None:  # pragma: no cover
        raise exc


def test_a_stream_that_decides_alone_during_the_decode_does_not_shift_the_others() -> None:
    payloads = [bytes([0x10 + i]) * 160 for i in range(3)]  # three calls, three different codes
    a, b, c = (_Stream(p) for p in payloads)
    a.on_audio = b.decide_alone  # B's own event arrives while A's audio is handled
    batch = FrameBatch()
    batch.begin()
    for s in (a, b, c):
        batch.add(s)
    batch.end()
    for s, p in zip((a, b, c), payloads, strict=True):
        assert len(s.got) == 1
        assert np.array_equal(s.got[0], mulaw.decode(p)), "a stream got another stream's samples"

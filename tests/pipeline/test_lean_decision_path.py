"""Issue 13, the lean decision path: Call.batch_decided with ``Endpointer.push_decided_lean`` (a quiet frame
builds nothing, an utterance's frame stores its payload without a SpeechAudio) gives a Twilio call exactly
what the general path gives: every event it emits (speech, finals, turns, errors, in order, field for field)
and every byte each lease is sent, whatever the chunking, settings, or an audio buffer that overflows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import events as ev
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, CallConfig, Config, EndpointingConfig, RtzrConfig
from engine.endpointing.batch import FrameBatch
from engine.media import AudioReceived
from engine.metrics import Registry

from .test_speaking_path import STARTED, _noisy_call, _Pool
from .test_utterance_memory import _RecordingLease


def _packets(audio: bytes, seed: int, odd: bool) -> list[bytes]:
    """Twilio's 160-byte packets; with ``odd``, now and then one cut in two, or two in one (so frames realign)."""
    rng = np.random.default_rng(seed)
    out = []
    for pos in range(0, len(audio), 160):
        packet = audio[pos : pos + 160]
        if odd and rng.random() < 0.15:
            cut = int(rng.integers(1, 160))
            out += [packet[:cut], packet[cut:]]
        elif odd and out and rng.random() < 0.1:
            out[-1] += packet
        else:
            out.append(packet)
    return out


class _GeneralCall(Call):
    """batch_decided as before the lean path: every event built by push_decided and handled by _handle."""

    lean_frames = 0

    def batch_decided(self, decisions: list[bool]) -> None:
        self.batch_frames = None
        self._raw_end = self.endpointer.position
        self._after_endpoint(self.endpointer.push_decided(decisions))

    def batch_packet(self, pcm: Any, speech: bool) -> None:  # the packet path too: frames_ready, push_decided
        self.batch_audio(pcm)
        self.batch_decided([speech])


class _CountingCall(Call):
    """The call under test; counts the frames its lean path stored (the test is not vacuous)."""

    lean_frames = 0

    def _append_raw(self, raw: bytes) -> None:
        self.lean_frames += 1
        super()._append_raw(raw)


class _StuckPool:
    """Every lease waits forever: the audio piles up until the buffer bound says overflow."""

    def __init__(self) -> None:
        self.leases: list[_RecordingLease] = []

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[_RecordingLease]:
        await trio.sleep_forever()
        yield _RecordingLease(cut_at_ms=None, cut_after=None, lose_after=None)  # pragma: no cover


async def _drive(kind: type[Call], config: Config, chunks: list[bytes], stuck: bool) -> tuple[list[Any], list[bytes], int]:
    pool: Any = _StuckPool() if stuck else _Pool()
    events: list[ev.Event] = []
    call = kind(STARTED, config=config, pool=pool, emit=events.append, metrics=Registry(),
                budgets=Budgets(BudgetsConfig()))
    batch = FrameBatch()
    call.attach_batch(batch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.run)
        at = 0
        for k, chunk in enumerate(chunks):
            batch.begin()
            call.on_event(AudioReceived(chunk, at / 8))
            if k % 11 == 5:  # a second chunk in one wake-up: the first decided alone
                call.on_event(AudioReceived(b"\xff" * 160, at / 8))
                at += 160
            batch.end()
            at += len(chunk)
            await trio.sleep(0.02)  # the mock clock: real time, so finals (and turns) come between frames
        call.on_close("stop")
        if stuck:
            nursery.cancel_scope.cancel()
    plain = [{k: v for k, v in msgspec.to_builtins(e).items() if k != "ts"} for e in events]  # ts: the wall clock
    return plain, [bytes(lease.audio) for lease in pool.leases], call.lean_frames  # type: ignore[attr-defined]


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), stt_mulaw=st.booleans(), odd=st.booleans(), stuck=st.booleans(),
       merge_ms=st.sampled_from([0, 600]), max_ms=st.sampled_from([1200, 30000]),
       min_ms=st.sampled_from([0, 900]), turn_ms=st.sampled_from([100, 800]))
def test_the_lean_path_gives_what_the_general_path_gives(seed: int, stt_mulaw: bool, odd: bool, stuck: bool,
                                                         merge_ms: int, max_ms: int, min_ms: int, turn_ms: int) -> None:
    config = Config(rtzr=RtzrConfig(encoding="MULAW" if stt_mulaw else "LINEAR16", sample_rate=8000),
                    endpointing=EndpointingConfig(end_ms=200, merge_ms=merge_ms, max_utterance_ms=max_ms,
                                                  min_utterance_ms=min_ms, turn_ms=turn_ms),
                    call=CallConfig(audio_buffer_ms=700 if stuck else 60_000))
    chunks = _packets(_noisy_call(seed), seed, odd)

    async def main() -> tuple[tuple[list[Any], list[bytes], int], tuple[list[Any], list[bytes], int]]:
        with trio.fail_after(120):
            return (await _drive(_CountingCall, config, chunks, stuck),
                    await _drive(_GeneralCall, config, chunks, stuck))

    (events, sent, lean), (want_events, want_sent, _) = trio.run(
        main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert lean > 50  # most speech frames took the lean path
    kinds = [e["type"] for e in events]
    assert "speech.ended" in kinds
    assert ("error" in kinds) == stuck  # the overflow, when the audio cannot be sent
    if not stuck:
        assert sum(map(len, sent)) > 8000
    assert sent == want_sent
    assert events == want_events

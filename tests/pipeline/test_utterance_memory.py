"""Issue 13 (memory per call): utterance audio in fixed blocks, released once RTZR answered it, and a replay
that starts where RTZR's answers end instead of at 0 — without losing or misplacing a word."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
import trio.testing

from engine import events as ev
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config, EndpointingConfig, RtzrConfig
from engine.media import AudioReceived, StreamStarted
from engine.metrics import Registry
from engine.rtzr.stream import RtzrSocketLost
from engine.rtzr.tracker import LeaseResult
from engine.utterance import BLOCK_BYTES, UtteranceAudio

from .test_one_outcome import assert_one_outcome_each
from .test_pipeline_e2e import phrase_call

STARTED = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                        provider="test")


@pytest.mark.parametrize("compact", [False, True])
def test_blocks_read_back_exactly_in_any_chunking_and_release_only_answered_blocks(compact: bool) -> None:
    rng = np.random.default_rng(13)
    scale = 2 if compact else 1
    audio = UtteranceAudio(mulaw_as_pcm16=compact)
    stored = bytearray()
    for _ in range(300):
        chunk = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        audio.append(chunk)
        stored += chunk
        # Never more than one partly filled block beyond what is held (no growth slack).
        assert audio.held_bytes <= len(stored) - audio.start // scale + BLOCK_BYTES
        assert audio.size == len(stored) * scale
        if rng.random() < 0.2:
            before = audio.start
            offset = int(rng.integers(before, audio.size + 1)) // 2 * 2
            start = audio.release_before(offset)
            assert before <= start <= offset and (start // scale) % BLOCK_BYTES == 0
        start = audio.start
        offset = int(rng.integers(start, audio.size + 1)) // 2 * 2
        want = int(rng.integers(2, 5000)) // 2 * 2
        got = audio.read(offset, want)
        end = min(offset + want, audio.size)
        if compact:
            from engine.audio import mulaw
            expected = mulaw.decode(bytes(stored[offset // 2:end // 2])).astype("<i2").tobytes()
        else:
            expected = bytes(stored[offset:end])
        assert got == expected
    assert audio.start > 0
    with pytest.raises(ValueError):
        audio.read(audio.start - 2, 10)


def test_the_block_being_filled_is_never_released() -> None:
    audio = UtteranceAudio()
    audio.append(b"x" * (BLOCK_BYTES + 10))
    assert audio.release_before(10 * BLOCK_BYTES) == BLOCK_BYTES  # only the full first block
    audio.append(b"y" * 5)
    assert audio.read(BLOCK_BYTES, 100) == b"x" * 10 + b"y" * 5


class _RecordingLease:
    """Records every byte it is sent; scripted: a server cut after ``cut_after`` bytes, loss after ``lose_after``."""

    lease_ms = 0.0
    pool_hit = True

    def __init__(self, *, cut_at_ms: float | None, cut_after: int | None, lose_after: int | None) -> None:
        self.audio = bytearray()
        self.cut_at_ms = cut_at_ms
        self.cut_after = cut_after
        self.lose_after = lose_after
        self._cut_sent = False
        self._answered = False
        self._finalized = trio.Event()
        self._changed = trio.Event()

    @property
    def has_pending(self) -> bool:
        return True

    async def send_audio(self, pcm: bytes) -> None:
        self.audio += pcm
        self._changed.set()

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        self._finalized.set()
        self._changed.set()
        return True

    async def receive(self) -> LeaseResult:
        while True:
            if (self.cut_after is not None and not self._cut_sent and len(self.audio) >= self.cut_after
                    and self.cut_at_ms is not None):
                self._cut_sent = True
                return LeaseResult(final=True, text="잘린 앞부분", confidence=0.9, start_ms=0.0,
                                   duration_ms=self.cut_at_ms, seq=0)
            if self.lose_after is not None and len(self.audio) >= self.lose_after:
                raise RtzrSocketLost("dropped")
            if self._finalized.is_set():
                if self._answered:
                    await trio.sleep_forever()
                self._answered = True
                sent_ms = len(self.audio) / 16
                return LeaseResult(final=True, text="뒷부분", confidence=0.9, start_ms=100.0,
                                   duration_ms=sent_ms - 200.0, seq=1, closes=True)
            await self._changed.wait()
            self._changed = trio.Event()


class _CutThenLostPool:
    def __init__(self) -> None:
        self.leases: list[_RecordingLease] = []

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[_RecordingLease]:
        if not self.leases:  # cut at 2 s after 3 s were sent, lost after 4 s
            lease = _RecordingLease(cut_at_ms=2000.0, cut_after=3000 * 16, lose_after=4000 * 16)
        else:
            lease = _RecordingLease(cut_at_ms=None, cut_after=None, lose_after=None)
        self.leases.append(lease)
        yield lease


async def _play(call: Call, audio: bytes) -> None:
    for i in range(0, len(audio) - 159, 160):
        call.on_event(AudioReceived(audio[i:i + 160], i / 8))
        await trio.sleep(0.02)


async def test_a_replay_after_a_server_cut_starts_where_rtzr_answered(autojump_clock: trio.testing.MockClock) -> None:
    """Before: the replay re-sent the whole utterance from 0 (so all of it was kept until the final)."""
    audio, _ = phrase_call(["diary", "tonight", "ate", "dunno", "okay", "wait", "thanks"] * 2, gap_ms=0)
    events: list[ev.Event] = []
    pool = _CutThenLostPool()
    config = Config(rtzr=RtzrConfig(encoding="LINEAR16", sample_rate=8000),
                    endpointing=EndpointingConfig(end_ms=200, max_utterance_ms=60_000))
    call = Call(STARTED, config=config, pool=pool, emit=events.append, metrics=Registry(),
                budgets=Budgets(BudgetsConfig()))
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            await _play(call, audio)
            assert call._open[0].audio.start > 0  # released before the utterance ended
            call.on_close("stop")
    assert_one_outcome_each(events)
    started = [e for e in events if isinstance(e, ev.SpeechStarted)]
    assert len(started) == 1, "the test needs one long utterance"
    assert len(pool.leases) == 2
    first, replay = pool.leases
    assert len(first.audio) >= 4000 * 16
    # The replay started at a block boundary after 0 and before the cut's end (2 s, less the tolerance) ...
    assert replay.audio[:4000] != first.audio[:4000], "the replay re-sent the answered audio from 0"
    start = bytes(first.audio).find(bytes(replay.audio[:4000]))
    assert start > 0 and start % (2 * BLOCK_BYTES) == 0 and start <= (2000 - 20) * 16
    # ... it carries every byte from there on (nothing lost) ...
    assert bytes(replay.audio[:len(first.audio) - start]) == bytes(first.audio[start:])
    # ... and its final is placed on the call timeline, not at the utterance's start.
    finals = [e for e in events if isinstance(e, ev.TranscriptFinal)]
    assert [f.text for f in finals] == ["잘린 앞부분", "뒷부분"]
    assert finals[1].replayed and finals[1].source == "end_of_stream"
    utt_start = finals[0].start_ms
    assert finals[1].start_ms == pytest.approx(utt_start + start / 16 + 100.0, abs=0.1)


class _AnsweringPool:
    """Answers every Finalize with a closing final; the leases are dropped after use."""

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[_RecordingLease]:
        yield _RecordingLease(cut_at_ms=None, cut_after=None, lose_after=None)


async def test_an_utterance_audio_is_freed_once_its_final_arrived(autojump_clock: trio.testing.MockClock) -> None:
    audio, _ = phrase_call(["diary", "tonight"], gap_ms=1500)
    events: list[ev.Event] = []
    call = Call(STARTED, config=Config(endpointing=EndpointingConfig(end_ms=200)), pool=_AnsweringPool(),
                emit=events.append, metrics=Registry(), budgets=Budgets(BudgetsConfig()))
    started = 0

    def watch(event: ev.Event) -> None:
        nonlocal started
        events.append(event)
        started += isinstance(event, ev.SpeechStarted)

    def buffers_alive() -> int:
        gc.collect()
        return sum(isinstance(o, UtteranceAudio) for o in gc.get_objects())

    call.emit = watch
    before = buffers_alive()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            await _play(call, audio)
            await trio.sleep(1.0)  # the finals arrive while the call is still live (mock clock)
            assert started == 2 and not call._open and call._current is None
            assert buffers_alive() == before, "an utterance's audio is kept after its final"
            call.on_close("stop")
    assert [type(e).__name__ for e in events].count("TranscriptFinal") == 2

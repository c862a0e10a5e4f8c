"""Issue 13, the speaking path: a speaking call wakes its STT sender once per batch (not per 20 ms frame), and
speech frames are stored as the μ-law bytes received (not decoded and encoded again), byte for byte the same
audio for RTZR."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import events as ev
from engine.audio import mulaw
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, CallConfig, Config, EndpointingConfig, RtzrConfig
from engine.endpointing.batch import FrameBatch
from engine.media import AudioReceived, StreamStarted
from engine.metrics import Registry
from engine.turns import TurnTracker
from engine.utterance import UtteranceAudio

from .test_pipeline_e2e import phrase_call
from .test_utterance_memory import _RecordingLease

STARTED = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                        provider="test")


class _Pool:
    """Answers every Finalize with a closing final; keeps its leases (what each was sent)."""

    def __init__(self) -> None:
        self.leases: list[_RecordingLease] = []

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[_RecordingLease]:
        lease = _RecordingLease(cut_at_ms=None, cut_after=None, lose_after=None)
        self.leases.append(lease)
        yield lease


class _SenderSteps(trio.abc.Instrument):
    """Counts the steps (wake-ups) of the utterances' STT tasks (Call._transcribe runs the sender inline)."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Call._transcribe"):
            self.steps += 1


# -- wake-ups ------------------------------------------------------------------------------------------------

async def test_a_speaking_call_wakes_its_sender_once_per_batch_not_per_frame(
        autojump_clock: trio.testing.MockClock) -> None:
    """Before: UtteranceAudio.append set an event on every 20 ms frame, so the sender task ran once per frame
    (≈ 5 times per 100 ms batch) only to find the batch incomplete."""
    audio, _ = phrase_call(["diary", "tonight", "ate"], gap_ms=0)  # one utterance of several seconds
    pool = _Pool()
    events: list[ev.Event] = []
    config = Config(endpointing=EndpointingConfig(end_ms=200))
    call = Call(STARTED, config=config, pool=pool, emit=events.append, metrics=Registry(),
                budgets=Budgets(BudgetsConfig()))
    counter = _SenderSteps()
    speech_frames = 0
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            trio.lowlevel.add_instrument(counter)
            for i in range(0, len(audio) - 159, 160):
                call.on_event(AudioReceived(audio[i:i + 160], i / 8))
                speech_frames += call._current is not None
                await trio.testing.wait_all_tasks_blocked()  # the sender runs now if it was woken
            call.on_close("stop")
    trio.lowlevel.remove_instrument(counter)
    assert sum(isinstance(e, ev.SpeechStarted) for e in events) == 1
    assert [e.text for e in events if isinstance(e, ev.TranscriptFinal)] == ["뒷부분"]
    sent = len(pool.leases[0].audio)
    batches = -(-sent // call.batch_bytes)
    assert speech_frames >= 100 and batches >= speech_frames // 5
    # One step per batch sent, plus a handful: start, lease, Finalize, the final, the end. Per frame it was
    # at least speech_frames.
    assert counter.steps <= batches + 8, (counter.steps, batches, speech_frames)


async def test_wait_for_returns_only_at_the_size_asked_the_close_or_a_wake(
        autojump_clock: trio.testing.MockClock) -> None:
    audio = UtteranceAudio(mulaw_as_pcm16=True)
    woke: list[int] = []

    async def waiter(size: int) -> None:
        await audio.wait_for(size)
        woke.append(audio.size)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, 1600)  # 100 ms of LINEAR16: 800 stored μ-law bytes
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(4):
                audio.append(b"\xff" * 160)
                await trio.testing.wait_all_tasks_blocked()
                assert woke == []
            audio.append(b"\xff" * 160)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == [1600]
            nursery.start_soon(waiter, 3200)
            await trio.testing.wait_all_tasks_blocked()
            audio.wake()  # e.g. the lease failed
            await trio.testing.wait_all_tasks_blocked()
            assert woke == [1600, 1600]
            nursery.start_soon(waiter, 3200)
            await trio.testing.wait_all_tasks_blocked()
            audio.release_before(1600)  # releasing moves no offset: the size asked for still counts
            audio.append(b"\xff" * 10)
            await trio.testing.wait_all_tasks_blocked()
            assert len(woke) == 2
            audio.close()
            await trio.testing.wait_all_tasks_blocked()
            assert woke == [1600, 1600, 1620]
            await audio.wait_for(10**9)  # closed: at once
        with trio.move_on_after(1) as scope:  # a cancelled waiter leaves no waiter behind
            await UtteranceAudio().wait_for(1)
        assert scope.cancelled_caught


async def test_a_cancelled_wait_leaves_no_waiter_behind(autojump_clock: trio.testing.MockClock) -> None:
    audio = UtteranceAudio()
    with trio.move_on_after(1):
        await audio.wait_for(100)
    assert audio._waiter is None
    audio.append(b"x" * 200)  # nobody to wake: no error
    with trio.fail_after(1):
        await audio.wait_for(200)  # already there


# -- μ-law stored as received ----------------------------------------------------------------------------

@pytest.mark.parametrize("compact", [True, False])
def test_every_mulaw_code_stored_as_received_reads_back_as_the_reencoded_one(compact: bool) -> None:
    """compact: RTZR wants LINEAR16 (codes expanded on read); not compact: RTZR wants μ-law (sent as stored)."""
    codes = bytes(range(256)) * 3
    raw, reencoded = UtteranceAudio(mulaw_as_pcm16=compact), UtteranceAudio(mulaw_as_pcm16=compact)
    for i in range(0, len(codes), 160):
        raw.append_mulaw(codes[i:i + 160])
        reencoded.append_pcm(mulaw.decode(codes[i:i + 160]), mulaw_out=not compact)
    assert raw.size == reencoded.size == len(codes) * (2 if compact else 1)
    assert raw.read(0, raw.size) == reencoded.read(0, reencoded.size)
    if compact:
        assert raw.read(0, 512) == mulaw.decode(bytes(range(256))).astype("<i2").tobytes()
    else:  # 0x7F ("negative zero") is the one code the re-encoding changed (to 0xFF)
        assert raw.read(0, 256) == bytes(range(127)) + b"\xff" + bytes(range(128, 256))


def _noisy_call(seed: int) -> bytes:
    """Speech with every μ-law code in it: zero samples as 0x7F or 0xFF at random, and random codes."""
    rng = np.random.default_rng(seed)
    audio = np.frombuffer(phrase_call(["diary", "tonight"], gap_ms=600, lead_ms=300)[0], dtype=np.uint8).copy()
    zeros = np.flatnonzero(audio == 0xFF)
    audio[zeros[rng.random(len(zeros)) < 0.5]] = 0x7F
    spots = rng.random(len(audio)) < 0.02
    audio[spots] = rng.integers(0, 256, int(spots.sum()), dtype=np.uint8)
    return audio.tobytes()


def _chunks(audio: bytes, seed: int, odd: bool) -> list[bytes]:
    """160-byte frames (Twilio's), or frames of any length when ``odd``."""
    rng = np.random.default_rng(seed)
    out, pos = [], 0
    while pos < len(audio):
        n = int(rng.integers(1, 500)) if odd and rng.random() < 0.3 else 160
        out.append(audio[pos:pos + n])
        pos += n
    return out


async def _sent(config: Config, chunks: list[bytes], *, raw: bool, batched: bool) -> list[bytes]:
    """What each lease was sent, the call fed ``chunks`` (in a FrameBatch wake-up each, two at a time now
    and then, when ``batched``); ``raw=False`` is the path before: every speech frame decoded and re-encoded."""
    pool = _Pool()
    call = Call(STARTED, config=config, pool=pool, emit=lambda e: None, metrics=Registry(),
                budgets=Budgets(BudgetsConfig()))
    call._raw_ok = call._raw_ok and raw
    batch = FrameBatch()
    if batched:
        call.attach_batch(batch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.run)
        at = 0
        for k, chunk in enumerate(chunks):
            batch.begin()
            call.on_event(AudioReceived(chunk, at / 8))
            if k % 7 == 3:  # a second chunk of the same call in one wake-up
                call.on_event(AudioReceived(b"\xff" * 160, at / 8))
                at += 160
            batch.end()
            at += len(chunk)
            await trio.testing.wait_all_tasks_blocked()
        call.on_close("stop")
    return [bytes(lease.audio) for lease in pool.leases]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), stt_mulaw=st.booleans(), batched=st.booleans(), odd=st.booleans())
def test_rtzr_receives_the_same_bytes_when_frames_are_stored_as_received(
        seed: int, stt_mulaw: bool, batched: bool, odd: bool) -> None:
    config = Config(rtzr=RtzrConfig(encoding="MULAW" if stt_mulaw else "LINEAR16", sample_rate=8000),
                    endpointing=EndpointingConfig(end_ms=200))
    chunks = _chunks(_noisy_call(seed), seed, odd)

    async def main() -> tuple[list[bytes], list[bytes]]:
        with trio.fail_after(60):
            return (await _sent(config, chunks, raw=True, batched=batched),
                    await _sent(config, chunks, raw=False, batched=batched))

    now, before = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(now) >= 1 and sum(map(len, now)) > 8000
    assert now == before


async def test_speech_frames_are_not_encoded_again(monkeypatch: pytest.MonkeyPatch,
                                                   autojump_clock: trio.testing.MockClock) -> None:
    """Before: every 20 ms speech frame went through mulaw.encode (a 64 Ki-entry table lookup, ~3 µs)."""
    audio, _ = phrase_call(["diary", "tonight"], gap_ms=1200)
    encoded: list[int] = []
    real = mulaw.encode

    def counting(pcm: np.ndarray) -> bytes:  # type: ignore[type-arg]
        encoded.append(len(pcm))
        return real(pcm)

    monkeypatch.setattr(mulaw, "encode", counting)
    with trio.fail_after(60):
        sent = await _sent(Config(endpointing=EndpointingConfig(end_ms=200)), _chunks(audio, 0, False),
                           raw=True, batched=True)
    assert len(sent) == 2
    # Only each utterance's pre-roll and confirming run (from the endpointer's history) are encoded.
    assert len(encoded) == 2 * len(sent), encoded


# -- the buffer bound, checked without summing every open utterance per frame --------------------------

class _ExactCall(Call):
    """Records, at every append, the old rule's verdict (the exact sum of unsent bytes) next to the call's."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.checks: list[tuple[bool, bool]] = []

    def _append(self, pcm: np.ndarray, start: int) -> None:  # type: ignore[type-arg]
        utt = self._current
        if utt is None or not len(pcm) or utt.overflowed:
            super()._append(pcm, start)
            return
        exact = self._unsent_bytes() + len(pcm) * self.stt_sample_bytes > self.buffer_limit_bytes
        super()._append(pcm, start)
        self.checks.append((exact, utt.overflowed))


class _SlowLease(_RecordingLease):
    def __init__(self, delay: float, lose_after: int | None) -> None:
        super().__init__(cut_at_ms=None, cut_after=None, lose_after=lose_after)
        self.delay = delay

    async def send_audio(self, pcm: bytes) -> None:
        await trio.sleep(self.delay)
        await super().send_audio(pcm)


class _SlowPool:
    """Every other lease is lost after ``lose_after`` bytes (a replay, which sends the utterance again)."""

    def __init__(self, delay: float, lose_after: int) -> None:
        self.delay, self.lose_after, self.leases = delay, lose_after, 0

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[_SlowLease]:
        self.leases += 1
        yield _SlowLease(self.delay, self.lose_after if self.leases % 2 else None)


@pytest.mark.parametrize(("delay", "lose_after"), [(0.05, 8000), (0.11, 16000), (0.16, 4000), (0.3, 2000)])
async def test_the_buffer_bound_decides_as_the_exact_sum_at_every_append(
        delay: float, lose_after: int, autojump_clock: trio.testing.MockClock) -> None:
    """Slow sends (RTZR slower than real time from 0.11 s per 100 ms batch) and replays (the unsent bytes
    jump back): the overflow comes at the very append where the sum over open utterances says so."""
    audio, _ = phrase_call(["diary", "tonight", "ate", "dunno"] * 2, gap_ms=300)
    events: list[ev.Event] = []
    config = Config(endpointing=EndpointingConfig(end_ms=200), call=CallConfig(audio_buffer_ms=1500))
    pool = _SlowPool(delay, lose_after)
    call = _ExactCall(STARTED, config=config, pool=pool, emit=events.append, metrics=Registry(),
                      budgets=Budgets(BudgetsConfig()))
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            for i in range(0, len(audio) - 159, 160):
                call.on_event(AudioReceived(audio[i:i + 160], i / 8))
                await trio.sleep(0.02)  # the mock clock: frames arrive in real time
            call.on_close("stop")
    assert len(call.checks) > 300
    assert [exact for exact, _ in call.checks] == [got for _, got in call.checks]
    assert pool.leases >= 2 and call.stats.replays >= 1
    overflows = sum(got for _, got in call.checks)
    assert (overflows > 0) == (delay > 0.1), "the scenario overflows when RTZR is slower than real time"


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["start", "done", "final", "empty", "advance", "flush"]),
                              st.floats(0, 5000), st.booleans()), max_size=40))
def test_turns_may_end_is_false_only_when_advance_cannot_end_a_turn(ops: list[tuple[str, float, bool]]) -> None:
    """Call skips advance (and computing its arguments) on every frame while may_end is False."""
    turns = TurnTracker(600.0)
    for i, (op, ms, flag) in enumerate(ops):
        if op == "start":
            turns.speech_started(continues=flag)
        elif op == "done":
            turns.utterance_done()
        elif op in ("final", "empty"):
            turns.add_final(f"u{i}", "말" if op == "final" else "", ms, ms + 100)
        elif op == "flush":
            turns.flush()
        else:
            may_end = turns.may_end
            ended = turns.advance(ms + 10_000, continuation_possible=flag)
            assert may_end or ended is None
            if not flag:
                assert (ended is not None) == may_end

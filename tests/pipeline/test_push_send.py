"""Issue 13, the STT side: with a lease that can send from synchronous code (engine.stt.PushLease), each 100 ms
batch is written by the appender in the reader's pass, not by waking the utterance's task; the bytes RTZR
gets are the same, and every case the push cannot handle (a refused write, a partly written message, a
failure, a cancelled utterance) goes back to the task."""

from __future__ import annotations

import gc
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from engine import events as ev
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config, EndpointingConfig
from engine.media import AudioReceived
from engine.metrics import Registry

from .test_pipeline_e2e import phrase_call
from .test_speaking_path import STARTED, _Pool, _SenderSteps
from .test_utterance_memory import _RecordingLease


class _PushLease(_RecordingLease):
    """A PushLease: records what each path sent; ``refuse(n)`` says whether the n-th push is refused,
    ``partial(n)`` whether it leaves a tail for flush()."""

    def __init__(self, refuse: int = 0, partial: int = 0, lose_after: int | None = None) -> None:
        super().__init__(cut_at_ms=None, cut_after=None, lose_after=lose_after)
        self.refuse_every = refuse
        self.partial_every = partial
        self.pushes = 0
        self.pushed = 0  # messages written by send_audio_nowait
        self.awaited = 0  # messages written by send_audio
        self.flushes = 0
        self.write_pending = False
        self.fail_next_push = False
        self.messages: list[tuple[str, int]] = []  # ("push" | "send", bytes) per message, then ("finalize", 0)

    def send_audio_nowait(self, pcm: bytes) -> int:
        self.pushes += 1
        assert not self.write_pending, "a push while a tail is pending"
        if self.refuse_every and self.pushes % self.refuse_every == 0:
            return 0
        self.audio += pcm
        self.pushed += 1
        self.messages.append(("push", len(pcm)))
        self._changed.set()
        if self.partial_every and self.pushes % self.partial_every == 0:
            self.write_pending = True
            return 2
        return 1

    async def send_audio(self, pcm: bytes) -> None:
        assert not self.write_pending, "a message overtook a partly written one"
        self.awaited += 1
        self.messages.append(("send", len(pcm)))
        await super().send_audio(pcm)

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        self.messages.append(("finalize", 0))
        return await super().finalize(speech_end_ms)

    async def flush(self) -> None:
        self.flushes += 1
        self.write_pending = False


class _PushPool(_Pool):
    def __init__(self, **kw: int) -> None:
        super().__init__()
        self.kw = kw

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[_PushLease]:  # type: ignore[override]
        lease = _PushLease(**self.kw) if not self.leases else _PushLease()  # a replay's lease: a plain one
        self.leases.append(lease)
        yield lease


async def _speak(pool: _Pool, counter: _SenderSteps | None = None) -> tuple[Call, list[ev.Event], list[bool]]:
    """One utterance of several seconds, fed frame by frame; per frame: did a push write during on_event."""
    audio, _ = phrase_call(["diary", "tonight", "ate"], gap_ms=0)
    events: list[ev.Event] = []
    call = Call(STARTED, config=Config(endpointing=EndpointingConfig(end_ms=200)), pool=pool,
                emit=events.append, metrics=Registry(), budgets=Budgets(BudgetsConfig()))
    synchronous: list[bool] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            if counter is not None:
                trio.lowlevel.add_instrument(counter)
            for i in range(0, len(audio) - 159, 160):
                lease = pool.leases[-1] if pool.leases else None
                before = len(lease.audio) if lease is not None else 0
                call.on_event(AudioReceived(audio[i:i + 160], i / 8))
                synchronous.append(lease is not None and len(lease.audio) > before)  # no checkpoint since
                await trio.testing.wait_all_tasks_blocked()
            call.on_close("stop")
    if counter is not None:
        trio.lowlevel.remove_instrument(counter)
    return call, events, synchronous


async def test_batches_are_pushed_from_the_append_with_no_sender_wake_up(
        autojump_clock: trio.testing.MockClock) -> None:
    plain, pushing = _Pool(), _PushPool()
    await _speak(plain)
    counter = _SenderSteps()
    call, events, synchronous = await _speak(pushing, counter)
    lease = pushing.leases[0]
    assert isinstance(lease, _PushLease)
    assert bytes(lease.audio) == bytes(plain.leases[0].audio)  # the same bytes, in the same order
    assert [e.text for e in events if isinstance(e, ev.TranscriptFinal)] == ["뒷부분"]
    assert lease.pushed >= 20 and sum(synchronous) == lease.pushed  # each written inside on_event
    # The task ran for the start, the pre-roll, the close, Finalize and the final: not once per batch.
    assert counter.steps <= 10, (counter.steps, lease.pushed)
    assert call.stats.bytes_sent == len(lease.audio)


async def test_a_refused_push_hands_the_batch_to_the_task(autojump_clock: trio.testing.MockClock) -> None:
    plain, pushing = _Pool(), _PushPool(refuse=3)
    await _speak(plain)
    _, _, _ = await _speak(pushing)
    lease = pushing.leases[0]
    assert isinstance(lease, _PushLease)
    assert bytes(lease.audio) == bytes(plain.leases[0].audio)
    assert lease.awaited >= lease.pushes // 3 > 3  # every refused batch was sent by the task


async def test_a_partly_written_push_is_flushed_by_the_task_before_anything_else(
        autojump_clock: trio.testing.MockClock) -> None:
    plain, pushing = _Pool(), _PushPool(partial=4)
    await _speak(plain)
    await _speak(pushing)
    lease = pushing.leases[0]
    assert isinstance(lease, _PushLease)
    assert bytes(lease.audio) == bytes(plain.leases[0].audio)
    assert lease.flushes >= lease.pushes // 4 > 3 and not lease.write_pending


async def test_no_push_after_the_utterance_was_cancelled(
        autojump_clock: trio.testing.MockClock) -> None:
    pool = _PushPool()
    audio, _ = phrase_call(["diary", "tonight", "ate"], gap_ms=0)
    call = Call(STARTED, config=Config(endpointing=EndpointingConfig(end_ms=200)), pool=pool,
                emit=lambda e: None, metrics=Registry(), budgets=Budgets(BudgetsConfig()))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            i = 0
            while not pool.leases or pool.leases[0].pushed < 3:
                call.on_event(AudioReceived(audio[i:i + 160], i / 8))
                i += 160
                await trio.testing.wait_all_tasks_blocked()
            lease = pool.leases[0]
            utt = call._current
            assert utt is not None
            utt.scope.cancel()  # as an audio overflow does: the task has not run since
            pushes = lease.pushes
            for _ in range(20):  # a whole batch arrives before the cancelled task runs
                call.on_event(AudioReceived(audio[i:i + 160], i / 8))
                i += 160
            assert lease.pushes == pushes  # the appender sent nothing for a cancelled utterance
            await trio.testing.wait_all_tasks_blocked()
            call.on_close("stop")


async def test_no_push_to_a_lost_lease_and_the_replay_pushes_on_a_fresh_one(
        autojump_clock: trio.testing.MockClock) -> None:
    pool = _PushPool(lose_after=8000)  # the first lease is lost after 8000 bytes
    await _speak(pool)
    first = pool.leases[0]
    assert isinstance(first, _PushLease)
    # Lost at 8000 bytes: the push that crossed it was the last (the receiver's failure stops the pushes).
    assert 8000 <= len(first.audio) < 8000 + 2 * 1600
    assert len(pool.leases) == 2 and pool.leases[1].pushed > 0  # the replay pushed on its own lease


async def test_one_message_per_100_ms_batch_and_the_last_partial_batch_before_finalize(
        autojump_clock: trio.testing.MockClock) -> None:
    """The batch boundary (issue 13, round 4): every push is exactly one 100 ms batch (1600 bytes of LINEAR16),
    none is sent per 20 ms frame, and the tail shorter than a batch goes out at the close, before Finalize."""
    pool = _PushPool()
    call, _, synchronous = await _speak(pool)
    lease = pool.leases[0]
    assert isinstance(lease, _PushLease)
    batch = call.batch_bytes
    assert batch == 1600
    kinds = [kind for kind, _ in lease.messages]
    assert kinds[-1] == "finalize" and kinds.count("finalize") == 1
    audio_messages = lease.messages[:-1]
    pushes = [n for kind, n in audio_messages if kind == "push"]
    assert len(pushes) >= 20 and all(n == batch for n in pushes)  # whole batches only, one message each
    assert sum(synchronous) == len(pushes)  # one push per batch, in the append that completed it
    assert len(synchronous) >= 4 * len(pushes)  # ... so not one per 20 ms frame
    tail = audio_messages[-1][1]
    assert sum(n for _, n in audio_messages) == len(lease.audio) == call.stats.bytes_sent
    assert len(lease.audio) % batch == tail % batch  # the last (partial) batch, sent before the Finalize


class _KeepingPushLease(_PushLease):
    """Keeps every batch the task itself sent (send_audio), to see who else still refers to it."""

    def __init__(self) -> None:
        super().__init__()
        self.awaited_batches: list[bytes] = []

    async def send_audio(self, pcm: bytes) -> None:
        self.awaited_batches.append(pcm)
        await super().send_audio(pcm)


async def test_the_sleeping_sender_keeps_no_batch_it_sent(autojump_clock: trio.testing.MockClock) -> None:
    """Issue 13, memory per call: once the pushes carry the utterance the task sleeps for its whole life; the
    batch it sent itself (the pre-roll's) must not stay referenced by its frame (100 ms of audio per open
    utterance)."""
    pool = _Pool()
    lease = _KeepingPushLease()

    @asynccontextmanager
    async def lease_cm() -> AsyncIterator[_PushLease]:
        pool.leases.append(lease)
        yield lease

    pool.lease = lease_cm  # type: ignore[method-assign]
    audio, _ = phrase_call(["diary", "tonight", "ate"], gap_ms=0)
    call = Call(STARTED, config=Config(endpointing=EndpointingConfig(end_ms=200)), pool=pool,
                emit=lambda e: None, metrics=Registry(), budgets=Budgets(BudgetsConfig()))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            i = 0
            while lease.pushed < 5:  # the pushes carry the utterance now, its task waits in wait_for
                call.on_event(AudioReceived(audio[i:i + 160], i / 8))
                i += 160
                await trio.testing.wait_all_tasks_blocked()
            assert lease.awaited_batches, "the task sent the first batch itself"
            for batch in lease.awaited_batches:
                # a suspended coroutine's locals are referred to by the coroutine object itself
                holders = [r for r in gc.get_referrers(batch)
                           if isinstance(r, types.CoroutineType) and r.cr_code.co_name == "_send_and_finalize"]
                assert not holders, "the sender's frame still holds a batch it sent"
            call.on_close("stop")
    assert call.stats.bytes_sent == len(lease.audio)

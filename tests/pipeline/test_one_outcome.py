"""Issue 11, defects 2 and 9: one outcome per speech.started (finals, or one error, never both), and
saturation (few RTZR sessions, audio faster than real time) degrades latency instead of losing words."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import trio
import trio.testing

from engine import events as ev
from engine.audio import mulaw
from engine.budgets import BudgetExpired, Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config, EndpointingConfig
from engine.media import AudioReceived, StreamStarted
from engine.metrics import Registry
from engine.rtzr.emulator import EmulatorConfig
from engine.rtzr.stream import RtzrSocketLost
from engine.rtzr.tracker import LeaseResult
from engine.twilio.simulator import load_audio, simulate_call

from .test_pipeline_e2e import DEMO, make_config, phrase_call, running_engine

# end_ms 200: one utterance per demo phrase (the default 80 makes its 90 ms word gaps continuations)
ONE_PER_PHRASE = Config(endpointing=EndpointingConfig(end_ms=200))


def outcomes(events: list[ev.Event]) -> dict[str, tuple[int, int]]:
    """utterance id -> (finals, errors), for every speech.started."""
    finals = Counter(e.utterance_id for e in events if isinstance(e, ev.TranscriptFinal))
    errors = Counter(e.utterance_id for e in events if isinstance(e, ev.ErrorEvent) and e.utterance_id)
    return {e.utterance_id: (finals[e.utterance_id], errors[e.utterance_id])
            for e in events if isinstance(e, ev.SpeechStarted)}


def assert_one_outcome_each(events: list[ev.Event]) -> dict[str, tuple[int, int]]:
    got = outcomes(events)
    both = {uid: o for uid, o in got.items() if o[0] and o[1]}
    none = {uid: o for uid, o in got.items() if not o[0] and not o[1]}
    several_errors = {uid: o for uid, o in got.items() if o[1] > 1}
    assert not both and not none and not several_errors, (both, none, several_errors)
    return got


class CutThenSilentLease:
    """A server that cuts the utterance (final with start_at 0, duration 1200, as a third-party mock
    did) and never answers the Finalize: the finalize budget expires after a final was emitted."""

    lease_ms = 0.0
    pool_hit = True

    def __init__(self) -> None:
        self._sent = trio.Event()
        self._cut_sent = False

    @property
    def has_pending(self) -> bool:
        return True

    async def send_audio(self, pcm: bytes) -> None:
        self._sent.set()

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        return True

    async def receive(self) -> LeaseResult:
        await self._sent.wait()
        if not self._cut_sent:
            self._cut_sent = True
            return LeaseResult(final=True, text="잘린 앞부분", confidence=0.9, start_ms=0.0, duration_ms=1200.0, seq=0)
        await trio.sleep(3600)
        raise BudgetExpired("finalize", 2000)


class OneLeasePool:
    def __init__(self) -> None:
        self.leases = 0

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[CutThenSilentLease]:
        self.leases += 1
        yield CutThenSilentLease()


async def test_server_cut_final_then_unanswered_finalize_is_one_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defect 2: the utterance got a transcript.final and, 2 s later, an error 'budget finalize expired'."""
    audio, _ = phrase_call(["diary"])
    events: list[ev.Event] = []
    started = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                      provider="test")
    call = Call(started, config=ONE_PER_PHRASE, pool=OneLeasePool(), emit=events.append, metrics=Registry(),
                budgets=Budgets(BudgetsConfig(finalize=2000)))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            for i in range(0, len(audio), 160):
                call.on_event(AudioReceived(audio[i:i + 160], i / 8))
                await trio.sleep(0.02)
            call.on_close("stop")
    got = assert_one_outcome_each(events)
    assert list(got.values()) == [(1, 0)]
    assert call.metrics.value("utterance_incomplete_total") == 1


class CutThenLost(CutThenSilentLease):
    """A server cut, then the socket dies before the answer to our Finalize."""

    async def receive(self) -> LeaseResult:
        first = await super().receive() if not self._cut_sent else None
        if first is not None:
            return first
        raise RtzrSocketLost("dropped")


class CutThenLostPool:
    """The first lease cuts then dies; the replay cannot get a socket (lease budget)."""

    def __init__(self) -> None:
        self.leases = 0

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[CutThenSilentLease]:
        self.leases += 1
        if self.leases > 1:
            raise BudgetExpired("lease", 10_000)
        yield CutThenLost()


def _call(pool: object, events: list[ev.Event], budgets: BudgetsConfig) -> Call:
    started = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                      provider="test")
    return Call(started, config=ONE_PER_PHRASE, pool=pool, emit=events.append, metrics=Registry(), budgets=Budgets(budgets))


async def _play(call: Call, audio: bytes) -> None:
    for i in range(0, len(audio), 160):
        call.on_event(AudioReceived(audio[i:i + 160], i / 8))
        await trio.sleep(0.02)
    call.on_close("stop")


async def test_replay_failing_after_a_server_cut_final_is_one_outcome(autojump_clock: trio.testing.MockClock) -> None:
    """Review finding: only the finalize-budget path checked for finals already emitted."""
    audio, _ = phrase_call(["diary"])
    events: list[ev.Event] = []
    call = _call(CutThenLostPool(), events, BudgetsConfig())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            await _play(call, audio)
    assert list(assert_one_outcome_each(events).values()) == [(1, 0)]
    assert call.metrics.value("utterance_incomplete_total") == 1


async def test_drain_deadline_after_a_server_cut_final_is_one_outcome(autojump_clock: trio.testing.MockClock) -> None:
    audio, _ = phrase_call(["diary"])
    events: list[ev.Event] = []
    call = _call(OneLeasePool(), events, BudgetsConfig(finalize=60_000))
    with trio.fail_after(120):
        with trio.CancelScope() as drain:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call.run)
                await _play(call, audio)
                drain.deadline = trio.current_time() + 1.0  # the drain budget cancels the call mid-utterance
    assert list(assert_one_outcome_each(events).values()) == [(1, 0)]


async def test_audio_faster_than_real_time_gives_each_utterance_exactly_one_outcome() -> None:
    """Defect 2, second repro: a long call played at --speed fast (a Twilio backlog after a stall) gave
    utterances both an error (audio_buffer_overflow, lease budget) and a final."""
    call = load_audio(str(DEMO / "call.wav"))
    silence = mulaw.encode(np.zeros(8000, dtype=np.int16))
    audio = (call + silence) * 6  # ~1 minute, 24 utterances, delivered as fast as the socket takes it
    # one RTZR session and a 3 s buffer: most utterances wait, many overflow (on the old code: 17 of 24 got
    # a final AND an error, 4 got two errors)
    config = make_config("call.audio_buffer_ms=3000", "rtzr.pool.max_sessions=1", "rtzr.pool.spare=1")
    with trio.fail_after(240):  # only against a hang (~6 s here): a loaded machine is slower, not wrong
        async with running_engine(config, EmulatorConfig(host="127.0.0.1", port=0)) as (_engine, got):
            report = await simulate_call(_engine.twilio_url, audio, speed="fast", trailing_silence_ms=1000)
            assert report.error is None
            await got.wait_ended(1)
    result = assert_one_outcome_each(got.events)
    assert len(result) == 24
    finals = [e for e in got.events if isinstance(e, ev.TranscriptFinal)]
    assert finals, "some utterances must be transcribed"
    ended = next(e for e in got.events if isinstance(e, ev.CallEnded))
    assert ended.utterances == 24


async def test_ten_concurrent_calls_on_five_sessions_lose_no_words() -> None:
    """Defect 9: ten concurrent demo calls on the defaults (5 sessions) lost 6 of 40 utterances to the lease
    budget. Waiting utterances now queue for a socket, their audio buffered, and are sent once leased."""
    audio, texts = phrase_call(["diary", "tonight", "ate", "dunno"], gap_ms=700)
    # 40 utterances arrive at once (speed fast) for 5 sockets: the last lessee waits for ~8 rounds of
    # send + Finalize + final. That wait is CPU time on this one event loop (the emulator is in process):
    # ~2 s here, 5.9 s with the test at a third of a core, 10.8 s at a sixth (over the 10 s default; the
    # 1.5 s finalize of make_config reached 1.3 s). The budgets are raised far past what a loaded machine
    # reaches; the test still fails if an utterance is lost, errors, or is never served.
    with trio.fail_after(240):
        async with running_engine(make_config("budgets.lease=60000", "budgets.finalize=15000")) as (engine, got):
            async with trio.open_nursery() as n:
                for _ in range(10):
                    n.start_soon(lambda: simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=800))
            await got.wait_ended(10)
            assert engine.pool.high_water <= 5
    assert [e for e in got.events if isinstance(e, ev.ErrorEvent)] == []
    by_call: dict[str, list[str]] = {}
    for e in got.events:
        if isinstance(e, ev.TranscriptFinal):
            by_call.setdefault(e.call_sid, []).append(e.text)
    assert len(by_call) == 10 and all(t == texts for t in by_call.values())
    assert engine.metrics.value("rtzr_pool_leases_total", "result=timeout") == 0

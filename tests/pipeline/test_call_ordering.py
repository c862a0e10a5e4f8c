"""Finals within a call come out in utterance order even when a later utterance's socket answers first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from engine import events as ev
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config, EndpointingConfig
from engine.media import AudioReceived, StreamStarted
from engine.metrics import Registry
from engine.rtzr.tracker import LeaseResult

from .test_pipeline_e2e import phrase_call


class SlowFinalLease:
    """A lease whose final arrives ``delay`` seconds after Finalize."""

    lease_ms = 0.0
    pool_hit = True

    def __init__(self, delay: float, text: str) -> None:
        self.delay = delay
        self.text = text
        self.sent = 0
        self._finalized = trio.Event()
        self._done = False

    @property
    def has_pending(self) -> bool:
        return not self._done

    async def send_audio(self, pcm: bytes) -> None:
        self.sent += len(pcm)

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        self._finalized.set()
        return True

    async def receive(self) -> LeaseResult:
        if self._done:
            await trio.sleep_forever()
        await self._finalized.wait()
        await trio.sleep(self.delay)
        self._done = True
        return LeaseResult(final=True, text=self.text, confidence=0.9, start_ms=300.0,
                           duration_ms=self.sent / 16, seq=0, closes=True)


class ScriptedPool:
    def __init__(self, leases: list[SlowFinalLease]) -> None:
        self.leases = leases

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[SlowFinalLease]:
        yield self.leases.pop(0)


async def test_a_later_utterance_answered_first_waits_for_the_earlier_one(autojump_clock: trio.testing.MockClock) -> None:
    audio, texts = phrase_call(["diary", "tonight", "ate"])
    pool = ScriptedPool([SlowFinalLease(4.0, texts[0]), SlowFinalLease(0.1, texts[1]), SlowFinalLease(0.1, texts[2])])
    events: list[ev.Event] = []
    started = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                      provider="test")
    # end_ms 200: one utterance per demo phrase (the default 80 makes its 90 ms word gaps continuations)
    config = Config(endpointing=EndpointingConfig(end_ms=200))
    call = Call(started, config=config, pool=pool, emit=events.append, metrics=Registry(),
                budgets=Budgets(BudgetsConfig(finalize=10_000)))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            for i in range(0, len(audio), 160):
                call.on_event(AudioReceived(audio[i:i + 160], i / 8))
                await trio.sleep(0.02)  # real-time pacing on the mock clock
            call.on_close("stop")
    finals = [e for e in events if isinstance(e, ev.TranscriptFinal)]
    assert [f.text for f in finals] == texts
    assert [f.utterance_id for f in finals] == ["MZ1:0", "MZ1:1", "MZ1:2"]
    assert all(f.latency is not None for f in finals)
    # utterance 1's final arrived ~0.1 s after its Finalize but was held until utterance 0 settled
    assert finals[1].latency is not None and finals[1].latency.total_ms > finals[1].latency.stt_ms + 200
    turns = [e for e in events if isinstance(e, ev.TurnEnded)]
    assert " ".join(t.text for t in turns) == " ".join(texts)
    # Issue 13 (mem2): the set of utterances settled out of order lives only while one waits for an earlier one.
    assert call._settled is None  # old code: an empty set for the call's whole life (216 B)

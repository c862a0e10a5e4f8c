"""engine.stt: the vendor-neutral STT interfaces. RTZR's errors are kinds of the neutral ones, and Call
treats any vendor's errors by their neutral kind (a lost stream is replayed once), not by RTZR's names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from engine import events as ev
from engine import stt
from engine.config import BudgetsConfig
from engine.rtzr.auth import RtzrAuthError
from engine.rtzr.protocol import RtzrProtocolError
from engine.rtzr.stream import RtzrConnectError, RtzrHandshakeError, RtzrSaturated, RtzrSocketLost
from engine.rtzr.tracker import LeaseResult

from .test_one_outcome import _call, _play
from .test_pipeline_e2e import phrase_call


@pytest.mark.parametrize(("rtzr", "neutral"), [
    (RtzrConnectError, stt.SttUnavailable),
    (RtzrHandshakeError, stt.SttUnavailable),
    (RtzrSaturated, stt.SttSaturated),
    (RtzrSocketLost, stt.SttStreamLost),
    (RtzrProtocolError, stt.SttProtocolError),
    (RtzrAuthError, stt.SttAuthError),
])
def test_rtzr_errors_are_kinds_of_the_neutral_ones(rtzr: type[Exception], neutral: type[Exception]) -> None:
    assert issubclass(rtzr, neutral) and issubclass(rtzr, stt.SttError)


def test_saturated_keeps_its_http_status_and_both_kinds() -> None:
    exc = RtzrSaturated(429, "quota")
    assert exc.status == 429 and isinstance(exc, RtzrHandshakeError) and isinstance(exc, stt.SttSaturated)
    # an auth failure is not a reason to replay; a protocol error is not one by itself either
    assert not issubclass(RtzrAuthError, stt.SttUnavailable)
    assert not issubclass(RtzrProtocolError, stt.SttUnavailable)


def test_the_rtzr_result_is_the_neutral_result() -> None:
    assert LeaseResult is stt.SttResult


class AcmeStreamDropped(stt.SttStreamLost):
    """Another vendor's lost stream: Call knows it only as an SttStreamLost."""


class AcmeLease:
    lease_ms = 0.0
    pool_hit = True

    def __init__(self, drop: bool) -> None:
        self._drop = drop
        self._finalized = trio.Event()

    @property
    def has_pending(self) -> bool:
        return not self._finalized.is_set()

    async def send_audio(self, pcm: bytes) -> None:
        if self._drop:
            raise AcmeStreamDropped("acme: stream reset")

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        self._finalized.set()
        return True

    async def receive(self) -> stt.SttResult:
        await self._finalized.wait()
        return stt.SttResult(final=True, text="오늘 일기", confidence=0.9, start_ms=0.0, duration_ms=800.0, seq=0,
                             closes=True)


class AcmePool:
    """The first lease's stream drops; the second answers."""

    def __init__(self) -> None:
        self.leases = 0

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[AcmeLease]:
        self.leases += 1
        yield AcmeLease(drop=self.leases == 1)


async def test_another_vendors_lost_stream_is_replayed_once(autojump_clock: trio.testing.MockClock) -> None:
    # Before engine.stt, Call caught only RTZR's classes: this error became "stt_failed", with no replay.
    audio, _ = phrase_call(["diary"])
    events: list[ev.Event] = []
    pool = AcmePool()
    call = _call(pool, events, BudgetsConfig())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.run)
            await _play(call, audio)
    finals = [e for e in events if isinstance(e, ev.TranscriptFinal)]
    errors = [e for e in events if isinstance(e, ev.ErrorEvent)]
    assert not errors, errors
    assert [(f.text, f.replayed) for f in finals] == [("오늘 일기", True)]
    assert pool.leases == 2 and call.stats.replays == 1

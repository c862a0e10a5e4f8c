"""Issue 13, round 5 (the knee): a late reactor pass leaves two 20 ms packets of one Twilio call in its socket.
The second joins the first (Call._may_join) and the call re-adds itself to the batch with both
(FrameBatch.add_packets): the pass decides them in rounds on the packet path and Call.batch_packets hands them
to the endpointer one by one. What the call emits (speech, finals, turns, in order, field for field) and what
each lease is sent must be what the same packets give one per pass."""

from __future__ import annotations

from typing import Any

import msgspec
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import events as ev
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config, EndpointingConfig, RtzrConfig
from engine.endpointing.batch import FrameBatch
from engine.media import AudioReceived
from engine.metrics import Registry

from .test_speaking_path import STARTED, _noisy_call, _Pool


class _Counting(Call):
    """Counts the passes that handed this call several packets at once (the test is not vacuous)."""

    several = 0
    general = 0  # the batch's general path (batch_audio but for _decide_alone's: a second chunk that may not join)
    _alone = False

    def batch_packets(self, pcms: list[Any], speech: list[bool]) -> None:
        self.several += 1
        super().batch_packets(pcms, speech)

    def batch_audio(self, pcm: Any) -> None:
        self.general += not self._alone
        super().batch_audio(pcm)

    def _decide_alone(self) -> None:
        self._alone = True
        try:
            super()._decide_alone()
        finally:
            self._alone = False


async def _drive(config: Config, packets: list[bytes], doubled: set[int]) -> tuple[list[Any], list[bytes], int, int]:
    """One pass per packet, except that packet k in ``doubled`` comes in one pass with packet k + 1; every pass
    is followed by 20 ms per packet (the mock clock), so the STT side sees the same times either way."""
    pool = _Pool()
    events: list[ev.Event] = []
    call = _Counting(STARTED, config=config, pool=pool, emit=events.append, metrics=Registry(),
                     budgets=Budgets(BudgetsConfig()))
    batch = FrameBatch()
    call.attach_batch(batch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.run)
        k = 0
        while k < len(packets):
            n = 2 if k in doubled and k + 1 < len(packets) else 1
            batch.begin()
            for j in range(k, k + n):
                call.on_event(AudioReceived(packets[j], j * 20.0))
            batch.end()
            k += n
            await trio.sleep(0.02 * n)
        call.on_close("stop")
    plain = [{f: v for f, v in msgspec.to_builtins(e).items() if f != "ts"} for e in events]  # ts: the wall clock
    return plain, [bytes(lease.audio) for lease in pool.leases], call.several, call.general


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), stt_mulaw=st.booleans(), share=st.sampled_from([0.2, 0.6]),
       turn_ms=st.sampled_from([100, 800]))
def test_two_packets_in_a_pass_give_what_one_per_pass_gives(seed: int, stt_mulaw: bool, share: float,
                                                            turn_ms: int) -> None:
    config = Config(rtzr=RtzrConfig(encoding="MULAW" if stt_mulaw else "LINEAR16", sample_rate=8000),
                    endpointing=EndpointingConfig(end_ms=200, turn_ms=turn_ms))
    audio = _noisy_call(seed)
    packets = [audio[at : at + 160] for at in range(0, len(audio) - 159, 160)]
    doubled = {k for k in range(0, len(packets), 2) if (k * 2654435761 + seed) % 1000 < share * 1000}

    async def main() -> tuple[tuple[list[Any], list[bytes], int, int], tuple[list[Any], list[bytes], int, int]]:
        with trio.fail_after(120):
            return await _drive(config, packets, doubled), await _drive(config, packets, set())

    (events, sent, several, general), (want_events, want_sent, _, _) = trio.run(
        main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert several > 10 and general == 0  # the doubled passes took the packet path's rounds, none the general path
    assert "speech.ended" in [e["type"] for e in events]
    assert sent == want_sent
    assert events == want_events

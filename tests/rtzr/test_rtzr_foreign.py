"""Issue 13, round 6: the capacity rig's ``rtzr_foreign_result`` warnings ("result while no lease is attached").

The sequence, captured in the rig (engine + ``--cheap`` emulator + bench/loadgen.py): a babble call's utterance
runs to our ``max_utterance_ms`` (30 s from our speech start); the lease's audio starts with the pre-roll, so the
server's own ``max_utter_duration`` cut (30 s from *its* speech start, the emulator's and our assumed default)
lands 40 ms before our Finalize. The cut final (20-30020 ms) reached ``cover_from`` and was taken as the answer:
the lease ended, the socket went back to the pool as clean, and the real answer (30020-30060 ms, the tail's
words) arrived on an idle socket. Rule 1 now knows that a max-utter-long final with audio after it leaves that
audio pending on the server, whatever ``cover_from`` says.
"""

from __future__ import annotations

import msgspec
import numpy as np
import trio

from engine.rtzr.emulator import SessionParams, SkipRecognizer, StreamSession
from engine.rtzr.emulator.session import Send
from engine.rtzr.protocol import Alternative, RtzrResult, decode_server_message
from engine.rtzr.tracker import SERVER_MAX_UTTER_MS, ForeignResult, LeaseResult, UtteranceTracker
from tests.rtzr.test_emulator_session import FINALIZE, quiet, speechlike

from .rtzr_env import emulator_config, running_pool, silence, stack, tone

BPM = 16.0  # LINEAR16 at 8 kHz


def _final(seq: int, start: int, end: int, text: str = "x") -> RtzrResult:
    return RtzrResult(seq=seq, start_at=start, duration=end - start, final=True, alternatives=[Alternative(text=text)])


def _lease_of(ms: int) -> UtteranceTracker:
    t = UtteranceTracker(BPM)  # the defaults, as RtzrSocket builds it when the query sets no max_utter_duration
    t.begin_lease()
    t.audio_sent(int(BPM * ms))
    return t


def test_a_max_utter_cut_just_before_our_finalize_does_not_close_the_lease() -> None:
    """The captured sequence, Finalize first: the cut final reaches cover_from (29760) but is 30 s long with
    40 ms after it; the lease waits for the answer, which closes it, and the socket is clean."""
    t = _lease_of(30060)
    assert t.finalize_sent(speech_end_ms=30060)
    cut = t.on_result(_final(0, 20, 30020))
    assert isinstance(cut, LeaseResult) and not cut.closes  # the old rule closed here
    assert t.pending and not t.clean
    answer = t.on_result(_final(1, 30020, 30060, "끝"))
    assert isinstance(answer, LeaseResult) and answer.closes and answer.text == "끝"
    assert t.clean
    t.end_lease()


def test_a_max_utter_cut_received_before_our_finalize_still_gets_a_finalize() -> None:
    """The same cut, read before we Finalize: rule 3's "the server ended it" shortcut sent no Finalize, so the
    tail's words were never asked for (and the socket was closed). After a max-utter cut the rest is pending."""
    t = _lease_of(30060)
    cut = t.on_result(_final(0, 20, 30020))
    assert isinstance(cut, LeaseResult) and not cut.closes
    assert t.finalize_sent(speech_end_ms=30060)  # the old rule returned False
    answer = t.on_result(_final(1, 30020, 30060, "끝"))
    assert isinstance(answer, LeaseResult) and answer.closes and t.clean


def test_a_max_utter_cut_at_our_finalize_closes() -> None:
    """Nothing after the cut (within the tolerance): nothing is pending, it is the answer."""
    t = _lease_of(30020)
    assert t.finalize_sent(speech_end_ms=30020)
    cut = t.on_result(_final(0, 20, 30020))
    assert isinstance(cut, LeaseResult) and cut.closes and t.clean


def test_an_answer_longer_than_the_assumed_max_utter_is_the_answer() -> None:
    """Should RTZR's real default be longer than the assumed 30 s, a 30.04 s answer ending 30 ms before our
    Finalize is not a cut (a cut lasts exactly max_utter): it closes, nothing waits for a second answer."""
    t = _lease_of(30_100)
    assert t.finalize_sent(speech_end_ms=30_100)
    out = t.on_result(_final(0, 30, 30_070))
    assert isinstance(out, LeaseResult) and out.closes and t.clean


def test_an_end_point_cut_reaching_the_speech_end_ends_the_lease_but_not_the_socket() -> None:
    """Our endpointer's end 900 ms after the server's: the server may have cut on its own (epd 800 ms) and
    whether it counts the silence after as pending is undocumented (rule 3): the lessee has every word and
    ends now; the socket is never handed out again."""
    t = _lease_of(2000)
    assert t.finalize_sent(speech_end_ms=1300)  # cover_from 1000
    out = t.on_result(_final(0, 100, 1100))  # 900 ms of audio after it
    assert isinstance(out, LeaseResult) and out.closes
    assert t.pending and not t.clean
    t.end_lease()
    late = t.on_result(_final(1, 1100, 2000, ""))  # the emulator's answer for that silence
    assert isinstance(late, ForeignResult) and late.orphan


def test_a_late_answer_after_an_unclean_lease_is_an_orphan_not_foreign() -> None:
    """A finalize timeout or a cancelled lessee ends the lease with audio pending; the socket is closed and
    never reused. Its late answer is dropped like a foreign result but counted apart: no rule failed."""
    t = _lease_of(1000)
    assert t.finalize_sent(speech_end_ms=1000)
    t.end_lease()
    late = t.on_result(_final(0, 0, 950))
    assert isinstance(late, ForeignResult) and late.orphan
    clean = _lease_of(1000)
    assert clean.finalize_sent(speech_end_ms=1000)
    assert isinstance(clean.on_result(_final(0, 0, 950)), LeaseResult)
    clean.end_lease()
    stray = clean.on_result(_final(1, 1000, 1000))  # on a socket believed clean: rules 1-3 failed
    assert isinstance(stray, ForeignResult) and not stray.orphan


def test_the_assumed_max_utter_is_the_emulators_default() -> None:
    assert SessionParams(sample_rate=8000, encoding="LINEAR16").max_utter_s * 1000.0 == SERVER_MAX_UTTER_MS


class _Lessee:
    """The emulator's session and our tracker back to back, on a fake clock: a lease as Call runs it."""

    def __init__(self) -> None:
        self.now = 100.0
        params = SessionParams(sample_rate=8000, encoding="LINEAR16", final_ms=150)  # the rig's emulator
        self.session = StreamSession(params, SkipRecognizer(), (), self.now)
        self.tracker = UtteranceTracker(BPM)
        self.tracker.begin_lease()
        self.delivered: list[LeaseResult] = []
        self.foreign: list[ForeignResult] = []
        self.closed = False

    def _poll(self) -> None:
        for action in self.session.poll(self.now):
            assert isinstance(action, Send)
            result = decode_server_message(action.text)
            assert isinstance(result, RtzrResult)
            out = self.tracker.on_result(result)
            if isinstance(out, ForeignResult):
                self.foreign.append(out)
            elif out is not None:
                self.delivered.append(out)
                if out.closes:  # the lessee is done: the lease ends at once (Call, pool.lease)
                    self.tracker.end_lease()
                    self.closed = True

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while (deadline := self.session.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self._poll()
        self.now = end
        self._poll()

    def send(self, samples: np.ndarray, message_ms: int = 100) -> None:
        step = 8 * message_ms
        for i in range(0, len(samples), step):
            data = samples[i : i + step].astype("<i2").tobytes()
            self.tracker.audio_sent(len(data))
            self.session.receive_audio(data, self.now)
            self.advance(message_ms / 1000)

    def finalize(self, speech_end_ms: float) -> bool:
        if not self.tracker.finalize_sent(speech_end_ms):
            return False
        self.session.receive_text(FINALIZE, self.now)
        return True


def _babble_utterance() -> np.ndarray:
    """20 ms of pre-roll, then speech the whole way: 30 060 ms, as captured."""
    return np.concatenate([quiet(20), speechlike(30_040)])


def test_emulator_max_utter_cut_then_finalize_no_foreign_result() -> None:
    lessee = _Lessee()
    lessee.send(_babble_utterance())
    assert lessee.finalize(speech_end_ms=30_060)
    lessee.advance(1.0)
    assert lessee.foreign == []  # the old rule: "result while no lease is attached", seq 1, start_at 30020
    finals = [r for r in lessee.delivered if r.final]
    assert [f.closes for f in finals] == [False, True]
    assert finals[0].duration_ms == SERVER_MAX_UTTER_MS  # the server's own cut ...
    assert finals[-1].start_ms + finals[-1].duration_ms >= 30_060 - 20  # ... and the answer covering the rest
    assert lessee.closed and lessee.tracker.clean


def test_emulator_max_utter_cut_read_before_the_finalize() -> None:
    lessee = _Lessee()
    lessee.send(_babble_utterance())
    lessee.advance(0.3)  # the cut final (due 150 ms after the cut) is read before we Finalize
    assert [r.closes for r in lessee.delivered if r.final] == [False]
    assert lessee.finalize(speech_end_ms=30_060)  # the old rule sent none: the tail's words were never asked for
    lessee.advance(1.0)
    finals = [r for r in lessee.delivered if r.final]
    assert lessee.foreign == [] and [f.closes for f in finals] == [False, True]
    assert lessee.closed and lessee.tracker.clean


async def test_pool_a_max_utter_cut_within_the_slack_reaches_only_its_lessee() -> None:
    """The same at the pool's API over a socket (max_utter_duration 1.2 s, so that the tracker knows it): the
    lessee gets the cut and the answer to its Finalize, the socket is reused clean, nothing is foreign."""
    with trio.fail_after(15):
        async with stack(emulator_config(final_ms=100), spare=1, max_sessions=1) as s:
            s.config = msgspec.structs.replace(s.config, max_utter_duration=1.2)
            async with running_pool(s) as pool:
                async with pool.lease() as a:
                    await a.send_audio(silence(20) + tone(1240))  # the server cuts at 1220, we Finalize at 1260
                    assert await a.finalize(speech_end_ms=1260)
                    finals_a = []
                    while not (finals_a and finals_a[-1].closes):
                        r = await a.receive()
                        if r.final:
                            finals_a.append(r)
                assert [f.closes for f in finals_a] == [False, True]
                assert finals_a[-1].start_ms + finals_a[-1].duration_ms >= 1260 - 20
                async with pool.lease() as b:
                    assert b.pool_hit  # the same socket, provably clean
                    await b.send_audio(tone(300))
                    assert await b.finalize(speech_end_ms=300)
                    r = await b.receive()
                    while not r.closes:
                        r = await b.receive()
                assert r.seq == finals_a[-1].seq + 1 and r.start_ms >= 0
                assert s.metrics.value("rtzr_foreign_results_total") == 0

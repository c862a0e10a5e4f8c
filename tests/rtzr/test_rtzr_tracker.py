"""The clean-socket rule (engine/rtzr/tracker.py): a result reaches only the lease whose audio produced it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.rtzr.protocol import Alternative, RtzrResult
from engine.rtzr.tracker import TIMESTAMP_TOLERANCE_MS, ForeignResult, LeaseResult, UtteranceTracker

BPM = 16.0  # LINEAR16 at 8 kHz: bytes per ms


def _r(seq: int, start: int, dur: int, final: bool, text: str = "x") -> RtzrResult:
    return RtzrResult(seq=seq, start_at=start, duration=dur, final=final, alternatives=[Alternative(text=text)])


def _leased(ms: int = 0, slack: float = 300.0, max_utter_ms: float | None = None) -> UtteranceTracker:
    t = UtteranceTracker(BPM, cover_slack_ms=slack, max_utter_ms=max_utter_ms)
    t.begin_lease()
    t.audio_sent(int(BPM * ms))
    return t


def test_finalize_only_when_pending_and_a_covering_final_closes() -> None:
    t = _leased()
    assert not t.pending and not t.finalize_sent()
    t.audio_sent(int(BPM * 500))
    assert t.pending and t.finalize_sent() and t.awaiting_final
    out = t.on_result(_r(0, 100, 380, True))  # ends at 480, within the slack of 500
    assert isinstance(out, LeaseResult) and out.closes
    assert t.clean and not t.awaiting_final and t.next_seq == 1
    assert not t.finalize_sent()


def test_server_cut_before_finalize_does_not_make_the_socket_clean() -> None:
    """Issue 11, defect 1: RTZR cut at 1.2 s (max_utter_duration), we finalized at 1.6 s. The cut final
    used to "cover" the Finalize (1 s slack) and the socket went to the next call with 0.4 s in flight."""
    t = _leased(1600, max_utter_ms=1200)
    assert t.finalize_sent(speech_end_ms=1600)
    cut = t.on_result(_r(0, 0, 1200, True, "앞부분"))
    assert isinstance(cut, LeaseResult) and not cut.closes
    assert t.pending and not t.clean  # the rest of the lessee's audio is still in flight
    answer = t.on_result(_r(1, 1200, 400, True, "뒷부분"))
    assert isinstance(answer, LeaseResult) and answer.closes and answer.start_ms == 1200
    assert t.clean


def test_an_end_point_cut_leaves_the_socket_pending() -> None:
    t = _leased(2600)  # speech to 1000 ms, then 1.6 s our endpointer took for speech (noise)
    assert t.finalize_sent(speech_end_ms=2500)
    cut = t.on_result(_r(0, 100, 900, True, "말"))  # 1.6 s of audio after it: room for RTZR's 0.8 s end-point cut
    assert isinstance(cut, LeaseResult) and not cut.closes and t.pending


def test_a_final_that_cannot_be_a_server_cut_is_the_answer() -> None:
    """Our endpointer heard noise as speech 500 ms longer than the server did: the server's answer ends well
    before cover_from, but with only 600 ms of audio after it RTZR cannot have cut there on its own."""
    t = _leased(1600)
    assert t.finalize_sent(speech_end_ms=1520)
    out = t.on_result(_r(0, 100, 900, True, "말"))  # ends at 1000; cover_from = 1220
    assert isinstance(out, LeaseResult) and out.closes and t.clean


def test_final_ending_at_the_last_speech_closes_despite_the_hangover() -> None:
    t = _leased(1000)  # 800 ms of speech, then 200 ms of hangover silence
    assert t.finalize_sent(speech_end_ms=800)
    out = t.on_result(_r(0, 40, 700, True))  # the server trims its final at 740 ms (within 300 of 800)
    assert isinstance(out, LeaseResult) and out.closes and t.clean


def test_result_of_a_previous_lease_is_foreign_never_delivered() -> None:
    t = _leased(1000)
    t.finalize_sent(speech_end_ms=1000)
    first = t.on_result(_r(0, 0, 900, True))
    assert isinstance(first, LeaseResult) and first.closes
    t.end_lease()
    # between leases: anything that arrives is foreign
    assert isinstance(t.on_result(_r(1, 950, 0, False, "늦게")), ForeignResult)
    t.begin_lease()  # the next lessee starts at socket ms 1000
    late = t.on_result(_r(1, 900, 100, True, "남의 말"))  # starts before its first byte
    assert isinstance(late, ForeignResult) and "before this lease" in late.reason
    stale_seq = t.on_result(_r(0, 1000, 0, False, "x"))
    assert isinstance(stale_seq, ForeignResult) and "seq" in stale_seq.reason


def test_second_lessee_timeline_starts_at_its_first_byte() -> None:
    t = _leased(1000)
    t.finalize_sent()
    t.on_result(_r(0, 200, 700, True, "하나"))
    t.end_lease()
    t.begin_lease()
    t.audio_sent(int(BPM * 800))
    interim = t.on_result(_r(1, 1100, 0, False, "둘"))
    assert isinstance(interim, LeaseResult) and interim.start_ms == 100 and not interim.final
    assert t.on_result(_r(1, 1100, 0, False, "")) is None  # empty interims skipped
    t.finalize_sent()
    final = t.on_result(_r(1, 1100, 650, True, "둘"))
    assert isinstance(final, LeaseResult) and final.start_ms == 100 and final.duration_ms == 650 and final.closes
    assert t.lease_sent_ms == 800 and t.clean


def test_timestamps_that_cannot_be_true_make_the_socket_untrusted() -> None:
    """Issue 11, defect 2: a mock whose finals always say start_at 0, duration 1200."""
    t = _leased(600)
    t.finalize_sent()
    out = t.on_result(_r(0, 0, 1200, True))  # ends after the 600 ms we sent
    assert isinstance(out, LeaseResult) and out.closes  # coverage cannot be judged: the lease ends here
    assert t.untrusted and not t.clean  # ... and the socket is never reused
    t2 = _leased(3000)
    t2.on_result(_r(0, 0, 1200, True))
    t2.on_result(_r(1, 0, 1200, True))  # a second final inside the first
    assert "inside an earlier final" in t2.untrusted and not t2.clean


def test_untrusted_timestamps_on_a_reused_socket_are_foreign() -> None:
    """Review finding: once a reused socket turned untrusted, rule 4 stopped checking starts, and the previous
    lessee's tail (same seq as the new lease's first) was delivered to the new lessee at start_ms -300."""
    t = _leased(1000)
    assert t.finalize_sent(speech_end_ms=900)
    head = t.on_result(_r(0, 0, 700, True, "A-head"))  # a server cut within the slack: accepted as covering
    assert isinstance(head, LeaseResult) and head.closes and t.clean
    t.end_lease()
    t.begin_lease()  # B, at socket ms 1000
    t.audio_sent(int(BPM * 100))
    odd = t.on_result(_r(1, 1000, 130, False, "B"))  # ends 30 ms past what was sent: untrusted
    assert isinstance(odd, ForeignResult) and "untrusted" in odd.reason  # the shell closes the socket here


def test_untrusted_on_the_first_lease_is_still_delivered_and_closes() -> None:
    t = _leased(500)
    out = t.on_result(_r(0, 0, 900, True, "x"))  # nobody came before on this socket: nothing to confuse
    assert isinstance(out, LeaseResult) and t.untrusted and not t.clean
    assert t.pending  # an untrusted end settles nothing ...
    assert t.finalize_sent()  # ... so the Finalize is sent and its answer awaited
    closing = t.on_result(_r(1, 900, 100, True, "y"))
    assert isinstance(closing, LeaseResult) and closing.closes and not t.clean


def test_server_ended_the_utterance_before_our_finalize_sends_no_finalize() -> None:
    """Whether the silence after a server final is still pending is undocumented (the emulator answers it,
    rtzr.md says nothing comes): don't wait for an answer that may never come; don't reuse the socket."""
    t = _leased(2000)
    cut = t.on_result(_r(0, 100, 1300, True, "전부"))  # the server's end-point detection, speech 100-1400
    assert isinstance(cut, LeaseResult) and not cut.closes
    assert not t.finalize_sent(speech_end_ms=1450)  # 1400 >= 1450 - 300: the utterance is complete
    assert t.pending and not t.clean


def test_empty_final_still_settles() -> None:
    t = UtteranceTracker(8.0)
    t.begin_lease()
    t.audio_sent(800)
    t.finalize_sent()
    out = t.on_result(_r(0, 0, 100, True, ""))
    assert isinstance(out, LeaseResult) and out.final and out.text == "" and out.closes
    assert t.clean


_results = st.builds(
    _r,
    seq=st.integers(0, 6),
    start=st.integers(0, 8000),
    dur=st.integers(0, 3000),
    final=st.booleans(),
    text=st.sampled_from(["", "x"]),
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("audio"), st.integers(0, 2000)),
        st.tuples(st.just("finalize"), st.integers(0, 3000)),
        st.tuples(st.just("next_lease"), st.just(0)),
        st.tuples(st.just("result"), _results),
    ),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(_steps)
def test_property_a_delivered_result_never_precedes_its_lease(steps: list[tuple[str, object]]) -> None:
    """Whatever the server says: nothing reaches a lessee while none is attached, a trusted socket never
    delivers a result that starts before the lease's first byte, and a socket is clean only when
    every byte sent is covered by a final and its timestamps are trusted."""
    t = UtteranceTracker(BPM)
    t.begin_lease()
    for kind, arg in steps:
        if kind == "audio":
            assert isinstance(arg, int)
            t.audio_sent(int(BPM * arg))
        elif kind == "finalize":
            assert isinstance(arg, int)
            t.finalize_sent(speech_end_ms=float(arg))
        elif kind == "next_lease":
            if t.clean:
                t.end_lease()
                t.begin_lease()
        else:
            assert isinstance(arg, RtzrResult)
            trusted_before = not t.untrusted
            out = t.on_result(arg)
            if isinstance(out, LeaseResult) and (trusted_before or t.lease_offset_bytes > 0):
                # never a result from before this lease; on a reused socket not even once untrusted
                assert out.start_ms >= -TIMESTAMP_TOLERANCE_MS
            if isinstance(out, ForeignResult):
                return  # the shell closes the socket here
        if t.clean:
            assert t.settled_bytes >= t.bytes_sent and not t.untrusted

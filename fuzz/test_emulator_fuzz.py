"""Properties of the RTZR emulator: arbitrary client input never crashes a session, results stay
well-formed (seq from 0, interims prefixes of their final), and text always follows the audio."""

from __future__ import annotations

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.rtzr.emulator import Fault, FaultSpecError, PhrasebookRecognizer, load_phrasebook, parse_faults
from engine.rtzr.emulator.config import DEFAULT_PHRASEBOOK
from engine.rtzr.emulator.session import Abort, Close, Send, SessionParams, StreamSession
from engine.rtzr.emulator.tokens import TokenStore, parse_form
from engine.rtzr.protocol import RtzrResult

CLIPS = load_phrasebook(DEFAULT_PHRASEBOOK)
REC = PhrasebookRecognizer(CLIPS)

inputs = st.lists(
    st.one_of(
        st.tuples(st.just("audio"), st.binary(max_size=2000)),
        st.tuples(st.just("loud"), st.integers(1, 4000)),
        st.tuples(st.just("text"), st.sampled_from(['{"type":"Finalize"}', "EOS", "", "{", '{"type":1}', "null"])),
        st.tuples(st.just("text"), st.text(max_size=50)),
        st.tuples(st.just("wait"), st.floats(0, 5)),
    ),
    max_size=40,
)


def check_results(sends: list[str]) -> None:
    results = []
    for text in sends:
        obj = msgspec.json.decode(text)
        if obj.get("type") == "error":
            continue
        results.append(msgspec.json.decode(text, type=RtzrResult))
    finals = [r for r in results if r.final]
    assert [f.seq for f in finals] == list(range(len(finals)))
    by_seq = {f.seq: f for f in finals}
    for r in results:
        assert r.start_at >= 0 and r.duration >= 0
        if not r.final:
            assert r.duration == 0
            if r.seq in by_seq:
                assert by_seq[r.seq].text.startswith(r.text)


@given(inputs, st.sampled_from(["LINEAR16", "MULAW", "ALAW"]), st.sampled_from([8000, 16000]),
       st.lists(st.sampled_from([Fault.empty_text(), Fault.stall(300), Fault.close_after(700),
                                 Fault.error_after(900)]), max_size=2))
def test_session_survives_any_input(steps: list[tuple[str, object]], encoding: str, rate: int,
                                    faults: list[Fault]) -> None:
    now = 0.0
    params = SessionParams(sample_rate=rate, encoding=encoding, idle_timeout_s=3.0, interim_ms=100)
    session = StreamSession(params, REC, faults, now)
    sends: list[str] = []
    rng = np.random.default_rng(0)

    def drain() -> None:
        for action in session.poll(now):
            assert isinstance(action, Send | Close | Abort)
            if isinstance(action, Send):
                sends.append(action.text)

    for kind, value in steps:
        if kind == "audio":
            session.receive_audio(value, now)  # type: ignore[arg-type]
        elif kind == "loud":
            samples = rng.normal(0, 5000, int(value)).astype("<i2")  # type: ignore[call-overload]
            session.receive_audio(samples.tobytes(), now)
        elif kind == "text":
            session.receive_text(value, now)  # type: ignore[arg-type]
        else:
            now += float(value)  # type: ignore[arg-type]
        drain()
        deadline = session.next_deadline()
        if deadline is not None and deadline <= now:
            drain()
    now += 100
    drain()
    assert session.closed or session.stalled
    check_results(sends)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, len(CLIPS) - 1), st.integers(0, 3000), st.booleans()), min_size=1,
                max_size=4), st.integers(37, 4000))
def test_text_follows_audio_for_any_order_gap_and_chunking(plan: list[tuple[int, int, bool]], chunk: int) -> None:
    """Clips in any order, with any gap, sent in any chunk size, each closed by Finalize (or EOS last)."""
    now = 0.0
    session = StreamSession(SessionParams(sample_rate=8000, encoding="LINEAR16", final_ms=0), REC, [], now)
    sends: list[str] = []
    expected: list[str] = []
    for i, (clip_index, gap, loud_gap) in enumerate(plan):
        gap_audio = np.random.default_rng(gap).normal(0, 10, gap).astype(np.int16)
        audio = np.concatenate([gap_audio, CLIPS[clip_index].samples]).astype("<i2").tobytes()
        for j in range(0, len(audio), chunk):
            session.receive_audio(audio[j : j + chunk], now)
            now += 0.01
            sends += [a.text for a in session.poll(now) if isinstance(a, Send)]
        session.receive_text("EOS" if i == len(plan) - 1 and loud_gap else '{"type":"Finalize"}', now)
        sends += [a.text for a in session.poll(now) if isinstance(a, Send)]
        expected.append(CLIPS[clip_index].text)
    finals = [r for r in (msgspec.json.decode(s, type=RtzrResult) for s in sends) if r.final]
    assert [f.text for f in finals] == expected
    check_results(sends)


@given(st.text(max_size=80))
def test_fault_spec_parser_only_raises_its_error(spec: str) -> None:
    try:
        parse_faults(spec)
    except FaultSpecError:
        pass


@given(st.binary(max_size=300), st.one_of(st.none(), st.text(max_size=80)))
def test_auth_inputs_never_crash(body: bytes, header: str | None) -> None:
    store = TokenStore(lifetime_s=10, client_id="a", client_secret="b", epoch_offset=0.0)
    status, payload = store.authenticate(parse_form(body), 0.0)
    assert status in (200, 400, 401)
    assert msgspec.json.decode(payload)
    reason = store.check(header, 0.0)
    assert reason is None or isinstance(reason, str)

"""The emulator's sans-IO session: EPD, interims, finals, Finalize/EOS, timeline, timeouts, faults."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import pytest

from engine.audio import mulaw
from engine.rtzr.emulator import Fault, PhrasebookRecognizer, SessionParams, StreamSession, load_phrasebook
from engine.rtzr.emulator.config import DEFAULT_PHRASEBOOK
from engine.rtzr.emulator.recognizer import placeholder_text
from engine.rtzr.emulator.session import Abort, Close, Send
from engine.rtzr.protocol import RtzrResult
from engine.rtzr.tracker import UtteranceTracker

CLIPS = {c.id: c for c in load_phrasebook(DEFAULT_PHRASEBOOK)}
REC = PhrasebookRecognizer(list(CLIPS.values()))
FINALIZE = '{"type":"Finalize"}'


def speechlike(ms: int, seed: int = 0, rate: int = 8000) -> np.ndarray:
    """Harmonics with a syllable-rate envelope that never drops below speech level."""
    t = np.arange(ms * rate // 1000) / rate
    rng = np.random.default_rng(seed)
    f0 = 120 + 40 * rng.random()
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6) / k for k in range(1, 8))
    env = 0.4 + 0.6 * np.abs(np.sin(2 * np.pi * 3.5 * t))
    return (x * env * 4000).astype(np.int16)


def quiet(ms: int, seed: int = 1, rate: int = 8000) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 10, ms * rate // 1000).astype(np.int16)


class Harness:
    """Feeds a session 20 ms chunks at real-time pace on a fake clock and collects its output."""

    def __init__(self, *, rate: int = 8000, encoding: str = "LINEAR16", faults: tuple[Fault, ...] = (),
                 **params: object) -> None:
        self.now = 1000.0
        self.rate = rate
        self.encoding = encoding
        p = SessionParams(sample_rate=rate, encoding=encoding, **params)  # type: ignore[arg-type]
        self.session = StreamSession(p, REC, faults, self.now)
        self.results: list[RtzrResult] = []
        self.actions: list[Send | Close | Abort] = []

    def _collect(self) -> None:
        for action in self.session.poll(self.now):
            self.actions.append(action)
            if isinstance(action, Send) and '"seq"' in action.text:
                self.results.append(msgspec.json.decode(action.text, type=RtzrResult))

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadline = self.session.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self._collect()
        self.now = end
        self._collect()

    def audio(self, samples: np.ndarray, chunk_ms: int = 20) -> None:
        step = self.rate * chunk_ms // 1000
        for i in range(0, len(samples), step):
            part = samples[i : i + step]
            data = mulaw.encode(part) if self.encoding == "MULAW" else part.astype("<i2").tobytes()
            self.session.receive_audio(data, self.now)
            self.advance(chunk_ms / 1000)

    def text(self, message: str) -> None:
        self.session.receive_text(message, self.now)
        self._collect()

    @property
    def finals(self) -> list[RtzrResult]:
        return [r for r in self.results if r.final]

    @property
    def interims(self) -> list[RtzrResult]:
        return [r for r in self.results if not r.final]


def test_epd_final_on_speechlike_audio() -> None:
    h = Harness()
    h.audio(np.concatenate([quiet(300), speechlike(1000), quiet(1000)]))
    h.advance(0.5)
    assert len(h.finals) == 1
    final = h.finals[0]
    assert final.seq == 0
    assert final.start_at == pytest.approx(300, abs=10)
    assert final.duration == pytest.approx(1000, abs=20)
    assert final.text == placeholder_text(1.0)
    assert final.alternatives[0].words and final.alternatives[0].words[0].text == final.text
    assert not any(isinstance(a, Close | Abort) for a in h.actions)


def test_epd_respects_epd_time_and_two_utterances_get_seq_0_and_1() -> None:
    h = Harness(epd_time=0.5)
    h.audio(np.concatenate([speechlike(600, 1), quiet(400), speechlike(600, 2), quiet(600)]))
    h.advance(0.5)
    assert len(h.finals) == 1, "400 ms of quiet is shorter than epd_time"
    h.audio(np.concatenate([speechlike(700, 3), quiet(700)]))
    h.advance(0.5)
    assert [f.seq for f in h.finals] == [0, 1]
    assert h.finals[1].start_at == pytest.approx(2200, abs=10)  # socket timeline
    assert all(i.duration == 0 for i in h.interims)


def test_final_waits_final_ms() -> None:
    h = Harness(final_ms=400)
    h.audio(np.concatenate([speechlike(500), quiet(200)]))
    h.text(FINALIZE)
    h.advance(0.39)
    assert h.finals == []
    h.advance(0.02)
    assert len(h.finals) == 1


def test_finalize_with_pending_audio_gives_a_final_and_keeps_the_socket() -> None:
    clip = CLIPS["ate"].samples
    h = Harness()
    h.audio(np.concatenate([quiet(200), clip]))
    h.text(FINALIZE)
    h.advance(0.2)
    assert [f.text for f in h.finals] == ["먹었어"]
    h.audio(np.concatenate([quiet(100), CLIPS["dunno"].samples]))
    h.text(FINALIZE)
    h.advance(0.2)
    assert [(f.seq, f.text) for f in h.finals] == [(0, "먹었어"), (1, "모르겠어")]
    assert not any(isinstance(a, Close | Abort) for a in h.actions)


def test_finalize_with_nothing_pending_sends_nothing() -> None:
    h = Harness()
    h.text(FINALIZE)
    h.advance(1.0)
    assert h.results == []
    h.audio(speechlike(400))
    h.text(FINALIZE)
    h.advance(0.3)
    assert len(h.finals) == 1
    h.text(FINALIZE)  # the final already covered everything
    h.advance(1.0)
    assert len(h.finals) == 1


def test_finalize_after_server_epd_final_answers_the_trailing_silence_consistently() -> None:
    """The client's byte-counting tracker and the emulator agree on what is pending."""
    h = Harness()
    tracker = UtteranceTracker(16.0)
    tracker.begin_lease()
    audio = np.concatenate([speechlike(500), quiet(1000)])
    tracker.audio_sent(audio.size * 2)
    h.audio(audio)
    h.advance(0.3)
    for r in h.results:
        tracker.on_result(r)
    assert len(h.finals) == 1
    assert tracker.finalize_sent() is True  # the quiet after the speech is still pending
    h.text(FINALIZE)
    h.advance(0.3)
    assert len(h.finals) == 2 and h.finals[1].text == ""
    tracker.on_result(h.finals[1])
    assert tracker.pending is False
    assert h.finals[1].start_at + h.finals[1].duration == pytest.approx(1500, abs=1)


def test_eos_sends_pending_final_then_closes_1000() -> None:
    h = Harness()
    h.audio(np.concatenate([quiet(100), CLIPS["tonight"].samples]))
    h.text("EOS")
    h.advance(0.5)
    kinds = [type(a).__name__ for a in h.actions if not (isinstance(a, Send) and '"final":false' in a.text)]
    assert kinds == ["Send", "Close"]
    assert h.finals[-1].text == "오늘 밤"
    assert h.actions[-1] == Close(1000, "EOS")
    h.audio(speechlike(500))  # ignored after EOS
    h.advance(2)
    assert len(h.finals) == 1


def test_eos_without_pending_audio_just_closes() -> None:
    h = Harness()
    h.text("EOS")
    h.advance(0.01)
    assert h.actions == [Close(1000, "EOS")]
    assert h.session.closed


@pytest.mark.parametrize("clip_id", ["diary", "okay", "tonight"])
def test_interims_have_constant_seq_zero_duration_and_prefix_text(clip_id: str) -> None:
    h = Harness(interim_ms=100)
    h.audio(np.concatenate([quiet(300), CLIPS[clip_id].samples, quiet(1200)]))
    h.advance(0.5)
    assert len(h.finals) == 1
    final = h.finals[0]
    assert final.text == CLIPS[clip_id].text
    assert h.interims, "interims are sent while speech goes on"
    texts = []
    for interim in h.interims:
        assert interim.seq == final.seq and interim.duration == 0 and interim.start_at == final.start_at
        assert final.text.startswith(interim.text)
        texts.append(interim.text)
    assert texts == sorted(texts, key=len)
    if len(CLIPS[clip_id].words) > 2:
        assert len(set(texts)) >= 2


def test_utterances_of_different_calls_interleaved_on_one_socket_get_their_own_text() -> None:
    """Text follows the audio: any order of utterances on any socket gives each its own words."""
    order = ["diary", "tonight", "ate", "dunno", "okay", "wait", "thanks"]
    for perm in itertools.islice(itertools.permutations(order), 0, 200, 37):
        h = Harness()
        for clip_id in perm:
            h.audio(np.concatenate([quiet(60), CLIPS[clip_id].samples]))
            h.text(FINALIZE)
            h.advance(0.2)
        assert [f.text for f in h.finals] == [CLIPS[c].text for c in perm]
        assert [f.seq for f in h.finals] == list(range(len(perm)))


def test_start_at_is_on_the_socket_audio_timeline() -> None:
    h = Harness()
    h.audio(quiet(1000))
    h.audio(CLIPS["ate"].samples)
    h.text(FINALIZE)
    h.advance(0.2)
    h.audio(quiet(500))
    h.audio(CLIPS["dunno"].samples)
    h.text(FINALIZE)
    h.advance(0.2)
    ate, dunno = CLIPS["ate"], CLIPS["dunno"]
    assert h.finals[0].start_at == pytest.approx(1000 + ate.words[0].start / 8, abs=15)
    second = 1000 + len(ate.samples) / 8 + 500 + dunno.words[0].start / 8
    assert h.finals[1].start_at == pytest.approx(second, abs=15)
    words = h.finals[1].alternatives[0].words
    assert words is not None and words[0].start_at <= 15


def test_mulaw_and_linear16_give_the_same_results() -> None:
    audio = np.concatenate([quiet(200), CLIPS["okay"].samples, quiet(1000)])
    a, b = Harness(), Harness(encoding="MULAW")
    a.audio(audio)
    b.audio(audio)
    assert [r.text for r in a.results] == [r.text for r in b.results]
    assert [(r.start_at, r.duration) for r in a.finals] == [(r.start_at, r.duration) for r in b.finals]


def test_linear16_samples_split_across_messages_are_reassembled() -> None:
    audio = np.concatenate([quiet(100), CLIPS["wait"].samples]).astype("<i2").tobytes()
    h = Harness()
    for i in range(0, len(audio), 333):  # odd sizes split samples
        h.session.receive_audio(audio[i : i + 333], h.now)
    h.text(FINALIZE)
    h.advance(0.3)
    assert [f.text for f in h.finals] == ["잠깐만요"]
    assert h.session.counters.bytes_received == len(audio)


def test_idle_timeout_closes_1001() -> None:
    h = Harness(idle_timeout_s=5.0)
    h.audio(speechlike(100))
    h.advance(4.9)
    assert not h.session.closed
    h.advance(0.2)
    assert h.actions[-1] == Close(1001, "idle timeout")


def test_max_session_length_closes_even_while_active() -> None:
    h = Harness(max_session_s=2.0, idle_timeout_s=100.0)
    h.audio(quiet(3000))
    assert Close(1001, "maximum session length") in h.actions
    assert h.session.closed


def test_fault_close_after_aborts_without_close_frame() -> None:
    h = Harness(faults=(Fault.close_after(500),))
    h.audio(speechlike(400))
    assert not h.session.closed
    h.advance(0.2)
    assert isinstance(h.actions[-1], Abort)
    assert not any(isinstance(a, Close) for a in h.actions)


def test_fault_error_after_sends_in_band_error_then_1011() -> None:
    h = Harness(faults=(Fault.error_after(300),))
    h.advance(0.31)
    send, close = h.actions
    assert isinstance(send, Send) and msgspec.json.decode(send.text)["type"] == "error"
    assert close == Close(1011, "emulated error")


def test_fault_stall_answers_nothing_ever() -> None:
    h = Harness(faults=(Fault.stall(200),), idle_timeout_s=1.0)
    h.audio(np.concatenate([speechlike(600), quiet(1000)]))
    h.text(FINALIZE)
    h.text("EOS")
    h.advance(100)
    assert h.actions == []
    assert h.session.pong_allowed(h.now) is False
    assert h.session.next_deadline() is None


def test_fault_empty_text() -> None:
    h = Harness(faults=(Fault.empty_text(),))
    h.audio(np.concatenate([quiet(100), CLIPS["diary"].samples, quiet(1000)]))
    h.advance(0.5)
    assert h.finals and all(r.text == "" for r in h.results)
    assert h.finals[0].duration > 0


def test_junk_text_messages_are_ignored() -> None:
    h = Harness()
    for junk in ["", "{", "[]", '{"type":"Nope"}', "eos", "\x00" * 10]:
        h.text(junk)
    h.advance(1)
    assert h.actions == []

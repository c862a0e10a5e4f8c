"""``sori emulate-rtzr --cheap``: no recognition, the same EPD / interim / Finalize / EOS semantics and timeline."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from engine.rtzr.emulator import Emulator, EmulatorConfig, PhrasebookError, SessionParams, SkipRecognizer, StreamSession
from engine.rtzr.emulator.cli import config_from_args, configure_parser
from engine.rtzr.emulator.recognizer import CHEAP_WORD, CHEAP_WORD_MS
from engine.rtzr.emulator.session import Close
from tests.rtzr.test_emulator_session import FINALIZE, Harness, quiet, speechlike


def cheap_harness(**params: object) -> Harness:
    h = Harness(**params)  # type: ignore[arg-type]
    p = SessionParams(sample_rate=h.rate, encoding=h.encoding, **params)  # type: ignore[arg-type]
    h.session = StreamSession(p, SkipRecognizer(), (), h.now)
    return h


def test_skip_recognizer_tiles_the_loud_audio_with_placeholder_words() -> None:
    audio = np.concatenate([quiet(200), speechlike(1200), quiet(300)])
    tokens = SkipRecognizer().recognize(audio, 8000)
    assert [t.text for t in tokens] == [CHEAP_WORD] * 3
    assert [(t.start_ms, t.end_ms) for t in tokens] == [
        (200.0, 200.0 + CHEAP_WORD_MS), (200.0 + CHEAP_WORD_MS, 1200.0), (1200.0, 1400.0)]
    assert SkipRecognizer().recognize(np.zeros(0, dtype=np.int16), 8000) == []


def test_quiet_audio_has_no_words() -> None:
    assert SkipRecognizer().recognize(quiet(2000), 8000) == []


def test_epd_final_keeps_its_timeline_with_placeholder_words() -> None:
    h = cheap_harness()
    h.audio(np.concatenate([quiet(300), speechlike(1000), quiet(1000)]))
    h.advance(0.5)
    assert len(h.finals) == 1
    final = h.finals[0]
    assert final.seq == 0
    assert final.start_at == pytest.approx(300, abs=10)
    assert final.duration == pytest.approx(1000, abs=20)
    words = final.alternatives[0].words
    assert words and {w.text for w in words} == {CHEAP_WORD}
    assert final.text == " ".join(w.text for w in words)


def test_interims_are_prefixes_of_the_final() -> None:
    h = cheap_harness(interim_ms=300)
    h.audio(np.concatenate([speechlike(3000), quiet(1000)]))
    h.advance(0.5)
    assert len(h.finals) == 1
    assert h.interims, "placeholder words older than the hold become interims, as real words do"
    for interim in h.interims:
        assert interim.seq == 0 and interim.duration == 0
        assert h.finals[0].text.startswith(interim.text)


def test_finalize_and_eos_answer_pending_audio() -> None:
    h = cheap_harness(final_ms=150)
    h.audio(np.concatenate([speechlike(500), quiet(200)]))
    h.text(FINALIZE)
    h.advance(0.14)
    assert h.finals == []
    h.advance(0.02)
    assert len(h.finals) == 1 and CHEAP_WORD in h.finals[0].text
    h.audio(quiet(300))
    h.text(FINALIZE)
    h.advance(0.2)
    assert len(h.finals) == 2 and h.finals[1].text == "", "a final for silence alone has empty text, as with real text"
    h.audio(speechlike(400, seed=3))
    h.text("EOS")
    h.advance(0.2)
    assert [f.seq for f in h.finals] == [0, 1, 2]
    assert isinstance(h.actions[-1], Close) and h.actions[-1].code == 1000


def test_cheap_emulator_does_not_load_the_phrasebook() -> None:
    missing = "/nonexistent/phrasebook"
    with pytest.raises(PhrasebookError):
        Emulator(EmulatorConfig(phrasebook=missing))
    assert isinstance(Emulator(EmulatorConfig(phrasebook=missing, cheap=True)).recognizer, SkipRecognizer)


def test_cli_flag() -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    assert config_from_args(p.parse_args(["--cheap"])).cheap is True
    assert config_from_args(p.parse_args([])).cheap is False

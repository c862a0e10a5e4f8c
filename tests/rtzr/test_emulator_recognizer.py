"""The emulator's phrasebook recognizer: text follows the audio, wherever and however it arrives."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from engine.rtzr.emulator import PhrasebookError, PhrasebookRecognizer, load_phrasebook, placeholder_text
from engine.rtzr.emulator.config import DEFAULT_PHRASEBOOK

DEMO = DEFAULT_PHRASEBOOK.parent
CLIPS = load_phrasebook(DEFAULT_PHRASEBOOK)
BY_ID = {c.id: c for c in CLIPS}
REC = PhrasebookRecognizer(CLIPS)


def noise(ms: int, seed: int, rms: float = 10.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, rms, ms * 8).astype(np.int16)


def text_of(samples: np.ndarray, rate: int = 8000) -> str:
    return " ".join(t.text for t in REC.recognize(samples, rate))


def test_bundled_phrasebook_has_the_demo_phrases() -> None:
    texts = {c.text for c in CLIPS}
    assert {"안녕 오늘 일지 쓰려", "오늘 밤", "먹었어", "모르겠어"} <= texts
    assert len(CLIPS) >= 6
    for clip in CLIPS:
        assert [w.text for w in clip.words] == clip.text.split()


@pytest.mark.parametrize("clip_id", sorted(BY_ID))
def test_each_clip_with_silence_around_is_recognised(clip_id: str) -> None:
    clip = BY_ID[clip_id]
    audio = np.concatenate([noise(400, 1), clip.samples, noise(600, 2)])
    tokens = REC.recognize(audio, 8000)
    assert " ".join(t.text for t in tokens) == clip.text
    assert tokens[0].start_ms == pytest.approx(400 + clip.words[0].start / 8, abs=1)
    assert all(t.confidence > 0.9 for t in tokens)


@pytest.mark.parametrize("offset", [0, 1, 7, 39, 40, 41, 333, 1601])
def test_recognised_at_arbitrary_sample_offsets(offset: int) -> None:
    clip = BY_ID["tonight"]
    audio = np.concatenate([np.zeros(offset, dtype=np.int16), clip.samples, np.zeros(100, dtype=np.int16)])
    assert text_of(audio) == "오늘 밤"


def test_two_clips_in_one_utterance_join_in_time_order() -> None:
    a, b = BY_ID["ate"], BY_ID["dunno"]
    audio = np.concatenate([noise(200, 3), b.samples, noise(300, 4), a.samples, noise(200, 5)])
    assert text_of(audio) == "모르겠어 먹었어"
    audio = np.concatenate([a.samples, b.samples])
    assert text_of(audio) == "먹었어 모르겠어"


def test_a_clip_cut_mid_phrase_yields_the_words_it_holds() -> None:
    clip = BY_ID["diary"]
    cut = clip.words[2].start - 80  # just before the third word
    assert text_of(clip.samples[:cut]) == "안녕 오늘"
    assert text_of(clip.samples[cut:]) == "일지 쓰려"


def test_demo_call_matches_its_labels() -> None:
    with wave.open(str(DEMO / "call.wav"), "rb") as w:
        assert w.getframerate() == 8000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    labels = json.loads((DEMO / "call.json").read_text(encoding="utf-8"))["phrases"]
    tokens = REC.recognize(audio, 8000)
    assert " ".join(t.text for t in tokens) == " ".join(p["text"] for p in labels)
    for label in labels:
        first = next(t for t in tokens if t.start_ms >= label["start_ms"] - 5)
        assert first.text == label["text"].split()[0]
        assert first.start_ms == pytest.approx(label["start_ms"], abs=2)


def test_demo_clips_are_mulaw_roundtrip_stable() -> None:
    from engine.audio import mulaw

    for clip in CLIPS:
        assert np.array_equal(mulaw.decode(mulaw.encode(clip.samples)), clip.samples)


def test_resampled_and_quieter_audio_matches_by_envelope() -> None:
    clip = BY_ID["okay"]
    audio = np.concatenate([noise(300, 6), clip.samples, noise(500, 7)]).astype(np.float32) * 0.5
    up = np.clip(soxr.resample(audio, 8000, 16000), -32768, 32767).astype(np.int16)
    tokens = REC.recognize(up, 16000)
    assert " ".join(t.text for t in tokens) == clip.text
    assert all(0.9 <= t.confidence < 1.0 for t in tokens)


def test_unknown_audio_gets_a_deterministic_emulated_placeholder() -> None:
    rng = np.random.default_rng(11)
    burst = (rng.normal(0, 3000, 8000 * 12 // 10)).astype(np.int16)  # 1.2 s of loud noise
    audio = np.concatenate([noise(300, 8), burst, noise(300, 9)])
    tokens = REC.recognize(audio, 8000)
    assert [t.text for t in tokens] == [placeholder_text(1.2)] == ["[에뮬레이터: 인식되지 않은 음성 1.2초]"]
    assert REC.recognize(audio, 8000) == tokens


def test_silence_and_quiet_noise_give_no_text() -> None:
    assert REC.recognize(np.zeros(8000, dtype=np.int16), 8000) == []
    assert REC.recognize(noise(2000, 10), 8000) == []
    assert REC.recognize(np.zeros(3, dtype=np.int16), 8000) == []


def test_known_clip_next_to_unknown_speech() -> None:
    rng = np.random.default_rng(12)
    burst = (rng.normal(0, 3000, 8000 // 2)).astype(np.int16)
    audio = np.concatenate([BY_ID["ate"].samples, noise(500, 13), burst])
    assert text_of(audio) == f"먹었어 {placeholder_text(0.5)}"


def _write_book(tmp: Path, entries: object) -> Path:
    (tmp / "phrases.json").write_text(json.dumps(entries), encoding="utf-8")
    return tmp


def test_phrasebook_without_word_timings_spreads_words(tmp_path: Path) -> None:
    clip = BY_ID["diary"]
    with wave.open(str(tmp_path / "d.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(clip.samples.tobytes())
    book = load_phrasebook(_write_book(tmp_path, [{"id": "d", "file": "d.wav", "text": clip.text}]))
    rec = PhrasebookRecognizer(book)
    assert " ".join(t.text for t in rec.recognize(np.concatenate([noise(200, 1), clip.samples]), 8000)) == clip.text


@pytest.mark.parametrize(
    "entries",
    [
        "not a list",
        [{"id": "x"}],
        [{"id": "x", "file": "missing.wav", "text": "a"}],
        [{"id": "x", "file": "../escape.wav", "text": "a"}],
    ],
)
def test_bad_phrasebooks_are_typed_errors(tmp_path: Path, entries: object) -> None:
    with pytest.raises(PhrasebookError):
        load_phrasebook(_write_book(tmp_path, entries))


def test_missing_phrasebook_dir_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(PhrasebookError):
        load_phrasebook(tmp_path / "nope")
    (tmp_path / "phrases.json").write_text("[{", encoding="utf-8")
    with pytest.raises(PhrasebookError):
        load_phrasebook(tmp_path)
    (tmp_path / "phrases.json").write_text('[{"id":"x","file":"junk.wav","text":"a"}]', encoding="utf-8")
    (tmp_path / "junk.wav").write_bytes(b"RIFF1234WAVEjunk")
    with pytest.raises(PhrasebookError):
        load_phrasebook(tmp_path)

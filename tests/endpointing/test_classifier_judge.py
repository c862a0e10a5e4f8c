"""Issue 12 round 8: ``bands-judge`` — ``bands-click`` with Silero judging the frames after the talker's words.
Skipped where the 'silero' extra is not installed (CI's test extra), but for the missing-extra error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.config import EndpointingConfig
from engine.endpointing import ClassifierError, make_classifier
from engine.endpointing import silero as silero_mod
from engine.endpointing.classifiers import classify_batch
from engine.endpointing.judge import JudgeClassifier

from .helpers import check, run
from .signals import concat, noise, silence
from .test_real_corpus import load_subset, speech_mask
from .test_silero import installed

RATE = 8000


def test_missing_package_is_a_clear_classifier_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(silero_mod, "PACKAGES", ("no_such_silero_package_xyz",))
    with pytest.raises(ClassifierError, match="'silero' extra"):
        make_classifier("bands-judge", RATE)


def _files(noise_kind: str, snr: int) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    files = [f for f in load_subset() if f[2]["noise"] == noise_kind and f[2]["snr_db"] == snr and f[2]["utterances"]]
    if not files:
        pytest.skip("committed real-speech subset not present")
    return files


def _frames(pcm: np.ndarray) -> np.ndarray:
    n = len(pcm) // 160
    return pcm[: n * 160].reshape(n, 160)


def test_contract() -> None:
    installed()
    c = make_classifier("bands-judge", RATE)
    assert isinstance(c, JudgeClassifier) and c.frame_samples == 160
    assert make_classifier("bands-judge", 16000, frame_ms=30).frame_samples == 480
    with pytest.raises(ClassifierError):
        c.classify(np.zeros((2, 256), np.int16))
    assert c.classify(np.zeros((0, 160), np.int16)) == []


def test_hears_more_of_the_caller_than_bands_click_at_5_db() -> None:
    """Not vacuous: on the subset's 5 dB pink calls the judge adds speech frames inside the labelled speech, every
    bands-click speech frame stays speech, and Silero ran on only part of the call."""
    installed()
    added = inside = 0
    for _, pcm, lab in _files("pink", 5):
        fr = _frames(pcm)
        judge = make_classifier("bands-judge", RATE)
        got = np.array(judge.classify(fr))
        click = np.array(make_classifier("bands-click", RATE).classify(fr))
        assert not (click & ~got).any()
        speech, _ = speech_mask(len(pcm), lab)
        in_speech = speech[: len(fr) * 160].reshape(len(fr), 160).mean(axis=1) > 0.5
        added += int((got & ~click).sum())
        inside += int((got & ~click & in_speech).sum())
        assert isinstance(judge, JudgeClassifier) and 0 < judge.windows < 0.6 * len(fr) * 160 / 256
    assert added > 10 and inside >= 0.7 * added


def test_silero_never_runs_on_noise_alone_and_digital_silence_is_never_speech() -> None:
    """Stationary noise that the bands do not call speech never wakes Silero (no cost), and the frames of
    digital silence after speech are never speech (hold / mute)."""
    installed()
    c = make_classifier("bands-judge", RATE)
    assert isinstance(c, JudgeClassifier)
    assert not any(c.classify(_frames(noise(3 * RATE, 300, seed=4))))
    assert c.windows == 0
    pcm = _files("line", 10)[0][1]
    sig = concat(pcm[: 3 * RATE], silence(RATE))
    d = make_classifier("bands-judge", RATE).classify(_frames(sig))
    assert any(d[:150]) and not any(d[151:])


def test_batch_across_calls_equals_one_call_at_a_time() -> None:
    """Four calls at different offsets of real 10 dB speech, one classify_batch per tick (the bands' batch, then
    Silero's rounds, primes included) give each call exactly its own decisions."""
    installed()
    pcm = _files("pink", 10)[0][1]
    calls, n = 4, 600
    streams = [_frames(np.roll(pcm, 7000 * i))[:n] for i in range(calls)]
    alone = [make_classifier("bands-judge", RATE) for _ in range(calls)]
    batched = [make_classifier("bands-judge", RATE) for _ in range(calls)]
    for k in range(n):
        tick = np.stack([s[k] for s in streams])
        got = classify_batch(batched, tick)
        assert got == [c.classify(tick[i : i + 1])[0] for i, c in enumerate(alone)]
    assert all(isinstance(c, JudgeClassifier) and c.windows > 0 for c in batched)
    assert [c.windows for c in batched] == [c.windows for c in alone]  # type: ignore[attr-defined]


def test_in_the_endpointer() -> None:
    installed()
    _, pcm, lab = _files("line", 10)[0]
    cfg = EndpointingConfig(classifier="bands-judge")  # type: ignore[arg-type]
    found = check(cfg, RATE, pcm, run(cfg, pcm, [160]))
    assert len(found) >= len(lab["utterances"]) - 1

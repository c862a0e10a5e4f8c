"""Issue 12: the bands classifier's batched API across calls, and floors learnt after opening digital silence."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import EndpointingConfig
from engine.endpointing import BandClassifier, ClassifierError, EnergyClassifier, make_classifier
from engine.endpointing.classifiers import classify_batch

from .helpers import check, run
from .signals import concat, noise, silence, speechlike


def streams(n_calls: int, n_frames: int, frame: int = 160) -> np.ndarray:
    """(n_frames, n_calls, frame): calls with different mixes of silence, noise and speech."""
    out = []
    for i in range(n_calls):
        sig = concat(
            silence(frame * (i % 3) * 5),
            noise(frame * 20, 50.0 + 40 * i, seed=i),
            speechlike(frame * 30, 8000, level=1500.0 + 300 * i, seed=i),
            noise(frame * 40, 50.0 + 40 * i, seed=100 + i),
        )
        sig = np.resize(sig, n_frames * frame)
        out.append(sig.reshape(n_frames, frame))
    return np.stack(out, axis=1)


def test_bands_classify_batch_equals_one_call_at_a_time() -> None:
    ticks = streams(7, 90)
    alone = [BandClassifier(8000) for _ in range(7)]
    batched = [BandClassifier(8000) for _ in range(7)]
    heard = 0
    for tick in ticks:
        expected = [c.classify(tick[i : i + 1])[0] for i, c in enumerate(alone)]
        assert classify_batch(batched, tick) == expected
        heard += sum(expected)
    assert heard > 7 * 20  # the speech in every stream
    # one matrix product for the batch, one per frame alone: equal up to float rounding
    for a, b in zip(batched, alone):
        assert a.noise_floors_db == pytest.approx(b.noise_floors_db, abs=1e-3)


def test_classify_batch_mixed_kinds_and_bad_shapes() -> None:
    ticks = streams(3, 60)
    mixed = [BandClassifier(8000), EnergyClassifier(8000), BandClassifier(8000)]
    ref = [BandClassifier(8000), EnergyClassifier(8000), BandClassifier(8000)]
    for tick in ticks:
        assert classify_batch(mixed, tick) == [c.classify(tick[i : i + 1])[0] for i, c in enumerate(ref)]
    assert classify_batch([], np.zeros((0, 160), np.int16)) == []
    with pytest.raises(ClassifierError):
        classify_batch(mixed, np.zeros((2, 160), np.int16))
    # different rates cannot share the matrices: still right, one at a time
    a, b = BandClassifier(8000, 20), BandClassifier(16000, 10)
    frames = np.stack([noise(160, 300, seed=1), noise(160, 300, seed=2)])
    assert classify_batch([a, b], frames) == [BandClassifier(8000, 20).classify(frames[:1])[0],
                                              BandClassifier(16000, 10).classify(frames[1:])[0]]


@pytest.mark.parametrize("rms", [30.0, 60.0, 90.0])
def test_line_noise_after_opening_digital_silence_is_not_speech(rms: float) -> None:
    """A call that opens with μ-law digital silence and then brings up its line noise: the floors sat at
    their minimum, so the noise read as speech until they caught up (a false utterance at the start of
    the call, sent to STT). The first non-silent frame now sets the floors."""
    cfg = EndpointingConfig(classifier="bands")
    sig = concat(silence(8000), noise(8000 * 4, rms, seed=5))
    r = run(cfg, sig, [160])
    assert r.events == [], "line noise after opening digital silence started speech"
    # and a talker on that line is still heard
    sig = concat(silence(8000), noise(8000 * 2, rms, seed=5), speechlike(8000, 8000, level=2000.0) + noise(8000, rms, seed=6),
                 noise(8000 * 2, rms, seed=7))
    found = check(cfg, 8000, sig, run(cfg, sig, [160]))
    assert len(found) == 1 and abs(found[0].start - 3 * 8000) <= 3 * 160


def test_clean_line_talker_right_after_opening_silence_is_heard_at_once() -> None:
    cfg = EndpointingConfig(classifier="bands")
    sig = concat(silence(8000), speechlike(8000, 8000, level=3000.0), silence(8000))
    found = check(cfg, 8000, sig, run(cfg, sig, [160]))
    assert len(found) == 1 and found[0].start == 8000


def test_make_classifier_lists_silero() -> None:
    with pytest.raises(ClassifierError, match="silero"):
        make_classifier("nope", 8000)

"""The optional silero classifier (issue 12): ONNX model from the installed package, state per call,
one inference for a batch of calls. Skipped where the 'silero' extra is not installed (CI's test extra)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import EndpointingConfig
from engine.endpointing import ClassifierError, make_classifier
from engine.endpointing import silero as silero_mod
from engine.endpointing.classifiers import classify_batch

from .helpers import check, run
from .signals import concat, noise, silence
from .test_real_corpus import load_subset, speech_mask


def test_missing_package_is_a_clear_classifier_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs everywhere: without the model package make_classifier says which extra to install."""
    monkeypatch.setattr(silero_mod, "PACKAGES", ("no_such_silero_package_xyz",))
    with pytest.raises(ClassifierError, match="'silero' extra"):
        make_classifier("silero", 8000)


def installed() -> None:
    try:
        silero_mod.model_path()
    except ClassifierError as exc:
        pytest.skip(f"silero extra not installed: {exc}")
    pytest.importorskip("onnxruntime", reason="silero extra not installed (onnxruntime)")


def test_contract_and_bad_input() -> None:
    installed()
    c = make_classifier("silero", 8000)
    assert c.frame_samples == 256 and make_classifier("silero", 16000).frame_samples == 512
    with pytest.raises(ClassifierError):
        make_classifier("silero", 11025)
    with pytest.raises(ClassifierError):
        c.classify(np.zeros((2, 160), np.int16))
    assert c.classify(np.zeros((0, 256), np.int16)) == []


def real_call() -> tuple[np.ndarray, dict]:
    files = load_subset()
    _name, pcm, lab = next(f for f in files if f[2]["snr_db"] == 20 and f[2]["utterances"])
    return pcm, lab


def test_hears_real_speech_and_not_digital_silence() -> None:
    installed()
    pcm, lab = real_call()
    c = make_classifier("silero", 8000)
    n = len(pcm) // 256
    dec = np.array(c.classify(pcm[: n * 256].reshape(n, 256)))
    speech, spans = speech_mask(len(pcm), lab)
    in_speech = speech[: n * 256].reshape(n, 256).mean(axis=1) > 0.9
    outside = ~spans[: n * 256].reshape(n, 256).any(axis=1)
    assert dec[in_speech].mean() > 0.7
    assert dec[outside].mean() < 0.2
    # hold/mute: digital silence after noise is never speech
    c2 = make_classifier("silero", 8000)
    sig = concat(noise(8000, 300, seed=1), silence(8000))
    d2 = c2.classify(sig[: 62 * 256].reshape(62, 256))
    assert not any(d2[33:])


def test_batch_across_calls_equals_one_call_at_a_time() -> None:
    installed()
    pcm, _ = real_call()
    calls = 4
    n = 60
    streams = [np.roll(pcm, 3000 * i)[: n * 256].reshape(n, 256) for i in range(calls)]
    alone = [make_classifier("silero", 8000) for _ in range(calls)]
    batched = [make_classifier("silero", 8000) for _ in range(calls)]
    probs_alone: list[list[bool]] = [[] for _ in range(calls)]
    for k in range(n):
        tick = np.stack([s[k] for s in streams])
        got = classify_batch(batched, tick)
        for i, c in enumerate(alone):
            probs_alone[i].append(c.classify(tick[i : i + 1])[0])
        assert got == [p[-1] for p in probs_alone]
    assert any(any(p) for p in probs_alone)


def test_in_the_endpointer() -> None:
    installed()
    pcm, lab = real_call()
    cfg = EndpointingConfig(classifier="silero")  # type: ignore[arg-type]
    found = check(cfg, 8000, pcm, run(cfg, pcm, [160]))
    assert len(found) >= len(lab["utterances"]) - 1

"""Issue 12 defects, one regression test each, and the bands classifier's behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import EndpointingConfig
from engine.endpointing import BandClassifier, FrameClassifier, make_classifier

from .helpers import check, run
from .signals import concat, noise, silence, speechlike

CLASSIFIERS = ["bands", "bands-unmute", "bands-click", "bands-pitch", "bands-hold", "energy", "webrtc"]


def available(name: str) -> None:
    if name == "webrtc":
        pytest.importorskip("webrtcvad")


class Scripted:
    """A classifier that returns given decisions (the endpointer's rules, isolated)."""

    def __init__(self, decisions: list[bool], frame: int = 160) -> None:
        self.decisions = list(decisions)
        self.frame_samples = frame

    def classify(self, frames: np.ndarray) -> list[bool]:
        out = [self.decisions.pop(0) if self.decisions else False for _ in range(frames.shape[0])]
        return out


def test_default_start_confirms_on_80_ms_of_speech_frames() -> None:
    """At 5 dB quiet utterances have only 80 ms (4 frames) above the trigger; 60 ms needed 5 and missed them."""
    cfg = EndpointingConfig()
    decisions = [False] * 10 + [True] * 4 + [False] * 30
    clf: FrameClassifier = Scripted(decisions)
    sig = np.zeros(len(decisions) * 160, np.int16)
    r = run(cfg, sig, [160], classifier=clf)
    found = check(cfg, 8000, sig, r)
    assert len(found) == 1 and found[0].start == 10 * 160 and found[0].last_speech_end == 14 * 160


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("rms", [30.0, 300.0, 3000.0])
def test_digital_silence_after_noise_is_never_speech(name: str, rms: float) -> None:
    """Twilio hold/mute: noise gives way to μ-law 0xFF (PCM 0). WebRTC's hangover called those frames
    speech (a false utterance sent to STT); after it, resuming noise must not look like speech either."""
    available(name)
    cfg = EndpointingConfig(classifier=name)  # type: ignore[arg-type]
    line = noise(8000 * 3, rms, seed=3)
    sig = concat(line, silence(8000 * 2), noise(8000 * 3, rms, seed=4))
    r = run(cfg, sig, [160])
    zero = slice(len(line) // 160 + 1, (len(line) + 16000) // 160)
    assert not any(r.decisions[zero]), "digital silence judged speech"
    if name != "webrtc":  # WebRTC's own model re-adapts to resuming noise; ours keep their floors
        assert r.events == [], "noise after hold/mute started speech"


def voiced_tail_call(rate: int = 8000) -> tuple[np.ndarray, int]:
    """Speech in white noise whose last 280 ms is a quiet low vowel: within 2 dB of the noise full-band
    (energy's off_db is 3), but 300–800 Hz carries it. Returns the signal and the true end of speech."""
    rng = np.random.default_rng(7)
    body = speechlike(rate, rate, level=3000.0).astype(np.float64)
    n_tail = 280 * rate // 1000
    t = np.arange(n_tail) / rate
    tail = sum(np.sin(2 * np.pi * k * 150 * t) for k in (3, 4, 5))  # 450/600/750 Hz
    tail *= 300 * 0.7 / np.sqrt(np.mean(tail**2))  # 0.49 of the noise power: +1.7 dB full-band
    speech = np.concatenate([np.zeros(rate), body, tail, np.zeros(rate)])
    line = speech + rng.standard_normal(len(speech)) * 300
    end = rate + len(body) + n_tail
    return np.clip(line, -32768, 32767).astype(np.int16), end


def test_default_classifier_hears_quiet_voiced_tails() -> None:
    """Energy ends ~280 ms early on a tail within 2 dB of the noise floor; the default must hear it."""
    sig, true_end = voiced_tail_call()
    cfg = EndpointingConfig()
    found = check(cfg, 8000, sig, run(cfg, sig, [160]))
    assert len(found) == 1
    assert abs(found[0].last_speech_end - true_end) <= 2 * 160


def hum_call(rate: int = 8000) -> tuple[np.ndarray, int]:
    """Loud mains hum on the line (60 Hz and harmonics to 420 Hz, 10 dB above the speech) and a talker."""
    t = np.arange(4 * rate) / rate
    hum = sum(np.sin(2 * np.pi * k * 60 * t) / k for k in (1, 2, 3, 5, 7)) * 6000
    speech = concat(silence(rate), speechlike(rate, rate, level=2000.0), silence(2 * rate)).astype(np.float64)
    return np.clip(hum + speech, -32768, 32767).astype(np.int16), 2 * rate


@pytest.mark.parametrize("rate", [8000, 16000])
def test_default_classifier_stops_with_the_talker_over_hum(rate: int) -> None:
    """Energy kept hearing speech after the speaker stopped on hum/babble (~340 ms p50 on the bench)."""
    sig, true_end = hum_call(rate)
    cfg = EndpointingConfig(sample_rate=rate)  # type: ignore[arg-type]
    found = check(cfg, rate, sig, run(cfg, sig, [rate // 50], sample_rate=rate))
    assert len(found) == 1
    assert true_end - rate // 50 <= found[0].last_speech_end <= true_end + 2 * (rate // 50)


def test_bands_classifier_contract() -> None:
    c = make_classifier("bands", 16000, frame_ms=30)
    assert isinstance(c, BandClassifier) and c.frame_samples == 480
    assert c.noise_floors_db is None
    c.classify(np.zeros((3, 480), np.int16))
    assert c.noise_floors_db == pytest.approx([20.0] * 6)  # digital silence: the minimum
    q = make_classifier("bands", 8000)
    assert isinstance(q, BandClassifier)
    q.classify(noise(8000 * 2, 300, seed=1).reshape(-1, 160))
    floors = q.noise_floors_db
    assert floors is not None and all(40 < f < 52 for f in floors)  # white noise σ=300: ≈ 49.5 dB per band
    # batch and frame-by-frame agree
    sig = concat(noise(8000, 100), speechlike(8000, 8000), noise(8000, 100)).reshape(-1, 160)
    a, b = BandClassifier(8000), BandClassifier(8000)
    assert a.classify(sig) == [b.classify(row[None])[0] for row in sig]
    # DC offsets are not speech
    dc = BandClassifier(8000)
    assert not any(dc.classify((np.full((50, 160), 1000) + noise(8000, 10).reshape(-1, 160)).astype(np.int16)))

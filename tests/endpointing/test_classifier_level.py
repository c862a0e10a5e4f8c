"""Issue 12 rounds 5 and 6: ``bands-level`` — a talker-level gate that ends babble run-ons on a busy line."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.config import EndpointingConfig
from engine.endpointing import SpeechEnded, SpeechStarted, make_classifier
from engine.endpointing.classifiers import classify_batch

from .helpers import run
from .signals import concat, noise, silence, speechlike
from .test_real_corpus import load_subset

RATE = 8000


def _babble(snr: int) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    files = [f for f in load_subset() if f[2]["noise"] == "babble" and f[2]["snr_db"] == snr and not f[2]["noise_only"]]
    if not files:
        pytest.skip("committed real-speech subset not present")
    return files


def _end_delays(name: str, snr: int) -> list[float]:
    """Per labelled utterance: the decision of the last detection that overlaps it − its true end, in ms (as
    bench/endpointing_eval.py scores it; inf when nothing overlaps it)."""
    cfg = EndpointingConfig(classifier=name, end_ms=80, merge_ms=600)  # type: ignore[arg-type]
    out = []
    for _, pcm, lab in _babble(snr):
        events = run(cfg, pcm, [160]).events
        det, start = [], 0
        for e in events:
            if isinstance(e, SpeechStarted):
                start = e.start
            elif isinstance(e, SpeechEnded):
                det.append((start, e.last_speech_end, e.end))
        for u in lab["utterances"]:
            over = [d for d in det if d[0] < u["end"] and d[1] > u["start"]]
            out.append((over[-1][2] - u["end"]) * 1000 / RATE if over else float("inf"))
    return out


def test_babble_at_20_db_is_decided_within_250_ms_of_the_true_end() -> None:
    """The committed subset at 20 dB babble (8 utterances): ``bands-click`` decides none of them within 250 ms
    of the true end (seconds of run-on); ``bands-level`` decides 7 of them there (the other: the call's first
    words, before the line is known to be busy)."""
    near = [abs(d) <= 250 for d in _end_delays("bands-level", 20)]
    assert sum(near) >= len(near) - 1
    assert not any(abs(d) <= 250 for d in _end_delays("bands-click", 20))


def test_babble_at_5_db_is_left_to_bands_click() -> None:
    """At 5 dB the talker's measured level is too close to the babble's: the gate stays disengaged."""
    assert _end_delays("bands-level", 5) == _end_delays("bands-click", 5)


def _decisions(name: str, x: np.ndarray) -> list[bool]:
    c = make_classifier(name, RATE)
    n = len(x) // 160
    return [c.classify(x[k * 160 : (k + 1) * 160].reshape(1, 160))[0] for k in range(n)]


@pytest.mark.parametrize("talker", [False, True])
def test_outside_a_busy_line_it_is_bands_click(talker: bool) -> None:
    """Stationary noise, a talker over it, digital silence: never busy, every decision is ``bands-click``'s."""
    n = 160 * 300
    x = concat(noise(n, 200, seed=1), silence(160 * 20), noise(n, 200, seed=2))
    if talker:
        x = x + concat(silence(n // 2), speechlike(n // 2, RATE, level=3000, seed=3), silence(len(x) - n))
    assert _decisions("bands-level", x) == _decisions("bands-click", x)


def test_it_only_removes_speech_frames() -> None:
    """On real babble every frame ``bands-level`` calls speech ``bands-click`` calls speech too, and it removes
    some (the babble after the talker)."""
    _, x, _ = _babble(20)[0]
    level, click = _decisions("bands-level", x), _decisions("bands-click", x)
    assert all(c for lv, c in zip(level, click, strict=True) if lv)
    assert sum(level) < sum(click) - 100


def test_batched_equals_alone_on_real_babble() -> None:
    """classify_batch over 40 streams of committed babble (different offsets: the vectorised decision's path)
    == each stream alone, frame by frame."""
    _, x, _ = _babble(20)[0]
    offsets = [160 * 9 * k + 80 * (k % 2) for k in range(40)]
    n = (len(x) - max(offsets)) // 160
    streams = [x[o : o + n * 160].reshape(n, 160) for o in offsets]
    alone = [_decisions("bands-level", s.reshape(-1)) for s in streams]
    batch = [make_classifier("bands-level", RATE) for _ in offsets]
    got = [classify_batch(batch, np.stack([s[k] for s in streams])) for k in range(n)]
    assert [list(col) for col in zip(*got, strict=True)] == alone


def test_once_engaged_on_a_busy_line_the_gate_stays_engaged() -> None:
    """Round 6: on the committed 20 dB babble calls the gate, once engaged, stays engaged to the end of the call:
    through the corpus's hold/mute stretch (digital silence is no evidence about the line: round 5 dropped the
    busy state there and ``bands-click``'s run-on came back for a second or more) and after the talker's last
    words (round 5's release churn: babble after the end became false starts)."""
    for _, x, _ in _babble(20):
        c = make_classifier("bands-level", RATE)
        engaged = []
        for k in range(len(x) // 160):
            c.classify(x[k * 160 : (k + 1) * 160].reshape(1, 160))
            engaged.append(bool(c._engaged))  # type: ignore[attr-defined]
        first = engaged.index(True)
        assert all(engaged[first:])


def test_digital_silence_on_an_engaged_line_never_starts_speech_and_keeps_its_state() -> None:
    """Hold/mute on an engaged line: every silent frame is not speech, and the talker's level, the background and
    the engaged state come back with the line as they were."""
    _, x, _ = _babble(20)[0]
    c = make_classifier("bands-level", RATE)
    frames = x[: (len(x) // 160) * 160].reshape(-1, 160)
    for f in frames[:300]:
        c.classify(f.reshape(1, 160))
    before = (c._engaged, c._busy, c._talker, c._ring)  # type: ignore[attr-defined]
    assert before[0]
    assert not any(c.classify(np.zeros((1, 160), np.int16))[0] for _ in range(150))
    assert (c._engaged, c._busy, c._talker, c._ring) == before  # type: ignore[attr-defined]

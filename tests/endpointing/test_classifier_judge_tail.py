"""Issue 12 round 9: ``bands-judge``'s tail decision reads the shape of Silero's probability and the call's own
level on the talker, not a probability fitted on the dev voice. Scripted stages (no model needed): the bands say
what the script says, and Silero's probability for a window is written into the window's own samples."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.endpointing.judge import JudgeClassifier

RATE = 8000
FRAME = 160
LOUD, QUIET = 3000, 300  # the talker's frames and the noise's: the line's SNR reads 20 dB (x = 1)


class ScriptedBands:
    """The bands' decisions, in order."""

    sample_rate = RATE
    frame_samples = FRAME

    def __init__(self, said: list[bool]) -> None:
        self.said = said
        self.i = 0

    def classify(self, frames: np.ndarray) -> list[bool]:
        out = self.said[self.i : self.i + len(frames)]
        self.i += len(frames)
        return out


class ScriptedSilero:
    """Silero's probability for a window: the marker of the frame it ends in (the mean of its last two samples)."""

    sample_rate = RATE
    frame_samples = 256
    _session = None  # the judge's kind key (r9-cost's plumbing); one call at a time never reaches the ONNX session

    def __init__(self, probs: dict[int, float]) -> None:
        self.probs = probs

    def reset(self) -> None:
        pass

    def probabilities(self, frames: np.ndarray) -> list[float]:
        return [self.probs[round((int(w[-1]) + int(w[-2])) / 2)] for w in frames]


def _run(said: list[bool], marks: list[int], probs: dict[int, float], **knobs: Any) -> list[bool]:
    """One frame per (bands decision, marker): a ±amplitude square wave (never digital silence) around the marker."""
    sign = np.where(np.arange(FRAME) % 2 == 0, 1, -1)
    frames = np.stack([(m + (LOUD if b else QUIET) * sign).astype(np.int16) for b, m in zip(said, marks, strict=True)])
    judge = JudgeClassifier(ScriptedBands(said), ScriptedSilero(probs), **knobs)  # type: ignore[arg-type]
    return judge.classify(frames)


SPEECH = 12  # frames the bands call speech, then 7 judged frames and 3 more
SAID = [True] * SPEECH + [False] * 10


def test_a_falling_probability_ends_the_judged_run_though_it_stays_over_round_8s_threshold() -> None:
    """After the talker's words Silero falls window after window (0.999 → 0.96) but never under 0.95, round 8's
    threshold on a 20 dB line: round 8 judged all 7 tail frames speech (140 ms of end delay); the fall ends it."""
    probs = {0: 0.999, 1: 0.998, 2: 0.99, 3: 0.97, 4: 0.965, 5: 0.96}
    marks = [0] * SPEECH + [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    old = _run(SAID, marks, probs, rel=0.0, fall=0.0)
    new = _run(SAID, marks, probs)
    assert old[SPEECH : SPEECH + 7] == [True] * 7 and not any(old[SPEECH + 7 :])
    first_fall = marks.index(3)  # its window may end in the next frame (a frame's judgement: the last window's)
    assert all(new[:first_fall]) and not any(new[first_fall + 2 :])
    assert sum(new) <= first_fall + 1 < SPEECH + 7


def test_a_held_probability_keeps_the_judged_frames() -> None:
    """A weak syllable under the bands' bars: Silero holds (0.99 and back up) — every judged frame stays speech."""
    probs = {0: 0.999, 1: 0.99, 2: 0.995}
    marks = [0] * SPEECH + [1, 1, 2, 2, 1, 1, 2, 2, 1, 1]
    new = _run(SAID, marks, probs)
    assert new[: SPEECH + 7] == [True] * (SPEECH + 7) and not any(new[SPEECH + 7 :])


def test_the_threshold_follows_the_calls_own_level_on_the_talker() -> None:
    """A voice Silero is less sure of (0.9 on its words): a held 0.85 in the tail is this call's speech (round 8's
    0.95 on a 20 dB line called it silence); with Silero at 0.9999 on the words, 0.85 is 7 logits under: silence."""
    marks = [0] * SPEECH + [1] * 10
    unsure = _run(SAID, marks, {0: 0.9, 1: 0.85})
    assert unsure[: SPEECH + 7] == [True] * (SPEECH + 7)
    assert not any(_run(SAID, marks, {0: 0.9, 1: 0.85}, rel=0.0, fall=0.0)[SPEECH:])
    assert not any(_run(SAID, marks, {0: 0.9999, 1: 0.85}, fall=0.0)[SPEECH:])


def test_veto_silences_a_start_silero_does_not_hear_and_only_from_idle() -> None:
    """``veto`` (an option, off by default): a bands run from idle is silence from its arming frame while Silero stays
    under it (so 2 frames reach the endpointer, never the 4 that confirm a start); once Silero hears the talker the
    rest of the run is the bands'. A run inside a judged tail is never vetoed. Off, nothing changes."""
    said = [False] * 5 + [True] * 8 + [False] * 3 + [True] * 6
    quiet_start = {0: 0.001, 1: 0.001}
    marks = [0] * len(said)
    vetoed = _run(said, marks, quiet_start, veto=0.01)
    assert vetoed[:7] == [False] * 5 + [True, True] and not any(vetoed[7:16])
    assert vetoed[16:] == [True] * 6  # bands speech again inside the vetoed run's tail: not a start from idle
    assert _run(said, marks, quiet_start)[5:13] == [True] * 8
    hears = _run(said, [0] * 9 + [1] * 13, {0: 0.001, 1: 0.9}, veto=0.01)
    assert hears[:9] == [False] * 5 + [True, True, False, False] and all(hears[10:13])

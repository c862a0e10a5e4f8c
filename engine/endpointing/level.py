"""Talker-level gate for the bands classifier: the ``bands-level`` classifier (issue 12, rounds 5 to 7).

Babble of other voices 5–20 dB under the caller is speech to every frame classifier measured here (the bands,
WebRTC, Silero): after the caller stops, ``bands-click`` keeps hearing speech for 4–6 s (BENCHMARKS.md). This
cue works at the level of the talker instead of the frame: once the line is *busy* (the background itself sits
far over the bands' floors, which stationary noise never does), a frame the bands call speech must also be
near the caller's own level, measured on this call, to count.

Per frame, on the in-band power ``x`` (dB, the sum of the bands' ``1 + power``):

* **background**: minimum statistics, the quietest frame of the last ``BLOCKS`` × ``BLOCK_FRAMES`` (1.28 s):
  in six-talker babble that is the babble's dips, 5–10 dB under its median; in a talker's speech it is the
  background heard between syllables;
* **busy**: the background's minimum ≥ ``BUSY_DB`` over the summed floors (on), < ``BUSY_OFF_DB`` (off). In hum,
  line and pink noise the floors *are* the background (dev: median −1…0 dB per file); in babble they stay
  where the quiet line put them, 10–16 dB under it (median per file). Once the gate is engaged (below), "off"
  is measured against the quietest floors since the line went busy, not the current ones (round 6: the floors
  creep up into the babble's dips, and round 5 took that for the babble going away), on the loudest of the
  last ``BLOCKS`` block minima rather than the quietest (round 7: babble built of other talkers' phrases has
  short pauses of its own, and one frame under those floors released a 10 dB line's gate), and digital silence
  (hold/mute) is skipped: no evidence about the line, the state comes back with it. Elsewhere digital silence
  pulls the background down and turns busy off, as in round 5;
* **talker**: a peak level (rises 0.2 of the way to a louder frame, sinks ``DECAY_DB`` per frame), learnt only
  from frames ≥ ``LEARN_DB`` over the background while busy, so babble alone rarely feeds it. On an engaged
  line it stops sinking ``RECENT_FRAMES`` after the gate's last open frame (round 6): the caller is silent, and
  a level sinking into the babble released the gate after their last words, turning the babble ``bands-click``
  had merged into the last utterance into false starts (round 5's "release churn");
* **measured SNR**: talker − background, averaged (``SNR_ALPHA`` per frame, ~1 s). The gate is *engaged* when
  it is ≥ ``SNR_MIN_DB``, and released under ``SNR_MIN_DB − SNR_HYST_DB``: it acts only where the talker stands
  clearly over the babble (20 dB SNR). Under that, a level cannot tell the caller's quieter syllables from
  babble bursts (dev, 10 / 5 dB: babble after the end reaches the talker's level − 10 / − 5 dB, the caller's
  last 200 ms sit at − 9 / − 8 dB median), and gating them cut utterances, missed one at 5 dB and raised false
  starts to 3–40 per minute of babble (sweeps in BENCHMARKS.md): there it is mostly ``bands-click`` unchanged;
* **gate** (engaged, on a frame the bands call speech): it opens after ``ON_FRAMES`` frames over the on bar
  (talker − ``ON_DROP_DB``, at least background + ``START_DB``) — or, within ``RECENT_FRAMES`` of its last open
  frame (a pause inside an utterance), after ``REOPEN_FRAMES`` over talker − ``REOPEN_DROP_DB`` (round 6: the
  caller's next words come back sooner; a fresh start keeps the stricter bar, so a babble burst long after the
  caller's last words must reach near their level) —, stays open while frames are over the hold bar
  (talker − ``HOLD_DROP_DB``, at least background + ``HOLD_DB``), and then for ``TAIL_FRAMES`` more frames (a
  bounded tail: the caller's quiet last syllables sit under the babble's level, and a tail that could be
  re-armed by babble would run on again). While the gate waits for its run, a frame over the bar is already
  speech (round 7): a run that opens the gate then starts the utterance at its first frame, not ``need − 1``
  frames later, and a run too short to open it (≤ 2 frames) is shorter than the Endpointer's shortest
  confirming run (3 frames: ``start_ms`` ≥ 10), so it starts nothing.

The gate only removes frames the bands call speech, never adds any, and leaves the bands' own state (floors,
hysteresis) as ``bands-click`` has it: so digital silence never starts speech, and outside busy lines (hum,
line, pink, clean) every decision is ``bands-click``'s (checked on every non-babble row of dev, test and extra).
``classify_batch`` runs ``bands-click``'s vectorised decision (:func:`~engine.endpointing.classifiers._decide_rows`)
and then the gate per stream, on the rows' sums taken left to right as ``sum`` does, so batched == alone to the
bit.

Cost: a log10 and ~20 Python operations per frame, and one (rows, 6) sum per tick batched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .classifiers import BandClassifier, Frames, _band_array, _decide_rows, _row_sums

#: Minimum statistics: blocks of BLOCK_FRAMES frames, the quietest of the last BLOCKS blocks (1.28 s at 20 ms).
BLOCK_FRAMES = 16
BLOCKS = 4
#: The line is busy when the background's minimum is BUSY_DB over the summed floors; no longer under BUSY_OFF_DB.
BUSY_DB = 10.0
BUSY_OFF_DB = 0.0
#: Frames this far over the background teach the talker's level.
LEARN_DB = 20.0
#: A start opens the gate on ON_FRAMES frames over max(talker − ON_DROP_DB, background + START_DB) ...
ON_FRAMES = 3
ON_DROP_DB = 10.0
START_DB = 16.0
#: ... within RECENT_FRAMES of the gate's last open frame (inside an utterance) REOPEN_FRAMES frames over
#: max(talker − REOPEN_DROP_DB, background + START_DB) reopen it (round 6) ...
RECENT_FRAMES = 50
REOPEN_DROP_DB = 12.0
REOPEN_FRAMES = 2
#: ... it holds while frames are over max(talker − HOLD_DROP_DB, background + HOLD_DB), then TAIL_FRAMES more.
HOLD_DROP_DB = 18.0
HOLD_DB = 12.0
TAIL_FRAMES = 8
#: Engaged at a measured SNR (talker − background, averaged SNR_ALPHA per frame) ≥ SNR_MIN_DB; released
#: under SNR_MIN_DB − SNR_HYST_DB.
SNR_MIN_DB = 28.0
SNR_HYST_DB = 4.0
SNR_ALPHA = 0.02
#: The talker's level rises TALKER_UP of the way to a louder frame, sinks DECAY_DB per frame (1 dB/s) while the
#: gate was open in the last RECENT_FRAMES frames, and holds still after that (round 6: the caller is silent).
TALKER_UP = 0.2
DECAY_DB = 0.02
#: Round 7: frames over the on bar count as speech while the gate waits for its run (see ``_level``). So
#: ON_FRAMES and REOPEN_FRAMES must stay ≤ 3: a run one frame short of them is then shorter than the
#: Endpointer's shortest confirming run (3 frames, ``start_ms`` ≥ 10) and starts nothing.
PROVISIONAL = True
#: Round 7: an engaged line's busy state ends on the loudest of the last BLOCKS block minima, not the quietest.
ROBUST_OFF = True

_NONE = -math.inf  # a level not measured yet


class LevelBandClassifier(BandClassifier):
    """``bands-click`` whose speech frames must also pass a talker-level gate on a busy line (module docstring)."""

    __slots__ = ("_above", "_block_min", "_busy", "_engaged", "_gate", "_in_block", "_left", "_mins", "_quiet",
                 "_ring", "_silent_total", "_since", "_snr", "_talker")  # fmt: skip

    def __init__(self, sample_rate: int, frame_ms: int = 20, **bands: float) -> None:
        super().__init__(sample_rate, frame_ms, **bands)  # type: ignore[arg-type]
        self._mins: list[float] = []  # the last BLOCKS block minima (dB)
        self._ring = math.inf  # their minimum
        self._block_min = math.inf  # the current block's minimum
        self._in_block = 0  # frames in the current block
        self._busy = False
        self._since = 1 << 30  # frames since the gate was last open
        self._silent_total = self._silence_ratio * self._nb  # a sum this low: digital silence (every band at it)
        self._quiet = math.inf  # the quietest summed floors (dB) since the line went busy
        self._talker = _NONE
        self._snr = _NONE
        self._engaged = False
        self._gate = False  # the gate is open (the last frame passed it)
        self._above = 0  # consecutive frames over the on bar
        self._left = 0  # tail frames left once under the hold bar

    def _level(self, speech: bool, total: float) -> bool:
        """The gate on one frame: ``speech``, the bands' own decision; ``total``, the sum of its bands' ratios."""
        if self._engaged and total <= self._silent_total:
            # Digital silence (hold, mute) on an engaged line: no evidence about the line (round 5 let it end the
            # busy state, and the babble run-on came back with the line); the bands never call it speech.
            # Elsewhere it enters the minimum as in round 5.
            self._gate = False
            self._above = 0
            return speech
        x = 10.0 * math.log10(total)
        cur = self._block_min if self._block_min < x else x
        n = self._in_block + 1
        if n >= BLOCK_FRAMES:
            mins = self._mins
            mins.append(cur)
            if len(mins) > BLOCKS:
                del mins[0]
            self._ring = min(mins)
            self._block_min = math.inf
            n = 0
        else:
            self._block_min = cur
        self._in_block = n
        ring = self._ring
        low = ring if ring < cur else cur
        floors = self._floors
        if floors is not None and ring != math.inf:
            fl = 10.0 * math.log10(sum(floors))
            if self._busy:
                # Off against the quietest floors since the line went busy: the floors creep up into the babble
                # (its dips), which round 5 took for the babble going away.
                quiet = self._quiet = fl if fl < self._quiet else self._quiet
                if self._engaged:
                    # Round 7: off only when every block of the last 1.28 s had a frame under the quiet floors
                    # (the line went quiet), not on one dip: babble built of other talkers' phrases has short
                    # pauses of its own, and one frame at the floors turned a 10 dB babble line's gate off.
                    ref = max(self._mins) if ROBUST_OFF and len(self._mins) == BLOCKS else ring
                    busy = ref - quiet >= BUSY_OFF_DB
                else:
                    busy = ring - fl >= BUSY_OFF_DB
            else:
                busy = ring - fl >= BUSY_DB
                self._quiet = fl
        else:
            busy = self._busy and BUSY_OFF_DB <= 0.0  # as round 5: "over" was 0 dB without floors
        self._busy = busy
        talker = self._talker
        snr = self._snr
        if busy and talker != _NONE:
            snr = self._snr = talker - low if snr == _NONE else snr + SNR_ALPHA * (talker - low - snr)
        if not busy:
            self._engaged = False
        elif self._engaged:
            self._engaged = snr >= SNR_MIN_DB - SNR_HYST_DB
        else:
            self._engaged = snr >= SNR_MIN_DB
        out = speech
        above = 0
        since = self._since + 1
        if self._engaged and speech:
            hold = max(low + HOLD_DB, talker - HOLD_DROP_DB)
            if since <= RECENT_FRAMES:  # inside an utterance: the caller's next words after a pause
                on = max(low + START_DB, talker - REOPEN_DROP_DB, hold)
                need = REOPEN_FRAMES
            else:
                on = max(low + START_DB, talker - ON_DROP_DB, hold)
                need = ON_FRAMES
            above = self._above + 1 if x > on else 0
            gate = True
            if not self._gate:
                gate = above >= need
                # Round 7: a frame over the bar is speech while the gate waits for its run (it opens on the
                # run's last frame): a run too short to open it is shorter than the Endpointer's confirming
                # run, so it starts nothing, and a run that opens it starts where it began, not need − 1
                # frames later.
                out = gate or (PROVISIONAL and above > 0)
                self._left = TAIL_FRAMES
            elif x > hold:
                self._left = TAIL_FRAMES
            elif self._left > 0:
                self._left -= 1
            else:
                out = gate = False
        else:
            gate = out
        self._gate = gate and self._engaged
        self._since = 0 if self._gate else since
        self._above = above
        if busy and x > talker and x > low + LEARN_DB:
            self._talker = x if talker == _NONE else talker + TALKER_UP * (x - talker)
        elif talker != _NONE:
            self._talker = talker - DECAY_DB if since <= RECENT_FRAMES or not self._engaged else talker
        return out

    def classify(self, frames: Frames) -> list[bool]:
        all_ratios, swings = self.ratios_and_swings(frames)
        level = self._level
        decide = self.decide
        return [level(decide(r, w), sum(r)) for r, w in zip(all_ratios, swings, strict=True)]

    @classmethod
    def classify_batch(cls, classifiers: Sequence[BandClassifier], frames: Frames) -> list[bool]:
        """One frame for each of many streams: ``bands-click``'s batched decision, then each stream's gate on its
        row's sum (left to right, as :meth:`classify`'s ``sum``: the same float64 additions)."""
        first = classifiers[0]
        streams = [c for c in classifiers if isinstance(c, LevelBandClassifier) and c._basis is first._basis]
        if len(streams) != len(classifiers):
            return [c.classify(frames[i : i + 1])[0] for i, c in enumerate(classifiers)]
        bands = _band_array(first._basis, first._group, frames)
        totals: list[float] = _row_sums(bands.astype(np.float64)).tolist()
        out, _ = _decide_rows(streams, bands, frames, None)  # frames: the swings where the click rule asks
        return [c._level(s, t) for c, s, t in zip(streams, out, totals, strict=True)]


def make_level(sample_rate: int, frame_ms: int = 20) -> LevelBandClassifier:
    """``bands-level``: ``bands-click``'s parameters plus the gate."""
    from .classifiers import CLICK_OFF_DB, CLICK_ON_DB, CLICK_RATIO, UNMUTE_RESUME_MS

    return LevelBandClassifier(sample_rate, frame_ms, resume_ms=UNMUTE_RESUME_MS, on_db=CLICK_ON_DB,
                               off_db=CLICK_OFF_DB, impulse_ratio=CLICK_RATIO)  # fmt: skip

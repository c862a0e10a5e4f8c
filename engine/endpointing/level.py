"""Talker-level gate for the bands classifier: the ``bands-level`` classifier (issue 12, round 5).

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
  where the quiet line put them, 10–16 dB under it (median per file). Digital silence pulls the background
  down: hold/mute turns it off;
* **talker**: a peak level (rises 0.2 of the way to a louder frame, sinks ``DECAY_DB`` per frame), learnt only
  from frames ≥ ``LEARN_DB`` over the background while busy, so babble alone rarely feeds it;
* **measured SNR**: talker − background, averaged (``SNR_ALPHA`` per frame, ~1 s). The gate is *engaged* when
  it is ≥ ``SNR_MIN_DB``, and released under ``SNR_MIN_DB − SNR_HYST_DB``: it acts only where the talker stands
  clearly over the babble (20 dB SNR). Under that, a level cannot tell the caller's quieter syllables from
  babble bursts (dev, 10 / 5 dB: babble after the end reaches the talker's level − 10 / − 5 dB, the caller's
  last 200 ms sit at − 9 / − 8 dB median), and gating them cut utterances, missed one at 5 dB and raised false
  starts to 3–40 per minute of babble (sweeps in BENCHMARKS.md): there it is mostly ``bands-click`` unchanged;
* **gate** (engaged, on a frame the bands call speech): it opens after ``ON_FRAMES`` frames over the on bar
  (talker − ``ON_DROP_DB``, at least background + ``START_DB``), stays open while frames are over the hold bar
  (talker − ``HOLD_DROP_DB``, at least background + ``HOLD_DB``), and then for ``TAIL_FRAMES`` more frames (a
  bounded tail: the caller's quiet last syllables sit under the babble's level, and a tail that could be
  re-armed by babble would run on again).

The gate only removes frames the bands call speech, never adds any, and leaves the bands' own state (floors,
hysteresis) as ``bands-click`` has it: so digital silence never starts speech, and outside busy lines (hum,
line, pink, clean) every decision is ``bands-click``'s. ``classify_batch`` runs ``bands-click``'s vectorised
decision (:func:`~engine.endpointing.classifiers._decide_rows`) and then the gate per stream, on the rows'
sums taken left to right as ``sum`` does, so batched == alone to the bit.

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
#: The gate opens on ON_FRAMES frames over max(talker − ON_DROP_DB, background + START_DB) ...
ON_FRAMES = 3
ON_DROP_DB = 10.0
START_DB = 16.0
#: ... holds while frames are over max(talker − HOLD_DROP_DB, background + HOLD_DB), then TAIL_FRAMES more.
HOLD_DROP_DB = 15.0
HOLD_DB = 12.0
TAIL_FRAMES = 8
#: Engaged at a measured SNR (talker − background, averaged SNR_ALPHA per frame) ≥ SNR_MIN_DB; released
#: under SNR_MIN_DB − SNR_HYST_DB.
SNR_MIN_DB = 28.0
SNR_HYST_DB = 4.0
SNR_ALPHA = 0.02
#: The talker's level rises TALKER_UP of the way to a louder frame, sinks DECAY_DB per frame (1 dB/s).
TALKER_UP = 0.2
DECAY_DB = 0.02

_NONE = -math.inf  # a level not measured yet


class LevelBandClassifier(BandClassifier):
    """``bands-click`` whose speech frames must also pass a talker-level gate on a busy line (module docstring)."""

    __slots__ = ("_above", "_block_min", "_busy", "_engaged", "_gate", "_in_block", "_left", "_mins", "_ring",
                 "_snr", "_talker")  # fmt: skip

    def __init__(self, sample_rate: int, frame_ms: int = 20, **bands: float) -> None:
        super().__init__(sample_rate, frame_ms, **bands)  # type: ignore[arg-type]
        self._mins: list[float] = []  # the last BLOCKS block minima (dB)
        self._ring = math.inf  # their minimum
        self._block_min = math.inf  # the current block's minimum
        self._in_block = 0  # frames in the current block
        self._busy = False
        self._talker = _NONE
        self._snr = _NONE
        self._engaged = False
        self._gate = False  # the gate is open (the last frame passed it)
        self._above = 0  # consecutive frames over the on bar
        self._left = 0  # tail frames left once under the hold bar

    def _level(self, speech: bool, total: float) -> bool:
        """The gate on one frame: ``speech``, the bands' own decision; ``total``, the sum of its bands' ratios."""
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
        over = ring - 10.0 * math.log10(sum(floors)) if floors is not None and ring != math.inf else 0.0
        busy = self._busy = over >= BUSY_OFF_DB if self._busy else over >= BUSY_DB
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
        if self._engaged and speech:
            hold = max(low + HOLD_DB, talker - HOLD_DROP_DB)
            on = max(low + START_DB, talker - ON_DROP_DB, hold)
            above = self._above + 1 if x > on else 0
            if not self._gate:
                out = above >= ON_FRAMES
                self._left = TAIL_FRAMES
            elif x > hold:
                self._left = TAIL_FRAMES
            elif self._left > 0:
                self._left -= 1
            else:
                out = False
        self._gate = out and self._engaged
        self._above = above
        if busy and x > talker and x > low + LEARN_DB:
            self._talker = x if talker == _NONE else talker + TALKER_UP * (x - talker)
        elif talker != _NONE:
            self._talker = talker - DECAY_DB
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

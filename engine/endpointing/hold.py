"""Syllable hold for the bands classifier: the ``bands-hold`` classifier (issue 12, rounds 4 and 5).

Where ``bands-click`` loses labelled speech under anchor scoring at 10 and 5 dB (bench/endpointing_misses.py,
BENCHMARKS.md): two thirds of it is *inside* utterances, between two detections (dev 5.8 of 8.5 % at 10 dB,
8.8 of 12.9 % at 5 dB; Silero 1.6 / 2.5 %), mostly in pink and line noise: a weak syllable between two words
sits 2–4.5 dB per band above the floors, under the start bar, and once 80 ms of it are called silence the
utterance ends and the next word has to confirm a new one. Frame by frame those syllables cannot be told from
the noise by their bands (10 % of them pass at 1 % of noise frames, whatever the band weighting), but they
come right after the talker's words, where the noise is unlikely to be alone.

So: for ``hold_frames`` frames after a frame that was speech by the bands' own rule, and only once the talker
has been heard for ``arm_frames`` frames in a row, a frame whose bands are ``hold_db`` per band above the floors
on average is speech (the bands' start bar is 4.5 dB, their hold bar 2.0 right after a speech frame), a bar that
rises ``hold_rise_db`` per frame later in the window (2.5 dB for the second frame after the talker's last loud
one, 3.5 dB for the seventh), when
the frame before it was at least ``prev_db`` up as well (two weak frames in a row, not one noise peak) and the
talker is quiet: the loudest of their recent frames (a peak level that sinks ``level_decay_db`` per frame)
is at most ``level_max_db`` per band above the floors. Such a frame is speech "on credit": it does not
restart the window (the window counts from the last frame the bands themselves called speech, so a run-on is
bounded to ``hold_frames`` frames past the talker's last loud frame) and it does not engage the hysteresis
(the next frame faces the start bar again, or this rule): noise after the true end cannot chain itself on at
the lower bar. Digital silence ends the window (hold, mute).

Why the two gates (bench/corpus_real_full dev, sweeps in BENCHMARKS.md): every frame held after the true end
delays the end decision, and the goal is a p50 under 100 ms. Without them (6 frames, 2.5 dB) missed (anchor)
at 10 / 5 dB fell to dev 4.2 / 7.6 %, but the end delay p50 rose to 114 ms (dev 10 dB), 149 ms (test) and
158–218 ms (synthetic 20–5 dB). The level gate leaves a loud talker (20–30 dB SNR, where little is missed)
exactly as ``bands-click``; the two-frame gate halves what a single noise frame can add to an ending.

Why the rising bar (round 5): a frame held k frames after the talker's last loud frame puts the end decision k
frames later if no word follows, so the late holds are what lengthen the end delay's tail: with one flat 2.5 dB
bar the p95 outside babble rose to 217 ms (dev, 5 dB line), 309 and 327 ms (test, 5 dB line and pink), against
≤ 190 for ``bands-click``. Late in the window the noise after an ending (line and pink sit 1.7–1.8 dB per band
above their floors at the median, 2.7–2.9 at the 90th percentile) passes a flat bar as often as early, while a
syllable that bridges a long gap between two words is louder (dev, held frames 6–7 frames out: median 3.6 dB
where a word followed, 3.1 where none did). Tuned on dev only (BENCHMARKS.md § Endpointing, round 5): 0.2 dB per
frame (and the gate before it at 1.0 dB, not 1.5), with held frames teaching the floors at the noise rate
(:meth:`HoldBandClassifier._relearn`), keeps most of the gain (missed (anchor) 10 / 5 dB 7.0 / 9.8 %, flat bar
6.5 / 8.8, ``bands-click`` 8.5 / 12.9) with every non-babble p95 ≤ 200 ms (the worst, 5 dB line, is an ending
``bands-click`` itself decides 202 ms late) and ``bands-click``'s false starts; checked on test and extra, three
rows stay over 200 ms (5 dB line on both, 220 ms; synthetic 5 dB white 259), so it remains an option. A hold
that bridges gaps but
does not extend the end cannot be causal: a held frame bridges only by keeping the end decision from firing,
which is exactly the delay when no word follows. Other bars tried on dev (on the round-4 hold): the noise's own
80–95th percentile above the floors, tracked per stream (less gain, 7.0–7.7 / 10.0–11.2 %, for the same worst
p95); a shorter window (3–4 frames: 6.8–6.9 / 10.0 %).

It rides on :meth:`BandClassifier.decide`'s rescue hook (the ``voicing`` argument, which ``bands-pitch`` fills
with a periodicity): the cue here is 1.0 inside the window, 0.0 outside, so ``classify_batch`` reuses the
vectorised decision :func:`~engine.endpointing.classifiers._decide_rows` as it is. Cost: a few Python
operations per stream per frame on top of ``bands-click``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from .classifiers import (
    _FLOORS,
    BandClassifier,
    ClassifierError,
    Frames,
    _band_array,
    _chain,
    _decide_rows,
)

#: The rescue hook's bar: any cue ≥ 0.5 passes (the cue is 1.0 inside the window, 0.0 outside).
_CUE_BAR = 0.5

_BARS: dict[tuple[int, int, float, float], tuple[float, ...]] = {}


def _bars(nb: int, hold_frames: int, hold_db: float, rise_db: float) -> tuple[float, ...]:
    """The hold's bar by ``since`` (frames decided since the bands' last speech frame, 1 … ``hold_frames``), as
    a product of the ``nb`` bands' ratios: ``hold_db`` per band for the frame right after the first one, then
    ``rise_db`` more per frame later (index 0 is never read). One tuple per parameter set, shared by every call."""
    key = (nb, hold_frames, hold_db, rise_db)
    bars = _BARS.get(key)
    if bars is None:
        bars = _BARS[key] = tuple(10.0 ** ((hold_db + rise_db * max(since - 1, 0)) * nb / 10.0)
                                  for since in range(hold_frames + 1))  # fmt: skip
    return bars


class HoldBandClassifier(BandClassifier):
    """``bands-click`` plus the syllable hold (module docstring): frames 2 … ``hold_frames`` + 1 after the last
    frame the bands called speech are speech at ``hold_db`` per band (+ ``hold_rise_db`` for each frame after the
    second), once ``arm_frames`` consecutive speech frames armed it, if the frame before was ``prev_db`` up and
    the talker's recent peak is at most ``level_max_db`` (all per band above the floors, on average)."""

    __slots__ = (
        "_arm",
        "_armed",
        "_bars",
        "_hold",
        "_level",
        "_level_decay",
        "_level_max",
        "_prev",
        "_prev_bar",
        "_since",
        "_streak",
        "_was",
    )

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 20,
        *,
        hold_frames: int = 6,
        hold_db: float = 2.5,
        arm_frames: int = 3,
        hold_rise_db: float = 0.2,
        prev_db: float = 1.0,
        level_max_db: float = 13.0,
        level_decay_db: float = 0.05,
        **bands: float,
    ) -> None:
        super().__init__(sample_rate, frame_ms, **bands)  # type: ignore[arg-type]
        if not 1 <= hold_frames <= 100:
            raise ClassifierError(f"bands-hold: hold_frames must be in [1, 100], not {hold_frames}")
        if not 1 <= arm_frames <= 100:
            raise ClassifierError(f"bands-hold: arm_frames must be in [1, 100], not {arm_frames}")
        for what, db in (("hold_db", hold_db), ("hold_rise_db", hold_rise_db), ("prev_db", prev_db),
                         ("level_max_db", level_max_db), ("level_decay_db", level_decay_db)):  # fmt: skip
            if not 0.0 <= db < 100.0:  # also rejects NaN
                raise ClassifierError(f"bands-hold: {what} must be in [0, 100), not {db}")
        nb = self._nb
        self._voiced_ratio = 10.0 ** (hold_db * nb / 10.0)
        self._voiced_hold = _CUE_BAR
        self._voiced_start = _CUE_BAR
        self._hold = hold_frames
        self._bars = _bars(nb, hold_frames, hold_db, hold_rise_db)
        self._arm = arm_frames
        # As products of the bands' ratios above the floors (decide's "product"), so no logarithm per frame.
        self._prev_bar = 10.0 ** (prev_db * nb / 10.0)
        self._level_max = 10.0 ** (level_max_db * nb / 10.0)
        self._level_decay = 10.0 ** (-level_decay_db * nb / 10.0)
        self._since = hold_frames + 1  # frames decided since the last speech frame by the bands' own rule
        self._streak = 0  # consecutive speech frames by the bands' own rule
        self._armed = False  # the talker was heard arm_frames in a row, and the window has not lapsed since
        self._prev = 1.0  # the previous frame's product above the floors
        self._level = 1.0  # the talker's recent peak product (sinks by level_decay per frame, never under 1)
        self._was: list[float] | None = None  # the floors before a frame that may be held (_cue), for _relearn

    def _product(self, ratios: list[float]) -> float:
        """The frame's product of ratios above the floors (decide's), before the floors learn from it."""
        floors = self._floors
        product = 1.0
        if floors is not None:
            for p, fl in zip(ratios, floors, strict=True):
                product *= max(p / fl, 1.0)
        return product

    def _cue(self, product: float) -> float:
        """1.0 when this frame may be held (module docstring), 0.0 otherwise; remembers ``product`` as the
        previous frame's for the next one."""
        prev, self._prev = self._prev, product
        since = self._since
        ok = (
            self._armed
            and 0 < since <= self._hold
            and prev > self._prev_bar
            and self._level <= self._level_max
            and product > self._bars[since]
        )
        if not ok:
            return 0.0
        # The floors before this frame, for _relearn if it is held (not in an unmute window: decide lifts the
        # floors there before it learns from the frame, and the rate is no question there).
        self._was = None if self._resume else self._floors
        return 1.0

    def _relearn(self, ratios: list[float]) -> None:
        """After a held frame (``ratios``: its bands, as decide got them): the floors learn from it at the noise
        rate, not the talker's. A held frame is speech on credit; taught at the talker's slow rate, a run of
        holds and noise frames over the start bar kept the floors under line noise that had just stepped up,
        and the noise then ran on or started utterances of its own (dev_line_snr05_01: 9 s run-on with the
        round-4 hold, 3 false starts with the rising bar alone, none with this, as ``bands-click``). Decide's
        update, repeated from the floors it started from with ``rise_noise``: the same float operations."""
        was = self._was
        if was is None:
            return
        self._was = None
        fall = self._fall
        rise = self._rise_noise
        self._floors = [
            fl * (p / fl) ** fall if p < fl else (p if p < fl * rise else fl * rise)
            for p, fl in zip(ratios, was, strict=True)
        ]

    def _after(self, speech: bool, audible: bool, product: float) -> None:
        """The window's bookkeeping after one decision (``audible``: not digital silence)."""
        self._was = None  # read by _relearn only between _cue and here
        level = self._level * self._level_decay
        self._level = level if level > 1.0 else 1.0
        if speech and not self._rescued:
            self._level = max(self._level, product)
            self._since = 0
            self._streak += 1
            if self._streak >= self._arm:
                self._armed = True
            return
        self._streak = 0
        if self._rescued:
            self._run = 0  # speech on credit engages no hysteresis: the next frame faces the start bar
        if self._since <= self._hold:
            self._since += 1
        if self._since > self._hold or not audible:
            self._armed = False

    def classify(self, frames: Frames) -> list[bool]:
        out = []
        silence = self._silence_ratio
        all_ratios, swings = self.ratios_and_swings(frames)
        for ratios, swing in zip(all_ratios, swings, strict=True):
            product = self._product(ratios)
            speech = self.decide(ratios, swing, self._cue(product))
            if self._rescued:
                self._relearn(ratios)
            self._after(speech, max(ratios) > silence, product)
            out.append(speech)
        return out

    @classmethod
    def classify_batch(cls, classifiers: Sequence[BandClassifier], frames: Frames) -> list[bool]:
        """One frame for each of many streams: the band products once for the tick, the frames' products above
        the floors in numpy (the same float operations as :meth:`_product`, band by band), the decision
        vectorised (:func:`_decide_rows`, each stream's window as its cue), then each window's bookkeeping."""
        first = classifiers[0]
        streams = [c for c in classifiers if isinstance(c, HoldBandClassifier) and c._basis is first._basis]
        if len(streams) != len(classifiers):
            return [c.classify(frames[i : i + 1])[0] for i, c in enumerate(classifiers)]
        bands = _band_array(first._basis, first._group, frames)
        n, nb = bands.shape
        try:  # every stream has floors (all but a call's first frame): gathered in C, no nested list
            floors = np.fromiter(_chain(map(_FLOORS, streams)), np.float64, n * nb).reshape(n, nb)
        except TypeError:  # a stream before its first frame (floors None): as _product, no floors = ratio 1
            floors = np.array([[math.inf] * nb if c._floors is None else c._floors for c in streams], dtype=np.float64)
        d = np.maximum(bands.astype(np.float64) / floors, 1.0)
        prod = d[:, 0].copy()
        for b in range(1, d.shape[1]):
            prod *= d[:, b]
        products: list[float] = prod.tolist()
        cue = [c._cue(x) for c, x in zip(streams, products, strict=True)]
        out, rescued = _decide_rows(streams, bands, frames, cue)  # frames: the swings where the click rule asks
        if any(rescued):  # a held frame or two in the tick: their floors at the noise rate (_relearn)
            for i in itertools.compress(range(n), rescued):
                streams[i]._relearn(bands[i].tolist())
        for c, speech, top, x in zip(streams, out, bands.max(axis=1).tolist(), products, strict=True):
            c._after(speech, top > c._silence_ratio, x)
        return out

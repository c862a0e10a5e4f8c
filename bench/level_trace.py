"""Trace ``bands-level``'s gate around its false starts (issue 12 round 7 error analysis).

For every babble file of one split and SNR: the detections that overlap no labelled utterance (false starts),
each with the gate's state at its start (engaged for how long, measured SNR, the frame's level against the
talker and the background, frames since the gate was last open), and whether ``bands-click`` has a detection
over the same time (a run-on it merged, that the gate cut).

Usage: python bench/level_trace.py [--split dev] [--snrs 10,5] ['{"CONST": value}']
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load
from endpointing_eval import default_dir, run_call

import engine.endpointing.level as level
from engine.endpointing import make_classifier

END_MS, MERGE_MS = 80, 600


class Traced(level.LevelBandClassifier):
    """``bands-level`` that records (x, talker, low, snr, engaged, busy, speech, out) per frame, after it."""

    __slots__ = ("trace",)

    def __init__(self, sample_rate: int, frame_ms: int = 20, **bands: float) -> None:
        super().__init__(sample_rate, frame_ms, **bands)
        self.trace: list[tuple[float, float, float, float, bool, bool, bool, bool]] = []

    def _level(self, speech: bool, total: float) -> bool:
        out = super()._level(speech, total)
        x = 10 * math.log10(total) if total > 0 else -99.0
        low = min(self._ring, self._block_min)
        self.trace.append((x, self._talker, low, self._snr, self._engaged, self._busy, speech, out))
        return out


def make_traced(rate: int) -> Traced:
    from engine.endpointing.classifiers import CLICK_OFF_DB, CLICK_ON_DB, CLICK_RATIO, UNMUTE_RESUME_MS

    return Traced(rate, 20, resume_ms=UNMUTE_RESUME_MS, on_db=CLICK_ON_DB, off_db=CLICK_OFF_DB, impulse_ratio=CLICK_RATIO)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--snrs", default="10,5")
    ap.add_argument("--noise", default="babble")
    ap.add_argument("variant", nargs="?", default="{}")
    args = ap.parse_args()
    params = json.loads(args.variant)
    for k, v in params.items():
        setattr(level, k, v)
    snrs = {float(s) for s in args.snrs.split(",")}
    files = [f for f in load(default_dir("corpus_real_full", "corpus_real"))
             if f[2].get("split") == args.split and float(f[2]["snr_db"]) in snrs and f[2]["noise"] == args.noise]
    for name, pcm, lab in files:
        made: list[Traced] = []

        def factory(rate: int) -> Traced:
            made.append(make_traced(rate))
            return made[-1]

        det, _ = run_call(factory, END_MS, pcm, lab["sample_rate"], MERGE_MS)
        click, _ = run_call(lambda r: make_classifier("bands-click", r, frame_ms=20), END_MS, pcm, lab["sample_rate"], MERGE_MS)
        tr = made[0].trace
        utts = lab["utterances"]
        step = lab["sample_rate"] // 50
        eng = [t[4] for t in tr]
        first_eng = next((i for i, e in enumerate(eng) if e), None)
        for d in det:
            if any(d[1] < u["end"] and d[2] > u["start"] for u in utts):
                continue
            f = d[1] // step
            run = 0
            while f - run - 1 >= 0 and eng[f - run - 1]:
                run += 1
            x, talker, low, snr, e, _, _, _ = tr[min(f, len(tr) - 1)]
            last_open = max((i for i in range(f) if tr[i][7] and tr[i][4]), default=-1)
            prev_end = max((u["end"] for u in utts if u["end"] <= d[1]), default=0)
            clicked = any(c[1] < d[2] and c[2] > d[1] for c in click)
            print(f"{name} snr{lab['snr_db']} FS {d[1] / 8000:6.2f}-{d[2] / 8000:6.2f}s engaged {e} for {run * 0.02:5.2f}s "
                  f"(first {first_eng and first_eng * 0.02}) snr {snr:5.1f} x-talker {x - talker:5.1f} x-low {x - low:5.1f} "
                  f"since open {(f - last_open) * 0.02 if last_open >= 0 else -1:5.2f}s since utt end "
                  f"{(d[1] - prev_end) / 8000:5.2f}s click-covers {clicked}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

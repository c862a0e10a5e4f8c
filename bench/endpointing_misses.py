"""Where do classifiers lose labelled speech under anchor scoring? (issue 12 round 4 error analysis)

Runs each classifier through the Endpointer exactly as bench/endpointing_eval.py does (20 ms pushes,
end_ms 80, merge_ms 600 by default) and splits every labelled speech sample outside all detections'
[start, last_speech_end) ("missed (anchor)") into:

* onset: before the start of the first detection overlapping its utterance (late onset);
* tail: at or after the last_speech_end of the last detection overlapping its utterance (cut tail);
* gap: between two detections that overlap the utterance (split inside it);
* lost: in an utterance no detection overlaps.

Percentages are of all labelled speech samples of the group (so the four add up to the eval's missed
(anchor) %). Printed per SNR and noise kind, one split.

Usage: python bench/endpointing_misses.py [--classifiers bands-click,silero] [--split dev] [--snrs 10,5]
       [--real DIR] [--end-ms 80] [--merge-ms 600]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load
from endpointing_eval import Detection, classifier_factory, default_dir, run_call

KINDS = ("onset", "tail", "gap", "lost")


def split_misses(det: list[Detection], n: int, lab: dict[str, Any]) -> dict[str, float]:
    """Missed-anchor samples of one file by kind, plus the file's labelled speech samples."""
    heard = np.zeros(n, bool)
    for _, start, last, _, _, _ in det:
        heard[start:last] = True
    out: dict[str, float] = defaultdict(float)
    for u in lab["utterances"]:
        over = [d for d in det if d[1] < u["end"] and d[2] > u["start"]]
        first = min((d[1] for d in over), default=None)
        last = max((d[2] for d in over), default=None)
        for s, e in u["segments"]:
            out["speech"] += e - s
            idx = np.flatnonzero(~heard[s:e]) + s
            if not idx.size:
                continue
            if first is None or last is None:
                out["lost"] += idx.size
                continue
            onset = int((idx < first).sum())
            tail = int((idx >= last).sum())
            out["onset"] += onset
            out["tail"] += tail
            out["gap"] += idx.size - onset - tail
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classifiers", default="bands-click,silero")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--snrs", default="10,5")
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--end-ms", type=int, default=80)
    ap.add_argument("--merge-ms", type=int, default=600)
    args = ap.parse_args()
    snrs = {float(s) for s in args.snrs.split(",")}
    real_dir = args.real or default_dir("corpus_real_full", "corpus_real")
    files = [f for f in load(real_dir) if f[2].get("split") == args.split and float(f[2]["snr_db"]) in snrs]
    print(
        f"{real_dir}, {args.split} split, SNR {args.snrs} dB, end_ms {args.end_ms}, merge_ms {args.merge_ms}: {len(files)} files\n"
    )
    print("| classifier | SNR dB | noise | missed (anchor) % | onset % | tail % | gap % | lost % |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.classifiers.split(","):
        label, factory = classifier_factory(name.strip())
        per: dict[tuple[float, str], dict[str, float]] = {}
        for _, pcm, lab in files:
            det, _ = run_call(factory, args.end_ms, pcm, lab["sample_rate"], args.merge_ms)
            r = split_misses(det, len(pcm), lab)
            for key in ((float(lab["snr_db"]), lab["noise"]), (float(lab["snr_db"]), "all")):
                acc = per.setdefault(key, defaultdict(float))
                for k, v in r.items():
                    acc[k] += v
        for snr, noise in sorted(per, key=lambda k: (-k[0], k[1] == "all", k[1])):
            a = per[(snr, noise)]
            sp = max(a["speech"], 1.0)
            total = sum(a[k] for k in KINDS)
            cells = " | ".join(f"{100 * a[k] / sp:.1f}" for k in KINDS)
            print(f"| {label} | {snr:g} | {noise} | {100 * total / sp:.1f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

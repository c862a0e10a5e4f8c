"""Sweep ``bands-level``'s constants on one real-speech split (issue 12 round 6; tune on dev only).

Per SNR: the babble row (end delay p50 / p95, false starts, not sent, missed (anchor) split into gap / onset /
tail / lost as bench/endpointing_misses.py does, merges) and the pooled row over every noise, with the flags
of the goals missed against Silero's pooled figures on the same files (BENCHMARKS.md § Endpointing). Only the
babble files are run per variant: the non-babble rows are ``bands-click``'s (checked with
``endpointing_eval.py --by-noise``), evaluated once with ``bands-click`` and cached.

Usage: python bench/level_sweep.py [--split dev] '{"HOLD_DROP_DB": 18.0}' '{"TAIL_FRAMES": 10}' ...
(each argument: module constants of engine/endpointing/level.py to set for one variant; none: the current ones)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load
from endpointing_eval import default_dir, evaluate, run_call, score_file
from endpointing_misses import split_misses

import engine.endpointing.level as level
from engine.endpointing import make_classifier

#: Silero's pooled (missed (anchor) %, false starts /min) per split and SNR (BENCHMARKS.md, same files).
SILERO = {"dev": {20: (3.4, 0.64), 10: (4.4, 1.10), 5: (7.2, 1.83)},
          "test": {20: (3.1, 0.84), 10: (2.8, 2.04), 5: (5.6, 1.26)},
          "extra": {20: (9.3, 0.43), 10: (11.2, 1.25), 5: (15.6, 1.24)}}  # fmt: skip
END_MS, MERGE_MS = 80, 600


def summary(a: dict[str, Any]) -> dict[str, float]:
    sp, el = max(a["speech"], 1), max(a["split_eligible"], 1)
    pct = lambda v, q: float(np.percentile(v, q)) if v else float("nan")  # noqa: E731
    return {"ns": 100 * a["not_sent"] / sp, "miss": 100 * a["missed"] / sp, "mu": a["missed_utts"],
            "fs": a["false_starts"] / (a["noise_s"] / 60), "um": 100 * a["unmerged"] / el,
            "p50": pct(a["delays"], 50), "p95": pct(a["delays"], 95), "merges": a["merges"]}  # fmt: skip


def run_variant(files: list[Any], others: dict[Any, Any], split: str, params: dict[str, Any]) -> None:
    old = {k: getattr(level, k) for k in params}
    for k, v in params.items():
        setattr(level, k, v)
    try:
        per: dict[float, Any] = {}
        kinds: dict[float, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for _, pcm, lab in files:
            det, _ = run_call(lambda r: make_classifier("bands-level", r, frame_ms=20), END_MS, pcm,
                              lab["sample_rate"], MERGE_MS)  # fmt: skip
            acc = per.setdefault(lab["snr_db"], defaultdict(float, delays=[], errors=[], delays_single=[]))
            for k, v in score_file(det, pcm, lab).items():
                acc[k] += v
            for k, v in split_misses(det, len(pcm), lab).items():
                kinds[lab["snr_db"]][k] += v
    finally:
        for k, v in old.items():
            setattr(level, k, v)
    print(f"== {json.dumps(params) if params else 'current constants'}")
    for snr in sorted(per, reverse=True):
        pooled: dict[str, Any] = defaultdict(float, delays=[], errors=[], delays_single=[])
        for a in [per[snr], *(a for (s, _), a in others.items() if s == snr)]:
            for k, v in a.items():
                pooled[k] += v
        b, p, m = summary(per[snr]), summary(pooled), kinds[snr]
        sm, sf = SILERO[split].get(int(snr), (float("nan"), float("nan")))
        flags = [f for f, bad in (("MISSED", p["miss"] > sm + 0.05), ("FALSE-STARTS", p["fs"] > sf + 0.005),
                                  ("NOT-SENT", p["ns"] > (1 if snr > 5 else 5)), ("UTT-MISSED", p["mu"] > 0),
                                  ("P95", p["p95"] > 200)) if bad]  # fmt: skip
        sp = max(m["speech"], 1)
        print(
            f"{snr:>2g} dB babble p50/p95 {b['p50']:.0f}/{b['p95']:.0f} fs/min {b['fs']:.2f} not sent "
            f"{b['ns']:.1f} missed {b['miss']:.1f} (gap {100 * m['gap'] / sp:.1f} onset {100 * m['onset'] / sp:.1f} "
            f"tail {100 * m['tail'] / sp:.1f} lost {100 * m['lost'] / sp:.1f}) merges {b['merges']:.0f} | pooled "
            f"not sent {p['ns']:.1f} missed {p['miss']:.2f} (silero {sm}) utts missed {p['mu']:.0f} fs/min "
            f"{p['fs']:.2f} (silero {sf}) unmerged {p['um']:.1f} % p50/p95 {p['p50']:.0f}/{p['p95']:.0f} "
            f"{' '.join(flags)}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("variants", nargs="*", help="JSON objects of level.py constants")
    args = ap.parse_args()
    real = [f for f in load(args.real or default_dir("corpus_real_full", "corpus_real")) if f[2].get("split") == args.split]
    babble = [f for f in real if f[2]["noise"] == "babble"]
    others = evaluate([f for f in real if f[2]["noise"] != "babble"],
                      lambda r: make_classifier("bands-click", r, frame_ms=20), END_MS, True, MERGE_MS)  # fmt: skip
    for v in args.variants or ["{}"]:
        run_variant(babble, others, args.split, json.loads(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sweep ``bands-judge``'s knobs on one real-speech split (issue 12 round 8; tune on dev only).

Per SNR, for the non-babble rows pooled (pink, hum, line: what the judge is for), the babble row and every noise
pooled: not sent %, missed (anchor) %, missed utterances, false starts /min, unmerged splits %, end delay p50 /
p95 ms, and Silero's share of the work: its 32 ms windows per 20 ms frame (× Silero's batched cost per window =
the judge's cost per frame). The same rows for ``bands-click`` and ``silero`` first (references, same files),
with the goals missed against Silero flagged per variant.

Usage: python bench/judge_sweep.py [--split dev] [--by-noise] '{"tail_frames": 10}' '{"warm": true}' ...
(each argument: keyword arguments of engine/endpointing/judge.py's JudgeClassifier for one variant; none: defaults)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load
from endpointing_eval import default_dir, run_call, score_file
from endpointing_misses import split_misses

from engine.endpointing import FrameClassifier, make_classifier
from engine.endpointing.judge import make_judge

END_MS, MERGE_MS = 80, 600
NON_BABBLE = ("pink", "hum", "line")


def summary(a: dict[str, Any]) -> dict[str, float]:
    sp, el = max(a["speech"], 1), max(a["split_eligible"], 1)
    pct = lambda v, q: float(np.percentile(v, q)) if v else float("nan")  # noqa: E731
    return {"ns": 100 * a["not_sent"] / sp, "miss": 100 * a["missed"] / sp, "mu": a["missed_utts"],
            "fs": a["false_starts"] / (a["noise_s"] / 60) if a["noise_s"] else float("nan"),
            "um": 100 * a["unmerged"] / el, "p50": pct(a["delays"], 50), "p95": pct(a["delays"], 95),
            "win": a["windows"] / max(a["frames"], 1),
            **{k: 100 * a[k] / sp for k in ("onset", "tail", "gap", "lost")}}  # fmt: skip


def run(files: list[Any], factory: Callable[[int], FrameClassifier]) -> dict[tuple[float, str], dict[str, Any]]:
    """Summed counts per (SNR, noise), plus Silero windows and 20 ms frames."""
    per: dict[tuple[float, str], dict[str, Any]] = {}
    for _, pcm, lab in files:
        made: list[FrameClassifier] = []

        def keep(rate: int) -> FrameClassifier:
            c = factory(rate)
            made.append(c)
            return c

        det, _ = run_call(keep, END_MS, pcm, lab["sample_rate"], MERGE_MS)
        windows = sum(getattr(c, "windows", 0) + getattr(c, "spare_windows", 0) for c in made)  # spares: round 9
        score_into(per, det, pcm, lab, windows)
    return per


def score_into(per: dict[tuple[float, str], dict[str, Any]], det: Any, pcm: Any, lab: dict[str, Any],
               windows: float) -> dict[str, Any]:
    """Add one file's scores, misses by kind, Silero windows and frames to its (SNR, noise) row of ``per``."""
    acc = per.setdefault((lab["snr_db"], lab["noise"]), defaultdict(float, delays=[], errors=[], delays_single=[]))
    for k, v in score_file(det, pcm, lab).items():
        acc[k] += v
    for k, v in split_misses(det, len(pcm), lab).items():
        if k != "speech":
            acc[k] += v
    acc["windows"] += windows
    acc["frames"] += len(pcm) // 160
    return acc


def pooled(per: dict[tuple[float, str], dict[str, Any]], snr: float, noises: tuple[str, ...] | None) -> dict[str, float]:
    acc: dict[str, Any] = defaultdict(float, delays=[], errors=[], delays_single=[])
    for (s, noise), a in per.items():
        if s == snr and (noises is None or noise in noises):
            for k, v in a.items():
                acc[k] += v
    return summary(acc)


def line(label: str, s: dict[str, float], ref: dict[str, float] | None = None, snr: float = 20) -> str:
    flags = []
    if ref is not None:
        flags = [f for f, bad in (("MISSED", s["miss"] > ref["miss"] + 0.05), ("FS", s["fs"] > ref["fs"] + 0.005),
                                  ("NS", s["ns"] > (1 if snr > 5 else 5)), ("UTT", s["mu"] > 0),
                                  ("P50", s["p50"] > 100), ("P95", s["p95"] > 200), ("UM", s["um"] > 5)) if bad]  # fmt: skip
    return (f"  {label:<10} ns {s['ns']:4.1f} miss {s['miss']:5.2f} utts {s['mu']:.0f} fs {s['fs']:4.2f} um {s['um']:4.1f} "
            f"p50/p95 {s['p50']:4.0f}/{s['p95']:5.0f} win/frame {s['win']:.3f} (onset {s['onset']:.1f} tail {s['tail']:.1f} "
            f"gap {s['gap']:.1f} lost {s['lost']:.1f}) {' '.join(flags)}")


def report(title: str, per: dict[tuple[float, str], dict[str, Any]], ref: dict[tuple[float, str], dict[str, Any]] | None,
           by_noise: bool) -> None:
    print(f"== {title}")
    for snr in sorted({s for s, _ in per}, reverse=True):
        print(f" {snr:g} dB")
        groups: list[tuple[str, tuple[str, ...] | None]] = [("non-babble", NON_BABBLE), ("babble", ("babble",)), ("all", None)]
        if by_noise:
            groups = [(n, (n,)) for n in NON_BABBLE] + groups
        for label, noises in groups:
            r = pooled(ref, snr, noises) if ref is not None else None
            print(line(label, pooled(per, snr, noises), r, snr))
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--by-noise", action="store_true")
    ap.add_argument("--no-refs", action="store_true", help="skip bands-click (silero is still run: the flags' reference)")
    ap.add_argument("variants", nargs="*", help="JSON objects of JudgeClassifier keyword arguments")
    args = ap.parse_args()
    files = [f for f in load(args.real or default_dir("corpus_real_full", "corpus_real")) if f[2].get("split") == args.split]
    files = [f for f in files if not f[2].get("noise_only")] + [f for f in files if f[2].get("noise_only")]
    silero = run(files, lambda r: make_classifier("silero", r))
    report("silero", silero, None, args.by_noise)
    if not args.no_refs:
        report("bands-click", run(files, lambda r: make_classifier("bands-click", r, frame_ms=20)), silero, args.by_noise)
    for v in args.variants or ["{}"]:
        knobs = json.loads(v)
        report(f"bands-judge {json.dumps(knobs)}", run(files, lambda r, k=knobs: make_judge(r, 20, **k)), silero, args.by_noise)  # type: ignore[misc]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a bands-judge tick's time goes at N calls: the bands, the ONNX runs (round 0 and the primes' rounds), the rest.

Issue 12 round 9. The committed subset (bench/corpus_real) as N calls at random offsets (as
bench/classify_batch_cost.py), ``--warmup`` ticks, then ``--ticks`` ticks; ``onnxruntime``'s
``InferenceSession.run`` is wrapped to time each inference and count its rows (wall time: state the load).
Prints per tick: rounds (inferences), rows per round 0 and per later round, µs per row-tick in the bands'
classify_batch, in ONNX runs (round 0 / later), and the rest (the judge's own Python), each the median tick's.

Usage: OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/judge_rounds.py [--rows 300] [--ticks 400]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

# --tree: the sori tree whose engine is measured (main's, for a before / after in the same run)
TREE = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve() if "--tree" in sys.argv else Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TREE))
sys.path.insert(0, str(TREE / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--ticks", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--tree", help="the sori tree to import (default: this script's)")
    ap.add_argument("--knobs", default="{}", help="JSON: JudgeClassifier keyword arguments (e.g. prime_rounds)")
    args = ap.parse_args()
    import json

    import onnxruntime
    from corpus import load

    from engine.endpointing import classifiers
    from engine.endpointing.classifiers import BandClassifier
    from engine.endpointing.judge import make_judge

    assert Path(classifiers.__file__).resolve().is_relative_to(TREE), classifiers.__file__

    pcm = np.concatenate([p for _, p, _ in load(TREE / "bench" / "corpus_real")])
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
    n = args.rows
    knobs = json.loads(args.knobs)
    clfs = [make_judge(8000, **knobs) for _ in range(n)]
    off = np.random.default_rng(0).integers(0, len(frames), size=n)
    ticks = [np.ascontiguousarray(frames[(off + t) % len(frames)]) for t in range(args.warmup + args.ticks)]
    for b in ticks[: args.warmup]:
        classifiers.classify_batch(clfs, b)
    runs: list[tuple[int, float]] = []
    bands_t: list[float] = []
    real_run = onnxruntime.InferenceSession.run
    real_bands = BandClassifier.classify_batch.__func__  # type: ignore[attr-defined]

    def timed_run(self, *a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = real_run(self, *a, **k)
        runs.append((out[0].shape[0], time.perf_counter() - t0))
        return out

    def timed_bands(cls, *a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = real_bands(cls, *a, **k)
        bands_t.append(time.perf_counter() - t0)
        return out

    onnxruntime.InferenceSession.run = timed_run  # type: ignore[method-assign]
    BandClassifier.classify_batch = classmethod(timed_bands)  # type: ignore[method-assign,assignment]
    per: list[tuple[float, float, float, float, int, int, int]] = []
    try:
        for b in ticks[args.warmup :]:
            runs.clear()
            bands_t.clear()
            t0 = time.perf_counter()
            classifiers.classify_batch(clfs, b)
            whole = time.perf_counter() - t0
            r0 = runs[0][1] if runs else 0.0
            later = sum(t for _, t in runs[1:])
            per.append((whole, sum(bands_t), r0, later, len(runs), runs[0][0] if runs else 0, sum(r for r, _ in runs[1:])))
    finally:
        onnxruntime.InferenceSession.run = real_run  # type: ignore[method-assign]
        BandClassifier.classify_batch = classmethod(real_bands)  # type: ignore[method-assign,assignment]
    a = np.array(per)
    med = np.median(a, axis=0)
    mean = a.mean(axis=0)
    print(f"{TREE.name} bands-judge {knobs} rows={n}, {args.ticks} ticks after {args.warmup}; load average {os.getloadavg()[0]:.2f}")
    print(f"rounds per tick: mean {mean[4]:.2f}, ticks with > 1 round {100 * (a[:, 4] > 1).mean():.0f} %; rows in round 0 "
          f"mean {mean[5]:.1f}, in later rounds {mean[6]:.1f} per tick ({mean[6] / max(mean[4] - 1, 1e-9):.1f} per later round)")
    rest = a[:, 0] - a[:, 1] - a[:, 2] - a[:, 3]
    for name, m, avg in (("whole classify_batch", med[0], mean[0]), ("bands", med[1], mean[1]), ("ONNX round 0", med[2], mean[2]),
                         ("ONNX later rounds", med[3], mean[3]), ("rest (judge Python)", float(np.median(rest)), float(rest.mean()))):
        print(f"  {name}: median {m * 1e6 / n:.2f} µs/row-tick, mean {avg * 1e6 / n:.2f}")
    wins = mean[5] + mean[6]
    print(f"  windows per row-tick {wins / n:.3f}; ONNX µs per window (mean) {(mean[2] + mean[3]) * 1e6 / max(wins, 1e-9):.2f}")
    spare = sum(getattr(c, "spare_windows", 0) for c in clfs)
    print(f"  decisions' windows {sum(c.windows for c in clfs)}, spare (early primes of wakes that did not come) {spare}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

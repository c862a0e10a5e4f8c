"""classify_batch per tick at N rows (issue 13), for the tree given (A/B: run it from each tree's venv).

The committed real-speech subset (bench/corpus_real) as N calls at random offsets, 100 ticks of warm-up,
then ``--ticks`` ticks each timed alone: its p10 and median (single-tick windows keep a loaded machine's
bursts out of the p10), and the same split into the band products (``_band_array``) and the decision
(``_decide_rows``). Usage (BLAS single-threaded, as ``sori`` runs it):
OPENBLAS_NUM_THREADS=1 <tree>/.venv/bin/python bench/classify_batch_cost.py --tree <tree> [--rows 60,300]
For instruction counts, run it under ``valgrind --tool=callgrind`` with ``--ticks 0`` and ``--ticks 200``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent), help="the sori tree to import")
    ap.add_argument("--rows", default="60,300")
    ap.add_argument("--kind", default="bands-click")
    ap.add_argument("--ticks", type=int, default=1000)
    args = ap.parse_args()
    tree = Path(args.tree).resolve()
    sys.path.insert(0, str(tree))
    sys.path.insert(0, str(tree / "bench"))
    from corpus import load

    from engine.endpointing import classifiers, make_classifier

    pcm = np.concatenate([p for _, p, _ in load(tree / "bench" / "corpus_real")])
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
    # A tree without lazy swings (before issue 13 round 3) wants them as numbers.
    lazy = hasattr(classifiers, "_MATMUL_CUT")
    for n in [int(x) for x in args.rows.split(",")]:
        clfs = [make_classifier(args.kind, 8000) for _ in range(n)]
        off = np.random.default_rng(0).integers(0, len(frames), size=n)
        ticks = [np.ascontiguousarray(frames[(off + t) % len(frames)]) for t in range(100 + args.ticks)]
        for b in ticks[:100]:
            classifiers.classify_batch(clfs, b)
        whole, band, decide = [], [], []
        c0 = clfs[0]
        for i, b in enumerate(ticks[100:]):
            if i % 2:  # odd ticks: the parts (bands kinds), even: the whole classify_batch
                t0 = time.perf_counter()
                bands = classifiers._band_array(c0._basis, c0._group, b)  # type: ignore[attr-defined]
                t1 = time.perf_counter()
                classifiers._decide_rows(clfs, bands, b if lazy else classifiers._swings(b), None)  # type: ignore[arg-type]
                t2 = time.perf_counter()
                band.append(t1 - t0)
                decide.append(t2 - t1)
            else:
                t0 = time.perf_counter()
                classifiers.classify_batch(clfs, b)
                whole.append(time.perf_counter() - t0)
        for name, ts in (("classify_batch", whole), ("_band_array", band), ("_decide_rows", decide)):
            if not ts:
                continue
            ts.sort()
            p10, p50 = ts[len(ts) // 10] * 1e6, ts[len(ts) // 2] * 1e6
            print(f"{tree.name} {args.kind} rows={n} {name}: p10 {p10:.1f} µs/tick ({p10 / n:.2f} µs/row), median {p50:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

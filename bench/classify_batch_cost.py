"""classify_batch per tick at N rows (issue 13), for the tree given (A/B: run it from each tree's venv).

The committed real-speech subset (bench/corpus_real) as N calls at random offsets, 100 ticks of warm-up,
then ``--ticks`` ticks each timed alone: its p10 and median (single-tick windows keep a loaded machine's
bursts out of the p10), and the same split into the band products (``_band_array``) and the decision
(``_decide_rows``, or ``_decide_pooled`` where the plain bands kinds keep their state in a pool). Usage (BLAS single-threaded, as ``sori`` runs it):
OPENBLAS_NUM_THREADS=1 <tree>/.venv/bin/python bench/classify_batch_cost.py --tree <tree> [--rows 60,300]
Instruction counts (load-independent; callgrind, each tree its own venv, ``--ab``: also the old tree):
.venv/bin/python bench/classify_batch_cost.py --instructions --ab /work/wt-base5 [--rows 74] [--ticks 200]
  per row = (Ir(--ticks T, classify_batch only) - Ir(--ticks 0)) / (T x rows), the whole classify_batch.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent), help="the sori tree to import")
    ap.add_argument("--rows", default="60,300")
    ap.add_argument("--kind", default="bands-click")
    ap.add_argument("--ticks", type=int, default=1000)
    ap.add_argument("--instructions", action="store_true", help="callgrind instructions per row (one --rows value)")
    ap.add_argument("--ab", type=Path, help="with --instructions: the old tree too (its own .venv)")
    ap.add_argument("--plain", action="store_true", help="classify_batch ticks only, untimed (for --instructions)")
    ap.add_argument("--warmup", type=int, default=100, help="ticks before the measured ones (fewer: callgrind of bands-judge)")
    ap.add_argument("--onnx", action="store_true", help="with --instructions: also onnxruntime's share (its Run, inclusive)")
    args = ap.parse_args()
    if args.instructions:
        trees = [Path(args.tree).resolve()] + ([args.ab.resolve()] if args.ab else [])
        rows = int(args.rows.split(",")[0])
        both = {t: _instructions(t, args.kind, rows, args.ticks, args.warmup, onnx=args.onnx) for t in trees}
        got = {t: v[0] for t, v in both.items()}
        for t, (_, onnx) in both.items():
            if args.onnx:
                print(f"{t.name} {args.kind} rows={rows}: onnxruntime's InferenceSession::Run {onnx:,.0f} instructions/row")
        for t, per_row in got.items():
            print(f"{t.name} {args.kind} rows={args.rows.split(',')[0]} classify_batch: {per_row:,.0f} instructions/row"
                  + (f" ({per_row / got[trees[-1]]:.3f} x {trees[-1].name})" if len(trees) > 1 else ""))
        return 0
    tree = Path(args.tree).resolve()
    sys.path.insert(0, str(tree))
    sys.path.insert(0, str(tree / "bench"))
    from corpus import load

    from engine.endpointing import classifiers, make_classifier

    pcm = np.concatenate([p for _, p, _ in load(tree / "bench" / "corpus_real")])
    width = make_classifier(args.kind, 8000).frame_samples  # 160; silero's own windows: 256
    frames = pcm[: len(pcm) // width * width].reshape(-1, width)
    # A tree without lazy swings (before issue 13 round 3) wants them as numbers.
    lazy = hasattr(classifiers, "_MATMUL_CUT")
    # A tree whose plain bands classifiers keep their state in a pool decides them by _decide_pooled
    # (classify_batch's way; _decide_rows would take every row's state out of the pool and back each tick).
    pooled = hasattr(classifiers, "_decide_pooled") and type(make_classifier(args.kind, 8000)) is classifiers.BandClassifier
    for n in [int(x) for x in args.rows.split(",")]:
        clfs = [make_classifier(args.kind, 8000) for _ in range(n)]
        off = np.random.default_rng(0).integers(0, len(frames), size=n)
        w = args.warmup
        ticks = [np.ascontiguousarray(frames[(off + t) % len(frames)]) for t in range(w + args.ticks)]
        for b in ticks[:w]:
            classifiers.classify_batch(clfs, b)
        if args.plain:
            for b in ticks[w:]:
                classifiers.classify_batch(clfs, b)
            continue
        whole, band, decide = [], [], []
        c0 = clfs[0]
        parts = hasattr(c0, "_basis")  # a bands kind (not silero, not bands-judge: those are timed whole)
        windows = sum(getattr(c, "windows", 0) + getattr(c, "spare_windows", 0) for c in clfs)
        for i, b in enumerate(ticks[w:]):
            if i % 2 and parts:  # odd ticks: the parts (bands kinds), even: the whole classify_batch
                t0 = time.perf_counter()
                bands = classifiers._band_array(c0._basis, c0._group, b)  # type: ignore[attr-defined]
                t1 = time.perf_counter()
                if pooled:  # the state in the pool (issue 13 round 5): plain bands kinds decide there
                    classifiers._decide_pooled(clfs, bands, b)  # type: ignore[attr-defined]
                else:
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
        if hasattr(c0, "windows"):  # bands-judge: how much of the batch Silero judged
            got = sum(c.windows + getattr(c, "spare_windows", 0) for c in clfs) - windows  # early primes' spares too
            print(f"{tree.name} {args.kind} rows={n}: Silero windows per row-tick {got / (n * args.ticks):.3f}")
    return 0


def _instructions(tree: Path, kind: str, rows: int, ticks: int, warmup: int, *, onnx: bool = False) -> tuple[float, float]:
    """Instructions per row of classify_batch in ``tree`` under callgrind: ``ticks`` ticks minus none; and (``onnx``)
    the part inside onnxruntime's ``InferenceSession::Run`` (inclusive, by callgrind_annotate), the same way."""
    counts, inside = [], []
    for t in (ticks, 0):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", str(tree / ".venv" / "bin" / "python"),
                   str(Path(__file__).resolve()), "--tree", str(tree), "--kind", kind, "--rows", str(rows),
                   "--ticks", str(t), "--warmup", str(warmup), "--plain"]
            env = os.environ | {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
            res = subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True, env=env)
            counts.append(int(re.findall(r"Collected : (\d+)", res.stderr)[-1]))
            if onnx:
                ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", f"{tmp}/cg.out"],
                                     check=True, capture_output=True, text=True).stdout
                runs = [int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*([\d,]+) .*InferenceSession::Run\(", ann, re.M)]
                inside.append(max(runs, default=0))
    per = (ticks * rows)
    return (counts[0] - counts[1]) / per, ((inside[0] - inside[1]) / per if onnx else float("nan"))


if __name__ == "__main__":
    raise SystemExit(main())

"""What one Silero ONNX inference costs at N rows, per session variant: the per-run floor and the per-window slope.

Issue 12 round 9 (bands-judge's cost): a bands-judge tick runs one inference per round (the calls that have a
window), and a wake's prime adds rounds of a few rows each, so the fixed cost of a run matters as much as the
per-window one. Inputs: real 32 ms windows of the committed subset (bench/corpus_real), a random state.
Variants (``--variants``): ``main`` (main's session: the packaged model, one thread, defaults), ``nospin``
(+ no spinning, arena off), ``basic`` / ``extended`` / ``disabled`` (graph optimisation levels: may change
the numerics), ``ifless`` (the package's op18 if-less model), ``binding`` (main's session through IOBinding).
Each variant's probabilities are compared bit for bit with ``main``'s on the same inputs.

Usage: OPENBLAS_NUM_THREADS=1 python bench/silero_run_cost.py [--rows 1,2,8,32,120] [--runs 300]
       python bench/silero_run_cost.py --instructions [--variants main,ifless] [--rows 1,120]
  (callgrind: Ir(runs R at N rows) - Ir(0 runs), per run and per window; load-independent)
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
from typing import Any

import numpy as np

TREE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TREE))
sys.path.insert(0, str(TREE / "bench"))


def session(variant: str) -> Any:
    import onnxruntime as ort

    from engine.endpointing.silero import model_path

    path = model_path()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if variant == "nospin":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.enable_cpu_mem_arena = False
    elif variant == "basic":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif variant == "extended":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    elif variant == "disabled":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif variant == "ifless":
        path = path.parent / "silero_vad_op18_ifless.onnx"
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def inputs(rows: int) -> tuple[np.ndarray, np.ndarray]:
    from corpus import load

    pcm = np.concatenate([p for _, p, _ in load(TREE / "bench" / "corpus_real")])
    n = len(pcm) // 256
    wins = pcm[: n * 256].reshape(n, 256)
    pick = wins[np.random.default_rng(1).integers(0, n, size=rows)]
    inp = np.zeros((rows, 288), dtype=np.float32)
    inp[:, 32:] = pick / 32768.0
    inp[1:, :32] = inp[:-1, -32:]
    state = (np.random.default_rng(2).standard_normal((2, rows, 128)) * 0.3).astype(np.float32)
    return inp, state


def runner(variant: str, rows: int, sess: Any = None) -> Any:
    """A function doing one inference at ``rows`` rows with ``variant``'s session (or ``sess``); returns the
    probabilities."""
    sess = sess if sess is not None else session(variant)
    inp, state = inputs(rows)
    sr = np.array(8000, dtype=np.int64)
    if variant == "binding":
        io = sess.io_binding()
        io.bind_cpu_input("input", inp)
        io.bind_cpu_input("state", state)
        io.bind_cpu_input("sr", sr)
        io.bind_output("output")
        io.bind_output("stateN")

        def one_b() -> np.ndarray:
            sess.run_with_iobinding(io)
            return io.copy_outputs_to_cpu()[0]  # type: ignore[no-any-return]

        return one_b
    feed = {"input": inp, "state": state, "sr": sr}
    if variant == "raw":  # the binding's own run, without InferenceSession.run's Python checks
        raw, names = sess._sess.run, ["output", "stateN"]
        return lambda: raw(names, feed, None)[0]
    return lambda: sess.run(None, feed)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,2,8,32,120")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--variants", default="main,raw,binding,nospin,basic,extended,disabled,ifless")
    ap.add_argument("--instructions", action="store_true")
    ap.add_argument("--plain", help="VARIANT: only run it --runs times at --rows (for callgrind)")
    ap.add_argument("--mix", action="store_true", help="one session per variant, its runs cycling through --rows "
                    "(a bands-judge tick: one big round, then small ones; shapes change every run)")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    if args.plain:
        sess = session("main" if args.plain in ("raw", "binding") else args.plain)
        ones = [runner(args.plain, r, sess) for r in rows]
        for one in ones:
            one()
        for i in range(args.runs):
            ones[i % len(ones)]()
        return 0
    variants = args.variants.split(",")
    if args.instructions:
        print(f"callgrind, {args.runs} runs minus 0 runs; load average {os.getloadavg()[0]:.2f}")
        print("| variant | rows | instructions per run | per window |")
        print("|---|---|---|---|")
        for v in variants:
            for r in rows:
                ir = [_ir(v, str(r), k) for k in (args.runs, 0)]
                per = (ir[0] - ir[1]) / args.runs
                print(f"| {v} | {r} | {per:,.0f} | {per / r:,.0f} |", flush=True)
        return 0
    if args.mix:
        print(f"wall, {args.runs} runs cycling rows {rows}, min per shape; load average {os.getloadavg()[0]:.2f}")
        print("| variant | " + " | ".join(f"µs per run at {r} rows (min / median)" for r in rows) + " |")
        print("|---|" + "---|" * len(rows))
        for v in variants:
            sess = session("main" if v in ("raw", "binding") else v)
            ones = [runner(v, r, sess) for r in rows]
            ts: list[list[float]] = [[] for _ in rows]
            for i in range(args.runs):
                t0 = time.perf_counter()
                ones[i % len(rows)]()
                ts[i % len(rows)].append(time.perf_counter() - t0)
            cells = []
            for t in ts:
                t.sort()
                cells.append(f"{t[0] * 1e6:.1f} / {t[len(t) // 2] * 1e6:.1f}")
            print(f"| {v} | " + " | ".join(cells) + " |", flush=True)
        return 0
    ref = {r: runner("main", r)() for r in rows}
    print(f"wall, min over {args.runs} runs (and median); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
    print("| variant | rows | µs per run min / median | µs per window (min) | probabilities == main |")
    print("|---|---|---|---|---|")
    for v in variants:
        for r in rows:
            try:
                one = runner(v, r)
            except Exception as exc:  # a variant this onnxruntime or model cannot do
                print(f"| {v} | {r} | {type(exc).__name__}: {str(exc)[:60]} | | |")
                break
            got = one()
            same = bool(np.array_equal(got.view(np.uint32), ref[r].view(np.uint32)))
            ts = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                one()
                ts.append(time.perf_counter() - t0)
            ts.sort()
            print(f"| {v} | {r} | {ts[0] * 1e6:.1f} / {ts[len(ts) // 2] * 1e6:.1f} | {ts[0] * 1e6 / r:.2f} | "
                  f"{same} (max diff {float(np.abs(got - ref[r]).max()):.2e}) |", flush=True)
    return 0


def _ir(variant: str, rows: str, runs: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable, str(Path(__file__).resolve()),
               "--plain", variant, "--rows", str(rows), "--runs", str(runs)]
        env = os.environ | {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
        res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        return int(re.findall(r"Collected : (\d+)", res.stderr)[-1])


if __name__ == "__main__":
    raise SystemExit(main())

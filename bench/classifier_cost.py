"""Per-frame cost of the frame classifiers, alone and inside Endpointer.push, at 1 call and batched.

Audio: the committed real-speech subset (bench/corpus_real: speech, pauses, noise, hold
silence) cut into 20 ms packets (32 ms windows for silero). For each classifier:

* ``classify``: ``classify(frame[None])`` per frame, one call's stream;
* ``push``: ``Endpointer.push`` per 20 ms packet (classifier + state machine), one call;
* ``batch N``: :func:`engine.endpointing.classifiers.classify_batch` over N classifiers (N calls) in calls of
  ``--rows`` rows (32, as FrameBatch.MAX_ROWS),
  one frame each per tick; per frame = tick time / N (the whole batch counted).

Per 20 ms of audio: silero's 32 ms windows are scaled by 20/32. Each figure: the run is timed in 20
blocks, each block's minimum over ``--repeats`` runs, summed over ``--frames`` frames. Usage:
python bench/classifier_cost.py [--classifiers bands-pitch,bands-click,bands-unmute,bands,energy,webrtc,silero] [--frames 10000] [--calls 300]
       python bench/classifier_cost.py --interleave bands-click,bands-pitch [--rounds 40]  (same-run A/B)
       python bench/classifier_cost.py --ab /work/wt-base5 --interleave bands-click --rounds 10  (trees A/B)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

# --tree: the sori tree whose engine is measured (--ab runs this script with the old tree's engine and venv)
_TREE = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve() if "--tree" in sys.argv else Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_TREE))
sys.path.insert(0, str(_TREE / "bench"))
from corpus import load  # noqa: E402

from engine.config import EndpointingConfig  # noqa: E402
from engine.endpointing import ClassifierError, Endpointer, make_classifier  # noqa: E402
from engine.endpointing.classifiers import classify_batch  # noqa: E402

HERE = _TREE / "bench"


def audio(n_samples: int) -> np.ndarray:
    pcm = np.concatenate([p for _, p, _ in load(HERE / "corpus_real")])
    reps = -(-n_samples // len(pcm))
    return np.tile(pcm, reps)[:n_samples]


def best(fn, repeats: int, blocks: int = 20) -> float:
    """Total time of ``fn(block)`` over all blocks, each block's time the minimum over the repeats.

    A block-wise minimum keeps other processes' bursts on a shared machine out of the figure."""
    mins = [float("inf")] * blocks
    for _ in range(repeats):
        state = fn(None)
        for b in range(blocks):
            t0 = time.perf_counter()
            fn((state, b, blocks))
            mins[b] = min(mins[b], time.perf_counter() - t0)
    return sum(mins)


def measure(name: str, n_frames: int, calls: int, repeats: int, rows: int = 32) -> dict[str, float]:
    rate = 8000
    clf = make_classifier(name, rate, frame_ms=20)
    w = clf.frame_samples
    scale = (rate // 50) / w  # per 20 ms of audio
    n = n_frames if name != "silero" else max(n_frames // 5, 1)
    frames = audio(n * w).reshape(n, w)
    res: dict[str, float] = {}

    def part(seq, k):  # the k-th of `blocks` slices of seq
        _, b, blocks = k
        step = -(-len(seq) // blocks)
        return seq[b * step : (b + 1) * step]

    def one(k):
        if k is None:
            return make_classifier(name, rate, frame_ms=20)
        for fr in part(frames, k):
            k[0].classify(fr[None])
        return None

    res["classify"] = best(one, repeats) / n * 1e6 * scale
    chunks = [fr.copy() for fr in frames]
    cfg = EndpointingConfig(classifier=name)  # type: ignore[arg-type]

    def push(k):
        if k is None:
            return Endpointer(cfg, sample_rate=rate, classifier=make_classifier(name, rate, frame_ms=20))
        for ch in part(chunks, k):
            k[0].push(ch)
        return None

    res["push"] = best(push, repeats) / n * 1e6 * scale
    ticks = max(n // calls, 1) if name != "silero" else max(n // calls, 3)
    rng = np.random.default_rng(0)
    offsets = rng.integers(0, len(frames), size=calls)
    batches = [frames[(offsets + k) % len(frames)] for k in range(ticks)]

    def batch(k):
        if k is None:
            return [make_classifier(name, rate, frame_ms=20) for _ in range(calls)]
        for b in part(batches, k):
            for at in range(0, calls, rows):  # as FrameBatch: at most MAX_ROWS rows per classify_batch
                classify_batch(k[0][at : at + rows], b[at : at + rows])
        return None

    res[f"batch {calls}"] = best(batch, repeats, blocks=min(ticks, 20)) / (ticks * calls) * 1e6 * scale
    return res


def interleaved(names: list[str], calls: int, rounds: int, ticks: int = 40, frames_1: int = 2000,
                *, quiet: bool = False) -> dict[str, tuple[float, float]]:
    """Same-run A/B on a shared machine: alternating rounds (the order flipped every round) of ``ticks``
    batched ticks at ``calls`` calls and ``frames_1`` one-call frames per classifier, each figure the minimum
    over the rounds; prints the ratios to the first name."""
    frames = audio(len(np.concatenate([p for _, p, _ in load(HERE / "corpus_real")])) // 160 * 160).reshape(-1, 160)
    offsets = np.random.default_rng(0).integers(0, len(frames), size=calls)
    batch = {n: [make_classifier(n, 8000) for _ in range(calls)] for n in names}
    single = {n: make_classifier(n, 8000) for n in names}
    best_b = dict.fromkeys(names, float("inf"))
    best_1 = dict.fromkeys(names, float("inf"))
    pos = dict.fromkeys(names, 0)
    for rnd in range(rounds):
        for n in names if rnd % 2 == 0 else names[::-1]:
            ticks_ = [frames[(offsets + rnd * ticks + t) % len(frames)] for t in range(ticks)]
            t0 = time.perf_counter()
            for b in ticks_:
                classify_batch(batch[n], b)
            best_b[n] = min(best_b[n], (time.perf_counter() - t0) / (ticks * calls) * 1e6)
            seq = frames[pos[n] : pos[n] + frames_1]
            t0 = time.perf_counter()
            for f in seq:
                single[n].classify(f[None])
            best_1[n] = min(best_1[n], (time.perf_counter() - t0) / len(seq) * 1e6)
            pos[n] = (pos[n] + frames_1) % (len(frames) - frames_1)
    if quiet:
        return {n: (best_b[n], best_1[n]) for n in names}
    print(f"\ninterleaved, {rounds} rounds, min; load average now {os.getloadavg()[0]:.2f}\n")
    print(f"| classifier | classify_batch µs/20 ms at {calls} calls | ratio | classify µs/20 ms, 1 call | ratio |")
    print("|---|---|---|---|---|")
    for n in names:
        print(f"| {n} | {best_b[n]:.2f} | {best_b[n] / best_b[names[0]]:.2f} | {best_1[n]:.2f} | "
              f"{best_1[n] / best_1[names[0]]:.2f} |")
    return {n: (best_b[n], best_1[n]) for n in names}


def trees_ab(old: Path, name: str, calls: int, rounds: int) -> None:
    """Same-run A/B of two trees (this one and ``old``, each its own venv): ``rounds`` alternating pairs of
    short interleaved runs of ``name`` (the order flipped every round), each figure the minimum over them."""
    import json
    import subprocess

    trees = {"new": _TREE, "old": old.resolve()}
    best: dict[str, list[float]] = {t: [math.inf, math.inf] for t in trees}
    for rnd in range(rounds):
        for t in list(trees) if rnd % 2 == 0 else list(trees)[::-1]:
            cmd = [str(trees[t] / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--tree", str(trees[t]),
                   "--interleave", name, "--rounds", "4", "--calls", str(calls), "--json"]
            env = os.environ | {"OPENBLAS_NUM_THREADS": "1"}
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)[name]
            best[t] = [min(best[t][0], got[0]), min(best[t][1], got[1])]
    print(f"\n{name}, trees A/B, {rounds} rounds, min; load average now {os.getloadavg()[0]:.2f}\n")
    print(f"| tree | classify_batch µs/20 ms at {calls} calls | new / old | classify µs/20 ms, 1 call | new / old |")
    print("|---|---|---|---|---|")
    for t, path in trees.items():
        print(f"| {t} {path} | {best[t][0]:.2f} | {best[t][0] / best['old'][0]:.3f} | {best[t][1]:.2f} | "
              f"{best[t][1] / best['old'][1]:.3f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classifiers", default="bands-pitch,bands-click,bands-unmute,bands,energy,webrtc,silero")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=int, default=32, help="rows per classify_batch call (FrameBatch.MAX_ROWS)")
    ap.add_argument("--interleave", default="", help="A,B[,...]: a same-run A/B instead (alternating rounds)")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--tree", type=Path, help="the sori tree to measure (default: this script's)")
    ap.add_argument("--ab", type=Path, help="OLD tree: same-run A/B of the --interleave classifier, this tree vs OLD")
    ap.add_argument("--json", action="store_true", help="with --interleave: the figures as JSON (for --ab)")
    args = ap.parse_args()
    if args.ab:
        trees_ab(args.ab, (args.interleave or "bands-click").split(",")[0].strip(), args.calls, args.rounds)
        return 0
    if args.interleave:
        got = interleaved([n.strip() for n in args.interleave.split(",")], args.calls, args.rounds, quiet=args.json)
        if args.json:
            import json

            print(json.dumps(got))
        return 0
    print(f"load average {os.getloadavg()[0]:.2f} / {os.cpu_count()} cpus; {args.frames} frames, min of {args.repeats}")
    print(f"\n| classifier | classify µs/20 ms, 1 call | Endpointer.push µs/20 ms, 1 call | classify_batch µs/20 ms at {args.calls} calls |")
    print("|---|---|---|---|")
    for name in args.classifiers.split(","):
        try:
            r = measure(name.strip(), args.frames, args.calls, args.repeats, args.rows)
        except ClassifierError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        print(f"| {name} | {r['classify']:.1f} | {r['push']:.1f} | {r[f'batch {args.calls}']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

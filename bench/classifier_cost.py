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
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load

from engine.config import EndpointingConfig
from engine.endpointing import ClassifierError, Endpointer, make_classifier
from engine.endpointing.classifiers import classify_batch

HERE = Path(__file__).resolve().parent


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


def interleaved(names: list[str], calls: int, rounds: int, ticks: int = 40, frames_1: int = 2000) -> None:
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
    print(f"\ninterleaved, {rounds} rounds, min; load average now {os.getloadavg()[0]:.2f}\n")
    print(f"| classifier | classify_batch µs/20 ms at {calls} calls | ratio | classify µs/20 ms, 1 call | ratio |")
    print("|---|---|---|---|---|")
    for n in names:
        print(f"| {n} | {best_b[n]:.2f} | {best_b[n] / best_b[names[0]]:.2f} | {best_1[n]:.2f} | "
              f"{best_1[n] / best_1[names[0]]:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classifiers", default="bands-pitch,bands-click,bands-unmute,bands,energy,webrtc,silero")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=int, default=32, help="rows per classify_batch call (FrameBatch.MAX_ROWS)")
    ap.add_argument("--interleave", default="", help="A,B[,...]: a same-run A/B instead (alternating rounds)")
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    if args.interleave:
        interleaved([n.strip() for n in args.interleave.split(",")], args.calls, args.rounds)
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

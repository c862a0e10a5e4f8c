"""Per-frame cost of the frame classifiers, alone and inside Endpointer.push, at 1 call and batched.

Audio: the committed real-speech subset (bench/corpus_real: speech, pauses, noise, hold
silence) cut into 20 ms packets (32 ms windows for silero). For each classifier:

* ``classify``: ``classify(frame[None])`` per frame, one call's stream;
* ``push``: ``Endpointer.push`` per 20 ms packet (classifier + state machine), one call;
* ``batch N``: :func:`engine.endpointing.classifiers.classify_batch` over N classifiers (N calls),
  one frame each per tick; per frame = tick time / N (the whole batch counted).

Per 20 ms of audio: silero's 32 ms windows are scaled by 20/32. Each figure is the minimum
of ``--repeats`` runs over ``--frames`` frames. Usage:
python bench/classifier_cost.py [--classifiers bands,energy,webrtc,silero] [--frames 10000] [--calls 300]
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


def best(fn, repeats: int) -> float:
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def measure(name: str, n_frames: int, calls: int, repeats: int) -> dict[str, float]:
    rate = 8000
    clf = make_classifier(name, rate, frame_ms=20)
    w = clf.frame_samples
    scale = (rate // 50) / w  # per 20 ms of audio
    n = n_frames if name != "silero" else max(n_frames // 5, 1)
    frames = audio(n * w).reshape(n, w)
    res: dict[str, float] = {}

    def one() -> None:
        c = make_classifier(name, rate, frame_ms=20)
        for fr in frames:
            c.classify(fr[None])

    res["classify"] = best(one, repeats) / n * 1e6 * scale
    chunks = [fr.copy() for fr in frames]
    cfg = EndpointingConfig(classifier=name)  # type: ignore[arg-type]

    def push() -> None:
        ep = Endpointer(cfg, sample_rate=rate, classifier=make_classifier(name, rate, frame_ms=20))
        for ch in chunks:
            ep.push(ch)

    res["push"] = best(push, repeats) / n * 1e6 * scale
    ticks = max(n // calls, 1) if name != "silero" else max(n // calls, 3)
    rng = np.random.default_rng(0)
    offsets = rng.integers(0, len(frames), size=calls)
    batches = [frames[(offsets + k) % len(frames)] for k in range(ticks)]

    def batch() -> None:
        cs = [make_classifier(name, rate, frame_ms=20) for _ in range(calls)]
        for b in batches:
            classify_batch(cs, b)

    res[f"batch {calls}"] = best(batch, repeats) / (ticks * calls) * 1e6 * scale
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classifiers", default="bands,energy,webrtc,silero")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} / {os.cpu_count()} cpus; {args.frames} frames, min of {args.repeats}")
    print(f"\n| classifier | classify µs/20 ms, 1 call | Endpointer.push µs/20 ms, 1 call | classify_batch µs/20 ms at {args.calls} calls |")
    print("|---|---|---|---|")
    for name in args.classifiers.split(","):
        try:
            r = measure(name.strip(), args.frames, args.calls, args.repeats)
        except ClassifierError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        print(f"| {name} | {r['classify']:.1f} | {r['push']:.1f} | {r[f'batch {args.calls}']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

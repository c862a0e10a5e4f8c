"""Replay ``bands-judge``'s decision rule on recorded Silero probabilities (issue 12 round 9; tune on dev only).

Why: when the judge runs Silero, on which windows and from which state depends only on the bands' decisions
(``arm_frames``, ``tail_frames``, ``prime_windows``, ``warm``, and ``prime_rounds``: early priming
runs a wake's windows on the frames before it), never on the judge's own, so one run's
probabilities are every decision variant's. They are recorded once per split and schedule (a .npz in --cache);
a variant then costs the bands and the Endpointer only. The replayed classifier is the real
engine/endpointing/judge.py JudgeClassifier with a tape in place of its Silero (the tape checks it is read to its
end, so a variant that changed the schedule would fail loudly). Rows and flags as bench/judge_sweep.py's; the
final figures come from judge_sweep.py itself (the real Silero).

``--trace`` prints, per SNR (non-babble rows), what the judged frames look like: Silero's probability and its
fall from the tail's peak (logit) for judged frames inside labelled speech and for those after the utterance's
true end (every such frame judged speech is 20 ms of end delay).

Usage: python bench/judge_replay.py [--split dev] [--schedule '{"tail_frames": 7}'] [--trace] [--starts] '{"fall": 2}' ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import judge_sweep
from corpus import load
from endpointing_eval import default_dir, run_call
from judge_sweep import END_MS, MERGE_MS, report

from engine.endpointing import FrameClassifier, make_classifier
from engine.endpointing.classifiers import BandClassifier
from engine.endpointing.judge import PRIME_ROUNDS, JudgeClassifier
from engine.endpointing.silero import SileroClassifier

SCHEDULE = ("tail_frames", "arm_frames", "prime_windows", "warm", "prime_rounds")
#: Start delay (first detection's start − the utterance's labelled start, ms) per (SNR, noise), of the last replay.
STARTS: dict[tuple[float, str], list[float]] = defaultdict(list)


class Recorder(SileroClassifier):
    """The real Silero, keeping every probability it gives (in order)."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__(sample_rate)
        self.tape: list[float] = []

    def probabilities(self, frames: Any) -> list[float]:
        out = super().probabilities(frames)
        self.tape += out
        return out


class Tape:
    """Silero's place in the judge: the recorded probabilities, in order."""

    _session = None  # part of the judge's batching key; a call run alone never reaches an ONNX session

    def __init__(self, probs: np.ndarray, sample_rate: int) -> None:
        self.p = probs
        self.i = 0
        self.sample_rate = sample_rate
        self.frame_samples = 256 if sample_rate == 8000 else 512

    def reset(self) -> None:
        pass

    def probabilities(self, frames: Any) -> list[float]:
        n = len(frames)
        out = self.p[self.i : self.i + n]
        if len(out) != n:
            raise RuntimeError("tape overrun: the variant changed Silero's schedule")
        self.i += n
        return out.tolist()  # type: ignore[no-any-return]


class Tracer(JudgeClassifier):
    """The judge, logging each frame's (since, bands, quiet, last prob, peak logit, decision)."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.log: list[tuple[int, bool, bool, float, float, bool, float]] = []

    def _finish(self, bands_speech: bool, quiet: bool, level: float, probs: list[float]) -> bool:
        peak = self._peak
        out = super()._finish(bands_speech, quiet, level, probs)
        self.log.append((self._since if self._active else -1, bands_speech, quiet, 1 / (1 + math.exp(-self._last)), peak, out, level - self._floor))
        return out


def record(files: list[Any], schedule: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    tapes: dict[str, np.ndarray] = {}
    for name, pcm, lab in files:
        rec = Recorder(lab["sample_rate"])

        def make(rate: int, rec: Recorder = rec) -> FrameClassifier:
            bands = make_classifier("bands-click", rate, frame_ms=20)
            assert isinstance(bands, BandClassifier)
            return JudgeClassifier(bands, rec, **schedule)

        run_call(make, END_MS, pcm, lab["sample_rate"], MERGE_MS)
        tapes[name] = np.array(rec.tape, dtype=np.float64)
    np.savez(path, **tapes)
    print(f"recorded {len(tapes)} files to {path}", file=sys.stderr)
    return tapes


def replay(files: list[Any], tapes: dict[str, np.ndarray], knobs: dict[str, Any], trace: bool = False
           ) -> tuple[dict[tuple[float, str], dict[str, Any]], list[Any]]:
    per: dict[tuple[float, str], dict[str, Any]] = {}
    traces = []
    STARTS.clear()
    for name, pcm, lab in files:
        made: list[JudgeClassifier] = []

        def make(rate: int) -> FrameClassifier:
            bands = make_classifier("bands-click", rate, frame_ms=20)
            assert isinstance(bands, BandClassifier)
            c = (Tracer if trace else JudgeClassifier)(bands, Tape(tapes[name], rate), **knobs)  # type: ignore[arg-type]
            made.append(c)
            return c

        det, _ = run_call(make, END_MS, pcm, lab["sample_rate"], MERGE_MS)
        tape = made[0].judge
        assert isinstance(tape, Tape) and tape.i == len(tape.p), f"{name}: tape not read to its end ({tape.i}/{len(tape.p)})"
        judge_sweep.score_into(per, det, pcm, lab, made[0].windows + made[0].spare_windows)  # as judge_sweep counts
        for u in lab["utterances"]:
            over = [d for d in det if d[1] < u["end"] and d[2] > u["start"]]
            if over:
                STARTS[(lab["snr_db"], lab["noise"])].append((over[0][1] - u["start"]) * 1000 / lab["sample_rate"])
        if trace:
            traces.append((lab, made[0].log))  # type: ignore[attr-defined]
    return per, traces


def show_trace(traces: list[Any]) -> None:
    """Judged frames (bands silent, Silero active, 1 ≤ since): inside labelled speech vs after an utterance's end."""
    rows: dict[tuple[float, str], list[tuple[float, float, int]]] = defaultdict(list)
    for lab, log in traces:
        if lab["noise"] not in judge_sweep.NON_BABBLE:
            continue
        n = len(log)
        speech = np.zeros(n * 160 + 160, bool)
        after = np.zeros(n * 160 + 160, bool)
        for u in lab["utterances"]:
            for s, e in u["segments"]:
                speech[s:e] = True
            after[u["end"] : u["end"] + 400 * 8] = True
        for i, (since, b, q, p, peak, _, rl) in enumerate(log):
            if b or q or since < 1 or since > 7:
                continue
            mid = i * 160 + 80
            kind = "speech" if speech[mid] else ("after-end" if after[mid] else "other")
            lg = math.log(max(p, 1e-6) / max(1 - p, 1e-6))
            rows[(lab["snr_db"], kind)].append((p, peak - lg, since, rl))
    for key in sorted(rows, key=lambda k: (-k[0], k[1])):
        v = np.array(rows[key])
        qs = lambda c: " ".join(f"{x:5.2f}" for x in np.percentile(v[:, c], [10, 25, 50, 75, 90]))  # noqa: E731
        print(f" {key[0]:g} dB {key[1]:<9} n {len(v):5d}  prob p10..p90 {qs(0)}  fall from peak (logit) {qs(1)}  level-floor dB {qs(3)}")
        for since in range(1, 8):
            w = v[v[:, 2] == since]
            if len(w):
                print(f"     since {since}: n {len(w):4d} prob p50 {np.median(w[:, 0]):.3f} ≥0.5 {np.mean(w[:, 0] >= 0.5):.2f} "
                      f"≥0.95 {np.mean(w[:, 0] >= 0.95):.2f} fall p50 {np.median(w[:, 1]):.2f} >1 {np.mean(w[:, 1] > 1):.2f} "
                      f">2 {np.mean(w[:, 1] > 2):.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--by-noise", action="store_true")
    ap.add_argument("--schedule", default="{}", help="JSON: the schedule knobs (tail_frames, arm_frames, prime_windows, warm, prime_rounds)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/judge_tapes"))
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--starts", action="store_true", help="also the start delay p50 / p95 per SNR (non-babble rows)")
    ap.add_argument("variants", nargs="*", help="JSON objects of JudgeClassifier decision knobs")
    args = ap.parse_args()
    real = args.real or default_dir("corpus_real_full", "corpus_real")
    files = [f for f in load(real) if f[2].get("split", args.split) == args.split]
    files = [f for f in files if not f[2].get("noise_only")] + [f for f in files if f[2].get("noise_only")]
    if any(f[2]["noise"] == "white" for f in files):  # the synthetic corpus: white noise instead of line
        judge_sweep.NON_BABBLE = ("white", "pink", "hum")
    schedule = json.loads(args.schedule)
    assert set(schedule) <= set(SCHEDULE), f"schedule knobs only: {SCHEDULE}"
    args.cache.mkdir(parents=True, exist_ok=True)
    # Every schedule knob in the name (defaults included): a tape recorded under another schedule overruns.
    full = {"prime_rounds": PRIME_ROUNDS} | schedule
    tag = f"{real.name}_{args.split}_" + "_".join(f"{k}{full[k]}" for k in sorted(full))
    tapes = record(files, schedule, args.cache / f"{tag}.npz")
    silero = args.cache / f"{real.name}_{args.split}_silero.json"
    if not silero.exists():
        ref = judge_sweep.run(files, lambda r: make_classifier("silero", r))
        silero.write_text(json.dumps([[k[0], k[1], dict(v)] for k, v in ref.items()]))
    ref = {(s, n): defaultdict(float, v) for s, n, v in json.loads(silero.read_text())}
    for v in args.variants or ["{}"]:
        knobs = {**schedule, **json.loads(v)}
        per, traces = replay(files, tapes, knobs, args.trace)
        report(f"replay bands-judge {json.dumps(knobs)}", per, ref, args.by_noise)
        if args.trace:
            show_trace(traces)
        if args.starts:
            for snr in sorted({s for s, _ in per}, reverse=True):
                st = [x for (sn, n), xs in STARTS.items() if sn == snr and n in judge_sweep.NON_BABBLE for x in xs]
                print(f" {snr:g} dB non-babble start delay p50 / p95 {np.percentile(st, 50):.0f} / {np.percentile(st, 95):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

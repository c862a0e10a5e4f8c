"""Results that reach no lessee (issue 13): foreign and orphan results under the capacity rig's load, at small scale.

The three processes as bench/capacity.py's two-process rig starts them (``sori serve``, ``sori emulate-rtzr
--cheap`` with handshake 100 ms / final 150 ms, bench/loadgen.py over the corpus), unpinned and without
SCHED_FIFO (a reproduction, not a capacity measurement). It waits until every call has ended (so no lease is
cut short by the engine's shutdown), then prints:

- ``rtzr_foreign_results_total`` (rules 1-3 of engine/rtzr/tracker.py failed: a warning each, in the engine log)
  and ``rtzr_orphan_results_total`` (late answers after a lease that ended unclean, e.g. a finalize timeout:
  an older tree counted these as foreign);
- the utterances that ended at ``max_utterance_ms`` and how many of them were closed by a final ending 20 ms or
  more before the utterance's end (``closed early``; 40 ms each before round 6 was the server's own
  ``max_utter_duration`` cut taken for the answer to our Finalize, the cause of the foreign results).

Any tree that has bench/_common.py (run it from that tree with its venv)::

    .venv/bin/python bench/rtzr_foreign.py --calls 60 --repeat 2 --work /tmp/foreign
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import _common as c


def _events(path: Path) -> list[dict[str, Any]]:
    return c.read_events(path)


def closed_early(events: list[dict[str, Any]]) -> tuple[int, int, list[int]]:
    """(utterances ended by length with a closing final, of which closed >= 20 ms early, those gaps in ms)."""
    ended = {e["utterance_id"]: e for e in events if e.get("type") == "speech.ended" and e.get("reason") != "silence"}
    closing = {e["utterance_id"]: e for e in events if e.get("type") == "transcript.final" and e.get("latency")}
    both = [u for u in ended if u in closing]
    gaps = sorted(round(ended[u]["end_ms"] - closing[u]["end_ms"]) for u in both)
    early = [g for g in gaps if g >= 20]
    return len(both), len(early), early


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=60)
    p.add_argument("--repeat", type=int, default=2, help="plays of the corpus call per call")
    p.add_argument("--work", type=Path, default=Path("/tmp/rtzr_foreign"))
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    n, work = args.calls, args.work
    work.mkdir(parents=True, exist_ok=True)
    events_path = work / "events.jsonl"
    corpus = c.load_corpus()
    emu_port, port, admin = c.free_port(), c.free_port(), c.free_port()
    emu = c.start_emulator(emu_port, max_sessions=n + 50, log=work / "emu.log", cpu=None, final_ms=150, cheap=True)
    engine = c.start_engine(port, admin, emu_port, events=events_path, log=work / "engine.log", cpu=None,
                            settings=[f"rtzr.pool.max_sessions={n + 20}", "rtzr.pool.spare=20",
                                      f"server.admin_port={admin}", *args.settings])
    try:
        time.sleep(1.0)
        stagger = min(20.0, 4.0 * 1000 / n)
        load = c.spawn([c.PY, str(c.ROOT / "bench" / "loadgen.py"), f"ws://127.0.0.1:{port}/twilio/media",
                        "--calls", str(n), "--stagger-ms", f"{stagger:.3f}", "--repeat", str(args.repeat),
                        "--out", str(work / "load.json"), "--audio", *[str(k.wav) for k in corpus]],
                       cpu=None, log=work / "load.log")
        load.wait(timeout=1800)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(e.get("type") == "call.ended" for e in _events(events_path)) >= n:
                break
            time.sleep(0.5)
        metrics = c.scrape_metrics(admin)
    finally:
        c.stop(engine)
        c.stop(emu)
    events = _events(events_path)
    errors: dict[str, int] = {}
    for e in events:
        if e.get("type") == "error":
            key = f"{e.get('kind')}/{e.get('budget')}"
            errors[key] = errors.get(key, 0) + 1
    by_length, early, gaps = closed_early(events)
    warnings = [json.loads(line) for line in (work / "engine.log").read_text().splitlines()
                if '"rtzr_foreign_result"' in line]
    print(json.dumps({
        "calls": n, "repeat": args.repeat,
        "calls_ended": sum(e.get("type") == "call.ended" for e in events),
        "utterances": sum(e.get("type") == "speech.started" for e in events),
        "errors": errors,
        "foreign": metrics.get("sori_rtzr_foreign_results_total", 0.0),
        "orphan": metrics.get("sori_rtzr_orphan_results_total", 0.0),
        "max_length_closed": by_length, "closed_early": early, "closed_early_gaps_ms": gaps,
        "foreign_warnings": [{k: v for k, v in w.items() if k not in ("ts", "logger", "level")} for w in warnings],
    }, indent=1))


if __name__ == "__main__":
    main()

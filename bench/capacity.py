"""Capacity: ramp concurrent real-time calls against one engine process until it cannot keep up.

Per step a fresh engine (``sori serve``) and emulator (``sori emulate-rtzr``, handshake 100 ms, final
150 ms, sessions = calls) and the load generator (bench/loadgen.py) each run as their own process.
Reported per step: engine CPU (% of one core, /proc), peak RSS and RSS per call above the idle
engine, inbound frame lag p99 (``sori_twilio_frame_lag_ms``: a frame handled by the endpointer vs
its due time), STT lag p99 (Finalize → final minus the emulator's 150 ms), finals delivered vs
utterances started. Capacity = the largest step with frame lag p99 ≤ 20 ms, no final lost and
CPU ≤ 90 % of one core.

    .venv/bin/python bench/capacity.py [--steps 50 100 200 400] [--repeat 2] [--set call.send_batch_ms=100]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import _common as c

FINAL_MS = 150
LAG_METRIC = "sori_twilio_frame_lag_ms_bucket"


@dataclass
class Step:
    calls: int
    cpu_pct: float = 0.0
    rss_mib: float = 0.0
    rss_per_call_kib: float = 0.0
    frame_lag_p99: float = math.nan
    frame_lag_p50: float = math.nan
    stt_lag_p99: float = math.nan
    utterances: int = 0
    finals: int = 0
    errors: int = 0
    calls_ok: int = 0
    sender_lag_p99: float = 0.0

    @property
    def lost(self) -> int:
        return max(0, self.utterances - self.finals)

    @property
    def passed(self) -> bool:
        return self.frame_lag_p99 <= 20 and self.lost == 0 and self.errors == 0 and self.cpu_pct <= 90 \
            and self.calls_ok == self.calls


def histogram_quantiles(metrics_text: str, name: str, qs: tuple[float, ...]) -> list[float]:
    """Upper bucket bounds holding each quantile of a Prometheus histogram (summed over label sets)."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    out = []
    for q in qs:
        found = math.nan
        for bound, cumulative in ordered:
            if total and cumulative >= q * total:
                found = bound
                break
        out.append(found)
    return out


def run_step(n: int, corpus: list[c.CorpusCall], work: Path, *, repeat: int, settings: list[str], pin: bool) -> Step:
    step = Step(n)
    emu_port, port, admin = c.free_port(), c.free_port(), c.free_port()
    events = work / f"events-{n}.jsonl"
    emulator = c.start_emulator(emu_port, max_sessions=n + 10, log=work / f"emu-{n}.log", cpu=1 if pin else None,
                                final_ms=FINAL_MS)
    engine = None
    try:
        engine = c.start_engine(port, admin, emu_port, events=events, log=work / f"engine-{n}.log",
                                cpu=0 if pin else None,
                                settings=[f"rtzr.pool.max_sessions={n}", f"rtzr.pool.spare={max(2, n // 4)}",
                                          f"server.admin_port={admin}", *settings])
        time.sleep(2.0)
        idle_rss = c.proc_rss(engine.pid)
        out = work / f"load-{n}.json"
        gen = c.spawn([c.PY, str(c.ROOT / "bench" / "loadgen.py"), f"ws://127.0.0.1:{port}/twilio/media",
                       "--calls", str(n), "--stagger-ms", str(min(20.0, 4000 / n)), "--repeat", str(repeat),
                       "--out", str(out), "--audio", *[str(k.wav) for k in corpus]],
                      cpu=1 if pin else None, log=work / f"load-{n}.log")
        before = c.CpuSample.take(engine.pid)
        peak = idle_rss
        while gen.poll() is None:
            peak = max(peak, c.proc_rss(engine.pid))
            time.sleep(0.5)
        step.cpu_pct = c.CpuSample.take(engine.pid).percent_since(before)
        step.rss_mib = peak / 2**20
        step.rss_per_call_kib = (peak - idle_rss) / n / 1024
        load = json.loads(out.read_text())
        step.calls_ok = int(load["ok"])
        step.sender_lag_p99 = float(load["sender_lag_ms_p99"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sum(e.get("type") == "call.ended" for e in c.read_events(events)) >= step.calls_ok:
                break
            time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
        step.frame_lag_p50, step.frame_lag_p99 = histogram_quantiles(text, LAG_METRIC, (0.5, 0.99))
    finally:
        if engine is not None:
            c.stop(engine)
        c.stop(emulator)
    stt: list[float] = []
    for e in c.read_events(events):
        kind = e.get("type")
        if kind == "speech.started":
            step.utterances += 1
        elif kind == "error":
            step.errors += 1
        elif kind == "transcript.final" and e.get("latency"):
            step.finals += 1
            stt.append(e["latency"]["stt_ms"] - FINAL_MS)
    step.stt_lag_p99 = c.percentile(stt, 99)
    return step


def report(steps: list[Step]) -> str:
    lines = ["calls  engine CPU  peak RSS  RSS/call  frame lag p50/p99  STT lag p99  finals/utterances  errors  "
             "sender lag p99  ok",
             "-----  ----------  --------  --------  -----------------  -----------  -----------------  ------  "
             "--------------  --"]
    for s in steps:
        lines.append(f"{s.calls:5d}  {s.cpu_pct:9.0f}%  {s.rss_mib:6.0f}Mi  {s.rss_per_call_kib:6.0f}Ki  "
                     f"{s.frame_lag_p50:7.0f} /{s.frame_lag_p99:6.0f} ms  {s.stt_lag_p99:8.0f} ms  "
                     f"{s.finals:8d}/{s.utterances:<8d}  {s.errors:6d}  {s.sender_lag_p99:11.1f} ms  "
                     f"{'yes' if s.passed else 'no'}")
    passed = [s.calls for s in steps if s.passed]
    lines.append(f"capacity: {max(passed) if passed else 0} concurrent real-time calls "
                 "(frame lag p99 ≤ 20 ms, no final lost, CPU ≤ 90 % of one core)")
    return "\n".join(lines)


def run(steps: list[int], *, repeat: int, settings: list[str], pin: bool, stop_after_fail: bool = True) -> str:
    corpus = c.load_corpus()
    work = Path(tempfile.mkdtemp(prefix="sori-capacity-"))
    results: list[Step] = []
    for n in steps:
        results.append(run_step(n, corpus, work, repeat=repeat, settings=settings, pin=pin))
        print(f"  done: {n} calls", flush=True)
        if stop_after_fail and not results[-1].passed and results[-1].cpu_pct > 95:
            break  # saturated: larger steps only take longer to say the same
    head = (f"capacity: {len(corpus)} corpus calls × {repeat} plays per call, settings {settings or 'default'}, "
            f"{'pinned (engine core 0; emulator + load core 1)' if pin else 'unpinned'}; {c.machine()}; logs in {work}")
    return head + "\n" + report(results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 400])
    p.add_argument("--repeat", type=int, default=2, help="plays of the ~14 s corpus call per call (step duration)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args()
    print(run(args.steps, repeat=args.repeat, settings=args.settings, pin=not args.no_pin))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

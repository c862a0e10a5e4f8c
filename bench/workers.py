"""Workers (issue 16): the same load on ``sori serve --workers 1`` and ``--workers 2``, measured in one run.

Per run: a fresh ``--cheap`` RTZR emulator, ``sori serve --set server.workers=W`` (a parent and W engine
processes sharing the Twilio port), and ``bench/loadgen.py`` playing corpus calls (``--repeat`` times). Nothing
is pinned: two workers need both cores. Once every call is streaming and ``--settle-s`` later, a ``--window-s``
window measures: CPU of the parent and of each worker (/proc), the frame-lag histogram summed over workers (the
parent's aggregated /metrics, window delta), how the calls spread over the workers (``sori_calls_live`` by
``worker``), the rig's CPU (load generator + emulator) and sender lag, and every other process on the machine.

Validity: a 2-core machine cannot give 2 workers 2 cores *and* run the rig elsewhere, so capacity by the rule
(frame lag p99 <= 20 ms with the engine <= 90 % of a core, rig not the bottleneck: bench/capacity.py) cannot
be measured for 2 workers here. What this measures is what scaling rests on: CPU per call at equal load (does a
worker cost what a single process costs?), the spread of calls over workers, and the parent's own cost. A run is
INVALID when the machine (rig + others + engine) had no idle CPU left or the rig lagged (sender lag p99 > 5 ms).

    .venv/bin/python bench/workers.py --calls 60 --workers 1 2 [--repeat 2 --window-s 20]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import _common as c

LAG = "sori_twilio_frame_lag_ms_bucket"


@dataclass
class Run:
    workers: int
    calls: int
    engine_cpu: float = math.nan  # parent + workers, % of one core
    parent_cpu: float = math.nan
    worker_cpu: list[float] = field(default_factory=list)
    calls_by_worker: dict[str, float] = field(default_factory=dict)
    lag_p50: float = math.nan
    lag_p99: float = math.nan
    rig_cpu: float = math.nan
    rig_lag_p99: float = math.nan
    others_cpu: float = math.nan
    machine_idle: float = math.nan  # % of the whole machine (2 cores = 200 %)
    rss_mib: list[float] = field(default_factory=list)  # parent, then each worker, at the window's end
    finals: int = 0
    utterances: int = 0
    errors: int = 0
    calls_ok: int = 0
    invalid: list[str] = field(default_factory=list)

    @property
    def cpu_per_call(self) -> float:
        return self.engine_cpu / self.calls


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the workers), from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(d.name))
    return sorted(out)


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])
    return (total - fields[3] - fields[4]) / c.CLK_TCK, total / c.CLK_TCK


def buckets(text: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(LAG + "{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def quantile(window: dict[float, float], q: float) -> float:
    ordered = sorted(window.items())
    total = ordered[-1][1] if ordered else 0.0
    return next((b for b, n in ordered if total and n >= q * total), math.nan)


def fetch(admin: int, path: str) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10).read().decode()


def progress(path: Path) -> set[str]:
    return {json.loads(x)["event"] for x in path.read_text().splitlines() if x.strip()} if path.exists() else set()


def run(workers: int, calls: int, corpus: list[c.CorpusCall], work: Path, args: argparse.Namespace,
        round_: int) -> Run:
    r = Run(workers, calls)
    tag = f"w{workers}-{calls}-r{round_}"
    emu_port, port, admin = c.free_port(), c.free_port(), c.free_port()
    events, prog, out = work / f"events-{tag}.jsonl", work / f"progress-{tag}.jsonl", work / f"load-{tag}.json"
    for stale in (events, prog, out):  # appended to by the engine and the load generator
        stale.unlink(missing_ok=True)
    emulator = c.start_emulator(emu_port, max_sessions=calls + 50, log=work / f"emu-{tag}.log", cpu=None,
                                final_ms=150, cheap=True)
    engine = gen = None
    try:
        engine = c.start_engine(port, admin, emu_port, events=events, log=work / f"engine-{tag}.log", cpu=None,
                                settings=[f"server.workers={workers}", f"rtzr.pool.max_sessions={(calls + 20) * workers}",
                                          "rtzr.pool.spare=10", f"server.admin_port={admin}"])
        deadline = time.monotonic() + 90
        while True:  # the parent answers 200 once every worker is ready
            try:
                fetch(admin, "/readyz")
                break
            except OSError:
                if time.monotonic() > deadline or engine.poll() is not None:
                    raise RuntimeError("engine not ready") from None
                time.sleep(0.2)
        gen = c.spawn(c.realtime([c.PY, str(c.ROOT / "bench" / "loadgen.py"), f"ws://127.0.0.1:{port}/twilio/media",
                                  "--calls", str(calls), "--stagger-ms", "20", "--repeat", str(args.repeat),
                                  "--progress", str(prog), "--out", str(out), "--audio", *[str(k.wav) for k in corpus]]),
                      cpu=None, log=work / f"load-{tag}.log")
        deadline = time.monotonic() + 120
        while "all_live" not in progress(prog) and time.monotonic() < deadline and gen.poll() is None:
            time.sleep(0.2)
        time.sleep(args.settle_s)
        pids = [engine.pid, *children(engine.pid)]
        rig = [gen.pid, emulator.pid]
        t_a = time.time()
        busy_a = machine_busy_s()
        cpu_a = [c.CpuSample.take(p) for p in pids + rig]
        hist_a = buckets(fetch(admin, "/metrics"))
        metrics = c.scrape_metrics(admin)
        r.calls_by_worker = {k.split('worker="', 1)[1].split('"', 1)[0]: v for k, v in metrics.items()
                             if k.startswith("sori_calls_live{")}
        time.sleep(args.window_s)
        cpu_b = [c.CpuSample.take(p) for p in pids + rig]
        busy_b = machine_busy_s()
        r.rss_mib = [c.proc_rss(p) / 2**20 for p in pids]
        hist_b = buckets(fetch(admin, "/metrics"))
        t_b = time.time()
        if "first_done" in progress(prog):
            r.invalid.append("a call ended inside the window (raise --repeat)")
        pct = [b.percent_since(a) for a, b in zip(cpu_a, cpu_b, strict=True)]
        r.parent_cpu, r.worker_cpu = pct[0], pct[1 : len(pids)]
        r.engine_cpu = sum(pct[: len(pids)])
        r.rig_cpu = sum(pct[len(pids) :])
        wall = cpu_b[0].wall - cpu_a[0].wall
        ours = sum(b.cpu_s - a.cpu_s for a, b in zip(cpu_a, cpu_b, strict=True))
        r.others_cpu = max(0.0, 100 * (busy_b[0] - busy_a[0] - ours) / wall)
        r.machine_idle = 100 * ((busy_b[1] - busy_a[1]) - (busy_b[0] - busy_a[0])) / wall
        window = {b: v - hist_a.get(b, 0.0) for b, v in hist_b.items()}
        r.lag_p50, r.lag_p99 = quantile(window, 0.5), quantile(window, 0.99)
        gen.wait(timeout=600)
        load = json.loads(out.read_text())
        r.calls_ok = int(load["ok"])
        start, step = float(load["tick_start_wall"]), float(load["tick_step_s"])
        part = load["tick_lag_ms"][max(0, int((t_a - start) / step)) : int((t_b - start) / step)]
        r.rig_lag_p99 = c.percentile(part, 99) if part else math.nan
        time.sleep(3)  # the last finals (the engine is still running; its JSONL is read below)
    finally:
        for proc in (gen, engine, emulator):
            if proc is not None:
                c.stop(proc, timeout=60)
    started: set[str] = set()
    for e in c.read_events(events):
        if e.get("type") == "speech.started":
            started.add(e["utterance_id"])
        elif e.get("type") == "transcript.final" and e.get("latency"):
            r.finals += 1
        elif e.get("type") == "error":
            r.errors += 1
    r.utterances = len(started)
    if r.rig_lag_p99 > 5:
        r.invalid.append(f"load generator lag p99 {r.rig_lag_p99:.1f} ms > 5")
    if r.machine_idle < 10:
        r.invalid.append(f"machine {r.machine_idle:.0f} % idle (of 200 %): everything shared two cores")
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, nargs="+", default=[60])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--settle-s", type=float, default=3.0)
    p.add_argument("--window-s", type=float, default=20.0)
    p.add_argument("--work", default="")
    args = p.parse_args()
    work = Path(args.work) if args.work else Path(c.ROOT / "bench" / "out" / "workers")
    work.mkdir(parents=True, exist_ok=True)
    corpus = c.load_corpus()
    print(f"machine: {c.machine()}")
    print("| workers | calls | verdict | engine CPU (parent; workers) | CPU per call | calls by worker | frame lag p50 / p99 ms "
          "| closing finals / utterances | errors | rig CPU | rig lag p99 | others | machine idle | RSS MiB (parent; workers) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for calls in args.calls:
        for round_, w in enumerate(args.workers):
            r = run(w, calls, corpus, work, args, round_)
            verdict = "INVALID" if r.invalid else "valid"
            spread = ", ".join(f"{k}: {v:g}" for k, v in sorted(r.calls_by_worker.items())) or "-"
            print(f"| {w} | {calls} | {verdict} | {r.engine_cpu:.0f} % ({r.parent_cpu:.1f}; "
                  f"{', '.join(f'{x:.0f}' for x in r.worker_cpu)}) | {r.cpu_per_call:.2f} % | {spread} | "
                  f"{r.lag_p50:g} / {r.lag_p99:g} | {r.finals} / {r.utterances} | {r.errors} | {r.rig_cpu:.0f} % | "
                  f"{r.rig_lag_p99:.1f} ms | {r.others_cpu:.0f} % | {r.machine_idle:.0f} % | "
                  f"{r.rss_mib[0] if r.rss_mib else math.nan:.0f}; {', '.join(f'{x:.0f}' for x in r.rss_mib[1:])} |",
                  flush=True)
            for why in r.invalid:
                print(f"  INVALID ({w} workers, {calls} calls): {why}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

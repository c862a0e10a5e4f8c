"""Workers (issue 16): capacity of ``sori serve --workers 1`` and ``--workers 2`` by the capacity rule, each
worker held to a fixed CPU share so that a 2-core machine can also run the rig.

Why quotas: two workers at capacity would need both cores and the rig (load generator + emulator) a third. So
each worker gets ``--quota`` of a core through a cgroup v1 CPU quota (``/sys/fs/cgroup/cpu/sori-bench-w<i>``,
``cpu.cfs_period_us`` = ``--period-us``, short so a throttled worker waits at most a few ms), pinned to its
own core (worker i on core i; ``--no-pin``: any core, as deployed; pinning skewed the old shared-accept spread), with
high ``cpu.shares`` so it gets its quota whenever it wants it even while other processes run. One worker has ``quota`` of a core, two have 2 × ``quota``; the rig (``--cheap`` emulator in
``sori-bench-rig``, high shares, no quota; the load generator SCHED_FIFO) has the rest and is checked.

Per step: a fresh emulator, ``sori serve --set server.workers=W`` (W = 1 is the single engine process, put in
the cgroup itself; W = 2 is a parent, left outside the cgroups, and two workers, moved into theirs once ready),
``bench/loadgen.py`` playing N corpus calls once. Once every call is live and ``--settle-s`` later, a
``--window-s`` window measures each worker's CPU (/proc) against its quota, its throttling (cgroup
``cpu.stat``) and run-queue wait (``/proc/<pid>/schedstat``), the frame-lag histogram (summed over workers from
the parent's aggregated /metrics), and the rig: load generator sender lag, emulator loop lag, CPU.

PASS by the rule: frame lag p99 <= 20 ms in the window, no utterance lost, no error, every call connected,
every worker <= 90 % of its quota. INVALID: the rig lagged (sender lag p99 > ``--rig-lag-ms`` or emulator loop
lag p99 > ``--emu-lag-ms``), a call ended inside the window, a worker's pid changed (restart: it left its
cgroup), or the frame lag failed while the worker was neither near its quota nor throttled (run-queue wait
above ``--max-wait`` ms per s: other processes, not the quota, held it back). Capacity = the largest passing
N per round; every configuration is run at every step once per round, the configurations alternating.

``--steps2s``: a third configuration, two separate single-process engines (one per worker cgroup and core),
each driven by its own load generator with half the calls: what two workers carry when the calls are spread
evenly, to tell the workers' CPU scaling from how ``--workers 2`` spreads the calls (the parent's least-loaded
hand-off now; a shared accept queue before).

    .venv/bin/python bench/workers.py --steps1 30 34 38 --steps2 44 52 60 --steps2s 64 72 --rounds 2 --no-pin
    .venv/bin/python bench/workers.py --steps1 30 34 38 --steps2 36 44 --steps2s 56 64 72 --rounds 2  # pinned

The cgroups are removed at the end (also on failure or Ctrl-C). Needs root and a cgroup v1 ``cpu`` hierarchy;
without them every step is marked INVALID ("no CPU quota") and measured unconfined.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
import capacity as cap

CGROOT = Path("/sys/fs/cgroup/cpu")
SHARES = 16384  # vs 1024 for a process at nice 0: the quota, not other processes, limits a worker


class Cgroup:
    """One cgroup v1 ``cpu`` group of ours: created with a quota, its tasks, its throttling, removed."""

    def __init__(self, name: str, *, quota: float | None, period_us: int) -> None:
        self.path = CGROOT / name
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.shares").write_text(str(SHARES))
        (self.path / "cpu.cfs_period_us").write_text(str(period_us))
        (self.path / "cpu.cfs_quota_us").write_text(str(int(quota * period_us)) if quota else "-1")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))  # the whole thread group

    def throttled(self) -> tuple[int, float]:
        """(periods throttled, seconds throttled) since creation."""
        st = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(st["nr_throttled"]), int(st["throttled_time"]) / 1e9

    def remove(self) -> None:
        """Move our tasks back to the root group, then rmdir (a group with tasks cannot be removed)."""
        if not self.path.exists():
            return
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (CGROOT / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # it exited meanwhile
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        raise OSError(f"could not remove {self.path}")


def run_delay_s(pid: int) -> float:
    """Seconds the process' threads waited on a run queue (/proc/<pid>/task/*/schedstat, field 2)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return total


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
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


def worker_index(pid: int) -> int:
    """A worker's ``--worker-index`` (its ``worker`` label in the parent's /metrics), from its command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--worker-index") + 1])


def worker_pids(engine: subprocess.Popen[bytes], workers: int, timeout: float = 30.0) -> list[int]:
    if workers == 1:
        return [engine.pid]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(engine.pid)
        if len(kids) == workers:
            return sorted(kids, key=worker_index)
        time.sleep(0.2)
    raise RuntimeError(f"expected {workers} workers, found {children(engine.pid)}")


def per_worker_p99(text: str) -> dict[str, dict[float, float]]:
    """The frame-lag buckets of each worker (the parent's /metrics labels them ``worker``)."""
    out: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if line.startswith(cap.LAG_METRIC + "{") and 'worker="' in line:
            w = line.split('worker="', 1)[1].split('"', 1)[0]
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            out.setdefault(w, {})[bound] = out.get(w, {}).get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class Step:
    workers: int
    calls: int
    round: int
    quota_pct: float  # each worker's quota, % of one core (nan: unconfined)
    split: bool = False  # two separate engines, half the calls each (not --workers 2)
    worker_cpu: list[float] = field(default_factory=list)  # % of one core each
    throttled_pct: list[float] = field(default_factory=list)  # % of the window's periods throttled, per worker
    wait_ms_per_s: list[float] = field(default_factory=list)  # run-queue wait per second of wall time
    calls_by_worker: list[int] = field(default_factory=list)
    parent_cpu: float = math.nan
    lag_p50: float = math.nan
    lag_p99: float = math.nan
    worker_lag_p99: list[float] = field(default_factory=list)
    utterances: int = 0
    finals: int = 0
    lost: int = 0
    errors: int = 0
    calls_ok: int = 0
    loadgen_cpu: float = math.nan
    emulator_cpu: float = math.nan
    rig_lag_p99: float = math.nan
    emu_lag_p99: float = math.nan
    others_cpu: float = math.nan
    invalid: list[str] = field(default_factory=list)

    @property
    def config(self) -> str:
        return f"{self.workers} engines" if self.split else f"{self.workers} worker{'s' if self.workers > 1 else ''}"

    @property
    def cpu_ok(self) -> bool:
        return bool(self.worker_cpu) and all(x <= cap.RULE_CPU / 100 * self.quota_pct for x in self.worker_cpu)

    @property
    def verdict(self) -> str:
        if self.invalid:
            return "INVALID"
        ok = (self.lag_p99 <= cap.RULE_LAG_MS and self.lost == 0 and self.errors == 0 and self.cpu_ok
              and self.calls_ok == self.calls)
        return "PASS" if ok else "FAIL"


def run_step(workers: int, n: int, round_: int, corpus: list[c.CorpusCall], work: Path, args: argparse.Namespace,
             groups: list[Cgroup] | None, rig_group: Cgroup | None, *, split: bool = False) -> Step:
    """One step. ``split``: not ``--workers 2`` but two separate single-process engines, each in its worker
    cgroup and driven by its own load generator with half the calls (the calls spread evenly by construction:
    what the workers carry with a perfect spread, the reference for ``--workers 2``'s hand-off)."""
    s = Step(workers, n, round_, 100 * args.quota if groups else math.nan, split=split)
    if groups is None:
        s.invalid.append("no CPU quota (cgroup set-up failed): the workers were unconfined")
    tag = f"w{workers}{'s' if split else ''}-{n}-r{round_}"
    n_engines = workers if split else 1
    per_engine = workers if not split else 1
    shares = [n // n_engines + (1 if i < n % n_engines else 0) for i in range(n_engines)]
    emu_port = c.free_port()
    ports = [(c.free_port(), c.free_port()) for _ in range(n_engines)]
    events = [work / f"events-{tag}-{i}.jsonl" for i in range(n_engines)]
    progs = [work / f"progress-{tag}-{i}.jsonl" for i in range(n_engines)]
    outs = [work / f"load-{tag}-{i}.json" for i in range(n_engines)]
    for stale in (*events, *progs, *outs):  # appended to by the engine and the load generator
        stale.unlink(missing_ok=True)
    emulator = c.start_emulator(emu_port, max_sessions=n + 50, log=work / f"emu-{tag}.log", cpu=None,
                                final_ms=cap.FINAL_MS, cheap=True)
    engines: list[subprocess.Popen[bytes]] = []
    gens: list[subprocess.Popen[bytes]] = []
    try:
        if rig_group:
            rig_group.add(emulator.pid)
        for i, (port, admin) in enumerate(ports):
            engines.append(c.start_engine(
                port, admin, emu_port, events=events[i], log=work / f"engine-{tag}-{i}.log", cpu=None,
                settings=[f"server.workers={per_engine}", f"rtzr.pool.max_sessions={(shares[i] + 20) * per_engine}",
                          "rtzr.pool.spare=10", f"server.admin_port={admin}"]))
        for (_, admin), engine in zip(ports, engines, strict=True):
            cap.wait_ready(admin, engine, timeout=90)
        pids = [p for e in engines for p in worker_pids(e, per_engine)]
        for i, pid in enumerate(pids):
            if groups:
                groups[i].add(pid)
            if not args.no_pin:
                subprocess.run(["taskset", "-a", "-p", "-c", str(i % (os.cpu_count() or 1)), str(pid)],
                               check=True, capture_output=True)
        time.sleep(1.0)
        for i, (port, _) in enumerate(ports):
            gens.append(c.spawn(c.realtime(
                [c.PY, str(c.ROOT / "bench" / "loadgen.py"), f"ws://127.0.0.1:{port}/twilio/media",
                 "--calls", str(shares[i]), "--stagger-ms", str(20 * n_engines), "--repeat", str(args.repeat),
                 "--progress", str(progs[i]), "--out", str(outs[i]), "--audio", *[str(k.wav) for k in corpus]]),
                cpu=None, log=work / f"load-{tag}-{i}.log"))

        def all_live() -> bool:
            return all("all_live" in cap.progress_events(p) for p in progs)

        deadline = time.monotonic() + 60
        while not all_live() and time.monotonic() < deadline and all(g.poll() is None for g in gens):
            time.sleep(0.1)
        if not all_live():
            s.invalid.append("calls never all live")
        time.sleep(args.settle_s)
        parents = [e.pid for e in engines] if per_engine > 1 else []
        rig = [g.pid for g in gens] + [emulator.pid]
        mine = pids + parents + rig

        def metrics() -> list[str]:
            return [cap.fetch(f"http://127.0.0.1:{admin}/metrics") for _, admin in ports]

        busy_a = cap.machine_busy_s()
        cpu_a = [c.CpuSample.take(p) for p in mine]
        wait_a = [run_delay_s(p) for p in pids]
        thr_a = [g.throttled() for g in groups[:workers]] if groups else []
        emu_a = c.emulator_stats(emu_port)
        text_a = metrics()
        t_a = time.time()
        time.sleep(args.window_s)
        t_b = time.time()
        text_b = metrics()
        emu_b = c.emulator_stats(emu_port)
        thr_b = [g.throttled() for g in groups[:workers]] if groups else []
        wait_b = [run_delay_s(p) for p in pids]
        cpu_b = [c.CpuSample.take(p) for p in mine]
        busy_b = cap.machine_busy_s()
        if any("first_done" in cap.progress_events(p) for p in progs):
            s.invalid.append("a call ended inside the window (raise --repeat)")
        wall = cpu_b[0].wall - cpu_a[0].wall
        pct = [b.percent_since(a) for a, b in zip(cpu_a, cpu_b, strict=True)]
        s.worker_cpu = pct[:workers]
        s.parent_cpu = sum(pct[workers : workers + len(parents)]) if parents else math.nan
        s.loadgen_cpu, s.emulator_cpu = sum(pct[-len(rig) : -1]), pct[-1]
        ours = sum(b.cpu_s - a.cpu_s for a, b in zip(cpu_a, cpu_b, strict=True))
        s.others_cpu = max(0.0, 100 * (busy_b - busy_a - ours) / wall)
        s.wait_ms_per_s = [1000 * (b - a) / wall for a, b in zip(wait_a, wait_b, strict=True)]
        periods = wall * 1e6 / args.period_us
        s.throttled_pct = [100 * (b[0] - a[0]) / periods for a, b in zip(thr_a, thr_b, strict=True)]
        windows = [cap.delta(cap.histogram_buckets(b, cap.LAG_METRIC), cap.histogram_buckets(a, cap.LAG_METRIC))
                   for a, b in zip(text_a, text_b, strict=True)]
        total: dict[float, float] = {}
        for w in windows:
            for bound, count in w.items():
                total[bound] = total.get(bound, 0.0) + count
        s.lag_p50, s.lag_p99 = cap.quantiles(total, (0.5, 0.99))
        if split and workers > 1:
            s.worker_lag_p99 = [cap.quantiles(w, (0.99,))[0] for w in windows]
            s.calls_by_worker = [int(c.metric(c.scrape_metrics(admin), "sori_calls_live")) for _, admin in ports]
        elif workers > 1:
            wa, wb = per_worker_p99(text_a[0]), per_worker_p99(text_b[0])
            s.worker_lag_p99 = [cap.quantiles(cap.delta(wb[w], wa.get(w, {})), (0.99,))[0] for w in sorted(wb)]
            live = c.scrape_metrics(ports[0][1])
            s.calls_by_worker = [int(c.metric(live, "sori_calls_live", worker=str(i))) for i in range(workers)]
        s.emu_lag_p99, _ = c.lag_window(emu_b, emu_a)
        for g in gens:
            g.wait(timeout=300)
        lags = []
        for o in outs:
            load = json.loads(o.read_text())
            s.calls_ok += int(load["ok"])
            lags.append(cap.window_lag(load, t_a, t_b)[0])
        s.rig_lag_p99 = max(lags)
        deadline = time.monotonic() + 15  # the last finals
        while time.monotonic() < deadline:
            if sum(e.get("type") == "call.ended" for ev in events for e in c.read_events(ev)) >= s.calls_ok:
                break
            time.sleep(0.5)
        if [p for e in engines for p in worker_pids(e, per_engine)] != pids:
            s.invalid.append("a worker restarted (its successor ran outside the cgroup)")
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        s.invalid.append(f"step failed: {type(exc).__name__}: {exc}")
    finally:
        for proc in (*gens, *engines, emulator):
            c.stop(proc, timeout=60)
    started, outcome, s.finals, s.errors = utterance_outcomes(events)
    s.utterances = len(started)
    s.lost = len(started - outcome)
    if s.rig_lag_p99 > args.rig_lag_ms:
        s.invalid.append(f"load generator lag p99 {s.rig_lag_p99:.1f} ms > {args.rig_lag_ms:g}")
    if s.emu_lag_p99 > args.emu_lag_ms:
        s.invalid.append(f"emulator loop lag p99 {cap.fmt_ms(s.emu_lag_p99)} ms > {args.emu_lag_ms:g}")
    if not s.lag_p99 <= cap.RULE_LAG_MS and s.cpu_ok:
        starved = [i for i, w in enumerate(s.wait_ms_per_s) if w > args.max_wait
                   and (not s.throttled_pct or s.throttled_pct[i] < 5)]
        if starved:
            s.invalid.append(f"worker(s) {starved} below 90 % of quota, not throttled, but waiting for a core "
                             f"({', '.join(f'{s.wait_ms_per_s[i]:.0f}' for i in starved)} ms/s): other processes")
    return s


def utterance_outcomes(events: list[Path]) -> tuple[set[tuple[int, str]], set[tuple[int, str]], int, int]:
    """(utterances started, utterances with an outcome (a final or an error), closing finals, errors) over the
    engines' event files; keyed by engine, since two engines number their calls' utterances alike."""
    started: set[tuple[int, str]] = set()
    outcome: set[tuple[int, str]] = set()
    finals = errors = 0
    for i, path in enumerate(events):
        for e in c.read_events(path):
            kind = e.get("type")
            if kind == "speech.started":
                started.add((i, e["utterance_id"]))
            elif kind == "error":
                errors += 1
                if e.get("utterance_id"):
                    outcome.add((i, e["utterance_id"]))
            elif kind == "transcript.final":
                outcome.add((i, e["utterance_id"]))
                finals += bool(e.get("latency"))
    return started, outcome, finals, errors


def fmt_list(xs: list[float], f: str = ".0f") -> str:
    return ", ".join(format(x, f) for x in xs) or "–"


def report(steps: list[Step]) -> str:
    lines = ["| round | configuration | calls | verdict | worker CPU (% of a core; quota) | throttled periods | run-queue wait ms/s "
             "| calls by worker | frame lag p50 / p99 ms (per worker p99) | closing finals / utterances, lost | errors "
             "| calls ok | rig: loadgen, emulator CPU | loadgen lag p99 | emulator lag p99 | parent CPU | others |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(
            f"| {s.round} | {s.config} | {s.calls} | **{s.verdict}** | {fmt_list(s.worker_cpu)} ({s.quota_pct:.0f}) "
            f"| {fmt_list(s.throttled_pct)} % | {fmt_list(s.wait_ms_per_s)} | {fmt_list([float(x) for x in s.calls_by_worker])} "
            f"| {cap.fmt_ms(s.lag_p50)} / {cap.fmt_ms(s.lag_p99)}"
            f"{' (' + ', '.join(cap.fmt_ms(x) for x in s.worker_lag_p99) + ')' if s.worker_lag_p99 else ''} "
            f"| {s.finals} / {s.utterances}, {s.lost} | {s.errors} | {s.calls_ok} / {s.calls} "
            f"| {s.loadgen_cpu:.0f} %, {s.emulator_cpu:.0f} % | {s.rig_lag_p99:.1f} ms | {cap.fmt_ms(s.emu_lag_p99)} ms "
            f"| {'–' if math.isnan(s.parent_cpu) else f'{s.parent_cpu:.1f} %'} | {s.others_cpu:.0f} % |")
    for s in steps:
        if s.invalid:
            lines.append(f"INVALID round {s.round}, {s.config}, {s.calls} calls: {'; '.join(s.invalid)}")
    configs = list(dict.fromkeys(s.config for s in steps))
    for r in sorted({s.round for s in steps}):
        caps: dict[str, int | None] = {}
        for cfg in configs:
            mine = sorted((s for s in steps if s.round == r and s.config == cfg), key=lambda s: s.calls)
            passed = [s.calls for s in mine if s.verdict == "PASS"]
            failed = [s.calls for s in mine if s.verdict == "FAIL"]
            invalid = [s.calls for s in mine if s.verdict == "INVALID"]
            caps[cfg] = capacity = max(passed) if passed else None
            caveat = ""
            if capacity is not None and any(f < capacity for f in failed):
                caveat = f" (but FAIL at {', '.join(str(f) for f in failed if f < capacity)})"
            lines.append(f"round {r}, {cfg}: capacity {capacity if capacity is not None else 'below the smallest step'}"
                         f"{caveat}; FAIL at {failed or '–'}; INVALID at {invalid or '–'}")
        one = caps.get("1 worker")
        for cfg, got in caps.items():
            if cfg != "1 worker" and one and got:
                lines.append(f"round {r}: ratio {cfg} / 1 worker = {got} / {one} = {got / one:.2f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps1", type=int, nargs="*", default=[15, 20, 25], help="calls for 1 worker")
    p.add_argument("--steps2", type=int, nargs="*", default=[30, 40, 50], help="calls for 2 workers")
    p.add_argument("--steps2s", type=int, nargs="*", default=[],
                   help="calls for 2 separate engines (half each, own load generator): the even-spread A/B")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quota", type=float, default=0.4, help="each worker's CPU quota, cores")
    p.add_argument("--period-us", type=int, default=10000)
    p.add_argument("--repeat", type=int, default=1, help="plays of the ~18 s corpus call per call")
    p.add_argument("--settle-s", type=float, default=2.0)
    p.add_argument("--window-s", type=float, default=12.0)
    p.add_argument("--rig-lag-ms", type=float, default=5.0)
    p.add_argument("--emu-lag-ms", type=float, default=10.0)
    p.add_argument("--max-wait", type=float, default=50.0,
                   help="run-queue wait (ms per s) above which a worker under its quota was held back by others")
    p.add_argument("--no-pin", action="store_true", help="leave the workers on every core (quota only)")
    p.add_argument("--work", default="")
    args = p.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sori-workers-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = c.load_corpus()
    created: list[Cgroup] = []
    groups: list[Cgroup] | None = None
    rig_group: Cgroup | None = None
    try:
        try:
            for i in range(2):
                created.append(Cgroup(f"sori-bench-w{i}", quota=args.quota, period_us=args.period_us))
            rig_group = Cgroup("sori-bench-rig", quota=None, period_us=100000)
            created.append(rig_group)
            groups = created[:2]
        except OSError as exc:
            print(f"cgroup set-up failed ({exc}): every step INVALID, workers unconfined", flush=True)
            rig_group = None
        steps: list[Step] = []
        for r in range(1, args.rounds + 1):
            plans = ((1, False, args.steps1), (2, False, args.steps2), (2, True, args.steps2s))
            for k in range(max(len(plan) for _, _, plan in plans) if any(plan for _, _, plan in plans) else 0):  # the configurations alternate step by step
                for w, split, plan in plans:
                    if k < len(plan):
                        steps.append(run_step(w, plan[k], r, corpus, work, args, groups, rig_group, split=split))
                        s = steps[-1]
                        print(f"  round {r}, {s.config}, {plan[k]} calls: {s.verdict}, CPU {fmt_list(s.worker_cpu)} "
                              f"of {s.quota_pct:.0f} %, throttled {fmt_list(s.throttled_pct)} %, lag p99 "
                              f"{cap.fmt_ms(s.lag_p99)} ms, lost {s.lost}, errors {s.errors}, rig lag {s.rig_lag_p99:.1f} "
                              f"ms, emulator lag {cap.fmt_ms(s.emu_lag_p99)} ms, others {s.others_cpu:.0f} %"
                              f"{' — ' + '; '.join(s.invalid) if s.invalid else ''}", flush=True)
    finally:
        for g in created:
            try:
                g.remove()
            except OSError as exc:
                print(f"WARNING: {exc}", flush=True)
    print(f"workers: each worker in a cgroup v1 CPU quota of {args.quota:g} core (period {args.period_us} us, shares "
          f"{SHARES}), {'unpinned' if args.no_pin else 'worker i pinned to core i'}; emulator --cheap in a high-shares group, load generator SCHED_FIFO; "
          f"{len(corpus)} corpus calls x {args.repeat} plays; window {args.window_s:g} s after all live + {args.settle_s:g} s; "
          f"{c.machine()}; logs in {work}")
    print(report(steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Latency of finals at N concurrent real-time calls, pooled vs the naive connect-per-utterance bridge.

Three processes per run: the RTZR emulator (``sori emulate-rtzr --handshake-ms 100 --final-ms 150``),
the engine (``sori serve``, events as JSON lines) and the load generator (bench/loadgen.py), the
engine pinned to core 0 and the other two to core 1 (``taskset``). Every call plays one labelled
corpus call once, then 1 s of silence. For each final that closes an utterance:

- engine-added = total_ms − endpoint_ms − the emulator's final delay (what sori adds on top of the
  hangover and of RTZR's own work: lease, sends, scheduling);
- end of speech → event = event ``ts`` − (call's audio origin + the label's end of the utterance),
  for the last final of each labelled utterance (includes the hangover, framing and RTZR).

The same calls run against ``rtzr.pool.mode=connect-per-utterance`` and the naive bridge in the same run.

At N concurrent calls (``--repeat`` ≥ 2), only the finals emitted inside the window in which every call is
live (from ``--settle-s`` after the load generator's ``all_live`` to its ``first_done``) are counted, so the
figures are "at N calls", not a ramp. Each run is checked like a capacity step: INVALID when the load
generator's sender lag p99 in the window is above 5 ms, the emulator's own loop lag p99 above 10 ms, core 1
(load generator + emulator) above 90 %, or other processes took more than 10 % of the engine's core; the
engine's own CPU is printed (above 90 % the engine, not the rig, is the limit: that is a measurement of a
saturated engine, and says so).

    .venv/bin/python bench/latency.py --n 1 300 --repeat 2 --cheap     # the issue 13 table
    .venv/bin/python bench/latency.py [--n 1 50 200]                   # one play per call, every final
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import capacity as cap

FINAL_MS = 150
HANDSHAKE_MS = 100
TRAILING_FRAMES = 50  # the load generator's 1 s of trailing silence
GOAL_P99_MS = 20.0  # issue 13: engine-added p99 at 300 calls
MODES = ("pooled", "connect-per-utterance", "naive")
# What each mode sets: sori's pool; a socket per utterance (the handshake cost only); and the naive bridge of
# the architecture page: a socket per utterance AND a 500 ms silence wait before asking for the result.
MODE_SETTINGS = {
    "pooled": ["rtzr.pool.mode=pooled"],
    "connect-per-utterance": ["rtzr.pool.mode=connect-per-utterance"],
    "naive": ["rtzr.pool.mode=connect-per-utterance", "endpointing.end_ms=500"],
}


@dataclass
class RunResult:
    mode: str
    n: int
    engine_added: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    eos_to_event: list[float] = field(default_factory=list)
    lease: list[float] = field(default_factory=list)
    first_lease: list[float] = field(default_factory=list)
    pool_hits: int = 0
    finals: int = 0
    utterances: int = 0
    errors: int = 0
    calls_ok: int = 0
    calls_ended: int = 0
    cpu_pct: float = 0.0
    rss_mib: float = 0.0
    sender_lag_p99: float = 0.0
    emulator_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    notes: list[str] = field(default_factory=list)
    window: tuple[float, float] | None = None  # wall-clock [from, to) of the all-live window, if one was used
    rig_lag_p99: float = math.nan  # load generator sender lag in the window
    emu_lag_p99: float = math.nan  # the emulator's own loop lag in the window (bucket bound)
    others_core0: float = math.nan  # other processes on the engine's core in the window, % of one core
    window_engine_cpu: float = math.nan
    window_core1_cpu: float = math.nan
    invalid: list[str] = field(default_factory=list)
    repeat: int = 1
    # from the engine's /metrics at the end of the run
    leases_hit: float = 0.0
    leases_miss: float = 0.0
    leases_timeout: float = 0.0
    recycles: dict[str, float] = field(default_factory=dict)
    foreign_results: float = 0.0
    orphan_results: float = 0.0  # late answers after a lease that ended with audio pending (engine/rtzr/stream.py)

    @property
    def hit_rate(self) -> float:
        """Pool hits / leases granted (rtzr_pool_leases_total), NaN when no lease was counted."""
        granted = self.leases_hit + self.leases_miss
        return self.leases_hit / granted if granted else float("nan")

    @property
    def final_hit_rate(self) -> float:
        """Closing finals whose lease was a pool hit (``pool_hit`` of transcript.final)."""
        return self.pool_hits / len(self.total) if self.total else float("nan")


def pool_settings(n: int) -> tuple[int, int]:
    """(max_sessions, spare): an organisation whose concurrency limit covers every call (Enterprise-sized)."""
    return max(5, n), max(2, n // 4)


def run_once(mode: str, n: int, corpus: list[c.CorpusCall], work: Path, *, stagger_ms: float,
             pin: bool = True, repeat: int = 1, cheap: bool = False, settle_s: float = 3.0,
             settings: tuple[str, ...] = ()) -> RunResult:
    result = RunResult(mode, n, repeat=repeat)
    max_sessions, spare = pool_settings(n)
    emu_port, port, admin = c.free_port(), c.free_port(), c.free_port()
    tag = f"{mode}-{n}"
    events_path = work / f"events-{tag}.jsonl"
    progress = work / f"progress-{tag}.jsonl"
    emulator = c.start_emulator(emu_port, max_sessions=max_sessions + 10, log=work / f"emu-{tag}.log", cpu=1 if pin else None,
                                handshake_ms=HANDSHAKE_MS, final_ms=FINAL_MS, cheap=cheap)
    engine = None
    load: dict[str, Any] = {}
    try:
        engine = c.start_engine(port, admin, emu_port, events=events_path, log=work / f"engine-{tag}.log",
                                cpu=0 if pin else None,
                                settings=[*MODE_SETTINGS[mode], f"rtzr.pool.max_sessions={max_sessions}",
                                          f"rtzr.pool.spare={spare}", *settings])
        time.sleep(1.0 + spare * 0.01)  # let the pool pre-warm its spare sockets
        before = c.CpuSample.take(engine.pid)
        emu_before = c.CpuSample.take(emulator.pid)
        out = work / f"load-{tag}.json"
        cmd = [c.PY, str(c.ROOT / "bench" / "loadgen.py"), f"ws://127.0.0.1:{port}/twilio/media",
               "--calls", str(n), "--stagger-ms", f"{stagger_ms:.3f}", "--repeat", str(repeat), "--out", str(out),
               "--progress", str(progress), "--audio", *[str(k.wav) for k in corpus]]
        gen = c.spawn(c.realtime(cmd) if pin else cmd, cpu=1 if pin else None, log=work / f"load-{tag}.log")
        gen_before = c.CpuSample.take(gen.pid)
        gen_last = gen_before
        peak_rss = 0
        sampled = False
        while gen.poll() is None:
            peak_rss = max(peak_rss, c.proc_rss(engine.pid))
            try:
                gen_last = c.CpuSample.take(gen.pid)
            except (OSError, IndexError):
                break
            if repeat >= 2 and not sampled and _progress(progress, "all_live"):
                sampled = True
                time.sleep(settle_s)
                window_checks(result, engine.pid, gen.pid, emulator.pid, emu_port, progress)
            time.sleep(0.5)
        gen.wait()
        after = c.CpuSample.take(engine.pid)
        result.cpu_pct = after.percent_since(before)
        result.emulator_cpu_pct = c.CpuSample.take(emulator.pid).percent_since(emu_before)
        result.loadgen_cpu_pct = gen_last.percent_since(gen_before)
        result.rss_mib = peak_rss / 2**20
        load = json.loads(out.read_text())
        result.calls_ok = int(load["ok"])
        result.sender_lag_p99 = float(load["sender_lag_ms_p99"])
        if result.window is not None:
            result.rig_lag_p99 = cap.window_lag(load, *result.window)[0]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sum(e.get("type") == "call.ended" for e in c.read_events(events_path)) >= n:
                break
            time.sleep(0.3)
        scrape_pool(result, c.scrape_metrics(admin))
    finally:
        if engine is not None:
            c.stop(engine)
        c.stop(emulator)
    if repeat >= 2 and result.window is None:
        result.invalid.append("no all-live window (calls never all live)")
    if not result.rig_lag_p99 <= 5.0 and result.window is not None:
        result.invalid.append(f"load generator lag p99 {result.rig_lag_p99:.1f} ms")
    if result.emu_lag_p99 > 10.0:
        result.invalid.append(f"emulator loop lag p99 {result.emu_lag_p99:g} ms")
    if pin and result.window_core1_cpu > 90.0:
        result.invalid.append(f"core 1 (load generator + emulator) at {result.window_core1_cpu:.0f} %")
    if pin and result.others_core0 > 10.0:
        result.invalid.append(f"other processes took {result.others_core0:.0f} % of the engine's core")
    analyse(result, c.read_events(events_path), load, corpus)
    return result


def _progress(path: Path, event: str) -> bool:
    return path.exists() and f'"{event}"' in path.read_text()


def window_checks(result: RunResult, engine: int, gen: int, emulator: int, emu_port: int, progress: Path) -> None:
    """Open the all-live window now; sample CPU and the emulator's lag until the first call ends (or 30 s)."""
    t_from = time.time()
    pids = (engine, gen, emulator)
    cpu_a = [c.CpuSample.take(p) for p in pids]
    core0_a = cap.machine_busy_s(0)
    emu_a = c.emulator_stats(emu_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _progress(progress, "first_done"):
        time.sleep(0.2)
    cpu_b = [c.CpuSample.take(p) for p in pids]
    core0_b = cap.machine_busy_s(0)
    emu_b = c.emulator_stats(emu_port)
    result.window = (t_from, time.time())
    wall = cpu_b[0].wall - cpu_a[0].wall
    result.window_engine_cpu = cpu_b[0].percent_since(cpu_a[0])
    result.window_core1_cpu = cpu_b[1].percent_since(cpu_a[1]) + cpu_b[2].percent_since(cpu_a[2])
    result.others_core0 = max(0.0, 100 * (core0_b - core0_a - (cpu_b[0].cpu_s - cpu_a[0].cpu_s)) / wall)
    result.emu_lag_p99, _ = c.lag_window(emu_b, emu_a)


def scrape_pool(result: RunResult, sample: dict[str, float]) -> None:
    result.leases_hit = c.metric(sample, "sori_rtzr_pool_leases_total", result="hit")
    result.leases_miss = c.metric(sample, "sori_rtzr_pool_leases_total", result="miss")
    result.leases_timeout = c.metric(sample, "sori_rtzr_pool_leases_total", result="timeout")
    result.foreign_results = c.metric(sample, "sori_rtzr_foreign_results_total")
    result.orphan_results = c.metric(sample, "sori_rtzr_orphan_results_total")
    for key, value in sample.items():
        if key.startswith("sori_rtzr_pool_recycles_total{") and value:
            result.recycles[key.split('reason="', 1)[1].split('"', 1)[0]] = value


def analyse(result: RunResult, events: list[dict[str, Any]], load: dict[str, Any], corpus: list[c.CorpusCall]) -> None:
    labels = {str(k.wav): k.utterances for k in corpus}
    calls = {call["call_sid"]: call for call in load["calls"]}
    finals_by_call: dict[str, list[dict[str, Any]]] = {}
    first_seen: set[str] = set()
    if result.window is not None:  # only what happened while every call was live
        lo, hi = result.window
        events = [e for e in events if lo <= float(e.get("ts", 0.0)) < hi]
    for e in events:
        kind = e.get("type")
        if kind == "speech.started":
            result.utterances += 1
        elif kind == "error":
            result.errors += 1
        elif kind == "call.ended":
            result.calls_ended += 1
        elif kind == "transcript.final":
            result.finals += 1
            finals_by_call.setdefault(e["call_sid"], []).append(e)
            lat = e.get("latency")
            if lat is None:
                continue
            result.total.append(lat["total_ms"])
            result.engine_added.append(lat["total_ms"] - lat["endpoint_ms"] - FINAL_MS)
            result.lease.append(lat["lease_ms"])
            result.pool_hits += bool(e.get("pool_hit"))
            if e["call_sid"] not in first_seen:
                first_seen.add(e["call_sid"])
                result.first_lease.append(lat["lease_ms"])
    for sid, finals in finals_by_call.items():
        call = calls.get(sid)
        if call is None:
            continue
        t0 = call["t0_wall"]
        closing = [f for f in finals if f.get("latency") is not None]
        plays = max(1, result.repeat)
        play_ms = (int(call["frames_sent"]) - TRAILING_FRAMES) * 20 / plays
        ends = [end + play * play_ms for _start, end in labels.get(call["audio"], []) for play in range(plays)]
        for end in ends:
            # the first final whose audio reaches the utterance's true end carries its last words
            covering = [f for f in closing if f["start_ms"] <= end <= f["end_ms"] + 50]
            if covering:
                first = min(covering, key=lambda f: f["ts"])
                result.eos_to_event.append((first["ts"] - (t0 + end / 1000)) * 1000)


def fmt3(values: list[float]) -> str:
    p50, p95, p99 = c.pcts(values)
    return f"{p50:6.0f} {p95:6.0f} {p99:6.0f}"


def ratio(num: list[float], den: list[float], q: float) -> str:
    """naive ÷ sori at percentile q; "–" where sori's figure rounds to 0 ms (a pooled lease waits for nothing,
    and dividing by it printed ratios like 102600000000×)."""
    if not num or not den:
        return "    –"
    bottom = c.percentile(den, q)
    if bottom < 0.5:
        return "    –"
    return f"{c.percentile(num, q) / bottom:5.1f}×"


def report(results: dict[tuple[str, int], RunResult], ns: list[int]) -> str:
    lines = ["metric (ms, p50 p95 p99)     N   pooled (sori)          connect-per-utterance  naive (+500 ms wait)"
             "   ratio p50 / p99 (naive÷sori)"]
    for n in ns:
        a, b, z = (results[(mode, n)] for mode in MODES)
        for name, attr in (("engine-added", "engine_added"), ("total (last speech→final)", "total"),
                           ("end of speech → event", "eos_to_event"), ("lease wait", "lease")):
            va, vb, vz = getattr(a, attr), getattr(b, attr), getattr(z, attr)
            lines.append(f"{name:<28} {n:>3}  {fmt3(va)}   {fmt3(vb)}   {fmt3(vz)}   "
                         f"{ratio(vz, va, 50)} / {ratio(vz, va, 99)}")
        for r in (a, b, z):
            lines.append(f"    {r.mode:<22} N={n}: calls ok {r.calls_ok}/{n}, ended {r.calls_ended}, utterances "
                         f"{r.utterances}, finals {r.finals} ({len(r.total)} closing), errors {r.errors}, pool hits "
                         f"{r.pool_hits}, first-utterance lease p50 {c.percentile(r.first_lease, 50):.0f} ms, engine "
                         f"CPU {r.cpu_pct:.0f}% of a core (emulator {r.emulator_cpu_pct:.0f}%, load generator "
                         f"{r.loadgen_cpu_pct:.0f}%), peak RSS {r.rss_mib:.0f} MiB, sender lag p99 "
                         f"{r.sender_lag_p99:.1f} ms")
            recycles = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.recycles.items())) or "none"
            lines.append(f"        pool hit rate {100 * r.hit_rate:.0f}% of leases (hit {r.leases_hit:.0f} / miss "
                         f"{r.leases_miss:.0f} / timeout {r.leases_timeout:.0f}), {100 * r.final_hit_rate:.0f}% of "
                         f"closing finals; sockets closed by reason: {recycles}; foreign results "
                         f"{r.foreign_results:.0f}, orphan results {r.orphan_results:.0f}")
        for base in (b, z):
            gain = c.percentile(base.total, 50) - c.percentile(a.total, 50)
            gain_eos = c.percentile(base.eos_to_event, 50) - c.percentile(a.eos_to_event, 50)
            lines.append(f"    gain vs {base.mode} at N={n}: total {gain:.0f} ms, true end of speech → event "
                         f"{gain_eos:.0f} ms at p50 (target ≥ 100 ms)")
    return "\n".join(lines)


def table(results: dict[tuple[str, int], RunResult], ns: list[int]) -> str:
    """The issue 13 table: engine-added latency (total − endpoint hangover − STT server time) per mode and N."""
    lines = ["| N | mode | verdict | engine-added p50 / p99 ms | total p50 / p99 ms | closing finals | errors "
             "| engine CPU (window) | core 1 | loadgen lag p99 | emulator lag p99 | other on core 0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in ns:
        for mode in MODES:
            r = results[(mode, n)]
            ea, tot = r.engine_added, r.total
            lines.append(
                f"| {n} | {mode} | {'INVALID' if r.invalid else 'valid'} | {c.percentile(ea, 50):.0f} / "
                f"{c.percentile(ea, 99):.0f} | {c.percentile(tot, 50):.0f} / {c.percentile(tot, 99):.0f} | {len(tot)} "
                f"| {r.errors} | {r.window_engine_cpu:.0f} % | {r.window_core1_cpu:.0f} % | {r.rig_lag_p99:.1f} ms "
                f"| {r.emu_lag_p99:g} ms | {r.others_core0:.0f} % |")
    for n in ns:
        for mode in MODES:
            r = results[(mode, n)]
            if r.invalid:
                lines.append(f"INVALID N={n} {mode}: {'; '.join(r.invalid)}")
            if r.window_engine_cpu > 90:
                lines.append(f"N={n} {mode}: the engine was saturated ({r.window_engine_cpu:.0f} % of its core): "
                             "these are a saturated engine's latencies")
        pooled = results[("pooled", n)]
        p99 = c.percentile(pooled.engine_added, 99)
        lines.append(f"goal at N={n}: engine-added p99 {p99:.0f} ms (goal ≤ {GOAL_P99_MS:g} ms at 300 calls): "
                     f"{'met' if p99 <= GOAL_P99_MS else 'missed'}{' (INVALID run)' if pooled.invalid else ''}")
    return "\n".join(lines)


def run(ns: list[int], *, corpus_limit: int | None, stagger_ms: float, work: Path | None = None,
        pin: bool = True, repeat: int = 1, cheap: bool = False, ramp_s: float | None = None,
        settle_s: float = 3.0, settings: tuple[str, ...] = ()) -> str:
    # Babble calls last: their long first utterance (RTZR cuts it at 30 s) says nothing about latency, and at
    # N = 1 call 0 is the only call.
    corpus = sorted(c.load_corpus(corpus_limit), key=lambda k: k.name.startswith("babble"))
    work = work or Path(tempfile.mkdtemp(prefix="sori-latency-"))
    results: dict[tuple[str, int], RunResult] = {}
    for n in ns:
        stagger = stagger_ms if ramp_s is None else min(stagger_ms, ramp_s * 1000 / n)
        for mode in MODES:
            results[(mode, n)] = run_once(mode, n, corpus, work, stagger_ms=stagger, pin=pin, repeat=repeat,
                                          cheap=cheap, settle_s=settle_s, settings=settings)
            r = results[(mode, n)]
            print(f"  done: {mode} N={n}: engine-added p50/p99 {c.percentile(r.engine_added, 50):.0f} / "
                  f"{c.percentile(r.engine_added, 99):.0f} ms, {'INVALID: ' + '; '.join(r.invalid) if r.invalid else 'valid'}",
                  flush=True)
    head = (f"latency: {len(corpus)} corpus calls ({', '.join(k.name for k in corpus[:4])}"
            f"{'…' if len(corpus) > 4 else ''}) × {repeat} plays, emulator {'--cheap ' if cheap else ''}handshake "
            f"{HANDSHAKE_MS} ms / final {FINAL_MS} ms; pool max_sessions = max(5, N), spare = max(2, N/4); "
            f"{'pinned (engine core 0; emulator + SCHED_FIFO load generator core 1)' if pin else 'unpinned'}; "
            f"settings {list(settings) or 'default'}; {c.machine()}; logs in {work}")
    return head + "\n" + report(results, ns) + "\n\n" + table(results, ns)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1, 50, 200])
    p.add_argument("--corpus-limit", type=int, default=None, help="use only the first K corpus calls")
    p.add_argument("--stagger-ms", type=float, default=20.0, help="delay between call starts (at most)")
    p.add_argument("--ramp-s", type=float, default=None, help="start every call within this long (caps the stagger)")
    p.add_argument("--repeat", type=int, default=1,
                   help="plays per call; ≥ 2 measures only inside the window in which every call is live")
    p.add_argument("--settle-s", type=float, default=3.0, help="after every call is live, before the window")
    p.add_argument("--cheap", action="store_true", help="emulator --cheap (no recognition: for many calls)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-pin", action="store_true",
                   help="do not taskset (engine core 0, emulator + load core 1): on a shared machine a pinned "
                        "engine cannot escape other processes on its core")
    args = p.parse_args()
    print(run(args.n, corpus_limit=args.corpus_limit, stagger_ms=args.stagger_ms, pin=not args.no_pin,
              repeat=args.repeat, cheap=args.cheap, ramp_s=args.ramp_s, settle_s=args.settle_s,
              settings=tuple(args.settings)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

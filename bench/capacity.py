"""Capacity: concurrent real-time calls one engine process carries, by the rule, with a rig that is checked too.

Per step a fresh engine (``sori serve``, pinned to core 0) and a fresh load rig on core 1: the RTZR emulator
(``--cheap`` by default: EPD/Finalize/EOS and timestamps without recognition; handshake 100 ms, final 150 ms)
and the load generator, in one process by default (``--rig one-process``: bench/rig.py, one Trio run, the
emulator's input read after each tick's writes) or in two (``--rig two-process``: ``sori emulate-rtzr`` +
bench/loadgen.py; ``--rig one-process two-process`` runs each step with both, an A/B; bench/rig_procs.py
starts either). Every call plays a corpus call ``--repeat`` times. Once every
call is streaming (the load generator's ``all_live``) and ``--settle-s`` later, a ``--window-s`` window is
measured in which every call is live: engine CPU (% of one core, /proc), the engine's frame-lag histogram
(``sori_twilio_frame_lag_ms``, window delta), the rig's CPU (load generator, emulator; one process: its ticker's
thread CPU vs the rest) and the load generator's sender lag. Over the whole step: peak RSS (and per call above the ready, idle engine), finals vs utterances,
errors. RSS per call is printed both ways, labelled (bench/rss_trace.py): peak-based (the highest reading over the
whole step, ramp and the calls' last minute included: the historical figure) and steady (the window's mean and max),
with where the peak fell and the RTZR sockets open; ``--rss-trace`` keeps every reading.

Verdict by the rule: PASS when frame lag p99 ≤ 20 ms over the window, no final lost, no error, every call
connected, engine ≤ 90 % of one core. INVALID (the rig or the machine, not the engine, was measured) when
the load generator's per-frame send lag p99 in the window (each frame's send time minus its due time, the origin
being its call's least-delayed frame, as the engine's frame lag) is above ``--send-lag-ms`` (an older tree's load
generator without it: its tick lag p99 above ``--rig-lag-ms``), core 1 (load generator +
emulator) was above 90 %, the emulator's own event-loop lag p99 (its ``--lag-probe-ms`` histogram, window
delta) or, one-process rig, the p99 of how long its reads kept spilling over into later ticks was above
``--emu-lag-ms``, other processes took more than ``--max-others`` % of the engine's core, or
the window did not fit inside the calls. The load generator runs SCHED_FIFO (``chrt -f 1``) unless ``--no-rt``;
in the one-process rig that is the whole rig, emulator included.

    .venv/bin/python bench/capacity.py --steps 100 200 300 --gc throughput default [--repeat 3]
    .venv/bin/python bench/capacity.py --rig-only 300 600 [--rig one-process two-process] [--ab-emulator DIR]

``--rig-only``: the load generator and the emulator on core 1 drive N calls through bench/standin.py on core 0
(a trivial engine stand-in that forwards every call's audio to its own emulator session in 100 ms messages).
``--ab-emulator DIR`` adds a run of that checkout's emulator (two-process rig).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
from loadgen import frame_lag
from rig_procs import KINDS, Rig, RigOptions, deferred_pct, spill_ms
from rss_trace import RssTrace

FINAL_MS = 150
LAG_METRIC = "sori_twilio_frame_lag_ms_bucket"
PASSES_METRIC = "sori_twilio_ingest_passes_total"
READS_METRIC = "sori_twilio_ingest_reads_total"
# Why frames are late (engine/twilio/reactor.py): pass durations, gaps between passes, GC pauses; and how
# often a call's socket held two chunks in one pass (engine/call.py: joined in the batch, or decided alone).
PASS_METRIC = "sori_twilio_ingest_pass_ms_bucket"
GAP_METRIC = "sori_twilio_ingest_gap_ms_bucket"
GC_METRIC = "sori_gc_pause_ms_bucket"
# Where frames later than 15 ms waited (engine/twilio/late.py), and, with server.task_steps_slow_ms > 0, the Trio
# task steps by task name (engine/task_steps.py): what ran between passes.
LATE_METRIC = "sori_twilio_late_frame_part_ms"
LATE_MS = 15.0
LATE_PARTS = ("missed", "prev_pass", "between", "interval", "pass")
TASK_SECONDS_METRIC = "sori_task_step_seconds_total"
TASK_SLOW_METRIC = "sori_task_slow_step_ms"
JOINED_METRIC = "sori_call_chunks_joined_total"
ALONE_METRIC = "sori_call_chunks_alone_total"
ORIGIN_SKIPPED_METRIC = "sori_twilio_frame_origin_skipped_total"  # r8: frames not taken as their stream's origin
POOL_OPEN_METRIC = "sori_rtzr_pool_open"  # a gauge: RTZR sockets open (idle + leased + opening)
RULE_LAG_MS = 20.0
RULE_CPU = 90.0


class StepFailed(Exception):
    """The step could not be measured (a process ended early)."""


@dataclass
class Step:
    calls: int
    gc: str
    rig: str = "one-process"
    engine_cpu: float = math.nan
    rss_idle_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_per_call_kib: float = 0.0  # (peak over the whole step − idle) / calls: the historical figure
    rss: dict[str, Any] = field(default_factory=dict)  # bench/rss_trace.py's summary: peak vs window, by phase
    pool_open: tuple[float, float] = (math.nan, math.nan)  # RTZR sockets open at the window's start / end
    lag_p50: float = math.nan
    lag_p99: float = math.nan
    lag_p999: float = math.nan
    lag_le20_pct: float = math.nan
    frames: int = 0
    window_s: float = 0.0
    utterances: int = 0
    finals: int = 0
    lost: int = 0  # utterances with no outcome at all (no final, no error)
    incomplete: int = 0  # utterances with finals but not the closing one (its Finalize went unanswered)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    calls_ok: int = 0
    loadgen_cpu: float = math.nan
    emulator_cpu: float = math.nan
    rig_lag_p99: float = math.nan
    rig_lag_max: float = math.nan
    send_lag_p99: float = math.nan  # the load generator's per-frame send lag (loadgen.frame_lag), ms
    send_lag_max: float = math.nan
    emu_lag_p99: float = math.nan  # the emulator's own event-loop lag in the window (bucket bound, ms)
    emu_lag_max: float = math.nan
    deferred_pct: float = math.nan  # one-process rig: % of the window's ticks whose emulator reads spilled over
    spill_ms: tuple[float, float] = (math.nan, math.nan)  # p99 / max of how long reads had been spilling (ms)
    stalls: int = 0
    reads_per_pass: float = math.nan  # the engine's ingest reactor: Twilio socket reads per pass in the window
    pass_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # pass duration p50 / p99 / max (bucket bounds)
    gap_ms: tuple[float, float] = (math.nan, math.nan)  # a pass's end to the next start: p99 / max
    passes_over_10ms: int = 0  # passes longer than 10 ms in the window
    gc_pauses: tuple[int, int, int] = (0, 0, 0)  # collections per generation in the window
    gc_max_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # longest per generation (bucket bound)
    doubled_pct: float = math.nan  # chunks that came second in their call's pass, % of frames (joined + alone)
    origin_skipped: int = 0  # whole step: frames not first in their read that would have moved the origin earlier
    joined_pct: float = math.nan  # of which joined the batch
    late_frames: int = 0  # frames later than 15 ms (the lag histogram)
    late_batches: int = 0  # passes (or batches) whose latest frame was later than 15 ms: split (engine/twilio/late.py)
    late_parts: dict[str, tuple[float, float]] = field(default_factory=dict)  # part -> (ms summed, p99 bucket bound)
    tasks: list[tuple[str, float, int, float]] = field(default_factory=list)  # (task, % of a core, slow steps, longest)
    others_cpu: float = math.nan  # every other process on the machine during the window, % of one core
    others_core0: float = math.nan  # of which on the engine's core (pinned runs), softirq apart
    core0_softirq: float = math.nan  # of the engine's core, % in softirq: the engine's own loopback sends
    calib_ms: tuple[float, float] = (math.nan, math.nan)  # core 0's time for a fixed job, before / after the step
    invalid: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.lag_p99 <= RULE_LAG_MS and self.lost == 0 and self.errors == 0 and self.engine_cpu <= RULE_CPU
                and self.calls_ok == self.calls)

    @property
    def verdict(self) -> str:
        if self.invalid:
            return "INVALID"
        return "PASS" if self.passed else "FAIL"


# ---------------------------------------------------------------------------------------------
# histogram deltas


def histogram_buckets(metrics_text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a Prometheus histogram, summed over label sets."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def quantiles(buckets: dict[float, float], qs: tuple[float, ...]) -> list[float]:
    """Upper bucket bound holding each quantile (cumulative buckets)."""
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


def counter_value(metrics_text: str, name: str) -> float:
    """An unlabelled counter's value in a /metrics text (0 when absent: an engine without it)."""
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def histogram_quantiles(metrics_text: str, name: str, qs: tuple[float, ...]) -> list[float]:
    """Upper bucket bounds holding each quantile of a Prometheus histogram (since the process started)."""
    return quantiles(histogram_buckets(metrics_text, name), qs)


def labelled_buckets(metrics_text: str, name: str, label: str) -> dict[float, float]:
    """Cumulative bucket counts of the histogram's children whose labels contain ``label`` (e.g. generation="2")."""
    return histogram_buckets("\n".join(x for x in metrics_text.splitlines() if label in x), name)


def labelled_values(metrics_text: str, name: str, label: str) -> dict[str, float]:
    """``{label value: value}`` of the lines ``name{label="value",...} v`` (counters, or a histogram's _sum/_count)."""
    out: dict[str, float] = {}
    key = f'{label}="'
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and key in line:
            out[line.split(key, 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def late_split(text_a: str, text_b: str) -> tuple[int, dict[str, tuple[float, float]]]:
    """Passes (or batches) whose latest frame was later than 15 ms in the window, and per part of that frame's lag
    (engine/twilio/late.py) its ms summed and its p99 (bucket bound)."""
    sums = [labelled_values(t, LATE_METRIC + "_sum", "part") for t in (text_a, text_b)]
    parts: dict[str, tuple[float, float]] = {}
    count = 0
    for part in LATE_PARTS:
        label = f'part="{part}"'
        window = delta(labelled_buckets(text_b, LATE_METRIC + "_bucket", label),
                       labelled_buckets(text_a, LATE_METRIC + "_bucket", label))
        count = int(window.get(math.inf, 0))
        p99 = quantiles(window, (0.99,))[0] if count else math.nan
        parts[part] = (sums[1].get(part, 0.0) - sums[0].get(part, 0.0), p99)
    return count, parts


def task_split(text_a: str, text_b: str, window_s: float, top: int = 6) -> list[tuple[str, float, int, float]]:
    """The tasks that took most of the window (engine/task_steps.py): (task, % of a core, slow steps, longest)."""
    a, b = (labelled_values(t, TASK_SECONDS_METRIC, "task") for t in (text_a, text_b))
    slow_a, slow_b = (labelled_values(t, TASK_SLOW_METRIC + "_count", "task") for t in (text_a, text_b))
    rows = []
    for task, seconds in b.items():
        longest = highest(delta(labelled_buckets(text_b, TASK_SLOW_METRIC + "_bucket", f'task="{task}"'),
                                labelled_buckets(text_a, TASK_SLOW_METRIC + "_bucket", f'task="{task}"')))
        rows.append((task, 100 * (seconds - a.get(task, 0.0)) / window_s,
                     int(slow_b.get(task, 0) - slow_a.get(task, 0)), longest))
    return sorted(rows, key=lambda r: -r[1])[:top]


def highest(buckets: dict[float, float]) -> float:
    """Upper bound of the highest non-empty bucket (a coarse max), NaN when empty."""
    ordered = sorted(buckets.items())
    for (bound, cumulative), (_, below) in zip(reversed(ordered), [*reversed(ordered[:-1]), (0.0, 0.0)], strict=True):
        if cumulative > below:
            return bound
    return math.nan


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {b: v - before.get(b, 0.0) for b, v in after.items()}


def calibrate(pin: bool) -> float:
    """CPU ms core 0 takes for a fixed pure-Python job (this shared VM's speed drifts by up to 1.5×)."""
    job = "import time\nt = time.process_time()\ns = 0\nfor i in range(1_000_000): s += i * i % 7\n" \
          "print(1000 * (time.process_time() - t))"
    cmd = c.pinned([c.PY, "-c", job], 0 if pin else None)
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def machine_busy_s(cpu: int | None = None) -> float:
    """CPU seconds all cores (or core ``cpu``) spent on anything but idle and iowait since boot (/proc/stat)."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    line = next(x for x in Path("/proc/stat").read_text().splitlines() if x.split()[0] == name)
    fields = [int(x) for x in line.split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / c.CLK_TCK


def core_others_pct(busy_s: float, ours_s: float, softirq_s: float, wall_s: float) -> float:
    """% of a core that processes other than ours took: busy − our processes' CPU − softirq.

    Softirq is not charged to any process (IRQ time accounting), and on the rig's core it is the rig's own: a
    loopback TCP send runs the receiving side's protocol work in the sender's context, so every frame the load
    generator and every result the emulator sends is softirq on core 1. Counting it as "other processes" (as
    round 7 did) read 11–33 % on a quiet core and made every rig run INVALID; it belongs to the rig's load
    (:attr:`RigRun.core1_total`)."""
    return max(0.0, 100 * (busy_s - ours_s - softirq_s) / wall_s)


def cpu_fields(cpu: int) -> list[int]:
    """Core ``cpu``'s /proc/stat ticks: user nice system idle iowait irq softirq steal ..."""
    line = next(x for x in Path("/proc/stat").read_text().splitlines() if x.split()[0] == f"cpu{cpu}")
    return [int(x) for x in line.split()[1:]]


def fetch(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()


def wait_ready(admin: int, proc: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("engine exited before ready")
        try:
            fetch(f"http://127.0.0.1:{admin}/readyz")
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError("engine not ready")


def progress_events(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["event"] for line in path.read_text().splitlines() if line.strip()}


def rig_lag_invalid(send_p99: float, tick_p99: float, args: argparse.Namespace) -> list[str]:
    """The rig's lag rule. The frame-lag rule reads each frame's handling minus its due time, the origin being the
    call's least-delayed frame; a frame the load generator sends late is late in that figure by its send lag. So
    the rig is judged on the same quantity: its per-frame send lag p99 (``loadgen.frame_lag``) above
    ``--send-lag-ms`` (default 5 ms: one bucket of the engine's 5 ms frame-lag histogram, a quarter of the rule's
    20 ms) means the step's p99 may be the rig's, not the engine's. A load document without per-frame lags (an
    older tree) falls back to the tick lag p99 and ``--rig-lag-ms``."""
    if not math.isnan(send_p99):
        return [f"load generator per-frame send lag p99 {send_p99:g} ms > {args.send_lag_ms:g}"] \
            if send_p99 > args.send_lag_ms else []
    if not tick_p99 <= args.rig_lag_ms:
        return [f"load generator tick lag p99 {tick_p99:.1f} ms > {args.rig_lag_ms:g}"]
    return []


def window_lag(load: dict[str, Any], t_from: float, t_to: float) -> tuple[float, float]:
    """Load generator tick lag (ms) p99 and max over the ticks due in [t_from, t_to) (wall clock)."""
    start, step = float(load["tick_start_wall"]), float(load["tick_step_s"])
    lags: list[float] = load["tick_lag_ms"]
    lo = max(0, int((t_from - start) / step))
    hi = min(len(lags), int((t_to - start) / step))
    part = lags[lo:hi]
    return (c.percentile(part, 99), max(part)) if part else (math.nan, math.nan)


# ---------------------------------------------------------------------------------------------
# one step


def rig_cmd(cmd: list[str], args: argparse.Namespace, prio: int = 1) -> list[str]:
    return cmd if args.no_rt else c.realtime(cmd, prio)


def load_args(url: str, n: int, corpus: list[c.CorpusCall], progress: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """The load generator's options (bench/loadgen.py, or the one-process bench/rig.py)."""
    stagger = min(20.0, args.ramp_s * 1000 / n)
    return [url, "--calls", str(n), "--stagger-ms", f"{stagger:.3f}", "--repeat", str(args.repeat),
            "--progress", str(progress), "--out", str(out), "--audio", *[str(k.wav) for k in corpus]]


def run_step(n: int, gc: str, corpus: list[c.CorpusCall], work: Path, *, args: argparse.Namespace, kind: str) -> Step:
    step = Step(n, gc, kind)
    tag = f"{n}-{gc}-{kind}-{next(_rig_runs)}"
    pin = not args.no_pin
    before_ms = calibrate(pin)
    emu_port, port, admin = c.free_port(), c.free_port(), c.free_port()
    events = work / f"events-{tag}.jsonl"
    progress = work / f"progress-{tag}.jsonl"
    out = work / f"load-{tag}.json"
    # The load generator (one process: the whole rig) SCHED_FIFO 1 unless --no-rt; two processes: the emulator not.
    rig = Rig(kind, emu_port, n + 50, work, tag, RigOptions(
        pin=pin, rt=not args.no_rt, load_prio=1, emulator_rt=False, cheap=not args.full_emulator, final_ms=FINAL_MS,
        read_batch_ms=args.emu_read_batch_ms))
    engine = None
    try:
        rig.start_emulator(load_args(f"ws://127.0.0.1:{port}/twilio/media", n, corpus, progress, out, args))
        engine = c.start_engine(port, admin, emu_port, events=events, log=work / f"engine-{tag}.log",
                                cpu=0 if pin else None,
                                settings=[f"rtzr.pool.max_sessions={n + 20}", f"rtzr.pool.spare={args.spare}",
                                          f"server.admin_port={admin}", f"server.gc_policy={gc}", *args.settings])
        wait_ready(admin, engine)
        time.sleep(1.0)
        idle_rss = peak = c.proc_rss(engine.pid)
        trace = RssTrace(engine.pid, detail=args.rss_trace)
        trace.start(idle_rss, fetch(f"http://127.0.0.1:{admin}/metrics") if args.rss_trace else None)
        phase = "ramp"
        rig.start_load()

        def watch(until: float, event: str | None = None) -> bool:
            nonlocal peak
            while time.monotonic() < until and rig.load_running():
                peak = max(peak, trace.sample(phase, lambda: fetch(f"http://127.0.0.1:{admin}/metrics")))
                if event is not None and event in progress_events(progress):
                    return True
                time.sleep(0.2)
            return False

        if not watch(time.monotonic() + args.ramp_s + 60, "all_live"):
            step.invalid.append("calls never all live")
        phase = "settle"
        watch(time.monotonic() + args.settle_s)
        if not rig.load_running():
            raise StepFailed("the load generator ended before the window")
        t_a = time.time()
        busy_a, core0_a, irq0_a = machine_busy_s(), machine_busy_s(0), cpu_fields(0)[6]
        cpu_a = [c.CpuSample.take(pid) for pid in (engine.pid, *rig.pids())]
        text_a = fetch(f"http://127.0.0.1:{admin}/metrics")
        hist_a = histogram_buckets(text_a, LAG_METRIC)
        emu_a = c.emulator_stats(emu_port)
        phase = "window"
        watch(time.monotonic() + args.window_s)
        phase = "after"
        emu_b = c.emulator_stats(emu_port)
        if not rig.load_running():
            raise StepFailed("the load generator ended inside the window")
        cpu_b = [c.CpuSample.take(pid) for pid in (engine.pid, *rig.pids())]
        busy_b, core0_b, irq0_b = machine_busy_s(), machine_busy_s(0), cpu_fields(0)[6]
        text_b = fetch(f"http://127.0.0.1:{admin}/metrics")
        (work / f"metrics-{tag}-a.txt").write_text(text_a)  # the window's two /metrics texts, for a closer look
        (work / f"metrics-{tag}-b.txt").write_text(text_b)
        hist_b = histogram_buckets(text_b, LAG_METRIC)
        t_b = time.time()
        step.pool_open = (counter_value(text_a, POOL_OPEN_METRIC), counter_value(text_b, POOL_OPEN_METRIC))
        passes = counter_value(text_b, PASSES_METRIC) - counter_value(text_a, PASSES_METRIC)
        pass_w = delta(histogram_buckets(text_b, PASS_METRIC), histogram_buckets(text_a, PASS_METRIC))
        if pass_w.get(math.inf):
            p50, p99 = quantiles(pass_w, (0.5, 0.99))
            step.pass_ms = (p50, p99, highest(pass_w))
            step.passes_over_10ms = int(pass_w[math.inf] - pass_w.get(10.0, 0.0))
        gap_w = delta(histogram_buckets(text_b, GAP_METRIC), histogram_buckets(text_a, GAP_METRIC))
        if gap_w.get(math.inf):
            step.gap_ms = (quantiles(gap_w, (0.99,))[0], highest(gap_w))
        gcs = [delta(labelled_buckets(text_b, GC_METRIC, f'generation="{g}"'),
                     labelled_buckets(text_a, GC_METRIC, f'generation="{g}"')) for g in range(3)]
        step.gc_pauses = (int(gcs[0].get(math.inf, 0)), int(gcs[1].get(math.inf, 0)), int(gcs[2].get(math.inf, 0)))
        step.gc_max_ms = (highest(gcs[0]), highest(gcs[1]), highest(gcs[2]))
        step.late_batches, step.late_parts = late_split(text_a, text_b)
        step.tasks = task_split(text_a, text_b, time.time() - t_a)
        joined = counter_value(text_b, JOINED_METRIC) - counter_value(text_a, JOINED_METRIC)
        step.origin_skipped = int(counter_value(text_b, ORIGIN_SKIPPED_METRIC))
        alone = counter_value(text_b, ALONE_METRIC) - counter_value(text_a, ALONE_METRIC)
        if passes > 0:
            step.reads_per_pass = (counter_value(text_b, READS_METRIC) - counter_value(text_a, READS_METRIC)) / passes
        if "first_done" in progress_events(progress):
            step.invalid.append("a call ended inside the window (raise --repeat)")
        step.window_s = t_b - t_a
        step.emu_lag_p99, step.emu_lag_max = c.lag_window(emu_b, emu_a)
        step.engine_cpu, *rig_pcts = (b.percent_since(a) for a, b in zip(cpu_a, cpu_b, strict=True))
        ours = sum(b.cpu_s - a.cpu_s for a, b in zip(cpu_a, cpu_b, strict=True))
        step.others_cpu = max(0.0, 100 * (busy_b - busy_a - ours) / (cpu_b[0].wall - cpu_a[0].wall))
        step.core0_softirq = 100 * (irq0_b - irq0_a) / c.CLK_TCK / (cpu_b[0].wall - cpu_a[0].wall)
        step.others_core0 = core_others_pct(core0_b - core0_a, cpu_b[0].cpu_s - cpu_a[0].cpu_s,
                                            (irq0_b - irq0_a) / c.CLK_TCK, cpu_b[0].wall - cpu_a[0].wall)
        window = delta(hist_b, hist_a)
        step.frames = int(window.get(math.inf, 0))
        step.lag_p50, step.lag_p99, step.lag_p999 = quantiles(window, (0.5, 0.99, 0.999))
        step.lag_le20_pct = 100 * window.get(RULE_LAG_MS, 0) / step.frames if step.frames else math.nan
        step.late_frames = step.frames - int(window.get(LATE_MS, 0))
        if step.frames:
            step.doubled_pct = 100 * (joined + alone) / step.frames
            step.joined_pct = 100 * joined / (joined + alone) if joined + alone else math.nan
        watch(time.monotonic() + 3600)
        rig.wait_load()
        step.rss_idle_mib = idle_rss / 2**20
        step.rss_peak_mib = peak / 2**20
        step.rss_per_call_kib = (peak - idle_rss) / n / 1024
        step.rss = trace.summary(n)
        if args.rss_trace:
            trace.dump(work / f"rss-{tag}.json", n)
            print(f"rss trace: {work / f'rss-{tag}.json'}", flush=True)
        load = json.loads(out.read_text())
        step.calls_ok = int(load["ok"])
        step.stalls = int(load["stalls"])
        step.rig_lag_p99, step.rig_lag_max = window_lag(load, t_a, t_b)
        step.send_lag_p99, step.send_lag_max, _ = frame_lag(load, t_a, t_b)
        step.loadgen_cpu, step.emulator_cpu = rig.split(load, t_a, t_b, rig_pcts)
        step.deferred_pct, step.spill_ms = deferred_pct(load, t_a, t_b), spill_ms(load, t_a, t_b)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sum(e.get("type") == "call.ended" for e in c.read_events(events)) >= step.calls_ok:
                break
            time.sleep(0.5)
    except (StepFailed, RuntimeError, OSError, ValueError) as exc:
        step.invalid.append(f"step failed: {exc}")
    finally:
        if engine is not None:
            c.stop(engine)
        rig.stop()
    step.calib_ms = (before_ms, calibrate(pin))
    started: set[str] = set()
    closed: set[str] = set()
    answered: set[str] = set()
    for e in c.read_events(events):
        kind = e.get("type")
        if kind == "speech.started":
            started.add(e["utterance_id"])
        elif kind == "error":
            step.errors += 1
            k = str(e.get("kind") or e.get("code") or e.get("stage") or "?")
            step.error_kinds[k] = step.error_kinds.get(k, 0) + 1
            if e.get("utterance_id"):
                closed.add(e["utterance_id"])
        elif kind == "transcript.final":
            # Any final is an outcome (an utterance RTZR cut itself keeps its finals even if the closing one
            # never came: the engine logs utterance_final_incomplete); the closing one carries the latency.
            answered.add(e["utterance_id"])
            if e.get("latency"):
                step.finals += 1
                closed.add(e["utterance_id"])
    step.utterances = len(started)
    step.lost = len(started - closed - answered)
    step.incomplete = len((started & answered) - closed)
    step.invalid += rig_lag_invalid(step.send_lag_p99, step.rig_lag_p99, args)
    if pin and step.others_core0 > args.max_others:
        step.invalid.append(f"other processes took {step.others_core0:.0f} % of the engine's core")
    if step.emu_lag_p99 > args.emu_lag_ms:
        step.invalid.append(f"emulator loop lag p99 {fmt_ms(step.emu_lag_p99)} ms > {args.emu_lag_ms:g}")
    if step.spill_ms[0] > args.emu_lag_ms:
        step.invalid.append(f"the emulator's reads spilled over ticks in a row: p99 {step.spill_ms[0]:g} ms > {args.emu_lag_ms:g}")
    if pin and step.loadgen_cpu + step.emulator_cpu > RULE_CPU:
        step.invalid.append(f"core 1 (load generator + emulator) at {step.loadgen_cpu + step.emulator_cpu:.0f} %")
    return step


def fmt_pct(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.1f} %"


def fmt_ms(v: float) -> str:
    return "–" if math.isnan(v) else ("> 5000" if math.isinf(v) else f"{v:g}")


def late_pct(s: Step) -> str:
    return f"{s.late_frames} ({100 * s.late_frames / s.frames:.2f} %); {s.late_batches}" if s.frames else "–"


def late_parts(s: Step) -> str:
    total = sum(v for v, _ in s.late_parts.values())
    if not s.late_frames or total <= 0:
        return "–"
    return " / ".join(f"{100 * v / total:.0f} % ({fmt_ms(p)})" for v, p in (s.late_parts[k] for k in LATE_PARTS))


def report(steps: list[Step]) -> str:
    lines = ["| calls | GC | rig | verdict | engine CPU | RSS peak (idle) | RSS/call | frame lag p50 / p99 / p99.9 ms "
             "| frames ≤ 20 ms | closing finals / utterances, incomplete, lost | errors | rig CPU: loadgen, emulator | rig tick lag p99 / max "
             "| rig frame send lag p99 / max "
             "| emulator lag p99 / max | reads per pass | other processes | core 0 calibration before / after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        errs = f"{s.errors}" + (f" ({', '.join(f'{k} {v}' for k, v in s.error_kinds.items())})" if s.errors else "")
        lines.append(
            f"| {s.calls} | {s.gc} | {s.rig} | **{s.verdict}** | {s.engine_cpu:.0f} % | {s.rss_peak_mib:.0f} MiB "
            f"({s.rss_idle_mib:.0f}) | {s.rss_per_call_kib:.0f} KiB | {fmt_ms(s.lag_p50)} / {fmt_ms(s.lag_p99)} / "
            f"{fmt_ms(s.lag_p999)} | {s.lag_le20_pct:.2f} % | {s.finals} / {s.utterances}, {s.incomplete}, {s.lost} | {errs} | "
            f"{s.loadgen_cpu:.0f} %, {s.emulator_cpu:.0f} % | {s.rig_lag_p99:.1f} / {s.rig_lag_max:.1f} ms | "
            f"{fmt_ms(s.send_lag_p99)} / {fmt_ms(s.send_lag_max)} ms | "
            f"{fmt_ms(s.emu_lag_p99)} / {fmt_ms(s.emu_lag_max)} ms{'' if math.isnan(s.deferred_pct) else f', reads spilled {s.deferred_pct:.1f} % (spilling p99 {s.spill_ms[0]:g} ms)'} | {s.reads_per_pass:.1f} | "
            f"{s.others_cpu:.0f} % ({s.others_core0:.0f} % on core 0; its softirq {s.core0_softirq:.0f} %) | {s.calib_ms[0]:.0f} / {s.calib_ms[1]:.0f} ms |")
    lines += ["", "Why frames are late (the engine's reactor, same window): pass duration, a pass's end to the next "
              "start, GC pauses, calls whose socket held 2+ chunks in one pass (bucket bounds, ms)", "",
              "| calls | GC | pass p50 / p99 / max | passes > 10 ms | gap p99 / max | GC collections gen 0 / 1 / 2 "
              "| longest GC gen 0 / 1 / 2 | 2nd chunks in a pass, % of frames (joined %) | frames > 15 ms (%); batches whose "
              "latest was | that latest frame's lag by part, % (p99 ms): missed / prev pass / between / interval / pass "
              "| rig frame send lag p99 / max |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(
            f"| {s.calls} | {s.gc} | {' / '.join(fmt_ms(v) for v in s.pass_ms)} | {s.passes_over_10ms} | "
            f"{' / '.join(fmt_ms(v) for v in s.gap_ms)} | {' / '.join(str(v) for v in s.gc_pauses)} | "
            f"{' / '.join(fmt_ms(v) for v in s.gc_max_ms)} | {s.doubled_pct:.2f} % ({s.joined_pct:.0f} %) | "
            f"{late_pct(s)} | {late_parts(s)} | {fmt_ms(s.send_lag_p99)} / {fmt_ms(s.send_lag_max)} ms |")
    lines += ["", "Late-frame parts (engine/twilio/late.py; per pass or batch whose latest frame was over 15 ms, that frame): missed = due before the previous pass started, not readable "
              "when it polled (rig, kernel); prev pass = arrived during a pass that had polled; between = a pass's end "
              "to the reactor's wake-up (other tasks, the scheduler); interval = the min pass interval's sleep; pass = "
              "the reading pass; rig send lag = the load generator's per-frame send lag (loadgen.frame_lag: a frame's send "
              "minus its due, the call's least-delayed frame as origin, as the engine's)"]
    for s in steps:
        if s.tasks:  # server.task_steps_slow_ms > 0 (engine/task_steps.py)
            lines.append(f"{s.calls} ({s.gc}) task steps, top by time (% of a core, steps over the slow bound, longest ms): "
                         + "; ".join(f"{t} {pct:.1f} % ({n}, {fmt_ms(m)})" for t, pct, n, m in s.tasks))
    for s in steps:
        if s.invalid:
            lines.append(f"INVALID {s.calls} ({s.gc}, {s.rig}): {'; '.join(s.invalid)}")
        if s.calls_ok != s.calls:
            lines.append(f"{s.calls} ({s.gc}): only {s.calls_ok} calls connected")
    lines += rss_report(steps)
    for gc, rig in dict.fromkeys((s.gc, s.rig) for s in steps):
        passed = [s.calls for s in steps if (s.gc, s.rig) == (gc, rig) and s.verdict == "PASS"]
        lines.append(f"capacity with GC {gc} ({rig} rig): {max(passed) if passed else 'below the smallest step'} calls by the rule "
                     f"(frame lag p99 ≤ 20 ms in the all-live window, no final lost, no error, engine ≤ 90 %)")
    return "\n".join(lines)


def rss_report(steps: list[Step]) -> list[str]:
    """RSS per call above the ready, idle engine, both ways (bench/rss_trace.py): the peak over the whole step
    (ramp, window, the calls' last minute; the goal's historical reading) and the steady state over the window in
    which every call is live (its mean and max), with where the peak fell."""
    lines = ["", "RSS per call above the idle engine (KiB): peak over the whole step vs steady state (every call "
             "live, the measured window); max by phase", "",
             "| calls | GC | RSS/call, peak-based | where the peak fell | RSS/call, steady (window mean / max) "
             "| max in ramp / settle / window / after | RTZR sockets open, window start / end |", "|---|---|---|---|---|---|---|"]
    for s in steps:
        r = s.rss
        if not r:
            continue
        by = r["max_by_phase"]
        lines.append(f"| {s.calls} | {s.gc} | {r['peak']:.0f} | {r['peak_phase']}, {r['peak_t']:.0f} s after the load "
                     f"started | {r['window_mean']:.0f} / {r['window_max']:.0f} | "
                     f"{' / '.join(f'{by[p]:.0f}' if p in by else '–' for p in ('ramp', 'settle', 'window', 'after'))} | "
                     f"{s.pool_open[0]:.0f} / {s.pool_open[1]:.0f} |")
    return lines


# ---------------------------------------------------------------------------------------------
# the rig alone: load generator → engine stand-in → emulator


@dataclass
class RigRun:
    calls: int
    emulator: str  # "this tree" or the --ab-emulator checkout
    rig: str = "one-process"
    loadgen_cpu: float = math.nan  # one process: its ticker's thread CPU
    emulator_cpu: float = math.nan  # one process: the rest of it
    standin_cpu: float = math.nan
    core1_others: float = math.nan  # other processes on the rig's core during the window
    rig_sys: float = math.nan  # of the rig's CPU, in the kernel (% of a core)
    rig_lag_p99: float = math.nan
    rig_lag_max: float = math.nan
    send_lag_p99: float = math.nan  # the load generator's per-frame send lag (loadgen.frame_lag), ms
    send_lag_max: float = math.nan
    emu_lag_p99: float = math.nan
    emu_lag_max: float = math.nan
    deferred_pct: float = math.nan
    spill_ms: tuple[float, float] = (math.nan, math.nan)
    ticks_merged: int = 0
    core1_steal: float = math.nan  # of core 1, % taken by the hypervisor (steal) during the window
    core1_softirq: float = math.nan  # of core 1, % in softirq (/proc/stat)
    rig_preempted: int = -1  # the rig's involuntary context switches in the window (SCHED_FIFO: RT throttling, or higher RT)
    reads_per_wakeup: float = math.nan
    calls_ok: int = 0
    sessions: int = 0
    finals: int = 0
    audio_messages: int = 0
    eos_close_p50: float = math.nan
    eos_close_p99: float = math.nan
    window_s: float = 0.0
    invalid: list[str] = field(default_factory=list)
    behind: list[str] = field(default_factory=list)

    @property
    def core1(self) -> float:
        return self.loadgen_cpu + self.emulator_cpu

    @property
    def core1_total(self) -> float:
        """The rig's whole load on its core: its processes and the softirq of its loopback sends."""
        return self.core1 + self.core1_softirq

    @property
    def verdict(self) -> str:
        if self.invalid:
            return "INVALID"
        return "BEHIND" if self.behind else "KEEPS UP"


_rig_runs = itertools.count(1)


def run_rig_only(n: int, corpus: list[c.CorpusCall], work: Path, args: argparse.Namespace,
                 kind: str = "one-process", emulator_root: Path | None = None) -> RigRun:
    """The rig on core 1 (load generator SCHED_FIFO + ``--cheap`` emulator; ``kind``: in one process, or two)
    driving ``n`` calls through the stand-in on core 0 (bench/standin.py: Twilio in, every call's audio to its
    own emulator session in 100 ms messages). Unless --no-rt all run SCHED_FIFO (two processes: load generator
    above the emulator, so its pacing comes first), so other engineers' processes on this shared machine cannot
    starve the rig. KEEPS UP = core 1 ≤ 90 %, load generator lag p99 ≤ --rig-lag-ms, emulator loop lag p99 ≤
    --emu-lag-ms, every call and session up; INVALID when the stand-in (> 90 %) or other processes on core 1
    (> --max-others) were the limit, or a call ended inside the window."""
    pin = not args.no_pin
    # A fresh tag per run: a repeated step (--rig-only 300 300) must not read the previous run's progress file.
    tag = f"{n}-{'ab' if emulator_root else 'this'}-{kind}-{next(_rig_runs)}"
    run = RigRun(n, str(emulator_root) if emulator_root else "this tree", kind)
    emu_port, port = c.free_port(), c.free_port()
    # An --ab-emulator checkout's own loop lag too, when it has the probe (main has had it since issue 13's rig work).
    root = emulator_root or c.ROOT
    probe = 10 if "--lag-probe-ms" in (root / "engine" / "rtzr" / "emulator" / "cli.py").read_text() else 0
    rig = Rig(kind, emu_port, n + 50, work, f"rig-{tag}", RigOptions(
        pin=pin, rt=not args.no_rt, load_prio=2, emulator_rt=not args.no_rt, cheap=True, final_ms=FINAL_MS,
        read_batch_ms=0.0 if emulator_root else args.emu_read_batch_ms, lag_probe_ms=probe, root=emulator_root))
    stats_path = work / f"standin-{tag}.json"
    progress = work / f"progress-rig-{tag}.jsonl"
    out = work / f"load-rig-{tag}.json"
    standin = None
    try:
        extra = ["--trace-late", str(work / f"trace-{tag}.json")] if args.rig_trace and rig.one else []
        extra += [] if args.catch_up else ["--no-catch-up"]
        extra += ["--demote-reads"] if args.demote_reads and rig.one else []
        rig.start_emulator(load_args(f"ws://127.0.0.1:{port}/twilio/media", n, corpus, progress, out, args) + extra)
        standin = c.spawn(rig_cmd([c.PY, str(c.ROOT / "bench" / "standin.py"), "--port", str(port), "--emulator",
                           f"127.0.0.1:{emu_port}", "--stats", str(stats_path)], args), cpu=0 if pin else None,
                          log=work / f"standin-{tag}.log")
        c.wait_port(port, standin)
        rig.start_load()
        deadline = time.monotonic() + args.ramp_s + 60
        while "all_live" not in progress_events(progress) and time.monotonic() < deadline and rig.load_running():
            time.sleep(0.2)
        time.sleep(args.settle_s)
        pids = [*rig.pids(), standin.pid]
        emu_a = c.emulator_stats(emu_port)
        t_a, cpu_a, core1_a, st_a = time.time(), [c.CpuSample.take(pid) for pid in pids], machine_busy_s(1), cpu_fields(1)
        sys_a = sum(proc_sys_s(pid) for pid in pids[:-1])
        pre_a = sum(involuntary_switches(pid) for pid in pids[:-1])
        time.sleep(args.window_s)
        t_b, cpu_b, core1_b, st_b = time.time(), [c.CpuSample.take(pid) for pid in pids], machine_busy_s(1), cpu_fields(1)
        sys_b = sum(proc_sys_s(pid) for pid in pids[:-1])
        run.rig_preempted = sum(involuntary_switches(pid) for pid in pids[:-1]) - pre_a
        run.rig_sys = 100 * (sys_b - sys_a) / (cpu_b[0].wall - cpu_a[0].wall)
        wall = cpu_b[0].wall - cpu_a[0].wall
        run.core1_softirq = 100 * (st_b[6] - st_a[6]) / c.CLK_TCK / wall
        run.core1_steal = 100 * (st_b[7] - st_a[7]) / c.CLK_TCK / wall
        emu_b = c.emulator_stats(emu_port)
        if "first_done" in progress_events(progress):
            run.invalid.append("a call ended inside the window (raise --repeat)")
        rig.wait_load()
        run.window_s = t_b - t_a
        *rig_pcts, run.standin_cpu = (b.percent_since(a) for a, b in zip(cpu_a, cpu_b, strict=True))
        ours1 = sum(b.cpu_s - a.cpu_s for a, b in zip(cpu_a[:-1], cpu_b[:-1], strict=True))
        run.core1_others = core_others_pct(core1_b - core1_a, ours1, (st_b[6] - st_a[6]) / c.CLK_TCK, wall)
        run.emu_lag_p99, run.emu_lag_max = c.lag_window(emu_b, emu_a)
        if emu_a and emu_b and emu_b["read_wakeups"] > emu_a["read_wakeups"]:
            run.reads_per_wakeup = (emu_b["reads"] - emu_a["reads"]) / (emu_b["read_wakeups"] - emu_a["read_wakeups"])
        load = json.loads(out.read_text())
        run.calls_ok = int(load["ok"])
        run.rig_lag_p99, run.rig_lag_max = window_lag(load, t_a, t_b)
        run.send_lag_p99, run.send_lag_max, _ = frame_lag(load, t_a, t_b)
        run.ticks_merged = int(load.get("ticks_merged", 0))
        run.loadgen_cpu, run.emulator_cpu = rig.split(load, t_a, t_b, rig_pcts)
        run.deferred_pct, run.spill_ms = deferred_pct(load, t_a, t_b), spill_ms(load, t_a, t_b)
        time.sleep(1.0 + FINAL_MS / 1000)  # the last EOS answers
    except (RuntimeError, OSError, ValueError) as exc:
        run.invalid.append(f"run failed: {exc}")
    finally:
        rig.stop()
        if standin is not None:
            c.stop(standin)
    if stats_path.exists():
        st = json.loads(stats_path.read_text())
        run.sessions, run.finals, run.audio_messages = st["sessions_opened"], st["finals"], st["audio_messages"]
        run.eos_close_p50 = c.percentile(st["eos_to_close_ms"], 50)
        run.eos_close_p99 = c.percentile(st["eos_to_close_ms"], 99)
    if pin and run.standin_cpu > RULE_CPU:
        run.invalid.append(f"the stand-in (core 0) at {run.standin_cpu:.0f} %")
    if pin and run.core1_others > args.max_others:
        run.invalid.append(f"other processes took {run.core1_others:.0f} % of the rig's core")
    if pin and run.core1_total > RULE_CPU:
        run.behind.append(f"core 1 at {run.core1_total:.0f} % (rig {run.core1:.0f} % + its softirq {run.core1_softirq:.0f} %)")
    run.behind += rig_lag_invalid(run.send_lag_p99, run.rig_lag_p99, args)
    if run.emu_lag_p99 > args.emu_lag_ms:
        run.behind.append(f"emulator loop lag p99 {fmt_ms(run.emu_lag_p99)} ms")
    if run.spill_ms[0] > args.emu_lag_ms:
        run.behind.append(f"emulator reads spilling over ticks in a row: p99 {run.spill_ms[0]:g} ms")
    if run.calls_ok != n or run.sessions != n:
        run.behind.append(f"{run.calls_ok} calls, {run.sessions} emulator sessions of {n}")
    return run


def involuntary_switches(pid: int) -> int:
    """How often ``pid``'s threads were switched out while runnable (a SCHED_FIFO rig: by RT throttling, the
    kernel's 95 %-per-second cap on real-time tasks, or a higher-priority real-time thread)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended
            continue
        total += int(text.split("nonvoluntary_ctxt_switches:")[1].split()[0])
    return total


def proc_sys_s(pid: int) -> float:
    """CPU seconds ``pid`` spent in the kernel (stime; the rig's sends and reads are mostly loopback TCP)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[12]) / c.CLK_TCK


def rig_report(runs: list[RigRun]) -> str:
    lines = ["| calls | rig | emulator | verdict | core 1: loadgen + emulator + their softirq | per call | CPU s per 1000 call-s | calls at 90 % "
             "| of which kernel | stand-in (core 0) "
             "| loadgen tick lag p99 / max | frame send lag p99 / max (ticks merged) | emulator loop lag p99 / max | ticks with reads spilled (spilling for p99 / max) | reads per wake-up | sessions, audio msgs, finals "
             "| EOS → close p50 / p99 | other processes on core 1 (steal, softirq (the rig's, in the core 1 column); rig preempted) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(
            f"| {r.calls} | {r.rig} | {r.emulator} | **{r.verdict}** | {r.core1_total:.0f} % = {r.loadgen_cpu:.0f} % + {r.emulator_cpu:.0f} % + {r.core1_softirq:.0f} % "
            f"| {r.core1 / r.calls:.3f} % | {10 * r.core1 / r.calls:.2f} | {RULE_CPU * r.calls / r.core1 if r.core1 > 0 else math.nan:.0f} | {r.rig_sys:.0f} % | {r.standin_cpu:.0f} % | {r.rig_lag_p99:.1f} / {r.rig_lag_max:.1f} ms "
            f"| {fmt_ms(r.send_lag_p99)} / {fmt_ms(r.send_lag_max)} ms ({r.ticks_merged}) | {fmt_ms(r.emu_lag_p99)} / {fmt_ms(r.emu_lag_max)} ms | {fmt_pct(r.deferred_pct)} ({' / '.join(fmt_ms(v) for v in r.spill_ms)} ms) | {r.reads_per_wakeup:.1f} | {r.sessions}, {r.audio_messages}, "
            f"{r.finals} | {r.eos_close_p50:.0f} / {r.eos_close_p99:.0f} ms | {r.core1_others:.0f} % ({r.core1_steal:.1f} %, "
            f"{r.core1_softirq:.0f} %; {r.rig_preempted}×) |")
    for r in runs:
        for why, what in (("INVALID", r.invalid), ("BEHIND", r.behind)):
            if what:
                lines.append(f"{why} {r.calls} ({r.rig}, {r.emulator}): {'; '.join(what)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300])
    p.add_argument("--gc", nargs="+", default=["throughput", "default"], choices=["throughput", "default"],
                   help="server.gc_policy values; each step runs once per value, in this order")
    p.add_argument("--repeat", type=int, default=3, help="plays of the ~18 s corpus call per call")
    p.add_argument("--ramp-s", type=float, default=4.0, help="spread the calls' starts over this long (max 20 ms apart)")
    p.add_argument("--settle-s", type=float, default=3.0, help="after every call is live, before the window")
    p.add_argument("--window-s", type=float, default=20.0)
    p.add_argument("--spare", type=int, default=20, help="rtzr.pool.spare")
    p.add_argument("--rig-lag-ms", type=float, default=5.0,
                   help="load generator tick lag p99 above this: INVALID (only for a load document without per-frame "
                        "send lags, an older tree's; else --send-lag-ms)")
    p.add_argument("--send-lag-ms", type=float, default=5.0,
                   help="load generator per-frame send lag p99 above this: INVALID (rig-only: BEHIND)")
    p.add_argument("--max-others", type=float, default=10.0,
                   help="other processes above this %% of the engine's core during the window: INVALID")
    p.add_argument("--full-emulator", action="store_true", help="phrasebook recognition instead of --cheap")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--no-rt", action="store_true", help="do not run the load generator SCHED_FIFO (chrt -f 1)")
    p.add_argument("--emu-lag-ms", type=float, default=10.0,
                   help="emulator event-loop lag p99 (one-process rig: or its reads spilling over this many ms of "
                        "ticks in a row) above this: the rig fell behind (INVALID step)")
    p.add_argument("--emu-read-batch-ms", type=float, default=0.0,
                   help="emulator --read-batch-ms (more sessions per wake-up; its results up to this much later)")
    p.add_argument("--rig-only", type=int, nargs="+", metavar="CALLS",
                   help="measure the rig alone (load generator + emulator) through an engine stand-in")
    p.add_argument("--ab-emulator", metavar="DIR",
                   help="with --rig-only: also run the emulator of the checkout DIR (an A/B in the same run; "
                        "in the two-process rig)")
    p.add_argument("--catch-up", action=argparse.BooleanOptionalAction, default=False,
                   help="the load generator writes overdue ticks back to back after a stall (an experiment, off by "
                        "default: in the lead's 300-call steps it made 11-87 %% of the engine's frames late, the "
                        "'missed' part, with 17-43 %% of core 1 in other processes; BENCHMARKS.md round 7)")
    p.add_argument("--demote-reads", action="store_true",
                   help="with --rig-only, one-process rig: its emulator reads run SCHED_OTHER nice -20, out of the "
                        "kernel's real-time budget (bench/rig.py --demote-reads; an experiment)")
    p.add_argument("--rig-trace", action="store_true",
                   help="with --rig-only, one-process rig: trace what ran before each late tick (bench/rig_trace.py; "
                        "diagnostic, its hooks cost CPU) into the work directory")
    p.add_argument("--rig", nargs="+", choices=KINDS, default=["one-process"],
                   help="the load rig: load generator and emulator in one process (bench/rig.py) or two "
                        "(bench/loadgen.py + sori emulate-rtzr); several: each step once per rig, in this order (A/B)")
    p.add_argument("--rss-trace", action="store_true",
                   help="diagnostics: also read RSS by mapping and the RTZR pool's gauges once a second, and write "
                        "each step's RSS readings as JSON (rss-*.json in the logs directory)")
    args = p.parse_args()
    corpus = c.load_corpus()
    work = Path(tempfile.mkdtemp(prefix="sori-capacity-"))
    if args.rig_only:
        runs: list[RigRun] = []
        plan: list[tuple[str, Path | None]] = [(kind, None) for kind in args.rig]
        if args.ab_emulator:
            plan.append(("two-process", Path(args.ab_emulator).resolve()))
        for n in args.rig_only:
            for kind, root in plan:
                runs.append(run_rig_only(n, corpus, work, args, kind, root))
                r = runs[-1]
                print(f"  rig {n} calls ({r.rig}, {r.emulator}): {r.verdict}, core 1 {r.core1_total:.0f} % (loadgen {r.loadgen_cpu:.0f} "
                      f"+ emulator {r.emulator_cpu:.0f} + softirq {r.core1_softirq:.0f}), stand-in {r.standin_cpu:.0f} %, loadgen lag p99 "
                      f"{r.rig_lag_p99:.1f} ms, frame send lag p99 {fmt_ms(r.send_lag_p99)} ms, emulator lag p99 {fmt_ms(r.emu_lag_p99)} ms, "
                      f"other processes on core 1 {r.core1_others:.0f} %", flush=True)
        print(f"rig only: load generator + --cheap emulator on core 1 ({' vs '.join(args.rig)}), bench/standin.py on core 0"
              f"{'' if args.no_rt else ' (all SCHED_FIFO, load generator first)'}; "
              f"{len(corpus)} corpus calls × {args.repeat} plays; window {args.window_s:g} s after all live + "
              f"{args.settle_s:g} s; {c.machine()}; logs in {work}")
        print(rig_report(runs))
        return 0
    results: list[Step] = []
    for n in args.steps:
        for gc, kind in itertools.product(args.gc, args.rig):
            results.append(run_step(n, gc, corpus, work, args=args, kind=kind))
            s = results[-1]
            print(f"  {n} calls, GC {gc}, rig {kind}: {s.verdict}, engine {s.engine_cpu:.0f} %, lag p99 {fmt_ms(s.lag_p99)} ms, "
                  f"pass p50/p99/max {'/'.join(fmt_ms(v) for v in s.pass_ms)} ms, gap p99/max "
                  f"{'/'.join(fmt_ms(v) for v in s.gap_ms)} ms, GC gen2 {s.gc_pauses[2]} (max {fmt_ms(s.gc_max_ms[2])} ms), "
                  f"2nd chunks {s.doubled_pct:.2f} % of frames, origin skips {s.origin_skipped} (whole step), "
                  f"rig {s.loadgen_cpu:.0f} % + {s.emulator_cpu:.0f} %, rig lag p99 {s.rig_lag_p99:.1f} ms, frame send lag p99 {fmt_ms(s.send_lag_p99)} ms, "
                  f"other processes {s.others_cpu:.0f} % ({s.others_core0:.0f} % on core 0), calibration {s.calib_ms[0]:.0f} / {s.calib_ms[1]:.0f} ms",
                  flush=True)
    print(f"capacity: {len(corpus)} corpus calls × {args.repeat} plays per call, emulator "
          f"{'full' if args.full_emulator else '--cheap'}, window {args.window_s:g} s after all live + {args.settle_s:g} s, "
          f"settings {args.settings or 'default'}, "
          f"{'unpinned' if args.no_pin else 'pinned (engine core 0; emulator + load generator core 1)'}, rig {' vs '.join(args.rig)}"
          f"{'' if args.no_rt else ', load generator SCHED_FIFO (one process: the whole rig)'}; {c.machine()}; "
          f"logs in {work}")
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

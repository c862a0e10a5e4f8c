"""Saturation (issue 11): N real-time calls on a pool of S RTZR sessions, with RTZR's own session limit at S.

Per setting S (default 5 and 20) a fresh RTZR emulator (``sori emulate-rtzr --max-sessions S
--handshake-ms 100 --final-ms 150``: a 429 for the S+1-th session is real), a fresh engine (``sori serve``
with ``rtzr.pool.max_sessions=S``, ``spare=min(S, max(2, S/4))``, events as JSON lines) and the load
generator (bench/loadgen.py: N calls, call i plays corpus call i mod K once, then 1 s of silence), each
its own process, all on loopback. While the calls run, the engine's /metrics is sampled every 0.5 s
(``rtzr_pool_leased``, ``rtzr_pool_waiting``, ``rtzr_pool_open``). Reported per setting:

- utterances started (``speech.started``), answered by a closing final, lost (``speech.started`` whose
  ``utterance_id`` never got a ``transcript.final``), errors by kind (``kind``/``budget``);
- lease wait p50/p95/max from ``latency.lease_ms`` of the closing finals, and p50/p95 from the engine's
  ``rtzr_pool_lease_wait_ms`` histogram (bucket upper bounds, the top one 5000 ms; it also counts leases whose utterance
  failed later); leases hit/miss/timeout (``rtzr_pool_leases_total``);
- pool utilisation: mean of ``rtzr_pool_leased / S`` over the samples taken while calls were sending
  audio; the share of samples with an utterance queued (``rtzr_pool_waiting > 0``) and the queue's max;
- total_ms p50/p95 (last speech → final event) of the closing finals;
- 429s: ``rtzr_pool_saturated_total`` (socket opens RTZR refused with HTTP 429);
- validity: a setting is marked INVALID when the load generator's own sender lag p99 exceeds
  ``--max-sender-lag-ms`` (it could not send the audio in real time, so the offered load was lower than
  stated) or a call failed to connect.

With ``--rtzr-limit L`` below S the emulator refuses sessions beyond L with HTTP 429 while the pool
believes it may open S: the pool's handling of real 429s (``rtzr_pool_saturated``) is then measured.

    .venv/bin/python bench/saturation.py [--calls 50] [--sessions 5 20] [--rtzr-limit L] [--no-pin]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
from capacity import histogram_quantiles

FINAL_MS = 150
HANDSHAKE_MS = 100
SAMPLE_S = 0.5


@dataclass
class Setting:
    sessions: int
    calls: int
    spare: int = 0
    started: int = 0
    closed: int = 0  # utterances with a closing final (one carrying latency)
    answered: int = 0  # utterances with any transcript.final
    lost: int = 0  # speech.started without any transcript.final
    finals: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lease_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    hist_p50: float = math.nan
    hist_p95: float = math.nan
    hits: float = 0.0
    misses: float = 0.0
    timeouts: float = 0.0
    saturated_429: float = 0.0
    foreign: float = 0.0
    orphan: float = 0.0  # late answers after a lease that ended with audio pending (engine/rtzr/stream.py)
    recycles: dict[str, float] = field(default_factory=dict)
    leased_samples: list[float] = field(default_factory=list)
    waiting_samples: list[float] = field(default_factory=list)
    open_samples: list[float] = field(default_factory=list)
    calls_ok: int = 0
    calls_ended: int = 0
    sender_lag_p99: float = 0.0
    engine_cpu_pct: float = 0.0
    duration_s: float = 0.0
    max_sender_lag_ms: float = 100.0
    rtzr_limit: int = 0  # the emulator's --max-sessions (RTZR's concurrency limit)

    @property
    def utilisation(self) -> float:
        return sum(self.leased_samples) / len(self.leased_samples) / self.sessions if self.leased_samples else math.nan

    @property
    def queued_share(self) -> float:
        return sum(w > 0 for w in self.waiting_samples) / len(self.waiting_samples) if self.waiting_samples else math.nan

    @property
    def valid(self) -> bool:
        return self.sender_lag_p99 <= self.max_sender_lag_ms and self.calls_ok == self.calls


class Sampler:
    """Scrapes the engine's /metrics every SAMPLE_S seconds on a thread until stopped."""

    def __init__(self, admin_port: int) -> None:
        self.admin_port = admin_port
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = c.scrape_metrics(self.admin_port, timeout=2.0)
            if sample:
                self.samples.append(sample)
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_setting(sessions: int, calls: int, corpus: list[c.CorpusCall], work: Path, *, stagger_ms: float, pin: bool,
                settings: list[str], max_sender_lag_ms: float, rtzr_limit: int | None = None) -> Setting:
    limit = rtzr_limit or sessions
    spare = min(sessions, max(2, sessions // 4))
    res = Setting(sessions, calls, spare=spare, max_sender_lag_ms=max_sender_lag_ms, rtzr_limit=limit)
    emu_port, port, admin = c.free_port(), c.free_port(), c.free_port()
    tag = f"s{sessions}-r{limit}-n{calls}"
    events_path = work / f"events-{tag}.jsonl"
    emulator = c.start_emulator(emu_port, max_sessions=limit, log=work / f"emu-{tag}.log", cpu=1 if pin else None,
                                handshake_ms=HANDSHAKE_MS, final_ms=FINAL_MS)
    engine = None
    final: dict[str, float] = {}
    try:
        engine = c.start_engine(port, admin, emu_port, events=events_path, log=work / f"engine-{tag}.log",
                                cpu=0 if pin else None,
                                settings=["rtzr.pool.mode=pooled", f"rtzr.pool.max_sessions={sessions}",
                                          f"rtzr.pool.spare={spare}", *settings])
        time.sleep(1.5)  # let the pool pre-warm its spare sockets
        out = work / f"load-{tag}.json"
        before = c.CpuSample.take(engine.pid)
        began = time.monotonic()
        with Sampler(admin) as sampler:
            gen = c.spawn([c.PY, str(c.ROOT / "bench" / "loadgen.py"), f"ws://127.0.0.1:{port}/twilio/media",
                           "--calls", str(calls), "--stagger-ms", str(stagger_ms), "--out", str(out),
                           "--audio", *[str(k.wav) for k in corpus]], cpu=1 if pin else None,
                          log=work / f"load-{tag}.log")
            gen.wait()
        res.duration_s = time.monotonic() - began
        res.engine_cpu_pct = c.CpuSample.take(engine.pid).percent_since(before)
        load = json.loads(out.read_text())
        res.calls_ok = int(load["ok"])
        res.sender_lag_p99 = float(load["sender_lag_ms_p99"])
        # queued utterances may still be sending their buffered audio after the callers hung up
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum(e.get("type") == "call.ended" for e in c.read_events(events_path)) >= res.calls_ok:
                break
            time.sleep(0.5)
        final = c.scrape_metrics(admin)
    finally:
        if engine is not None:
            c.stop(engine)
        c.stop(emulator)
    for s in sampler.samples:
        res.leased_samples.append(c.metric(s, "sori_rtzr_pool_leased"))
        res.waiting_samples.append(c.metric(s, "sori_rtzr_pool_waiting"))
        res.open_samples.append(c.metric(s, "sori_rtzr_pool_open"))
    metrics_from(res, final)
    analyse(res, c.read_events(events_path))
    return res


def metrics_from(res: Setting, sample: dict[str, float]) -> None:
    res.hits = c.metric(sample, "sori_rtzr_pool_leases_total", result="hit")
    res.misses = c.metric(sample, "sori_rtzr_pool_leases_total", result="miss")
    res.timeouts = c.metric(sample, "sori_rtzr_pool_leases_total", result="timeout")
    res.saturated_429 = c.metric(sample, "sori_rtzr_pool_saturated_total")
    res.foreign = c.metric(sample, "sori_rtzr_foreign_results_total")
    res.orphan = c.metric(sample, "sori_rtzr_orphan_results_total")
    for key, value in sample.items():
        if key.startswith("sori_rtzr_pool_recycles_total{") and value:
            res.recycles[key.split('reason="', 1)[1].split('"', 1)[0]] = value
    text = "\n".join(f"{k} {v}" for k, v in sample.items())
    res.hist_p50, res.hist_p95 = histogram_quantiles(text, "sori_rtzr_pool_lease_wait_ms_bucket", (0.5, 0.95))


def analyse(res: Setting, events: list[dict[str, Any]]) -> None:
    started: set[str] = set()
    with_final: set[str] = set()
    closed: set[str] = set()
    for e in events:
        kind = e.get("type")
        if kind == "speech.started":
            started.add(e["utterance_id"])
        elif kind == "transcript.final":
            res.finals += 1
            with_final.add(e["utterance_id"])
            lat = e.get("latency")
            if lat is not None:
                closed.add(e["utterance_id"])
                res.lease_ms.append(lat["lease_ms"])
                res.total_ms.append(lat["total_ms"])
        elif kind == "error":
            label = e.get("kind", "?") + (f"/{e['budget']}" if e.get("budget") else "")
            res.errors[label] += 1
        elif kind == "call.ended":
            res.calls_ended += 1
    res.started = len(started)
    res.answered = len(started & with_final)
    res.closed = len(started & closed)
    res.lost = len(started - with_final)


def fmt_ms(v: float) -> str:
    if math.isnan(v):
        return "—"
    return "> 5000" if math.isinf(v) else f"{v:.0f}"


def report(results: list[Setting]) -> str:
    """A Markdown table (one row per setting), then one line of detail per setting."""
    lines = ["| sessions | valid | utterances | closed by a final | lost | errors (kind: n) | lease wait p50 / p95 / max "
             "(ms, finals) | histogram p50 / p95 (ms) | leases hit / miss / timeout | utilisation | time queued "
             "| total_ms p50 / p95 | 429s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0"
        lw = " / ".join(fmt_ms(v) for v in (c.percentile(r.lease_ms, 50), c.percentile(r.lease_ms, 95),
                                             max(r.lease_ms) if r.lease_ms else math.nan))
        name = str(r.sessions) if r.rtzr_limit == r.sessions else f"{r.sessions} (RTZR limit {r.rtzr_limit})"
        lines.append(f"| {name} | {'yes' if r.valid else 'NO'} | {r.started} | {r.closed} | {r.lost} | {errs} "
                     f"| {lw} | {fmt_ms(r.hist_p50)} / {fmt_ms(r.hist_p95)} "
                     f"| {r.hits:.0f} / {r.misses:.0f} / {r.timeouts:.0f} | {100 * r.utilisation:.0f} % "
                     f"| {100 * r.queued_share:.0f} % | {fmt_ms(c.percentile(r.total_ms, 50))} / "
                     f"{fmt_ms(c.percentile(r.total_ms, 95))} | {r.saturated_429:.0f} |")
    for r in results:
        recycles = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.recycles.items())) or "none"
        lines.append(f"    S={r.sessions}: {r.calls} calls ({r.calls_ok} ok, {r.calls_ended} ended), spare {r.spare}, "
                     f"finals {r.finals} ({r.answered} utterances with a final), queue max "
                     f"{max(r.waiting_samples, default=0):.0f}, open max {max(r.open_samples, default=0):.0f}, "
                     f"{len(r.leased_samples)} samples over {r.duration_s:.0f} s, engine CPU {r.engine_cpu_pct:.0f}% "
                     f"of a core, load sender lag p99 {r.sender_lag_p99:.1f} ms (valid ≤ {r.max_sender_lag_ms:.0f}), "
                     f"sockets closed by reason: {recycles}, foreign results {r.foreign:.0f}, orphan results {r.orphan:.0f}")
    return "\n".join(lines)


def run(calls: int, sessions: list[int], *, corpus_limit: int | None = None, stagger_ms: float = 20.0,
        pin: bool = True, settings: list[str] | None = None, max_sender_lag_ms: float = 100.0,
        rtzr_limit: int | None = None) -> str:
    corpus = c.load_corpus(corpus_limit)
    work = Path(tempfile.mkdtemp(prefix="sori-saturation-"))
    results: list[Setting] = []
    for s in sessions:
        results.append(run_setting(s, calls, corpus, work, stagger_ms=stagger_ms, pin=pin, settings=settings or [],
                                   max_sender_lag_ms=max_sender_lag_ms, rtzr_limit=rtzr_limit))
        print(f"  done: {calls} calls on {s} sessions", flush=True)
    head = (f"saturation: {calls} calls over {len(corpus)} corpus calls ({stagger_ms:.0f} ms stagger, one play + 1 s "
            f"silence each), emulator --max-sessions {rtzr_limit or 'S'}, handshake {HANDSHAKE_MS} ms / final {FINAL_MS} ms, settings "
            f"{settings or 'default'}, {'pinned' if pin else 'unpinned'}; {c.machine()}; logs in {work}")
    return head + "\n" + report(results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--sessions", type=int, nargs="+", default=[5, 20])
    p.add_argument("--corpus-limit", type=int, default=None)
    p.add_argument("--stagger-ms", type=float, default=20.0, help="delay between call starts")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-sender-lag-ms", type=float, default=100.0,
                   help="a setting is invalid when the load generator's sender lag p99 exceeds this")
    p.add_argument("--rtzr-limit", type=int, default=None,
                   help="the emulator's --max-sessions (default: S, the pool's own limit); set it below S to make "
                        "the pool meet real HTTP 429s")
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args()
    print(run(args.calls, args.sessions, corpus_limit=args.corpus_limit, stagger_ms=args.stagger_ms,
              pin=not args.no_pin, settings=args.settings, max_sender_lag_ms=args.max_sender_lag_ms,
              rtzr_limit=args.rtzr_limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Answer latency (issue 14): the caller's last speech → the first frame of the answer on the Twilio socket.

The engine (``sori serve`` with the application channel on) is pinned to core 0; the RTZR emulator
(``--cheap``: STT is not on this path) to core 1. The driver is split across processes
(bench/answer_driver.py) so that it is not the limit at 100 calls: K caller processes (pre-encoded frames,
one ticker each, real-time 20 ms frames; each call is K turns of one phrase clip then ``--gap-ms`` of
silence) and one application process on the channel, subscribed to every call, that answers each
``speech.ended`` at once with 200 ms of audio (``play``). Every process stamps with ``time.monotonic()``
(CLOCK_MONOTONIC: one clock machine-wide), so per turn:

- engine-added = first answer frame received by the call − the send time of the frame whose audio ends at
  the endpoint decision (``speech.ended.end_ms``): everything between the audio that completed the hangover
  leaving the caller and the answer arriving back (engine read + endpointer, event to the application over
  the channel, the application's decode and ``play``, the engine's decode, μ-law, pacing, the send);
- of which event: the ``speech.ended`` message reaching the application, and answer back: the application's
  ``play`` written → the answer's first frame at the call (the path issue 14 added);
- engine play → first frame: the engine's own histogram ``playback_start_ms`` (bucket upper bounds);
- caller's last speech → answer = the same, from the frame carrying the end of the last speech audio (adds
  the endpointer's hangover, ``endpointing.end_ms``, a policy, not engine work).

Validity: every driver process reports its own lag (callers: each frame's send − due; the application: a
5 ms ticker's oversleep). A step is INVALID when any of them has p99 > ``--max-rig-lag-ms`` (default 3 ms):
the rig, not sori, would then be in the figures.

``--ab-root DIR --ab-python PY``: each step runs twice, the engine of DIR (another checkout, its own venv)
first then this tree's, with the same emulator and driver: an A/B in one session.

    .venv/bin/python bench/answer_latency.py [--n 1 100] [--turns-1 100] [--turns-n 5] [--pin-driver]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c
from answer_driver import SECRET, SID_MARK, call_audio

DRIVER = Path(__file__).resolve().parent / "answer_driver.py"


def bucket_quantile(metrics: dict[str, float], name: str, q: float) -> float | None:
    """Upper bound of the histogram bucket holding quantile ``q`` (the engine's own view, coarse)."""
    buckets = sorted((float(key.split('le="')[1].split('"')[0]), value) for key, value in metrics.items()
                     if key.startswith(name + "_bucket{"))
    if not buckets or not buckets[-1][1]:
        return None
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= q * total)


def measure(calls: dict[str, dict[str, Any]], turns: list[dict[str, Any]]) -> dict[str, Any]:
    """Join the application's turns with the callers' answers (one clock: CLOCK_MONOTONIC)."""
    by_sid: dict[str, list[dict[str, Any]]] = {}
    for t in turns:
        by_sid.setdefault(t["sid"], []).append(t)
    added, event, total, back = [], [], [], []
    by_turn: dict[int, list[float]] = {}
    missing = 0
    for sid, call in calls.items():
        answers = sorted(call["answers"])
        sent = call["sent"]
        mine = sorted(by_sid.get(sid, []), key=lambda t: t["event_at"])
        for i, t in enumerate(mine):
            until = mine[i + 1]["event_at"] if i + 1 < len(mine) else math.inf
            answer_at = next((a for a in answers if t["event_at"] < a < until), None)
            end_frame = round(t["end_ms"] / 20) - 1
            if answer_at is None or end_frame >= len(sent):
                missing += 1
                continue
            speech_frame = max(0, math.ceil(t["last_speech_ms"] / 20) - 1)
            added.append((answer_at - sent[end_frame]) * 1000)
            by_turn.setdefault(i, []).append(added[-1])
            event.append((t["event_at"] - sent[end_frame]) * 1000)
            total.append((answer_at - sent[speech_frame]) * 1000)
            back.append((answer_at - t["play_at"]) * 1000)
    p = lambda v: tuple(round(x, 2) for x in c.pcts(v)) if v else None  # noqa: E731
    return {"turns": len(added), "missing": missing, "engine_added_p50_p90_p99": p(added),
            "engine_added_max": round(max(added), 2) if added else None,
            "event_p50_p90_p99": p(event), "answer_back_p50_p90_p99": p(back),
            "last_speech_to_answer_p50_p90_p99": p(total),
            "engine_added_p50_by_turn": [round(c.pcts(by_turn[i])[0], 1) for i in sorted(by_turn)][:10]}


def start_engine(port: int, admin: int, emu_port: int, app_port: int, n: int, workdir: Path, tag: str,
                 root: Path, python: str, rt: bool) -> subprocess.Popen[bytes]:
    """``sori serve`` of ``root`` (this tree or the A/B's other checkout) with the application channel on."""
    base = f"http://127.0.0.1:{emu_port}"
    settings = ["app_channel.enabled=true", f"app_channel.port={app_port}", f"rtzr.pool.spare={min(n, 50)}",
                f"rtzr.pool.max_sessions={max(20, n * 2)}", f"rtzr.api_base={base}",
                f"rtzr.ws_url=ws://127.0.0.1:{emu_port}/v1/transcribe:streaming", "rtzr.client_id=sori-emulator",
                "rtzr.client_secret=sori-emulator-secret", f"sinks.jsonl={workdir / f'events-{tag}-{n}.jsonl'}",
                "server.max_calls=5000"]
    cmd = [python, "-m", "engine", "serve", "--stt", "rtzr", "--allow-unsigned", "--port", str(port),
           "--admin-port", str(admin), "--log-level", "info"]
    for s in settings:
        cmd += ["--set", s]
    proc = c.spawn(c.realtime(cmd) if rt else cmd, cpu=0, log=workdir / f"engine-{tag}-{n}.log", env={"SORI_APP_SECRET": SECRET}, root=root)
    c.wait_port(port, proc)
    return proc


def drive(port: int, app_port: int, n: int, turns: int, gap_ms: int, procs: int, workdir: Path, tag: str,
          driver_cpu: int | None, rt: bool, phases: int) -> dict[str, Any]:
    """Run the application process and ``procs`` caller processes; their results, joined."""
    sids = [f"MZbench{i:05d}" for i in range(n)]
    assert all(len(sid) == len(SID_MARK) for sid in sids)
    call_s = len(call_audio(turns, gap_ms)) / 8000
    # Start times relative to the go (written once every driver process is ready), spread over 1 s, on slots.
    slot = 0.02 / phases
    starts = [0.6 + round((i * 0.0137 % 1.0) / slot) * slot for i in range(n)]
    go = workdir / f"go-{tag}-{n}"
    go.unlink(missing_ok=True)
    for stale in workdir.glob(f"*-{tag}-{n}.json.ready"):
        stale.unlink()
    app_spec = workdir / f"app-{tag}-{n}.json"
    app_spec.write_text(json.dumps({"port": app_port, "sids": sids, "record_from": min(starts), "go": str(go),
                                    "stop_at": max(starts) + call_s + 1.0}))
    wrap = c.realtime if rt else (lambda cmd: cmd)
    running = [c.spawn(wrap([c.PY, str(DRIVER), "app", str(app_spec), str(workdir / f"app-out-{tag}-{n}.json")]),
                       cpu=driver_cpu, log=workdir / f"app-{tag}-{n}.log")]
    groups = [list(range(k, n, procs)) for k in range(min(procs, n))]
    for k, group in enumerate(groups):
        spec = workdir / f"callers{k}-{tag}-{n}.json"
        spec.write_text(json.dumps({"port": port, "sids": [sids[i] for i in group], "starts": [starts[i] for i in group],
                                    "turns": turns, "gap_ms": gap_ms, "go": str(go),
                                    "slot_s": slot}))
        running.append(c.spawn(wrap([c.PY, str(DRIVER), "caller", str(spec), str(workdir / f"callers{k}-out-{tag}-{n}.json")]),
                               cpu=driver_cpu, log=workdir / f"callers{k}-{tag}-{n}.log"))
    outs = [workdir / f"app-out-{tag}-{n}.json"] + [workdir / f"callers{k}-out-{tag}-{n}.json" for k in range(len(groups))]
    deadline = time.monotonic() + 60
    while not all(Path(f"{o}.ready").exists() for o in outs):
        if time.monotonic() > deadline or any(proc.poll() is not None for proc in running):
            raise RuntimeError(f"driver processes did not get ready (logs in {workdir})")
        time.sleep(0.02)
    tmp = go.with_name(go.name + ".tmp")
    tmp.write_text(repr(time.monotonic() + 0.2))
    tmp.rename(go)  # atomic: a process never reads a half-written go
    for proc in running:
        if proc.wait(timeout=call_s + 60 + n * 0.1) != 0:
            raise RuntimeError(f"driver process failed: {proc.args} (logs in {workdir})")
    app = json.loads((workdir / f"app-out-{tag}-{n}.json").read_text())
    calls: dict[str, Any] = {}
    caller_lags, stalls = [], app["write_stalls"]
    for k in range(len(groups)):
        out = json.loads((workdir / f"callers{k}-out-{tag}-{n}.json").read_text())
        calls.update(out["calls"])
        caller_lags.append(out["sender_lag_p50_p99_max"])
        stalls += out["write_stalls"]
    result = measure(calls, app["turns"])
    result["driver_processes"] = len(groups) + 1
    result["caller_lag_p50_p99_max_per_process"] = caller_lags
    result["app_ticker_lag_p50_p99_max"] = app["ticker_lag_p50_p99_max"]
    result["driver_write_stalls"] = stalls
    return result


def run(n: int, turns: int, args: argparse.Namespace, workdir: Path, tag: str, root: Path,
        python: str) -> dict[str, Any]:
    port, admin, app_port, emu_port = c.free_port(), c.free_port(), c.free_port(), c.free_port()
    load = os.getloadavg()[0]
    # A fresh emulator per step (cheap: STT is not on this path), on the driver's core.
    emulator = c.start_emulator(emu_port, max_sessions=max(20, n * 4), log=workdir / f"emu-{tag}-{n}.log",
                                cpu=1, cheap=True)
    try:
        engine = start_engine(port, admin, emu_port, app_port, n, workdir, tag, root, python, args.rt_engine)
    except BaseException:
        c.stop(emulator)
        raise
    try:
        c.wait_port(app_port, engine)
        before = c.CpuSample.take(c.real_pid(engine))
        procs = args.procs or max(1, math.ceil(n / 25))
        result = drive(port, app_port, n, turns, args.gap_ms, procs, workdir, tag, 1 if args.pin_driver else None,
                       args.rt_driver, args.phases)
        result["engine_cpu_pct"] = round(c.CpuSample.take(c.real_pid(engine)).percent_since(before), 1)
        metrics = c.scrape_metrics(admin)
        (workdir / f"metrics-{tag}-{n}.json").write_text(json.dumps(metrics, indent=0))
        result["engine_frame_lag_p50_p99_bucket_ms"] = (bucket_quantile(metrics, "sori_twilio_frame_lag_ms", 0.5),
                                                       bucket_quantile(metrics, "sori_twilio_frame_lag_ms", 0.99))
        result["engine_play_to_first_frame_p50_p99_bucket_ms"] = (bucket_quantile(metrics, "sori_playback_start_ms", 0.5),
                                                               bucket_quantile(metrics, "sori_playback_start_ms", 0.99))
        result["app_channel_dropped"] = c.metric(metrics, "sori_app_channel_events_dropped_total")
        result["twilio_send_timeouts"] = c.metric(metrics, "sori_twilio_send_timeouts_total")
    finally:
        c.stop(engine)
        c.stop(emulator)
    rig = max([p[1] for p in result["caller_lag_p50_p99_max_per_process"]] + [result["app_ticker_lag_p50_p99_max"][1]])
    why = []
    if rig > args.max_rig_lag_ms:
        why.append(f"rig lag p99 {rig:.1f} ms > {args.max_rig_lag_ms} ms")
    if not result["turns"] or result["missing"] or result["driver_write_stalls"]:
        why.append(f"{result['missing']} turns unanswered, {result['driver_write_stalls']} driver write stalls")
    return {"engine": tag, "n": n, "rt_driver": args.rt_driver, "rt_engine": args.rt_engine, "phases": args.phases, "turns_per_call": turns, "gap_ms": args.gap_ms,
            "loadavg_before_after": [round(load, 2), round(os.getloadavg()[0], 2)],
            "valid": not why, "invalid_because": "; ".join(why) or None, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--turns-1", type=int, default=100, help="turns per call when n == 1")
    ap.add_argument("--turns-n", type=int, default=5, help="turns per call when n > 1")
    ap.add_argument("--gap-ms", type=int, default=700, help="silence after each phrase")
    ap.add_argument("--phases", type=int, default=4, help="frame phases per 20 ms across calls (each caller "
                    "process's ticker wakes 20/phases ms apart; Twilio's calls have any phase)")
    ap.add_argument("--procs", type=int, default=0, help="caller processes (default: one per 25 calls)")
    ap.add_argument("--max-rig-lag-ms", type=float, default=3.0, help="a step is INVALID above this driver lag p99")
    ap.add_argument("--pin-driver", action="store_true", help="run the driver processes on core 1 (the engine is on core 0)")
    ap.add_argument("--rt-driver", action="store_true", help="driver processes under SCHED_FIFO 1 (chrt), so other "
                    "load on the machine does not make the rig late")
    ap.add_argument("--rt-engine", action="store_true", help="the engine under SCHED_FIFO 1 too: its figure on a core "
                    "of its own (a dedicated deployment), not behind other processes")
    ap.add_argument("--ab-root", type=Path, help="A/B: also run the engine of this checkout (A) before this tree's (B)")
    ap.add_argument("--ab-python", help="the A checkout's Python (its own venv)")
    ap.add_argument("--repeat", type=int, default=1, help="run each step this many times (A, B alternating)")
    args = ap.parse_args()
    engines = [("new", c.ROOT, c.PY)]
    if args.ab_root:
        engines.insert(0, ("old", args.ab_root.resolve(), args.ab_python or str(args.ab_root / ".venv/bin/python")))
    print(c.machine(), f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("ANSWER_BENCH_DIR") or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in args.n:
            for _ in range(args.repeat):
                for tag, root, python in engines:
                    print(json.dumps(run(n, args.turns_1 if n == 1 else args.turns_n, args, work, tag, root, python)),
                          flush=True)
    print(f"loadavg after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

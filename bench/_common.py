"""Shared helpers for the benchmarks: percentiles, /proc sampling, child processes, corpus, config.

Benchmarks run the engine, the RTZR emulator and the load generator as separate processes (pinned
with ``taskset`` when available) so the engine's core is not shared with its own load.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable
CORPUS_DIR = ROOT / "bench" / "corpus"
DEMO_WAV = ROOT / "engine" / "demo" / "call.wav"
DEMO_JSON = ROOT / "engine" / "demo" / "call.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def pcts(values: Sequence[float]) -> tuple[float, float, float]:
    return percentile(values, 50), percentile(values, 95), percentile(values, 99)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------
# /proc sampling


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    """Resident set size in bytes."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


@dataclass
class CpuSample:
    cpu_s: float
    wall: float

    @staticmethod
    def take(pid: int) -> CpuSample:
        return CpuSample(proc_cpu_s(pid), time.monotonic())

    def percent_since(self, earlier: CpuSample) -> float:
        return 100.0 * (self.cpu_s - earlier.cpu_s) / max(1e-9, self.wall - earlier.wall)


# ---------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """Prefix with ``taskset -c cpu`` when taskset exists and the machine has that core."""
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) <= cpu:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def realtime(cmd: list[str], prio: int = 1) -> list[str]:
    """Prefix with ``chrt -f 1`` (SCHED_FIFO) when allowed, so a load generator sharing its core with the
    emulator is never kept waiting behind the emulator's bursts (its pacing is what the engine's frame lag
    measures). The kernel's RT throttling still leaves the core's other processes 5 %; the load generator
    sleeps between ticks anyway."""
    if shutil.which("chrt") is None or subprocess.call(["chrt", "-f", "1", "true"], stderr=subprocess.DEVNULL) != 0:
        return cmd
    return ["chrt", "-f", str(prio), *cmd]


def spawn(cmd: list[str], *, cpu: int | None, log: Path, env: dict[str, str] | None = None,
          root: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with ``root`` (this tree, or another checkout for an A/B run) first on its import path."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(root) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    out = log.open("wb")
    return subprocess.Popen(pinned(cmd, cpu), stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=root)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (graceful drain), then SIGKILL; only the process we started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def real_pid(proc: subprocess.Popen[bytes]) -> int:
    """The python process's pid (taskset execs in place, so it is the same pid)."""
    return proc.pid


def start_emulator(port: int, *, max_sessions: int, log: Path, cpu: int | None,
                   handshake_ms: int = 100, final_ms: int = 150, interim_ms: int = 1000,
                   cheap: bool = False, lag_probe_ms: int = 10, root: Path = ROOT,
                   rt: bool = False, read_batch_ms: float = 0.0) -> subprocess.Popen[bytes]:
    """``sori emulate-rtzr``; ``cheap`` skips recognition (placeholder words, same EPD/Finalize/EOS semantics).

    ``lag_probe_ms`` > 0: the emulator samples its own event-loop lag (read it with :func:`emulator_stats`);
    0 for a ``root`` checkout older than the probe. ``rt``: SCHED_FIFO priority 1 (see :func:`realtime`).
    """
    probe = ["--lag-probe-ms", str(lag_probe_ms)] if lag_probe_ms else []
    if read_batch_ms:
        probe += ["--read-batch-ms", f"{read_batch_ms:g}"]
    wrap = realtime if rt else (lambda cmd: cmd)
    proc = spawn(wrap([PY, "-m", "engine", "emulate-rtzr", "--port", str(port), "--handshake-ms", str(handshake_ms),
                  "--final-ms", str(final_ms), "--interim-ms", str(interim_ms), "--max-sessions", str(max_sessions),
                  "--log-level", "warning", "--idle-timeout-s", "600", *(["--cheap"] if cheap else []), *probe]),
                 cpu=cpu, log=log, root=root)
    wait_port(port, proc)
    return proc


def emulator_stats(port: int) -> dict[str, Any] | None:
    """The emulator's ``GET /stats`` (counters, read-hub wake-ups, loop-lag histogram); None if it has none."""
    try:
        doc: dict[str, Any] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5).read())
    except (OSError, ValueError):
        return None
    return doc


def lag_window(after: dict[str, Any] | None, before: dict[str, Any] | None) -> tuple[float, float]:
    """Emulator loop lag p99 and max over a window, as histogram bucket upper bounds (ms); NaN without stats."""
    if not after or not before:
        return math.nan, math.nan
    counts = [x - y for x, y in zip(after["loop_lag"]["counts"], before["loop_lag"]["counts"], strict=True)]
    bounds = [*after["loop_lag"]["bounds_ms"], math.inf]
    total = sum(counts)
    if not total:
        return math.nan, math.nan
    cumulative, p99 = 0, math.inf
    for bound, count in zip(bounds, counts, strict=True):
        cumulative += count
        if cumulative >= 0.99 * total:
            p99 = bound
            break
    worst = max(bound for bound, count in zip(bounds, counts, strict=True) if count)
    return p99, worst


def start_engine(port: int, admin_port: int, emulator_port: int, *, settings: Sequence[str], events: Path,
                 log: Path, cpu: int | None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``sori serve`` against an emulator process, events as JSON lines into ``events``."""
    base = f"http://127.0.0.1:{emulator_port}"
    cmd = [PY, "-m", "engine", "serve", "--stt", "rtzr", "--allow-unsigned", "--port", str(port),
           "--admin-port", str(admin_port), "--log-level", "warning",
           "--set", f"rtzr.api_base={base}", "--set", f"rtzr.ws_url=ws://127.0.0.1:{emulator_port}/v1/transcribe:streaming",
           "--set", "rtzr.client_id=sori-emulator", "--set", "rtzr.client_secret=sori-emulator-secret",
           "--set", f"sinks.jsonl={events}", "--set", "server.max_calls=5000"]
    for s in settings:
        cmd += ["--set", s]
    proc = spawn(cmd, cpu=cpu, log=log, env=env)
    wait_port(port, proc)
    return proc


def read_events(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def scrape_metrics(admin_port: int, timeout: float = 5.0) -> dict[str, float]:
    """The engine's /metrics as ``{'name{labels}': value}`` (loopback admin port); {} when unreachable."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=timeout).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def metric(sample: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels`` (0.0 when absent)."""
    total = 0.0
    for key, value in sample.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


# ---------------------------------------------------------------------------------------------
# corpus


@dataclass
class CorpusCall:
    name: str
    wav: Path
    utterances: list[tuple[float, float]]  # true speech (start_ms, end_ms)


def load_corpus(limit: int | None = None, *, min_snr: float = 20.0) -> list[CorpusCall]:
    """Labelled calls with speech from bench/corpus at SNR ≥ ``min_snr`` (noise-only skipped); else the demo.

    Latency and capacity are measured on calls the endpointer segments well: low-SNR babble merges
    utterances, which measures endpointing (bench/endpointing_eval.py), not the engine.
    """
    calls: list[CorpusCall] = []
    if CORPUS_DIR.is_dir():
        for js in sorted(CORPUS_DIR.glob("*.json")):
            wav = js.with_suffix(".wav")
            if not wav.exists():
                continue
            doc = json.loads(js.read_text())
            if doc.get("noise_only") or not doc.get("utterances") or float(doc.get("snr_db", 99)) < min_snr:
                continue
            rate = float(doc.get("sample_rate", 8000))
            utts = [(u["start"] * 1000 / rate, u["end"] * 1000 / rate) for u in doc["utterances"]]
            calls.append(CorpusCall(js.stem, wav, utts))
    if not calls:
        doc = json.loads(DEMO_JSON.read_text())
        calls.append(CorpusCall("demo", DEMO_WAV, [(p["start_ms"], p["end_ms"]) for p in doc["phrases"]]))
    return calls[:limit] if limit else calls

"""The one-process load rig (bench/rig.py): the RTZR emulator and the load generator in one Trio run drive a
real engine (in this process, loopback, port 0) as the two-process rig does; capacity.py's CPU split."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from engine.app import Engine, serve
from engine.config import cli_overrides, load
from engine.rtzr.emulator import Emulator

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import rig
import rig_procs

from .test_loadgen_smoke import short_wav


def rig_args(url: str, wav: Path, tmp_path: Path, *, calls: int, extra: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    rig.configure_parser(p)
    return p.parse_args([url, "--calls", str(calls), "--audio", str(wav), "--repeat", "2", "--stagger-ms", "5",
                         "--trailing-silence-ms", "100", "--progress", str(tmp_path / "progress.jsonl"),
                         "--out", str(tmp_path / "load.json"), "--port", "0", "--handshake-ms", "5", "--final-ms", "20",
                         "--max-sessions", "50", "--cheap", "--lag-probe-ms", "10", "--linger-s", "0", *extra])


async def drive_engine(tmp_path: Path, *, calls: int, wait_signal: bool) -> tuple[dict[str, object], Engine]:
    """The rig's emulator up first, then the engine on it, then the load (SIGUSR1 or an event), as capacity.py does."""
    wav = tmp_path / "a.wav"
    short_wav(wav, 400)
    go = None if wait_signal else trio.Event()
    finished = trio.Event()
    # The engine's port is not known until it runs: the rig reads args.url only when the load starts.
    args = rig_args("ws://unset", wav, tmp_path, calls=calls, extra=["--wait-signal"] if wait_signal else [])

    async def run_rig(task_status: trio.TaskStatus[Emulator] = trio.TASK_STATUS_IGNORED) -> None:
        await rig.main_async(args, go, task_status=task_status)
        finished.set()

    async with trio.open_nursery() as nursery:
        emulator: Emulator = await nursery.start(run_rig)
        config = load(environ={}, cli=cli_overrides([
            "server.port=0", "server.admin_port=0", "server.allow_unsigned=true", "sinks.jsonl=",
            "server.gc_policy=default", f"rtzr.api_base={emulator.api_base}", f"rtzr.ws_url={emulator.ws_url}",
            f"rtzr.client_id={emulator.config.client_id}", f"rtzr.client_secret={emulator.config.client_secret}"]))
        engine: Engine = await nursery.start(lambda task_status: serve(config, handle_signals=False, task_status=task_status))
        await engine.wait_ready()
        args.url = engine.twilio_url
        if go is None:
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            go.set()
        await finished.wait()
        while engine.metrics.value("twilio_calls_ended_total", "reason=stop") < calls:
            await trio.sleep(0.01)
        engine.shutdown()
    return json.loads((tmp_path / "load.json").read_text()), engine


async def test_one_process_rig_drives_every_call_to_its_end(tmp_path: Path) -> None:
    with trio.fail_after(60):
        doc, engine = await drive_engine(tmp_path, calls=4, wait_signal=False)
    per_call = 2 * 20 + 5  # 2 × 400 ms + 100 ms of silence, 20 ms frames
    assert doc["ok"] == 4 and doc["rig"] == "one-process"
    assert [c["frames_sent"] for c in doc["calls"]] == [per_call] * 4  # type: ignore[index]
    assert engine.metrics.value("twilio_frames_total") == 4 * per_call
    assert engine.metrics.value("twilio_frames_reordered_total") == 0
    assert "sori_twilio_protocol_errors_total" not in engine.metrics.render()
    # the engine's RTZR sessions went to the rig's emulator, which answered them
    stats = doc["emulator_stats"]
    assert stats["sessions_opened"] >= 4 and stats["finals_sent"] >= 4  # type: ignore[index]
    assert len(doc["tick_cpu_ms"]) == len(doc["tick_lag_ms"]) > 0  # type: ignore[arg-type]
    events = [json.loads(line)["event"] for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert events.count("all_live") == 1 and events[-1] == "load_done"


async def test_one_process_rig_starts_the_load_at_sigusr1(tmp_path: Path) -> None:
    with trio.fail_after(60):
        doc, _engine = await drive_engine(tmp_path, calls=2, wait_signal=True)
    assert doc["ok"] == 2


def test_split_charges_the_ticker_to_the_load_generator(tmp_path: Path) -> None:
    load = {"tick_start_wall": 100.0, "tick_step_s": 0.002, "tick_cpu_ms": [0.5] * 1000}
    one = rig_procs.Rig("one-process", 1, 10, tmp_path, "t", rig_procs.RigOptions(
        pin=False, rt=False, load_prio=1, emulator_rt=False, cheap=True, final_ms=150, read_batch_ms=0.0))
    # ticks 100..599 are due in [100.2, 101.2): 500 × 0.5 ms = 250 ms of CPU in 1 s = 25 %
    loadgen_pct, emulator_pct = one.split(load, 100.2, 101.2, [60.0])
    assert abs(loadgen_pct - 25.0) < 1e-9 and abs(emulator_pct - 35.0) < 1e-9
    two = rig_procs.Rig("two-process", 1, 10, tmp_path, "t", one.opts)
    assert two.split(load, 100.2, 101.2, [30.0, 40.0]) == (30.0, 40.0)


def test_spill_reports_how_long_reads_kept_spilling_over() -> None:
    flags = [0] * 1000
    flags[100:105] = [1] * 5  # one run of 5 ticks (10 ms) inside the window
    flags[900:950] = [1] * 50  # a long run outside it
    load = {"tick_start_wall": 0.0, "tick_step_s": 0.002, "tick_deferred": flags}
    p99, worst = rig_procs.spill_ms(load, 0.0, 1.0)  # ticks 0..499
    assert worst == 10.0 and p99 <= 10.0
    assert rig_procs.deferred_pct(load, 0.0, 1.0) == 1.0
    assert rig_procs.spill_ms(load, 0.0, 2.0)[1] == 100.0
    two = {"tick_start_wall": 0.0, "tick_step_s": 0.002, "tick_deferred": []}
    assert all(v != v for v in rig_procs.spill_ms(two, 0.0, 1.0))  # NaN: the two-process rig has none


def test_the_rigs_own_softirq_is_not_other_processes() -> None:
    """Round 7 counted core 1's softirq (the rig's loopback sends) as other processes: a quiet core read 11-33 %
    "others" and every rig run was INVALID. Softirq is the rig's load, not another process's."""
    import capacity

    # 10 s window: core busy 9 s, of which the rig's processes 7 s and softirq 1.8 s -> others 2 %
    assert capacity.core_others_pct(9.0, 7.0, 1.8, 10.0) == pytest.approx(2.0)
    assert capacity.core_others_pct(7.0, 7.0, 0.5, 10.0) == 0.0  # never negative (tick rounding)

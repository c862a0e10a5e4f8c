"""``sori serve --workers``: aggregation (sans-IO), then a real parent with real worker processes."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import trio

from engine.config import ConfigError, build
from engine.twilio.simulator import load_audio, simulate_call, simulate_calls
from engine.workers import Balancer, WorkerState, cgroup_cpu_quota, merge_metrics, ready_reason, resolve_workers, worker_overrides

from .workers_env import workers

DEMO_WAV = os.path.join(os.path.dirname(__file__), "..", "..", "engine", "demo", "call.wav")


def test_merge_metrics_labels_every_sample_and_keeps_families_together() -> None:
    w0 = ('# HELP sori_calls_live calls\n# TYPE sori_calls_live gauge\nsori_calls_live 2\n'
          '# HELP sori_h h\n# TYPE sori_h histogram\nsori_h_bucket{le="1"} 1\nsori_h_sum 0.5\nsori_h_count 1\n'
          '# HELP sori_c c\n# TYPE sori_c counter\nsori_c{result="ok"} 3\n')
    w1 = w0.replace("sori_calls_live 2", "sori_calls_live 5")
    own = "# HELP sori_workers_running up\n# TYPE sori_workers_running gauge\nsori_workers_running 2\n"
    out = merge_metrics({"0": w0, "1": w1}, own).splitlines()
    assert out.count("# TYPE sori_calls_live gauge") == 1 and out.count("# TYPE sori_h histogram") == 1
    assert 'sori_calls_live{worker="0"} 2' in out and 'sori_calls_live{worker="1"} 5' in out
    assert 'sori_h_bucket{worker="1",le="1"} 1' in out and 'sori_h_count{worker="0"} 1' in out
    assert 'sori_c{worker="0",result="ok"} 3' in out and "sori_workers_running 2" in out
    # each family's samples follow its own TYPE line (the text format requires it)
    i, j = out.index("# TYPE sori_h histogram"), out.index("# HELP sori_c c")
    assert all(line.startswith("sori_h") for line in out[i + 1 : j])


def test_balancer_picks_the_least_loaded_ready_worker_round_robin_on_ties() -> None:
    b = Balancer(3)
    assert b.pick() is None and not b.any_ready
    b.up(0)
    b.up(2)
    picks = []
    for _ in range(4):  # ties alternate between the ready workers; worker 1 is not ready
        i = b.pick()
        assert i is not None
        b.handed_to(i)
        picks.append(i)
    assert picks == [0, 2, 0, 2] and b.live == [2, 0, 2]
    b.ended(2, 2)  # worker 2's calls ended: it is the least loaded, twice
    assert b.pick() == 2
    b.handed_to(2)
    assert b.pick() == 2
    b.up(1)
    assert b.pick() == 1  # a (re)started worker starts empty
    b.down(0)
    assert b.live[0] == 0 and b.pick() == 1
    b.ended(1, 5)
    assert b.live[1] == 0  # never negative (a late report after a restart)
    b.down(1)
    b.down(2)
    assert b.pick() is None


def test_handed_fds_parses_scm_rights() -> None:
    import array
    import socket

    from engine.twilio.server import handed_fds

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        r, w = os.pipe()
        try:
            a.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]).tobytes())])
            _, anc, _, _ = b.recvmsg(64, socket.CMSG_SPACE(16 * 4))
            (got,) = handed_fds(anc)
            os.write(w, b"x")
            assert os.read(got, 1) == b"x"
            os.close(got)
        finally:
            os.close(r)
            os.close(w)
    assert handed_fds([]) == []


def test_ready_only_when_every_worker_is_ready() -> None:
    ws = [WorkerState(0, pid=1, admin_port=10, not_ready=None), WorkerState(1, pid=2, admin_port=11, not_ready=None)]
    assert ready_reason(ws, draining=False) is None
    assert ready_reason(ws, draining=True) == "draining"
    ws[1].not_ready = "no pre-warmed RTZR socket yet"
    assert ready_reason(ws, draining=False) == "worker 1: no pre-warmed RTZR socket yet"
    ws[1] = WorkerState(1)
    assert ready_reason(ws, draining=False) == "worker 1: not running (restarting)"


def test_sessions_split_between_workers_without_redis() -> None:
    cfg = build({"rtzr": {"pool": {"max_sessions": 20}}})
    assert "rtzr.pool.max_sessions=5" in worker_overrides(cfg, 4)
    with pytest.raises(ConfigError, match="SORI_REDIS_URL"):
        worker_overrides(build({"rtzr": {"pool": {"max_sessions": 3}}}), 4)
    shared = build({"rtzr": {"pool": {"max_sessions": 3}}, "redis": {"url": "redis://127.0.0.1:6379/0"}})
    assert not any(s.startswith("rtzr.pool.max_sessions") for s in worker_overrides(shared, 4))
    assert resolve_workers("auto") >= 1 and resolve_workers(3) == 3


def test_auto_workers_follow_the_cgroup_cpu_quota(tmp_path: Any) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(cpu_max)) == 2  # 1.5 CPUs: rounded up
    assert resolve_workers("auto", str(cpu_max)) == min(2, resolve_workers("auto", str(tmp_path / "none")))
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_quota(str(cpu_max)) is None
    assert cgroup_cpu_quota(str(tmp_path / "missing")) is None


async def test_metrics_and_readiness_cover_every_worker() -> None:
    with trio.fail_after(90):
        async with workers(2) as parent:
            await parent.wait_ready()
            text = (await parent.get("/metrics")).text
            assert "sori_workers_running 2" in text
            for w in ("0", "1"):
                assert f'sori_rtzr_pool_idle{{worker="{w}"}}' in text
            assert (await parent.get("/livez")).status_code == 200
            parent.signal()
            assert await parent.proc.wait() == 0


async def test_calls_are_split_evenly_between_two_workers() -> None:
    """The parent hands each call to the least-loaded worker: 10 concurrent calls -> 5:5 (± 1). With every
    worker accepting on one shared socket the split was left to the kernel's queue (measured 40:12, 2:42)."""
    audio = load_audio(DEMO_WAV)[: 8000 * 2]
    with trio.fail_after(120):
        async with workers(2) as parent:
            await parent.wait_ready()
            url = f"ws://127.0.0.1:{parent.twilio_port}/twilio/media"
            reports = await simulate_calls(url, audio, calls=10, speed="realtime", trailing_silence_ms=500)
            assert all(r.ok for r in reports), reports
            parent.signal()
            assert await parent.proc.wait() == 0
            started = [e.get("worker") for e in parent.logs if e.get("event") == "twilio_call_started"]
            assert len(started) == 10
            assert abs(started.count(0) - started.count(1)) <= 2, started


async def test_a_killed_worker_is_restarted() -> None:
    with trio.fail_after(120):
        async with workers(2) as parent:
            await parent.wait_ready()
            first = await parent.wait_log(lambda e: e.get("event") == "worker_started" and e.get("worker") == 1)
            mark = len(parent.logs)
            os.kill(first["pid"], signal.SIGKILL)
            await parent.wait_log(lambda e: e.get("event") == "worker_exit" and e.get("worker") == 1, mark)
            again = await parent.wait_log(lambda e: e.get("event") == "worker_started" and e.get("worker") == 1, mark)
            assert again["pid"] != first["pid"]
            await parent.wait_ready()
            assert "sori_worker_restarts_total 1" in (await parent.get("/metrics")).text
            # the parent hands calls to the new worker too (2 concurrent calls: one each)
            mark = len(parent.logs)
            url = f"ws://127.0.0.1:{parent.twilio_port}/twilio/media"
            reports = await simulate_calls(url, load_audio(DEMO_WAV)[:8000], calls=2, speed="realtime")
            assert all(r.ok for r in reports), reports
            served = sorted(e.get("worker") for e in parent.logs[mark:] if e.get("event") == "twilio_call_started")
            assert served == [0, 1]
            parent.signal()
            assert await parent.proc.wait() == 0


async def test_sigterm_drains_a_live_call_on_a_worker() -> None:
    audio = load_audio(DEMO_WAV)[: 8000 * 4]  # μ-law, 4 s: the first phrase ("diary", 0.76–3.1 s)
    with trio.fail_after(120):
        async with workers(2) as parent:
            await parent.wait_ready()
            url = f"ws://127.0.0.1:{parent.twilio_port}/twilio/media"
            report = None

            async def call() -> None:
                nonlocal report
                report = await simulate_call(url, audio, speed="realtime", trailing_silence_ms=1000)

            async with trio.open_nursery() as n:
                n.start_soon(call)
                while "sori_calls_live{worker=" not in (text := (await parent.get("/metrics")).text) or not any(
                        line.startswith("sori_calls_live{") and line.endswith(" 1") for line in text.splitlines()):
                    await trio.sleep(0.05)  # polls the condition: the call is live on a worker
                parent.signal()
                # draining: not ready, but the live call goes on to its end
                while (r := await parent.get("/readyz")).status_code == 200:
                    await trio.sleep(0.05)
                assert "draining" in r.text
            assert report is not None and report.ok, report
            assert await parent.proc.wait() == 0
            finals = [e for e in parent.events if e.get("type") == "transcript.final"]
            assert finals, parent.events


async def test_a_worker_that_cannot_start_stops_the_parent_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No restart loop for what a restart cannot fix (here: the interpreter cannot be executed)."""
    from engine.workers import WorkerPool

    monkeypatch.setattr("sys.executable", "/nonexistent/python")
    cfg = build({"server": {"port": 0, "admin_port": 0}})
    pool = WorkerPool(cfg, 2, ["--stt", "emulator", "--allow-unsigned"], handle_signals=False)
    with trio.fail_after(30):
        code = await pool.run()
    assert code == 127
    assert all(w.starts == 0 for w in pool.workers)


async def test_a_taken_port_is_a_startup_error_before_any_worker() -> None:
    import socket

    from engine.nursery import StartupError
    from engine.workers import WorkerPool

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for server in ({"port": port, "admin_port": 0}, {"port": 0, "admin_port": port}):
            pool = WorkerPool(build({"server": server}), 2, ["--stt", "emulator"], handle_signals=False)
            with trio.fail_after(30), pytest.raises((StartupError, BaseExceptionGroup)) as info:
                await pool.run()
            from engine.nursery import root_cause

            cause = root_cause(info.value)
            assert isinstance(cause, StartupError) and "Address already in use" in str(cause)
            assert all(w.pid is None and not w.exit_codes for w in pool.workers)  # nothing was spawned

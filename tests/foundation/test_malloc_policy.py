"""The daemon's malloc policy (``server.malloc_trim_interval_ms``, engine/memory.py, issue 13 round 5).

glibc keeps what the calls freed in the middle of its heap resident until ``malloc_trim``: the daemon trims
every interval; a C library that is not glibc, or an interval of 0, means no trim (and a log line saying so).
"""

from __future__ import annotations

import platform

import pytest
import trio
import trio.testing

from engine import memory
from engine.app import Engine, apply_memory_policy, run_engine
from engine.config import Config, ConfigError, cli_overrides, load
from engine.rtzr.emulator.local import in_process


def make_config(*assignments: str) -> Config:
    return load(environ={}, cli=cli_overrides(["server.port=0", "server.admin_port=0", *assignments]))


def test_the_interval_is_configurable_and_0_turns_the_trim_off() -> None:
    assert make_config().server.malloc_trim_interval_ms == 10_000
    assert make_config("server.malloc_trim_interval_ms=0").server.malloc_trim_interval_ms == 0
    with pytest.raises(ConfigError, match="malloc_trim_interval_ms"):
        make_config("server.malloc_trim_interval_ms=-1")
    trim, said = memory.malloc_policy(0)
    assert trim is None and "off" in said


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_on_glibc_the_trim_is_glibcs_and_runs() -> None:
    trim, said = memory.malloc_policy(5_000)
    assert trim is not None and said == "malloc_trim(0) every 5000 ms"
    assert trim() in (0, 1)


def test_without_glibc_there_is_no_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.glibc_malloc_trim() is None
    trim, said = memory.malloc_policy(10_000)
    assert trim is None and "not glibc" in said


def test_the_daemon_logs_its_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[dict[str, object]] = []

    class Log:
        def info(self, event: str, **fields: object) -> None:
            said.append({"event": event, **fields})

    monkeypatch.setattr("engine.app.log", Log())
    apply_memory_policy(make_config("server.malloc_trim_interval_ms=0").server)
    assert said == [{"event": "malloc_policy", "policy": "malloc_trim off (server.malloc_trim_interval_ms = 0)"}]


async def test_the_trim_runs_once_per_interval(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    def trim() -> int:
        times.append(trio.current_time())
        return 1

    with trio.move_on_after(35):
        await memory.trim_heap_every(10.0, trim)
    assert times == [10.0, 20.0, 30.0]


async def test_the_daemon_path_runs_the_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed = trio.Event()

    def fake_policy(interval_ms: int) -> tuple[object, str]:
        return (lambda: trimmed.set() or 1), f"fake every {interval_ms} ms"

    monkeypatch.setattr("engine.app.malloc_policy", fake_policy)
    config = make_config("server.allow_unsigned=true", "sinks.jsonl=", "server.gc_policy=default",
                         "server.malloc_trim_interval_ms=10")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine: Engine = await nursery.start(
                lambda task_status: run_engine(config, in_process(), task_status=task_status))
            await trimmed.wait()  # the daemon's trim task runs (no GC freeze asked: it starts at once)
            engine.shutdown()

"""The daemon's garbage-collector policy (``server.gc_policy``, issue 13).

The collector is process-wide, so only the daemon path (``sori serve`` → ``engine.app.run_engine``) may
change it; ``engine.app.serve``, the embedding API that tests and embedders run many times in one
process, must leave it as it found it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from engine.app import GC_THROUGHPUT_THRESHOLDS, Engine, apply_gc_policy, run_engine, serve
from engine.config import Config, ConfigError, cli_overrides, load
from engine.rtzr.emulator.local import in_process


def make_config(*assignments: str) -> Config:
    return load(environ={}, cli=cli_overrides([
        "server.port=0", "server.admin_port=0", "server.allow_unsigned=true", "sinks.jsonl=", *assignments,
    ]))


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[tuple[int, int, int]]:
    """Every test starts from an unfrozen heap and CPython's thresholds, and leaves the process so."""
    saved = gc.get_threshold()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    try:
        yield saved
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


def test_daemon_default_is_throughput() -> None:
    assert make_config().server.gc_policy == "throughput"
    assert make_config("server.gc_policy=default").server.gc_policy == "default"
    with pytest.raises(ConfigError, match="gc_policy"):
        make_config("server.gc_policy=fast")


def test_apply_throughput_sets_the_thresholds_and_asks_for_a_freeze() -> None:
    assert apply_gc_policy("throughput") is True
    assert gc.get_threshold() == GC_THROUGHPUT_THRESHOLDS


def test_apply_default_leaves_the_collector_alone() -> None:
    gc.set_threshold(1234, 5, 6)
    assert apply_gc_policy("default") is False
    assert gc.get_threshold() == (1234, 5, 6)


async def _started(nursery: trio.Nursery, daemon: bool, config: Config) -> Engine:
    engine: Engine
    if daemon:
        engine = await nursery.start(lambda task_status: run_engine(config, in_process(), task_status=task_status))
    else:
        engine = await nursery.start(lambda task_status: serve(config, stt=in_process(), handle_signals=False,
                                                                task_status=task_status))
    return engine


async def _ready_and_settled(engine: Engine) -> None:
    await engine.wait_ready()
    # The freeze (if any) runs in its own task as soon as the engine is ready: let every task run until blocked.
    await trio.testing.wait_all_tasks_blocked()


async def test_daemon_path_applies_throughput_and_freezes_once_ready() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await _started(nursery, True, make_config())
            assert gc.get_threshold() == GC_THROUGHPUT_THRESHOLDS
            await _ready_and_settled(engine)
            assert gc.get_freeze_count() > 0
            engine.shutdown()


async def test_daemon_path_with_default_policy_changes_nothing() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await _started(nursery, True, make_config("server.gc_policy=default"))
            await _ready_and_settled(engine)
            assert gc.get_threshold() == (700, 10, 10)
            assert gc.get_freeze_count() == 0
            engine.shutdown()


async def test_embedding_path_never_touches_the_collector() -> None:
    # The config asks for "throughput", but serve() is the embedding API: the policy is the daemon's alone.
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine = await _started(nursery, False, make_config("server.gc_policy=throughput"))
            await _ready_and_settled(engine)
            assert gc.get_threshold() == (700, 10, 10)
            assert gc.get_freeze_count() == 0
            engine.shutdown()

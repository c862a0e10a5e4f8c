"""The diagnostic task-step instrument (engine/task_steps.py): what runs between the ingest reactor's passes."""

from __future__ import annotations

import itertools

import pytest
import trio

from engine import task_steps
from engine.metrics import Registry
from engine.task_steps import TaskSteps, task_label


def test_a_task_label_is_its_function_without_arguments_or_addresses() -> None:
    assert task_label("engine.call.Call._transcribe") == "engine.call.Call._transcribe"
    assert task_label("functools.partial(<function f at 0x7f>, 3)") == "functools.partial"
    assert task_label("<bound method X.run of <X object at 0x7f>>") == "?"


def test_steps_are_timed_by_task_and_the_slow_ones_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every perf_counter read is 1 ms after the previous one: each step times 1 ms, except the first step of
    ``slow``, which reads the clock 4 more times inside (a 5 ms step)."""
    ticks = itertools.count()
    monkeypatch.setattr(task_steps.time, "perf_counter", lambda: next(ticks) / 1000)
    registry = Registry()

    async def slow() -> None:
        for _ in range(4):
            task_steps.time.perf_counter()
        await trio.lowlevel.checkpoint()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow, name="demo.slow")

    trio.run(main, instruments=[TaskSteps(registry, slow_ms=3)])
    # demo.slow: two steps (to its checkpoint, then to its end), 5 ms and 1 ms; one at least 3 ms
    assert registry.value("task_steps_total", "task=demo.slow") == 2
    assert registry.value("task_step_seconds_total", "task=demo.slow") == pytest.approx(0.006)
    slow_ms = registry.histogram("task_slow_step_ms", "", "task=demo.slow", buckets=task_steps.SLOW_BUCKETS_MS)
    assert slow_ms.count == 1 and slow_ms.sum == pytest.approx(5.0)
    assert "sori_task_steps_total{task=\"demo.slow\"} 2" in registry.render()

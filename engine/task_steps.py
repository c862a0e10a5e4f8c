"""A diagnostic Trio instrument: what runs between the ingest reactor's passes, by task name (issue 13).

A frame waiting in its socket waits for every task step Trio runs before it wakes the reactor (the ``between``
part of engine/twilio/late.py): STT tasks, the RTZR pool, the token refresh, the heap trim, sinks. This
instrument times every task step (two ``perf_counter`` reads and a dict look-up per step: a few % of the engine
at 300 calls, so off by default: ``server.task_steps_slow_ms`` > 0 turns it on for ``sori serve``) and keeps,
by task name, the steps and their total time (``sori_task_steps_total``, ``sori_task_step_seconds_total``) and
the steps of at least ``slow_ms`` (``sori_task_slow_step_ms``, a histogram).
"""

from __future__ import annotations

import re
import time
from typing import Final

import trio

from engine.metrics import Counter, Histogram, Registry

SLOW_BUCKETS_MS: Final = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 100, 200, 500)
# A task's name is its function's qualified name, or the repr of a partial / bound method: its addresses and
# arguments would make one label per task.
_VARYING: Final = re.compile(r"[ (<].*$")


def task_label(name: str) -> str:
    """The metric label of a task named ``name``: the function's qualified name, without arguments or addresses."""
    return _VARYING.sub("", name) or "?"


class TaskSteps(trio.abc.Instrument):
    """Times every task step (see the module docstring); install with ``trio.lowlevel.add_instrument``."""

    def __init__(self, registry: Registry, slow_ms: float) -> None:
        self.registry = registry
        self.slow_ms = slow_ms
        self._started = 0.0
        self._by_name: dict[str, tuple[Counter, Counter, Histogram]] = {}

    def _metrics(self, name: str) -> tuple[Counter, Counter, Histogram]:
        label = f"task={task_label(name)}"
        found = self._by_name[name] = (
            self.registry.counter("task_steps_total", "Trio task steps (diagnostic: server.task_steps_slow_ms)", label),
            self.registry.counter("task_step_seconds_total", "time in Trio task steps (diagnostic)", label),
            self.registry.histogram("task_slow_step_ms", "Trio task steps of at least server.task_steps_slow_ms "
                                    "(diagnostic)", label, buckets=SLOW_BUCKETS_MS))
        return found

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._started
        found = self._by_name.get(task.name)
        steps, seconds, slow = found if found is not None else self._metrics(task.name)
        steps.value += 1
        seconds.value += took
        if took * 1000 >= self.slow_ms:
            slow.observe(took * 1000)

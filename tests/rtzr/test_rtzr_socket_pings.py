"""Issue 13 (memory per call): the RTZR socket is one task, its reader doubling as the pinger. Pings still keep a
quiet socket open and still detect a server that stopped answering."""

from __future__ import annotations

import trio

from engine.rtzr.emulator.config import Fault
from engine.rtzr.stream import RtzrSocket

from .rtzr_env import stack, wait_for


def _tasks_of(nursery: trio.Nursery) -> list[trio.lowlevel.Task]:
    found: list[trio.lowlevel.Task] = []
    for task in nursery.child_tasks:
        found.append(task)
        for child in task.child_nurseries:
            found.extend(_tasks_of(child))
    return found


async def test_a_quiet_socket_is_one_task_and_its_pings_are_answered() -> None:
    with trio.fail_after(20):
        async with stack(ping_interval_ms=50) as s:
            before = set(_tasks_of(s.nursery))
            sock = await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            mine = [t.name for t in _tasks_of(s.nursery) if t not in before and t.name.startswith("engine.rtzr")]
            assert mine == ["engine.rtzr.stream.RtzrSocket._run"], mine  # before: _run and _pinger
            await wait_for(lambda: sock.pings_answered >= 3, timeout=15)
            assert sock.is_open and sock.usable
            await sock.close()


async def test_a_server_that_stops_answering_pings_loses_the_socket() -> None:
    with trio.fail_after(20):
        async with stack(ping_interval_ms=100) as s:
            s.emulator.inject(Fault.stall())
            sock = await RtzrSocket.connect(s.config, s.tokens, s.budgets, s.metrics, s.nursery)
            await sock.wait_closed()
            assert sock.close_reason == "ping timeout"
            assert sock.pings_answered == 0

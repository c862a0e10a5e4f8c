"""Assembles the engine's services under the supervisor (filled in as components land)."""

from __future__ import annotations

import trio

from engine.admin import AdminServer
from engine.budgets import Budgets
from engine.config import Config
from engine.metrics import Registry
from engine.nursery import Supervisor


async def run_engine(
    config: Config, stt: str = "rtzr", *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
) -> None:
    metrics = Registry()
    budgets = Budgets(config.budgets)
    supervisor: Supervisor
    admin = AdminServer(config.server.admin_host, config.server.admin_port, metrics, lambda: supervisor.draining.is_set())
    supervisor = Supervisor([admin], budgets=budgets, metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        task_status.started(supervisor)

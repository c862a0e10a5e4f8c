"""Shared helpers for the RTZR client integration tests: an emulator plus a client stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio

from engine.budgets import Budgets
from engine.config import BudgetsConfig, PoolConfig, RtzrConfig
from engine.metrics import Registry
from engine.rtzr.auth import TokenManager
from engine.rtzr.emulator.config import EmulatorConfig
from engine.rtzr.emulator.server import Emulator
from engine.rtzr.pool import RtzrPool

RATE = 8000


def tone(ms: int, *, freq: float = 440.0, amp: int = 8000, rate: int = RATE) -> bytes:
    """LINEAR16 audio the emulator's energy end-point detector counts as speech."""
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * freq * t) * amp).astype("<i2").tobytes()


def silence(ms: int, rate: int = RATE) -> bytes:
    return bytes(2 * rate * ms // 1000)


def emulator_config(**kw: Any) -> EmulatorConfig:
    base: dict[str, Any] = {"handshake_ms": 5, "final_ms": 20, "interim_ms": 100, "max_sessions": 5}
    base.update(kw)
    return EmulatorConfig(**base)


@dataclass
class Stack:
    emulator: Emulator
    config: RtzrConfig
    budgets: Budgets
    metrics: Registry
    tokens: TokenManager
    nursery: trio.Nursery
    emulator_scope: trio.CancelScope
    emulator_done: trio.Event

    async def stop_emulator(self) -> None:
        self.emulator_scope.cancel()
        await self.emulator_done.wait()

    async def start_emulator(self, emu: Emulator) -> None:
        self.emulator = emu
        self.emulator_scope, self.emulator_done = await self.nursery.start(_scoped, emu)


async def _scoped(emu: Emulator, *, task_status: Any) -> None:
    """Run an emulator in its own cancel scope so a test can stop and restart it."""
    done = trio.Event()
    try:
        with trio.CancelScope() as scope:

            async def started(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                await emu.run(task_status=task_status)

            async with trio.open_nursery() as n:
                await n.start(started)
                task_status.started((scope, done))
    finally:
        done.set()


def client_config(emu: Emulator, emu_cfg: EmulatorConfig, **pool: Any) -> RtzrConfig:
    return RtzrConfig(
        api_base=emu.api_base,
        ws_url=emu.ws_url,
        client_id=emu_cfg.client_id,
        client_secret=emu_cfg.client_secret,
        pool=PoolConfig(**pool),
    )


@asynccontextmanager
async def stack(
    emu_cfg: EmulatorConfig | None = None, *, budgets: BudgetsConfig | None = None, **pool: Any
) -> AsyncIterator[Stack]:
    """Emulator + TokenManager running in one nursery; cancelled on exit."""
    emu_cfg = emu_cfg or emulator_config()
    emu = Emulator(emu_cfg)
    async with trio.open_nursery() as nursery:
        scope, done = await nursery.start(_scoped, emu)
        metrics = Registry()
        config = client_config(emu, emu_cfg, **pool)
        b = Budgets(budgets or BudgetsConfig())
        tokens = TokenManager(config, b, metrics)
        await nursery.start(tokens.run)
        yield Stack(emu, config, b, metrics, tokens, nursery, scope, done)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_pool(s: Stack) -> AsyncIterator[RtzrPool]:
    pool = RtzrPool(s.config, s.tokens, s.budgets, s.metrics)
    async with trio.open_nursery() as n:
        await n.start(pool.run)
        yield pool
        n.cancel_scope.cancel()


async def wait_for(predicate: Any, timeout: float = 5.0, step: float = 0.01) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)

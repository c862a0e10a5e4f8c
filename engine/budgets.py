"""Deadline budgets: every network await is written as ``with budgets.connect(): ...``.

An expired budget raises :class:`BudgetExpired` naming the budget, so callers can report
*which* deadline passed (an error event and a metric) instead of hanging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from engine.config import BudgetsConfig


class BudgetExpired(Exception):
    """A deadline from the budgets config passed before the awaited operation finished."""

    def __init__(self, budget: str, ms: int) -> None:
        super().__init__(f"budget '{budget}' ({ms} ms) expired")
        self.budget = budget
        self.ms = ms


class Budget:
    """One named deadline; calling it opens a cancel scope that raises BudgetExpired on expiry."""

    __slots__ = ("ms", "name")

    def __init__(self, name: str, ms: int) -> None:
        self.name = name
        self.ms = ms

    @property
    def seconds(self) -> float:
        return self.ms / 1000.0

    @contextmanager
    def __call__(self, *, shield: bool = False) -> Iterator[trio.CancelScope]:
        """Bound the body by this budget; ``shield`` for cleanups that must finish."""
        with trio.move_on_after(self.seconds, shield=shield) as scope:
            yield scope
        if scope.cancelled_caught:
            raise BudgetExpired(self.name, self.ms)

    def __repr__(self) -> str:
        return f"Budget({self.name}={self.ms}ms)"


class Budgets:
    """The named budgets of the config, as callables: ``with budgets.finalize(): ...``."""

    def __init__(self, config: BudgetsConfig | None = None) -> None:
        cfg = config or BudgetsConfig()
        self.auth = Budget("auth", cfg.auth)
        self.connect = Budget("connect", cfg.connect)
        self.lease = Budget("lease", cfg.lease)
        self.finalize = Budget("finalize", cfg.finalize)
        self.send = Budget("send", cfg.send)
        self.twilio_start = Budget("twilio_start", cfg.twilio_start)
        self.drain = Budget("drain", cfg.drain)

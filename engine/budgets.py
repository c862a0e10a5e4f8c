"""Deadline budgets: every network await is written as ``with budgets.connect(): ...``.

An expired budget raises :class:`BudgetExpired` naming the budget, so callers can report
*which* deadline passed (an error event and a metric) instead of hanging.
"""

from __future__ import annotations

from types import TracebackType

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

    def __call__(self, *, shield: bool = False) -> _BudgetScope:
        """Bound the body by this budget; ``shield`` for cleanups that must finish."""
        return _BudgetScope(self, shield)

    def __repr__(self) -> str:
        return f"Budget({self.name}={self.ms}ms)"


class _BudgetScope:
    """The context manager behind ``with budget():`` (a class: cheaper than a generator on hot paths)."""

    __slots__ = ("_budget", "_scope")

    def __init__(self, budget: Budget, shield: bool) -> None:
        self._budget = budget
        self._scope = trio.move_on_after(budget.seconds, shield=shield)

    def __enter__(self) -> trio.CancelScope:
        return self._scope.__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # The scope only swallows its own Cancelled, and then we raise: nothing is ever suppressed silently.
        self._scope.__exit__(exc_type, exc, tb)
        if self._scope.cancelled_caught:
            raise BudgetExpired(self._budget.name, self._budget.ms)


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

"""Shared test fixtures."""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """A MockClock that jumps ahead whenever every task is blocked: timeouts run instantly."""
    return trio.testing.MockClock(autojump_threshold=0)

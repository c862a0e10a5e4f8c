"""Budgets name what expired; metrics render Prometheus text; logs are JSON lines without secrets."""

from __future__ import annotations

import io
import json

import pytest
import trio
import trio.testing

from engine.budgets import BudgetExpired, Budgets
from engine.config import BudgetsConfig
from engine.log import add_secret, get_logger, setup_logging
from engine.metrics import Registry


async def test_budget_expiry_names_the_budget(autojump_clock: trio.testing.MockClock) -> None:
    b = Budgets(BudgetsConfig(connect=3000))
    t0 = trio.current_time()
    with pytest.raises(BudgetExpired) as info:
        with b.connect():
            await trio.sleep(10)
    assert info.value.budget == "connect" and info.value.ms == 3000
    assert trio.current_time() - t0 == pytest.approx(3.0)


async def test_budget_passes_through_when_in_time(autojump_clock: trio.testing.MockClock) -> None:
    b = Budgets()
    with b.finalize():
        await trio.sleep(1.9)


async def test_nested_budgets_report_the_inner_one(autojump_clock: trio.testing.MockClock) -> None:
    b = Budgets()
    with pytest.raises(BudgetExpired) as info:
        with b.drain():
            with b.lease():
                await trio.sleep(100)
    assert info.value.budget == "lease"


def test_metrics_render_prometheus_text() -> None:
    r = Registry()
    r.counter("finals_total", "finals", "outcome=ok").inc()
    r.counter("finals_total", "finals", "outcome=ok").inc()
    r.gauge("pool_open", "open sockets").set(3)
    h = r.histogram("lease_ms", "lease wait", buckets=(1, 10))
    for v in (0.5, 5, 50):
        h.observe(v)
    text = r.render()
    assert 'sori_finals_total{outcome="ok"} 2' in text
    assert "sori_pool_open 3" in text
    assert 'sori_lease_ms_bucket{le="1"} 1' in text
    assert 'sori_lease_ms_bucket{le="10"} 2' in text
    assert 'sori_lease_ms_bucket{le="+Inf"} 3' in text
    assert "sori_lease_ms_count 3" in text
    assert "# TYPE sori_lease_ms histogram" in text
    with pytest.raises(ValueError):
        r.gauge("finals_total", "x", "outcome=ok")


def test_logs_are_json_lines_and_redact_secrets() -> None:
    out = io.StringIO()
    setup_logging("debug", secrets=["client-secret-123"], stream=out)
    add_secret("eyJ.token.value")
    log = get_logger("test")
    log.info("auth_ok", detail="got eyJ.token.value with client-secret-123", call_sid="CA1")
    log.error("failed", exc=RuntimeError("bad secret client-secret-123"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["event"] == "auth_ok" and first["call_sid"] == "CA1" and first["level"] == "info"
    assert "ts" in first
    assert "client-secret-123" not in out.getvalue() and "eyJ.token.value" not in out.getvalue()
    assert json.loads(lines[1])["error"].startswith("RuntimeError")

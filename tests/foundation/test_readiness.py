"""Liveness vs readiness: /livez, /readyz (and its alias /healthz), sans-IO through AdminServer.respond."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from engine.admin import AdminServer, Readiness
from engine.app import engine_readiness
from engine.budgets import Budgets
from engine.config import BudgetsConfig
from engine.log import add_secret
from engine.metrics import Registry
from engine.nursery import Supervisor

REASONS = [
    "draining",
    "RTZR authentication failed: RTZR rejected the credentials (401)",
    "no valid RTZR token yet",
    "Twilio listener not bound",
    "RTZR pool not running",
    "no pre-warmed RTZR socket",
]


def admin_with(reason: str | None) -> AdminServer:
    return AdminServer("127.0.0.1", 0, Registry(), lambda: reason)


@pytest.mark.parametrize("path", ["/readyz", "/healthz", "/readyz?verbose=1"])
@pytest.mark.parametrize("reason", REASONS)
def test_not_ready_is_503_with_the_reason_as_plain_text(path: str, reason: str) -> None:
    status, ctype, body = admin_with(reason).respond("GET", path)
    assert status == 503 and ctype.startswith("text/plain")
    assert body == f"{reason}\n".encode()


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
def test_ready_is_200_ok(path: str) -> None:
    assert admin_with(None).respond("GET", path) == (200, "text/plain", b"ok\n")
    assert admin_with(None).respond("HEAD", path)[0] == 200


@pytest.mark.parametrize("reason", [None, *REASONS])
def test_livez_answers_200_whatever_readiness_says(reason: str | None) -> None:
    assert admin_with(reason).respond("GET", "/livez") == (200, "text/plain", b"ok\n")


def test_a_reason_is_one_line_and_never_shows_a_secret() -> None:
    add_secret("s3cret-client-value")
    _, _, body = admin_with("RTZR authentication failed:\nbad s3cret-client-value").respond("GET", "/readyz")
    assert body == b"RTZR authentication failed: bad ***\n"


def test_a_failing_check_is_itself_a_reason_not_a_crash() -> None:
    def broken() -> str | None:
        raise KeyError("oops")

    status, _, body = admin_with(None).respond("GET", "/livez")
    assert status == 200
    status, _, body = AdminServer("127.0.0.1", 0, Registry(), broken).respond("GET", "/readyz")
    assert status == 503 and body == b"readiness check failed: KeyError\n"


def test_readiness_reports_the_first_failing_check_in_order() -> None:
    state: dict[str, str | None] = {"a": None, "b": "b down", "c": "c down"}
    readiness = Readiness([lambda: state["a"], lambda: state["b"], lambda: state["c"]])
    assert readiness.reason() == "b down"
    state["a"] = "a down"
    assert readiness.reason() == "a down"
    state.update(a=None, b=None, c=None)
    assert readiness.reason() is None


class Twilio:
    name = "twilio"

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()


async def test_engine_readiness_checks_draining_token_listener_pool_in_that_order(
        autojump_clock: trio.testing.MockClock) -> None:
    tokens = SimpleNamespace(not_ready_reason=lambda: tokens.reason, reason="no valid RTZR token yet")
    pool = SimpleNamespace(not_ready_reason=lambda: pool.reason, reason="no pre-warmed RTZR socket")
    twilio = Twilio()
    sup = Supervisor([twilio], budgets=Budgets(BudgetsConfig()), handle_signals=False)
    readiness = engine_readiness(sup, tokens, twilio, pool)  # type: ignore[arg-type]  # stand-ins for the checks
    admin = AdminServer("127.0.0.1", 0, Registry(), readiness.reason)

    def readyz() -> tuple[int, bytes]:
        status, _, body = admin.respond("GET", "/readyz")
        return status, body

    assert readyz() == (503, b"no valid RTZR token yet\n")
    tokens.reason = None
    assert readyz() == (503, b"Twilio listener not bound\n")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert readyz() == (503, b"no pre-warmed RTZR socket\n")
            pool.reason = None
            assert readyz() == (200, b"ok\n")
            with trio.fail_after(1):
                await readiness.wait()
            sup.request_shutdown()
            await sup.draining.wait()
            assert readyz() == (503, b"draining\n")
    assert readyz() == (503, b"draining\n")

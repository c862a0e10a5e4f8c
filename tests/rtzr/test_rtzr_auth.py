"""TokenManager: refresh timing under MockClock, single-flight, backoff, 4xx fail-fast and recovery, restarts."""

from __future__ import annotations

import contextlib

import httpx
import pytest
import trio
import trio.testing

from engine.budgets import Budgets
from engine.config import BudgetsConfig, RtzrConfig
from engine.log import redactor
from engine.metrics import Registry
from engine.rtzr.auth import RtzrAuthError, TokenManager, backoff_delay

EPOCH = 1_700_000_000.0


class _Pulse:
    """An event that can fire many times: ``wait()`` returns at the next ``pulse()``."""

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    def pulse(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()


class FakeAuth:
    """An /v1/authenticate handler scripted per request; wall time follows the trio clock."""

    def __init__(self, lifetime_s: float = 6 * 3600, statuses: list[int] | None = None) -> None:
        self.lifetime_s = lifetime_s
        self.statuses = list(statuses or [])
        self.calls: list[float] = []
        self.answered = _Pulse()

    def wall(self) -> float:
        return EPOCH + trio.current_time()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(trio.current_time())
        assert request.url.path == "/v1/authenticate"
        assert b"client_secret=s3cret" in request.content
        status = self.statuses.pop(0) if self.statuses else 200
        self.answered.pulse()
        if status != 200:
            return httpx.Response(status, json={"code": "H0002" if status == 401 else "E500", "msg": "x"})
        n = len(self.calls)
        return httpx.Response(200, json={"access_token": f"tok-{n}-abcdef", "expire_at": int(self.wall() + self.lifetime_s)})


def make(fake: FakeAuth, **cfg: object) -> tuple[TokenManager, httpx.AsyncClient]:
    config = RtzrConfig(api_base="http://auth.test", client_id="id", client_secret="s3cret", **cfg)  # type: ignore[arg-type]
    client = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    tm = TokenManager(config, Budgets(BudgetsConfig()), Registry(), client=client, wall=fake.wall, rand=lambda: 0.5)
    return tm, client


async def test_refresh_before_expiry_not_after(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth(lifetime_s=6 * 3600)
    tm, client = make(fake)
    async with client, trio.open_nursery() as n:
        await n.start(tm.run)
        first = await tm.get()
        assert first.value == "tok-1-abcdef"
        assert "tok-1-abcdef" in redactor._secrets
        # just before expire_at - margin (5.5 h): still the first token, no second request
        await trio.sleep(5.5 * 3600 - 10)
        assert len(fake.calls) == 1
        await trio.sleep(20)
        assert len(fake.calls) == 2
        refreshed_at = fake.calls[1]
        assert refreshed_at < first.expire_at - EPOCH - 1700  # well before expiry, not after
        second = await tm.get()
        assert second.value == "tok-2-abcdef" and second.expire_at > first.expire_at
        n.cancel_scope.cancel()


async def test_short_lived_token_refreshes_at_half_life(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth(lifetime_s=60)  # shorter than the 30 min margin
    tm, client = make(fake)
    async with client, trio.open_nursery() as n:
        await n.start(tm.run)
        await tm.get()
        await trio.sleep(200)
        # refreshes every ~30 s, never in a busy loop
        assert 6 <= len(fake.calls) <= 8
        n.cancel_scope.cancel()


async def test_single_flight_invalidate(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth()
    tm, client = make(fake)
    got: list[str] = []
    async with client, trio.open_nursery() as n:
        await n.start(tm.run)
        stale = await tm.get()

        async def refresh() -> None:
            got.append((await tm.invalidate_and_refresh(stale)).value)

        async with trio.open_nursery() as inner:
            for _ in range(30):
                inner.start_soon(refresh)
        assert len(fake.calls) == 2
        assert set(got) == {"tok-2-abcdef"}
        # a caller holding the already-replaced token gets the current one without a fetch
        assert (await tm.invalidate_and_refresh(stale)).value == "tok-2-abcdef"
        assert len(fake.calls) == 2
        n.cancel_scope.cancel()


async def test_started_while_endpoint_down_then_backoff(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth(statuses=[500, 503, 500, 500, 500])
    tm, client = make(fake, auth_retry_base_ms=500, auth_retry_max_ms=2000)
    async with client, trio.open_nursery() as n:
        with trio.fail_after(1):
            await n.start(tm.run)  # started promptly even though the first fetch will fail
        with trio.fail_after(60):
            token = await tm.get()
        assert token.value == "tok-6-abcdef"
        gaps = [b - a for a, b in zip(fake.calls, fake.calls[1:], strict=False)]
        # jitter fixed at 0.5 -> 75 % of 0.5, 1, 2, 2, 2 s
        assert gaps == pytest.approx([0.375, 0.75, 1.5, 1.5, 1.5])
        n.cancel_scope.cancel()


async def test_network_error_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"access_token": "tok-net-ok", "expire_at": int(EPOCH + trio.current_time() + 3600)})

    config = RtzrConfig(api_base="http://auth.test", client_id="id", client_secret="s3cret")
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    tm = TokenManager(config, Budgets(), Registry(), client=client, wall=lambda: EPOCH + trio.current_time())
    async with client, trio.open_nursery() as n:
        await n.start(tm.run)
        with trio.fail_after(30):
            assert (await tm.get()).value == "tok-net-ok"
        n.cancel_scope.cancel()


async def _rejected_get(tm: TokenManager) -> str:
    """``get()`` must fail fast (no virtual time passes) with RtzrAuthError; returns its message."""
    before = trio.current_time()
    with pytest.raises(RtzrAuthError) as info:
        await tm.get()
    assert trio.current_time() == before
    return str(info.value)


async def _wait_for_fetch(fake: FakeAuth, count: int) -> None:
    """Wait (condition, not time) until the fake has answered ``count`` requests and the runner settled."""
    while len(fake.calls) < count:
        await fake.answered.wait()
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_4xx_fails_fast_then_retry_recovers(status: int, autojump_clock: trio.testing.MockClock) -> None:
    # A 403 from a proxy (or a 401 while credentials are rotated) must not disable auth for good.
    fake = FakeAuth(statuses=[status])
    tm, client = make(fake)
    errors: list[str] = []

    async def early_user() -> None:  # already waiting in get() when the 4xx arrives
        with pytest.raises(RtzrAuthError) as info:
            await tm.get()
        errors.append(str(info.value))
        assert trio.current_time() < 0.375  # woken by the rejection, not by a later retry

    with trio.fail_after(60):
        async with client, trio.open_nursery() as n:
            n.start_soon(early_user)
            await trio.testing.wait_all_tasks_blocked()
            await n.start(tm.run)
            await _wait_for_fetch(fake, 1)
            assert errors and f"HTTP {status}" in errors[0] and "client_secret" in errors[0]
            assert f"HTTP {status}" in await _rejected_get(tm)
            reason = tm.not_ready_reason()
            assert reason is not None and f"HTTP {status}" in reason and "retrying" in reason
            await _wait_for_fetch(fake, 2)  # the manager retried on its own
            assert fake.calls[1] - fake.calls[0] == pytest.approx(0.375)  # backoff, jitter fixed at 0.5
            token = await tm.get()
            assert token.value == "tok-2-abcdef"
            assert tm.not_ready_reason() is None
            n.cancel_scope.cancel()


async def test_persistent_rejection_retries_with_capped_backoff(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth(statuses=[401] * 6)
    tm, client = make(fake, auth_retry_base_ms=500, auth_retry_max_ms=2000)
    with trio.fail_after(60):
        async with client, trio.open_nursery() as n:
            await n.start(tm.run)
            for count in range(1, 7):
                await _wait_for_fetch(fake, count)
                assert "HTTP 401 H0002" in await _rejected_get(tm)
            await _wait_for_fetch(fake, 7)
            assert (await tm.get()).value == "tok-7-abcdef"
            gaps = [b - a for a, b in zip(fake.calls, fake.calls[1:], strict=False)]
            assert gaps == pytest.approx([0.375, 0.75, 1.5, 1.5, 1.5, 1.5])  # capped, never a busy loop
            n.cancel_scope.cancel()


async def test_rejected_refresh_keeps_valid_token_until_it_expires(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth(lifetime_s=3600, statuses=[200] + [403] * 10_000)
    tm, client = make(fake, token_margin_ms=600_000, auth_retry_max_ms=60_000)
    with trio.fail_after(2 * 3600):
        async with client, trio.open_nursery() as n:
            await n.start(tm.run)
            first = await tm.get()
            await _wait_for_fetch(fake, 2)  # the refresh at expiry - 10 min is rejected
            assert trio.current_time() == pytest.approx(3000)
            # the current token is still good: calls go on, and the engine is still ready
            assert (await tm.get()).value == first.value
            assert tm.not_ready_reason() is None
            await trio.sleep_until(3600)  # past expiry: now get() fails fast and readiness says why
            assert "HTTP 403" in await _rejected_get(tm)
            reason = tm.not_ready_reason()
            assert reason is not None and "HTTP 403" in reason
            n.cancel_scope.cancel()


async def test_transient_error_after_rejection_waits_again(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth(statuses=[403, 503])
    tm, client = make(fake)
    with trio.fail_after(60):
        async with client, trio.open_nursery() as n:
            await n.start(tm.run)
            await _wait_for_fetch(fake, 1)
            await _rejected_get(tm)
            await _wait_for_fetch(fake, 2)
            reason = tm.not_ready_reason()
            assert reason is not None and "HTTP 503" in reason and "rejected" not in reason
            assert (await tm.get()).value == "tok-3-abcdef"  # waits (no fail-fast) through a 5xx
            n.cancel_scope.cancel()


async def test_restarted_run_comes_back_whole(autojump_clock: trio.testing.MockClock) -> None:
    # What the supervisor does: the first run() ends after a rejection, a new run() is started.
    fake = FakeAuth(statuses=[403])
    tm, client = make(fake)

    async def run_once(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(RtzrAuthError):  # the old code raised here; the new one keeps going
            await tm.run(task_status=task_status)

    with trio.fail_after(60):
        async with client:
            async with trio.open_nursery() as n:
                await n.start(run_once)
                await _wait_for_fetch(fake, 1)
                await _rejected_get(tm)
                n.cancel_scope.cancel()
            async with trio.open_nursery() as n:
                await n.start(run_once)  # the restart: fresh state, first fetch succeeds
                assert (await tm.get()).value == "tok-2-abcdef"
                assert tm.not_ready_reason() is None
                n.cancel_scope.cancel()


async def test_restart_wakes_callers_waiting_on_the_old_run(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth(statuses=[503] * 100)
    tm, client = make(fake, auth_retry_max_ms=1000)
    got: list[str] = []

    async def user() -> None:
        got.append((await tm.get()).value)

    with trio.fail_after(600):
        async with client, trio.open_nursery() as outer:
            async with trio.open_nursery() as n:
                await n.start(tm.run)
                outer.start_soon(user)  # waits through the 5xx, across the restart
                await _wait_for_fetch(fake, 3)
                n.cancel_scope.cancel()
            fake.statuses.clear()
            async with trio.open_nursery() as n:
                await n.start(tm.run)
                await _wait_for_fetch(fake, 4)
                assert got == ["tok-4-abcdef"]
                n.cancel_scope.cancel()


def test_not_ready_reason_before_run() -> None:
    tm = TokenManager(RtzrConfig(client_id="id", client_secret="s3cret"), Budgets(), Registry())
    assert tm.not_ready_reason() == "no valid RTZR token yet"


async def test_missing_credentials() -> None:
    tm = TokenManager(RtzrConfig(), Budgets(), Registry())
    for _ in range(2):  # permanent: a restarted run() fails the same way
        with pytest.raises(RtzrAuthError, match="client_id"):
            await tm.run()
        with pytest.raises(RtzrAuthError, match="client_id"):
            await tm.get()
        reason = tm.not_ready_reason()
        assert reason is not None and "client_id" in reason


def test_backoff_is_capped() -> None:
    assert backoff_delay(0, 0.5, 30, 0.0) == 0.25
    assert backoff_delay(100, 0.5, 30, 0.999) <= 30

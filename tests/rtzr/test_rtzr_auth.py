"""TokenManager: refresh timing under MockClock, single-flight, backoff, fatal 4xx."""

from __future__ import annotations

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


class FakeAuth:
    """An /v1/authenticate handler scripted per request; wall time follows the trio clock."""

    def __init__(self, lifetime_s: float = 6 * 3600, statuses: list[int] | None = None) -> None:
        self.lifetime_s = lifetime_s
        self.statuses = list(statuses or [])
        self.calls: list[float] = []

    def wall(self) -> float:
        return EPOCH + trio.current_time()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(trio.current_time())
        assert request.url.path == "/v1/authenticate"
        assert b"client_secret=s3cret" in request.content
        status = self.statuses.pop(0) if self.statuses else 200
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


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_4xx_is_fatal(status: int, autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeAuth(statuses=[status])
    tm, client = make(fake)
    errors: list[str] = []

    async def user() -> None:
        with pytest.raises(RtzrAuthError) as info:
            with trio.fail_after(10):
                await tm.get()
        errors.append(str(info.value))

    async with client:
        with pytest.RaisesGroup(pytest.RaisesExc(RtzrAuthError, match=f"HTTP {status}")):
            async with trio.open_nursery() as n:
                n.start_soon(user)
                await n.start(tm.run)
    assert len(fake.calls) == 1
    assert errors and "client_secret" in errors[0]


async def test_missing_credentials() -> None:
    tm = TokenManager(RtzrConfig(), Budgets(), Registry())
    with pytest.raises(RtzrAuthError, match="client_id"):
        await tm.run()
    with pytest.raises(RtzrAuthError):
        await tm.get()


def test_backoff_is_capped() -> None:
    assert backoff_delay(0, 0.5, 30, 0.0) == 0.25
    assert backoff_delay(100, 0.5, 30, 0.999) <= 30

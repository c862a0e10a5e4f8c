"""RTZR access tokens: fetched once, cached, refreshed in the background before they expire.

Only :meth:`TokenManager.run` talks to ``/v1/authenticate``, so every refresh is single-flight:
callers that need a token (or a new one after a 401) wait on an event the runner sets.

Every failure is retried with capped exponential backoff and jitter (``rtzr.auth_retry_base_ms`` up to
``rtzr.auth_retry_max_ms``), never in a busy loop, and the first successful fetch clears it. A 4xx
other than 429 (credentials rejected, or a proxy answering 403/400) is reported at once: while it is the
latest answer and no valid token is held, :meth:`TokenManager.get` raises :class:`RtzrAuthError` instead
of waiting, so utterances fail fast with a clear error. 5xx, 429 and network errors leave callers
waiting (bounded by their budget). Missing credentials are the only permanent error.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import httpx
import msgspec
import trio

from engine.budgets import BudgetExpired, Budgets
from engine.config import RtzrConfig
from engine.log import add_secret, get_logger
from engine.metrics import Registry
from engine.stt import SttAuthError

log = get_logger(__name__)

EXPIRY_SKEW_S = 5.0  # a token this close to expiry is no longer handed out
MIN_REFRESH_S = 1.0


class RtzrAuthError(SttAuthError):
    """RTZR rejected the credentials (retried in the background) or they are missing (permanent)."""


class Token(msgspec.Struct, frozen=True):
    """An access token; ``expire_at`` in epoch seconds, as RTZR sends it."""

    value: str
    expire_at: float
    fetched_at: float = 0.0  # epoch seconds when we received it (0: unknown); for the token age in events

    def __repr__(self) -> str:  # never print the token itself
        return f"Token(expire_at={self.expire_at})"


class _AuthReply(msgspec.Struct):
    access_token: str
    expire_at: float


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, network, timeout, malformed reply)."""


def backoff_delay(attempt: int, base_s: float, cap_s: float, rand: float) -> float:
    """Capped exponential backoff with jitter in [50%, 100%] of the step; ``rand`` in [0, 1)."""
    step = min(cap_s, base_s * math.pow(2.0, min(attempt, 30)))
    return step * (0.5 + 0.5 * rand)


class TokenManager:
    """Caches the RTZR token and refreshes it at ``expire_at - token_margin_ms``."""

    name = "rtzr_auth"

    def __init__(
        self,
        config: RtzrConfig,
        budgets: Budgets,
        metrics: Registry,
        *,
        client: httpx.AsyncClient | None = None,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._budgets = budgets
        self._client = client
        self.wall = wall
        self._rand = rand
        # The runtime state is (re)built by run(); __init__ only makes get() safe to call before it.
        self._token: Token | None = None
        self._refresh_at = -math.inf  # trio clock
        self._expires_at = -math.inf  # trio clock
        self._usable_until = -math.inf  # trio clock: expiry minus a skew
        self._rejected: RtzrAuthError | None = None  # the latest fetch got a 4xx, or credentials are missing
        self._last_failure: str | None = None  # why the latest fetch failed (any kind), for not_ready_reason
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._fetches = metrics.counter("rtzr_token_fetches_total", "token requests to RTZR", "result=ok")
        self._fetch_errors = metrics.counter("rtzr_token_fetches_total", "token requests to RTZR", "result=error")
        self._fetch_rejected = metrics.counter("rtzr_token_fetches_total", "token requests to RTZR", "result=rejected")
        self._fetch_ms = metrics.histogram("rtzr_token_fetch_ms", "time to fetch a token")
        self.fetch_count = 0

    # ------------------------------------------------------------------ public API

    def seconds_left(self, token: Token) -> float:
        """Wall-clock seconds until ``token`` expires."""
        return token.expire_at - self.wall()

    def token_expires_in_s(self) -> float | None:
        """Seconds left on the token held now (None without one), for the admin /status page."""
        return None if self._token is None else self.seconds_left(self._token)

    def _valid(self) -> Token | None:
        if self._token is not None and trio.current_time() < self._usable_until:
            return self._token
        return None

    def not_ready_reason(self) -> str | None:
        """Why the engine cannot open RTZR sockets now (for /readyz), or None while a valid token is held."""
        if self._valid() is not None:
            return None
        if self._rejected is not None:
            return f"RTZR authentication failed (retrying): {self._rejected}"
        if self._last_failure is not None:
            return f"no valid RTZR token: last fetch failed ({self._last_failure}), retrying"
        return "no valid RTZR token yet"

    async def get(self) -> Token:
        """A valid token, waiting for the runner if there is none yet (bound it with a budget).

        Raises :class:`RtzrAuthError` at once, without waiting, when there is no valid token and the
        latest fetch was rejected (or the credentials are missing).
        """
        while True:
            token = self._valid()
            if token is not None:
                return token
            if self._rejected is not None:
                raise RtzrAuthError(str(self._rejected))
            self._wake.set()
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Return at the next change: a token installed, a fetch rejected, a restart (for the pool's retries)."""
        await self._changed.wait()

    async def invalidate_and_refresh(self, stale: Token) -> Token:
        """After a 401 with ``stale``: drop it and wait for a new one (one fetch however many callers)."""
        if self._token is not None and self._token.value == stale.value:
            self._token = None
            self._expires_at = self._usable_until = -math.inf
            self._refresh_at = -math.inf
            log.info("rtzr_token_invalidated")
        self._wake.set()
        return await self.get()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The refresh loop; reports started at once, even if the auth endpoint is down or rejecting.

        Builds all of its state afresh, so a run restarted by the supervisor comes back whole. Returns
        only by cancellation, or raises :class:`RtzrAuthError` when the credentials are missing.
        """
        self._reset()
        if not self._config.client_id or not self._config.client_secret:
            exc = RtzrAuthError("rtzr.client_id and rtzr.client_secret are required (RTZR_CLIENT_ID, RTZR_CLIENT_SECRET)")
            self._rejected = exc
            self._notify()
            task_status.started()
            raise exc
        add_secret(self._config.client_secret)
        if self._client is not None:
            task_status.started()
            await self._loop(self._client)
            return
        async with httpx.AsyncClient() as client:
            task_status.started()
            await self._loop(client)

    # ------------------------------------------------------------------ internals

    def _reset(self) -> None:
        """Fresh runtime state; callers already waiting on the old event are woken to re-check."""
        old = self._changed
        self._token = None
        self._refresh_at = self._expires_at = self._usable_until = -math.inf
        self._rejected = None
        self._last_failure = None
        self._changed = trio.Event()
        self._wake = trio.Event()
        old.set()

    def _notify(self) -> None:
        old, self._changed = self._changed, trio.Event()
        old.set()

    async def _loop(self, client: httpx.AsyncClient) -> None:
        attempt = 0
        while True:
            now = trio.current_time()
            if self._token is None or now >= self._refresh_at:
                try:
                    token = await self._fetch(client)
                except (RtzrAuthError, _Transient) as exc:
                    delay = backoff_delay(
                        attempt,
                        self._config.auth_retry_base_ms / 1000.0,
                        self._config.auth_retry_max_ms / 1000.0,
                        self._rand(),
                    )
                    attempt += 1
                    self._last_failure = str(exc)
                    if isinstance(exc, RtzrAuthError):
                        log.error("rtzr_auth_rejected", reason=str(exc), attempt=attempt, retry_in_s=round(delay, 3))
                        self._rejected = exc
                        self._notify()  # waiters without a valid token fail fast now
                    else:
                        log.warning("rtzr_token_fetch_failed", reason=str(exc), attempt=attempt, retry_in_s=round(delay, 3))
                        self._rejected = None  # no longer known to be rejected: callers wait (within budget)
                    await trio.sleep(delay)
                    continue
                attempt = 0
                self._install(token)
                continue
            self._wake = trio.Event()
            with trio.move_on_at(self._refresh_at):
                await self._wake.wait()

    def _install(self, token: Token) -> None:
        now = trio.current_time()
        left = token.expire_at - self.wall()
        margin = self._config.token_margin_ms / 1000.0
        # Refresh at expire_at - margin; a token shorter-lived than the margin refreshes at half-life.
        wait = left - margin if left - margin >= left / 2 else left / 2
        self._token = token
        self._expires_at = now + left
        self._usable_until = self._expires_at - min(EXPIRY_SKEW_S, max(0.0, left) / 10)
        self._refresh_at = now + max(MIN_REFRESH_S, wait)
        self._rejected = None
        self._last_failure = None
        log.info("rtzr_token_fetched", expires_in_s=round(left, 1), refresh_in_s=round(self._refresh_at - now, 1))
        self._notify()

    async def _fetch(self, client: httpx.AsyncClient) -> Token:
        url = self._config.api_base.rstrip("/") + "/v1/authenticate"
        started = trio.current_time()
        self.fetch_count += 1
        try:
            with self._budgets.auth():
                resp = await client.post(
                    url, data={"client_id": self._config.client_id or "", "client_secret": self._config.client_secret or ""}
                )
        except BudgetExpired as exc:
            self._fetch_errors.inc()
            raise _Transient(str(exc)) from None
        except httpx.HTTPError as exc:
            self._fetch_errors.inc()
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        self._fetch_ms.observe((trio.current_time() - started) * 1000.0)
        status = resp.status_code
        if 400 <= status < 500 and status != 429:
            self._fetch_rejected.inc()
            code = _error_code(resp.content)
            raise RtzrAuthError(
                f"RTZR rejected the credentials at {url}: HTTP {status}{' ' + code if code else ''};"
                " check rtzr.client_id and rtzr.client_secret (or a proxy in the way)"
            )
        if status != 200:
            self._fetch_errors.inc()
            raise _Transient(f"HTTP {status}")
        try:
            reply = msgspec.json.decode(resp.content, type=_AuthReply)
        except msgspec.DecodeError as exc:
            self._fetch_errors.inc()
            raise _Transient(f"malformed token reply: {exc}") from None
        if not reply.access_token or not math.isfinite(reply.expire_at):
            self._fetch_errors.inc()
            raise _Transient("malformed token reply: empty token or bad expire_at")
        add_secret(reply.access_token)
        self._fetches.inc()
        return Token(reply.access_token, float(reply.expire_at), self.wall())


def _error_code(body: bytes) -> str:
    """RTZR's error code (H0001, H0002...) from an error body, for the operator's message."""
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return ""
    if isinstance(obj, dict):
        code = obj.get("code")
        if isinstance(code, str) and len(code) <= 20:
            return code
    return ""

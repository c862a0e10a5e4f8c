"""The RTZR session budget: how many streaming sessions this process may hold, shared or not.

RTZR limits concurrent sessions per organisation (5 / 20 / negotiated), not per process. The pool asks
the budget for a lease before it opens a socket and gives it back once the socket is closed:

- :class:`LocalSessionBudget`: this process only (no ``redis.url``), as before scale-out.
- :class:`RedisSessionBudget`: one ZSET in Redis shared by every worker and host. Each open socket is a
  member (a lease id) scored by its expiry in Redis' own clock; acquire is one Lua script ("drop expired,
  count, add if below the limit"), so the limit holds under any interleaving. Leases are renewed every
  ``lease_ttl_ms / 3`` while their socket lives, so a crashed process's sessions come back within the TTL.

Redis unreachable: acquire raises :class:`BudgetUnavailable` (no new socket beyond those held), the sockets
already held keep serving, ``sori_session_budget_redis_up`` drops to 0, and renewal resumes when Redis
returns; a renewal re-adds every lease still held (a Redis that restarted empty learns them again).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from engine.config import RedisConfig
from engine.log import get_logger
from engine.metrics import Registry
from engine.redis import RedisClient, RedisError, RedisUnavailable, Script
from engine.redis.resp import Reply

log = get_logger(__name__)


class BudgetFull(Exception):
    """Every session of the organisation's limit is held (here or by another process)."""


class BudgetUnavailable(Exception):
    """The shared budget cannot be asked (Redis unreachable): no new session may be opened."""


class SessionBudget(Protocol):
    """What the pool needs: a lease per socket, given back when the socket is closed."""

    retry_s: float  # how soon a refused open is worth retrying
    on_change: Callable[[], None] | None  # called when ``contended`` changes (the pool re-plans)

    @property
    def contended(self) -> bool:
        """Someone (here or elsewhere) was refused a session lately: idle spares should be given back."""
        ...

    @property
    def held(self) -> int: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    async def acquire(self) -> str:
        """A lease id for one more session; raises BudgetFull or BudgetUnavailable."""
        ...

    def release(self, lease: str) -> None:
        """Give a lease back (non-blocking; idempotent)."""
        ...


class _Ids:
    """Lease ids unique across hosts and processes, readable in ``ZRANGE`` (host:pid:random:n)."""

    def __init__(self) -> None:
        self.prefix = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._n = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}:{next(self._n)}"


class LocalSessionBudget:
    """This process's sessions only (the pool's ``max_sessions`` is the same bound)."""

    retry_s = 0.25
    contended = False  # one process: the pool's own max_sessions already shares its sockets fairly

    def __init__(self, limit: int) -> None:
        self.on_change: Callable[[], None] | None = None
        self.limit = limit
        self._ids = _Ids()
        self._held: set[str] = set()

    @property
    def held(self) -> int:
        return len(self._held)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._held.clear()

    async def acquire(self) -> str:
        if len(self._held) >= self.limit:
            raise BudgetFull(f"{len(self._held)}/{self.limit} sessions held")
        lease = self._ids.next()
        self._held.add(lease)
        return lease

    def release(self, lease: str) -> None:
        self._held.discard(lease)


# Redis' clock (TIME) scores every lease, so hosts' clocks never matter. KEYS[1]: the ZSET.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
# KEYS[2] ("<key>:want") marks demand: set for a TTL by a refused acquire, it tells every holder to give
# its idle spares back (otherwise spares idle in one process starve lessees queued in another).
# KEYS[3] ("<key>:epoch") is set (to 0) by every client as it starts. Its absence later means Redis lost its
# data (restarted without persistence): the first script to notice sets it to now + ARGV[grace], and until then
# acquire refuses ({-1, ...}) while every live holder re-adds its leases at its next renewal. Without this, a
# new lease could be granted on the empty set beside sockets that are open but not yet re-registered.
_EPOCH = """
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SET', KEYS[3], now + tonumber(ARGV[1])) end
local recovering = now < tonumber(redis.call('GET', KEYS[3]))
"""
# ARGV: grace ms, limit, ttl ms, lease id.
ACQUIRE = Script(_NOW + _EPOCH + """
if recovering then return {-1, 0, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
  return {1, n + 1, redis.call('EXISTS', KEYS[2])}
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
return {0, n, 1}
""")
# ARGV: grace ms, ttl ms, then the leases still held. ZADD without NX/XX: a lease lost (Redis restarted empty,
# or expired during an outage) is added back, since its socket is still open. Returns how many were re-added,
# and whether there is demand (KEYS[2]).
RENEW = Script(_NOW + _EPOCH + """
local added = 0
for i = 3, #ARGV do
  added = added + redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
end
return {added, redis.call('EXISTS', KEYS[2])}
""")
# Renewal (and the demand check) runs at most this far apart, whatever the TTL.
MAX_RENEW_S = 1.0


class RedisSessionBudget:
    """The organisation's limit shared through Redis by every process that names the same key."""

    def __init__(self, config: RedisConfig, limit: int, metrics: Registry) -> None:
        self.config = config
        self.limit = limit
        self.ttl_ms = config.lease_ttl_ms
        self.renew_s = min(config.lease_ttl_ms / 3000.0, MAX_RENEW_S)
        self.keys = [config.key, f"{config.key}:want", f"{config.key}:epoch"]
        # Long enough for every live holder to renew once (at most every MAX_RENEW_S, retried every retry_ms).
        self.grace_ms = int(2000 * self.renew_s + config.timeout_ms + config.retry_ms)
        self.on_change: Callable[[], None] | None = None
        self._contended = False
        self.retry_s = config.retry_ms / 1000.0
        self._ids = _Ids()
        self._held: set[str] = set()
        self._to_release: set[str] = set()
        self._client: RedisClient | None = None
        self._wake = trio.Event()
        self.up: bool | None = None  # None until the first answer
        self.last_error = ""
        m = metrics
        self._g_up = m.gauge("session_budget_redis_up", "1 while Redis (the shared RTZR session budget) answers")
        self._g_held = m.gauge("session_budget_held", "RTZR session leases this process holds in Redis")
        self._c_full = m.counter("session_budget_refusals_total", "socket opens refused by the session budget",
                                 "reason=full")
        self._c_unavailable = m.counter("session_budget_refusals_total", "socket opens refused by the session budget",
                                        "reason=unavailable")
        self._c_readded = m.counter("session_budget_leases_readded_total",
                                    "held leases Redis had lost (restart, outage past the TTL) and learnt again")

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def contended(self) -> bool:
        return self._contended

    def _set_contended(self, value: bool) -> None:
        if value != self._contended:
            self._contended = value
            if self.on_change is not None:
                self.on_change()

    def not_ready_reason(self) -> str | None:
        if self.up is False:
            return f"session budget: Redis unreachable ({self.last_error})"
        return None

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew held leases, send releases; on exit give every lease back (bounded, best effort)."""
        self._client = RedisClient(self.config.url, timeout_s=self.config.timeout_ms / 1000.0)
        self._held.clear()
        self._to_release.clear()
        with contextlib.suppress(BudgetUnavailable, RedisError):  # reported (metric, reason); acquire refuses
            await self._call(self._client.command("SET", self.keys[2], 0, "NX"))  # see _EPOCH
        task_status.started()
        try:
            await self._loop()
        finally:
            client, self._client = self._client, None
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.timeout_ms / 1000.0):
                leases = [*self._held, *self._to_release]
                if leases:
                    try:
                        await client.command("ZREM", self.config.key, *leases)
                    except (RedisUnavailable, RedisError) as exc:
                        log.warning("session_budget_release_failed", leases=len(leases), reason=str(exc),
                                    hint="they expire within redis.lease_ttl_ms")
                await client.aclose()
            self._held.clear()
            self._to_release.clear()
            self._g_held.set(0)

    async def _loop(self) -> None:
        next_renew = trio.current_time() + self.renew_s
        while True:
            with trio.move_on_at(next_renew if not self._to_release else -math.inf):
                await self._wake.wait()
            self._wake = trio.Event()
            if self._to_release:
                batch = list(self._to_release)
                try:
                    assert self._client is not None
                    await self._call(self._client.command("ZREM", self.config.key, *batch))
                    self._to_release.difference_update(batch)
                except (BudgetUnavailable, RedisError):
                    await trio.sleep(self.retry_s)  # kept for the next round; expires within the TTL anyway
            if trio.current_time() >= next_renew:
                next_renew = trio.current_time() + (self.renew_s if self.up is not False else self.retry_s)
                await self._renew()

    async def _renew(self) -> None:
        assert self._client is not None
        held = list(self._held)
        try:
            reply = await self._call(self._client.eval(RENEW, self.keys, [self.grace_ms, self.ttl_ms, *held]))
            if isinstance(reply, list) and len(reply) == 2:
                added, want = reply
                if isinstance(added, int) and added:
                    self._c_readded.inc(added)
                    log.warning("session_budget_leases_readded", leases=added)
                self._set_contended(want == 1)
        except (BudgetUnavailable, RedisError) as exc:
            log.debug("session_budget_renew_failed", reason=str(exc))

    async def _call(self, aw: Awaitable[Reply]) -> Reply:
        """Await a client call, tracking whether Redis answers (metric, reason, logs on change)."""
        try:
            result = await aw
        except RedisUnavailable as exc:
            if self.up is not False:
                log.warning("session_budget_redis_down", reason=str(exc), holding=len(self._held))
            self.up, self.last_error = False, str(exc)
            self._g_up.set(0)
            raise BudgetUnavailable(f"Redis unreachable: {exc}") from None
        if self.up is not True:
            log.info("session_budget_redis_up", redis=self._client.address.display() if self._client else "?")
        self.up = True
        self.last_error = ""
        self._g_up.set(1)
        return result

    # ------------------------------------------------------------------ leases

    async def acquire(self) -> str:
        if self._client is None:
            raise BudgetUnavailable("session budget not running")
        lease = self._ids.next()
        try:
            reply = await self._call(self._client.eval(ACQUIRE, self.keys, [self.grace_ms, self.limit, self.ttl_ms, lease]))
        except BudgetUnavailable:
            self._c_unavailable.inc()
            self._to_release.add(lease)  # the script may have run before the connection broke
            self._wake.set()
            raise
        except BaseException:  # cancelled or an error reply: whether it was added is unknown
            self._to_release.add(lease)
            self._wake.set()
            raise
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] in (-1, 0, 1)):
            self._to_release.add(lease)
            raise BudgetUnavailable(f"unexpected reply from the acquire script: {reply!r}"[:200])
        if reply[0] == -1:
            self._c_full.inc()
            raise BudgetFull("Redis lost its data: new sessions wait while holders re-register theirs")
        self._set_contended(reply[2] == 1)
        if reply[0] == 0:
            self._c_full.inc()
            raise BudgetFull(f"{reply[1]!r}/{self.limit} sessions held across processes")
        self._held.add(lease)
        self._g_held.set(len(self._held))
        return lease

    def release(self, lease: str) -> None:
        if lease in self._held:
            self._held.discard(lease)
            self._to_release.add(lease)
            self._g_held.set(len(self._held))
            self._wake.set()


def session_budget(redis: RedisConfig, limit: int, metrics: Registry) -> LocalSessionBudget | RedisSessionBudget:
    """The Redis budget when ``redis.url`` is set, else the local one."""
    if redis.url:
        return RedisSessionBudget(redis, limit, metrics)
    return LocalSessionBudget(limit)

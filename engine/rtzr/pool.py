"""The process-wide pool of pre-warmed RTZR sockets, leased per utterance.

``RtzrPool.run`` owns a nursery holding every socket's task (one reader per socket). It keeps
``spare`` sockets ready, never lets more than ``max_sessions`` be open (idle + leased + opening),
and recycles sockets that are idle too long, too old, or whose token is about to expire. A lease
returns its socket only in a known-good state (every byte sent has its final); anything uncertain
is closed. ``connect-per-utterance`` mode opens a socket per lease and ends it with EOS, as a
naive bridge does, for benchmarks.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from engine.budgets import BudgetExpired, Budgets
from engine.config import RtzrConfig
from engine.log import get_logger
from engine.metrics import Registry
from engine.rtzr.auth import RtzrAuthError, TokenManager, backoff_delay
from engine.rtzr.protocol import LeaseResult, build_query
from engine.rtzr.stream import LeaseItem, RtzrConnectError, RtzrSocket, RtzrSocketLost, _Lost

log = get_logger(__name__)


class Lease:
    """One utterance's use of a socket. Results and times are this lessee's only."""

    def __init__(self, pool: RtzrPool, sock: RtzrSocket, *, lease_ms: float, pool_hit: bool) -> None:
        self.lease_ms = lease_ms
        self.pool_hit = pool_hit
        self._pool = pool
        self._sock = sock
        self._results = sock.attach()
        self._final_deadline: float | None = None

    @property
    def socket(self) -> RtzrSocket:
        return self._sock

    @property
    def has_pending(self) -> bool:
        """Audio sent on this lease that has no final yet."""
        return self._sock.tracker.pending

    @property
    def sent_ms(self) -> float:
        """Audio sent on this lease, in ms (the lessee's timeline)."""
        return self._sock.tracker.lease_sent_ms

    async def send_audio(self, pcm: bytes) -> None:
        await self._sock.send_audio(pcm)

    async def finalize(self) -> bool:
        """Ask for the final now; False (and nothing sent) when no audio is pending."""
        sent = await self._sock.finalize()
        if sent:
            self._final_deadline = trio.current_time() + self._pool.budgets.finalize.seconds
        return sent

    async def receive(self) -> LeaseResult:
        """Next result for this lease; after finalize() bounded by budgets.finalize.

        Raises RtzrSocketLost if the socket dies, BudgetExpired('finalize') if the final is late
        (the socket is then discarded).
        """
        deadline = self._final_deadline if self._final_deadline is not None else math.inf
        item: LeaseItem | None = None
        with trio.move_on_at(deadline):
            try:
                item = await self._results.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise RtzrSocketLost(self._sock.close_reason or "lease ended") from None
        if item is None:
            self._sock.bad = True
            self._pool.note_finalize_timeout()
            raise BudgetExpired("finalize", self._pool.budgets.finalize.ms)
        if isinstance(item, _Lost):
            raise RtzrSocketLost(item.reason)
        if item.final and not self._sock.tracker.awaiting_final:
            self._final_deadline = None
        return item

    def _end(self) -> None:
        self._sock.detach()
        self._results.close()


class RtzrPool:
    """Leases pre-warmed RTZR sockets per utterance; run it in the supervisor."""

    name = "rtzr_pool"

    def __init__(self, config: RtzrConfig, tokens: TokenManager, budgets: Budgets, metrics: Registry) -> None:
        self.config = config
        self.pool_config = config.pool
        self.tokens = tokens
        self.budgets = budgets
        self.metrics = metrics
        self._query = build_query(config)  # invalid parameters fail at start-up, not per call
        self._idle: list[RtzrSocket] = []
        self._leased: set[RtzrSocket] = set()
        self._opening = 0
        self._closing: set[RtzrSocket] = set()
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._open_failures = 0
        self._retry_at = -math.inf
        self._draining = False
        self.high_water = 0
        m = metrics
        self._g_open = m.gauge("rtzr_pool_open", "RTZR sockets open (idle + leased + opening)")
        self._g_idle = m.gauge("rtzr_pool_idle", "RTZR sockets ready to lease")
        self._g_leased = m.gauge("rtzr_pool_leased", "RTZR sockets leased")
        self._h_wait = m.histogram("rtzr_pool_lease_wait_ms", "time waiting for a socket")
        self._c_hit = m.counter("rtzr_pool_leases_total", "leases by outcome", "result=hit")
        self._c_miss = m.counter("rtzr_pool_leases_total", "leases by outcome", "result=miss")
        self._c_timeout = m.counter("rtzr_pool_leases_total", "leases by outcome", "result=timeout")

    # ------------------------------------------------------------------ state

    @property
    def open_count(self) -> int:
        """Sockets counting against max_sessions: idle, leased, being opened, being closed."""
        return len(self._idle) + len(self._leased) + self._opening + len(self._closing)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def leased_count(self) -> int:
        return len(self._leased)

    @property
    def pooled(self) -> bool:
        return self.pool_config.mode == "pooled"

    def not_ready_reason(self) -> str | None:
        """Why new speech would not get a socket at once (for /readyz), or None when ready."""
        if self._nursery is None:
            return "RTZR pool not running"
        if self._draining:
            return "RTZR pool draining"
        if self.pooled and not self._idle and self.pool_config.spare > 0:
            return "no pre-warmed RTZR socket"
        return None

    def _notify(self) -> None:
        self.high_water = max(self.high_water, self.open_count)
        self._g_open.set(self.open_count)
        self._g_idle.set(len(self._idle))
        self._g_leased.set(len(self._leased))
        old, self._changed = self._changed, trio.Event()
        old.set()

    def _recycle_counter(self, reason: str) -> None:
        self.metrics.counter("rtzr_pool_recycles_total", "sockets closed by the pool, by reason", f"reason={reason}").inc()

    def note_finalize_timeout(self) -> None:
        self._recycle_counter("finalize_timeout")

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sockets' nursery; pre-warm and recycle until cancelled, then close with EOS."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._maintain()
            finally:
                self._draining = True
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self.pool_config.close_timeout_ms / 1000.0 + 0.5):
                        await self._close_all()
                    nursery.cancel_scope.cancel()
        self._nursery = None

    async def _close_all(self) -> None:
        socks = [*self._idle, *self._leased]
        self._idle.clear()
        async with trio.open_nursery() as n:
            for sock in socks:
                n.start_soon(self._close_one, sock, "shutdown", True)
        self._notify()

    def _due(self, sock: RtzrSocket, now: float) -> str | None:
        """Why an idle socket must go now, or None."""
        pc = self.pool_config
        if not sock.usable:
            return "lost" if sock.bad or not sock.is_open else "unclean"
        if now - sock.last_used >= pc.max_idle_ms / 1000.0:
            return "idle"
        if now - sock.opened_at >= pc.max_age_ms / 1000.0:
            return "age"
        if sock.token_expire_at - self.tokens.wall() <= pc.token_min_remaining_ms / 1000.0:
            return "token"
        return None

    def _next_due(self, sock: RtzrSocket, now: float) -> float:
        pc = self.pool_config
        token_at = now + (sock.token_expire_at - self.tokens.wall()) - pc.token_min_remaining_ms / 1000.0
        return min(sock.last_used + pc.max_idle_ms / 1000.0, sock.opened_at + pc.max_age_ms / 1000.0, token_at)

    async def _maintain(self) -> None:
        assert self._nursery is not None
        while True:
            now = trio.current_time()
            for sock in list(self._idle):
                reason = self._due(sock, now)
                if reason is not None:
                    self._idle.remove(sock)
                    self._recycle_counter(reason)
                    self._nursery.start_soon(self._close_one, sock, reason, reason != "lost")
            wake_at = math.inf
            if self.pooled and now >= self._retry_at:
                want = self.pool_config.spare - len(self._idle) - self._opening
                room = self.pool_config.max_sessions - self.open_count
                for _ in range(max(0, min(want, room))):
                    self._opening += 1
                    self._nursery.start_soon(self._open_spare)
            elif self.pooled:
                wake_at = self._retry_at
            self._notify()
            for sock in self._idle:
                wake_at = min(wake_at, self._next_due(sock, now))
            changed = self._changed
            with trio.move_on_at(wake_at):
                await changed.wait()

    async def _open(self) -> RtzrSocket:
        assert self._nursery is not None, "RtzrPool.run is not running"
        sock = await RtzrSocket.connect(
            self.config, self.tokens, self.budgets, self.metrics, self._nursery, query=self._query
        )
        self._nursery_watch(sock)
        return sock

    async def _open_spare(self) -> None:
        sock: RtzrSocket | None = None
        try:
            sock = await self._open()
        except (RtzrConnectError, BudgetExpired, RtzrAuthError) as exc:
            self._open_failures += 1
            delay = backoff_delay(
                self._open_failures - 1, 0.25, self.pool_config.open_retry_max_ms / 1000.0, random.random()
            )
            self._retry_at = trio.current_time() + delay
            log.warning("rtzr_pool_open_failed", reason=str(exc), failures=self._open_failures, retry_in_s=round(delay, 3))
        finally:
            self._opening -= 1
        if sock is not None:
            self._open_failures = 0
            self._retry_at = -math.inf
            if self._draining:
                self._nursery_close(sock, "shutdown")
            else:
                self._idle.append(sock)
        self._notify()

    def _nursery_watch(self, sock: RtzrSocket) -> None:
        """One watcher per socket: wake the maintainer when it dies, so it is replaced promptly."""
        if self._nursery is None:
            return

        async def watch() -> None:
            await sock.wait_closed()
            self._notify()

        self._nursery.start_soon(watch)

    def _nursery_close(self, sock: RtzrSocket, reason: str) -> None:
        if self._nursery is None:  # the pool has stopped; its nursery already closed every socket
            return
        self._nursery.start_soon(self._close_one, sock, reason, True)

    async def _close_one(self, sock: RtzrSocket, reason: str, eos: bool) -> None:
        self._closing.add(sock)
        try:
            await sock.close(eos=eos and sock.is_open and not sock.bad)
        finally:
            self._closing.discard(sock)
            self._notify()
        log.debug("rtzr_pool_socket_closed", reason=reason)

    # ------------------------------------------------------------------ leasing

    async def _acquire(self) -> tuple[RtzrSocket, bool]:
        while True:
            if self._draining:
                raise RtzrSocketLost("pool is shutting down")
            while self.pooled and self._idle:
                sock = self._idle.pop()  # most recently used: keeps the rest aging out
                if sock.usable:
                    self._leased.add(sock)
                    self._notify()
                    return sock, True
                self._recycle_counter("lost")
                self._nursery_close(sock, "lost")
            if self.open_count < self.pool_config.max_sessions:
                self._opening += 1
                self._notify()
                try:
                    sock = await self._open()
                finally:
                    self._opening -= 1
                self._leased.add(sock)
                self._notify()
                return sock, False
            await self._changed.wait()

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """``async with pool.lease() as lease:`` — a socket for one utterance, within budgets.lease."""
        t0 = trio.current_time()
        try:
            with self.budgets.lease():
                sock, hit = await self._acquire()
        except BudgetExpired:
            self._c_timeout.inc()
            raise
        lease_ms = (trio.current_time() - t0) * 1000.0
        self._h_wait.observe(lease_ms)
        (self._c_hit if hit else self._c_miss).inc()
        lease = Lease(self, sock, lease_ms=lease_ms, pool_hit=hit)
        try:
            yield lease
        finally:
            lease._end()
            self._release(sock)

    def _release(self, sock: RtzrSocket) -> None:
        self._leased.discard(sock)
        if not self.pooled:
            self._nursery_close(sock, "per_utterance")
        elif sock.usable and not self._draining:
            sock.last_used = trio.current_time()
            self._idle.append(sock)
        else:
            reason = "lost" if sock.bad or not sock.is_open else "unclean"
            self._recycle_counter(reason)
            # Uncertain state: close without EOS (EOS would make the server answer stale audio).
            if self._nursery is not None:
                self._nursery.start_soon(self._close_one, sock, reason, False)
        self._notify()

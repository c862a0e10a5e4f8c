"""The process-wide pool of pre-warmed RTZR sockets, leased per utterance.

``RtzrPool.run`` owns a nursery holding every socket's task (one reader per socket). It keeps
``spare`` sockets ready, never lets more than ``max_sessions`` be open (idle + leased + opening +
closing), and recycles sockets that are idle too long, too old, or whose token is about to expire.

Invariants kept here (the privacy rule itself lives in ``tracker.py``):

- A socket goes back to the pool only if it is provably clean (``RtzrSocket.usable``); anything
  uncertain is closed without EOS (EOS would make the server answer stale audio).
- Waiting is fair: when no socket is idle, lessees queue first come, first served across calls; a
  socket that is opened or returned goes to the head of the queue, and only to the idle list when
  nobody waits. A connect started for the queue belongs to the pool, not to the lessee that caused it:
  a lessee that gives up leaves the socket to the next one (or to the idle list).
- HTTP 429 from RTZR (the organisation's session limit, possibly reached by another process) is
  saturation, not failure: the pool stops opening (backoff), waiting lessees wait for a returned socket.
- Everything is built afresh in ``run()``: a pool restarted by the supervisor comes back whole.

``connect-per-utterance`` mode opens a socket per lease and ends it with EOS, as a naive bridge does,
for benchmarks.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import trio

from engine import events as ev
from engine.budgets import BudgetExpired, Budgets
from engine.config import RtzrConfig
from engine.log import get_logger
from engine.metrics import Registry
from engine.rtzr.auth import TokenManager, backoff_delay
from engine.rtzr.budget import BudgetFull, BudgetUnavailable, LocalSessionBudget, SessionBudget
from engine.rtzr.protocol import build_query
from engine.rtzr.stream import LeaseItem, RtzrConnectError, RtzrSaturated, RtzrSocket, RtzrSocketLost, _Lost
from engine.rtzr.tracker import LeaseResult

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
        self._uses = sock.uses
        self._age_s = trio.current_time() - sock.opened_at
        # The socket's own method, not a wrapper: one coroutine less per 100 ms audio message (issue 13).
        self.send_audio: Callable[[bytes], Coroutine[Any, Any, None]] = sock.send_audio
        # The synchronous path (engine.stt.PushLease): each batch written as the reader appends it; None on TLS,
        # where it could never write (the lessee then does not try, batch after batch).
        self.send_audio_nowait: Callable[[bytes], int] | None = sock.send_audio_nowait if sock.pushable else None
        self.flush: Callable[[], Coroutine[Any, Any, None]] = sock.flush

    def socket_info(self) -> ev.SocketInfo:
        """The socket behind this lease, for the events (issue 15); token times as of now."""
        sock, wall = self._sock, self._pool.tokens.wall()
        return ev.SocketInfo(
            id=sock.id, uses=self._uses, handshake_ms=round(sock.handshake_ms, 1), age_s=round(self._age_s, 3),
            token_age_s=round(wall - sock.token_fetched_at, 3) if sock.token_fetched_at > 0 else None,
            token_ttl_s=round(sock.token_expire_at - wall, 3) if math.isfinite(sock.token_expire_at) else None,
        )

    @property
    def socket(self) -> RtzrSocket:
        return self._sock

    @property
    def has_pending(self) -> bool:
        """Audio sent on this lease that no final has covered yet."""
        return self._sock.tracker.pending

    @property
    def write_pending(self) -> bool:
        """Part of a :meth:`send_audio_nowait` message is still to be written (``await flush()``)."""
        return self._sock.write_pending

    @property
    def sent_ms(self) -> float:
        """Audio sent on this lease, in ms (the lessee's timeline)."""
        return self._sock.tracker.lease_sent_ms

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        """Ask for the final now; False (and nothing sent) when no audio is pending.

        ``speech_end_ms``: the last speech our endpointer heard, on this lease's timeline (it tells a
        server cut from the final that answers the Finalize; see tracker.py).
        """
        sent = await self._sock.finalize(speech_end_ms)
        if sent:
            self._final_deadline = trio.current_time() + self._pool.budgets.finalize.seconds
        return sent

    async def receive(self) -> LeaseResult:
        """Next result for this lease; after finalize() bounded by budgets.finalize.

        Raises RtzrSocketLost if the socket dies, BudgetExpired('finalize') if the closing final is late
        (the socket is then discarded: what it may still say belongs to no one).
        """
        deadline = self._final_deadline
        item: LeaseItem | None = None
        try:
            if deadline is None:  # before Finalize (every interim): no deadline, so no cancel scope per result
                item = await self._results.receive()
            else:
                with trio.move_on_at(deadline):
                    item = await self._results.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise RtzrSocketLost(self._sock.close_reason or "lease ended") from None
        if item is None:
            self._sock.bad = True
            self._pool.note_finalize_timeout()
            raise BudgetExpired("finalize", self._pool.budgets.finalize.ms)
        if isinstance(item, _Lost):
            raise RtzrSocketLost(item.reason)
        if item.closes:
            self._final_deadline = None
        return item

    def _end(self) -> None:
        self._sock.detach()
        self._results.close()


class _Waiter:
    """A lessee in the queue: handed a socket (or an error) by whoever frees or opens one."""

    __slots__ = ("error", "event", "gone", "hit", "sock")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.sock: RtzrSocket | None = None
        self.hit = False
        self.error: Exception | None = None
        self.gone = False  # the lessee stopped waiting (budget, cancellation)


class RtzrPool:
    """Leases pre-warmed RTZR sockets per utterance; run it in the supervisor."""

    name = "rtzr_pool"

    def __init__(self, config: RtzrConfig, tokens: TokenManager, budgets: Budgets, metrics: Registry,
                 session_budget: SessionBudget | None = None) -> None:
        self.config = config
        # A lease per open socket (engine/rtzr/budget.py): local, or shared through Redis across processes.
        self.session_budget = session_budget or LocalSessionBudget(config.pool.max_sessions)
        self.pool_config = config.pool
        self.tokens = tokens
        self.budgets = budgets
        self.metrics = metrics
        self._query = build_query(config)  # invalid parameters fail at start-up, not per call
        self._nursery: trio.Nursery | None = None
        self.high_water = 0
        self._reset()
        m = metrics
        self._g_open = m.gauge("rtzr_pool_open", "RTZR sockets open (idle + leased + opening)")
        self._g_idle = m.gauge("rtzr_pool_idle", "RTZR sockets ready to lease")
        self._g_leased = m.gauge("rtzr_pool_leased", "RTZR sockets leased")
        self._g_waiting = m.gauge("rtzr_pool_waiting", "utterances queued for a socket")
        self._g_saturated = m.gauge("rtzr_pool_saturated", "1 while RTZR refuses new sessions (HTTP 429)")
        self._h_wait = m.histogram("rtzr_pool_lease_wait_ms", "time waiting for a socket")
        self._c_hit = m.counter("rtzr_pool_leases_total", "leases by outcome", "result=hit")
        self._c_miss = m.counter("rtzr_pool_leases_total", "leases by outcome", "result=miss")
        self._c_timeout = m.counter("rtzr_pool_leases_total", "leases by outcome", "result=timeout")
        self._c_429 = m.counter("rtzr_pool_saturated_total", "socket opens refused by RTZR with HTTP 429")
        self._c_open_failed = m.counter("rtzr_pool_open_failures_total", "socket opens that failed (429 excluded)")

    def _reset(self) -> None:
        """Fresh state: called by __init__ and at the start of every run()."""
        # Idle sockets in the order they became idle (LIFO leasing pops the last), each with its idle
        # stint number; the heaps below hold (due, stint, socket) entries, valid while the stint matches.
        self._idle: dict[RtzrSocket, int] = {}
        self._stints = itertools.count()
        self._time_heap: list[tuple[float, int, RtzrSocket]] = []  # trio clock: max_idle / max_age
        self._token_heap: list[tuple[float, int, RtzrSocket]] = []  # wall clock: the token's expire_at
        self._suspects: list[RtzrSocket] = []  # idle sockets that died or stopped being clean
        self._leased: set[RtzrSocket] = set()
        self._opening = 0
        self._closing: set[RtzrSocket] = set()
        self._waiters: deque[_Waiter] = deque()
        self._changed = trio.Event()
        self._open_failures = 0
        self._retry_at = -math.inf
        self._saturated = False
        self._last_open_error = ""
        self._open_refused = False  # the latest open failed for a reason other than saturation
        self._draining = False
        self._budget_leases: dict[RtzrSocket, str] = {}

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
    def waiting_count(self) -> int:
        return sum(1 for w in self._waiters if not w.gone)

    @property
    def saturated(self) -> bool:
        return self._saturated

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
            if self._saturated and self._last_open_error.startswith(BudgetFull.__name__):
                return f"RTZR session budget full ({self._last_open_error}) and no idle socket"
            if self._saturated:
                return "RTZR session limit reached (HTTP 429) and no idle socket"
            if self._last_open_error:
                return f"cannot open RTZR sockets: {self._last_open_error}"
            if self._leased:
                return f"every RTZR socket is busy ({len(self._leased)} leased, {self.waiting_count} waiting)"
            return "no pre-warmed RTZR socket yet"
        return None

    def _notify(self) -> None:
        self.high_water = max(self.high_water, self.open_count)
        self._g_open.set(self.open_count)
        self._g_idle.set(len(self._idle))
        self._g_leased.set(len(self._leased))
        self._g_waiting.set(self.waiting_count)
        self._g_saturated.set(1 if self._saturated else 0)
        old, self._changed = self._changed, trio.Event()
        old.set()

    def _recycle_counter(self, reason: str) -> None:
        self.metrics.counter("rtzr_pool_recycles_total", "sockets closed by the pool, by reason", f"reason={reason}").inc()

    def note_finalize_timeout(self) -> None:
        self._recycle_counter("finalize_timeout")

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sockets' nursery; warm up (bounded), report started, recycle until cancelled, close with EOS."""
        self._reset()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                self.session_budget.on_change = self._notify  # contention sheds idle spares (_due, _wanted_opens)
                await nursery.start(self.session_budget.run)  # stops with the pool, giving its leases back
                nursery.start_soon(self._maintain)
                nursery.start_soon(self._retry_when_token_arrives)
                await self._warm_up()
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._draining = True
                self._fail_waiters("pool is shutting down")
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self.pool_config.close_timeout_ms / 1000.0 + 0.5):
                        await self._close_all()
                    nursery.cancel_scope.cancel()
        self._nursery = None

    async def _retry_when_token_arrives(self) -> None:
        """Opens that failed for want of a token back off up to open_retry_max_ms; a new token ends the wait."""
        while True:
            await self.tokens.wait_changed()
            if self._open_failures and self.tokens.not_ready_reason() is None:
                self._retry_at = -math.inf
                self._notify()

    async def _warm_up(self) -> None:
        """Until the spares are open, an open has failed, or budgets.connect passed: "started" means warm."""
        want = min(self.pool_config.spare, self.pool_config.max_sessions) if self.pooled else 0
        with trio.move_on_after(self.budgets.connect.seconds):
            while len(self._idle) < want and not self._open_failures:
                changed = self._changed
                await changed.wait()
        if len(self._idle) < want:
            log.warning("rtzr_pool_cold_start", idle=len(self._idle), spare=want, reason=self._last_open_error or "slow")
        else:
            log.info("rtzr_pool_warm", idle=len(self._idle))

    async def _close_all(self) -> None:
        socks = [*self._idle, *self._leased]
        self._clear_idle()
        self._leased.clear()  # each socket is counted once, as closing
        async with trio.open_nursery() as n:
            for sock in socks:
                self._closing.add(sock)
                n.start_soon(self._close_one, sock, "shutdown", True)
        self._notify()

    def _due(self, sock: RtzrSocket, now: float) -> str | None:
        """Why an idle socket must go now, or None."""
        pc = self.pool_config
        if not sock.usable:
            return self._unusable_reason(sock)
        if self.session_budget.contended:  # a lessee elsewhere waits for a session: no idle spares held here
            return "shed"
        # Written as the heaps' keys are (below), so that both agree to the last bit.
        if sock.last_used + pc.max_idle_ms / 1000.0 <= now:
            return "idle"
        if sock.opened_at + pc.max_age_ms / 1000.0 <= now:
            return "age"
        if sock.token_expire_at <= self.tokens.wall() + pc.token_min_remaining_ms / 1000.0:
            return "token"
        return None

    @staticmethod
    def _unusable_reason(sock: RtzrSocket) -> str:
        if sock.bad or not sock.is_open:
            return "lost"
        if sock.tracker.untrusted:
            return "untrusted_timestamps"
        return "unclean"

    # Idle sockets and their due times (issue 13: the maintainer ran on every lease and every return, and
    # rescanned every idle socket each time: O(idle) per utterance). Now a change costs O(log idle):
    # - max_idle / max_age fall due at a fixed trio time per idle stint: a heap keyed by it;
    # - the token at a fixed wall time (token_expire_at; wall() is read at each pass, as _due does): a heap;
    # - a socket that dies or stops being clean while idle is reported by the socket (on_closed /
    #   on_unclean) and checked at the next pass;
    # - a contended session budget sheds every idle socket: one drain.
    # Entries of a socket that left the idle list (leased, closed) are skipped when they reach the top;
    # the heaps are rebuilt when stale entries outnumber live ones (amortised O(1)).

    def _add_idle(self, sock: RtzrSocket) -> None:
        pc = self.pool_config
        stint = next(self._stints)
        self._idle[sock] = stint
        due = min(sock.last_used + pc.max_idle_ms / 1000.0, sock.opened_at + pc.max_age_ms / 1000.0)
        heapq.heappush(self._time_heap, (due, stint, sock))
        heapq.heappush(self._token_heap, (sock.token_expire_at, stint, sock))
        if len(self._time_heap) > 2 * len(self._idle) + 64:
            self._rebuild_heaps()

    def _rebuild_heaps(self) -> None:
        pc = self.pool_config
        idle_s, age_s = pc.max_idle_ms / 1000.0, pc.max_age_ms / 1000.0
        self._time_heap = [(min(s.last_used + idle_s, s.opened_at + age_s), n, s) for s, n in self._idle.items()]
        self._token_heap = [(s.token_expire_at, n, s) for s, n in self._idle.items()]
        heapq.heapify(self._time_heap)
        heapq.heapify(self._token_heap)

    def _clear_idle(self) -> None:
        self._idle.clear()
        self._time_heap.clear()
        self._token_heap.clear()
        self._suspects.clear()

    def _recycle_idle(self, sock: RtzrSocket, now: float) -> bool:
        """Close an idle socket if it is due (as _due has always decided: reason and priority)."""
        reason = self._due(sock, now)
        if reason is None:
            return False
        del self._idle[sock]
        self._recycle_counter(reason)
        self._nursery_close(sock, reason, eos=reason in ("idle", "age", "token", "shed"))
        return True

    def _pop_due(self, heap: list[tuple[float, int, RtzrSocket]], limit: float, now: float) -> None:
        """Pop the entries due by ``limit`` and the stale ones on top; recycle what _due confirms."""
        idle = self._idle
        keep: list[tuple[float, int, RtzrSocket]] = []
        while heap and (heap[0][0] <= limit or idle.get(heap[0][2]) != heap[0][1]):
            entry = heapq.heappop(heap)
            if idle.get(entry[2]) == entry[1] and not self._recycle_idle(entry[2], now):
                keep.append(entry)  # the wall clock stepped back between reads: check it again next pass
        for entry in keep:
            heapq.heappush(heap, entry)

    def _recycle_due(self, now: float) -> float:
        """Close every idle socket that is due; return when the next one falls due (trio clock)."""
        if self.session_budget.contended:  # every idle socket goes ("shed", or why it is unusable)
            for sock in list(self._idle):
                self._recycle_idle(sock, now)
            if not self._idle:
                self._clear_idle()
        while self._suspects:
            sock = self._suspects.pop()
            if sock in self._idle:
                self._recycle_idle(sock, now)
        self._pop_due(self._time_heap, now, now)
        wall_limit = self.tokens.wall() + self.pool_config.token_min_remaining_ms / 1000.0
        self._pop_due(self._token_heap, wall_limit, now)
        # Either pass may have left the other heap a stale top (a socket recycled through the other key).
        self._pop_due(self._time_heap, -math.inf, now)
        self._pop_due(self._token_heap, -math.inf, now)
        wake_at = math.inf
        if self._time_heap:
            wake_at = self._time_heap[0][0]
        if self._token_heap:
            wake_at = min(wake_at, now + (self._token_heap[0][0] - wall_limit))
        return wake_at

    def _on_socket_changed(self, sock: RtzrSocket) -> None:
        """A socket died or stopped being clean: recheck it if idle, and wake the maintainer (replace it)."""
        if sock in self._idle:
            self._suspects.append(sock)
        self._notify()

    def _wanted_opens(self) -> int:
        """How many more sockets to open now: spares plus one per waiting lessee, within max_sessions."""
        waiting = self.waiting_count
        spare = self.pool_config.spare if self.pooled and not self.session_budget.contended else 0
        want = spare + waiting - len(self._idle) - self._opening
        return max(0, min(want, self.pool_config.max_sessions - self.open_count))

    async def _maintain(self) -> None:
        assert self._nursery is not None
        while True:
            now = trio.current_time()
            due_at = self._recycle_due(now)
            wake_at = math.inf
            if now >= self._retry_at:
                for _ in range(self._wanted_opens()):
                    self._opening += 1
                    self._nursery.start_soon(self._open_one)
            else:
                wake_at = self._retry_at
            self._notify()
            wake_at = min(wake_at, due_at)
            changed = self._changed
            with trio.move_on_at(wake_at):
                await changed.wait()

    async def _open(self) -> RtzrSocket:
        assert self._nursery is not None, "RtzrPool.run is not running"
        budget_lease = await self.session_budget.acquire()  # BudgetFull / BudgetUnavailable: nothing opened
        try:
            sock = await RtzrSocket.connect(
                self.config, self.tokens, self.budgets, self.metrics, self._nursery, query=self._query
            )
        except BaseException:
            self.session_budget.release(budget_lease)
            raise
        self._budget_leases[sock] = budget_lease  # given back in _close_one, once the socket is closed
        self._nursery_watch(sock)
        return sock

    async def _open_one(self) -> None:
        """Open a socket for the pool (a spare, or the head of the queue); failures back off, never escape."""
        sock: RtzrSocket | None = None
        try:
            sock = await self._open()
        except (BudgetFull, BudgetUnavailable) as exc:  # the shared limit, not RTZR: retry soon, count apart
            self._opening -= 1
            self._saturated = isinstance(exc, BudgetFull)
            self._open_failed(exc, saturated=self._saturated)
            self._retry_at = min(self._retry_at, trio.current_time() + self.session_budget.retry_s)
        except RtzrSaturated as exc:
            self._opening -= 1
            self._c_429.inc()
            self._saturated = True
            self._open_failed(exc, saturated=True)
        except Exception as exc:  # RtzrConnectError, BudgetExpired, RtzrAuthError, or a surprise (bad host name)
            self._opening -= 1
            self._c_open_failed.inc()
            self._open_failed(exc, saturated=False)
        except BaseException:
            self._opening -= 1
            raise
        else:
            self._opening -= 1
        if sock is not None:
            self._open_failures = 0
            self._retry_at = -math.inf
            self._saturated = False
            self._last_open_error = ""
            self._open_refused = False
            if self._draining:
                self._nursery_close(sock, "shutdown")
            else:
                self._offer(sock, hit=False)
        self._notify()

    def _open_failed(self, exc: Exception, *, saturated: bool) -> None:
        self._open_failures += 1
        delay = backoff_delay(self._open_failures - 1, 0.25, self.pool_config.open_retry_max_ms / 1000.0, random.random())
        self._retry_at = trio.current_time() + delay
        self._last_open_error = f"{type(exc).__name__}: {exc}"
        self._open_refused = not saturated
        log.warning("rtzr_pool_open_failed", reason=self._last_open_error, saturated=saturated,
                    failures=self._open_failures, retry_in_s=round(delay, 3))
        # Saturation: waiting lessees wait for a returned socket. Otherwise, when nothing could serve the
        # head of the queue soon, tell it now (it replays or reports) rather than at its budget.
        nothing_else = not self._leased and not self._idle and not self._opening
        if not saturated and nothing_else:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.gone:
                    waiter.error = exc
                    waiter.event.set()
                    break

    def _nursery_watch(self, sock: RtzrSocket) -> None:
        """Wake the maintainer when the socket dies, so it is replaced promptly (a callback, not a task)."""
        if self._nursery is None:
            return
        if sock.lost:
            self._notify()
        else:
            sock.on_closed = sock.on_unclean = self._on_socket_changed

    def _nursery_close(self, sock: RtzrSocket, reason: str, *, eos: bool = True) -> None:
        if self._nursery is None:  # the pool has stopped; its nursery already closed every socket
            return
        # Counted as closing from now, not from when the task first runs: max_sessions holds in between.
        self._closing.add(sock)
        self._nursery.start_soon(self._close_one, sock, reason, eos)

    async def _close_one(self, sock: RtzrSocket, reason: str, eos: bool) -> None:
        self._closing.add(sock)
        try:
            await sock.close(eos=eos and sock.is_open and not sock.bad)
        finally:
            budget_lease = self._budget_leases.pop(sock, None)
            if budget_lease is not None:
                self.session_budget.release(budget_lease)
            self._closing.discard(sock)
            self._notify()
        log.debug("rtzr_pool_socket_closed", reason=reason)

    # ------------------------------------------------------------------ leasing

    def _offer(self, sock: RtzrSocket, *, hit: bool) -> None:
        """A socket is free: to the first lessee still waiting, else to the idle list (LIFO)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.gone:
                continue
            waiter.sock, waiter.hit = sock, hit
            self._leased.add(sock)
            waiter.event.set()
            return
        if self.pooled:
            sock.last_used = trio.current_time()
            self._add_idle(sock)
        else:  # per-utterance mode: its lessee gave up; nobody else may use it
            self._nursery_close(sock, "per_utterance", eos=sock.usable)

    def _fail_waiters(self, reason: str) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.gone:
                waiter.error = RtzrSocketLost(reason)  # one exception per waiter: each is raised in its own task
                waiter.event.set()

    def _take_idle(self) -> RtzrSocket | None:
        while self.pooled and self._idle and not self.waiting_count:
            sock, _ = self._idle.popitem()  # most recently used: keeps the rest aging out
            if sock.usable:
                self._leased.add(sock)
                return sock
            self._recycle_counter(self._unusable_reason(sock))
            self._nursery_close(sock, "lost", eos=False)
        return None

    async def _acquire(self) -> tuple[RtzrSocket, bool]:
        if self._draining or self._nursery is None:
            raise RtzrSocketLost("pool is shutting down" if self._draining else "RTZR pool is not running")
        sock = self._take_idle()
        if sock is not None:
            self._notify()
            return sock, True
        if self._open_refused and self._retry_at > trio.current_time() and not (
            self._leased or self._opening or self._closing
        ):  # RTZR refuses us and nothing could free a socket: say so now, not at the budget
            raise RtzrConnectError(f"RTZR unavailable: {self._last_open_error}")
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._notify()  # the maintainer opens a socket for it if there is room
        try:
            await waiter.event.wait()
        except BaseException:
            waiter.gone = True
            if waiter.sock is not None:  # handed a socket as we were cancelled: pass it on, or close it
                self._leased.discard(waiter.sock)
                if waiter.sock.usable and not self._draining:
                    self._offer(waiter.sock, hit=waiter.hit)
                else:
                    self._nursery_close(waiter.sock, self._unusable_reason(waiter.sock), eos=False)
            self._notify()
            raise
        if waiter.error is not None:
            raise waiter.error
        assert waiter.sock is not None
        return waiter.sock, waiter.hit

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """``async with pool.lease() as lease:`` — a socket for one utterance, queued fairly within budgets.lease."""
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
        if sock not in self._leased:  # already closed by the shutdown
            return
        self._leased.discard(sock)
        if not self.pooled:
            self._nursery_close(sock, "per_utterance", eos=sock.usable)
        elif sock.usable and not self._draining:
            self._offer(sock, hit=True)
        else:
            reason = self._unusable_reason(sock)
            self._recycle_counter(reason)
            if sock.tracker.untrusted:
                log.warning("rtzr_socket_untrusted", reason=sock.tracker.untrusted)
            # Uncertain state: close without EOS (EOS would make the server answer stale audio).
            self._nursery_close(sock, reason, eos=False)
        self._notify()

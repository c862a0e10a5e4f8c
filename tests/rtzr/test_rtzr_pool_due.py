"""RtzrPool's idle bookkeeping (issue 13): due heaps instead of a rescan of every idle socket per change.

Pure and deterministic: a pool that is not running (so closes are only counted), stand-in sockets, a
MockClock moved by hand and a wall clock moved by hand. The reference is the scan the pool used to do on
every change: every idle socket whose ``_due`` is set goes, and the next wake-up is the earliest
``_next_due`` of the rest.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import trio
import trio.testing

from engine.budgets import Budgets
from engine.config import BudgetsConfig, PoolConfig, RtzrConfig
from engine.metrics import Registry
from engine.rtzr.auth import TokenManager
from engine.rtzr.budget import LocalSessionBudget
from engine.rtzr.pool import RtzrPool
from engine.rtzr.stream import RtzrSocket

from .rtzr_env import running_pool, stack, wait_for

IDLE_S, AGE_S, TOKEN_MIN_S = 20.0, 600.0, 600.0


class _Tracker:
    untrusted = ""


class FakeSock:
    """What the pool reads of an RtzrSocket while it is idle."""

    def __init__(self, now: float, token_expire_at: float) -> None:
        self.opened_at = self.last_used = now
        self.token_expire_at = token_expire_at
        self.bad = False
        self.eos_sent = False
        self.closed = False
        self.tracker = _Tracker()
        self.on_closed: Any = None
        self.on_unclean: Any = None

    @property
    def is_open(self) -> bool:
        return not self.closed

    @property
    def lost(self) -> bool:
        return self.closed

    @property
    def usable(self) -> bool:
        return self.is_open and not self.bad and not self.eos_sent and not self.tracker.untrusted

    def die(self) -> None:  # what RtzrSocket._lose does
        self.closed = self.bad = True
        hook, self.on_closed = self.on_closed, None
        if hook is not None:
            hook(self)

    def untrust(self) -> None:  # what RtzrSocket._route does on a result that breaks the timeline
        self.tracker = _Tracker()
        self.tracker.untrusted = "a result ends after the audio sent"
        if self.on_unclean is not None:
            self.on_unclean(self)


class Wall:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def make_pool(wall: Wall) -> RtzrPool:
    config = RtzrConfig(pool=PoolConfig(max_idle_ms=int(IDLE_S * 1000), max_age_ms=int(AGE_S * 1000),
                                        token_min_remaining_ms=int(TOKEN_MIN_S * 1000), max_sessions=10_000))
    budgets, metrics = Budgets(BudgetsConfig()), Registry()
    tokens = TokenManager(config, budgets, metrics, wall=wall)
    return RtzrPool(config, tokens, budgets, metrics, session_budget=LocalSessionBudget(10_000))


def add(pool: RtzrPool, sock: FakeSock) -> None:
    """A socket the pool opened (hooks as _nursery_watch sets them), offered to the idle list."""
    sock.on_closed = sock.on_unclean = pool._on_socket_changed
    pool._offer(sock, hit=False)  # type: ignore[arg-type]


def recycled(pool: RtzrPool, reason: str) -> float:
    return pool.metrics.value("rtzr_pool_recycles_total", f"reason={reason}") or 0


def reference_next_due(pool: RtzrPool, sock: FakeSock, now: float) -> float:
    """The wake-up the old scan computed for an idle socket."""
    token_at = now + (sock.token_expire_at - pool.tokens.wall()) - TOKEN_MIN_S
    return min(sock.last_used + IDLE_S, sock.opened_at + AGE_S, token_at)


def check_pass(pool: RtzrPool, now: float) -> None:
    """One maintainer pass equals the old full scan: same sockets recycled, same reasons, same wake-up."""
    before = list(pool._idle)
    expected = {s: pool._due(s, now) for s in before}
    counts = {r: recycled(pool, r) for r in ("idle", "age", "token", "shed", "lost", "untrusted_timestamps")}
    wake_at = pool._recycle_due(now)
    gone = {s for s in before if s not in pool._idle}
    assert gone == {s for s, r in expected.items() if r is not None}
    for reason, n in counts.items():
        assert recycled(pool, reason) - n == sum(1 for r in expected.values() if r == reason)
    assert list(pool._idle) == [s for s in before if s not in gone]  # order kept: LIFO leasing unchanged
    ref = min((reference_next_due(pool, s, now) for s in pool._idle), default=math.inf)  # type: ignore[arg-type]
    if math.isinf(ref):
        assert math.isinf(wake_at)
    else:
        assert wake_at == pytest.approx(ref, abs=1e-6)


@pytest.fixture
def manual_clock() -> trio.testing.MockClock:
    """Time moves only when a test jumps it."""
    return trio.testing.MockClock()


@pytest.mark.parametrize("seed", range(12))
async def test_heaps_recycle_exactly_as_the_full_scan(seed: int, manual_clock: trio.testing.MockClock) -> None:
    """Random leases, returns, clock steps, wall jumps (token), deaths, untrusted results, contention."""
    rng = random.Random(seed)
    wall = Wall()
    pool = make_pool(wall)
    clk = trio.lowlevel.current_clock()
    assert isinstance(clk, trio.testing.MockClock)
    leased: list[FakeSock] = []
    for _ in range(600):
        now = trio.current_time()
        op = rng.random()
        if op < 0.25:  # a new socket with a token of its own
            add(pool, FakeSock(now, wall.t + rng.uniform(TOKEN_MIN_S - 5, TOKEN_MIN_S + 60)))
        elif op < 0.45:
            sock = pool._take_idle()
            if sock is not None:
                leased.append(sock)  # type: ignore[arg-type]
        elif op < 0.65 and leased:  # returned (last_used moves), then leased again later
            sock_back = leased.pop(rng.randrange(len(leased)))
            pool._release(sock_back)  # type: ignore[arg-type]
        elif op < 0.78:
            clk.jump(rng.choice([0.0, 0.5, 3.0, IDLE_S / 2, IDLE_S + 0.1]))
        elif op < 0.84:
            wall.t += rng.choice([1.0, 10.0, 45.0])  # tokens come due (wall time), trio time does not move
        elif op < 0.88 and pool._idle:
            rng.choice(list(pool._idle)).die()  # type: ignore[attr-defined]
        elif op < 0.91 and pool._idle:
            rng.choice(list(pool._idle)).untrust()  # type: ignore[attr-defined]
        elif op < 0.93:
            pool.session_budget.contended = rng.random() < 0.5  # type: ignore[misc]
        check_pass(pool, trio.current_time())
    assert recycled(pool, "idle") and recycled(pool, "token") and recycled(pool, "shed")


async def test_returned_then_leased_again_is_due_from_its_last_return(manual_clock: trio.testing.MockClock) -> None:
    wall = Wall()
    pool = make_pool(wall)
    clk = trio.lowlevel.current_clock()
    assert isinstance(clk, trio.testing.MockClock)
    start = trio.current_time()
    sock = FakeSock(start, wall.t + 10_000)
    add(pool, sock)
    assert pool._recycle_due(start) == pytest.approx(start + IDLE_S)
    clk.jump(IDLE_S - 5)
    assert pool._take_idle() is sock
    clk.jump(3)
    pool._release(sock)  # type: ignore[arg-type]  # idle again from now: due at now + IDLE_S
    assert pool._take_idle() is sock
    pool._release(sock)  # type: ignore[arg-type]
    returned_at = trio.current_time()
    clk.jump(5)  # past the first stint's due time: its heap entry is stale, nothing goes
    assert pool._recycle_due(trio.current_time()) == pytest.approx(returned_at + IDLE_S)
    assert list(pool._idle) == [sock] and not recycled(pool, "idle")
    clk.jump(IDLE_S)
    assert pool._recycle_due(trio.current_time()) == math.inf
    assert not pool._idle and recycled(pool, "idle") == 1


async def test_tokens_with_different_expiry_and_a_wall_clock_step(manual_clock: trio.testing.MockClock) -> None:
    wall = Wall()
    pool = make_pool(wall)
    now = trio.current_time()
    early, late = FakeSock(now, wall.t + TOKEN_MIN_S + 8), FakeSock(now, wall.t + TOKEN_MIN_S + 12)
    add(pool, late)
    add(pool, early)
    assert pool._recycle_due(now) == pytest.approx(now + 8)  # the earlier token, on the trio clock
    wall.t += 9  # the wall clock steps forward (a token refresh, NTP): the early token is due now
    assert pool._recycle_due(now) == pytest.approx(now + 3)
    assert list(pool._idle) == [late] and recycled(pool, "token") == 1


async def test_contention_sheds_idle_and_returned_sockets(manual_clock: trio.testing.MockClock) -> None:
    wall = Wall()
    pool = make_pool(wall)
    now = trio.current_time()
    socks = [FakeSock(now, wall.t + 10_000) for _ in range(5)]
    for s in socks:
        add(pool, s)
    taken = pool._take_idle()
    assert taken is socks[-1]
    pool.session_budget.contended = True  # type: ignore[misc]
    assert pool._recycle_due(now) == math.inf
    assert not pool._idle and recycled(pool, "shed") == 4
    pool._release(taken)  # type: ignore[arg-type]  # returned while contended: shed at the next pass
    assert list(pool._idle) == [taken]
    pool._recycle_due(now)
    assert not pool._idle and recycled(pool, "shed") == 5
    pool.session_budget.contended = False  # type: ignore[misc]
    fresh = FakeSock(now, wall.t + 10_000)
    add(pool, fresh)
    pool._recycle_due(now)
    assert list(pool._idle) == [fresh]


async def test_idle_socket_that_dies_or_turns_untrusted_goes_at_the_next_pass(manual_clock: trio.testing.MockClock) -> None:
    wall = Wall()
    pool = make_pool(wall)
    now = trio.current_time()
    a, b, c = (FakeSock(now, wall.t + 10_000) for _ in range(3))
    for s in (a, b, c):
        add(pool, s)
    a.die()
    b.untrust()
    pool._recycle_due(now)
    assert list(pool._idle) == [c]
    assert recycled(pool, "lost") == 1 and recycled(pool, "untrusted_timestamps") == 1


@pytest.mark.parametrize("idle", [10, 300])
async def test_maintain_work_per_change_does_not_grow_with_idle_sockets(
    idle: int, monkeypatch: Any, manual_clock: trio.testing.MockClock
) -> None:
    """A lease and a return each cost O(1) _due calls, whatever the number of idle sockets."""
    wall = Wall()
    pool = make_pool(wall)
    now = trio.current_time()
    for _ in range(idle):
        add(pool, FakeSock(now, wall.t + 10_000))
    pool._recycle_due(now)
    calls = 0
    real_due = pool._due

    def counting_due(sock: Any, t: float) -> str | None:
        nonlocal calls
        calls += 1
        return real_due(sock, t)

    monkeypatch.setattr(pool, "_due", counting_due)
    for _ in range(100):
        sock = pool._take_idle()
        assert sock is not None
        pool._recycle_due(now)
        pool._release(sock)
        pool._recycle_due(now)
    assert calls == 0  # nothing is due: no socket is examined at all (the old scan: 2 * 100 * idle calls)
    assert len(pool._time_heap) <= 2 * idle + 64  # stale entries are compacted


async def test_socket_reports_a_result_that_makes_it_unclean() -> None:
    """The pool no longer rescans idle sockets: RtzrSocket must report turning untrusted (on_unclean)."""
    config = RtzrConfig()
    budgets, metrics = Budgets(BudgetsConfig()), Registry()
    sock = RtzrSocket(config, TokenManager(config, budgets, metrics), budgets, metrics)
    seen: list[RtzrSocket] = []
    sock.on_unclean = seen.append
    results = sock.attach()  # the socket's first lessee
    sock.tracker.audio_sent(int(sock.tracker.bytes_per_ms * 1000))  # 1 s of audio
    ok = b'{"seq":0,"start_at":0,"duration":400,"final":false,"alternatives":[{"text":"hi"}]}'
    assert sock._route(ok) and not seen  # nothing wrong: no report
    assert results.receive_nowait().text == "hi"
    late = b'{"seq":0,"start_at":0,"duration":5000,"final":false,"alternatives":[{"text":"hi"}]}'
    assert sock._route(late)  # ends after the 1 s of audio sent: untrusted, not lost
    assert sock.tracker.untrusted and seen == [sock]
    assert sock._route(late) and seen == [sock]  # reported once


async def test_running_pool_hooks_every_socket() -> None:
    with trio.fail_after(10):
        async with stack(spare=3) as s, running_pool(s) as pool:
            await wait_for(lambda: pool.idle_count == 3)
            for sock in pool._idle:
                assert sock.on_closed == pool._on_socket_changed and sock.on_unclean == pool._on_socket_changed

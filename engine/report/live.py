"""The admin port's ``/status`` page: what the engine is doing now, in one self-refreshing HTML page.

:class:`LiveStatus` sees every event the calls emit (``observe``, synchronous and O(1): calls in progress,
a bounded window of recent latencies) and reads the pool, the token manager and readiness when the page is
asked for. Read-only: it is served by ``engine/admin.py`` on the admin listener only, for GET and HEAD.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Protocol

from engine import events as ev
from engine.metrics import Registry
from engine.report.html import CSS

WINDOW_S = 300.0  # latency percentiles over the last five minutes
MAX_SAMPLES = 20_000  # at most this many recent finals kept (bounded memory under any load)
MAX_CALLS_SHOWN = 50
REFRESH_S = 2


class PoolView(Protocol):
    @property
    def open_count(self) -> int: ...
    @property
    def idle_count(self) -> int: ...
    @property
    def leased_count(self) -> int: ...
    @property
    def waiting_count(self) -> int: ...
    @property
    def saturated(self) -> bool: ...


class TokenView(Protocol):
    def token_expires_in_s(self) -> float | None: ...
    def not_ready_reason(self) -> str | None: ...


@dataclass(slots=True)
class _LiveCall:
    call_sid: str
    started: float
    utterances: int = 0
    errors: int = 0
    last_text: str = ""
    last_total_ms: float | None = None


class LiveStatus:
    """Calls in progress and recent latencies, from the events; the page, on request."""

    def __init__(self, pool: PoolView, tokens: TokenView, metrics: Registry, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.tokens = tokens
        self.metrics = metrics
        self.wall = wall
        self.calls: dict[str, _LiveCall] = {}
        self.recent: deque[tuple[float, float, float, float, float]] = deque(maxlen=MAX_SAMPLES)
        self.started = wall()

    def observe(self, event: ev.Event) -> None:
        if isinstance(event, ev.TranscriptPartial):
            return
        if isinstance(event, ev.CallStarted):
            self.calls[event.call_sid] = _LiveCall(event.call_sid, event.ts)
            return
        if isinstance(event, ev.CallEnded):
            self.calls.pop(event.call_sid, None)
            return
        call = self.calls.get(event.call_sid)
        if isinstance(event, ev.SpeechStarted) and call is not None:
            call.utterances += 1
        elif isinstance(event, ev.ErrorEvent) and call is not None:
            call.errors += 1
        elif isinstance(event, ev.TranscriptFinal):
            lat = event.latency
            if call is not None and event.text:
                call.last_text = event.text
            if lat is not None:
                if call is not None:
                    call.last_total_ms = lat.total_ms
                self.recent.append((event.ts, lat.endpoint_ms, lat.lease_ms, lat.stt_ms, lat.total_ms))

    def _window(self, now: float) -> list[tuple[float, float, float, float, float]]:
        start = now - WINDOW_S
        while self.recent and self.recent[0][0] < start:
            self.recent.popleft()
        # held finals (emitted in utterance order) can carry an earlier ts than the one before them
        return [sample for sample in self.recent if sample[0] >= start]

    def page(self, not_ready: str | None, *, draining: bool = False) -> bytes:
        """The status page; ``not_ready``: what /readyz says (None when ready)."""
        now = self.wall()
        hits = self.metrics.value("rtzr_pool_leases_total", "result=hit")
        misses = self.metrics.value("rtzr_pool_leases_total", "result=miss")
        pool = self.pool
        opening = pool.open_count - pool.idle_count - pool.leased_count
        ttl = self.tokens.token_expires_in_s()
        token = self.tokens.not_ready_reason() or ("-" if ttl is None else f"valid, expires in {_duration(ttl)}")
        ready = "ready" if not_ready is None else f"not ready: {not_ready}"
        cards = [(ready, "readiness"), (str(len(self.calls)), "calls in progress"), (str(pool.idle_count), "idle sockets"),
                 (str(pool.leased_count), "leased"), (str(opening), "opening / closing"), (str(pool.waiting_count), "waiting"),
                 ("-" if not hits + misses else f"{hits / (hits + misses):.0%}", f"pool hit rate ({int(hits + misses)} leases)")]
        parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">',
                 f"<title>sori status</title><style>{CSS}.bad b{{color:#c00}}</style></head><body>",
                 "<h1>sori status</h1>",
                 f'<div class="muted">{escape(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))} · up '
                 f"{_duration(now - self.started)} · refreshes every {REFRESH_S} s · read-only</div>",
                 '<div class="cards">' + "".join(
                     f'<div class="card{" bad" if i == 0 and not_ready is not None else ""}"><b>{escape(v)}</b>'
                     f"<span>{escape(k)}</span></div>" for i, (v, k) in enumerate(cards)) + "</div>",
                 f"<div>RTZR token: {escape(token)}</div>",
                 f"<div>pool: {pool.open_count} open{' · SATURATED (HTTP 429)' if pool.saturated else ''}"
                 f"{' · draining' if draining else ''}</div>",
                 self._latency_table(now), self._calls_table(now), "</body></html>"]
        return "".join(parts).encode()

    def _latency_table(self, now: float) -> str:
        window = self._window(now)
        rows = []
        for i, name in ((1, "endpoint wait"), (2, "lease wait"), (3, "STT"), (4, "total")):
            values = sorted(sample[i] for sample in window)
            cells = [_nearest_rank(values, q) for q in (0.5, 0.95)] + [values[-1] if values else None]
            rows.append(f"<tr><td>{name}</td>" + "".join(
                f'<td class="n">{"-" if v is None else f"{v:,.0f}"}</td>' for v in cells) + "</tr>")
        return (f"<h2>Latency, last {WINDOW_S / 60:.0f} minutes ({len(window):,} finals)</h2>"
                '<table><tr><th>ms</th><th class="n">p50</th><th class="n">p95</th><th class="n">max</th></tr>'
                + "".join(rows) + "</table>")

    def _calls_table(self, now: float) -> str:
        calls = sorted(self.calls.values(), key=lambda c: c.started)[:MAX_CALLS_SHOWN]
        rows = "".join(
            f"<tr{' class=err' if c.errors else ''}><td>{escape(c.call_sid)}</td><td class=n>{_duration(now - c.started)}</td>"
            f"<td class=n>{c.utterances}</td><td class=n>{c.errors}</td>"
            f'<td class=n>{"-" if c.last_total_ms is None else f"{c.last_total_ms:,.0f}"}</td>'
            f"<td class=t>{escape(c.last_text)}</td></tr>" for c in calls)
        more = f"<div class='muted'>and {len(self.calls) - len(calls)} more</div>" if len(self.calls) > len(calls) else ""
        return (f"<h2>Calls in progress ({len(self.calls)})</h2><table><tr><th>call</th><th class=n>for</th>"
                "<th class=n>utterances</th><th class=n>errors</th><th class=n>last total ms</th><th>last text</th></tr>"
                f"{rows}</table>{more}")


def _nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[max(0, -(-int(q * 1000) * len(values) // 1000) - 1)]


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

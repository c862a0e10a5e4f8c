"""The call analysis behind ``sori report`` (sans-IO): feed events in log order, then ``finish()``.

Per call it rebuilds each utterance (text, speech start/end, endpoint wait, lease wait, the socket that
served it, STT time, total, error) and the turns; across calls it keeps distributions (bounded memory,
``dist.py``), the pool hit rate, sockets, tokens, errors by kind, and the comparison with a naive bridge.

Memory does not grow with the log: a call's detail lives from its first event to its ``call.ended`` (or the
end of the log); then it is folded into the totals, a one-line summary is kept per call, and the full
detail only for the last ``keep_calls`` calls (all of them when ``keep_calls`` is None, e.g. ``--call``).

The naive bridge (what sori replaces, as the seed's analysis compared against Google's 500 ms silence +
650 ms STT = 1,150 ms) is computed from the same utterances: a 500 ms silence wait instead of sori's
endpoint, a new socket per utterance at the measured connect time (median handshake of the sockets in the
log, or ``connect_ms``), then the same STT time. sori's side is each closing final's ``total_ms``.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from engine.report import schema as s
from engine.report.dist import Dist

NAIVE_SILENCE_MS = 500.0
SEED_GOOGLE_MS = 1150.0  # the seed's alternative: 500 ms silence + 650 ms STT


@dataclass(slots=True)
class UtteranceRow:
    utterance_id: str
    index: int  # position in the call, from 0
    start_ms: float | None = None  # speech start, call audio timeline
    last_speech_ms: float | None = None
    end_ms: float | None = None  # endpoint decision
    end_reason: str | None = None
    text: str = ""
    finals: int = 0
    continues: str | None = None
    turn: int | None = None  # 1-based turn number once turn.ended names it
    endpoint_ms: float | None = None
    lease_ms: float | None = None
    stt_ms: float | None = None
    total_ms: float | None = None
    pool_hit: bool | None = None
    socket_id: str | None = None
    socket_uses: int | None = None
    connect_ms: float | None = None  # the socket's handshake, when the lessee waited for it (a miss)
    token_age_s: float | None = None
    replayed: bool = False
    source: str | None = None
    error: str | None = None
    error_message: str | None = None
    naive_ms: float | None = None  # the naive bridge's total for the same utterance (finish())


@dataclass(slots=True)
class TurnRow:
    text: str
    utterance_ids: list[str]
    start_ms: float
    end_ms: float


@dataclass(slots=True)
class CallError:
    kind: str
    message: str


@dataclass(slots=True)
class CallReport:
    call_sid: str
    stream_sid: str
    first_ts: float
    last_ts: float
    started_in_log: bool = False  # its call.started is in the log (else the log starts mid-call)
    complete: bool = False  # its call.ended is in the log
    end_reason: str | None = None
    duration_ms: float | None = None
    utterances: list[UtteranceRow] = field(default_factory=list)
    turns: list[TurnRow] = field(default_factory=list)
    errors: list[CallError] = field(default_factory=list)  # call-level (not an utterance's outcome)


@dataclass(slots=True)
class CallSummary:
    call_sid: str
    first_ts: float
    duration_ms: float | None
    utterances: int
    errors: int
    p50_total_ms: float | None
    max_total_ms: float | None
    complete: bool


@dataclass(slots=True)
class Naive:
    silence_ms: float
    connect_ms: float | None  # None: no connect time in the log and none given
    connect_source: str  # "measured" (median handshake of N sockets) | "given" | "unknown"
    utterances: int
    naive_p50_ms: float | None
    naive_mean_ms: float | None
    sori_p50_ms: float | None
    sori_mean_ms: float | None
    saved_p50_ms: float | None
    saved_mean_ms: float | None
    seed_google_ms: float = SEED_GOOGLE_MS


@dataclass(slots=True)
class Summary:
    calls: int
    calls_incomplete: int
    utterances: int
    finals: int
    errors: int
    errors_by_kind: dict[str, int]
    endpoint: dict[str, Any]
    lease: dict[str, Any]
    stt: dict[str, Any]
    total: dict[str, Any]
    leases: int
    pool_hits: int
    pool_hit_rate: float | None
    reused_leases: int  # served by a socket that had served an earlier lease
    sockets: int
    connect: dict[str, Any]  # handshake time of the distinct sockets seen
    tokens: int  # distinct tokens seen on sockets
    token_refreshes: int
    naive: Naive
    first_ts: float | None
    last_ts: float | None


@dataclass(slots=True)
class Report:
    source: str
    lines: int
    events: int  # decoded and used (partials not included)
    malformed: int
    not_events: int
    partials: int
    summary: Summary
    calls: list[CallSummary]  # every call, in order of first event
    details: list[CallReport]  # full detail of the last keep_calls calls (or all)
    total_hist: list[int]  # counts of total_ms in hist_bins equal bins over [0, hist_upper_ms)
    hist_upper_ms: float


class Analyzer:
    """Feed events with ``add``; ``finish()`` returns the :class:`Report`."""

    def __init__(self, *, call: str | None = None, since: float | None = None, until: float | None = None,
                 keep_calls: int | None = 20, connect_ms: float | None = None) -> None:
        self.call = call
        self.since = since
        self.until = until
        self.connect_ms = connect_ms
        self._open: dict[str, CallReport] = {}
        self._by_uid: dict[str, UtteranceRow] = {}  # utterances of open calls
        self._details: deque[CallReport] = deque(maxlen=keep_calls)
        self._summaries: list[CallSummary] = []
        self._endpoint, self._lease, self._stt, self._total = Dist(), Dist(), Dist(), Dist()
        self._calls = self._incomplete = self._utterances = self._finals = self._errors = 0
        self._error_kinds: Counter[str] = Counter()
        self._leases = self._hits = self._reused = 0
        self._sockets: set[tuple[str, float]] = set()
        self._handshake = Dist()
        self._tokens: set[int] = set()
        self._first_ts: float | None = None
        self._last_ts: float | None = None

    # ------------------------------------------------------------------ input

    def add(self, event: Any) -> None:
        if self.call is not None and self.call not in (event.call_sid, event.stream_sid):
            return
        ts = event.ts
        if (self.since is not None and ts < self.since) or (self.until is not None and ts >= self.until):
            return
        if self._first_ts is None or ts < self._first_ts:
            self._first_ts = ts
        if self._last_ts is None or ts > self._last_ts:
            self._last_ts = ts
        call = self._open.get(event.call_sid)
        if call is None:
            call = self._open[event.call_sid] = CallReport(event.call_sid, event.stream_sid, ts, ts)
        elif ts > call.last_ts:
            call.last_ts = ts
        kind = type(event)
        if kind is s.TranscriptFinal:
            self._final(call, event)
        elif kind is s.SpeechStarted:
            row = self._row(call, event.utterance_id)
            row.start_ms, row.continues = event.start_ms, event.continues
        elif kind is s.SpeechEnded:
            row = self._row(call, event.utterance_id)
            row.last_speech_ms, row.end_ms, row.end_reason = event.last_speech_ms, event.end_ms, event.reason
        elif kind is s.TurnEnded:
            call.turns.append(TurnRow(event.text, list(event.utterance_ids), event.start_ms, event.end_ms))
            for uid in event.utterance_ids:
                found = self._by_uid.get(uid)
                if found is not None:
                    found.turn = len(call.turns)
        elif kind is s.ErrorEvent:
            self._errors += 1
            self._error_kinds[event.kind] += 1
            if event.utterance_id:
                row = self._row(call, event.utterance_id)
                row.error, row.error_message = event.kind, event.message
            else:
                call.errors.append(CallError(event.kind, event.message))
        elif kind is s.CallStarted:
            call.started_in_log = True
        elif kind is s.CallEnded:
            call.complete = True
            call.end_reason, call.duration_ms = event.reason, event.duration_ms
            self._close(call)

    def _row(self, call: CallReport, uid: str) -> UtteranceRow:
        row = self._by_uid.get(uid)
        if row is None:
            row = self._by_uid[uid] = UtteranceRow(uid, len(call.utterances))
            call.utterances.append(row)
        return row

    def _final(self, call: CallReport, event: s.TranscriptFinal) -> None:
        self._finals += 1
        row = self._row(call, event.utterance_id)
        row.finals += 1
        if event.text:
            row.text = f"{row.text} {event.text}" if row.text else event.text
        row.continues = row.continues or event.continues
        row.replayed = row.replayed or event.replayed
        row.source = event.source
        if row.start_ms is None:  # its speech.started is outside the log or the window
            row.start_ms = event.start_ms
        sock = event.socket
        if sock is not None:
            row.socket_id, row.socket_uses, row.token_age_s = sock.id, sock.uses, sock.token_age_s
            key = (sock.id, sock.handshake_ms)
            if key not in self._sockets:
                self._sockets.add(key)
                self._handshake.add(sock.handshake_ms)
            if sock.token_age_s is not None:
                self._tokens.add(round(event.ts - sock.token_age_s))
        lat = event.latency
        if lat is None:  # a server end-point final: its utterance goes on; the closing final has the latency
            return
        row.endpoint_ms, row.lease_ms, row.stt_ms, row.total_ms = lat.endpoint_ms, lat.lease_ms, lat.stt_ms, lat.total_ms
        self._endpoint.add(lat.endpoint_ms)
        self._lease.add(lat.lease_ms)
        self._stt.add(lat.stt_ms)
        self._total.add(lat.total_ms)
        if event.pool_hit is not None:
            row.pool_hit = event.pool_hit
            self._leases += 1
            self._hits += event.pool_hit
            if sock is not None and not event.pool_hit:
                row.connect_ms = sock.handshake_ms
        if sock is not None and sock.uses > 1:
            self._reused += 1

    def _close(self, call: CallReport) -> None:
        """The call is over (or the log is): fold it into the totals and keep its summary."""
        self._open.pop(call.call_sid, None)
        for row in call.utterances:
            self._by_uid.pop(row.utterance_id, None)
        self._calls += 1
        self._utterances += len(call.utterances)
        if not call.complete:
            self._incomplete += 1
        totals = sorted(r.total_ms for r in call.utterances if r.total_ms is not None)
        errors = sum(1 for r in call.utterances if r.error) + len(call.errors)
        self._summaries.append(CallSummary(
            call.call_sid, call.first_ts, call.duration_ms, len(call.utterances), errors,
            totals[max(0, (len(totals) + 1) // 2 - 1)] if totals else None, totals[-1] if totals else None, call.complete))
        self._details.append(call)

    # ------------------------------------------------------------------ output

    def finish(self, *, source: str = "", stats: Any = None, hist_bins: int = 40) -> Report:
        for call in sorted(self._open.values(), key=lambda c: c.first_ts):  # the log ends mid-call
            self._close(call)
        naive = self._naive()
        connect = naive.connect_ms
        for call in self._details:
            for row in call.utterances:
                if row.stt_ms is not None and connect is not None:
                    row.naive_ms = round(NAIVE_SILENCE_MS + connect + row.stt_ms, 1)
        p99 = self._total.quantile(0.99) or 0.0
        upper = float(max(100, 50 * -(-(p99 * 1.1) // 50)))  # a round ceiling above nearly every value
        summary = Summary(
            calls=self._calls, calls_incomplete=self._incomplete, utterances=self._utterances, finals=self._finals,
            errors=self._errors, errors_by_kind=dict(self._error_kinds.most_common()),
            endpoint=self._endpoint.stats(), lease=self._lease.stats(), stt=self._stt.stats(), total=self._total.stats(),
            leases=self._leases, pool_hits=self._hits,
            pool_hit_rate=round(self._hits / self._leases, 4) if self._leases else None,
            reused_leases=self._reused, sockets=len(self._sockets), connect=self._handshake.stats(),
            tokens=len(self._tokens), token_refreshes=max(0, len(self._tokens) - 1), naive=naive,
            first_ts=self._first_ts, last_ts=self._last_ts,
        )
        return Report(
            source=source, lines=getattr(stats, "lines", 0), events=getattr(stats, "events", 0),
            malformed=getattr(stats, "malformed", 0),
            not_events=getattr(stats, "not_events", 0), partials=getattr(stats, "partials", 0),
            summary=summary, calls=self._summaries, details=list(self._details),
            total_hist=self._total.histogram(hist_bins, upper), hist_upper_ms=upper,
        )

    def _naive(self) -> Naive:
        connect: float | None
        if self.connect_ms is not None:
            connect, where = self.connect_ms, "given"
        elif self._handshake.count:
            connect, where = self._handshake.quantile(0.5), "measured"
        else:
            connect, where = None, "unknown"
        stt_p50, stt_mean = self._stt.quantile(0.5), self._stt.mean
        sori_p50, sori_mean = self._total.quantile(0.5), self._total.mean
        naive_p50 = naive_mean = None
        if connect is not None and stt_p50 is not None and stt_mean is not None:
            # the naive total is the STT time shifted by a constant, so its median is the shifted median
            naive_p50, naive_mean = NAIVE_SILENCE_MS + connect + stt_p50, NAIVE_SILENCE_MS + connect + stt_mean

        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        def diff(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(a - b, 1)

        return Naive(NAIVE_SILENCE_MS, r(connect), where, self._total.count, r(naive_p50), r(naive_mean), r(sori_p50),
                     r(sori_mean), diff(naive_p50, sori_p50), diff(naive_mean, sori_mean))

"""The report for a terminal: aligned tables, Korean aligned by display width.

Hangul and other East Asian wide characters take two terminal columns (``unicodedata.east_asian_width``
``W``/``F``), combining marks none; columns are padded by those widths, not by ``len``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from engine.report.analysis import CallReport, Report, UtteranceRow
from engine.report.labels import labels, ms, when

MAX_TEXT_COLS = 28
SLOWEST_CALLS = 10


def width(text: str) -> int:
    """Terminal columns ``text`` takes."""
    cols = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        cols += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return cols


def clip(text: str, cols: int) -> str:
    """``text`` cut to at most ``cols`` columns (an ellipsis marks the cut)."""
    if width(text) <= cols:
        return text
    out, used = [], 0
    for ch in text:
        w = width(ch)
        if used + w > cols - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def pad(text: str, cols: int, *, right: bool = False) -> str:
    fill = " " * max(0, cols - width(text))
    return fill + text if right else text + fill


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """Columns as wide as their widest cell (display width); numbers right-aligned."""
    widths = [max([width(h)] + [width(r[i]) for r in rows]) for i, h in enumerate(header)]
    out = ["  ".join(pad(h, w, right=a) for h, w, a in zip(header, widths, right, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(pad(c, w, right=a) for c, w, a in zip(r, widths, right, strict=True)).rstrip() for r in rows]
    return out


def render(report: Report, lang: str = "en", *, details: bool | None = None) -> str:
    """The whole report; per-call detail when asked, or when the log holds at most three calls."""
    t = labels(lang)
    sm = report.summary
    lines = [f"{t['title']} — {report.source}",
             t["lines"].format(lines=f"{report.lines:,}", events=f"{report.events:,}",
                               partials=f"{report.partials:,}", malformed=report.malformed, not_events=report.not_events),
             f"{t['period']}: {when(sm.first_ts)} → {when(sm.last_ts)}", ""]
    lines += summary_lines(report, lang)
    show = details if details is not None else len(report.calls) <= 3
    if len(report.calls) > 3:
        lines += ["", slowest_lines(report, lang)]
    if show:
        for call in report.details:
            lines += ["", *call_lines(call, lang)]
    return "\n".join(lines) + "\n"


def summary_lines(report: Report, lang: str) -> list[str]:
    t = labels(lang)
    sm = report.summary
    if not sm.calls:
        return [t["no_calls"]]
    head = (f"{t['summary']}: {t['calls']} {sm.calls:,}"
            + (f" ({sm.calls_incomplete} {t['incomplete']})" if sm.calls_incomplete else "")
            + f" · {t['utterances']} {sm.utterances:,} · {t['finals']} {sm.finals:,} · {t['errors']} {sm.errors:,}")
    rows = [[t[name], ms(d["p50"]), ms(d["p95"]), ms(d["max"]), ms(d["mean"]), f"{d['count']:,}"]
            for name, d in (("endpoint", sm.endpoint), ("lease", sm.lease), ("stt", sm.stt), ("total", sm.total))]
    out = [head, ""]
    out += ["  " + line for line in table([t["metric"], "p50", "p95", "max", "mean", "n"], rows,
                                          [False, True, True, True, True, True])]
    rate = "-" if sm.pool_hit_rate is None else f"{sm.pool_hit_rate:.0%}"
    out += ["", f"{t['pool']}: " + t["pool_line"].format(
        hits=f"{sm.pool_hits:,}", leases=f"{sm.leases:,}", rate=rate, reused=f"{sm.reused_leases:,}", sockets=f"{sm.sockets:,}",
        connect="-" if sm.connect["p50"] is None else f"{sm.connect['p50']:.0f} ms"),
        t["tokens_line"].format(tokens=sm.tokens, refreshes=sm.token_refreshes)]
    if sm.errors_by_kind:
        out.append(f"{t['errors_by_kind']}: " + ", ".join(f"{k} {v}" for k, v in sm.errors_by_kind.items()))
    out.append(naive_line(report, lang))
    out.append("  " + t["seed"])
    return out


def naive_line(report: Report, lang: str) -> str:
    t = labels(lang)
    nv = report.summary.naive
    if nv.connect_ms is None or nv.naive_p50_ms is None:
        return f"{t['naive']}: {t['naive_unknown']}"
    return f"{t['naive']}: " + t["naive_line"].format(
        connect=f"{nv.connect_ms:.0f}", where=t[nv.connect_source], silence=nv.silence_ms,
        naive=f"{ms(nv.naive_p50_ms)} ms", sori=f"{ms(nv.sori_p50_ms)} ms", saved=f"{ms(nv.saved_p50_ms)} ms",
        saved_mean=f"{ms(nv.saved_mean_ms)} ms")


def slowest_lines(report: Report, lang: str) -> str:
    t = labels(lang)
    ranked = sorted(report.calls, key=lambda c: -(c.p50_total_ms or 0))[:SLOWEST_CALLS]
    rows = [[c.call_sid, when(c.first_ts), ms(c.duration_ms and c.duration_ms / 1000) + " s", str(c.utterances),
             str(c.errors), ms(c.p50_total_ms), ms(c.max_total_ms)] for c in ranked]
    header = [t["col_call"], t["started"], t["duration"], t["col_utts"], t["errors"], t["col_p50"], t["col_max"]]
    title = t["slowest"].format(shown=len(ranked), n=len(report.calls))
    return "\n".join([title, *table(header, rows, [False, False, True, True, True, True, True])])


def socket_note(row: UtteranceRow, lang: str) -> str:
    t = labels(lang)
    if row.pool_hit is None:
        return "-"
    if not row.pool_hit:
        return t["opened"].format(connect=ms(row.connect_ms))
    if row.socket_uses and row.socket_uses > 1:
        return t["reused"].format(uses=row.socket_uses)
    return t["hit"]


def row_note(row: UtteranceRow, call: CallReport, lang: str) -> str:
    t = labels(lang)
    notes = []
    if row.error:
        notes.append(f"{row.error}")
    if row.continues:
        index = next((r.index for r in call.utterances if r.utterance_id == row.continues), None)
        notes.append(t["cont"].format(n="?" if index is None else index))
    if row.replayed:
        notes.append(t["replayed"])
    if row.finals > 1:
        notes.append(t["server_cut"].format(finals=row.finals))
    return ", ".join(notes)


def call_lines(call: CallReport, lang: str) -> list[str]:
    t = labels(lang)
    status = (f"{t['ended']}: {call.end_reason}" if call.complete else t["in_progress"])
    if not call.started_in_log:
        status += f", {t['began_before']}"
    duration = "-" if call.duration_ms is None else f"{call.duration_ms / 1000:.1f} s"
    head = f"{t['call']} {call.call_sid} ({call.stream_sid}) · {t['started']} {when(call.first_ts)} · {duration} · {status}"
    rows = []
    for r in call.utterances:
        speech = "-" if r.start_ms is None else f"{r.start_ms / 1000:.2f}–" + (
            "?" if r.last_speech_ms is None else f"{r.last_speech_ms / 1000:.2f}")
        text = r.text if r.text or r.error else t["empty"]
        rows.append([str(r.index), "-" if r.turn is None else str(r.turn), clip(text, MAX_TEXT_COLS), speech,
                     ms(r.endpoint_ms), ms(r.lease_ms), socket_note(r, lang), ms(r.stt_ms), ms(r.total_ms),
                     ms(r.naive_ms), row_note(r, call, lang)])
    header = [t["col_n"], t["col_turn"], t["col_text"], t["col_speech"], t["col_endpoint"], t["col_lease"],
              t["col_socket"], t["col_stt"], t["col_total"], t["col_naive"], t["col_note"]]
    out = [head, *table(header, rows, [True, True, False, False, True, True, False, True, True, True, False])]
    for i, turn in enumerate(call.turns, 1):
        out.append(f"  {t['col_turn']} {i}: «{turn.text}» ({t['utterances']}: {len(turn.utterance_ids)})")
    for err in call.errors:
        out.append(f"  {t['call_errors']}: {err.kind}: {err.message}")
    return out

"""The report as one self-contained HTML page: inline CSS and SVG, no script, no network resource.

Per call, a timeline row per utterance drawn around the moment the caller stopped speaking (x = 0): the
speech before it, the endpoint wait, then the wait for the transcript (STT and delivery) up to ``total``;
the lease wait is a thin bar from the start of speech (it runs while the caller talks), and a dashed tick
marks what a naive bridge would have taken for the same utterance. Then the distribution of totals.
"""

from __future__ import annotations

from html import escape

from engine.report.analysis import CallReport, Report, UtteranceRow
from engine.report.labels import labels, ms, when
from engine.report.text import naive_line, row_note, socket_note, width

COLORS = {"speech": "#4c78a8", "endpoint": "#f58518", "lease": "#b279a2", "stt": "#54a24b", "naive": "#888"}
SPEECH_SHOWN_MS = 1200.0  # the timeline shows at most this much speech before its end
MAX_TIMELINE_ROWS = 200  # a call's timeline draws its first utterances only (its table lists them all)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","Noto Sans KR","Noto Sans CJK KR","NanumGothic",sans-serif;
margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px} .muted{color:#666} .small{font-size:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:8px 14px;min-width:105px}
.card b{display:block;font-size:22px} .card span{color:#666;font-size:12px}
table{border-collapse:collapse;margin:6px 0}
th,td{padding:3px 9px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
th{background:#f6f6f6;font-weight:600} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.t{white-space:normal;min-width:160px;max-width:340px} tr.err td{background:#fff1f0}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
svg text{font-size:11px;fill:#333} .axis{stroke:#ccc} .zero{stroke:#999;stroke-dasharray:2 2}
"""


def render_html(report: Report, lang: str = "en") -> str:
    t = labels(lang)
    sm = report.summary
    parts = [f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>{escape(t["title"])}</title>',
             f"<style>{CSS}</style></head><body>",
             f"<h1>{escape(t['title'])}</h1>",
             f'<div class="muted">{escape(t["source"])}: {escape(report.source)} · {escape(when(sm.first_ts))} → '
             f"{escape(when(sm.last_ts))}</div>",
             '<div class="muted small">' + escape(t["lines"].format(
                 lines=f"{report.lines:,}", events=f"{report.events:,}", partials=f"{report.partials:,}",
                 malformed=report.malformed, not_events=report.not_events)) + "</div>"]
    if not sm.calls:
        parts.append(f"<p>{escape(t['no_calls'])}</p></body></html>")
        return "".join(parts)
    parts += [_cards(report, lang), f"<h2>{escape(t['summary'])}</h2>", _summary_table(report, lang),
              _naive_bars(report, lang), f"<h2>{escape(t['distribution'])}</h2>", _histogram(report)]
    if len(report.calls) > 1:
        parts.append(_calls_table(report, lang))
    for call in report.details:
        parts.append(_call(call, lang))
    parts.append("</body></html>")
    return "".join(parts)


def _cards(report: Report, lang: str) -> str:
    t = labels(lang)
    sm = report.summary
    nv = sm.naive
    cards = [(f"{sm.calls:,}", t["calls"]), (f"{sm.utterances:,}", t["utterances"]),
             (f"{ms(sm.total['p50'])} ms", f"{t['total']} p50"), (f"{ms(sm.total['p95'])} ms", f"{t['total']} p95"),
             ("-" if sm.pool_hit_rate is None else f"{sm.pool_hit_rate:.0%}", t["pool"]),
             (f"{ms(nv.saved_p50_ms)} ms", t["naive"]), (f"{sm.errors:,}", t["errors"])]
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for v, k in cards) + "</div>"


def _summary_table(report: Report, lang: str) -> str:
    t = labels(lang)
    sm = report.summary
    rows = "".join(
        f"<tr><td>{escape(t[name])}</td>" + "".join(f'<td class="n">{ms(d[k])}</td>' for k in ("p50", "p95", "max", "mean"))
        + f'<td class="n">{d["count"]:,}</td></tr>'
        for name, d in (("endpoint", sm.endpoint), ("lease", sm.lease), ("stt", sm.stt), ("total", sm.total)))
    rate = "-" if sm.pool_hit_rate is None else f"{sm.pool_hit_rate:.0%}"
    pool = t["pool_line"].format(hits=f"{sm.pool_hits:,}", leases=f"{sm.leases:,}", rate=rate,
                                 reused=f"{sm.reused_leases:,}", sockets=f"{sm.sockets:,}",
                                 connect="-" if sm.connect["p50"] is None else f"{sm.connect['p50']:.0f} ms")
    lines = [f"{t['pool']}: {pool}", t["tokens_line"].format(tokens=sm.tokens, refreshes=sm.token_refreshes)]
    if sm.errors_by_kind:
        lines.append(f"{t['errors_by_kind']}: " + ", ".join(f"{k} {v}" for k, v in sm.errors_by_kind.items()))
    return ('<table><tr><th>ms</th><th class="n">p50</th><th class="n">p95</th><th class="n">max</th><th class="n">mean</th>'
            f'<th class="n">n</th></tr>{rows}</table>' + "".join(f"<div>{escape(x)}</div>" for x in lines))


def _naive_bars(report: Report, lang: str) -> str:
    """Two stacked bars at the medians: the naive bridge (silence, connect, STT) and sori (endpoint, rest)."""
    t = labels(lang)
    nv = report.summary.naive
    sm = report.summary
    text = f"<h3>{escape(naive_line(report, lang))}</h3><div class='muted small'>{escape(t['seed'])}</div>"
    if nv.connect_ms is None or nv.naive_p50_ms is None or sm.stt["p50"] is None:
        return text
    endpoint, total = sm.endpoint["p50"] or 0.0, nv.sori_p50_ms or 0.0
    scale = 700.0 / max(nv.naive_p50_ms, total, nv.seed_google_ms, 1.0)
    rows = [("naive", [(nv.silence_ms, COLORS["naive"], "silence"), (nv.connect_ms, COLORS["lease"], "connect"),
                       (sm.stt["p50"], COLORS["stt"], "STT")], nv.naive_p50_ms),
            ("sori", [(endpoint, COLORS["endpoint"], t["endpoint"]), (max(0.0, total - endpoint), COLORS["stt"], t["stt"])],
             total),
            ("seed", [(nv.seed_google_ms, "#ccc", "Google")], nv.seed_google_ms)]
    svg = ['<svg width="900" height="96" role="img">']
    for i, (name, segs, whole) in enumerate(rows):
        y, x = 6 + i * 30, 90.0
        svg.append(f'<text x="0" y="{y + 15}">{escape(name)}</text>')
        for value, color, label in segs:
            w = value * scale
            svg.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="20" fill="{color}"><title>{escape(label)} '
                       f'{value:.0f} ms</title></rect>')
            if w > width(label) * 7 + 8:
                svg.append(f'<text x="{x + 4:.1f}" y="{y + 14}" style="fill:#fff">{escape(label)}</text>')
            x += w
        svg.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{whole:,.0f} ms</text>')
    svg.append("</svg>")
    return text + "".join(svg)


def _histogram(report: Report) -> str:
    counts, upper = report.total_hist, report.hist_upper_ms
    if not any(counts):
        return ""
    width, height, left = 880, 170, 40
    bw = (width - left) / len(counts)
    top = max(counts)
    svg = [f'<svg width="{width + 40}" height="{height + 30}" role="img">',
           f'<line class="axis" x1="{left}" y1="{height}" x2="{width}" y2="{height}"/>',
           f'<text x="0" y="12">{top:,}</text><text x="0" y="{height}">0</text>']
    for i, c in enumerate(counts):
        h = (height - 10) * c / top
        lo = upper * i / len(counts)
        svg.append(f'<rect x="{left + i * bw + 1:.1f}" y="{height - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                   f'fill="{COLORS["stt"]}"><title>{lo:.0f}–{lo + upper / len(counts):.0f} ms: {c:,}</title></rect>')
    for k in range(0, 6):
        x = left + (width - left) * k / 5
        svg.append(f'<text x="{x:.0f}" y="{height + 16}" text-anchor="middle">{upper * k / 5:,.0f}'
                   f'{" ms" if k == 5 else ""}</text>')
    svg.append("</svg>")
    return "".join(svg)


def _calls_table(report: Report, lang: str, limit: int = 50) -> str:
    t = labels(lang)
    ranked = sorted(report.calls, key=lambda c: -(c.p50_total_ms or 0))[:limit]
    head = "".join(f"<th>{escape(h)}</th>" for h in (t["col_call"], t["started"], t["duration"], t["col_utts"],
                                                      t["errors"], t["col_p50"], t["col_max"]))
    rows = "".join(
        f"<tr{' class=err' if c.errors else ''}><td>{escape(c.call_sid)}</td><td>{escape(when(c.first_ts))}</td>"
        f'<td class="n">{"-" if c.duration_ms is None else f"{c.duration_ms / 1000:.1f} s"}</td><td class="n">{c.utterances}</td>'
        f'<td class="n">{c.errors}</td><td class="n">{ms(c.p50_total_ms)}</td><td class="n">{ms(c.max_total_ms)}</td></tr>'
        for c in ranked)
    title = t["slowest"].format(shown=len(ranked), n=len(report.calls))
    return f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{rows}</table>"


def _call(call: CallReport, lang: str) -> str:
    t = labels(lang)
    status = f"{t['ended']}: {call.end_reason}" if call.complete else t["in_progress"]
    if not call.started_in_log:
        status += f", {t['began_before']}"
    duration = "-" if call.duration_ms is None else f"{call.duration_ms / 1000:.1f} s"
    out = [f'<h2 id="{escape(call.call_sid)}">{escape(t["call"])} {escape(call.call_sid)}</h2>',
           f'<div class="muted">{escape(call.stream_sid)} · {escape(t["started"])} {escape(when(call.first_ts))} · '
           f"{escape(duration)} · {escape(status)}</div>",
           f"<h3>{escape(t['timeline'])}</h3>", _legend(lang), _timeline(call, lang), _utterance_table(call, lang)]
    if call.turns:
        out.append(f"<h3>{escape(t['turns'])}</h3><ol>" + "".join(
            f"<li>«{escape(turn.text)}» <span class='muted small'>({escape(t['utterances'])}: {len(turn.utterance_ids)})"
            "</span></li>" for turn in call.turns) + "</ol>")
    for err in call.errors:
        out.append(f"<div class='err'>{escape(t['call_errors'])}: {escape(err.kind)}: {escape(err.message)}</div>")
    return "".join(out)


def _legend(lang: str) -> str:
    t = labels(lang)
    items = [("speech", t["legend_speech"]), ("endpoint", t["legend_endpoint"]), ("lease", t["legend_lease"]),
             ("stt", t["legend_stt"])]
    return '<div class="legend small">' + "".join(
        f'<span><i style="background:{COLORS[k]}"></i>{escape(v)}</span>' for k, v in items) + (
        f'<span><i style="border-left:2px dashed {COLORS["naive"]};width:0"></i>naive</span></div>')


def _timeline(call: CallReport, lang: str) -> str:
    rows = [r for r in call.utterances if r.last_speech_ms is not None or r.total_ms is not None]
    if not rows:
        return ""
    more = ""
    if len(rows) > MAX_TIMELINE_ROWS:
        more = f'<div class="muted small">… {len(rows) - MAX_TIMELINE_ROWS:,} more utterances in the table below</div>'
        rows = rows[:MAX_TIMELINE_ROWS]
    after = max([r.naive_ms or 0.0 for r in rows] + [r.total_ms or 0.0 for r in rows] + [400.0]) * 1.05
    label_w, width, row_h = 260, 900, 24
    scale = (width - label_w - 60) / (SPEECH_SHOWN_MS + after)
    zero = label_w + SPEECH_SHOWN_MS * scale
    height = row_h * len(rows) + 24
    svg = [f'<svg width="{width}" height="{height}" role="img">',
           f'<line class="zero" x1="{zero:.1f}" y1="0" x2="{zero:.1f}" y2="{height - 18}"/>']
    span = SPEECH_SHOWN_MS + after
    step = 200 if span < 2500 else 500 if span < 6000 else 1000
    for tick in range(-int(SPEECH_SHOWN_MS // step) * step, int(after) + 1, step):
        x = zero + tick * scale
        svg.append(f'<line class="axis" x1="{x:.1f}" y1="{height - 20}" x2="{x:.1f}" y2="{height - 16}"/>'
                   f'<text x="{x:.1f}" y="{height - 4}" text-anchor="middle">{tick}</text>')
    for i, r in enumerate(rows):
        svg.append(_timeline_row(r, i * row_h + 2, zero, scale, lang))
    svg.append("</svg>")
    return "".join(svg) + more


def _timeline_row(r: UtteranceRow, y: int, zero: float, scale: float, lang: str) -> str:
    t = labels(lang)
    label = r.text if r.text else (r.error or t["empty"])
    if len(label) > 22:
        label = label[:21] + "…"
    parts = [f'<text x="0" y="{y + 14}">#{r.index} {escape(label)}</text>']
    end = r.last_speech_ms
    if end is not None and r.start_ms is not None:
        shown = min(SPEECH_SHOWN_MS, max(0.0, end - r.start_ms))
        parts.append(f'<rect x="{zero - shown * scale:.1f}" y="{y + 3}" width="{shown * scale:.1f}" height="14" '
                     f'fill="{COLORS["speech"]}"><title>speech {r.start_ms / 1000:.2f}–{end / 1000:.2f} s</title></rect>')
        if r.lease_ms:
            lx = zero - (end - r.start_ms) * scale
            lx0 = max(lx, zero - SPEECH_SHOWN_MS * scale)
            lw = max(1.0, lx + r.lease_ms * scale - lx0)
            parts.append(f'<rect x="{lx0:.1f}" y="{y + 18}" width="{lw:.1f}" height="4" fill="{COLORS["lease"]}">'
                         f"<title>lease {r.lease_ms:.0f} ms</title></rect>")
    if r.endpoint_ms is not None:
        parts.append(f'<rect x="{zero:.1f}" y="{y + 3}" width="{r.endpoint_ms * scale:.1f}" height="14" '
                     f'fill="{COLORS["endpoint"]}"><title>endpoint {r.endpoint_ms:.0f} ms</title></rect>')
    if r.total_ms is not None and r.endpoint_ms is not None:
        x = zero + r.endpoint_ms * scale
        rest = max(0.0, r.total_ms - r.endpoint_ms)
        parts.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{rest * scale:.1f}" height="14" fill="{COLORS["stt"]}">'
                     f"<title>STT {ms(r.stt_ms)} ms, total {r.total_ms:.0f} ms</title></rect>")
        parts.append(f'<text x="{x + rest * scale + 4:.1f}" y="{y + 14}">{r.total_ms:,.0f} ms</text>')
    if r.naive_ms is not None:
        nx = zero + r.naive_ms * scale
        parts.append(f'<line x1="{nx:.1f}" y1="{y + 1}" x2="{nx:.1f}" y2="{y + 19}" stroke="{COLORS["naive"]}" '
                     f'stroke-dasharray="3 2"><title>naive bridge {r.naive_ms:.0f} ms</title></line>')
    if r.error:
        parts.append(f'<text x="{zero + 4:.1f}" y="{y + 14}" style="fill:#c00">{escape(r.error)}</text>')
    return "".join(parts)


def _utterance_table(call: CallReport, lang: str) -> str:
    t = labels(lang)
    head = [t["col_n"], t["col_turn"], t["col_text"], t["col_speech"], t["col_endpoint"], t["col_lease"],
            t["col_socket"], t["col_stt"], t["col_total"], t["col_naive"], t["col_note"]]
    numeric = {0, 1, 4, 5, 7, 8, 9}
    out = ["<table><tr>" + "".join(f'<th{" class=n" if i in numeric else ""}>{escape(h)}</th>'
                                   for i, h in enumerate(head)) + "</tr>"]
    for r in call.utterances:
        speech = "-" if r.start_ms is None else f"{r.start_ms / 1000:.2f}–" + (
            "?" if r.last_speech_ms is None else f"{r.last_speech_ms / 1000:.2f}")
        text = r.text if r.text else ("" if r.error else t["empty"])
        note = row_note(r, call, lang) + (f": {r.error_message}" if r.error_message else "")
        cells = [str(r.index), "-" if r.turn is None else str(r.turn), text, speech, ms(r.endpoint_ms), ms(r.lease_ms),
                 socket_note(r, lang) + (f" ({r.socket_id})" if r.socket_id else ""), ms(r.stt_ms), ms(r.total_ms),
                 ms(r.naive_ms), note]
        out.append(f"<tr{' class=err' if r.error else ''}>" + "".join(
            f'<td class="{"n" if i in numeric else "t" if i in (2, 10) else ""}">{escape(c)}</td>'
            for i, c in enumerate(cells)) + "</tr>")
    out.append("</table>")
    return "".join(out)

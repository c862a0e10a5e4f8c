"""``sori report``: the call analysis from an events JSONL file, in a terminal, as JSON or as one HTML page.

The engine's events carry what the seed's hand-written analyses needed (per utterance: text, endpoint wait,
lease wait, socket opened or reused and its connect time, STT time, total); this package reads a log of
any size in bounded memory (``reader.py``), analyses it (``analysis.py``, sans-IO) and renders it
(``text.py``, ``html.py``). ``live.py`` is the admin port's ``/status`` page.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from engine.report.analysis import Analyzer, Report
from engine.report.reader import EventReader, open_events


def parse_time(value: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC when it names no zone)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {value!r} (ISO 8601, e.g. 2026-11-29T09:00, or Unix seconds)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("events", metavar="EVENTS.jsonl", help="the engine's JSONL events (- for stdin, .gz accepted)")
    p.add_argument("--call", metavar="SID", help="only this call (its CallSid or StreamSid), in full detail")
    p.add_argument("--since", type=parse_time, metavar="TIME", help="events at or after TIME (ISO 8601 or Unix s)")
    p.add_argument("--until", type=parse_time, metavar="TIME", help="events before TIME")
    p.add_argument("--lang", choices=["ko", "en"], default="en", help="language of the report (default en)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report to FILE")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON instead of tables")
    p.add_argument("--details", action="store_true", help="per-call tables even for a log of many calls")
    p.add_argument("--keep-calls", type=int, default=20, metavar="N",
                   help="calls kept in full detail (the last N; default 20); --call keeps its call")
    p.add_argument("--connect-ms", type=float, metavar="MS",
                   help="connect time for the naive-bridge comparison (default: measured from the log)")


def analyse(path: str, *, call: str | None = None, since: float | None = None, until: float | None = None,
            keep_calls: int | None = 20, connect_ms: float | None = None) -> Report:
    """Stream ``path`` through the analysis."""
    analyzer = Analyzer(call=call, since=since, until=until, keep_calls=None if call else keep_calls,
                        connect_ms=connect_ms)
    stream = open_events(path)
    try:
        reader = EventReader(stream)
        for event in reader:
            analyzer.add(event)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return analyzer.finish(source=path, stats=reader.stats)


def run_cli(args: argparse.Namespace) -> int:
    from engine.report.html import render_html
    from engine.report.text import render

    # A short-lived command allocating millions of small objects: collect rarely (~25 % less CPU on a
    # day's log), as the daemon's "throughput" GC policy does. Nothing here builds reference cycles.
    gc.set_threshold(100_000, 50, 100)
    try:
        report = analyse(args.events, call=args.call, since=args.since, until=args.until, keep_calls=args.keep_calls,
                         connect_ms=args.connect_ms)
    except OSError as exc:
        print(f"sori report: {exc}", file=sys.stderr)
        return 2
    if args.html:
        Path(args.html).write_text(render_html(report, args.lang), encoding="utf-8")
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    else:
        sys.stdout.write(render(report, args.lang, details=True if (args.call or args.details) else None))
        if args.html:
            print(f"HTML report: {args.html}")
    if args.call and not report.calls:
        print(f"sori report: no events of call {args.call} in {args.events}", file=sys.stderr)
        return 1
    return 0


def write_call_report(events: Iterable[object], directory: Path, call_sid: str, lang: str = "en") -> tuple[Path, Path]:
    """Save a call's events as JSONL and its HTML report in ``directory`` (the demo points at them)."""
    from engine import events as ev
    from engine.report.html import render_html

    directory.mkdir(parents=True, exist_ok=True)
    jsonl = directory / f"sori-{call_sid}.jsonl"
    page = directory / f"sori-{call_sid}.html"
    kept = [e for e in events if isinstance(e, ev.Event)]
    jsonl.write_bytes(b"".join(ev.encode(e) + b"\n" for e in kept))
    page.write_text(render_html(analyse(str(jsonl)), lang), encoding="utf-8")
    return jsonl, page

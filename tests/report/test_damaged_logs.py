"""Malformed, partial and older logs: counted and skipped, never fatal; the rest is analysed as if clean."""

from __future__ import annotations

import io

import pytest

from engine.report import analyse
from engine.report.reader import MAX_LINE_BYTES, EventReader

from .helpers import DATA, DEMO, TWO


def test_malformed_lines_are_counted_and_skipped():
    report = analyse(str(DATA / "malformed.jsonl"))
    # not JSON, a cut-off object, binary junk, the cut last line
    assert report.malformed == 4
    # a log line, an unknown (newer) event type, a wrong field type, a JSON array
    assert report.not_events == 4
    clean = analyse(str(TWO))
    assert report.summary == clean.summary  # everything else is read as if the junk were not there
    assert [c.call_sid for c in report.calls] == [c.call_sid for c in clean.calls]


def test_an_overlong_line_is_skipped_without_holding_it():
    good = DEMO.read_bytes()
    cut = good.index(b"\n") + 1
    data = good[:cut] + b'{"type":"x","pad":"' + b"a" * (3 * MAX_LINE_BYTES) + b'"}\n' + good[cut:]
    reader = EventReader(io.BytesIO(data))
    events = list(reader)
    assert reader.stats.malformed == 1
    assert len(events) == len(list(EventReader(io.BytesIO(good))))


def test_a_log_cut_at_both_ends():
    report = analyse(str(DATA / "partial.jsonl"))
    assert report.malformed == 1  # the half-written last line
    [call] = report.details
    assert not call.complete and not call.started_in_log
    assert report.summary.calls_incomplete == 1
    # utterance 0's speech.started is before the cut, but its final is inside: a row from the final alone
    by_index = {r.utterance_id.rsplit(":", 1)[1]: r for r in call.utterances}
    assert by_index["0"].text and by_index["0"].total_ms is not None and by_index["0"].last_speech_ms is None
    # the last utterance ended (speech.ended) but its final is after the cut
    assert by_index["5"].end_ms is not None and by_index["5"].total_ms is None and not by_index["5"].text


def test_recorded_errors_are_utterance_outcomes():
    report = analyse(str(DATA / "faults.jsonl"))  # the emulator stalled one socket: a finalize timeout
    assert report.summary.errors_by_kind == {"budget_expired": 1}
    [call] = report.details
    failed = [r for r in call.utterances if r.error]
    assert [r.error for r in failed] == ["budget_expired"] and failed[0].total_ms is None
    assert "finalize" in (failed[0].error_message or "")


def test_a_log_from_before_the_socket_fields():
    report = analyse(str(DATA / "old_schema.jsonl"))
    sm = report.summary
    assert sm.utterances == 6 and sm.total["count"] == 6
    assert sm.sockets == 0 and sm.tokens == 0
    assert sm.naive.connect_source == "unknown" and sm.naive.naive_p50_ms is None
    given = analyse(str(DATA / "old_schema.jsonl"), connect_ms=99).summary.naive
    assert given.connect_source == "given" and given.naive_p50_ms == pytest.approx(500 + 99 + sm.stt["p50"])


def test_an_empty_log():
    report = analyse(str(DATA / "empty.jsonl"))
    assert report.summary.calls == 0 and report.lines == 0

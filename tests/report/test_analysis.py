"""The analysis of recorded event logs, checked against an independent reading of the same files."""

from __future__ import annotations

import statistics

import pytest

from engine.report import analyse
from engine.report.analysis import NAIVE_SILENCE_MS

from .helpers import DEMO, TWO, closing_finals, load, nearest_rank


@pytest.mark.parametrize("path", [DEMO, TWO])
def test_summary_matches_the_events(path):
    events = load(path)
    report = analyse(str(path))
    sm = report.summary
    finals = closing_finals(events)
    assert sm.calls == sum(e["type"] == "call.started" for e in events)
    assert sm.calls_incomplete == 0
    assert sm.utterances == sum(e["type"] == "speech.started" for e in events)
    assert sm.finals == sum(e["type"] == "transcript.final" for e in events)
    assert report.partials == sum(e["type"] == "transcript.partial" for e in events)
    assert report.malformed == report.not_events == 0
    for key, name in (("total_ms", "total"), ("stt_ms", "stt"), ("lease_ms", "lease"), ("endpoint_ms", "endpoint")):
        values = [f["latency"][key] for f in finals]
        stats = getattr(sm, name)
        assert stats["count"] == len(values)
        assert stats["p50"] == pytest.approx(nearest_rank(values, 0.5))
        assert stats["p95"] == pytest.approx(nearest_rank(values, 0.95))
        assert stats["max"] == pytest.approx(max(values))
    assert sm.leases == len(finals)
    assert sm.pool_hits == sum(1 for f in finals if f["pool_hit"])
    sockets = {(f["socket"]["id"], f["socket"]["handshake_ms"]) for f in events
               if f["type"] == "transcript.final" and f.get("socket")}
    assert sm.sockets == len(sockets) > 0
    assert sm.reused_leases == sum(1 for f in finals if f["socket"]["uses"] > 1)
    assert sm.tokens == 1 and sm.token_refreshes == 0
    # the naive bridge: 500 ms silence + a new socket at the median measured handshake + the same STT
    connect = nearest_rank([h for _, h in sockets], 0.5)
    nv = sm.naive
    assert nv.connect_source == "measured" and nv.connect_ms == pytest.approx(connect)
    stt = [f["latency"]["stt_ms"] for f in finals]
    assert nv.naive_p50_ms == pytest.approx(NAIVE_SILENCE_MS + connect + nearest_rank(stt, 0.5), abs=0.05)
    assert nv.naive_mean_ms == pytest.approx(NAIVE_SILENCE_MS + connect + statistics.fmean(stt), abs=0.05)
    assert nv.saved_p50_ms == pytest.approx(nv.naive_p50_ms - sm.total["p50"], abs=0.1)


def test_per_call_rows_of_the_demo_call():
    events = load(DEMO)
    report = analyse(str(DEMO))
    [call] = report.details
    assert call.complete and call.started_in_log and call.end_reason == "stop"
    started = [e for e in events if e["type"] == "speech.started"]
    ended = {e["utterance_id"]: e for e in events if e["type"] == "speech.ended"}
    finals = {e["utterance_id"]: e for e in events if e["type"] == "transcript.final"}
    assert [r.utterance_id for r in call.utterances] == [e["utterance_id"] for e in started]
    for row, start in zip(call.utterances, started, strict=True):
        final = finals[row.utterance_id]
        assert row.text == final["text"]
        assert row.start_ms == start["start_ms"]
        assert row.last_speech_ms == ended[row.utterance_id]["last_speech_ms"]
        assert row.total_ms == final["latency"]["total_ms"]
        assert row.socket_id == final["socket"]["id"] and row.socket_uses == final["socket"]["uses"]
        assert row.connect_ms == (None if final["pool_hit"] else final["socket"]["handshake_ms"])
        assert row.continues == start["continues"]
        assert row.naive_ms == pytest.approx(NAIVE_SILENCE_MS + report.summary.naive.connect_ms + final["latency"]["stt_ms"],
                                             abs=0.05)
    turns = [e for e in events if e["type"] == "turn.ended"]
    assert [t.utterance_ids for t in call.turns] == [t["utterance_ids"] for t in turns]
    for number, turn in enumerate(turns, 1):
        for uid in turn["utterance_ids"]:
            assert next(r for r in call.utterances if r.utterance_id == uid).turn == number


def test_call_filter_by_call_or_stream_sid():
    events = load(TWO)
    sids = [e["call_sid"] for e in events if e["type"] == "call.started"]
    stream = next(e["stream_sid"] for e in events if e["type"] == "call.started" and e["call_sid"] == sids[1])
    for key in (sids[1], stream):
        report = analyse(str(TWO), call=key)
        assert [c.call_sid for c in report.calls] == [sids[1]]
        assert report.summary.utterances == sum(1 for e in events if e["type"] == "speech.started" and e["call_sid"] == sids[1])
    assert analyse(str(TWO), call="CA-nobody").summary.calls == 0


def test_time_window_keeps_only_events_inside_it():
    events = load(TWO)
    finals = sorted(closing_finals(events), key=lambda e: e["ts"])
    cut = finals[len(finals) // 2]["ts"]
    early, late = analyse(str(TWO), until=cut), analyse(str(TWO), since=cut)
    assert early.summary.total["count"] == sum(1 for f in finals if f["ts"] < cut)
    assert late.summary.total["count"] == sum(1 for f in finals if f["ts"] >= cut)
    assert early.summary.total["count"] + late.summary.total["count"] == len(finals)


def test_keep_calls_bounds_the_detail_not_the_summary():
    report = analyse(str(TWO), keep_calls=1)
    assert len(report.details) == 1 and len(report.calls) == 2
    assert report.summary.utterances == analyse(str(TWO)).summary.utterances

"""The sans-IO RTZR protocol: query, decoding, and the per-socket utterance tracker."""

from __future__ import annotations

import pytest

from engine.config import RtzrConfig
from engine.rtzr.protocol import (
    Alternative,
    RtzrProtocolError,
    RtzrQueryError,
    RtzrResult,
    RtzrServerError,
    UtteranceTracker,
    build_query,
    decode_server_message,
    encode_result,
    parse_query,
    query_from_config,
)


def test_query_sends_only_what_is_set() -> None:
    assert build_query(RtzrConfig()) == "sample_rate=8000&encoding=LINEAR16"
    q = build_query(RtzrConfig(sample_rate=16000, encoding="MULAW", use_itn=False, domain="CALL"))
    assert q == "sample_rate=16000&encoding=MULAW&domain=CALL&use_itn=false"


def test_query_round_trips() -> None:
    cfg = RtzrConfig(
        model_name="whisper", language="ko", keywords=["안녕", "소리:-2.5"], epd_time=0.3, use_punctuation=True
    )
    assert parse_query(build_query(cfg)) == query_from_config(cfg)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"keywords": ["hello"]}, "keywords"),
        ({"keywords": ["가" * 21]}, "keywords"),
        ({"keywords": ["가:9"]}, "keywords"),
        ({"keywords": ["가:x"]}, "keywords"),
        ({"keywords": ["가"] * 101}, "keywords"),
        ({"keywords": []}, "keywords"),
        ({"model_name": "gpt"}, "model_name"),
        ({"language": "ko"}, "language"),
        ({"noise_threshold": 2.0}, "noise_threshold"),
        ({"noise_threshold": float("nan")}, "noise_threshold"),
    ],
)
def test_query_rejects(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(RtzrQueryError) as info:
        build_query(RtzrConfig(**kwargs))  # type: ignore[arg-type]
    assert info.value.param == param
    assert f"rtzr.{param}" in str(info.value)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("encoding=LINEAR16", "sample_rate"),
        ("sample_rate=8000", "encoding"),
        ("sample_rate=7999&encoding=LINEAR16", "sample_rate"),
        ("sample_rate=48001&encoding=LINEAR16", "sample_rate"),
        ("sample_rate=abc&encoding=LINEAR16", "sample_rate"),
        ("sample_rate=8000&encoding=MP3", "encoding"),
        ("sample_rate=8000&encoding=LINEAR16&domain=PHONE", "domain"),
        ("sample_rate=8000&encoding=LINEAR16&use_itn=maybe", "use_itn"),
        ("sample_rate=8000&sample_rate=8000&encoding=LINEAR16", "sample_rate"),
        ("sample_rate=8000&encoding=LINEAR16&epd_time=0", "epd_time"),
    ],
)
def test_parse_query_rejects(query: str, param: str) -> None:
    with pytest.raises(RtzrQueryError) as info:
        parse_query(query)
    assert info.value.param == param


def test_parse_query_ignores_unknown() -> None:
    assert parse_query("sample_rate=8000&encoding=ALAW&foo=bar").encoding == "ALAW"


def test_decode_result_ignores_unknown_fields() -> None:
    raw = (
        '{"seq": 0, "start_at": 1200, "duration": 1730, "final": true, "extra": [1],'
        ' "alternatives": [{"text": "안녕", "confidence": 0.95, "zz": 1,'
        ' "words": [{"text": "|안녕", "start_at": 0, "duration": 320, "confidence": 0.97}]}]}'
    )
    r = decode_server_message(raw)
    assert isinstance(r, RtzrResult)
    assert r.final and r.text == "안녕" and r.end_at == 2930
    assert r.alternatives[0].words is not None and r.alternatives[0].words[0].duration == 320
    assert decode_server_message(encode_result(r)) == r


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff\xfe", b"[]", b"42", b'{"seq": -1}', b'{"start_at": 1}', b'{"seq": "0"}', b"EOS"],
)
def test_decode_junk_is_protocol_error(raw: bytes) -> None:
    with pytest.raises(RtzrProtocolError):
        decode_server_message(raw)


def test_decode_in_band_errors() -> None:
    e = decode_server_message('{"error": {"code": "E500", "message": "boom"}}')
    assert e == RtzrServerError(message="boom", code="E500")
    e2 = decode_server_message('{"type": "error", "message": "bad"}')
    assert isinstance(e2, RtzrServerError) and e2.message == "bad"


def _r(seq: int, start: int, dur: int, final: bool, text: str = "x") -> RtzrResult:
    return RtzrResult(seq=seq, start_at=start, duration=dur, final=final, alternatives=[Alternative(text=text)])


def test_tracker_finalize_only_when_pending() -> None:
    t = UtteranceTracker(16.0)  # LINEAR16 at 8 kHz
    assert not t.pending and not t.finalize_sent()
    t.audio_sent(16 * 500)
    assert t.pending and t.finalize_sent() and t.awaiting_final
    t.on_result(_r(0, 100, 380, True))
    assert not t.pending and not t.awaiting_final and t.next_seq == 1
    assert not t.finalize_sent()


def test_tracker_maps_several_lessees_on_one_socket() -> None:
    t = UtteranceTracker(16.0)
    t.begin_lease()
    t.audio_sent(16 * 1000)
    t.finalize_sent()
    first = t.on_result(_r(0, 200, 700, True, "하나"))
    assert first is not None and first.start_ms == 200 and first.seq == 0
    # second lessee: its 0 is socket ms 1000
    t.begin_lease()
    assert t.on_result(_r(0, 200, 700, False, "late")) is None  # stale seq from the previous lessee
    t.audio_sent(16 * 800)
    interim = t.on_result(_r(1, 1100, 0, False, "둘"))
    assert interim is not None and interim.start_ms == 100 and not interim.final
    assert t.on_result(_r(1, 1100, 0, False, "")) is None  # empty interims skipped
    t.finalize_sent()
    final = t.on_result(_r(1, 1100, 650, True, "둘"))
    assert final is not None and final.start_ms == 100 and final.duration_ms == 650
    assert t.lease_sent_ms == 800 and not t.pending


def test_tracker_early_final_does_not_settle_finalize() -> None:
    """A server end-point final that ends long before the Finalize position leaves audio pending."""
    t = UtteranceTracker(16.0, cover_slack_ms=500)
    t.audio_sent(16 * 5000)
    t.finalize_sent()
    t.on_result(_r(0, 0, 1000, True))  # ends at 1000 ms, Finalize was at 5000 ms
    assert t.pending and t.awaiting_final
    t.on_result(_r(1, 1800, 3000, True))  # ends at 4800: within slack
    assert not t.pending and not t.awaiting_final


def test_tracker_empty_final_still_settles() -> None:
    t = UtteranceTracker(8.0)
    t.audio_sent(800)
    t.finalize_sent()
    out = t.on_result(_r(0, 0, 100, True, ""))
    assert out is not None and out.final and out.text == ""
    assert not t.pending

"""The sans-IO RTZR protocol: query, decoding, and the per-socket utterance tracker."""

from __future__ import annotations

import pytest

from engine.config import RtzrConfig
from engine.rtzr.protocol import (
    RtzrProtocolError,
    RtzrQueryError,
    RtzrResult,
    RtzrServerError,
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

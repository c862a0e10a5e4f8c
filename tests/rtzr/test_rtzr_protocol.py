"""The sans-IO RTZR protocol: query, decoding, and the per-socket utterance tracker."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.config import RtzrConfig
from engine.rtzr.protocol import (
    RtzrProtocolError,
    RtzrQueryError,
    RtzrResult,
    RtzrServerError,
    _decode_general,
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


@pytest.mark.parametrize(
    "raw",
    [
        '{"seq": 3, "final": false, "error": null}',  # an "error" member, even null, makes it an error object
        '{"seq": 3, "start_at": 10, "type": "error", "message": "bad", "alternatives": []}',
        '{"seq": 3, "\\u0065rror": {"code": "E1", "message": "escaped key"}}',
    ],
)
def test_decode_error_objects_that_also_look_like_results(raw: str) -> None:
    # The one-pass decode into RtzrResult must not swallow an error object that carries a valid seq.
    assert isinstance(decode_server_message(raw), RtzrServerError)
    assert isinstance(decode_server_message(raw.encode()), RtzrServerError)


def test_decode_result_with_a_type_member_and_encode_omits_the_wire_extras() -> None:
    r = decode_server_message('{"seq": 1, "type": "result", "alternatives": [{"text": "네"}]}')
    assert isinstance(r, RtzrResult) and r.text == "네" and r.type_key == "result"
    plain = RtzrResult(seq=1)
    assert b"error" not in encode_result(plain) and b"type" not in encode_result(plain)
    assert decode_server_message(encode_result(plain)) == plain


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**54) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "error", "result", "안녕"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["text", "confidence", "words", "code", "message"]), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(
    st.sampled_from(["seq", "start_at", "duration", "final", "alternatives", "error", "type", "message", "code", "x"]),
    _json_values, max_size=6,
) | _json_values)
def test_decode_matches_the_general_path(obj: object) -> None:
    """The one-pass decode decides every message as the dict-then-convert path does (result, error, or raise)."""
    raw = json.dumps(obj, ensure_ascii=False)

    def outcome(decode: Callable[[str], object]) -> object:
        try:
            return decode(raw)
        except RtzrProtocolError as exc:
            return ("raised", str(exc))

    assert outcome(decode_server_message) == outcome(_decode_general)

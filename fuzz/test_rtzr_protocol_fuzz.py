"""Property tests: any server message decodes or fails typed; the query builder validates and round-trips."""

from __future__ import annotations

import math

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from engine.config import RtzrConfig
from engine.rtzr.protocol import (
    DOMAINS,
    ENCODINGS,
    MODELS,
    RtzrProtocolError,
    RtzrQueryError,
    RtzrResult,
    RtzrServerError,
    StreamingQuery,
    decode_server_message,
    encode_query,
    parse_query,
    validate_query,
)
from engine.rtzr.tracker import UtteranceTracker

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
result_like = st.fixed_dictionaries(
    {},
    optional={
        "seq": st.integers(-5, 2**60) | st.text(max_size=3),
        "start_at": st.integers(-5, 10**7),
        "duration": st.integers(-5, 10**7),
        "final": st.booleans() | st.integers(0, 1),
        "alternatives": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "text": st.text(max_size=10) | st.none(),
                    "confidence": st.floats() | st.none(),
                    "words": st.lists(st.dictionaries(st.sampled_from(["text", "start_at", "duration"]), json_values)),
                },
            ),
            max_size=3,
        ),
        "error": json_values,
        "type": st.sampled_from(["error", "x"]),
    },
)


def _check(data: bytes | str) -> None:
    try:
        out = decode_server_message(data)
    except RtzrProtocolError:
        return
    assert isinstance(out, (RtzrResult, RtzrServerError))
    if isinstance(out, RtzrResult):
        tracker = UtteranceTracker(16.0)
        tracker.begin_lease()
        tracker.audio_sent(1600)
        tracker.finalize_sent()
        mapped = tracker.on_result(out)  # the tracker must accept anything the decoder accepts
        assert mapped is None or mapped.start_ms >= 0


@given(st.binary(max_size=200))
def test_any_bytes(data: bytes) -> None:
    _check(data)


@given(json_values | result_like)
def test_any_json(value: object) -> None:
    _check(msgspec.json.encode(value))
    _check(msgspec.json.encode(value).decode())


hangul_word = st.text(alphabet=st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), min_size=1, max_size=20)
keyword = st.one_of(
    hangul_word,
    st.builds(lambda w, s: f"{w}:{s}", hangul_word, st.floats(-5, 5, allow_nan=False).map(lambda f: repr(round(f, 2)))),
)
valid_queries = st.builds(
    StreamingQuery,
    sample_rate=st.integers(8000, 48000),
    encoding=st.sampled_from(sorted(ENCODINGS)),
    model_name=st.none() | st.sampled_from(sorted(MODELS)),
    domain=st.none() | st.sampled_from(sorted(DOMAINS)),
    use_itn=st.none() | st.booleans(),
    use_disfluency_filter=st.none() | st.booleans(),
    use_profanity_filter=st.none() | st.booleans(),
    use_punctuation=st.none() | st.booleans(),
    keywords=st.none() | st.lists(keyword, min_size=1, max_size=100).map(tuple),
    epd_time=st.none() | st.floats(0.01, 60),
    noise_threshold=st.none() | st.floats(0, 1),
    active_threshold=st.none() | st.floats(0, 1),
    max_utter_duration=st.none() | st.floats(0.1, 3600),
).filter(lambda q: q.language is None)


@given(valid_queries, st.none() | st.sampled_from(["ko", "en", "ja"]))
def test_valid_queries_round_trip(q: StreamingQuery, language: str | None) -> None:
    if language is not None and q.model_name == "whisper":
        q = msgspec.structs.replace(q, language=language)
    assert parse_query(encode_query(q)) == q


any_queries = st.builds(
    StreamingQuery,
    sample_rate=st.integers(0, 100000),
    encoding=st.sampled_from([*sorted(ENCODINGS), "MP3", "", "linear16"]),
    model_name=st.none() | st.sampled_from([*sorted(MODELS), "x"]),
    domain=st.none() | st.sampled_from([*sorted(DOMAINS), "PHONE"]),
    keywords=st.none() | st.lists(st.text(max_size=25), max_size=102).map(tuple),
    language=st.none() | st.text(max_size=4),
    epd_time=st.none() | st.floats(),
    noise_threshold=st.none() | st.floats(),
    active_threshold=st.none() | st.floats(),
    max_utter_duration=st.none() | st.floats(),
)


@given(any_queries)
def test_builder_rejects_invalid_or_round_trips(q: StreamingQuery) -> None:
    try:
        validate_query(q)
    except RtzrQueryError as exc:
        assert exc.param in StreamingQuery.__struct_fields__
        try:
            encode_query(q)
        except RtzrQueryError:
            return
        raise AssertionError("encode_query accepted an invalid query") from None
    assert parse_query(encode_query(q)) == q


@given(st.text(max_size=200))
def test_parse_query_never_crashes(text: str) -> None:
    try:
        q = parse_query(text)
    except RtzrQueryError:
        return
    validate_query(q)


@given(valid_queries)
def test_config_queries_are_valid(q: StreamingQuery) -> None:
    if q.encoding not in ("LINEAR16", "MULAW") or q.language is not None:
        return
    fields = {k: getattr(q, k) for k in StreamingQuery.__struct_fields__ if getattr(q, k) is not None}
    if "keywords" in fields:
        fields["keywords"] = list(fields["keywords"])
    try:
        cfg = msgspec.convert(fields, RtzrConfig)
    except msgspec.ValidationError:
        return  # config has tighter ranges on some floats
    from engine.rtzr.protocol import build_query

    assert math.isfinite(parse_query(build_query(cfg)).sample_rate)

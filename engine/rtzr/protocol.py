"""RTZR streaming STT wire protocol, sans-IO: the query, server messages, and utterance bookkeeping.

Nothing here awaits or reads a clock. The emulator reuses :func:`parse_query` to decide its 400s and the
result Structs to encode what it sends, so client and emulator agree on one definition of the wire.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import msgspec
from msgspec import Meta, Struct

from engine.config import ConfigError, RtzrConfig
from engine.stt import SttProtocolError

EOS = "EOS"
FINALIZE = '{"type":"Finalize"}'

ENCODINGS = frozenset({"LINEAR16", "MULAW", "ALAW", "FLAC", "AMR", "AMR_WB", "OGG_OPUS"})
MODELS = frozenset({"sommers_ko", "whisper"})
DOMAINS = frozenset({"CALL", "MEETING"})
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 20
KEYWORD_SCORE_RANGE = (-5.0, 5.0)
BOOL_PARAMS = ("use_itn", "use_disfluency_filter", "use_profanity_filter", "use_punctuation")
FLOAT_PARAMS: dict[str, tuple[float, float, bool]] = {
    # name: (low, high, low_inclusive)
    "epd_time": (0.0, 60.0, False),
    "noise_threshold": (0.0, 1.0, True),
    "active_threshold": (0.0, 1.0, True),
    "max_utter_duration": (0.0, 3600.0, False),
}
_HANGUL_WORD = re.compile(r"[\uac00-\ud7a3]+")
_LANGUAGE = re.compile(r"[a-z]{2,8}")

MsInt = Annotated[int, Meta(ge=0, le=2**53)]


class RtzrProtocolError(SttProtocolError):
    """A message from the server is not valid RTZR (junk bytes, wrong JSON shape)."""


class RtzrQueryError(ConfigError):
    """The streaming query parameters are invalid; names the parameter (a 400 on the server)."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"rtzr.{param}: {reason}")
        self.param = param
        self.reason = reason


# ---------------------------------------------------------------------------------------------- results


class Word(Struct, kw_only=True):
    """One word of a final (times relative to the utterance, as RTZR sends them)."""

    text: str
    start_at: MsInt = 0
    duration: MsInt = 0
    confidence: float | None = None


class Alternative(Struct, kw_only=True):
    """One hypothesis; ``words`` only on finals."""

    text: str = ""
    confidence: float | None = None
    words: list[Word] | None = None


class RtzrResult(Struct, kw_only=True, omit_defaults=False):
    """One interim or final. ``seq`` counts utterances on the socket; times are socket-timeline ms.

    ``error_key`` / ``type_key``: the message's ``error`` and ``type`` members when it has them (UNSET, never
    encoded, otherwise): with them a message decodes straight into this Struct, and
    :func:`decode_server_message` still sees an error object that happens to carry a ``seq``.
    """

    seq: MsInt
    start_at: MsInt = 0
    duration: MsInt = 0
    final: bool = False
    alternatives: list[Alternative] = msgspec.field(default_factory=list)
    error_key: Any = msgspec.field(default=msgspec.UNSET, name="error")
    type_key: Any = msgspec.field(default=msgspec.UNSET, name="type")

    @property
    def text(self) -> str:
        return self.alternatives[0].text if self.alternatives else ""

    @property
    def confidence(self) -> float | None:
        return self.alternatives[0].confidence if self.alternatives else None

    @property
    def end_at(self) -> int:
        return self.start_at + self.duration


class RtzrServerError(Struct, kw_only=True):
    """An in-band error object from the server (``{"error": ...}`` or ``{"type": "error"}``)."""

    message: str
    code: str | None = None


_decoder = msgspec.json.Decoder()
_result_decoder = msgspec.json.Decoder(RtzrResult)
_encoder = msgspec.json.Encoder()


def encode_result(result: RtzrResult) -> bytes:
    """JSON for a result (the emulator sends these)."""
    return _encoder.encode(result)


def _error_from(obj: dict[str, Any]) -> RtzrServerError:
    err = obj.get("error")
    code = obj.get("code")
    message: Any = obj.get("message")
    if isinstance(err, dict):
        code = err.get("code", code)
        message = err.get("message", message)
    elif isinstance(err, str) and message is None:
        message = err
    text = str(message) if message is not None else "server error"
    return RtzrServerError(message=text[:500], code=None if code is None else str(code)[:100])


def decode_server_message(data: bytes | str) -> RtzrResult | RtzrServerError:
    """Decode one TEXT frame; anything that is neither a result nor an error raises RtzrProtocolError.

    Every interim and final of every utterance (issue 13): a result is decoded straight into
    :class:`RtzrResult` (one pass, no dict and no ``convert``: ~40 % of the decode). Anything else (an error
    object, a result that does not validate, junk) takes the general path below, which decides as before.
    """
    try:
        result = _result_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError):  # ValidationError is a DecodeError
        pass
    else:
        if result.error_key is msgspec.UNSET and result.type_key != "error":
            return result
    return _decode_general(data)


def _decode_general(data: bytes | str) -> RtzrResult | RtzrServerError:
    try:
        obj = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise RtzrProtocolError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RtzrProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    if "error" in obj or obj.get("type") == "error":
        return _error_from(obj)
    try:
        return msgspec.convert(obj, RtzrResult)
    except msgspec.ValidationError as exc:
        raise RtzrProtocolError(f"bad result: {exc}") from None


# ---------------------------------------------------------------------------------------------- query


class StreamingQuery(Struct, kw_only=True, frozen=True):
    """The streaming query as typed values; None = not sent (the server default applies)."""

    sample_rate: int
    encoding: str
    model_name: str | None = None
    domain: str | None = None
    use_itn: bool | None = None
    use_disfluency_filter: bool | None = None
    use_profanity_filter: bool | None = None
    use_punctuation: bool | None = None
    keywords: tuple[str, ...] | None = None
    language: str | None = None
    epd_time: float | None = None
    noise_threshold: float | None = None
    active_threshold: float | None = None
    max_utter_duration: float | None = None


def _check_keyword(item: str) -> None:
    word, sep, score = item.partition(":")
    if not word or len(word) > MAX_KEYWORD_CHARS or not _HANGUL_WORD.fullmatch(word):
        raise RtzrQueryError("keywords", f"{item!r}: each word must be 1-{MAX_KEYWORD_CHARS} Hangul syllables")
    if sep:
        try:
            value = float(score)
        except ValueError:
            raise RtzrQueryError("keywords", f"{item!r}: score must be a number") from None
        low, high = KEYWORD_SCORE_RANGE
        if not (math.isfinite(value) and low <= value <= high):
            raise RtzrQueryError("keywords", f"{item!r}: score must be within {low}..{high}")


def validate_query(q: StreamingQuery, *, models: frozenset[str] = MODELS) -> None:
    """Raise RtzrQueryError naming the first invalid parameter."""
    if type(q.sample_rate) is not int or not MIN_SAMPLE_RATE <= q.sample_rate <= MAX_SAMPLE_RATE:
        raise RtzrQueryError("sample_rate", f"must be an integer {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
    if q.encoding not in ENCODINGS:
        raise RtzrQueryError("encoding", f"must be one of {', '.join(sorted(ENCODINGS))}")
    if q.model_name is not None and q.model_name not in models:
        raise RtzrQueryError("model_name", f"must be one of {', '.join(sorted(models))}")
    if q.domain is not None and q.domain not in DOMAINS:
        raise RtzrQueryError("domain", f"must be one of {', '.join(sorted(DOMAINS))}")
    if q.language is not None:
        if q.model_name != "whisper":
            raise RtzrQueryError("language", "only valid with model_name=whisper")
        if not _LANGUAGE.fullmatch(q.language):
            raise RtzrQueryError("language", "must be a lower-case language code")
    if q.keywords is not None:
        if not q.keywords or len(q.keywords) > MAX_KEYWORDS:
            raise RtzrQueryError("keywords", f"must list 1-{MAX_KEYWORDS} words")
        for item in q.keywords:
            _check_keyword(item)
    for name, (low, high, low_inclusive) in FLOAT_PARAMS.items():
        value = getattr(q, name)
        if value is None:
            continue
        ok = math.isfinite(value) and value <= high and (value >= low if low_inclusive else value > low)
        if not ok:
            raise RtzrQueryError(name, f"must be within {'[' if low_inclusive else '('}{low}, {high}]")


def query_from_config(config: RtzrConfig) -> StreamingQuery:
    """The typed query for a config (only the parameters the user set)."""
    return StreamingQuery(
        sample_rate=config.sample_rate,
        encoding=config.encoding,
        model_name=config.model_name,
        domain=config.domain,
        use_itn=config.use_itn,
        use_disfluency_filter=config.use_disfluency_filter,
        use_profanity_filter=config.use_profanity_filter,
        use_punctuation=config.use_punctuation,
        keywords=None if config.keywords is None else tuple(config.keywords),
        language=config.language,
        epd_time=config.epd_time,
        noise_threshold=config.noise_threshold,
        active_threshold=config.active_threshold,
        max_utter_duration=config.max_utter_duration,
    )


def encode_query(q: StreamingQuery) -> str:
    """Validate and URL-encode (booleans as true/false, floats by repr so they round-trip)."""
    validate_query(q)
    pairs: list[tuple[str, str]] = [("sample_rate", str(q.sample_rate)), ("encoding", q.encoding)]
    for name in ("model_name", "domain"):
        value = getattr(q, name)
        if value is not None:
            pairs.append((name, value))
    for name in BOOL_PARAMS:
        value = getattr(q, name)
        if value is not None:
            pairs.append((name, "true" if value else "false"))
    if q.keywords is not None:
        pairs.append(("keywords", ",".join(q.keywords)))
    if q.language is not None:
        pairs.append(("language", q.language))
    for name in FLOAT_PARAMS:
        value = getattr(q, name)
        if value is not None:
            pairs.append((name, repr(float(value))))
    return urlencode(pairs)


def bytes_per_ms(config: RtzrConfig) -> float:
    """Audio bytes per millisecond on the wire for the configured encoding and rate."""
    width = 2 if config.encoding == "LINEAR16" else 1
    return config.sample_rate * width / 1000.0


def build_query(config: RtzrConfig) -> str:
    """The URL-encoded query string for a config; raises RtzrQueryError if a parameter is invalid."""
    return encode_query(query_from_config(config))


def _parse_bool(name: str, text: str) -> bool:
    low = text.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise RtzrQueryError(name, "must be true or false")


def _parse_float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RtzrQueryError(name, "must be a number") from None


def parse_query(query: str, *, models: frozenset[str] = MODELS) -> StreamingQuery:
    """Parse and validate a query string as the server would; RtzrQueryError means HTTP 400.

    Unknown parameters are ignored (the server ignores them too); a repeated parameter is an error.
    """
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except ValueError as exc:
        raise RtzrQueryError("query", str(exc)) from None
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key in seen:
            raise RtzrQueryError(key, "given more than once")
        seen[key] = value
    if "sample_rate" not in seen:
        raise RtzrQueryError("sample_rate", "required")
    if "encoding" not in seen:
        raise RtzrQueryError("encoding", "required")
    rate_text = seen["sample_rate"]
    if not rate_text.isascii() or not rate_text.isdigit() or len(rate_text) > 6:
        raise RtzrQueryError("sample_rate", f"must be an integer {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
    fields: dict[str, Any] = {"sample_rate": int(rate_text), "encoding": seen["encoding"]}
    for name in ("model_name", "domain", "language"):
        if name in seen:
            fields[name] = seen[name]
    for name in BOOL_PARAMS:
        if name in seen:
            fields[name] = _parse_bool(name, seen[name])
    if "keywords" in seen:
        fields["keywords"] = tuple(seen["keywords"].split(","))
    for name in FLOAT_PARAMS:
        if name in seen:
            fields[name] = _parse_float(name, seen[name])
    q = StreamingQuery(**fields)
    validate_query(q, models=models)
    return q

"""RTZR streaming STT client: wire protocol, token manager, sockets and the process-wide pool."""

from __future__ import annotations

from engine.rtzr.protocol import (
    EOS,
    FINALIZE,
    Alternative,
    LeaseResult,
    RtzrProtocolError,
    RtzrQueryError,
    RtzrResult,
    RtzrServerError,
    StreamingQuery,
    UtteranceTracker,
    Word,
    build_query,
    decode_server_message,
    parse_query,
)

__all__ = [
    "EOS",
    "FINALIZE",
    "Alternative",
    "LeaseResult",
    "RtzrProtocolError",
    "RtzrQueryError",
    "RtzrResult",
    "RtzrServerError",
    "StreamingQuery",
    "UtteranceTracker",
    "Word",
    "build_query",
    "decode_server_message",
    "parse_query",
]

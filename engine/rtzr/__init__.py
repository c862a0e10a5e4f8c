"""RTZR streaming STT client: wire protocol, token manager, sockets and the process-wide pool."""

from __future__ import annotations

from engine.rtzr.auth import RtzrAuthError, Token, TokenManager
from engine.rtzr.pool import Lease, RtzrPool
from engine.rtzr.protocol import (
    EOS,
    FINALIZE,
    Alternative,
    RtzrProtocolError,
    RtzrQueryError,
    RtzrResult,
    RtzrServerError,
    StreamingQuery,
    Word,
    build_query,
    decode_server_message,
    parse_query,
)
from engine.rtzr.stream import RtzrConnectError, RtzrHandshakeError, RtzrSaturated, RtzrSocket, RtzrSocketLost
from engine.rtzr.tracker import ForeignResult, LeaseResult, UtteranceTracker

__all__ = [
    "EOS",
    "FINALIZE",
    "Alternative",
    "ForeignResult",
    "Lease",
    "LeaseResult",
    "RtzrAuthError",
    "RtzrConnectError",
    "RtzrHandshakeError",
    "RtzrPool",
    "RtzrProtocolError",
    "RtzrQueryError",
    "RtzrResult",
    "RtzrSaturated",
    "RtzrServerError",
    "RtzrSocket",
    "RtzrSocketLost",
    "StreamingQuery",
    "Token",
    "TokenManager",
    "UtteranceTracker",
    "Word",
    "build_query",
    "decode_server_message",
    "parse_query",
]

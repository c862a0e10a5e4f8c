"""One WebSocket layer: both sides share the closed type and the base, and the old import paths still work."""

from __future__ import annotations

from wsproto.frame_protocol import CloseReason

import engine.rtzr.wsclient as client
import engine.twilio.wsconn as server
from engine import ws


def test_one_connection_closed_for_both_sides() -> None:
    # Before the shared layer each side defined its own: an `except` for one missed the other.
    assert server.ConnectionClosed is client.ConnectionClosed is ws.ConnectionClosed
    assert issubclass(server.WsServerConnection, ws.WsConnection)
    assert issubclass(client.WsClientConnection, ws.WsConnection)


def test_public_names_stay_importable_from_the_side_modules() -> None:
    for name in ("TextFrameDecoder", "UpgradeHandshake", "UpgradeRequest", "HandshakeFailed", "WsServerConnection"):
        assert hasattr(server, name), name
    for name in ("WsClientConnection", "WsRejected", "WsHandshakeError", "encode_frame", "default_ssl_context"):
        assert hasattr(client, name), name


def test_closed_reports_the_numeric_code_for_named_reasons() -> None:
    closed = ws.ConnectionClosed(CloseReason.MESSAGE_TOO_BIG, "message too big")
    assert str(closed) == "closed (1009) message too big"
    assert closed.code == 1009
    assert str(ws.ConnectionClosed(4000)) == "closed (4000)"

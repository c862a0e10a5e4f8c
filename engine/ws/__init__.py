"""One WebSocket layer for both sides (wsproto's way: the side is a subclass, not a copy).

- :mod:`engine.ws.frames`: sans-IO masking, the client frame encoder, the fast text-frame decoder,
  fragment reassembly.
- :mod:`engine.ws.handshake`: the server's opening handshake on h11 (sans-IO).
- :mod:`engine.ws.connection`: :class:`WsConnection`, the receive loop, closing handshake and
  serialized writes both sides share, and the one :class:`ConnectionClosed`.

The sides: :class:`engine.twilio.wsconn.WsServerConnection` and :class:`engine.rtzr.wsclient.WsClientConnection`.
"""

from __future__ import annotations

from engine.ws.connection import ConnectionClosed, WsConnection
from engine.ws.frames import MessageAssembler, MessageTooBig, TextFrameDecoder, apply_mask, encode_frame
from engine.ws.handshake import HandshakeFailed, UpgradeHandshake, UpgradeRequest

__all__ = [
    "ConnectionClosed",
    "HandshakeFailed",
    "MessageAssembler",
    "MessageTooBig",
    "TextFrameDecoder",
    "UpgradeHandshake",
    "UpgradeRequest",
    "WsConnection",
    "apply_mask",
    "encode_frame",
]

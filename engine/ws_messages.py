"""Reassembly of WebSocket message fragments, shared by our server (Twilio) and client (RTZR) connections.

Sans-IO: wsproto delivers a message as one or more ``TextMessage``/``BytesMessage`` events; this joins them
into whole messages and enforces the size bound, so each connection only decides what to do on overflow.
"""

from __future__ import annotations

from typing import cast

from wsproto.events import BytesMessage, TextMessage


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` (RFC 6455 5.3): masks and unmasks alike.

    One big-int XOR instead of a per-byte loop; the only masking in the project (Twilio server, RTZR client,
    emulator all call it).
    """
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class MessageTooBig(Exception):
    """A message grew past the connection's ``max_message_size`` (close with 1009)."""


class MessageAssembler:
    """Feed wsproto message events; get each whole message back once its last fragment arrives."""

    __slots__ = ("_parts", "_size", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._parts: list[str | bytes] = []
        self._size = 0

    def add(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        """The whole message when ``event`` completes one, else None; raises MessageTooBig."""
        data: str | bytes = event.data if isinstance(event.data, str) else bytes(event.data)
        if event.message_finished and not self._parts and len(data) <= self.max_size:
            return data  # the common case: one frame, one message
        self._size += len(data)
        if self._size > self.max_size:
            self._parts, self._size = [], 0
            raise MessageTooBig(f"message larger than {self.max_size} bytes")
        self._parts.append(data)
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(event, TextMessage):
            return "".join(cast("list[str]", parts))
        return b"".join(cast("list[bytes]", parts))

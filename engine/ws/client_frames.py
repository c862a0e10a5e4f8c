"""Sans-IO decoder for what a WebSocket server sends its client in the common case: whole unmasked data frames
and pongs (RTZR's results, the answers to our pings).

wsproto parses every frame through generic generators and buffers (≈ 1 % of the engine at 200 calls, on the
RTZR results path alone: issue 13). This decodes the frame shapes a healthy server sends: FIN, RSV 0, unmasked,
opcode text/binary (length minimally encoded, up to ``max_message_size``, text valid UTF-8) or pong (≤ 125
bytes). On the first frame of any other shape (a fragment, a ping, a close, a masked or reserved-bit frame, an
over-limit length, bad UTF-8) :meth:`UnmaskedFrameDecoder.feed` returns the bytes from that frame on, and the
caller hands them, and everything after, to wsproto, which starts there at a frame boundary and reports what
is wrong (as :class:`engine.ws.frames.TextFrameDecoder` does on the server side).
"""

from __future__ import annotations

_TEXT_HEAD = 0x81  # FIN + text
_BINARY_HEAD = 0x82  # FIN + binary
_PONG_HEAD = 0x8A  # FIN + pong


class UnmaskedFrameDecoder:
    """Whole unmasked text/binary frames and pongs; anything else goes to wsproto (see the module)."""

    __slots__ = ("_buffer", "max_message_size")

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buffer = b""  # an incomplete frame

    def feed(self, data: bytes) -> tuple[list[str | bytes], list[bytes], bytes | None]:
        """Decode ``data``: (messages, pong payloads, None), or with the bytes for wsproto from the first frame
        this does not handle (the messages and pongs before it are returned too)."""
        buf = self._buffer + data if self._buffer else data
        self._buffer = b""
        messages: list[str | bytes] = []
        pongs: list[bytes] = []
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= 2:
            first, length = buf[pos], buf[pos + 1]  # the mask bit set makes length ≥ 128: handed over
            head = pos + 2
            if first == _PONG_HEAD:
                if length > 125:
                    return messages, pongs, buf[pos:]
                if head + length > end_of_data:
                    break
                pongs.append(buf[head:head + length])
                pos = head + length
                continue
            if first not in (_TEXT_HEAD, _BINARY_HEAD) or length > 127:
                return messages, pongs, buf[pos:]
            if length == 126:
                if end_of_data - head < 2:
                    break
                length = int.from_bytes(buf[head:head + 2], "big")
                head += 2
                if length < 126:  # not the minimal encoding: wsproto reports it
                    return messages, pongs, buf[pos:]
            elif length == 127:
                if end_of_data - head < 8:
                    break
                length = int.from_bytes(buf[head:head + 8], "big")
                head += 8
                if length < 1 << 16:
                    return messages, pongs, buf[pos:]
            if length > self.max_message_size:  # wsproto streams it; the connection closes with 1009
                return messages, pongs, buf[pos:]
            end = head + length
            if end > end_of_data:
                break
            payload = buf[head:end]
            if first == _TEXT_HEAD:
                try:
                    messages.append(payload.decode())
                except UnicodeDecodeError:
                    return messages, pongs, buf[pos:]
            else:
                messages.append(payload)
            pos = end
        self._buffer = buf[pos:]
        return messages, pongs, None

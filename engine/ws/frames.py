"""WebSocket frames without I/O: masking, the one-frame encoder, the fast text-frame decoder, reassembly.

Sans-IO and shared by both sides (the Twilio server, the RTZR client, the emulator): wsproto parses
and tracks state; these are the per-message hot paths that wsproto's generic bookkeeping makes slow
(~40 µs per message, BENCHMARKS.md, Hot path), plus the fragment reassembly both sides need.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import cast

import numpy as np
from wsproto.events import BytesMessage, TextMessage
from wsproto.frame_protocol import Opcode

# RFC 6455 5.2 first byte of a whole (FIN, RSV 0) frame; second byte's mask bit.
FIN = 0x80
MASKED = 0x80
_FAST_TEXT_HEAD = FIN | Opcode.TEXT  # 0x81: the only first byte TextFrameDecoder handles
_MASKED_LEN16 = MASKED | 126  # second byte of a masked frame with a 16-bit length (126..65535 bytes)


# Repunits in base 2**32 (1 + 2**32 + 2**64 + ...) by word count: mask_int * repunit is the mask repeated as
# one int, built by one multiplication instead of a bytes repeat, a slice and a conversion. Kept for small
# frames only (≤ _REPUNIT_MAX_WORDS words) and at most _REPUNIT_SLOTS sizes at a time (≤ 256 KiB).
_REPUNIT_MAX_WORDS = 1024
_REPUNIT_SLOTS = 64
_repunits: dict[int, int] = {}


def _repunit(words: int) -> int:
    rep = _repunits.get(words)
    if rep is None:
        if len(_repunits) >= _REPUNIT_SLOTS:
            _repunits.clear()
        rep = _repunits[words] = int.from_bytes(b"\x01\x00\x00\x00" * words, "little")
    return rep


def apply_mask_py(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` (RFC 6455 5.3), in Python: :data:`apply_mask` where
    websockets' compiled extension is missing. One big-int XOR instead of a per-byte loop."""
    n = len(data)
    if not n:
        return b""
    words = (n + 3) >> 2
    if words <= _REPUNIT_MAX_WORDS:  # a Twilio frame: the key by one multiplication (≈ 0.4 µs less)
        key = int.from_bytes(mask, "little") * _repunit(words)
        return (int.from_bytes(data, "little") ^ key).to_bytes(words << 2, "little")[:n]
    key_bytes = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key_bytes, "little")).to_bytes(n, "little")


c_unmask: Callable[[bytes, bytes], bytes] | None
try:  # websockets' C extension (an SSE2 XOR); absent where its wheel is pure Python: the big-int path
    from websockets.speedups import apply_mask as c_unmask
except ImportError:  # pragma: no cover - every platform we run on has the compiled wheel
    c_unmask = None


# The project's one masking (Twilio server, RTZR client, emulator, benches all call it): websockets' C XOR
# (issue 13 round 4: ~4.3k CPU instructions for a Twilio media message against ~20k for the big-int XOR, whose
# int.from_bytes and to_bytes are per-byte loops in CPython), else apply_mask_py.
apply_mask: Callable[[bytes, bytes], bytes] = apply_mask_py if c_unmask is None else c_unmask


# A masked frame's payload of at least this many bytes, a multiple of 4, is masked by numpy (one uint32 XOR):
# 2-3x faster than the big-int XOR from ~800 bytes on (an RTZR audio message is 1600-3200 bytes; BENCHMARKS.md,
# issue 13, the STT side). Below it the big-int XOR is as fast or faster (no numpy call overhead).
_NUMPY_MASK_MIN = 512
_HEAD16 = struct.Struct("!BBH")  # first byte, second byte, 16-bit length
_HEAD_LEN16 = struct.Struct("!HH")  # first two bytes as one, 16-bit length: TextFrameDecoder.raw's one call
_FAST_HEAD16 = _FAST_TEXT_HEAD << 8 | _MASKED_LEN16  # a whole masked text frame with a 16-bit length
_HEAD64 = struct.Struct("!BBQ")
_key_u32 = int.from_bytes


def encode_frame(opcode: int, payload: bytes, mask: bytes | None) -> bytes:
    """One whole (FIN) frame (RFC 6455 5.2/5.3): a client's, masked with the 4-byte ``mask``, or with
    ``mask=None`` a server's, unmasked (a server never masks). Sans-IO."""
    n = len(payload)
    masked = 0 if mask is None else MASKED
    if n < 126:
        head = bytes((FIN | opcode, masked | n))
    elif n < 1 << 16:
        head = _HEAD16.pack(FIN | opcode, masked | 126, n)
    else:
        head = _HEAD64.pack(FIN | opcode, masked | 127, n)
    if mask is None:
        return head + payload
    if c_unmask is None and n >= _NUMPY_MASK_MIN and not n & 3:  # no C XOR: numpy's beats the big int's
        # The key as a Python int (a weak scalar: the XOR stays uint32), not a second array; the result array
        # joins the frame as it is (a buffer), with no tobytes copy: one numpy call less, one copy less.
        body = np.frombuffer(payload, "<u4") ^ _key_u32(mask, "little")
        return b"".join((head, mask, cast("bytes", body)))  # any buffer joins; numpy's stubs do not say it is one
    return b"".join((head, mask, apply_mask(payload, mask)))


class _MaskKeys:
    """Fresh random masking keys (RFC 6455 5.3: unpredictable, one per frame) from the OS's CSPRNG, drawn
    4 KiB at a time: one ``os.urandom`` call per 1024 frames instead of one per frame (a syscall, ~0.7 µs)."""

    __slots__ = ("_buf", "_pos")
    BATCH = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            self._buf, pos = os.urandom(self.BATCH), 0
        self._pos = pos + 4
        return self._buf[pos:pos + 4]

    def reset(self) -> None:
        """Drop the keys drawn so far (a forked child must not reuse its parent's)."""
        self._buf, self._pos = b"", 0


_mask_keys = _MaskKeys()
os.register_at_fork(after_in_child=_mask_keys.reset)
mask_key = _mask_keys.take  # a fresh 4-byte masking key per call


class TextFrameDecoder:
    """Sans-IO decoder for the one frame shape Twilio sends: a whole, masked text message.

    wsproto spends ~40 µs per 20 ms media frame in generic frame bookkeeping; this parses FIN + text +
    mask + RSV 0 frames in a few µs (the unmasking is websockets' C XOR, else one big-int XOR). On the first
    frame of any other shape (control, fragment, binary, unmasked, extension bits, 64-bit or
    over-limit length, bad UTF-8) :meth:`feed` returns the bytes from that frame on, and the caller
    hands them, and everything after, to wsproto, which starts there at a frame boundary. :meth:`one` is
    the per-message fast path in front of :meth:`feed`: a read that is exactly one whole frame.
    """

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buffer = b""  # an incomplete fast frame

    def one(self, data: bytes) -> str | None:
        """The text of ``data`` when it is exactly one whole fast frame with a 16-bit length (126..65535 bytes:
        every Twilio media message, one per read) and no partial frame is buffered; else None.

        Changes no state either way: on None the caller hands ``data`` to :meth:`feed`, which decides it
        from scratch (fuzz/test_twilio_media_fast_path.py holds the two to the same answer).
        """
        raw = self.raw(data)
        if raw is None:
            return None
        try:
            return raw.decode()  # as feed() decodes it
        except UnicodeDecodeError:
            return None  # feed() hands it to wsproto, which reports it (1007)

    def raw(self, data: bytes) -> bytes | None:
        """:meth:`one` before the UTF-8 decode: the unmasked payload of ``data`` when it is exactly one whole fast
        frame with a 16-bit length and nothing is buffered, else None (no state changed either way). The text
        is ``raw.decode()`` if that succeeds; if it fails, the frame is not one :meth:`one` or :meth:`feed` takes
        (wsproto reports it: the caller hands ``data`` to :meth:`feed`)."""
        n = len(data)
        if n > 8 and not self._buffer:
            head, length = _HEAD_LEN16.unpack_from(data)  # the first two bytes, and a 16-bit length
            if head == _FAST_HEAD16 and n == 8 + length and 126 <= length <= self.max_message_size:
                return apply_mask(data[8:], data[4:8])  # as feed() unmasks it
        return None

    def feed(self, data: bytes) -> tuple[list[str], bytes | None]:
        """Decode ``data``: (complete messages, None), or (messages before it, bytes for wsproto)."""
        buf = self._buffer + data if self._buffer else data
        self._buffer = b""
        out: list[str] = []
        pos, end_of_data = 0, len(buf)
        while end_of_data - pos >= 2:
            if buf[pos] != _FAST_TEXT_HEAD or buf[pos + 1] < MASKED:  # FIN + RSV 0 + text, and masked
                return out, buf[pos:]
            length = buf[pos + 1] & 0x7F
            head = pos + 2
            if length == 126:
                if end_of_data - head < 2:
                    break
                length = (buf[head] << 8) | buf[head + 1]
                head += 2
                if length < 126:  # not the minimal encoding: a protocol error, wsproto reports it
                    return out, buf[pos:]
            elif length == 127:
                return out, buf[pos:]
            if length > self.max_message_size:  # wsproto streams it; the caller closes with 1009
                return out, buf[pos:]
            end = head + 4 + length
            if end > end_of_data:
                break
            try:
                out.append(apply_mask(buf[head + 4:end], buf[head:head + 4]).decode())
            except UnicodeDecodeError:
                return out, buf[pos:]
            pos = end
        self._buffer = buf[pos:]
        return out, None


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

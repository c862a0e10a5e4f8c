"""Decoding the audio a client streams (LINEAR16, MULAW, ALAW) into int16 samples, chunk by chunk."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.audio import mulaw

DECODABLE = frozenset({"LINEAR16", "MULAW", "ALAW"})


def _alaw_table() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 7
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


ALAW_TABLE = _alaw_table()


class Decoder:
    """Stateful: LINEAR16 frames may split a sample across messages, so one odd byte is carried."""

    def __init__(self, encoding: str) -> None:
        if encoding not in DECODABLE:
            raise ValueError(f"the emulator cannot decode {encoding}")
        self.encoding = encoding
        self.bytes_per_sample = 2 if encoding == "LINEAR16" else 1
        self._carry = b""

    @property
    def aligned(self) -> bool:
        """No partial sample is carried (a LINEAR16 message decodes on its own)."""
        return not self._carry

    def decode(self, data: bytes | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
        """``data``: bytes, or a uint8 array (the WebSocket fast path's unmasked payload, viewed without a copy)."""
        if self.encoding == "MULAW":
            return mulaw.decode(data)
        if self.encoding == "ALAW":
            return ALAW_TABLE[np.frombuffer(data, dtype=np.uint8)]
        if not self._carry and isinstance(data, np.ndarray) and not data.size & 1:
            return data.view("<i2")  # the fast path's read-only array, as int16 (one view, no copy)
        if self._carry:
            data = self._carry + bytes(data)
        usable = len(data) & ~1
        if usable == len(data):
            self._carry = b""
        else:
            self._carry, data = bytes(data[usable:]), data[:usable]
        # A read-only view of the bytes (no copy on little-endian hosts): nothing writes into received audio.
        return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)

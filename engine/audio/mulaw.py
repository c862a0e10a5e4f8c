"""G.711 μ-law ↔ PCM16 with numpy lookup tables, bit-exact with CPython's former ``audioop``.

Both directions are a single table lookup per sample (256-entry decode table, 65,536-entry
encode table indexed by the int16 bit pattern), so there is no per-sample Python work.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SILENCE_BYTE = 0xFF
_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _build_decode_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 7
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_encode_table() -> npt.NDArray[np.uint8]:
    s = np.arange(-32768, 32768, dtype=np.int32)
    x = s >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.abs(x)
    x = np.minimum(x, 8159) + 33
    segment = np.searchsorted(_SEGMENT_ENDS, x, side="left")
    code = (segment << 4) | ((x >> (np.minimum(segment, 7) + 1)) & 0x0F)
    code = np.where(segment == 8, 0x7F, code)
    encoded = (code ^ mask).astype(np.uint8)
    # Index by the uint16 bit pattern of the int16 sample: roll so index 0 is sample 0.
    return np.roll(encoded, -32768)


DECODE_TABLE = _build_decode_table()
ENCODE_TABLE = _build_encode_table()


def decode(mulaw: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """μ-law bytes → int16 PCM samples (one per byte)."""
    codes = np.frombuffer(mulaw, dtype=np.uint8) if not isinstance(mulaw, np.ndarray) else mulaw
    return DECODE_TABLE.take(codes)  # take() is ~1.5x cheaper than fancy indexing for 160 codes


def encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """int16 PCM samples → μ-law bytes."""
    return ENCODE_TABLE.take(np.asarray(pcm, dtype=np.int16).view(np.uint16)).tobytes()  # take(): as decode


def silence(n_bytes: int) -> bytes:
    """n bytes of μ-law silence (0xFF decodes to 0)."""
    return bytes([SILENCE_BYTE]) * n_bytes

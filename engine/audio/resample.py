"""Per-call streaming resampler (int16 in, int16 out) on ``soxr.ResampleStream``.

The stream runs in float32 and rounds to int16 here, instead of asking libsoxr for int16
output: libsoxr's int16 path dithers, so its output depends on how the audio was chunked
(up to 2 LSB). In float32 the streamed output equals one-shot resampling of the whole
signal, whatever the chunking. When the rates are equal there is no soxr at all and
``process`` returns its argument unchanged (no copy).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

Pcm = npt.NDArray[np.int16]

_EMPTY_F32 = np.zeros(0, dtype=np.float32)
_EMPTY_I16 = np.zeros(0, dtype=np.int16)
_SCALE = 32768.0


def _to_int16(x: npt.NDArray[np.float32]) -> Pcm:
    if x.size == 0:
        return _EMPTY_I16.copy()
    y = np.rint(x * _SCALE)
    np.clip(y, -32768.0, 32767.0, out=y)
    out: Pcm = y.astype(np.int16)
    return out


class ResampleError(ValueError):
    """Invalid rates or audio given to a :class:`Resampler`."""


class Resampler:
    """Streaming mono resampler; ``flush()`` returns the filter's tail at the end of the call."""

    __slots__ = ("_closed", "_stream", "identity", "in_rate", "out_rate")

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        if not (1000 <= in_rate <= 384_000 and 1000 <= out_rate <= 384_000):
            raise ResampleError(f"unsupported sample rates {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.identity = in_rate == out_rate
        self._closed = False
        self._stream: soxr.ResampleStream | None = (
            None if self.identity else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )

    def process(self, pcm: Pcm) -> Pcm:
        """Resample the next chunk (any length, even 0); returns what the filter can emit so far."""
        if self._stream is None:
            return pcm
        if self._closed:
            raise ResampleError("process() after flush()")
        if pcm.ndim != 1:
            raise ResampleError(f"expected mono 1-D audio, got shape {pcm.shape}")
        if pcm.size == 0:
            return _EMPTY_I16.copy()
        x = pcm.astype(np.float32)
        x *= 1.0 / _SCALE
        return _to_int16(self._stream.resample_chunk(x))

    def flush(self) -> Pcm:
        """End of stream: the remaining output held back by the filter delay. Idempotent."""
        if self._stream is None or self._closed:
            return _EMPTY_I16.copy()
        self._closed = True
        return _to_int16(self._stream.resample_chunk(_EMPTY_F32, last=True))

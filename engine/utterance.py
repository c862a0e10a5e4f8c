"""One utterance's audio, kept from its first pre-roll sample until its final has arrived.

The Twilio reader appends (synchronously, never blocking); the utterance's STT task reads from an
offset and can start again from 0 when a socket dies before the final (replay).

Kept for the whole utterance (seconds, tens of seconds for babble), this buffer was the largest part of
a live call's memory (BENCHMARKS.md, Capacity, issue 13). When the STT wants LINEAR16 at 8 kHz and
nothing was resampled, every sample is a μ-law code decoded (Twilio's audio), so the buffer keeps the
μ-law codes (1 byte per sample, not 2) and expands them on :meth:`UtteranceAudio.read`: lossless, since
decoding the re-encoded sample gives the same sample back for each of the 256 codes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import trio

from engine.audio import mulaw


class UtteranceAudio:
    """Append-only STT-ready audio with a 'something changed' signal for the sender.

    ``size`` and :meth:`read` are in STT bytes whatever the storage: with ``mulaw_as_pcm16`` the buffer
    holds μ-law codes and reads return little-endian int16 PCM (2 bytes per stored byte).
    """

    __slots__ = ("_buf", "_changed", "_scale", "closed")

    def __init__(self, *, mulaw_as_pcm16: bool = False) -> None:
        self._buf = bytearray()
        self._scale = 2 if mulaw_as_pcm16 else 1
        self.closed = False
        self._changed = trio.Event()

    @property
    def size(self) -> int:
        return len(self._buf) * self._scale

    def append(self, data: bytes) -> None:
        """Stored bytes: STT bytes, or μ-law codes with ``mulaw_as_pcm16``."""
        if data:
            self._buf += data
            self._changed.set()

    def append_pcm(self, pcm: npt.NDArray[np.int16], *, mulaw_out: bool) -> None:
        """int16 PCM at the STT rate: stored as μ-law when the STT wants μ-law or in compact storage."""
        if not len(pcm):
            return
        if mulaw_out or self._scale == 2:
            self.append(mulaw.encode(pcm))
        else:
            self.append(pcm.astype("<i2", copy=False).tobytes())

    def close(self) -> None:
        """No more audio will come (the endpointer ended the utterance)."""
        self.closed = True
        self._changed.set()

    def read(self, offset: int, max_bytes: int) -> bytes:
        """A copy of the STT bytes from ``offset`` (at most ``max_bytes``; offsets even in compact storage)."""
        if self._scale == 1:
            return bytes(memoryview(self._buf)[offset : offset + max_bytes])
        codes = memoryview(self._buf)[offset // 2 : (offset + max_bytes) // 2]
        return mulaw.decode(codes).astype("<i2", copy=False).tobytes()

    async def wait_changed(self) -> None:
        """Wait until audio is appended or the utterance is closed."""
        await self._changed.wait()
        self._changed = trio.Event()

"""One utterance's audio, kept from its first pre-roll sample until RTZR has answered it (replay).

The Twilio reader appends (synchronously, never blocking); the utterance's STT task reads from an
offset and can start again from :attr:`UtteranceAudio.start` when a socket dies before the final (replay).

Kept for the whole utterance (seconds, tens of seconds for babble), this buffer was the largest part of
a live call's memory (BENCHMARKS.md, Capacity, issue 13). Three things keep it small:

- **μ-law storage.** When the STT wants LINEAR16 at 8 kHz and nothing was resampled, every sample is a
  decoded μ-law code (Twilio's audio), so the buffer keeps the codes (1 byte per sample, not 2) and
  expands them on :meth:`UtteranceAudio.read`: lossless, since decoding the re-encoded sample gives the
  same sample back for each of the 256 codes.
- **Fixed-size blocks, not one growing ``bytearray``.** A ``bytearray`` grown 160 bytes at a time is
  reallocated again and again (12.5 % spare capacity, and every move leaves a hole of a different size in
  the C heap, which many calls growing at once fragment). Blocks of :data:`BLOCK_BYTES` are allocated once
  each, all the same size, so a freed block is reused as is by the next utterance of any call.
- **Released once answered.** When RTZR cuts a long utterance itself (a final before our Finalize), the
  audio before that final is answered: a replay would only re-send it to produce finals already emitted.
  :meth:`UtteranceAudio.release_before` drops the whole blocks before such a point, and a replay starts at
  :attr:`UtteranceAudio.start` instead of 0 (engine/call.py shifts the replay's result times by it). A
  babble call's 20 s utterance then holds the audio since RTZR's last cut, not the whole 20 s.

Per frame of speech (issue 13, CPU): in that same μ-law case a frame is stored as the bytes received
(:meth:`UtteranceAudio.append_mulaw`, from engine/call.py), not decoded and encoded again (~3 µs a frame;
the STT bytes read back are the same for each of the 256 codes); and the sender waits with
:meth:`UtteranceAudio.wait_for` until the size it asked for is there (a batch, 100 ms) or the utterance is
closed, so a speaking call wakes its STT task once per batch, not per 20 ms frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt
import trio

from engine.audio import mulaw

BLOCK_BYTES: Final = 2048  # stored bytes per block: 256 ms of μ-law at 8 kHz, 128 ms of LINEAR16
# encode(decode(code)) for every μ-law code: the code itself but for 0x7F ("negative zero"), which decodes to
# 0 as 0xFF does and is encoded as 0xFF. Translating received codes through it stores what re-encoding stored.
CANONICAL: Final = mulaw.encode(mulaw.decode(bytes(range(256))))
_NO_WAITER: Final = 1 << 62  # _want when no task waits: no append reaches it
# μ-law → little-endian LINEAR16 in one lookup (the table already in the byte order RTZR wants: no astype per read).
_DECODE_LE: Final = mulaw.DECODE_TABLE.astype("<i2")


class UtteranceAudio:
    """Append-only STT-ready audio; its sender waits for a size (:meth:`wait_for`), not for every append.

    ``size``, ``start`` and :meth:`read` are in STT bytes whatever the storage: with ``mulaw_as_pcm16`` the
    buffer holds μ-law codes and reads return little-endian int16 PCM (2 bytes per stored byte).
    """

    __slots__ = ("_base", "_blocks", "_fill", "_push", "_scale", "_total", "_waiter", "_want", "closed")

    def __init__(self, *, mulaw_as_pcm16: bool = False) -> None:
        self._blocks: list[bytearray] = []  # every block full but the last, which holds _fill bytes
        self._fill = BLOCK_BYTES  # no block yet: the next append allocates one
        self._base = 0  # stored bytes released from the front (a multiple of BLOCK_BYTES)
        self._total = 0  # stored bytes appended so far, released ones included
        self._scale = 2 if mulaw_as_pcm16 else 1
        self.closed = False
        # The waiting sender (wait_for): woken when _total reaches _want, on close, or by wake().
        self._waiter: trio.Event | None = None
        self._want = _NO_WAITER
        self._push: Callable[[], int | None] | None = None  # wait_for's push: the waiter's work done by wake()

    @property
    def size(self) -> int:
        """STT bytes appended so far (released ones included: offsets never move)."""
        return self._total * self._scale

    @property
    def start(self) -> int:
        """The first STT byte still held: where a replay starts (0 until something was released)."""
        return self._base * self._scale

    @property
    def held_bytes(self) -> int:
        """Bytes of block storage held now (what the buffer costs; tests and benchmarks)."""
        return len(self._blocks) * BLOCK_BYTES

    def append(self, data: bytes) -> None:
        """Stored bytes: STT bytes, or μ-law codes with ``mulaw_as_pcm16``."""
        n = len(data)
        if not n:
            return
        fill = self._fill
        if fill + n <= BLOCK_BYTES:  # the per-frame case: one copy into the current block
            self._blocks[-1][fill : fill + n] = data
            self._fill = fill + n
            total = self._total = self._total + n
            if total >= self._want:
                self.wake()
            return
        view = memoryview(data)
        pos = 0
        while pos < n:
            fill = self._fill
            if fill == BLOCK_BYTES:
                self._blocks.append(bytearray(BLOCK_BYTES))
                fill = 0
            take = min(BLOCK_BYTES - fill, n - pos)
            self._blocks[-1][fill : fill + take] = view[pos : pos + take]
            self._fill = fill + take
            pos += take
        total = self._total = self._total + n
        if total >= self._want:
            self.wake()

    def append_mulaw(self, codes: bytes) -> None:
        """μ-law codes as received (nothing resampled), for compact storage or an STT that wants μ-law: the
        STT bytes are exactly those of ``append_pcm(mulaw.decode(codes), mulaw_out=...)``. Compact storage
        keeps the codes as they are (0x7F and 0xFF both read back as 0); μ-law for the STT goes through
        :data:`CANONICAL`, so RTZR gets the very bytes the re-encoding gave it.

        Every speaking frame comes here (engine/call.py): :meth:`append`'s one-block case is inlined (a call
        less per frame), and the sender is only called when its size is reached (one compare per frame)."""
        if self._scale != 2:
            codes = codes.translate(CANONICAL)
        fill = self._fill
        end = fill + len(codes)
        if end <= BLOCK_BYTES:
            self._blocks[-1][fill:end] = codes
            self._fill = end
            total = self._total = self._total + end - fill
            if total >= self._want:
                self.wake()
            return
        self.append(codes)

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
        self.wake()

    def release_before(self, offset: int) -> int:
        """RTZR has answered the audio before STT byte ``offset``: drop the whole blocks before it.

        Returns :attr:`start`, the new replay point (at most ``offset``; never beyond what was appended).
        """
        drop = (offset // self._scale - self._base) // BLOCK_BYTES
        drop = min(drop, len(self._blocks) - 1)  # the last block is still being filled
        if drop > 0:
            del self._blocks[:drop]
            self._base += drop * BLOCK_BYTES
        return self.start

    def read(self, offset: int, max_bytes: int) -> bytes:
        """A copy of the STT bytes from ``offset`` (≥ :attr:`start`; at most ``max_bytes``; even offsets in
        compact storage).

        Once per 100 ms batch of every speaking call (issue 13): a batch within one block (most of them) is one
        slice of it, and compact storage expands the whole batch with one table lookup."""
        scale = self._scale
        first = offset // scale - self._base
        if first < 0:
            raise ValueError(f"offset {offset} was released (the buffer starts at {self.start})")
        last = min(first + max_bytes // scale, self._total - self._base)
        if last <= first:
            return b""
        index, within = divmod(first, BLOCK_BYTES)
        end = within + last - first
        stored: bytes | bytearray | memoryview
        if end <= BLOCK_BYTES:
            stored = memoryview(self._blocks[index])[within:end]
        else:
            parts = []
            pos = first
            while pos < last:
                index, within = divmod(pos, BLOCK_BYTES)
                take = min(BLOCK_BYTES - within, last - pos)
                parts.append(memoryview(self._blocks[index])[within : within + take])
                pos += take
            stored = b"".join(parts)
        if scale == 1:
            return bytes(stored)
        # mode="wrap": every uint8 index is in the 256-entry table, and numpy's wrap loop is ~10 % cheaper than
        # the bounds-checked one (callgrind: 19.1k vs 21.2k instructions for a 100 ms batch).
        return _DECODE_LE.take(np.frombuffer(stored, np.uint8), mode="wrap").tobytes()

    def wake(self) -> None:
        """Wake the waiting sender now (its size reached, the utterance closed, or its lease failed); or, when
        it waits with a ``push`` and the size was reached, do its work here instead (see :meth:`wait_for`)."""
        waiter = self._waiter
        if waiter is not None:
            push = self._push
            if push is not None and not self.closed and self._total >= self._want:
                want = push()
                if want is not None:
                    self._want = -(-want // self._scale)
                    if self._total < self._want:
                        return  # still waiting, for the next size
            self._waiter = None
            self._want = _NO_WAITER
            self._push = None
            waiter.set()

    async def wait_for(self, size: int, push: Callable[[], int | None] | None = None) -> None:
        """Wait until :attr:`size` reaches ``size`` STT bytes, the utterance is closed, or :meth:`wake`.

        One waiter at a time (the utterance's sender); returns at once if already there. With ``push``, the
        appender calls ``push()`` (synchronously, from :meth:`append`) each time the size is reached, instead
        of waking the waiter: it returns the next size to wait for, or None to wake the waiter. That is how a
        sender sends its 100 ms batches from the Twilio reader's pass, with no task switch per batch
        (engine/call.py). ``push`` must not raise.
        """
        if self.closed or self._total * self._scale >= size:
            await trio.lowlevel.checkpoint()
            return
        waiter = self._waiter = trio.Event()
        self._want = -(-size // self._scale)  # stored bytes, rounded up
        self._push = push
        try:
            await waiter.wait()
        finally:
            if self._waiter is waiter:  # cancelled while waiting
                self._waiter = None
                self._want = _NO_WAITER
                self._push = None

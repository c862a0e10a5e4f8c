"""One utterance's audio, kept from its first pre-roll sample until its final has arrived.

The Twilio reader appends (synchronously, never blocking); the utterance's STT task reads from an
offset and can start again from 0 when a socket dies before the final (replay).
"""

from __future__ import annotations

import trio


class UtteranceAudio:
    """Append-only STT-ready audio bytes with a 'something changed' signal for the sender."""

    __slots__ = ("_buf", "_changed", "closed")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.closed = False
        self._changed = trio.Event()

    @property
    def size(self) -> int:
        return len(self._buf)

    def append(self, data: bytes) -> None:
        if data:
            self._buf += data
            self._changed.set()

    def close(self) -> None:
        """No more audio will come (the endpointer ended the utterance)."""
        self.closed = True
        self._changed.set()

    def read(self, offset: int, max_bytes: int) -> bytes:
        """A copy of the bytes from ``offset`` (at most ``max_bytes``)."""
        return bytes(self._buf[offset : offset + max_bytes])

    async def wait_changed(self) -> None:
        """Wait until audio is appended or the utterance is closed."""
        await self._changed.wait()
        self._changed = trio.Event()

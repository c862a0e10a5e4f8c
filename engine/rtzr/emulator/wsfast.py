"""Sans-IO: the emulator's WebSocket input, with a fast path for the frames a client sends most.

A complete, final, masked TEXT or BINARY frame (no RSV bits, no fragment in progress) is unmasked here
and becomes a wsproto ``TextMessage``/``BytesMessage``, except a binary payload whose length is a multiple of 4
(every audio message): that one is unmasked by one numpy uint32 XOR and handed on as it is, a read-only uint8
array (no event object; the audio decoder views it without a copy). Other payloads are unmasked by one big-int
XOR; every other frame — pings, closes, fragments, unmasked or oversized frames, invalid UTF-8 — is handed to
wsproto whole, so wsproto keeps deciding everything the protocol says (errors, control frames, fragmentation),
and its buffer never holds a partial frame that the fast path would then skip. Per audio message this is a few
µs instead of wsproto's frame parser (about a fifth of the emulator's CPU under load).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from wsproto.connection import Connection
from wsproto.events import BytesMessage, Event, TextMessage

from engine.ws.frames import apply_mask

FAST_MAX = 1 << 20  # larger frames go to wsproto (which reports its own limits)

Audio = npt.NDArray[np.uint8]  # a whole binary message's payload, unmasked, read-only


def _unmask_words(buf: bytes | bytearray, head: int, words: int) -> Audio:
    """The payload of ``words`` uint32 after the masking key at ``head``, unmasked, as a read-only uint8 array.
    (A function, so the view of ``buf`` is gone when it returns: a bytearray with an export cannot be resized.)"""
    view = np.frombuffer(buf, np.uint32, words + 1, head)  # the key, then the payload
    audio: Audio = (view[1:] ^ view[0]).view(np.uint8)
    audio.flags.writeable = False
    return audio


class Masked:
    """A whole masked binary message of ``words`` uint32 left for the read hub's batch to unmask
    (engine/rtzr/emulator/batch.py): its masking key at ``data[head:head + 4]``, the payload after it."""

    __slots__ = ("data", "head", "words")

    def __init__(self, data: bytes, head: int, words: int) -> None:
        self.data, self.head, self.words = data, head, words


class FrameSplitter:
    """Feeds bytes in, gives events out; ``rest()`` hands wsproto what is buffered (to finish a close)."""

    def __init__(self, ws: Connection) -> None:
        self.ws = ws
        self._buf = bytearray()
        self._in_fragment = False  # a fragmented message is under way in wsproto: everything goes there
        self._owed = 0  # bytes of a huge frame wsproto has begun and must get before anything else

    def feed(self, data: bytes, *, defer: bool = False) -> list[Event | Audio | Masked]:
        """``defer``: audio messages that lie whole in ``data`` come out :class:`Masked` (a batch unmasks them)."""
        out: list[Event | Audio | Masked] = []
        if self._owed:
            part, data = data[:self._owed], data[self._owed:]
            self._owed -= len(part)
            self._to_wsproto(part, out)
        buf: bytes | bytearray
        if self._buf:
            buf = self._buf
            buf += data
        else:  # nothing buffered (the usual case): parse the read itself, keep only what is left of it
            buf = data
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - head < 2:
                    break
                length = int.from_bytes(buf[head:head + 2], "big")
                head += 2
            elif length == 127:
                if n - head < 8:
                    break
                length = int.from_bytes(buf[head:head + 8], "big")
                head += 8
            masked = bool(b1 & 0x80)
            end = head + (4 if masked else 0) + length
            if end > n:
                if length > FAST_MAX:  # wsproto decides about huge frames as they stream in
                    self._track_fragment(b0)
                    self._to_wsproto(bytes(buf[pos:]), out)
                    self._owed = end - n
                    pos = n
                break
            event: Event | None = None
            if b0 == 0x82 and masked and length and not length & 3 and not self._in_fragment:
                if defer and buf is data:  # bytes from one read: immutable, safe to keep until the batch
                    out.append(Masked(data, head, length >> 2))
                else:
                    out.append(_unmask_words(buf, head, length >> 2))
                pos = end
                continue
            if b0 in (0x81, 0x82) and masked and not self._in_fragment:
                payload = apply_mask(bytes(buf[head + 4:end]), bytes(buf[head:head + 4]))
                if b0 == 0x82:
                    event = BytesMessage(data=payload, frame_finished=True, message_finished=True)
                else:
                    try:
                        event = TextMessage(data=payload.decode("utf-8"), frame_finished=True, message_finished=True)
                    except UnicodeDecodeError:
                        event = None  # wsproto closes with 1007
            if event is not None:
                out.append(event)
            else:
                self._track_fragment(b0)
                self._to_wsproto(bytes(buf[pos:end]), out)
            pos = end
        if buf is self._buf:
            del buf[:pos]
        elif pos < n:
            self._buf += buf[pos:]
        return out

    def _track_fragment(self, b0: int) -> None:
        opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
        if opcode in (0x1, 0x2):
            self._in_fragment = not fin
        elif opcode == 0x0 and fin:
            self._in_fragment = False

    def _to_wsproto(self, frame: bytes, out: list[Event | Audio | Masked]) -> None:
        self.ws.receive_data(frame)
        out.extend(self.ws.events())

    def rest(self) -> bytes:
        """What is buffered (a partial frame), for a caller that continues with wsproto alone."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

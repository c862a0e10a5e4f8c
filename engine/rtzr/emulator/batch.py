"""Sans-IO: the audio messages of one read-hub pass unmasked, decoded and end-point-scored together.

Per 100 ms LINEAR16 message the emulator ran about ten numpy calls (unmask: frombuffer, slice, XOR, view;
EPD: astype, reshape, einsum, compare, tolist) at 1.5–3 µs each on the 2-vCPU VM, ≈ 35 µs of a ≈ 50 µs
message. Here every audio message read in one pass over the ready sockets (``ReadHub.drain``) goes through
those calls once per pass: the messages' key+payload bytes joined, one uint32 XOR of every payload with its
key, one float64 einsum over every 10 ms frame, one threshold compare. Each session then gets its own copy
of its samples (it keeps them for its utterance, not the pass's buffer) and its frames' loudness
(:meth:`StreamSession.receive_pcm`), and its events run in wire order as :meth:`SessionWire.feed` ran them.

Nothing the protocol says changes: the loudness is the same einsum and threshold per 10 ms frame (exact:
integer squares in float64), used only when the message starts on the session's frame grid; the only
difference is that a pass's messages are handled after all of its reads instead of after each read (the
same ``now`` within a pass, microseconds apart).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine.rtzr.emulator.wsfast import Audio, Masked

if TYPE_CHECKING:
    from wsproto.events import Event

    from engine.rtzr.emulator.wire import SessionWire


class Decoded:
    """One LINEAR16 message of a batch: its samples (the session's own array) and its 10 ms frames' loudness
    (None: the message is not a whole number of frames; the session scores it itself)."""

    __slots__ = ("loud", "samples")

    def __init__(self, samples: npt.NDArray[np.int16], loud: list[bool] | None) -> None:
        self.samples, self.loud = samples, loud


class AudioBatch:
    """Collects each read's events during a pass (:meth:`add`), handles them all at :meth:`flush`."""

    def __init__(self, fail: Callable[[SessionWire, Exception], None]) -> None:
        self._fail = fail  # a wire's handling raised (a bug): drop it, as the hub drops a reader
        self._entries: list[tuple[SessionWire, list[Event | Audio | Masked | Decoded]]] = []

    def add(self, wire: SessionWire, events: list[Event | Audio | Masked | Decoded]) -> None:
        self._entries.append((wire, events))

    def flush(self, now: float) -> None:
        """Unmask, decode and score every :class:`Masked` message, then run each wire's events in order."""
        entries = self._entries
        if not entries:
            return
        self._entries = []
        groups: dict[tuple[int, int, float], list[tuple[list[Event | Audio | Masked | Decoded], int, Masked]]] = {}
        for wire, events in entries:
            grid = wire.session.epd_grid()
            for i, event in enumerate(events):
                if type(event) is Masked:
                    groups.setdefault((event.words, *grid), []).append((events, i, event))
        for (words, frame, threshold), items in groups.items():
            decode_group(items, words, frame, threshold)
        for wire, events in entries:
            try:
                wire.process(events, now)
            except Exception as exc:  # one session's bug must not stop every session's input
                self._fail(wire, exc)


def decode_group(items: list[tuple[list[Event | Audio | Masked | Decoded], int, Masked]], words: int, frame: int,
                 threshold: float) -> None:
    """Replace each ``events[i]`` (a :class:`Masked` message of ``words`` uint32) with its :class:`Decoded`."""
    size = 4 * (words + 1)  # the masking key, then the payload
    m = len(items)
    blob = b"".join([event.data[event.head:event.head + size] for _, _, event in items])
    keyed = np.frombuffer(blob, np.uint32).reshape(m, words + 1)
    pcm: npt.NDArray[np.int16] = (keyed[:, 1:] ^ keyed[:, :1]).view("<i2")  # (m, 2 * words) samples
    n = 2 * words
    per = n // frame if n % frame == 0 else 0
    loud: list[bool] = []
    if per:
        frames = pcm.reshape(m * per, frame).astype(np.float64)
        # The EPD's own scoring (StreamSession._run_epd), exact: integer squares summed in float64.
        loud = (np.einsum("ij,ij->i", frames, frames, optimize=False) >= threshold).tolist()
    for j, (events, i, _) in enumerate(items):
        events[i] = Decoded(pcm[j].copy(), loud[j * per:(j + 1) * per] if per else None)

"""Vendor-neutral media events: what a telephony provider hands a call (hypercorn's ``protocol/events.py``).

A provider's adapter (``engine/twilio/server.py`` for Twilio) parses its own wire messages and hands the
call these events, so :class:`engine.call.Call` is typed on them and never on a vendor's messages:

* :class:`StreamStarted` once, before anything else (the call is built from it): ids, the audio's encoding,
  rate and channels, the provider's custom parameters;
* :class:`AudioReceived` per chunk of the selected (caller's) track, in timeline order, any length;
* :class:`DtmfReceived` and :class:`MarkReached`, inbound signals the application channel needs;
* :class:`StreamStopped` when the provider ends the stream.

The adapter owns the provider's timeline: reordering, duplicates and gaps are resolved before the call
sees audio (a gap arrives as silence with ``filled=True``), so the concatenated payloads of one stream are
exactly its audio.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

from msgspec import Struct

Encoding = Literal["mulaw", "l16"]
ENCODINGS: Final = ("mulaw", "l16")
SAMPLE_BYTES: Final = {"mulaw": 1, "l16": 2}  # bytes per sample per channel
MIN_RATE: Final = 1000
MAX_RATE: Final = 384_000  # engine.audio.resample's range
MAX_CHANNELS: Final = 8


class StreamStarted(Struct, frozen=True, kw_only=True):
    """A provider's media stream began.

    ``encoding``: ``mulaw`` (G.711 μ-law, one byte a sample) or ``l16`` (signed 16-bit little-endian PCM,
    as Vonage and most WebSocket providers send; a big-endian provider swaps bytes in its adapter).
    Multi-channel audio is interleaved; the call mixes it down to mono. ``account_id`` and ``tracks`` are
    reported in ``call.started`` when the provider has them.
    """

    stream_id: str
    call_id: str
    encoding: Encoding
    sample_rate: int
    channels: int = 1
    custom_parameters: dict[str, str] = {}
    provider: str
    account_id: str = ""
    tracks: tuple[str, ...] = ("inbound",)

    def __post_init__(self) -> None:
        # Built by an adapter from untrusted start messages: a clear error here, not a crash in the decoder.
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unsupported encoding {self.encoding!r} (one of {', '.join(ENCODINGS)})")
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise ValueError(f"unsupported sample rate {self.sample_rate} Hz")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ValueError(f"unsupported channel count {self.channels}")

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (every channel): payload lengths are multiples of it over a stream."""
        return SAMPLE_BYTES[self.encoding] * self.channels

    @property
    def bytes_per_ms(self) -> float:
        return self.sample_rate * self.frame_bytes / 1000


class AudioReceived(Struct, frozen=True, gc=False):
    """A chunk of the caller's audio in the stream's encoding (any length; L16 may split a sample).

    ``timestamp_ms``: where its first sample sits on the stream's timeline (0 = the stream's first sample),
    so a chunk ends at ``timestamp_ms + len(payload) / started.bytes_per_ms``. ``filled``: silence the
    adapter synthesized for a gap. ``sequence``: the provider's chunk number, when it has one.
    """

    payload: bytes
    timestamp_ms: float
    filled: bool = False
    sequence: int | None = None


class DtmfReceived(Struct, frozen=True):
    """The caller pressed a key."""

    digit: str


class MarkReached(Struct, frozen=True):
    """The provider reports that the outbound audio queued before the mark ``name`` has played (or was cleared)."""

    name: str


class StreamStopped(Struct, frozen=True):
    """The provider ended the stream (``reason``: ``stop`` for a normal hang-up)."""

    reason: str = "stop"


MediaEvent = StreamStarted | AudioReceived | DtmfReceived | MarkReached | StreamStopped


class DropCounts(Protocol):
    """Frames the adapter dropped as duplicates or too late, read at the call's end (``call.ended``)."""

    @property
    def duplicates(self) -> int: ...

    @property
    def reordered(self) -> int: ...

"""The STT interfaces every vendor implements, in one place (as trio keeps its ABCs in ``_abc.py``).

:class:`engine.call.Call` is typed on these, never on a vendor's classes: a new STT vendor is a package
next to ``engine/rtzr/`` whose pool satisfies :class:`PoolLike`, whose leases satisfy :class:`LeaseLike`
and yield :class:`SttResult`, and whose errors subclass the ones below (``docs/architecture.md``, "Where
a new provider goes").

Errors say what the caller can do about them, not which vendor raised them:

- :class:`SttUnavailable` — no usable stream (it could not be opened, or it died before the final): the
  utterance is replayed once on a fresh stream. :class:`SttSaturated` (the vendor's concurrency limit) and
  :class:`SttStreamLost` are kinds of it.
- :class:`SttAuthError` — credentials rejected or missing: replaying does not help.
- :class:`SttProtocolError` — the vendor sent something that is not its protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from msgspec import Struct

# -- errors -----------------------------------------------------------------------------------


class SttError(Exception):
    """Base of every STT vendor's errors."""


class SttUnavailable(SttError):
    """No usable stream: it could not be opened, or it was lost before its final (a replay may succeed)."""


class SttSaturated(SttUnavailable):
    """The vendor refused a new stream because a concurrency limit or quota is reached."""


class SttStreamLost(SttUnavailable):
    """An open stream died (closed, in-band error, protocol error, finalize timeout) before the final."""


class SttAuthError(SttError):
    """The vendor rejected our credentials, or they are missing (replaying does not help)."""


class SttProtocolError(SttError):
    """A message from the vendor is not valid in its protocol (junk bytes, wrong shape)."""


# -- results ----------------------------------------------------------------------------------


class SttWord(Protocol):
    """One word of a final; times in ms relative to the start of its result."""

    @property
    def text(self) -> str: ...

    @property
    def start_at(self) -> int: ...

    @property
    def duration(self) -> int: ...

    @property
    def confidence(self) -> float | None: ...


class SttResult(Struct, kw_only=True, frozen=True):
    """A result as one lessee sees it: times in ms since the first audio byte of its lease.

    ``closes``: this final covers everything the lessee sent before its Finalize; no more results
    will come for this lease (the vendor package decides when, e.g. RTZR's clean-socket rule).
    """

    final: bool
    text: str
    confidence: float | None
    start_ms: float
    duration_ms: float
    seq: int
    words: Sequence[SttWord] | None = None
    closes: bool = False


# -- the lease and the pool ---------------------------------------------------------------------


class LeaseLike(Protocol):
    """One utterance's exclusive use of an STT stream (``engine.rtzr.pool.Lease``)."""

    lease_ms: float  # how long the lease waited for a stream
    pool_hit: bool  # the stream was open already (no handshake on the utterance's path)

    @property
    def has_pending(self) -> bool:
        """Audio was sent that no final covers yet."""
        ...

    async def send_audio(self, pcm: bytes) -> None: ...

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        """Ask for the final now; False when nothing is pending (no final will come)."""
        ...

    async def receive(self) -> SttResult:
        """The lease's next result; raises :class:`SttUnavailable` if the stream is lost."""
        ...


class PushLease(LeaseLike, Protocol):
    """A lease that can also send from synchronous code (``engine.rtzr.pool.Lease``; optional for a vendor).

    :class:`engine.call.Call` then writes each audio batch from the Twilio reader's own pass as it completes
    (no wake-up of the utterance's task per 100 ms message), and falls back to :meth:`LeaseLike.send_audio`
    whenever :meth:`send_audio_nowait` says False.
    """

    # Send now without awaiting: 1 (or True) when written whole, 2 when written but its tail waits for
    # :meth:`flush` (:attr:`write_pending`); 0 (False), nothing sent, when only the awaited ``send_audio`` can
    # send it; never raises. None when this lease can never send so (e.g. RTZR over TLS): the lessee then does
    # not try. One int, not a bool and a property to read after it: this runs once per 100 ms batch of every
    # speaking call (issue 13).
    send_audio_nowait: Callable[[bytes], int] | None

    @property
    def write_pending(self) -> bool:
        """Part of a message sent by :meth:`send_audio_nowait` waits for :meth:`flush`."""
        ...

    async def flush(self) -> None:
        """Write what :meth:`send_audio_nowait` left; raises as ``send_audio``."""
        ...


class PoolLike(Protocol):
    """Hands out leases: ``async with pool.lease() as lease:`` (waits within ``budgets.lease``)."""

    def lease(self) -> AbstractAsyncContextManager[LeaseLike]: ...


__all__ = [
    "LeaseLike",
    "PoolLike",
    "PushLease",
    "SttAuthError",
    "SttError",
    "SttProtocolError",
    "SttResult",
    "SttSaturated",
    "SttStreamLost",
    "SttUnavailable",
    "SttWord",
]

"""Per-socket accounting of RTZR results, sans-IO: which lessee a result belongs to, and when a socket is clean.

One RTZR socket carries the utterances of many calls, one lease after another. This module is where the
privacy invariant lives; the Trio shells (``stream.py``, ``pool.py``) only act on what it decides.

The clean-socket rule
---------------------
A result may only ever reach the lease whose audio produced it. RTZR gives no acknowledgement for
``Finalize`` and may cut an utterance on its own at any moment (its end-point detection,
``max_utter_duration``), so "a final arrived" does not prove that nothing else is in flight. Therefore:

1. Audio is *pending* from the moment it is sent until a final *covers* it. After our ``Finalize`` (sent at
   byte ``F``), a final covers everything up to ``F`` if it ends at or after ``cover_from`` = the lessee's
   last speech position (or ``F``), minus ``cover_slack_ms``; or if it cannot be a cut by the server: an
   end-point cut at ``X`` needs ``epd_ms`` of audio after ``X`` (so ``F - X < epd_ms`` rules it out), and a
   ``max_utter_duration`` cut has that duration. (Our endpointer may hear noise as speech longer than the
   server does; its answer then ends well before ``cover_from``, and is still the answer.) Any other final
   that ends earlier may be a cut: the rest of the lessee's audio may still be pending, the lease keeps
   waiting (under the finalize budget).
   Reaching ``cover_from`` is no proof on its own when the final may be a cut with audio after it:
   - a ``max_utter_duration`` cut (exactly that long, ``SERVER_MAX_UTTER_MS`` unless the query sets it) ending
     more than the tolerance before ``F``: the audio after it is the start of the server's next utterance,
     certainly pending; the lease keeps waiting for the Finalize's answer (it comes at once). Both ends cut
     at 30 s by default, and our pre-roll puts the server's cut a few tens of ms before our Finalize: this
     is how the capacity rig's ``rtzr_foreign_result`` warnings came about (issue 13, round 6);
   - an end-point cut (``F - X >= epd_ms``): the audio after it is silence, and whether the server still
     counts it as pending is undocumented (see rule 3): the lease ends with it, the socket is not reused.
2. A socket is handed to a new lessee only while nothing is pending *and* its timestamps are trusted.
3. Timestamps are checked against what we know for certain (bytes sent, earlier finals): a result that ends
   after the audio sent, or a final that starts inside an earlier final, makes the socket *untrusted* for the
   rest of its life. On its first lease (nobody came before) it finishes that lease (the first final after
   ``Finalize`` closes it, since coverage cannot be judged) and is then closed, never reused. On a later
   lease, where rule 4 can no longer tell the previous lessee's results from this one's, the untrusting
   result is itself foreign (rule 4): the socket is closed and the lessee replays on a fresh one.
   Also: when the server already ended the utterance itself (a final of this lease reaching ``cover_from``)
   before our ``Finalize``, whether the trailing silence is still "pending" on the server is undocumented;
   we then send no ``Finalize``, the lease ends with its finals, and the socket is closed (it is not clean).
   (Unless that final may be a ``max_utter_duration`` cut with audio after it: then a ``Finalize`` is sent
   and answered, rule 1.)
4. A result whose seq or socket-timeline start precedes the current lease's first byte, or any result that
   arrives while no lease is attached, is *foreign*: it is never delivered; the shell drops it, counts it and
   closes the socket (the current lessee then replays its audio on a fresh socket). A result that arrives
   after a lease ended *unclean* (a finalize timeout, a cancelled lessee, rule 3's closed sockets: never
   handed out again) is an *orphan*: dropped and closed the same way, but counted apart, since no rule
   failed; a foreign result on a socket believed clean, or on a new lease, means rules 1-3 did.

Rules 1-3 keep foreign results from happening; rule 4 guarantees they never reach the wrong call even when the
server's behaviour surprises rules 1-3 (for example a server cut within ``cover_slack_ms`` of the end of speech).
"""

from __future__ import annotations

import math

from msgspec import Struct

from engine.rtzr.protocol import RtzrResult
from engine.stt import SttResult

# Timestamps are integer ms on the wire and our byte offsets are exact: allow rounding, nothing more.
# (rtzr.pool.timestamp_tolerance_ms overrides it, should the real service round more coarsely.)
TIMESTAMP_TOLERANCE_MS = 20.0
# RTZR's end-point detection waits this much silence after speech before it cuts (rtzr.md: epd_time ~0.8 s);
# the query's epd_time replaces it when set.
SERVER_EPD_MS = 800.0
# RTZR's max_utter_duration when the query does not set it: undocumented (rtzr.md); the emulator's default is 30 s.
# A final this long may be the server's own cut (rule 1); the query's max_utter_duration replaces it when set.
SERVER_MAX_UTTER_MS = 30_000.0


# A result as one lessee sees it (times in ms since the first audio byte of its lease): the vendor-neutral
# type of engine.stt; ``closes`` is decided by rule 1 below.
LeaseResult = SttResult


class ForeignResult(Struct, kw_only=True, frozen=True):
    """A result that does not belong to the current lessee (rule 4): never delivered; close the socket.

    ``orphan``: it came after a lease that ended unclean, on a socket that is never handed out again (no rule
    failed); otherwise rules 1-3 let a lease end, or a new one begin, while the server still had this to say.
    """

    reason: str
    seq: int
    start_at: int
    orphan: bool = False


TrackedResult = LeaseResult | ForeignResult


class UtteranceTracker:
    """Per-socket bookkeeping: pending audio, the lessee's timeline, trust in the server's timestamps."""

    def __init__(self, bytes_per_ms: float, *, cover_slack_ms: float = 300.0,
                 tolerance_ms: float = TIMESTAMP_TOLERANCE_MS, server_epd_ms: float = SERVER_EPD_MS,
                 max_utter_ms: float | None = SERVER_MAX_UTTER_MS) -> None:
        if bytes_per_ms <= 0:
            raise ValueError("bytes_per_ms must be positive")
        self.bytes_per_ms = bytes_per_ms
        self.cover_slack_ms = cover_slack_ms
        self.tolerance_ms = tolerance_ms
        self.server_epd_ms = server_epd_ms
        self.max_utter_ms = max_utter_ms
        self.bytes_sent = 0
        self.settled_bytes = 0
        self.finalize_at: int | None = None  # bytes_sent when the outstanding Finalize was sent
        self.cover_from_ms = 0.0  # socket ms a final must reach to cover the outstanding Finalize
        self.next_seq = 0
        self.lease_offset_bytes = 0
        self.lease_first_seq = 0
        self.leased = False
        self.finals = 0
        self.last_final_end_ms = 0.0
        self.lease_last_final_end_ms = -math.inf  # end of the latest final of the current lease
        self.lease_last_final_max_cut = False  # ... and whether it may be a max_utter_duration cut (rule 1)
        self.untrusted = ""  # why the server's timestamps cannot be trusted on this socket ("" = trusted)

    # ------------------------------------------------------------------ state

    @property
    def pending(self) -> bool:
        """Audio sent that no final has covered yet."""
        return self.bytes_sent > self.settled_bytes

    @property
    def awaiting_final(self) -> bool:
        return self.finalize_at is not None

    @property
    def clean(self) -> bool:
        """Safe to hand to a new lessee (rule 2)."""
        return not self.pending and not self.untrusted

    @property
    def sent_ms(self) -> float:
        return self.bytes_sent / self.bytes_per_ms

    @property
    def lease_offset_ms(self) -> float:
        return self.lease_offset_bytes / self.bytes_per_ms

    @property
    def lease_sent_ms(self) -> float:
        return (self.bytes_sent - self.lease_offset_bytes) / self.bytes_per_ms

    # ------------------------------------------------------------------ lessee side

    def begin_lease(self) -> None:
        """A new lessee starts here: its timeline's 0 is the current byte offset."""
        self.lease_offset_bytes = self.bytes_sent
        self.lease_first_seq = self.next_seq
        self.lease_last_final_end_ms = -math.inf
        self.lease_last_final_max_cut = False
        self.leased = True

    def end_lease(self) -> None:
        self.leased = False

    def audio_sent(self, nbytes: int) -> None:
        self.bytes_sent += nbytes

    def finalize_sent(self, speech_end_ms: float | None = None) -> bool:
        """Record a Finalize; returns whether a final is expected (False = nothing pending, don't wait).

        ``speech_end_ms``: where the lessee's own endpointer heard the last speech, on the lease's timeline.
        The server's final ends near there, not at the Finalize (the hangover after it is silence).
        """
        if not self.pending:
            return False
        finalize_ms = self.bytes_sent / self.bytes_per_ms
        end_ms = finalize_ms if speech_end_ms is None else min(finalize_ms, self.lease_offset_ms + speech_end_ms)
        cover_from_ms = max(self.settled_bytes / self.bytes_per_ms, end_ms - self.cover_slack_ms)
        if not self.untrusted and self.lease_last_final_end_ms >= cover_from_ms and not (
            self.lease_last_final_max_cut and finalize_ms - self.lease_last_final_end_ms > self.tolerance_ms
        ):
            return False  # the server already ended it (see rule 3); the socket stays pending: closed, not reused
        self.finalize_at = self.bytes_sent
        self.cover_from_ms = cover_from_ms
        return True

    # ------------------------------------------------------------------ server side

    def on_result(self, result: RtzrResult) -> TrackedResult | None:
        """Account for a server result; return it mapped to the lessee, a ForeignResult, or None to skip.

        Skipped: interims with empty text. Finals are returned even with empty text, since they settle the
        lessee's pending audio.
        """
        foreign = self._foreign(result)
        if foreign is not None:
            return foreign
        was_trusted = not self.untrusted
        self._check_timestamps(result)
        if was_trusted and self.untrusted and self.lease_offset_bytes > 0:
            return ForeignResult(reason=f"untrusted timestamps on a reused socket: {self.untrusted}",
                                 seq=result.seq, start_at=result.start_at)
        closes = False
        if result.final:
            closes = self._settle(result)
        elif not result.text:
            return None
        words = result.alternatives[0].words if result.alternatives else None
        return LeaseResult(
            final=result.final,
            text=result.text,
            confidence=result.confidence,
            start_ms=result.start_at - self.lease_offset_ms,
            duration_ms=float(result.duration),
            seq=result.seq,
            words=words,
            closes=closes,
        )

    def _foreign(self, result: RtzrResult) -> ForeignResult | None:
        """Rule 4: anything not produced by the current lessee's audio."""
        reason = ""
        orphan = False
        if not self.leased:
            orphan = not self.clean  # the lease ended unclean: the socket is being closed, never reused
            reason = "late result for a lease that ended unclean" if orphan else "result while no lease is attached"
        elif result.seq < self.lease_first_seq:
            reason = f"seq {result.seq} precedes this lease's first seq {self.lease_first_seq}"
        elif not self.untrusted and result.start_at < self.lease_offset_ms - self.tolerance_ms:
            reason = f"starts at {result.start_at} ms, before this lease's first byte at {self.lease_offset_ms:.0f} ms"
        if not reason:
            return None
        if result.final:
            self.next_seq = max(self.next_seq, result.seq + 1)
        return ForeignResult(reason=reason, seq=result.seq, start_at=result.start_at, orphan=orphan)

    def _check_timestamps(self, result: RtzrResult) -> None:
        """Rule 3: what the server says must agree with what we know for certain."""
        if self.untrusted:
            return
        if result.end_at > self.sent_ms + self.tolerance_ms:
            self.untrusted = f"a result ends at {result.end_at} ms, after the {self.sent_ms:.0f} ms of audio sent"
        elif result.final and result.start_at < self.last_final_end_ms - self.tolerance_ms:
            self.untrusted = f"a final starts at {result.start_at} ms, inside an earlier final ending at " \
                             f"{self.last_final_end_ms:.0f} ms"

    def _settle(self, result: RtzrResult) -> bool:
        """A final: advance seq and what is covered; True when it closes the outstanding Finalize (rule 1)."""
        self.finals += 1
        self.next_seq = max(self.next_seq, result.seq + 1)
        self.last_final_end_ms = max(self.last_final_end_ms, float(result.end_at))
        if result.end_at >= self.lease_last_final_end_ms:
            self.lease_last_final_end_ms = float(result.end_at)
            self.lease_last_final_max_cut = self._max_utter_cut(result)
        end_bytes = min(self.bytes_sent, math.ceil(result.end_at * self.bytes_per_ms))
        if self.finalize_at is None:  # the server's own cut while audio flows
            if not self.untrusted:  # an untrusted end proves nothing: keep it pending, await the Finalize answer
                self.settled_bytes = max(self.settled_bytes, end_bytes)
            return False
        if self.untrusted:
            return self._covered(self.finalize_at)
        room_after = self.finalize_at / self.bytes_per_ms - result.end_at
        if self._max_utter_cut(result) and room_after > self.tolerance_ms:
            pass  # the server's own cut: what follows it is pending there, the Finalize's answer is still to come
        elif result.end_at >= self.cover_from_ms:
            if room_after >= self.server_epd_ms - self.tolerance_ms:
                # Every word of the lessee is answered, but this may be an end-point cut and the silence after it
                # pending or not (undocumented, rule 3): the lease ends, the socket stays pending (never reused).
                self.settled_bytes = max(self.settled_bytes, min(end_bytes, self.finalize_at))
                self.finalize_at = None
                return True
            return self._covered(self.finalize_at)
        elif room_after < self.server_epd_ms - self.tolerance_ms:
            return self._covered(self.finalize_at)  # too little audio after it for the server's own end-point cut
        self.settled_bytes = max(self.settled_bytes, min(end_bytes, self.finalize_at))
        return False

    def _covered(self, finalize_at: int) -> bool:
        """The Finalize's answer: everything sent before it is covered (rule 1)."""
        self.settled_bytes = max(self.settled_bytes, finalize_at)
        self.finalize_at = None
        return True

    def _max_utter_cut(self, result: RtzrResult) -> bool:
        """Could this final be the server's max_utter_duration cut? (rule 1) A cut lasts exactly that long; a
        final of another length is not one (this keeps a wrong guess of the server's default from making
        a lease wait for an answer that already came: only finals of that very length would wait)."""
        return self.max_utter_ms is not None and abs(result.duration - self.max_utter_ms) <= self.tolerance_ms

"""Turn taking, separate from endpointing: a turn ends after ``turn_ms`` of silence after its last final.

Sans-IO: time is the call's audio position in ms (Twilio keeps sending during silence, so the
timeline advances), passed in by the pipeline. Speech that starts again before ``turn_ms`` has
passed continues the same turn.

A continuation never ends a turn: while the endpointer could still confirm a continuation of the last
utterance (``Endpointer.continuation_possible``, passed to :meth:`TurnTracker.advance`), the turn stays
open whatever ``turn_ms`` says, so an utterance marked ``continues`` always joins the turn of the
utterance it continues (even with ``turn_ms`` shorter than ``merge_ms``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Turn:
    """A finished turn: the joined text of its finals, in order."""

    text: str
    utterance_ids: list[str]
    start_ms: float
    end_ms: float


@dataclass(slots=True)
class TurnTracker:
    """Collects finals into turns; ``advance(now_ms)`` returns a Turn when one has ended."""

    turn_ms: float
    _texts: list[str] = field(default_factory=list)
    _ids: list[str] = field(default_factory=list)
    _start_ms: float = 0.0
    _last_end_ms: float = 0.0
    _open_utterances: int = 0
    continuations: int = 0  # utterances joined to their turn as continuations (for stats and tests)
    # False when advance() cannot end a turn whatever the time (no text yet, or an utterance open): the
    # per-frame caller reads this first and skips computing advance's arguments (issue 13). A plain field,
    # kept true by every method that changes _texts or _open_utterances: one attribute read per frame.
    may_end: bool = field(default=False, init=False)

    def speech_started(self, *, continues: bool = False) -> None:
        """Speech holds the turn open, however long the silence before it was. A continuation
        (``continues``) joins the current turn: :meth:`advance` cannot have ended it, see the module doc."""
        self._open_utterances += 1
        self.continuations += continues
        self.may_end = False

    def utterance_done(self) -> None:
        """The utterance's final (or its error) has arrived; silence may now end the turn."""
        self._open_utterances = max(0, self._open_utterances - 1)
        self.may_end = bool(self._texts) and not self._open_utterances

    def add_final(self, utterance_id: str, text: str, start_ms: float, end_ms: float) -> None:
        if not text:
            return
        if not self._texts:
            self._start_ms = start_ms
        self._texts.append(text)
        if utterance_id not in self._ids:
            self._ids.append(utterance_id)
        self._last_end_ms = max(self._last_end_ms, end_ms)
        self.may_end = not self._open_utterances

    def advance(self, now_ms: float, *, continuation_possible: bool = False) -> Turn | None:
        """Call as audio arrives; returns the turn once ``turn_ms`` of silence followed its last final and
        no continuation of its last utterance can still be confirmed (``continuation_possible``)."""
        if (not self._texts or self._open_utterances or continuation_possible
                or now_ms - self._last_end_ms < self.turn_ms):
            return None
        return self.flush()

    def flush(self) -> Turn | None:
        """End the current turn now (end of call), if it has any text."""
        if not self._texts:
            return None
        turn = Turn(" ".join(self._texts), list(self._ids), self._start_ms, self._last_end_ms)
        self._texts.clear()
        self._ids.clear()
        self.may_end = False
        return turn

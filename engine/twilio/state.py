"""The Twilio Media Stream session's state machine as data (h11's ``_state.py`` way). Sans-IO.

Rule 1: everything that moves the session's state lives here: the states, the inbound messages that
matter to it, and :data:`TRANSITIONS`. :class:`engine.twilio.protocol.TwilioStream` asks
:func:`next_state` and does the parsing, sequence numbers and timeline; it never decides an order.

Rule 2: a message that is not in the table for the current state is illegal (:class:`IllegalTransition`,
which the parser reports as ``TwilioProtocolError("order", ...)``): Twilio's documented order is
``connected`` → ``start`` → (``media`` | ``dtmf`` | ``mark``)* → ``stop``
(https://www.twilio.com/docs/voice/media-streams/websocket-messages). ``connected`` may be missing (we
have seen proxies drop it): ``start`` is legal from ``IDLE`` too, and the parser counts it. Nothing is
legal after ``stop``.

The enums are ``StrEnum`` (equal to their wire names) so logs and error messages read the same as before.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class SessionState(StrEnum):
    IDLE = "idle"  # the WebSocket is open, nothing received yet
    CONNECTED = "connected"  # Twilio's ``connected`` arrived
    STARTED = "started"  # ``start`` gave the streamSid and media format: media, dtmf, mark flow
    STOPPED = "stopped"  # ``stop`` arrived: the stream is over


class Inbound(StrEnum):
    """Twilio → sori messages, by their ``event`` name."""

    CONNECTED = "connected"
    START = "start"
    MEDIA = "media"
    DTMF = "dtmf"
    MARK = "mark"
    STOP = "stop"


_S, _M = SessionState, Inbound

TRANSITIONS: Final[dict[SessionState, dict[Inbound, SessionState]]] = {
    _S.IDLE: {_M.CONNECTED: _S.CONNECTED, _M.START: _S.STARTED},
    _S.CONNECTED: {_M.START: _S.STARTED},
    _S.STARTED: {_M.MEDIA: _S.STARTED, _M.DTMF: _S.STARTED, _M.MARK: _S.STARTED, _M.STOP: _S.STOPPED},
    _S.STOPPED: {},
}


class IllegalTransition(Exception):
    """``message`` is not legal in ``state`` (the message names both, as the order error has always said)."""

    def __init__(self, state: SessionState, message: Inbound) -> None:
        super().__init__(f"{message} in state {state}")
        self.state = state
        self.message = message


def next_state(state: SessionState, message: Inbound) -> SessionState:
    """The state after ``message`` in ``state``, or :class:`IllegalTransition`."""
    moves = TRANSITIONS[state]
    if message in moves:
        return moves[message]
    raise IllegalTransition(state, message)

"""engine.twilio.state: the session's transition table, driven through TwilioStream with real wire messages.

Every (state, message) pair is tried: the ones in TRANSITIONS must be accepted and land in the table's
state; every other one must be rejected with an ``order`` error naming the message and the state, and
leave the state unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from engine.twilio.protocol import TwilioProtocolError, TwilioStream
from engine.twilio.state import TRANSITIONS, IllegalTransition, Inbound, SessionState, next_state

from .test_twilio_protocol import connected, dtmf, mark, media, start, stop

WIRE: dict[Inbound, Callable[[int], str]] = {
    Inbound.CONNECTED: lambda seq: connected(),
    Inbound.START: start,
    Inbound.MEDIA: lambda seq: media(seq, seq, 20 * seq),
    Inbound.DTMF: dtmf,
    Inbound.MARK: mark,
    Inbound.STOP: stop,
}

# The shortest legal way into each state (sequence numbers follow the messages' order).
PATH: dict[SessionState, list[Inbound]] = {
    SessionState.IDLE: [],
    SessionState.CONNECTED: [Inbound.CONNECTED],
    SessionState.STARTED: [Inbound.CONNECTED, Inbound.START],
    SessionState.STOPPED: [Inbound.CONNECTED, Inbound.START, Inbound.STOP],
}

LEGAL = [(s, m) for s, moves in TRANSITIONS.items() for m in moves]
ILLEGAL = [(s, m) for s, m in itertools.product(SessionState, Inbound) if m not in TRANSITIONS[s]]


def stream_in(state: SessionState) -> tuple[TwilioStream, int]:
    s = TwilioStream()
    seq = 0
    for message in PATH[state]:
        seq += 1
        s.receive_text(WIRE[message](seq))
    assert s.state is state
    return s, seq + 1


def test_the_table_covers_every_state_and_the_path_reaches_each() -> None:
    assert set(TRANSITIONS) == set(SessionState)
    for state, path in PATH.items():
        reached = SessionState.IDLE
        for message in path:
            reached = next_state(reached, message)
        assert reached is state


@pytest.mark.parametrize(("state", "message"), LEGAL, ids=[f"{s}-{m}" for s, m in LEGAL])
def test_every_legal_transition_is_taken(state: SessionState, message: Inbound) -> None:
    s, seq = stream_in(state)
    events = s.receive_text(WIRE[message](seq))
    assert events, "an accepted message produces its event"
    assert s.state is TRANSITIONS[state][message]
    assert s.stats.errors == 0


@pytest.mark.parametrize(("state", "message"), ILLEGAL, ids=[f"{s}-{m}" for s, m in ILLEGAL])
def test_every_illegal_transition_is_rejected_clearly(state: SessionState, message: Inbound) -> None:
    with pytest.raises(IllegalTransition) as direct:
        next_state(state, message)
    assert (direct.value.state, direct.value.message) == (state, message)
    s, seq = stream_in(state)
    with pytest.raises(TwilioProtocolError) as info:
        s.receive_text(WIRE[message](seq))
    assert info.value.kind == "order"
    assert str(info.value) == f"order: {message.value} in state {state.value}"
    assert s.state is state and s.stats.errors == 1


def test_states_read_as_their_wire_names() -> None:
    # StrEnum: existing comparisons with strings and log lines keep working.
    assert SessionState.STOPPED == "stopped" and f"{SessionState.STARTED}" == "started"
    assert {m.value for m in Inbound} == {"connected", "start", "media", "dtmf", "mark", "stop"}

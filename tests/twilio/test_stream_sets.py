"""Issue 13 round 3 (mem2): a healthy stream holds no set (each empty set is 216 B a call, for the call's life).

The stream's unknown names, its timeline's filled chunks, its checked message kinds and the error policy's
logged kinds are created on first use: an in-order call with no unknown field or protocol error has none,
and what they record when used is unchanged (tests/twilio/test_twilio_protocol.py covers the behaviour)."""

from __future__ import annotations

import gc

import pytest

from engine.metrics import Registry
from engine.twilio.protocol import TwilioProtocolError, TwilioStream
from engine.twilio.server import _EndCall, _ErrorPolicy, _Metrics

from .test_twilio_protocol import connected, media, start


def _sets_held(stream: TwilioStream) -> list[object]:
    """Sets the stream, its stats or its timeline refer to directly."""
    owners = [stream, stream.__dict__, stream.stats, stream._timeline]
    return [obj for owner in owners for obj in gc.get_referents(owner) if isinstance(obj, set)]


def test_an_in_order_stream_holds_no_set() -> None:
    s = TwilioStream()
    s.receive_text(connected())
    s.receive_text(start())
    for i in range(1, 50):
        assert s.receive_text(media(i + 1, i, i * 20))
    assert _sets_held(s) == []  # old code: 4 (unknown names, unknown fields, checked kinds, missing chunks)
    assert not s.stats.unknown_event_names and not s.stats.unknown_fields


def test_the_filled_chunks_set_lives_only_while_a_late_frame_may_come() -> None:
    s = TwilioStream()
    s.receive_text(start())
    s.receive_text(media(2, 1, 20))
    s.receive_text(media(4, 3, 60))  # chunk 2 filled with silence
    assert s._timeline.missing == {2}
    assert s.receive_text(media(3, 2, 40)) == []  # late: reordered
    assert s._timeline.missing is None
    assert s.receive_text(media(3, 2, 40)) == []  # again: now a duplicate
    assert (s.stats.reordered, s.stats.duplicates) == (1, 1)


def test_the_error_policy_holds_its_logged_kinds_only_after_an_error() -> None:
    policy = _ErrorPolicy(3, _Metrics(Registry()), "c")
    s = TwilioStream()
    assert policy.logged is None  # old code: an empty set
    policy.failed(s, TwilioProtocolError("bad_json", "x"))
    policy.failed(s, TwilioProtocolError("bad_json", "y"))
    assert policy.logged == {"bad_json"} and policy.count == 2
    with pytest.raises(_EndCall):
        policy.failed(s, TwilioProtocolError("bad_json", "z"))  # the budget of 3

"""The hub without sockets: routing by subscription, bounded queues, the drop notice."""

from __future__ import annotations

import json

from engine import events as ev
from engine.appchannel.hub import AppHub, Subscriber
from engine.metrics import Registry


def dtmf(sid: str, digit: str = "1") -> ev.Dtmf:
    return ev.Dtmf(call_sid="CA" + sid, stream_sid="MZ" + sid, digit=digit)


def test_bounded_queue_counts_drops_and_reports_them_first() -> None:
    sub = Subscriber(None, limit=2)
    assert sub.push(b"a") and sub.push(b"b")
    assert not sub.push(b"c") and not sub.push(b"d")
    assert sub.dropped == 2
    out = sub.take()
    assert json.loads(out[0]) == {"type": "channel.dropped", "count": 2}
    assert out[1:] == [b"a", b"b"]
    assert sub.take() == []  # reported once


def test_publish_routes_by_subscription_and_encodes_as_the_sinks() -> None:
    metrics = Registry()
    hub = AppHub({}, metrics)
    every = hub.subscribe(None, 10)
    one = hub.subscribe("MZ2", 10)
    by_call = hub.subscribe("CA1", 10)
    first = dtmf("1")
    hub.publish(first)
    hub.publish(dtmf("2"))
    assert len(every.take()) == 2
    assert [json.loads(b)["stream_sid"] for b in one.take()] == ["MZ2"]
    assert by_call.take() == [ev.encode(first)]  # the sinks' JSON, byte for byte
    hub.unsubscribe(one)
    hub.publish(dtmf("2"))
    assert one.take() == []


def test_drops_are_per_connection_and_counted_in_metrics() -> None:
    metrics = Registry()
    hub = AppHub({}, metrics)
    slow = hub.subscribe(None, 1)
    fast = hub.subscribe(None, 100)
    for _ in range(5):
        hub.publish(dtmf("1"))
    assert slow.dropped == 4 and fast.dropped == 0 and len(fast.take()) == 5
    assert "app_channel_events_dropped_total 4" in metrics.render()


def test_unknown_call_and_bad_json_are_refused() -> None:
    hub = AppHub({}, Registry())
    sub = hub.subscribe(None, 10)
    err = hub.command(sub, '{"type": "clear", "stream_sid": "MZ9", "ref": "x"}')
    assert err is not None and err.code == "unknown_call" and err.ref == "x"
    err = hub.command(sub, "{")
    assert err is not None and err.code == "json"

"""Webhook sink: signatures a receiver can check against replay, a delivery id stable across retries,
events left at the shutdown deadline counted and logged, drops logged without flooding."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from engine.config import SinksConfig
from engine.events import SpeechStarted
from engine.metrics import Registry
from engine.sinks import FLUSH_DEADLINE_S, EventSinks

SECRET = "whsec-test-secret"
BODY = b'{"type":"speech.started","call_sid":"CA1"}'
NOW = 1_800_000_000


def started(n: int, call: str = "CA1") -> SpeechStarted:
    return SpeechStarted(call_sid=call, stream_sid="MZ1", utterance_id=f"MZ1:{n}", start_ms=0)


def records(caplog: pytest.LogCaptureFixture, event: str, sink: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event and r.fields.get("sink") == sink]  # type: ignore[attr-defined]


async def wait_for(predicate, step: float = 0.01) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await trio.sleep(step)


# -- signing and verifying ---------------------------------------------------------------------------
def test_signature_is_hmac_of_timestamp_dot_body_and_verifies() -> None:
    from engine.sinks import sign, verify

    header = sign(SECRET, BODY, NOW)
    mac = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={mac}"
    assert verify(SECRET, header, BODY, now=NOW)
    assert verify(SECRET.encode(), header, BODY, now=NOW + 299)  # a bytes secret too
    assert verify(SECRET, f"t={NOW},v1={'0' * 64},v1={mac}", BODY, now=NOW)  # one of several (a rotation)


def test_verify_rejects_tampered_body_wrong_secret_stale_or_future_timestamp() -> None:
    from engine.sinks import sign, verify

    header = sign(SECRET, BODY, NOW)
    assert not verify(SECRET, header, BODY + b" ", now=NOW)
    assert not verify("another-secret", header, BODY, now=NOW)
    assert not verify("", header, BODY, now=NOW)
    assert not verify(SECRET, header, BODY, now=NOW + 301)  # a replay six minutes later
    assert not verify(SECRET, header, BODY, now=NOW - 301)  # from the future
    assert verify(SECRET, header, BODY, now=NOW + 3599, tolerance_s=3600)
    assert not verify(SECRET, header, BODY, now=float("nan"))
    # the timestamp is signed: moving it forward breaks the signature
    mac = header.split("v1=")[1]
    assert not verify(SECRET, f"t={NOW + 600},v1={mac}", BODY, now=NOW + 600)


@pytest.mark.parametrize("header", [
    "", "garbage", "t=", "v1=", f"t={NOW}", "v1=" + "0" * 64, f"t=abc,v1={'0' * 64}", f"t=-{NOW},v1={'0' * 64}",
    f"t={NOW},t={NOW},v1={'0' * 64}", f"t=١٨٠٠٠٠٠٠٠٠,v1={'0' * 64}", f"t={'9' * 40},v1={'0' * 64}",
    f"t={NOW},v1={'é' * 64}", f"t={NOW},v1", f"t={NOW},,v1={'0' * 64}", "sha256=" + "0" * 64, "t=1," * 5000,
])
def test_verify_rejects_malformed_headers(header: str) -> None:
    from engine.sinks import verify

    assert verify(SECRET, header, BODY, now=NOW) is False


def test_verify_accepts_uppercase_hex_only_if_it_matches_exactly() -> None:
    from engine.sinks import sign, verify

    header = sign(SECRET, BODY, NOW)
    assert not verify(SECRET, header.upper().replace("T=", "t=").replace("V1=", "v1="), BODY, now=NOW)


@given(header=st.text(), body=st.binary(max_size=64), now=st.floats())
def test_verify_never_raises_on_arbitrary_headers(header: str, body: bytes, now: float) -> None:
    from engine.sinks import verify

    assert verify(SECRET, header, body, now=now) in (True, False)


@given(t=st.text(max_size=20), v=st.text(max_size=80), extra=st.text(max_size=20))
def test_verify_never_raises_on_near_miss_headers(t: str, v: str, extra: str) -> None:
    from engine.sinks import verify

    for header in (f"t={t},v1={v}", f"t={NOW},v1={v}", f"t={t},v1={'0' * 64}{extra}", f"{extra}t={NOW},v1={v}"):
        assert verify(SECRET, header, BODY, now=NOW) is False


# -- delivery ids ------------------------------------------------------------------------------------
async def test_delivery_id_is_stable_across_retries_and_differs_between_deliveries(
        autojump_clock: trio.testing.MockClock) -> None:
    from engine.sinks import verify

    received: list[httpx.Request] = []
    statuses = iter([500, 503, 200, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(next(statuses))

    metrics = Registry()
    cfg = SinksConfig(jsonl="", webhook_url="http://hook.invalid/", webhook_secret=SECRET, webhook_workers=1)
    sinks = EventSinks(cfg, metrics, http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            sinks.emit(started(1))
            sinks.emit(started(2))
            await wait_for(lambda: metrics.value("webhook_delivered_total") == 2)
            nursery.cancel_scope.cancel()
    ids = [r.headers["x-sori-delivery"] for r in received]
    assert ids[0] == ids[1] == ids[2] != ids[3]  # three tries of the first event, then the second
    assert len(ids[0]) >= 16
    for request in received:  # every try is signed afresh, and verifies as the receiver would check it
        assert verify(SECRET, request.headers["x-sori-signature"], request.content, now=time.time())
    assert received[0].content == received[2].content != received[3].content


async def test_unsigned_webhook_still_carries_a_delivery_id(autojump_clock: trio.testing.MockClock) -> None:
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    metrics = Registry()
    sinks = EventSinks(SinksConfig(jsonl="", webhook_url="http://hook.invalid/"), metrics,
                       http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            sinks.emit(started(1))
            await wait_for(lambda: metrics.value("webhook_delivered_total") == 1)
            nursery.cancel_scope.cancel()
    assert "x-sori-delivery" in received[0].headers and "x-sori-signature" not in received[0].headers


# -- shutdown and drop accounting --------------------------------------------------------------------
async def test_events_left_at_the_flush_deadline_are_counted_and_logged_once(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def stalled(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError  # unreachable

    metrics = Registry()
    cfg = SinksConfig(jsonl="", webhook_url="http://hook.invalid/", webhook_workers=2, webhook_timeout_ms=60_000)
    sinks = EventSinks(cfg, metrics, http_client=httpx.AsyncClient(transport=httpx.MockTransport(stalled)))
    with trio.fail_after(FLUSH_DEADLINE_S + 5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            for n in range(10):
                sinks.emit(started(n, call=f"CA{n % 3}"))
            await trio.testing.wait_all_tasks_blocked()
            t0 = trio.current_time()
            nursery.cancel_scope.cancel()
    assert trio.current_time() - t0 == pytest.approx(FLUSH_DEADLINE_S, abs=0.1)
    assert metrics.value("sink_events_dropped_total", "sink=webhook", "reason=shutdown") == 10
    assert metrics.value("events_dropped_total", "sink=webhook") == 10
    assert sinks.webhook_queued() == 0
    [line] = records(caplog, "events_dropped_at_shutdown", "webhook")  # one line for all the lanes
    assert line.fields["dropped"] == 10  # type: ignore[attr-defined]


async def test_a_webhook_that_is_down_logs_a_few_lines_that_add_up_to_every_drop(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    metrics = Registry()
    cfg = SinksConfig(jsonl="", webhook_url="http://hook.invalid/?token=in-the-url", webhook_queue=10,
                      webhook_retries=1, webhook_workers=1)
    sinks = EventSinks(cfg, metrics, http_client=httpx.AsyncClient(transport=httpx.MockTransport(down)))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            for n in range(200):
                sinks.emit(started(n))
            await wait_for(lambda: metrics.value("events_dropped_total", "sink=webhook") == 200)
            nursery.cancel_scope.cancel()
    assert metrics.value("sink_events_dropped_total", "sink=webhook", "reason=queue_full") == 190  # the queue holds 10
    assert metrics.value("sink_events_dropped_total", "sink=webhook", "reason=delivery_failed") == 10
    lines = records(caplog, "event_dropped", "webhook")
    assert 1 <= len(lines) <= 3  # not one per event
    assert sum(r.fields["dropped"] for r in lines) == 200  # type: ignore[attr-defined]
    assert len(records(caplog, "sink_failing", "webhook")) == 1
    ours = " ".join(f"{r.getMessage()} {r.fields}" for r in caplog.records if r.name == "engine.sinks")  # type: ignore[attr-defined]
    assert "in-the-url" not in ours

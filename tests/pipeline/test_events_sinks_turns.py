"""Events encode as tagged JSON; sinks deliver JSONL and signed webhooks off the hot path; turns."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time

import httpx
import trio
import trio.testing

from engine.config import SinksConfig
from engine.events import ErrorEvent, Latency, SpeechStarted, TranscriptFinal, decode, encode
from engine.metrics import Registry
from engine.sinks import EventSinks, sign
from engine.turns import TurnTracker


def final(n: int) -> TranscriptFinal:
    return TranscriptFinal(call_sid="CA1", stream_sid="MZ1", utterance_id=f"MZ1:{n}", text=f"말 {n}", confidence=0.9,
                           start_ms=100.0 * n, end_ms=100.0 * n + 50,
                           latency=Latency(endpoint_ms=200, lease_ms=0, stt_ms=150, total_ms=352))


def test_events_are_tagged_json_and_round_trip() -> None:
    event = final(1)
    obj = json.loads(encode(event))
    assert obj["type"] == "transcript.final"
    assert obj["latency"] == {"endpoint_ms": 200, "lease_ms": 0, "stt_ms": 150, "total_ms": 352}
    assert {"call_sid", "stream_sid", "ts", "utterance_id"} <= obj.keys()
    assert decode(encode(event)) == event
    err = ErrorEvent(call_sid="CA1", stream_sid="MZ1", kind="budget_expired", message="m", budget="finalize")
    assert json.loads(encode(err))["budget"] == "finalize"


async def test_jsonl_sink_writes_one_line_per_event_and_callback_sees_all() -> None:
    out = io.StringIO()
    seen: list[str] = []
    sinks = EventSinks(SinksConfig(jsonl="-"), Registry(), on_event=lambda e: seen.append(type(e).__name__), stdout=out)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            for n in range(5):
                sinks.emit(final(n))
            sinks.emit(SpeechStarted(call_sid="CA1", stream_sid="MZ1", utterance_id="MZ1:9", start_ms=0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["transcript.final"] * 5 + ["speech.started"]
    assert seen == ["TranscriptFinal"] * 5 + ["SpeechStarted"]


async def test_webhook_is_signed_and_retried(autojump_clock: trio.testing.MockClock) -> None:
    received: list[httpx.Request] = []
    statuses = iter([500, 503, 200, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(next(statuses))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    metrics = Registry()
    cfg = SinksConfig(jsonl="", webhook_url="http://hook.invalid/events", webhook_secret="whsec", webhook_retries=3)
    sinks = EventSinks(cfg, metrics, http_client=client)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            sinks.emit(final(1))
            sinks.emit(final(2))
            while metrics.value("webhook_delivered_total") < 2:
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert len(received) == 4
    body = received[-1].content
    header = received[-1].headers["x-sori-signature"]
    t = int(header.split(",")[0].removeprefix("t="))
    expected = hmac.new(b"whsec", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}" == sign("whsec", body, t)
    assert abs(t - time.time()) < 60
    assert metrics.value("webhook_failures_total") == 2
    assert metrics.value("events_dropped_total", "sink=webhook") == 0


async def test_webhook_down_drops_are_counted_and_emit_never_blocks(autojump_clock: trio.testing.MockClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    metrics = Registry()
    cfg = SinksConfig(jsonl="", webhook_url="http://hook.invalid/", webhook_queue=10, webhook_retries=1)
    sinks = EventSinks(cfg, metrics, http_client=client)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            t0 = trio.current_time()
            for n in range(100):
                sinks.emit(final(n))  # synchronous: must never block the caller
            assert trio.current_time() == t0
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    # 100 emitted; the queue held 10 (+1 in the worker's hands): the rest dropped at once, the others after retries
    assert metrics.value("events_dropped_total", "sink=webhook") == 100


def test_turn_ends_after_turn_ms_of_silence_after_last_final() -> None:
    t = TurnTracker(turn_ms=600)
    t.speech_started()
    t.add_final("u1", "안녕 오늘 일지 쓰려", 0, 1500)
    assert t.advance(1600) is None  # utterance not done yet
    t.utterance_done()
    assert t.advance(2000) is None
    t.speech_started()  # caller speaks again before the turn ended
    assert t.advance(2200) is None
    t.add_final("u2", "오늘 밤", 2100, 2600)
    t.utterance_done()
    assert t.advance(3199) is None
    turn = t.advance(3200)
    assert turn is not None
    assert turn.text == "안녕 오늘 일지 쓰려 오늘 밤" and turn.utterance_ids == ["u1", "u2"]
    assert (turn.start_ms, turn.end_ms) == (0, 2600)
    assert t.advance(10_000) is None


def test_turn_flush_at_end_of_call_and_empty_text_ignored() -> None:
    t = TurnTracker(turn_ms=600)
    t.add_final("u1", "", 0, 100)
    assert t.flush() is None
    t.add_final("u1", "먹었어", 0, 100)
    turn = t.flush()
    assert turn is not None and turn.text == "먹었어"


async def test_jsonl_sink_appends_to_a_file(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"type":"earlier"}\n')
    sinks = EventSinks(SinksConfig(jsonl=str(path)), Registry())
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            for n in range(3):
                sinks.emit(final(n))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["earlier"] + ["transcript.final"] * 3


async def test_webhook_lanes_keep_each_calls_order_with_requests_in_parallel(
        autojump_clock: trio.testing.MockClock) -> None:
    in_flight = 0
    peak = 0
    seen: list[tuple[str, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(0.05)  # a slow webhook: 50 ms per request
        in_flight -= 1
        body = json.loads(request.content)
        seen.append((body["call_sid"], body["utterance_id"]))
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    metrics = Registry()
    sinks = EventSinks(SinksConfig(jsonl="", webhook_url="http://hook.invalid/", webhook_workers=4), metrics,
                       http_client=client)
    calls = [f"CA{i}" for i in range(8)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sinks.run)
            t0 = trio.current_time()
            for n in range(10):
                for call in calls:
                    sinks.emit(SpeechStarted(call_sid=call, stream_sid="MZ", utterance_id=f"{call}:{n}", start_ms=0))
            while metrics.value("webhook_delivered_total") < 80:
                await trio.sleep(0.01)
            elapsed = trio.current_time() - t0
            nursery.cancel_scope.cancel()
    for call in calls:
        assert [u for c, u in seen if c == call] == [f"{call}:{n}" for n in range(10)]
    assert peak > 1  # requests really overlapped
    assert elapsed < 80 * 0.05  # faster than one request at a time

"""TwilioServer over real loopback sockets: admission, budgets, error policy, isolation, outbound API."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket

from engine.log import JsonLinesFormatter
from engine.media import AudioReceived, MarkReached
from engine.twilio.protocol import Started
from engine.twilio.server import CallHandler, TwilioSession
from engine.twilio.signature import compute_signature
from engine.twilio.simulator import simulate_call
from tests.twilio.test_twilio_protocol import connected, dtmf, media, start, stop
from tests.twilio.twilio_support import TOKEN, RecordingHandler, make_config, running_server

AUDIO = b"\x55" * 1600  # 10 frames


@asynccontextmanager
async def raw_client(port: int, path: str = "/twilio/media", token: str | None = TOKEN) -> AsyncIterator[
        WebSocketConnection]:
    url = f"ws://127.0.0.1:{port}{path}"
    headers = [(b"User-Agent", b"Twilio.TmeWs/1.0")]
    if token:
        headers.append((b"X-Twilio-Signature", compute_signature(token, url).encode()))
    async with open_websocket("127.0.0.1", port, path, use_ssl=False, extra_headers=headers) as ws:
        yield ws


async def wait_for(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_wrong_path_is_404() -> None:
    with trio.fail_after(10):
        async with running_server() as srv:
            report = await simulate_call(f"ws://127.0.0.1:{srv.port}/other", AUDIO, auth_token=TOKEN, speed="fast")
    assert report.rejected_status == 404
    assert srv.metrics.value("twilio_calls_rejected_total", "status=404") == 1
    assert srv.handlers == []


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_missing_or_bad_signature_is_403(token: str | None) -> None:
    with trio.fail_after(10):
        async with running_server() as srv:
            report = await simulate_call(srv.url, AUDIO, auth_token=token, speed="fast")
    assert report.rejected_status == 403
    assert srv.metrics.value("twilio_calls_rejected_total", "status=403") == 1


async def test_no_configured_token_rejects_everything() -> None:
    cfg = make_config(twilio__auth_token=None)
    with trio.fail_after(10):
        async with running_server(cfg) as srv:
            report = await simulate_call(srv.url, AUDIO, auth_token=TOKEN, speed="fast")
    assert report.rejected_status == 403


async def test_allow_unsigned_accepts_without_signature() -> None:
    cfg = make_config(server__allow_unsigned=True)
    with trio.fail_after(10):
        async with running_server(cfg) as srv:
            report = await simulate_call(srv.url, AUDIO, auth_token=None, speed="fast")
            await wait_for(lambda: srv.handlers and srv.handlers[0].close_reasons)
    assert report.ok and srv.handlers[0].samples == len(AUDIO)


async def test_draining_is_503() -> None:
    with trio.fail_after(10):
        async with running_server() as srv:
            srv.host.draining.set()
            report = await simulate_call(srv.url, AUDIO, auth_token=TOKEN, speed="fast")
    assert report.rejected_status == 503


async def test_at_max_calls_is_503_and_capacity_returns() -> None:
    cfg = make_config(server__max_calls=1)
    with trio.fail_after(10):
        async with running_server(cfg) as srv:
            async with raw_client(srv.port) as ws:
                await ws.send_message(connected())
                await ws.send_message(start())
                await wait_for(lambda: srv.handlers)
                assert srv.host.live_calls == 1
                report = await simulate_call(srv.url, AUDIO, auth_token=TOKEN, speed="fast")
                assert report.rejected_status == 503
                await ws.send_message(stop(2))
            await wait_for(lambda: srv.host.live_calls == 0)
            again = await simulate_call(srv.url, AUDIO, auth_token=TOKEN, speed="fast")
    assert again.ok
    assert srv.metrics.value("twilio_calls_rejected_total", "status=503") == 1


async def test_twilio_start_budget_expiry(autojump_clock) -> None:
    cfg = make_config()
    cfg.budgets.twilio_start = 5000
    with trio.fail_after(60):
        async with running_server(cfg) as srv:
            async with raw_client(srv.port) as ws:
                await ws.send_message(connected())
                began = trio.current_time()
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.get_message()
                elapsed = trio.current_time() - began
                assert ws.closed is not None and ws.closed.code == 1008
    assert 5.0 <= elapsed < 6.0
    assert srv.metrics.value("twilio_start_timeouts_total") == 1
    assert srv.handlers == []


async def test_protocol_error_budget_ends_the_call() -> None:
    cfg = make_config(server__protocol_error_budget=3)
    with trio.fail_after(10):
        async with running_server(cfg) as srv:
            async with raw_client(srv.port) as ws:
                await ws.send_message(connected())
                await ws.send_message(start())
                await ws.send_message(media(2, 1, 20))
                await ws.send_message("{bad json")
                await ws.send_message(b"\x00binary")
                await ws.send_message(media(3, 2, 40))  # still delivered between errors
                await ws.send_message('{"event":"media"}')
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.get_message()
                assert ws.closed is not None and ws.closed.code == 1008
            await wait_for(lambda: srv.handlers and srv.handlers[0].close_reasons)
    handler = srv.handlers[0]
    assert handler.close_reasons == ["protocol_errors"]
    assert handler.samples == 320 and handler.run_returned
    for kind in ("json", "binary", "schema"):
        assert srv.metrics.value("twilio_protocol_errors_total", f"kind={kind}") == 1
    assert srv.metrics.value("twilio_calls_ended_total", "reason=protocol_errors") == 1


async def test_unsupported_format_ends_the_call_at_once() -> None:
    with trio.fail_after(10):
        async with running_server() as srv:
            async with raw_client(srv.port) as ws:
                await ws.send_message(connected())
                await ws.send_message(start(fmt={"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}))
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.get_message()
    assert srv.metrics.value("twilio_protocol_errors_total", "kind=format") == 1
    assert srv.handlers == []


async def test_dtmf_and_close_without_stop() -> None:
    with trio.fail_after(10):
        async with running_server() as srv:
            async with raw_client(srv.port) as ws:
                await ws.send_message(connected())
                await ws.send_message(start())
                await ws.send_message(media(2, 1, 20))
                await ws.send_message(dtmf(3, "7"))
                await wait_for(lambda: srv.handlers and len(srv.handlers[0].events) == 2)
            await wait_for(lambda: srv.handlers[0].close_reasons)
    handler = srv.handlers[0]
    assert handler.close_reasons == ["closed"] and not handler.saw_stop
    assert [type(e).__name__ for e in handler.events] == ["AudioReceived", "DtmfReceived"]


async def test_read_idle_timeout_ends_a_silent_call() -> None:
    cfg = make_config(twilio__read_idle_ms=200)
    with trio.fail_after(10):
        async with running_server(cfg) as srv:
            async with raw_client(srv.port) as ws:
                await ws.send_message(connected())
                await ws.send_message(start())
                await wait_for(lambda: srv.handlers and srv.handlers[0].close_reasons)
    assert srv.handlers[0].close_reasons == ["idle_timeout"]


class CrashingHandler(RecordingHandler):
    async def run(self) -> None:
        await trio.sleep(0.05)
        raise RuntimeError("pipeline bug")


async def test_a_failing_call_does_not_affect_another() -> None:
    handlers: list[RecordingHandler] = []

    def factory(session: TwilioSession) -> CallHandler:
        cls = CrashingHandler if session.custom_parameters.get("crash") else RecordingHandler
        handler = cls(session)
        handlers.append(handler)
        return handler

    audio = bytes(range(256)) * 25  # 0.8 s
    results = {}
    with trio.fail_after(20):
        async with running_server(factory=factory) as srv:
            async def call(name: str, params: dict[str, str]) -> None:
                results[name] = await simulate_call(srv.url, audio, auth_token=TOKEN, speed="realtime",
                                                    custom_parameters=params)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "crash", {"crash": "1"})
                nursery.start_soon(call, "good", {})
            await wait_for(lambda: all(h.close_reasons for h in handlers))
    good = next(h for h in handlers if not isinstance(h, CrashingHandler))
    bad = next(h for h in handlers if isinstance(h, CrashingHandler))
    assert results["good"].ok and good.samples == len(audio) and good.close_reasons == ["stop"]
    assert bad.close_reasons == ["handler_error"]
    assert results["crash"].frames_sent < 40  # the crashed call was cut short
    assert srv.metrics.value("twilio_connection_failures_total") == 1


class SpeakingHandler(RecordingHandler):
    """Plays 850 samples of PCM (padded to 6 frames) and a mark, then waits for the mark echo."""

    async def run(self) -> None:
        pcm = (np.sin(np.arange(850) / 5) * 8000).astype(np.int16)
        assert await self.session.send_media(pcm)
        assert await self.session.send_mark("played")
        await self.done.wait()


async def test_outbound_media_is_played_and_mark_echoed() -> None:
    handlers: list[RecordingHandler] = []

    def factory(session: TwilioSession) -> CallHandler:
        handlers.append(SpeakingHandler(session))
        return handlers[-1]

    with trio.fail_after(10):
        async with running_server(factory=factory) as srv:
            report = await simulate_call(srv.url, b"\xff" * 8000, auth_token=TOKEN, speed="realtime")
            await wait_for(lambda: handlers and handlers[0].close_reasons)
    assert report.ok
    assert report.media_received_bytes == 960 and report.played_bytes == 960
    assert report.marks_received == 1 and report.marks_echoed == 1
    assert MarkReached("played") in handlers[0].events
    assert not await handlers[0].session.send_mark("after close")


class ClearingHandler(RecordingHandler):
    async def run(self) -> None:
        await self.session.send_media(b"\x00" * 16000)  # 2 s queued
        await self.session.send_mark("a")
        await self.session.send_mark("b")
        await trio.sleep(0.2)
        self.cleared_at = trio.current_time()
        await self.session.clear()
        await self.done.wait()


async def test_clear_echoes_all_pending_marks_at_once() -> None:
    handlers: list[ClearingHandler] = []

    def factory(session: TwilioSession) -> CallHandler:
        handlers.append(ClearingHandler(session))
        return handlers[-1]

    with trio.fail_after(10):
        async with running_server(factory=factory) as srv:
            report = await simulate_call(srv.url, b"\xff" * 8000, auth_token=TOKEN, speed="realtime")
            await wait_for(lambda: handlers and handlers[0].close_reasons)
    marks = [e for e in handlers[0].events if isinstance(e, MarkReached)]
    assert marks == [MarkReached("a"), MarkReached("b")]
    assert report.clears_received == 1 and report.marks_echoed == 2
    assert report.played_bytes < 16000  # playback was interrupted


async def test_cancelled_server_stops_accepting_but_live_calls_continue() -> None:
    cfg = make_config()
    handlers: list[RecordingHandler] = []

    def factory(session: TwilioSession) -> CallHandler:
        handlers.append(RecordingHandler(session))
        return handlers[-1]

    from engine.metrics import Registry
    from engine.nursery import CallHost
    from engine.twilio.server import TwilioServer

    with trio.fail_after(10):
        async with trio.open_nursery() as calls:
            host = CallHost(calls)
            server = TwilioServer(cfg, host=host, handler_factory=factory, metrics=Registry())
            serving = trio.CancelScope()
            stopped = trio.Event()

            async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
                with serving:
                    await server.run(task_status=task_status)
                stopped.set()

            async with trio.open_nursery() as nursery:
                port = await nursery.start(serve)
                async with raw_client(port) as ws:
                    await ws.send_message(connected())
                    await ws.send_message(start())
                    await wait_for(lambda: handlers)
                    serving.cancel()
                    await stopped.wait()  # run() has returned (a sleep here raced its unwinding on a loaded machine)
                    with pytest.raises(OSError):
                        await trio.open_tcp_stream("127.0.0.1", port)
                    await ws.send_message(media(2, 1, 20))
                    await ws.send_message(stop(3))
                    await wait_for(lambda: handlers[0].close_reasons)
            calls.cancel_scope.cancel()
    assert handlers[0].close_reasons == ["stop"] and handlers[0].samples == 160


async def test_trusted_proxy_headers_rebuild_the_signed_url() -> None:
    public = "wss://voice.example.com/twilio/media"
    proxy = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "voice.example.com")]
    with trio.fail_after(10):
        async with running_server(make_config(server__trust_proxy_headers=True)) as srv:
            ok = await simulate_call(srv.url, AUDIO, auth_token=TOKEN, speed="fast", sign_url=public,
                                     extra_headers=proxy)
        async with running_server(make_config()) as srv:
            untrusted = await simulate_call(srv.url, AUDIO, auth_token=TOKEN, speed="fast", sign_url=public,
                                            extra_headers=proxy)
        async with running_server(make_config(twilio__public_url="wss://voice.example.com")) as srv:
            override = await simulate_call(srv.url, AUDIO, auth_token=TOKEN, speed="fast", sign_url=public)
    assert ok.ok, ok.summary()
    assert untrusted.rejected_status == 403
    assert override.ok


def _rejections(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "engine.twilio.server" and r.getMessage() == "twilio_rejected"]


@pytest.mark.parametrize("trusted", [False, True])
async def test_bad_signature_log_says_which_urls_were_tried(trusted: bool, caplog: pytest.LogCaptureFixture) -> None:
    """One log line per rejected upgrade: the URLs compared and the proxy headers' standing; no secret."""
    caplog.set_level(logging.INFO, logger="engine.twilio.server")
    public = "wss://voice.example.com/twilio/media"
    proxy = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "voice.example.com")]
    wrong = "not-the-token"
    with trio.fail_after(10):
        async with running_server(make_config(server__trust_proxy_headers=trusted)) as srv:
            report = await simulate_call(srv.url, AUDIO, auth_token=wrong, speed="fast", sign_url=public,
                                         extra_headers=proxy)
    assert report.rejected_status == 403
    [record] = _rejections(caplog)
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["reason"] == "bad signature" and fields["status"] == 403
    assert fields["proxy_headers"] == "x-forwarded-proto,x-forwarded-host"
    assert fields["proxy_headers_trusted"] is trusted
    if trusted:
        assert fields["tried_urls"] == f"{public} wss://voice.example.com:443/twilio/media"
        assert fields["url_from"] == "X-Forwarded-* (trusted)" and "hint" not in fields
    else:
        local = f"127.0.0.1:{srv.port}/twilio/media"
        assert fields["tried_urls"] == f"wss://{local} ws://{local}"
        assert fields["url_from"] == "Host header" and "trust_proxy_headers" in fields["hint"]
    line = JsonLinesFormatter().format(record)
    for secret in (TOKEN, wrong, compute_signature(wrong, public)):
        assert secret not in line


async def test_missing_signature_log_has_no_url_details(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.twilio.server")
    with trio.fail_after(10):
        async with running_server() as srv:
            report = await simulate_call(srv.url, AUDIO, auth_token=None, speed="fast")
    assert report.rejected_status == 403
    [record] = _rejections(caplog)
    assert record.fields["reason"] == "missing signature" and "tried_urls" not in record.fields  # type: ignore[attr-defined]


async def test_start_info_reaches_the_session() -> None:
    with trio.fail_after(10):
        async with running_server() as srv:
            async with raw_client(srv.port) as ws:
                await ws.send_message(connected())
                await ws.send_message(start() + " ")
                await ws.send_message(media(2, 1, 52, b"\x01\x02"))
                await ws.send_message(stop(3))
                await wait_for(lambda: srv.handlers and srv.handlers[0].close_reasons)
    session = srv.handlers[0].session
    assert isinstance(session.started, Started)
    assert session.stream_sid.startswith("MZ") and session.call_sid.startswith("CA")
    assert json.dumps(session.custom_parameters) == '{"lang": "ko"}'
    assert srv.handlers[0].events[0] == AudioReceived(b"\x01\x02", 0.0)  # ms from the stream's first sample


class StuckHandler(RecordingHandler):
    """A handler whose run() outlives the stream: only the drain deadline ends it."""

    cancelled = False

    async def run(self) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled = True
            raise


async def test_a_handler_still_running_after_the_stream_is_cancelled_at_the_drain_deadline(
        caplog: pytest.LogCaptureFixture) -> None:
    """The drain deadline is the call nursery's own scope (issue 13, mem2: no separate grace scope): it cancels
    the handler, and only it; the call ends with the stream's reason and the slow handler is logged."""
    handlers: list[RecordingHandler] = []

    def factory(session: TwilioSession) -> CallHandler:
        handlers.append(StuckHandler(session))
        return handlers[-1]

    cfg = make_config(budgets__drain=300)
    with trio.fail_after(20), caplog.at_level(logging.WARNING, logger="sori"):
        async with running_server(cfg, factory=factory) as srv:
            report = await simulate_call(srv.url, AUDIO, auth_token=TOKEN, speed="fast")
            await wait_for(lambda: srv.metrics.value("twilio_calls_ended_total", "reason=stop") == 1, timeout=10)
    stuck = handlers[0]
    assert report.ok and isinstance(stuck, StuckHandler) and stuck.cancelled
    assert stuck.close_reasons == ["stop"]
    assert any("twilio_handler_slow" in r.getMessage() for r in caplog.records)


class EndingHandler(RecordingHandler):
    """Ends the stream from our side at its first audio frame (the application's ``stop``)."""

    def on_event(self, event: object) -> None:
        super().on_event(event)  # type: ignore[arg-type]
        if isinstance(event, AudioReceived):
            self.session.end()


async def test_session_end_from_a_frame_cancels_the_read_as_app_stop() -> None:
    """session.end() cancels the reader's idle scope (issue 13, mem2: no separate end scope); the call ends as
    ``app_stop``, not as an idle timeout, and the handler hears it once."""
    handlers: list[RecordingHandler] = []

    def factory(session: TwilioSession) -> CallHandler:
        handlers.append(EndingHandler(session))
        return handlers[-1]

    with trio.fail_after(20):
        async with running_server(factory=factory) as srv:
            await simulate_call(srv.url, AUDIO * 20, auth_token=TOKEN, speed="realtime")
            await wait_for(lambda: srv.metrics.value("twilio_calls_ended_total", "reason=app_stop") == 1, timeout=10)
    assert handlers[0].close_reasons == ["app_stop"]
    assert srv.metrics.value("twilio_calls_ended_total", "reason=idle_timeout") == 0

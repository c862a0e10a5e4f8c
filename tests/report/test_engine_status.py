"""The engine's side: the socket fields on finals, and the admin /status page (served by a test engine)."""

from __future__ import annotations

import httpx
import pytest
import trio

from engine import events as ev
from engine.admin import AdminServer
from engine.metrics import Registry
from engine.report.live import LiveStatus
from engine.rtzr.emulator import EmulatorConfig
from engine.twilio.simulator import simulate_call
from tests.pipeline.test_pipeline_e2e import make_config, phrase_call, running_engine

HANDSHAKE_MS = 30


async def test_finals_name_their_socket_its_reuse_and_token() -> None:
    audio, texts = phrase_call(["diary", "tonight", "ate"])
    emu = EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=HANDSHAKE_MS, final_ms=60)
    with trio.fail_after(30):
        async with running_engine(make_config("rtzr.pool.spare=0"), emu) as (engine, got):
            await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=500)
            await got.wait_ended(1)
    finals = got.of(ev.TranscriptFinal)
    assert [f.text for f in finals] == texts
    assert all(f.socket is not None for f in finals)
    first = finals[0]
    assert first.pool_hit is False and first.socket is not None  # spare=0: the first lease waits for a connect
    assert first.socket.handshake_ms >= HANDSHAKE_MS and first.socket.uses == 1
    uses: dict[str, list[int]] = {}
    for final in finals:
        sock = final.socket
        assert sock is not None and sock.id.startswith("s") and sock.age_s >= 0
        assert sock.token_age_s is not None and sock.token_age_s >= 0
        assert sock.token_ttl_s is not None and sock.token_ttl_s > 0
        uses.setdefault(sock.id, []).append(sock.uses)
    for counts in uses.values():  # each socket counts its leases 1, 2, 3, ... in order
        assert counts == list(range(1, len(counts) + 1))
    # one token, whose fetch time the events let the report recover (to the events' rounding: a set of
    # values rounded to 10 ms split in two when they straddled a rounding boundary)
    fetched = [f.ts - f.socket.token_age_s for f in finals if f.socket and f.socket.token_age_s is not None]
    assert len(fetched) == len(finals) and max(fetched) - min(fetched) < 0.02, fetched


async def test_status_page_on_the_admin_port_only() -> None:
    audio, _ = phrase_call(["diary"])
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, got):
            admin = f"http://127.0.0.1:{engine.admin.bound_port}"
            public = f"http://127.0.0.1:{engine.twilio.port}"
            async with httpx.AsyncClient() as client:
                page = await client.get(f"{admin}/status")
                assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
                assert '<meta http-equiv="refresh"' in page.text and "Calls in progress (0)" in page.text
                assert (await client.post(f"{admin}/status")).status_code == 405  # read-only
                assert (await client.get(f"{public}/status")).status_code != 200  # not on the Twilio port
                async with trio.open_nursery() as nursery:
                    # The call stays live until the page has been read, however loaded the machine: its
                    # trailing silence outlasts the test's deadline, and the caller hangs up after the read.
                    nursery.start_soon(lambda: simulate_call(engine.twilio_url, audio, speed="realtime",
                                                             trailing_silence_ms=60_000))
                    while not got.of(ev.CallStarted) or not got.of(ev.TranscriptFinal):
                        await trio.sleep(0.01)
                    sid = got.of(ev.CallStarted)[0].call_sid
                    during = (await client.get(f"{admin}/status")).text
                    assert "Calls in progress (1)" in during and sid in during
                    nursery.cancel_scope.cancel()
                await got.wait_ended(1)
                after = (await client.get(f"{admin}/status")).text
    assert "Calls in progress (0)" in after and sid not in after
    assert "(1 finals)" in after and "ready</b>" in after


class _Pool:
    open_count, idle_count, leased_count, waiting_count, saturated = 5, 2, 2, 0, False


class _Tokens:
    def token_expires_in_s(self) -> float | None:
        return 3600.0

    def not_ready_reason(self) -> str | None:
        return None


def test_live_status_page_from_events() -> None:
    metrics = Registry()
    metrics.counter("rtzr_pool_leases_total", "", "result=hit").inc(3)
    metrics.counter("rtzr_pool_leases_total", "", "result=miss").inc(1)
    live = LiveStatus(_Pool(), _Tokens(), metrics, wall=lambda: 1000.0)
    live.observe(ev.CallStarted(call_sid="CA1", stream_sid="MZ1", account_sid="AC", tracks=["inbound"],
                                custom_parameters={}, sample_rate=8000, ts=990.0))
    live.observe(ev.SpeechStarted(call_sid="CA1", stream_sid="MZ1", utterance_id="MZ1:0", start_ms=0, ts=991.0))
    for total in (200.0, 300.0, 900.0):
        live.observe(ev.TranscriptFinal(call_sid="CA1", stream_sid="MZ1", utterance_id="MZ1:0", text="안녕<b>",
                                        confidence=None, start_ms=0, end_ms=1, ts=995.0,
                                        latency=ev.Latency(endpoint_ms=80, lease_ms=0, stt_ms=total - 80, total_ms=total)))
    live.observe(ev.TranscriptFinal(call_sid="CA0", stream_sid="MZ0", utterance_id="MZ0:0", text="old", confidence=None,
                                    start_ms=0, end_ms=1, ts=100.0,  # older than the window
                                    latency=ev.Latency(endpoint_ms=80, lease_ms=0, stt_ms=5000, total_ms=5000)))
    page = live.page("every RTZR socket is busy (2 leased, 0 waiting)").decode()
    assert "Calls in progress (1)" in page and "CA1" in page and "안녕&lt;b&gt;" in page
    assert "not ready: every RTZR socket is busy" in page
    assert "75%" in page and "expires in 60 min" in page
    assert "(3 finals)" in page and "5,000" not in page  # the old sample left the window
    assert "<td>total</td><td class=\"n\">300</td><td class=\"n\">900</td><td class=\"n\">900</td>" in page
    live.observe(ev.CallEnded(call_sid="CA1", stream_sid="MZ1", reason="stop", duration_ms=1, utterances=1, finals=1,
                              audio_sent_s=1, frames_received=1, frames_filled=0, frames_dropped=0, errors=0, ts=999.0))
    assert "Calls in progress (0)" in live.page(None).decode()


def test_admin_status_route() -> None:
    plain = AdminServer("127.0.0.1", 0, Registry(), lambda: None)
    assert plain.respond("GET", "/status")[0] == 404  # no page configured

    def broken() -> bytes:
        raise RuntimeError("bug")

    failing = AdminServer("127.0.0.1", 0, Registry(), lambda: None, status=broken)
    assert failing.respond("GET", "/status")[0] == 500
    assert failing.respond("GET", "/livez")[0] == 200  # a page bug costs nothing else
    ok = AdminServer("127.0.0.1", 0, Registry(), lambda: None, status=lambda: b"<html></html>")
    assert ok.respond("GET", "/status?x=1") == (200, "text/html; charset=utf-8", b"<html></html>")
    assert ok.respond("PUT", "/status")[0] == 405


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

"""Secrets never leak: a full run with faults, every log line (debug level) and every event grepped for
the RTZR client secret, every access token issued, the Twilio auth token and the webhook secret."""

from __future__ import annotations

import io
import logging

import trio

from engine import events as ev
from engine.log import setup_logging
from engine.rtzr.emulator import Fault
from engine.twilio.simulator import simulate_call

from .rel_rig import RTZR_SECRET, TWILIO_TOKEN, WEBHOOK_SECRET, fast_emulator, rig, script, wait_until
from .rel_wire import RawClient, Rejected
from .test_rel_sinks_shutdown import SlowHook


async def test_no_secret_in_logs_events_or_metrics() -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    setup_logging("debug", stream=buf)
    encoded: list[bytes] = []
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as outer:
                hook = SlowHook(delay=0.4)
                port = await outer.start(hook.serve)
                sets = (f"sinks.webhook_url=http://127.0.0.1:{port}/hook", f"sinks.webhook_secret={WEBHOOK_SECRET}",
                        "sinks.webhook_timeout_ms=200", "sinks.webhook_queue=4", "sinks.webhook_retries=1",
                        "rtzr.pool.spare=0", "rtzr.token_margin_ms=500", "budgets.finalize=500")
                async with rig(*sets, emulator=fast_emulator(token_lifetime_s=1.5, final_ms=150),
                               on_event=lambda e: encoded.append(ev.encode(e))) as r:
                    emu = r.emu.emulator
                    assert emu is not None
                    audio, _ = script("ate", "dunno")
                    await r.call(audio)
                    emu.inject(Fault.reject(401))  # forced token refresh
                    await r.call(audio)
                    emu.inject(Fault.close_after(50))  # replay
                    await r.call(audio)
                    emu.inject(Fault.error_after(50))
                    await r.call(audio)
                    emu.inject(Fault.stall(0))  # finalize budget
                    await r.call(audio)
                    await trio.sleep(1.6)  # tokens expire and are refreshed
                    await r.call(audio, speed="realtime")
                    for token in (None, "wrong"):  # rejected upgrades are logged too
                        try:
                            await RawClient.open(r.engine.twilio.port, token=token)  # type: ignore[arg-type]
                        except Rejected:
                            pass
                    bad = await simulate_call(r.url, audio, auth_token="wrong-token", speed="fast")
                    assert bad.rejected_status == 403
                    await r.emu.stop()
                    await r.emu.start()  # restart: old tokens unknown → 401 → refresh
                    await wait_until(lambda: r.engine.tokens.fetch_count >= 3, 10)
                    await r.call(audio)
                    issued = [t for e in r.emu.history if e.tokens is not None for t in e.tokens._expiry]
                    metrics_text = r.metrics.render()
                    assert r.metric("utterance_replays_total") >= 1
                    assert r.metric("events_dropped_total", "sink=webhook") >= 1
                outer.cancel_scope.cancel()
    finally:
        for handler in list(root.handlers):
            if getattr(handler, "_sori", False):
                root.removeHandler(handler)
        root.setLevel(old_level)
    logs = buf.getvalue()
    events = b"\n".join(encoded).decode()
    assert logs.count("\n") > 100  # the run was really logged at debug level
    assert len(issued) >= 3
    secrets = {"rtzr client secret": RTZR_SECRET, "twilio auth token": TWILIO_TOKEN, "webhook secret": WEBHOOK_SECRET}
    for i, token in enumerate(issued):
        secrets[f"access token {i}"] = token
        secrets[f"access token {i} signature"] = token.rsplit(".", 1)[1]
    for where, text in (("logs", logs), ("events", events), ("metrics", metrics_text)):
        leaked = [name for name, value in secrets.items() if value in text]
        assert not leaked, f"{where} contain {leaked}"

"""The whole engine writing JSON lines to a pipe whose reader stalled: calls and the webhook carry on,
and SIGTERM still ends the process within the drain and the sinks' flush deadline."""

from __future__ import annotations

import os
import signal

import trio

from engine.sinks import FLUSH_DEADLINE_S

from ..pipeline.test_sinks_jsonl import StalledPipe
from .rel_rig import rig, script, tally, wait_until
from .test_rel_sinks_shutdown import SlowHook


async def test_sigterm_ends_at_the_flush_deadline_with_jsonl_reader_stalled() -> None:
    pipe = StalledPipe(watchdog_s=40)  # the old blocking write in a thread hung here until the watchdog
    audio, texts = script("ate", "tonight")
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as outer:
                hook = SlowHook(delay=0)
                port = await outer.start(hook.serve)
                async with rig(f"sinks.jsonl=/dev/fd/{pipe.w}", f"sinks.webhook_url=http://127.0.0.1:{port}/hook",
                               handle_signals=True) as r:
                    report = await r.call(audio)
                    assert r.ledger.texts(report.stream_sid) == texts  # the call never noticed
                    emitted = r.metric("events_total")
                    await wait_until(lambda: r.metric("webhook_delivered_total") == emitted, 10)
                    t0 = trio.current_time()
                    os.kill(os.getpid(), signal.SIGTERM)
                    with trio.fail_after(FLUSH_DEADLINE_S + 5):  # no live call: the drain is immediate
                        await r.done.wait()
                    stopped_s = trio.current_time() - t0
                    dropped = r.metric("sink_events_dropped_total", "sink=jsonl", "reason=shutdown")
                    assert dropped == emitted  # not one line got through: every one counted
                    assert r.metric("events_dropped_total", "sink=webhook") == 0
                outer.cancel_scope.cancel()
        assert pipe.read_available() == b"\n" * pipe.filler
        tally("sigterm, jsonl reader stalled", events=emitted, webhook_delivered=emitted, jsonl_dropped_counted=dropped,
              stop_s=round(stopped_s, 2), flush_deadline_s=FLUSH_DEADLINE_S)
    finally:
        pipe.close()

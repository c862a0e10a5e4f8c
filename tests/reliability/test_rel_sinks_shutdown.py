"""Webhook sink down or slow (queue bound, drops counted and logged, calls unaffected) and graceful
shutdown under load (SIGTERM with live calls: every final up to the drain deadline delivered)."""

from __future__ import annotations

import logging
import os
import signal

import h11
import pytest
import trio

from engine.twilio.simulator import simulate_call, simulate_calls

from .rel_rig import DEMO_TEXTS, TWILIO_TOKEN, demo_call, fast_emulator, rig, script, tally, tally_account, wait_until


class SlowHook:
    """A local webhook receiver that answers 200 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as n:
            await n.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self.requests += 1
                    await trio.sleep(self.delay)
                    out = conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                    out += conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)


async def _refusing_port() -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    return port


@pytest.mark.parametrize("mode", ["down", "slow"])
async def test_webhook_down_or_slow_drops_are_bounded_counted_logged(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    queue, workers = 8, 2
    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            if mode == "slow":
                hook = SlowHook(delay=0.5)
                port = await outer.start(hook.serve)
            else:
                port = await _refusing_port()
            sets = (f"sinks.webhook_url=http://127.0.0.1:{port}/hook", f"sinks.webhook_queue={queue}",
                    "sinks.webhook_timeout_ms=300", "sinks.webhook_retries=1", "sinks.webhook_secret=s3cret-hook",
                    f"sinks.webhook_workers={workers}")
            peak = 0

            async with rig(*sets) as r:
                def sample(_event: object) -> None:
                    nonlocal peak
                    peak = max(peak, r.engine.sinks.webhook_queued())

                r.engine.sinks.on_event = _chain(r.engine.sinks.on_event, sample)
                reports = await simulate_calls(r.url, demo_call(), calls=3, auth_token=TWILIO_TOKEN, speed="fast",
                                               seed=50)
                for rep in reports:
                    assert rep.ok
                    await r.ledger.wait_ended([rep.stream_sid], 15)
                    assert r.ledger.texts(rep.stream_sid) == DEMO_TEXTS  # the calls never noticed
                assert not r.ledger.errors()
                assert peak <= queue
                m = r.metric
                emitted = m("events_total")
                delivered = m("webhook_delivered_total")
                dropped = m("events_dropped_total", "sink=webhook")
                queued = r.engine.sinks.webhook_queued()
                assert dropped > 0
                # at most one request in flight per lane
                assert delivered + dropped + queued <= emitted <= delivered + dropped + queued + workers
                if mode == "down":
                    assert delivered == 0
                tally(f"webhook {mode}", events=emitted, delivered=delivered, dropped_counted=dropped,
                      queue_peak=peak, queue_bound=queue, call_errors=len(r.ledger.errors()))
                outer.cancel_scope.cancel()
    assert any(rec.getMessage() == "event_dropped" for rec in caplog.records)


def _chain(first: object, second: object) -> object:
    def both(event: object) -> None:
        if first is not None:
            first(event)  # type: ignore[operator]
        second(event)  # type: ignore[operator]
    return both


async def _drain_under_load(calls: int, *, drain_ms: int, use_signal: bool) -> None:
    audio, texts = script("ate", "dunno", "tonight", gap_ms=500)
    # a leased socket carries one utterance from its first audio to its final: lockstep calls need one each
    sessions = calls + 10
    async with rig(f"budgets.drain={drain_ms}", f"rtzr.pool.max_sessions={sessions}", handle_signals=use_signal,
                   emulator=fast_emulator(max_sessions=sessions)) as r:
        await wait_until(lambda: r.engine.pool.idle_count >= 2, 5)
        reports: list = []
        shutdown_at = 0.0

        async def load() -> None:
            reports.extend(await simulate_calls(r.url, audio, calls=calls, auth_token=TWILIO_TOKEN, speed="realtime",
                                                stagger_ms=10, seed=300))

        async with trio.open_nursery() as n:
            n.start_soon(load)
            await wait_until(lambda: r.engine.supervisor.live_calls == calls, 10)
            await trio.sleep(0.8)
            shutdown_at = trio.current_time()
            if use_signal:
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                r.engine.shutdown()
            await wait_until(r.engine.supervisor.draining.is_set, 2)
            late = await simulate_call(r.url, audio, auth_token=TWILIO_TOKEN, speed="fast")
            assert late.rejected_status == 503  # no new calls while draining
        with trio.fail_after(drain_ms / 1000 + 5):
            await r.done.wait()
        deadline = shutdown_at + drain_ms / 1000
        assert trio.current_time() <= deadline + 3
        sids = [rep.stream_sid for rep in reports]
        acc = r.ledger.account()
        if drain_ms >= 10_000:  # the calls end on their own before the deadline: everything delivered
            assert all(rep.ok for rep in reports), [(rep.error, rep.close_code) for rep in reports if not rep.ok]
            for sid in sids:
                assert r.ledger.texts(sid) == texts
            assert (acc.started, acc.delivered) == (calls * len(texts), calls * len(texts)), acc
            assert r.metric("drain_cancelled_calls_total") == 0
        else:  # deadline mid-call: every utterance that ended in time is delivered, the rest reported
            assert r.metric("drain_cancelled_calls_total") == calls
            for sid in sids:
                assert r.ledger.texts(sid)[:1] == texts[:1]  # ended ≈1.3 s after start: long before the deadline
                assert r.ledger.ended(sid) is not None
            assert acc.lost == [], acc
        tally_account(f"shutdown: {calls} live calls, drain {drain_ms} ms", r.ledger)


async def test_sigterm_drains_20_live_calls() -> None:
    # The drain budget is a bound, not a pace: the calls end on their own after ~5 s of real-time audio, and
    # the drain returns as soon as they have; 40 s leaves room for a machine several times slower than ours
    # (at 15 s it failed with the engine, emulator and 20 simulated callers sharing ~20 % of a core).
    with trio.fail_after(90):
        await _drain_under_load(20, drain_ms=40_000, use_signal=True)


@pytest.mark.slow
async def test_sigterm_drains_50_live_calls_soak() -> None:
    with trio.fail_after(120):
        await _drain_under_load(50, drain_ms=20_000, use_signal=True)


async def test_drain_deadline_mid_call_reports_what_it_cuts() -> None:
    with trio.fail_after(60):
        await _drain_under_load(10, drain_ms=1200, use_signal=False)

"""Twilio-side faults: vanished sockets, bursts, lost/duplicate/reordered frames, a second socket for a
stream, and a connection flood beyond ``server.max_calls`` — each against the real engine."""

from __future__ import annotations

import pytest
import trio

from engine import events as ev
from engine.twilio.simulator import simulate_call, simulate_calls

from .rel_rig import TWILIO_TOKEN, phrase, quiet, rig, script, tally, tally_account, wait_until
from .rel_wire import RawClient, Wire, frames_of


async def _stream(client: RawClient, wire: Wire, frames: list[bytes], *, pace: float = 0.0) -> None:
    assert await client.send(wire.connected())
    assert await client.send(wire.start())
    for i, frame in enumerate(frames):
        assert await client.send(wire.media(i, frame))
        if pace:
            await trio.sleep(pace)


async def test_socket_dropped_without_stop_closes_open_utterance() -> None:
    """TCP vanishes mid-phrase: the call ends ('closed'), the open utterance is still transcribed."""
    with trio.fail_after(30):
        async with rig() as r:
            audio = quiet(300) + phrase("ate") + quiet(600) + phrase("thanks")[: int(len(phrase("thanks")) * 0.9)]
            wire = Wire(seed=1)
            client = await RawClient.open(r.engine.twilio.port)  # type: ignore[arg-type]
            await _stream(client, wire, frames_of(audio))
            await trio.sleep(0.2)
            await client.drop()
            await r.ledger.wait_ended([wire.stream_sid], 10)
            ended = r.ledger.ended(wire.stream_sid)
            assert ended is not None and ended.reason == "closed"
            assert r.ledger.texts(wire.stream_sid) == ["먹었어", "고마워요"]
            tally_account("twilio socket dropped without stop", r.ledger)
            assert r.ledger.account().lost == []
            await wait_until(lambda: r.engine.supervisor.live_calls == 0, 0.5)


@pytest.mark.parametrize("burst_frames", [50, 150])
async def test_burst_after_stall_loses_nothing(burst_frames: int) -> None:
    """Frames paced at 20 ms, then a stall, then ``burst_frames`` at once (50 = 1 s, 150 > reader queue)."""
    with trio.fail_after(40):
        async with rig() as r:
            audio, texts = script("ate", "dunno", "tonight", "thanks", gap_ms=600)
            frames = frames_of(audio)
            wire = Wire(seed=2)
            client = await RawClient.open(r.engine.twilio.port)  # type: ignore[arg-type]
            assert await client.send(wire.connected()) and await client.send(wire.start())
            stall_at = 20
            for i in range(stall_at):
                await client.send(wire.media(i, frames[i]))
                await trio.sleep(0.02)
            await trio.sleep(burst_frames * 0.02)  # the network held the frames back...
            burst = [wire.media(i, frames[i]) for i in range(stall_at, stall_at + burst_frames)]
            assert await client.send_all(burst) == burst_frames  # ...and delivers them at once
            for i in range(stall_at + burst_frames, len(frames)):
                await client.send(wire.media(i, frames[i]))
            await client.send(wire.stop(len(frames) + 2))
            await r.ledger.wait_ended([wire.stream_sid], 10)
            await client.close()
            ended = r.ledger.ended(wire.stream_sid)
            assert ended is not None and ended.reason == "stop"
            assert ended.frames_received == len(frames) and ended.frames_filled == 0
            assert r.ledger.texts(wire.stream_sid) == texts
            tally_account(f"twilio burst of {burst_frames} frames after a stall", r.ledger, frames=len(frames))


async def test_dropped_frames_are_filled_and_counted() -> None:
    with trio.fail_after(30):
        async with rig() as r:
            audio, texts = script("ate", "dunno", "okay")
            rep = await r.call(audio, drop_rate=0.03, seed=7)
            assert rep.frames_dropped > 3
            ended = r.ledger.ended(rep.stream_sid)
            assert ended is not None
            dropped = set(rep.dropped_frames)
            total = rep.frames_sent + rep.frames_dropped
            trailing = sum(1 for i in range(total - 1, -1, -1) if i in dropped and all(j in dropped for j in range(i, total)))
            assert ended.frames_filled == rep.frames_dropped - trailing  # every lost frame became silence
            assert ended.frames_received == rep.frames_sent
            acc = r.ledger.account(rep.stream_sid)
            assert acc.started == len(texts) and acc.lost == []
            assert r.ledger.texts(rep.stream_sid) == texts
            tally_account("twilio dropped frames (3%)", r.ledger, frames_dropped=rep.frames_dropped,
                          frames_filled=ended.frames_filled)


async def test_duplicate_and_reordered_frames_are_dropped_and_counted() -> None:
    with trio.fail_after(30):
        async with rig() as r:
            audio, texts = script("dunno", "tonight")
            frames = frames_of(audio)
            wire = Wire(seed=3)
            client = await RawClient.open(r.engine.twilio.port)  # type: ignore[arg-type]
            assert await client.send(wire.connected()) and await client.send(wire.start())
            dups = swaps = 0
            i = 0
            while i < len(frames):
                if i % 37 == 5 and i + 1 < len(frames):  # swap i and i+1
                    await client.send(wire.media(i + 1, frames[i + 1]))
                    await client.send(wire.media(i, frames[i]))
                    swaps += 1
                    i += 2
                    continue
                await client.send(wire.media(i, frames[i]))
                if i % 23 == 7:
                    await client.send(wire.media(i, frames[i]))
                    dups += 1
                i += 1
            await client.send(wire.stop(len(frames) + 2))
            await r.ledger.wait_ended([wire.stream_sid], 10)
            await client.close()
            ended = r.ledger.ended(wire.stream_sid)
            assert ended is not None and ended.reason == "stop"
            assert ended.frames_dropped == dups + swaps
            assert ended.frames_filled == swaps  # the late frame's slot was already filled with silence
            assert ended.frames_received == len(frames) - swaps
            acc = r.ledger.account(wire.stream_sid)
            assert acc.started == len(texts) and acc.lost == []
            assert r.ledger.texts(wire.stream_sid) == texts
            tally_account("twilio duplicate + reordered frames", r.ledger, duplicates=dups, swaps=swaps)


async def test_second_socket_for_same_stream_does_not_disturb_the_first() -> None:
    """A second socket claiming the first call's streamSid: the first call is served exactly as alone."""
    with trio.fail_after(30):
        async with rig() as r:
            audio, texts = script("ate", "dunno")
            port = r.engine.twilio.port
            first = Wire(seed=4)
            second = Wire(seed=5, stream_sid=first.stream_sid)
            a = await RawClient.open(port)  # type: ignore[arg-type]
            b = await RawClient.open(port)  # type: ignore[arg-type]
            frames = frames_of(audio)
            async with trio.open_nursery() as n:
                n.start_soon(lambda: _stream(a, first, frames, pace=0.002))
                n.start_soon(lambda: _stream(b, second, frames[: len(frames) // 2], pace=0.002))
            await b.drop()
            await a.send(first.stop(len(frames) + 2))
            await a.wait_closed(10)
            t0 = trio.current_time()
            await wait_until(lambda: r.engine.supervisor.live_calls == 0, 5)
            assert trio.current_time() - t0 < 0.5
            ours = [f for f in r.ledger.finals(first.stream_sid) if f.call_sid == first.call_sid]
            assert [f.text for f in ours] == texts
            # the later socket is told it is a duplicate, and the utterance ids of the two never collide
            dup = [e for e in r.ledger.errors(first.stream_sid) if e.kind == "duplicate_stream"]
            assert len(dup) == 1 and dup[0].call_sid in {first.call_sid, second.call_sid}  # whichever started second
            first_ids = {s.utterance_id for s in r.ledger.of(ev.SpeechStarted, first.stream_sid)
                         if s.call_sid == first.call_sid}
            second_ids = {s.utterance_id for s in r.ledger.of(ev.SpeechStarted, first.stream_sid)
                          if s.call_sid == second.call_sid}
            assert first_ids and not first_ids & second_ids
            assert r.metric("call_crashes_total") == 0
            assert r.metric("twilio_connection_failures_total") == 0
            # the engine keeps serving afterwards
            rep = await r.call(audio)
            assert r.ledger.texts(rep.stream_sid) == texts


async def _flood(flood: int) -> None:
    running_n, max_calls = 5, 12
    async with rig(f"server.max_calls={max_calls}") as r:
        audio, texts = script("ate", "dunno", "tonight", gap_ms=500)
        high = 0
        flood_reports: list = []

        async def running() -> list:
            return await simulate_calls(r.url, audio, calls=running_n, auth_token=TWILIO_TOKEN, speed="realtime",
                                        seed=100)

        async def watch() -> None:
            nonlocal high
            while True:
                high = max(high, r.engine.supervisor.live_calls)
                await trio.sleep(0.005)

        async def burst() -> None:
            await trio.sleep(0.8)  # the running calls are mid-speech
            flood_reports.extend(await simulate_calls(r.url, quiet(100), calls=flood, auth_token=TWILIO_TOKEN,
                                                      speed="fast", seed=1000, connect_timeout=30))

        results: list = []
        async with trio.open_nursery() as n:
            n.start_soon(watch)

            async def run_running() -> None:
                results.extend(await running())
            async with trio.open_nursery() as inner:
                inner.start_soon(run_running)
                inner.start_soon(burst)
            n.cancel_scope.cancel()
        assert all(rep.ok for rep in results), [rep.summary() for rep in results]
        for rep in results:
            await r.ledger.wait_ended([rep.stream_sid], 10)
            assert r.ledger.texts(rep.stream_sid) == texts
        assert not r.ledger.errors()
        statuses = {rep.rejected_status for rep in flood_reports if not rep.ok}
        assert statuses <= {503}, [rep.summary() for rep in flood_reports if not rep.ok and rep.rejected_status != 503]
        rejected = sum(rep.rejected_status == 503 for rep in flood_reports)
        assert rejected >= flood // 2  # most were turned away cleanly (accepted ones finish fast and free a slot)
        assert rejected + sum(rep.ok for rep in flood_reports) == flood
        assert r.metric("twilio_calls_rejected_total", "status=503") == rejected
        assert high <= max_calls
        tally(f"flood of {flood} calls beyond max_calls", rejected_503=rejected,
              accepted=sum(rep.ok for rep in flood_reports), other=flood - rejected - sum(rep.ok for rep in flood_reports),
              running_calls_intact=len(results))


async def test_connection_flood_beyond_max_calls() -> None:
    with trio.fail_after(90):
        await _flood(200)


@pytest.mark.slow
async def test_connection_flood_beyond_max_calls_soak() -> None:
    with trio.fail_after(300):
        await _flood(1000)


async def test_simulator_jitter_bursts_keep_timeline() -> None:
    """Realtime with 60 ms jitter per frame (frames bunch into bursts): text and frame counts exact."""
    with trio.fail_after(30):
        async with rig() as r:
            audio, texts = script("okay", "wait", gap_ms=500)
            rep = await simulate_call(r.url, audio, auth_token=TWILIO_TOKEN, speed="realtime", jitter_ms=60, seed=9)
            assert rep.ok
            await r.ledger.wait_ended([rep.stream_sid], 10)
            ended = r.ledger.ended(rep.stream_sid)
            assert ended is not None and ended.frames_filled == 0 and ended.frames_received == rep.frames_sent
            assert r.ledger.texts(rep.stream_sid) == texts

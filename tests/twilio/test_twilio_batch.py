"""Issue 13: the reactor classifies the frames of every call read in one wake-up in one batch (FrameBatch).

Real :class:`engine.call.Call` handlers behind the real server: each call's speech events are those its
own ``Endpointer.push`` gives for the same audio, frames did go through the batch, and a failure in one
call's batched work ends that call alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from engine import events as ev
from engine.audio import mulaw
from engine.budgets import Budgets
from engine.call import Call
from engine.config import Config
from engine.endpointing import Endpointer, SpeechEnded, SpeechStarted
from engine.endpointing.batch import FrameBatch
from engine.stt import SttUnavailable
from engine.twilio.server import CallHandler, TwilioSession, stream_started
from engine.twilio.simulator import frames_of, load_audio
from tests.twilio.test_twilio_protocol import connected, media, start, stop
from tests.twilio.test_twilio_server import raw_client, wait_for
from tests.twilio.twilio_support import make_config, running_server

DEMO = Path(__file__).resolve().parents[2] / "engine" / "demo" / "call.wav"
FRAMES = 200  # 4 s of the demo call: speech and pauses


class _NoStt:
    """Every lease fails at once: the utterance's outcome is an error; the speech events are what we test."""

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[object]:
        raise SttUnavailable("no STT in this test")
        yield None  # pragma: no cover


def _expected(cfg: Config, frames: list[bytes]) -> list[tuple[str, float]]:
    """The speech events of one call pushed frame by frame through its own Endpointer (no batch)."""
    ep = Endpointer(cfg.endpointing)
    out: list[tuple[str, float]] = []
    rate = cfg.endpointing.sample_rate
    for frame in frames:
        for e in ep.push(mulaw.decode(frame)):
            if isinstance(e, SpeechStarted):
                out.append(("started", e.start * 1000 / rate))
            elif isinstance(e, SpeechEnded):
                out.append(("ended", e.end * 1000 / rate))
    for e in ep.end():
        if isinstance(e, SpeechEnded):
            out.append(("ended", e.end * 1000 / rate))
    return out


async def _run_calls(n: int, cfg: Config, call_cls: type[Call] = Call
                     ) -> tuple[list[Call], dict[int, list[tuple[str, float]]], FrameBatch]:
    frames = frames_of(load_audio(str(DEMO)))[:FRAMES]
    calls: list[Call] = []
    seen: dict[int, list[tuple[str, float]]] = {}

    def factory(session: TwilioSession) -> CallHandler:
        i = int(session.custom_parameters["lang"])
        log = seen.setdefault(i, [])

        def emit(event: ev.Event) -> None:
            if isinstance(event, ev.SpeechStarted):
                log.append(("started", event.start_ms))
            elif isinstance(event, ev.SpeechEnded):
                log.append(("ended", event.end_ms))

        call = call_cls(stream_started(session.started), config=cfg, pool=_NoStt(), emit=emit,
                        metrics=srv.metrics, budgets=Budgets(cfg.budgets))
        calls.append(call)
        return call

    async with running_server(cfg, factory=factory) as srv:
        batch = srv.server._reactor.hook
        assert isinstance(batch, FrameBatch)
        async with trio.open_nursery() as nursery:
            go = trio.Event()

            async def client(i: int) -> None:
                async with raw_client(srv.port) as ws:
                    await ws.send_message(connected())
                    await ws.send_message(start().replace('"ko"', f'"{i}"'))
                    await go.wait()
                    for k, frame in enumerate(frames):
                        try:
                            await ws.send_message(media(k + 2, k + 1, k * 20, frame))
                        except Exception:
                            return  # the call was ended by the server (the failing one)
                        if k % 10 == 9:
                            await trio.sleep(0.001)  # let the others' frames share wake-ups
                    await ws.send_message(stop(FRAMES + 2))
                    await wait_for(lambda: len(calls) == n and all(c._closed_reason for c in calls), timeout=15)

            for i in range(n):
                nursery.start_soon(client, i)
            await wait_for(lambda: srv.server._reactor.registered == n)
            go.set()
    return calls, seen, batch


async def test_batched_calls_give_each_call_its_own_endpointer_events() -> None:
    cfg = make_config(server__allow_unsigned=True)
    expected = _expected(cfg, frames_of(load_audio(str(DEMO)))[:FRAMES])
    assert any(kind == "started" for kind, _ in expected)  # the demo speaks within these 4 s
    with trio.fail_after(30):
        calls, seen, batch = await _run_calls(6, cfg)
    assert batch.frames > 0 and batch.batches > 0 and batch.decoded > 0  # frames did go through the batch
    assert sorted(seen) == list(range(6))
    for i in range(6):
        assert seen[i] == expected, f"call {i}"
    assert all(c._closed_reason == "stop" for c in calls)


class _BrokenCall(Call):
    """A per-frame bug after the batch (in the call's decided frames), on one call only."""

    def batch_decided(self, decisions: list[bool]) -> None:
        if self.started.custom_parameters.get("lang") == "0" and self.stats.frames_received > 20:
            self.batch_frames = None  # as Call.batch_decided: the wait is taken before anything can raise
            raise RuntimeError("per-frame bug after the batch")
        super().batch_decided(decisions)

    def batch_packet(self, pcm: Any, speech: bool) -> None:  # the packet path (one frame per read): the same bug
        if self.started.custom_parameters.get("lang") == "0" and self.stats.frames_received > 20:
            self.batch_payload = None  # as Call.batch_packet
            raise RuntimeError("per-frame bug after the batch")
        super().batch_packet(pcm, speech)


async def test_a_failure_in_one_calls_batched_work_ends_that_call_alone() -> None:
    cfg = make_config(server__allow_unsigned=True)
    expected = _expected(cfg, frames_of(load_audio(str(DEMO)))[:FRAMES])
    with trio.fail_after(30):
        calls, seen, _batch = await _run_calls(4, cfg, _BrokenCall)
    by_id = {c.started.custom_parameters["lang"]: c for c in calls}
    assert by_id["0"]._closed_reason == "handler_error"
    for i in (1, 2, 3):
        assert by_id[str(i)]._closed_reason == "stop"
        assert seen[i] == expected



async def test_the_engines_own_call_handler_is_batched() -> None:
    """engine.app wraps each Call in a ControlledCall (playback, barge-in): the batch must reach the Call
    through it (before, the server found no attach_batch on the wrapper and every frame went alone)."""
    from tests.appchannel.support import make_config as engine_config
    from tests.appchannel.support import mulaw_of, phrase_pcm, running_engine, silence, twilio_peer

    with trio.fail_after(30):
        async with running_engine(engine_config()) as (engine, collector), trio.open_nursery() as nursery:
            batch = engine.twilio._reactor.hook
            assert isinstance(batch, FrameBatch)
            async with twilio_peer(engine, nursery) as peer:
                await peer.audio(silence(200))
                await peer.audio(mulaw_of(phrase_pcm()))
                await peer.audio(silence(1000))
                await collector.wait(lambda: collector.of(ev.SpeechEnded))
                assert batch.frames > 0 and batch.decoded > 0
                await peer.stop()
                await collector.wait(lambda: collector.of(ev.CallEnded))
            nursery.cancel_scope.cancel()

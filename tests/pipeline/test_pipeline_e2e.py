"""End to end on loopback: simulator → Twilio server → pipeline → pooled emulator sockets → events."""

from __future__ import annotations

import json
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from engine import events as ev
from engine.app import Engine, serve
from engine.audio import mulaw
from engine.config import Config, cli_overrides, load
from engine.rtzr.emulator import EmulatorConfig
from engine.rtzr.emulator.local import in_process
from engine.twilio.simulator import load_audio, simulate_call

DEMO = Path(__file__).resolve().parents[2] / "engine" / "demo"
LABELS = json.loads((DEMO / "call.json").read_text())["phrases"]
PHRASES = json.loads((DEMO / "phrases" / "phrases.json").read_text())
FRAME_MS = 20


def make_config(*assignments: str) -> Config:
    return load(environ={}, cli=cli_overrides([
        "server.port=0", "server.admin_port=0", "server.allow_unsigned=true", "sinks.jsonl=",
        "budgets.finalize=1500",
        # one utterance per demo phrase (its words are 90 ms apart; the default end_ms 80 makes each word a
        # continuation, tested in test_continuation_pipeline.py); these tests are about the pipeline
        "endpointing.end_ms=200", *assignments,
    ]))


class Collector:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.ended: dict[str, trio.Event] = {}

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)
        if isinstance(event, ev.CallEnded):
            self.ended.setdefault(event.call_sid, trio.Event()).set()

    def of(self, kind: type[Any], call_sid: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (call_sid is None or e.call_sid == call_sid)]

    async def wait_ended(self, count: int) -> None:
        while len(self.of(ev.CallEnded)) < count:
            await trio.sleep(0.01)


@asynccontextmanager
async def running_engine(config: Config, emulator: EmulatorConfig | None = None) -> AsyncIterator[tuple[Engine, Collector]]:
    collector = Collector()
    emu = emulator or EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=20, final_ms=60)
    async with trio.open_nursery() as nursery:
        engine: Engine = await nursery.start(
            lambda task_status: serve(config, on_event=collector, stt=in_process(emu), handle_signals=False,
                                      task_status=task_status))
        yield engine, collector
        engine.shutdown()
        engine.shutdown()


def phrase_call(ids: list[str], *, gap_ms: int = 900, lead_ms: int = 500) -> tuple[bytes, list[str]]:
    """A μ-law call made of phrase clips separated by silence, and its expected texts."""
    by_id = {p["id"]: p for p in PHRASES}
    parts = [np.zeros(lead_ms * 8, dtype=np.int16)]
    for pid in ids:
        with wave.open(str(DEMO / "phrases" / by_id[pid]["file"]), "rb") as w:
            parts.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16))
        parts.append(np.zeros(gap_ms * 8, dtype=np.int16))
    return mulaw.encode(np.concatenate(parts)), [by_id[pid]["text"] for pid in ids]


async def test_multi_utterance_call_yields_each_final_in_order_at_the_labelled_positions() -> None:
    audio = load_audio(str(DEMO / "call.wav"))
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, got):
            report = await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=1000)
            assert report.error is None
            await got.wait_ended(1)
    finals = got.of(ev.TranscriptFinal)
    assert [f.text for f in finals] == [p["text"] for p in LABELS]
    for final, label in zip(finals, LABELS, strict=True):
        assert abs(final.start_ms - label["start_ms"]) <= FRAME_MS
        assert abs(final.end_ms - label["end_ms"]) <= FRAME_MS
        assert final.latency is not None and final.source == "finalize"
        assert final.latency.endpoint_ms == pytest.approx(200, abs=FRAME_MS)
    assert finals[0].pool_hit is True and finals[0].latency is not None and finals[0].latency.lease_ms < 10
    started = got.of(ev.SpeechStarted)
    assert len(started) == 4 and [s.utterance_id for s in started] == [f.utterance_id for f in finals]
    turns = got.of(ev.TurnEnded)
    assert " ".join(t.text for t in turns) == " ".join(p["text"] for p in LABELS)
    ended = got.of(ev.CallEnded)[0]
    assert (ended.utterances, ended.finals, ended.errors, ended.reason) == (4, 4, 0, "stop")
    assert 0 < ended.audio_sent_s < 10.4  # only speech (pre-roll + speech + hangover) is sent, not silence
    assert isinstance(got.events[0], ev.CallStarted)


async def test_socket_killed_mid_utterance_is_replayed_on_a_fresh_socket() -> None:
    audio, texts = phrase_call(["diary"])
    emu = EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=10, final_ms=300, faults="session=1:close_after=100")
    with trio.fail_after(30):
        async with running_engine(make_config("rtzr.pool.spare=0"), emu) as (engine, got):
            await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=500)
            await got.wait_ended(1)
    finals = got.of(ev.TranscriptFinal)
    assert [f.text for f in finals] == texts
    assert finals[0].replayed is True
    assert got.of(ev.ErrorEvent) == []
    assert engine.metrics.value("utterance_replays_total") == 1


async def test_socket_dying_twice_becomes_an_error_event_naming_the_utterance() -> None:
    audio, _ = phrase_call(["diary"])
    emu = EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=10, final_ms=300,
                         faults="session=1-2:close_after=100")
    with trio.fail_after(30):
        async with running_engine(make_config("rtzr.pool.spare=0"), emu) as (engine, got):
            await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=500)
            await got.wait_ended(1)
    errors = got.of(ev.ErrorEvent)
    started = got.of(ev.SpeechStarted)
    assert got.of(ev.TranscriptFinal) == []
    assert len(errors) == 1 and errors[0].kind == "stt_failed"
    assert errors[0].utterance_id == started[0].utterance_id


async def test_stalled_emulator_yields_finalize_error_and_the_call_goes_on() -> None:
    audio, texts = phrase_call(["diary", "tonight", "ate"], gap_ms=1200)
    emu = EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=10, final_ms=60, faults="session=1:stall")
    with trio.fail_after(30):
        # finalize 3 s: the stall never answers, so any budget expires; the other two utterances' finals must
        # come within it on a loaded machine too (800 ms was ~8x their unloaded latency)
        async with running_engine(make_config("rtzr.pool.spare=1", "budgets.finalize=3000"), emu) as (engine, got):
            await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=500)
            await got.wait_ended(1)
    errors = got.of(ev.ErrorEvent)
    assert len(errors) == 1 and errors[0].budget == "finalize"
    final_ids = {f.utterance_id for f in got.of(ev.TranscriptFinal)}
    assert errors[0].utterance_id not in final_ids
    assert [f.text for f in got.of(ev.TranscriptFinal)] == texts[1:]  # the stalled one was the first
    assert got.of(ev.CallEnded)[0].errors == 1


async def test_twenty_concurrent_calls_each_get_exactly_their_own_transcripts() -> None:
    ids = [p["id"] for p in PHRASES]
    scripts = [[ids[(i + k) % len(ids)] for k in range(1 + i % 3)] for i in range(20)]
    emu = EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=10, final_ms=40, max_sessions=40)
    # 20 unpaced calls share 8 sockets: a lessee may wait for several utterances; the lease budget bounds that
    # wait generously so a slow, loaded machine (5 s failed at load 10 on 2 cores) does not fail the test.
    with trio.fail_after(120):
        async with running_engine(make_config("rtzr.pool.max_sessions=8", "rtzr.pool.spare=4",
                                              "budgets.lease=30000"), emu) as (engine, got):
            reports: dict[str, list[str]] = {}

            async def one(i: int) -> None:
                audio, texts = phrase_call(scripts[i], gap_ms=700 + 37 * i)
                report = await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=500,
                                             seed=i)
                assert report.error is None
                reports[report.call_sid] = texts

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
            await got.wait_ended(20)
    assert got.of(ev.ErrorEvent) == []
    for call_sid, texts in reports.items():
        assert [f.text for f in got.of(ev.TranscriptFinal, call_sid)] == texts
    # sockets were shared: far fewer sockets than utterances
    assert engine.emulator is not None
    assert engine.emulator.stats.sessions_opened <= 8 + 4  # type: ignore[attr-defined]


async def test_sigterm_during_a_call_drains_it_with_its_last_final_delivered() -> None:
    audio = load_audio(str(DEMO / "call.wav"))
    with trio.fail_after(40):
        collector = Collector()
        async with trio.open_nursery() as nursery:
            engine: Engine = await nursery.start(
                lambda task_status: serve(make_config("budgets.drain=20000"), on_event=collector, stt=in_process(),
                                          handle_signals=False, task_status=task_status))

            async def shutdown_mid_call() -> None:
                while len(collector.of(ev.SpeechStarted)) < 2:  # during the second utterance (a condition, not a clock)
                    await trio.sleep(0.01)
                engine.shutdown()

            nursery.start_soon(shutdown_mid_call)
            report = await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=500)
            assert report.error is None
            # a call that arrives while draining is refused
            late = await simulate_call(engine.twilio_url, audio[:1600], speed="fast")
            assert late.rejected_status == 503 or late.error is not None
        # serve() returned: the engine drained by itself once the call ended
    assert [f.text for f in collector.of(ev.TranscriptFinal)] == [p["text"] for p in LABELS]
    assert collector.of(ev.CallEnded)[0].reason == "stop"


async def test_rtzr_slower_than_real_time_overflows_the_buffer_instead_of_stalling_the_reader() -> None:
    audio, _ = phrase_call(["diary", "tonight"])
    emu = EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=1500, final_ms=60)
    config = make_config("rtzr.pool.spare=0", "call.audio_buffer_ms=200", "budgets.connect=5000",
                         "budgets.lease=5000")
    with trio.fail_after(30):
        async with running_engine(config, emu) as (engine, got):
            report = await simulate_call(engine.twilio_url, audio, speed="realtime", trailing_silence_ms=500)
            await got.wait_ended(1)
    assert report.error is None and report.close_reason == "stop"  # the reader kept up with Twilio
    overflow = [e for e in got.of(ev.ErrorEvent) if e.kind == "audio_buffer_overflow"]
    assert overflow and overflow[0].utterance_id is not None
    assert engine.metrics.value("call_audio_overflow_total") > 0


async def test_every_speech_started_is_answered_even_when_rtzr_hears_nothing() -> None:
    audio, _ = phrase_call(["diary", "tonight"])
    emu = EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=10, final_ms=60, faults="session=*:empty_text")
    with trio.fail_after(30):
        async with running_engine(make_config(), emu) as (engine, got):
            await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=500)
            await got.wait_ended(1)
    started = [s.utterance_id for s in got.of(ev.SpeechStarted)]
    finals = got.of(ev.TranscriptFinal)
    assert len(started) == 2
    assert sorted(f.utterance_id for f in finals) == sorted(started)
    assert all(f.text == "" for f in finals)
    assert got.of(ev.TurnEnded) == []  # nothing said, no turn


async def test_wrong_rtzr_credentials_become_error_events_not_crashed_calls() -> None:
    from engine.app import build
    from engine.rtzr.emulator import Emulator

    audio, _ = phrase_call(["diary"])
    collector = Collector()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            emulator = await nursery.start(Emulator(EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=10)).run)
            config = make_config(f"rtzr.api_base={emulator.api_base}", f"rtzr.ws_url={emulator.ws_url}",
                                 "rtzr.client_id=wrong", "rtzr.client_secret=wrong-secret")
            engine = build(config, on_event=collector, handle_signals=False)
            await nursery.start(engine.supervisor.run)
            report = await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=500)
            await collector.wait_ended(1)
            engine.shutdown()
            await trio.sleep(0)
            nursery.cancel_scope.cancel()
    assert report.close_reason == "stop"
    errors = collector.of(ev.ErrorEvent)
    assert len(errors) == 1 and errors[0].kind == "stt_failed" and "RtzrAuthError" in errors[0].message
    assert errors[0].utterance_id == collector.of(ev.SpeechStarted)[0].utterance_id
    assert collector.of(ev.CallEnded)[0].errors == 1

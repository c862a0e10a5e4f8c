"""Issue 12: a speech.ended event per utterance at the endpointer's decision; the call builds its
classifier with the configured frame_ms."""

from __future__ import annotations

import trio

from engine import events as ev
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config, EndpointingConfig
from engine.media import StreamStarted
from engine.metrics import Registry
from engine.twilio.simulator import simulate_call

from .test_pipeline_e2e import make_config, phrase_call, running_engine


async def test_speech_ended_per_utterance_at_the_decision_before_its_final() -> None:
    audio, texts = phrase_call(["diary", "tonight"], gap_ms=1200)
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, got):
            report = await simulate_call(engine.twilio_url, audio, speed="fast", trailing_silence_ms=1000)
            assert report.error is None
            await got.wait_ended(1)
    started = got.of(ev.SpeechStarted)
    ended = got.of(ev.SpeechEnded)
    finals = got.of(ev.TranscriptFinal)
    assert [f.text for f in finals] == texts
    assert [e.utterance_id for e in ended] == [s.utterance_id for s in started] == [f.utterance_id for f in finals]
    for s, e, f in zip(started, ended, finals, strict=True):
        assert e.reason == "silence"
        assert s.start_ms < e.last_speech_ms < e.end_ms
        assert e.end_ms - e.last_speech_ms == 200  # the hangover, end_ms at the defaults
        assert f.latency is not None and f.latency.endpoint_ms == e.end_ms - e.last_speech_ms
        # emitted at the decision: after its speech.started, before its final
        assert got.events.index(s) < got.events.index(e) < got.events.index(f)
    # on the wire: a tagged event that decodes back
    wire = ev.decode(ev.encode(ended[0]))
    assert isinstance(wire, ev.SpeechEnded) and wire.end_ms == ended[0].end_ms


async def test_speech_ended_at_end_of_stream_mid_utterance() -> None:
    audio, _ = phrase_call(["diary"], gap_ms=0)
    with trio.fail_after(30):
        async with running_engine(make_config()) as (engine, got):
            await simulate_call(engine.twilio_url, audio[: len(audio) // 2], speed="fast", trailing_silence_ms=0)
            await got.wait_ended(1)
    ended = got.of(ev.SpeechEnded)
    assert len(ended) == 1 and ended[0].reason == "end_of_stream"
    assert ended[0].utterance_id == got.of(ev.SpeechStarted)[0].utterance_id


async def test_call_builds_its_classifier_with_the_configured_frame_ms() -> None:
    """Defect: call.py built the classifier without frame_ms, so frame_ms=10 still ran 20 ms frames."""
    started = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                      provider="test")
    for frame_ms, samples in ((10, 80), (20, 160), (30, 240)):
        config = Config(endpointing=EndpointingConfig(frame_ms=frame_ms))
        call = Call(started, config=config, pool=None, emit=lambda e: None,  # type: ignore[arg-type]
                    metrics=Registry(), budgets=Budgets(BudgetsConfig()))
        assert call.endpointer.frame_samples == samples

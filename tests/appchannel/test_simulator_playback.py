"""``simulate-call`` hears the engine's playback in real time: segments, mark echo times, the recording."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from engine import events as ev
from engine.twilio import simulator
from engine.twilio.simulator import simulate_call
from tests.appchannel.support import make_config, mulaw_of, phrase_pcm, running_engine, silence


async def test_simulator_records_the_answer_and_echoes_marks_when_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    # One playback: any gap in it is the loaded host running dry (counted in underrun_ms, which the bounds below
    # allow), not a second playback. With the simulator's 100 ms segment gap, a loaded run split the answer
    # into two segments (seen: len(report.heard) == 2 with the test on core 0 beside 3 CPU burners).
    monkeypatch.setattr(simulator, "SEGMENT_GAP_S", 60.0)
    with trio.fail_after(30):
        async with running_engine(make_config("app_channel.enabled=false")) as (engine, collector):
            tone = (np.sin(np.arange(2400) / 4) * 8000).astype(np.int16)  # 300 ms
            answer_at: list[float] = []

            def answer(event: ev.Event) -> None:
                if isinstance(event, ev.SpeechEnded):
                    control = engine.control(event.stream_sid)
                    assert control is not None
                    control.play_nowait(tone, playback_id="answer")
                    answer_at.append(event.end_ms)

            collector.hook = answer
            caller = silence(300) + mulaw_of(phrase_pcm()) + silence(1500)
            report = await simulate_call(engine.twilio_url, caller, record=True)
            assert report.ok, report.error
            assert len(report.heard) == 1
            seg = report.heard[0]
            # 300 ms heard, plus the gaps if the loaded host let it run dry (sub-ms gaps are not counted as underruns)
            assert 0.3 - 0.001 <= seg["end_s"] - seg["start_s"] <= 0.3 + report.underrun_ms / 1000 + 0.02
            # heard after the endpoint decision (its audio had to arrive first), well before the call ended
            assert seg["start_s"] >= answer_at[0] / 1000
            [end_mark] = report.marks_heard
            # echoed when the audio had played (not at once, 0.3 s before); later only by a loaded loop's lag
            assert -0.001 <= end_mark["at_s"] - seg["end_s"] < 1.0
            # the recording is silence, then the answer at its place on the timeline (gaps where it ran dry)
            recorded = report.played_audio
            start = round(seg["start_s"] * 8000)
            assert set(recorded[:start - 2]) == {0xFF}
            # at its heard start (the report's times are rounded to 0.1 ms, a sample is 0.125 ms)
            assert abs(recorded.find(mulaw_of(tone)[:160], start - 8) - start) <= 1
            assert abs(len(recorded) - round(seg["end_s"] * 8000)) <= 8
            await collector.wait(lambda: collector.of(ev.PlaybackFinished))

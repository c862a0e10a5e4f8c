"""Issue 13: a call that plays nothing pays nothing per frame for playback.

The engine's Call reports audio to its CallControl only while speech may barge in (ControlledCall wires
the Call's listeners); marks and keys always reach the control, and barge-in still cuts a playing prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import trio

from engine import events as ev
from engine.media import MediaEvent
from engine.playback_driver import CallControl
from tests.appchannel.support import make_config, mulaw_of, phrase_pcm, running_engine, silence, twilio_peer

SID = "MZtest0001"


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Every media event CallControl.on_media_event runs for, by kind (the playback layer's per-frame logic)."""
    kinds: Counter[str] = Counter()
    original = CallControl.on_media_event

    def counting(self: CallControl, event: MediaEvent) -> None:
        kinds[type(event).__name__] += 1
        original(self, event)

    monkeypatch.setattr(CallControl, "on_media_event", counting)
    yield kinds


async def test_an_idle_call_runs_no_playback_logic_per_frame(seen: Counter[str]) -> None:
    with trio.fail_after(30):
        async with running_engine(make_config()) as (_engine, collector), trio.open_nursery() as nursery:
            async with twilio_peer(engine := _engine, nursery) as peer:
                await peer.audio(silence(1000))  # 50 frames, nothing playing
                await peer.dtmf("5")  # after the audio on the same socket: handled after every frame
                await collector.wait(lambda: collector.of(ev.Dtmf))
                assert collector.of(ev.Dtmf)[0].digit == "5"
                assert seen["AudioReceived"] == 0 and seen["DtmfReceived"] == 1
                control = engine.control(SID)
                assert control is not None and control.position_ms() == 1000.0  # read from the call, on demand
                await peer.stop()
                await collector.wait(lambda: collector.of(ev.CallEnded))
            nursery.cancel_scope.cancel()


async def test_speech_over_a_prompt_still_barges_in_then_the_call_is_idle_again(seen: Counter[str]) -> None:
    with trio.fail_after(30):
        config = make_config("playback.barge_in_min_speech_ms=400")  # checked on the frames after speech starts
        async with running_engine(config) as (engine, collector), trio.open_nursery() as nursery:
            async with twilio_peer(engine, nursery) as peer:
                await peer.audio(silence(200))
                await collector.wait(lambda: collector.of(ev.CallStarted))
                control = engine.control(SID)
                assert control is not None
                pid = await control.play(b"\x00" * 8000 * 60)  # a minute of prompt: still playing when cut
                await peer.audio(mulaw_of(phrase_pcm()))
                await peer.audio(silence(1000))
                await collector.wait(lambda: collector.of(ev.PlaybackInterrupted))
                [cut] = collector.of(ev.PlaybackInterrupted)
                assert cut.playback_id == pid and cut.reason == "barge_in"
                [started] = collector.of(ev.SpeechStarted)
                assert control.position_ms() >= started.start_ms + 400
                # The frames of speech over the prompt went through the barge-in check, until it cut.
                during = seen["AudioReceived"]
                assert during > 0
                await collector.wait(lambda: collector.of(ev.SpeechEnded))
                await peer.audio(silence(400))
                await peer.dtmf("1")
                await collector.wait(lambda: collector.of(ev.Dtmf))
                assert seen["AudioReceived"] == during  # nothing plays and no speech may barge in: idle again
                await peer.stop()
                await collector.wait(lambda: collector.of(ev.CallEnded))
            nursery.cancel_scope.cancel()

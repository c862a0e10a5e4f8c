"""CallControl without sockets, on a MockClock: pacing to the session, barge-in at several timings, stop."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine import events as ev
from engine.config import PlaybackConfig
from engine.media import AudioReceived, DtmfReceived, MarkReached
from engine.metrics import Registry
from engine.playback import PlaybackError
from engine.playback_driver import CallControl, to_mulaw8k

SID, CID = "MZb", "CAb"


class FakeSession:
    """Twilio's socket as the control sees it: records what was sent, and when."""

    stream_sid = SID
    call_sid = CID

    def __init__(self) -> None:
        self.sent: list[tuple[float, str, object]] = []
        self.ended: str | None = None

    async def send_media(self, audio: bytes) -> bool:
        self.sent.append((trio.current_time(), "media", len(audio)))
        await trio.lowlevel.checkpoint()
        return True

    async def send_mark(self, name: str) -> bool:
        self.sent.append((trio.current_time(), "mark", name))
        return True

    async def clear(self) -> bool:
        self.sent.append((trio.current_time(), "clear", None))
        return True

    def end(self, reason: str) -> None:
        self.ended = reason


def make(**cfg: object) -> tuple[CallControl, FakeSession, list[ev.Event]]:
    session = FakeSession()
    events: list[ev.Event] = []
    control = CallControl(session, PlaybackConfig(**cfg), events.append, Registry())  # type: ignore[arg-type]
    return control, session, events


def media_until(control: CallControl, start_ms: int, end_ms: int) -> None:
    for pos in range(start_ms, end_ms, 20):
        control.on_media_event(AudioReceived(b"\xff" * 160, float(pos)))


def speech(uid: str, start_ms: float) -> ev.SpeechStarted:
    return ev.SpeechStarted(call_sid=CID, stream_sid=SID, utterance_id=uid, start_ms=start_ms)


def interrupted(events: list[ev.Event]) -> list[ev.PlaybackInterrupted]:
    return [e for e in events if isinstance(e, ev.PlaybackInterrupted)]


@pytest.mark.parametrize("min_speech_ms", [0, 100, 300])
async def test_barge_in_after_the_minimum_speech(autojump_clock: trio.testing.MockClock, min_speech_ms: int) -> None:
    control, session, events = make(barge_in_min_speech_ms=min_speech_ms, lead_ms=60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        media_until(control, 0, 1000)
        control.play_nowait(b"\x00" * 8000 * 5, playback_id="prompt")  # 5 s
        await trio.sleep(1.0)  # one second of it has played
        control.on_engine_event(speech("u0", 1000.0))  # the caller speaks, confirmed at 1000 ms
        media_until(control, 1000, 980 + min_speech_ms)  # audio up to 20 ms short of the minimum
        assert interrupted(events) == [] or min_speech_ms == 0
        media_until(control, 980 + min_speech_ms, 1000 + min_speech_ms)
        [cut] = interrupted(events)
        assert cut.reason == "barge_in" and cut.playback_id == "prompt"
        assert cut.played_ms == pytest.approx(1000, abs=1)
        while "clear" not in [kind for _, kind, _ in session.sent]:  # the control's task sends it
            await trio.sleep(0.001)
        sent_before_clear = sum(n for _, kind, n in session.sent if kind == "media")
        await trio.sleep(1.0)
        assert sum(n for _, kind, n in session.sent if kind == "media") == sent_before_clear  # nothing after
        # never more than the lead (60 ms) ahead of what had played at the clear
        assert sent_before_clear <= (1000 + 60) * 8
        control.close()


async def test_speech_that_ends_before_the_minimum_does_not_barge_in(autojump_clock: trio.testing.MockClock) -> None:
    control, _, events = make(barge_in_min_speech_ms=300)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        control.play_nowait(b"\x00" * 8000 * 2)
        await trio.sleep(0.2)
        control.on_engine_event(speech("u0", 0.0))
        media_until(control, 0, 200)
        control.on_engine_event(ev.SpeechEnded(call_sid=CID, stream_sid=SID, utterance_id="u0", last_speech_ms=120,
                                               end_ms=200, reason="silence"))
        media_until(control, 200, 800)
        assert interrupted(events) == []
        control.close()
    assert [e.reason for e in interrupted(events)] == ["call_ended"]


async def test_no_barge_in_when_off_or_silent_or_speech_began_first(autojump_clock: trio.testing.MockClock) -> None:
    for cfg, speech_first in (({"barge_in": False}, False), ({}, True)):
        control, session, events = make(**cfg)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.run)
            if speech_first:  # an answer queued while the caller is still talking is not interrupted by them
                control.on_engine_event(speech("u0", 0.0))
            control.play_nowait(b"\x00" * 1600)
            await trio.sleep(0.05)
            if not speech_first:
                control.on_engine_event(speech("u0", 0.0))
            media_until(control, 0, 400)
            assert interrupted(events) == []
            control.close()
    # nothing playing: speech is just speech
    control, session, events = make()
    control.on_engine_event(speech("u1", 0.0))
    media_until(control, 0, 100)
    assert events == [] and session.sent == []


async def test_paced_sends_and_finished_on_echo(autojump_clock: trio.testing.MockClock) -> None:
    control, session, events = make(lead_ms=60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        t0 = trio.current_time()
        pid = await control.play(b"\x00" * 1600)  # 200 ms
        await control.mark("end")
        await trio.sleep(1)
        media = [t - t0 for t, kind, _ in session.sent if kind == "media"]
        assert len(media) == 10
        assert media[:3] == pytest.approx([0, 0, 0]) and media[3:] == pytest.approx([0.02 * i for i in range(1, 8)])
        names = [n for _, kind, n in session.sent if kind == "mark"]
        for name in names:
            control.on_media_event(MarkReached(str(name)))
        control.on_media_event(DtmfReceived("#"))
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["PlaybackStarted", "PlaybackFinished", "MarkReached", "Dtmf"]
        assert events[1].playback_id == pid  # type: ignore[attr-defined]
        await control.stop()
        while session.ended is None:
            await trio.sleep(0.001)
        assert session.ended == "app_stop"
        with pytest.raises(PlaybackError):
            control.play_nowait(b"\x00" * 160)
        control.close()


def test_audio_conversion() -> None:
    import numpy as np

    assert to_mulaw8k(b"\x01\x02") == b"\x01\x02"
    pcm = (np.sin(np.arange(4800) / 3) * 1000).astype("<i2")  # 100 ms at 48 kHz
    assert len(to_mulaw8k(pcm.tobytes(), "pcm16", 48000)) == 800
    assert len(to_mulaw8k(pcm[:800].astype(np.int16))) == 800  # an int16 array is PCM at 8 kHz
    for bad in ((b"\x00", "pcm16", 8000), (b"\x00\x00", "pcm16", 1000), (b"\x00", "mulaw", 16000)):
        with pytest.raises(PlaybackError):
            to_mulaw8k(*bad)  # type: ignore[arg-type]


async def test_close_while_a_send_is_in_flight_ends_the_task(autojump_clock: trio.testing.MockClock) -> None:
    """Defect: close() during a send left the task waiting on a fresh wake-up event forever."""
    control, session, _ = make()
    gate = trio.Event()

    async def slow_send(audio: bytes) -> bool:
        await gate.wait()
        return True

    session.send_media = slow_send  # type: ignore[method-assign]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.run)
            control.play_nowait(b"\x00" * 1600)
            await trio.sleep(0.01)  # the task is inside the send
            control.close()
            gate.set()

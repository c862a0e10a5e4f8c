"""In-process server + simulator: several concurrent calls, every sample arrives in order."""

from __future__ import annotations

import numpy as np
import trio

from engine.audio import mulaw
from engine.twilio.protocol import FRAME_BYTES, Started
from engine.twilio.simulator import frames_of, simulate_calls
from tests.twilio.twilio_support import TOKEN, running_server


def _speech(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pcm = (rng.standard_normal(int(8000 * seconds)) * 3000).astype(np.int16)
    return mulaw.encode(pcm)


def _expected(audio: bytes, dropped: list[int]) -> np.ndarray:
    frames = frames_of(audio)
    for i in dropped:
        frames[i] = b"\xff" * FRAME_BYTES
    return mulaw.decode(b"".join(frames))


async def test_concurrent_calls_deliver_every_sample_in_order() -> None:
    audio = _speech(1.0, 1)  # 50 frames
    with trio.fail_after(30):
        async with running_server() as srv:
            reports = await simulate_calls(srv.url, audio, calls=5, auth_token=TOKEN, speed="fast", seed=7,
                                           custom_parameters={"lang": "ko"})
            with trio.fail_after(5):
                while len(srv.handlers) < 5 or not all(h.close_reasons for h in srv.handlers):
                    await trio.sleep(0.01)
    assert [r.ok for r in reports] == [True] * 5, [r.summary() for r in reports]
    assert all(r.close_code == 1000 for r in reports)
    by_sid = {h.session.stream_sid: h for h in srv.handlers}
    assert set(by_sid) == {r.stream_sid for r in reports}
    for report in reports:
        handler = by_sid[report.stream_sid]
        assert handler.close_reasons == ["stop"]
        assert handler.saw_stop and handler.run_returned
        assert handler.session.custom_parameters == {"lang": "ko"}
        assert handler.session.call_sid == report.call_sid
        assert handler.samples == len(audio)
        np.testing.assert_array_equal(handler.audio(), mulaw.decode(audio))
        assert not any(isinstance(e, Started) for e in handler.events)
    assert srv.metrics.value("twilio_calls_accepted_total") == 5
    assert srv.metrics.value("twilio_frames_total") == 5 * 50


async def test_realtime_calls_with_jitter_and_drops_keep_the_timeline() -> None:
    audio = _speech(0.6, 2)  # 30 frames
    with trio.fail_after(30):
        async with running_server() as srv:
            reports = await simulate_calls(srv.url, audio, calls=3, auth_token=TOKEN, speed="realtime",
                                           jitter_ms=60, drop_rate=0.2, seed=11)
            with trio.fail_after(5):
                while len(srv.handlers) < 3 or not all(h.close_reasons for h in srv.handlers):
                    await trio.sleep(0.01)
    by_sid = {h.session.stream_sid: h for h in srv.handlers}
    assert sum(r.frames_dropped for r in reports) > 0
    for report in reports:
        assert report.ok, report.summary()
        handler = by_sid[report.stream_sid]
        dropped = report.dropped_frames
        expected = _expected(audio, dropped)
        # Frames dropped at the very end are never seen: nothing follows them to reveal the gap.
        tail = 0
        while dropped and dropped[-1] == len(frames_of(audio)) - 1 - tail:
            dropped = dropped[:-1]
            tail += 1
        expected = expected[: len(expected) - tail * FRAME_BYTES]
        np.testing.assert_array_equal(handler.audio(), expected)
        inner = len(dropped)
        assert handler.filled_bytes == inner * FRAME_BYTES
        assert report.duration_s >= 0.55  # real time: 30 frames of 20 ms

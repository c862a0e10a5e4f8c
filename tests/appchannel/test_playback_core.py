"""The sans-IO playback core: pacing, marks, finished/interrupted accounting."""

from __future__ import annotations

import pytest

from engine.playback import (
    FRAME_BYTES,
    Finished,
    Interrupted,
    MarkReached,
    PlaybackCore,
    PlaybackError,
    SendClear,
    SendMark,
    SendMedia,
    Started,
)


def audio(ms: int) -> bytes:
    return bytes(range(256))[:1] * (ms * 8)


def run_until(core: PlaybackCore, until: float, step: float = 0.001) -> tuple[list, list, list[float]]:
    """Poll at every due time up to ``until``; returns outputs, notices and the send time of each frame."""
    outputs: list = []
    notices: list = []
    frame_times: list[float] = []
    now = 0.0
    while now <= until + 1e-9:
        outs, notes = core.poll(now)
        for out in outs:
            if isinstance(out, SendMedia):
                frame_times.extend([now] * (len(out.payload) // FRAME_BYTES))
        outputs += outs
        notices += notes
        due = core.next_due(now)
        if due is None:
            break
        now = max(due, now + step) if due <= now else due
    return outputs, notices, frame_times


def test_first_frames_go_at_once_then_one_per_20ms_within_the_lead() -> None:
    core = PlaybackCore(lead_ms=60)
    core.play(audio(200), "a")
    outputs, notices, times = run_until(core, 1.0)
    assert len(times) == 10
    assert times[:3] == [0.0, 0.0, 0.0]  # the lead: 60 ms at once
    for i, t in enumerate(times[3:], start=3):  # then each frame 60 ms before it plays
        assert t == pytest.approx((i - 2) * 0.02)
    assert notices == [Started("a", 200.0)]
    assert isinstance(outputs[-1], SendMark)  # the end-of-playback mark follows the last frame


def test_never_more_than_the_lead_ahead_of_real_time() -> None:
    core = PlaybackCore(lead_ms=100)
    core.play(audio(2000))
    _, _, times = run_until(core, 3.0)
    for i, t in enumerate(times):
        # frame i plays from i*20 ms; it is sent no earlier than lead before that
        assert i * 0.02 - t <= 0.100 + 1e-9
        assert t <= i * 0.02 + 1e-9


def test_audio_padded_to_whole_frames_with_silence() -> None:
    core = PlaybackCore()
    core.play(b"\x01" * 170)
    outs, _ = core.poll(0.0)
    media = b"".join(o.payload for o in outs if isinstance(o, SendMedia))
    assert media == b"\x01" * 170 + b"\xff" * 150


def test_finished_when_twilio_echoes_the_end_mark_and_app_marks_in_order() -> None:
    core = PlaybackCore(lead_ms=60)
    core.play(audio(40), "a")
    core.mark("after-a")
    core.play(audio(40), "b")
    outputs, notices, _ = run_until(core, 0.5)
    marks = [o.name for o in outputs if isinstance(o, SendMark)]
    assert len(marks) == 3 and len(set(marks)) == 3 and all(m.startswith("sori-") for m in marks)
    assert notices == [Started("a", 40.0), Started("b", 40.0)]
    assert core.on_mark_echo(marks[0]) == [Finished("a", 40.0)]
    assert core.on_mark_echo(marks[1]) == [MarkReached("after-a", cleared=False)]
    assert core.active
    assert core.on_mark_echo(marks[2]) == [Finished("b", 40.0)]
    assert not core.active
    assert core.on_mark_echo("sori-99") == [] and core.stale_echoes == 1


def test_mark_alone_is_sent_at_once() -> None:
    core = PlaybackCore()
    core.mark("m")
    assert core.next_due(5.0) == 5.0
    outs, _ = core.poll(5.0)
    assert len(outs) == 1 and isinstance(outs[0], SendMark)


@pytest.mark.parametrize("at", [0.0, 0.03, 0.1, 0.25])
def test_clear_reports_played_ms_from_the_pacing_clock(at: float) -> None:
    core = PlaybackCore(lead_ms=60)
    core.play(audio(200), "a")
    core.mark("m1")
    core.play(audio(100), "b")
    run_until(core, at)
    outputs, notices = core.clear(at)
    assert outputs == [SendClear()]
    interrupted = {n.playback_id: n for n in notices if isinstance(n, Interrupted)}
    assert interrupted["a"].played_ms == pytest.approx(min(200, at * 1000), abs=0.2)
    assert interrupted["a"].reason == "clear"
    assert interrupted["b"].played_ms == pytest.approx(max(0.0, min(100, at * 1000 - 200)), abs=0.2)
    assert [n for n in notices if isinstance(n, MarkReached)] == [MarkReached("m1", cleared=True)]
    assert not core.active
    # Twilio echoes the pending marks after a clear: they are stale, nothing is reported twice
    sent = [o.name for o in run_until(core, 0)[0] if isinstance(o, SendMark)]
    assert sent == []


def test_after_clear_the_next_play_starts_at_once() -> None:
    core = PlaybackCore(lead_ms=60)
    core.play(audio(1000))
    run_until(core, 0.1)
    core.clear(0.1)
    core.play(audio(100), "next")
    assert core.next_due(0.1) == pytest.approx(0.1)
    outs, notices = core.poll(0.1)
    assert sum(len(o.payload) for o in outs if isinstance(o, SendMedia)) == 3 * FRAME_BYTES
    assert notices == [Started("next", 100.0)]


def test_clear_with_nothing_playing_sends_nothing() -> None:
    assert PlaybackCore().clear(0.0) == ([], [])


def test_refusals() -> None:
    core = PlaybackCore(max_queued_ms=1000)
    with pytest.raises(PlaybackError) as empty:
        core.play(b"")
    assert empty.value.code == "empty_audio"
    core.play(audio(600), "x")
    with pytest.raises(PlaybackError) as dup:
        core.play(audio(20), "x")
    assert dup.value.code == "duplicate_id"
    with pytest.raises(PlaybackError) as full:
        core.play(audio(600))
    assert full.value.code == "queue_full"
    with pytest.raises(PlaybackError):
        core.mark("")


def test_call_end_interrupts_without_a_clear_on_the_wire() -> None:
    core = PlaybackCore()
    core.play(audio(100), "a")
    core.poll(0.0)
    outputs, notices = core.clear(0.01, "call_ended", send=False)
    assert outputs == []
    assert notices == [Interrupted("a", 10.0, 100.0, "call_ended")]

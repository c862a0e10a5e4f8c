"""Continuations (issue 12 decision policy): a short end, then speech again within merge_ms.

The endpointer ends an utterance after end_ms of silence (fast Finalize); speech confirmed again with
its run starting no more than merge_ms after that utterance's last speech frame is a new utterance
whose SpeechStarted says ``continues=True`` and whose pre-roll is the whole gap (no audio lost).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import EndpointingConfig
from engine.endpointing import Endpointer, SpeechEnded, SpeechStarted

from .helpers import check, key, run, utterances
from .signals import concat, silence, speechlike

RATES = [8000, 16000]


def ms(rate: int, v: int) -> int:
    return v * rate // 1000


def two_parts(rate: int, pause_ms: int, lead_ms: int = 600) -> np.ndarray:
    """Speech (500 ms), a pause, speech (500 ms), 1 s of silence; the first part ends on the frame grid."""
    return concat(silence(ms(rate, lead_ms)), speechlike(ms(rate, 500), rate, seed=1), silence(ms(rate, pause_ms)),
                  speechlike(ms(rate, 500), rate, seed=2), silence(ms(rate, 1000)))


# (pause ms, merge_ms, expected: the second utterance continues the first)
TABLE = [
    (150, 300, True),
    (290, 300, True),
    (400, 300, False),
    (150, 0, False),  # merge_ms = 0: continuations off
    (500, 600, True),  # the default window
    (700, 600, False),
]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(("pause_ms", "merge_ms", "continues"), TABLE)
def test_pause_within_merge_ms_is_a_continuation(rate: int, pause_ms: int, merge_ms: int, continues: bool) -> None:
    cfg = EndpointingConfig(end_ms=80, merge_ms=merge_ms, sample_rate=rate)  # type: ignore[arg-type]
    sig = two_parts(rate, pause_ms)
    r = run(cfg, sig, [ms(rate, 20)], sample_rate=rate)
    found = check(cfg, rate, sig, r)
    assert len(found) == 2, "the short end (80 ms) must end the first part: the final comes fast"
    first, second = found
    assert first.reason == "silence" and not first.continues
    assert second.continues is continues
    if continues:
        # contiguous: the second utterance's pre-roll starts where the first one's audio ended
        assert second.preroll_start == first.end
    else:
        assert second.preroll_start == max(second.start - ms(rate, cfg.preroll_ms), first.end)
    started = [e for e in r.events if isinstance(e, SpeechStarted)]
    assert [s.continues for s in started] == [False, continues]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("pause_ms", [150, 290, 400])
def test_chunking_does_not_change_continuations(rate: int, pause_ms: int) -> None:
    cfg = EndpointingConfig(end_ms=80, merge_ms=300, sample_rate=rate)  # type: ignore[arg-type]
    sig = two_parts(rate, pause_ms, lead_ms=613)  # off the frame grid
    ref = run(cfg, sig, [ms(rate, 20)], sample_rate=rate)
    check(cfg, rate, sig, ref)
    for chunks in ([1], [7, 160, 4093], [ms(rate, 20) + 1], [len(sig)]):
        other = run(cfg, sig, chunks, sample_rate=rate)
        check(cfg, rate, sig, other)
        assert [key(e) for e in other.events] == [key(e) for e in ref.events]


@pytest.mark.parametrize("rate", RATES)
def test_continuation_pre_roll_covers_the_gap_even_with_a_short_preroll(rate: int) -> None:
    """No audio between an utterance and its continuation is lost, whatever preroll_ms is."""
    cfg = EndpointingConfig(end_ms=80, merge_ms=600, preroll_ms=0, sample_rate=rate)  # type: ignore[arg-type]
    sig = two_parts(rate, 450)
    r = run(cfg, sig, [ms(rate, 20)], sample_rate=rate)
    found = check(cfg, rate, sig, r)
    assert len(found) == 2 and found[1].continues
    assert found[1].preroll_start == found[0].end
    (s1, a1, _e1), (s2, a2, e2) = utterances(r.events)
    both = np.concatenate([s1.preroll, *(a.pcm for a in a1), s2.preroll, *(a.pcm for a in a2)])
    assert np.array_equal(both, sig[s1.preroll_start : e2.end])


@pytest.mark.parametrize("rate", RATES)
def test_max_length_pieces_continue_each_other(rate: int) -> None:
    cfg = EndpointingConfig(max_utterance_ms=1000, sample_rate=rate)  # type: ignore[arg-type]
    sig = concat(silence(ms(rate, 300)), speechlike(ms(rate, 2500), rate), silence(ms(rate, 600)))
    r = run(cfg, sig, [ms(rate, 20)], sample_rate=rate)
    found = check(cfg, rate, sig, r)
    assert [u.reason for u in found[:2]] == ["max_length"] * 2
    assert [u.continues for u in found] == [False] + [True] * (len(found) - 1)


@pytest.mark.parametrize("rate", RATES)
def test_continuation_possible_tracks_the_window(rate: int) -> None:
    """True from the end of an utterance until a run starting at the next frame would begin more than
    merge_ms after its last speech frame; False in speech, before any utterance, and with merge_ms 0."""
    frame = ms(rate, 20)
    for merge_ms in (300, 0):
        cfg = EndpointingConfig(end_ms=80, merge_ms=merge_ms, sample_rate=rate)  # type: ignore[arg-type]
        ep = Endpointer(cfg)
        sig = concat(silence(ms(rate, 600)), speechlike(ms(rate, 500), rate), silence(ms(rate, 1000)))
        seen: list[tuple[int, bool, bool]] = []
        last: int | None = None
        for i in range(0, len(sig), frame):
            for e in ep.push(sig[i : i + frame]):
                if isinstance(e, SpeechEnded):
                    last = e.last_speech_end
            seen.append((ep.position, ep.in_speech, ep.continuation_possible))
        assert last is not None
        for pos, in_speech, possible in seen:
            expected = merge_ms > 0 and not in_speech and pos > last and pos - last <= ms(rate, merge_ms)
            assert possible is expected, (pos, last, merge_ms)
        assert any(p for _, _, p in seen) is (merge_ms > 0)


@pytest.mark.parametrize("rate", RATES)
def test_a_run_under_way_keeps_the_continuation_possible(rate: int) -> None:
    """A run of speech frames that began inside the window keeps continuation_possible True until it is
    confirmed (as a continuation) or broken, even after the window has passed."""
    frame = ms(rate, 20)
    cfg = EndpointingConfig(end_ms=80, merge_ms=300, start_ms=200, sample_rate=rate)  # type: ignore[arg-type]
    ep = Endpointer(cfg)
    first = concat(silence(ms(rate, 600)), speechlike(ms(rate, 500), rate), silence(ms(rate, 280)))
    for i in range(0, len(first), frame):
        ep.push(first[i : i + frame])
    assert not ep.in_speech and ep.continuation_possible
    resumed = speechlike(ms(rate, 500), rate, seed=3)
    events = []
    for i in range(0, len(resumed), frame):
        events += ep.push(resumed[i : i + frame])
        if not ep.in_speech:
            assert ep.continuation_possible  # 300 ms window passed, but the run began inside it
    started = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(started) == 1 and started[0].continues


def test_defaults_are_the_short_end_and_the_continuation_window() -> None:
    cfg = EndpointingConfig()
    assert (cfg.end_ms, cfg.merge_ms) == (80, 600)
    assert cfg.merge_ms <= cfg.turn_ms  # a continuation never outlives the turn it joins

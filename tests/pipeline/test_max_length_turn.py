"""Issue 13 round 6: speech longer than ``endpointing.max_utterance_ms`` (a talker who never pauses, or a
babble line the endpointer cannot end) is cut into pieces, and the application still sees one turn.

The default cut is 15 s (docs/architecture.md, "max_utterance_ms"): an utterance ends there with
``speech.ended`` reason ``max_length`` and its final comes at once; the speech going on is a new utterance
that starts exactly at the cut (no audio lost) and ``continues`` the cut one, so the turn layer keeps the
turn open and ``turn.ended`` joins every piece's final, as it joins a short-pause continuation.
"""

from __future__ import annotations

import numpy as np
import trio
import trio.testing

from engine import events as ev
from engine.audio import mulaw
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config, EndpointingConfig
from engine.endpointing.batch import FrameBatch
from engine.media import AudioReceived
from engine.metrics import Registry

from ..endpointing.signals import concat, silence, speechlike
from .test_one_outcome import assert_one_outcome_each
from .test_speaking_path import STARTED, _Pool

RATE = 8000


def _unbroken_speech(seconds: float) -> bytes:
    """Twilio μ-law: 0.5 s of silence, ``seconds`` of speech the endpointer never hears a pause in, 2 s of silence."""
    pcm = concat(silence(RATE // 2), speechlike(int(seconds * RATE), RATE), silence(2 * RATE))
    return mulaw.encode(pcm)


async def _call_events(config: Config, audio: bytes) -> tuple[list[ev.Event], _Pool]:
    """Feed ``audio`` to a Call in real time (the mock clock), one 20 ms packet per reactor pass, as Twilio does."""
    pool = _Pool()
    events: list[ev.Event] = []
    call = Call(STARTED, config=config, pool=pool, emit=events.append, metrics=Registry(),
                budgets=Budgets(BudgetsConfig()))
    batch = FrameBatch()
    call.attach_batch(batch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.run)
        for at in range(0, len(audio), 160):
            batch.begin()
            call.on_event(AudioReceived(audio[at : at + 160], at / 8))
            batch.end()
            await trio.sleep(0.02)
        call.on_close("stop")
    return events, pool


def _run(config: Config, audio: bytes) -> tuple[list[ev.Event], _Pool]:
    async def main() -> tuple[list[ev.Event], _Pool]:
        with trio.fail_after(600):
            return await _call_events(config, audio)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_default_cut_is_15_s_and_its_pieces_stay_one_turn() -> None:
    """33 s of unbroken speech with the default settings: cut at 15 and 30 s, three utterances, each piece a
    continuation of the one before, starting exactly at its cut; three finals; one turn joining them."""
    config = Config()
    assert config.endpointing.max_utterance_ms == 15_000
    events, pool = _run(config, _unbroken_speech(33))
    started = [e for e in events if isinstance(e, ev.SpeechStarted)]
    ended = [e for e in events if isinstance(e, ev.SpeechEnded)]
    finals = [e for e in events if isinstance(e, ev.TranscriptFinal)]
    turns = [e for e in events if isinstance(e, ev.TurnEnded)]
    assert [e.reason for e in ended] == ["max_length", "max_length", "silence"]
    assert [round(e.end_ms - s.start_ms) for s, e in zip(started[:2], ended[:2], strict=True)] == [15_000, 15_000]
    assert [s.continues for s in started] == [None, started[0].utterance_id, started[1].utterance_id]
    for prev, nxt in zip(ended, started[1:], strict=False):
        assert nxt.start_ms == prev.end_ms  # the piece after a cut starts at the cut: nothing between them
    assert [(f.utterance_id, f.continues) for f in finals] == [(s.utterance_id, s.continues) for s in started]
    # the first piece's final is not held back until the speech ends: it comes before the last piece ends
    assert events.index(finals[0]) < events.index(ended[-1])
    assert len(turns) == 1
    assert turns[0].utterance_ids == [s.utterance_id for s in started]
    assert turns[0].text == " ".join(f.text for f in finals)
    assert_one_outcome_each(events)
    # every byte of the speech reached STT exactly once, across the three leases (16-bit PCM at 8 kHz)
    sent_ms = sum(len(lease.audio) for lease in pool.leases) / 16
    assert round(sent_ms) == round(ended[-1].end_ms - (started[0].start_ms - config.endpointing.preroll_ms))


def test_with_continuations_off_the_pieces_still_make_one_turn() -> None:
    """merge_ms 0 (no ``continues``): the turn stays whole all the same, since the next piece starts at the
    cut, before the cut piece's final can be followed by turn_ms of silence."""
    config = Config(endpointing=EndpointingConfig(merge_ms=0, max_utterance_ms=2000))
    events, _ = _run(config, _unbroken_speech(5))
    started = [e for e in events if isinstance(e, ev.SpeechStarted)]
    assert len(started) == 3 and all(s.continues is None for s in started)
    assert [e.reason for e in events if isinstance(e, ev.SpeechEnded)] == ["max_length", "max_length", "silence"]
    turns = [e for e in events if isinstance(e, ev.TurnEnded)]
    assert len(turns) == 1 and turns[0].utterance_ids == [s.utterance_id for s in started]
    assert_one_outcome_each(events)


def test_speech_well_under_the_cut_is_one_utterance() -> None:
    """12 s of unbroken speech (longer than any labelled utterance of the corpora, 8.6 s) is not cut."""
    events, _ = _run(Config(), _unbroken_speech(12))
    ended = [e for e in events if isinstance(e, ev.SpeechEnded)]
    assert [e.reason for e in ended] == ["silence"]
    assert np.isclose(ended[0].last_speech_ms - 500, 12_000, atol=100)

"""Property: ``Endpointer.may_start_within(n)`` False means the next ``n`` samples confirm no speech, whatever
they hold and however they are chunked (engine/call.py relies on it to join a pass's chunks: issue 13)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.endpointing import Endpointer, SpeechStarted, make_classifier
from fuzz.test_endpointer_props import chunkings, configs, signals


@given(data=st.data())
def test_no_speech_starts_where_may_start_within_says_none_can(data: st.DataObject) -> None:
    cfg, rate = data.draw(configs())
    ep = Endpointer(cfg, sample_rate=rate, classifier=make_classifier(cfg.classifier, rate, frame_ms=cfg.frame_ms))
    sig = data.draw(signals(rate, max_ms=3000))
    sizes = data.draw(chunkings)
    pos = i = 0
    while pos < len(sig):
        n = sizes[i % len(sizes)] or 1
        i += 1
        may = ep.may_start_within(n)
        events = ep.push(sig[pos : pos + n])
        pos += n
        if any(isinstance(e, SpeechStarted) for e in events):
            assert may, f"speech confirmed within {n} samples where may_start_within said it could not"

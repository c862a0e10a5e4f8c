"""Property: ``Endpointer.push_decided_lean`` is ``push_decided`` (issue 13), for arbitrary decisions.

The lean path leaves two outcomes unbuilt (``NO_EVENTS`` for nothing, None for a whole frame of an utterance
under way that ends nothing: its SpeechAudio is the frame's codes decoded). Two μ-law-history endpointers get
the same chunks (mostly whole Twilio packets, now and then any length) and the same decisions, drawn freely
rather than from a classifier so that every transition is reached (starts, continuations, ``min_utterance_ms``,
``max_length``); one runs ``push_decided``, the other ``push_decided_lean`` with None expanded back to its
SpeechAudio. The events, field for field, and the whole state after every chunk must be equal.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import Endpointer, EndpointEvent, SpeechAudio
from engine.endpointing.endpointer import NO_EVENTS
from tests.endpointing.helpers import key

_STATE = ("position", "_frames_done", "_in_speech", "_run", "_silence", "_utt_start", "_max_end", "_last_speech_end",
          "_prev_last_speech", "_ring_end", "_ring_floor", "_flat", "_codes", "continuation_possible")


class _Fixed:
    """A classifier stand-in: the frame size only (the decisions are given to push_decided directly)."""

    def __init__(self, frame: int) -> None:
        self.frame_samples = frame

    def classify(self, frames: object) -> list[bool]:
        raise AssertionError("never called: decisions are drawn")


def _state(ep: Endpointer) -> tuple[object, ...]:
    out = []
    for name in _STATE:
        value = getattr(ep, name)
        out.append(None if value is None else value if name not in ("_flat", "_codes") else "set")
    return (*out, ep._ring.tobytes())


@st.composite
def _decisions(draw: st.DrawFn, n: int) -> list[bool]:
    """Runs of speech and non-speech of random lengths (a flip now and then), n frames."""
    out: list[bool] = []
    speech = draw(st.booleans())
    while len(out) < n:
        out += [speech] * draw(st.integers(1, 40))
        speech = not speech
    return out[:n]


def _config(data: st.DataObject) -> tuple[EndpointingConfig, int]:
    """A random endpointing config (every setting the one-frame paths branch on) and its frame in samples."""
    frame_ms = data.draw(st.sampled_from([10, 20, 20, 20, 30]))
    cfg = EndpointingConfig(
        frame_ms=frame_ms,
        start_ms=data.draw(st.sampled_from([10, 60, 100])),
        end_ms=data.draw(st.sampled_from([20, 80, 200, 700])),
        preroll_ms=data.draw(st.sampled_from([0, 10, 100, 300, 1000])),
        max_utterance_ms=data.draw(st.sampled_from([1000, 1500, 30000])),
        min_utterance_ms=data.draw(st.sampled_from([0, 0, 300, 1200])),
        merge_ms=data.draw(st.sampled_from([0, 100, 300, 600, 2000])),
    )
    return cfg, 8 * frame_ms


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_lean_path_equals_push_decided(data: st.DataObject) -> None:
    cfg, frame = _config(data)
    ref = Endpointer(cfg, sample_rate=8000, classifier=_Fixed(frame), mulaw_history=True)
    lean = Endpointer(cfg, sample_rate=8000, classifier=_Fixed(frame), mulaw_history=True)
    total = data.draw(st.integers(0, 600)) * frame + data.draw(st.integers(0, frame - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 256, total, dtype=np.uint8).tobytes()
    decisions = data.draw(_decisions(total // frame + 1))
    odd = data.draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))  # share of chunks of any length
    got: list[EndpointEvent] = []
    want: list[EndpointEvent] = []
    lean_frames = 0
    done = pos = 0
    while pos < total:
        n = frame if rng.random() >= odd else int(rng.integers(1, 3 * frame))
        chunk = codes[pos : pos + n]
        pos += len(chunk)
        pcm = mulaw.decode(chunk)
        a = ref.frames_ready(pcm, chunk)
        b = lean.frames_ready(pcm.copy(), chunk)
        assert (a is None) == (b is None)
        if a is not None:
            d = decisions[done : done + a.shape[0]]
            done += a.shape[0]
            want += ref.push_decided(list(d))
            out = lean.push_decided_lean(list(d))
            if out is None:  # one frame of the utterance under way: the codes given are its audio
                assert len(d) == 1 and len(chunk) == frame and lean.in_speech
                lean_frames += 1
                got.append(SpeechAudio(lean.position - frame, mulaw.decode(chunk)))
            else:
                assert out or out is NO_EVENTS  # nothing is always the shared empty tuple
                got += out
        assert _state(lean) == _state(ref)
        assert [key(e) for e in got] == [key(e) for e in want]
    got += lean.end()
    want += ref.end()
    assert [key(e) for e in got] == [key(e) for e in want]
    if odd == 0.0 and any(isinstance(e, SpeechAudio) for e in want[:-3]):
        assert lean_frames > 0  # not vacuous: the unbuilt frame was taken


def test_lean_path_takes_the_quiet_and_the_speaking_frames() -> None:
    """Not vacuous: on whole packets, an idle quiet frame is NO_EVENTS itself and an utterance's frame None."""
    ep = Endpointer(EndpointingConfig(), sample_rate=8000, classifier=_Fixed(160), mulaw_history=True)
    quiet = b"\xff" * 160
    outs = []
    for speech in [False] * 20 + [True] * 30 + [False] * 40:
        assert ep.frames_ready(mulaw.decode(quiet), quiet) is not None
        outs.append(ep.push_decided_lean([speech]))
    assert all(o is NO_EVENTS for o in outs[:20])
    assert sum(o is None for o in outs) >= 30 - 4  # every speech frame after the confirming run of 4
    assert sum(isinstance(o, list) for o in outs) == 2  # the start, and the end

"""Property: ``Endpointer.push_packet`` is ``frames_ready`` + ``push_decided_lean`` (issue 13, round 4: the
batch's packet path), for arbitrary decisions and chunkings.

Two μ-law-history endpointers get the same chunks (mostly whole packets, now and then any length, which
misaligns the frames until a chunk realigns them) and the same decisions; one always runs the two phases, the
other ``push_packet`` whenever the chunk is exactly ``packet`` bytes (``packet`` must say 0 while anything is
pending). The events, field for field, and the whole state after every chunk must be equal.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import Endpointer, EndpointerError, EndpointEvent, SpeechAudio
from engine.endpointing.endpointer import NO_EVENTS
from tests.endpointing.helpers import key

from .test_endpointer_lean_props import _config, _decisions, _Fixed, _state


def _expand(out: object, ep: Endpointer, chunk: bytes) -> list[EndpointEvent]:
    """The lean answers as push_decided's events: None is the frame's SpeechAudio (its codes decoded)."""
    if out is None:
        return [SpeechAudio(ep.position - len(chunk), mulaw.decode(chunk))]
    assert out or out is NO_EVENTS
    return list(out)  # type: ignore[call-overload]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_push_packet_equals_the_two_phases(data: st.DataObject) -> None:
    cfg, frame = _config(data)
    ref = Endpointer(cfg, sample_rate=8000, classifier=_Fixed(frame), mulaw_history=True)
    pk = Endpointer(cfg, sample_rate=8000, classifier=_Fixed(frame), mulaw_history=True)
    total = data.draw(st.integers(0, 600)) * frame + data.draw(st.integers(0, frame - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 256, total, dtype=np.uint8).tobytes()
    decisions = data.draw(_decisions(total // frame + 1))
    odd = data.draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    got: list[EndpointEvent] = []
    want: list[EndpointEvent] = []
    packets = done = pos = 0
    while pos < total:
        n = frame if rng.random() >= odd else int(rng.integers(1, 3 * frame))
        chunk = codes[pos : pos + n]
        pos += len(chunk)
        pcm = mulaw.decode(chunk)
        aligned = pk.packet == frame
        assert aligned == (ref._pending.shape[0] == 0)  # packet: nothing pending (and the history keeps codes)
        a = ref.frames_ready(pcm, chunk)
        if a is not None:
            d = decisions[done : done + a.shape[0]]
            done += a.shape[0]
            want += _expand(ref.push_decided_lean(list(d)), ref, chunk)
        if aligned and len(chunk) == frame:
            assert a is not None
            packets += 1
            got += _expand(pk.push_packet(pcm.copy(), chunk, d[0]), pk, chunk)
        else:
            b = pk.frames_ready(pcm.copy(), chunk)
            assert (a is None) == (b is None)
            if b is not None:
                got += _expand(pk.push_decided_lean(list(d)), pk, chunk)
        assert _state(pk) == _state(ref)
        assert [key(e) for e in got] == [key(e) for e in want]
    got += pk.end()
    want += ref.end()
    assert [key(e) for e in got] == [key(e) for e in want]
    assert pk.packet == 0  # ended: nothing more is taken
    if odd == 0.0 and total >= frame:
        assert packets > 0  # not vacuous


def test_push_packet_refuses_what_it_cannot_take() -> None:
    ep = Endpointer(EndpointingConfig(), sample_rate=8000, classifier=_Fixed(160), mulaw_history=True)
    quiet = b"\xff" * 160
    with pytest.raises(EndpointerError):
        ep.push_packet(mulaw.decode(quiet[:80]), quiet[:80], False)  # not a whole frame
    assert ep.frames_ready(mulaw.decode(quiet[:80]), quiet[:80]) is None  # half a frame pending
    assert ep.packet == 0
    with pytest.raises(EndpointerError):
        ep.push_packet(mulaw.decode(quiet), quiet, False)
    assert ep.frames_ready(mulaw.decode(quiet[:80]), quiet[:80]) is not None  # realigned
    ep.push_decided_lean([False])
    assert ep.packet == 160
    assert ep.push_packet(mulaw.decode(quiet), quiet, False) is NO_EVENTS
    plain = Endpointer(EndpointingConfig(), sample_rate=8000, classifier=_Fixed(160))  # history of samples
    assert plain.packet == 0

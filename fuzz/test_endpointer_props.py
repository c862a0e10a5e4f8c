"""Property tests for the Endpointer (issue 4): arbitrary PCM, arbitrary chunkings.

Every example checks, via ``tests.endpointing.helpers.check``: well-formedness (strict
Started/Audio/Ended alternation, forward motion, nothing open after end()), conservation
(pre-roll + audio == the input slice), bounds (max_utterance_ms, pre-roll length, never
into the previous utterance), latency (silence end ≤ end_ms + one frame after the last
speech frame), continuations (``continues`` iff the run starts within merge_ms of the previous
last speech frame, pre-roll then exactly the gap) and agreement with a plain reference model of
the rules fed the same frame decisions. On top: chunking invariance, determinism, silence/DC/short bursts never start.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from engine.config import EndpointingConfig
from engine.endpointing import ClassifierError, SpeechStarted, make_classifier
from tests.endpointing.helpers import check, key, limits, run


def _classifiers() -> list[str]:
    names = ["bands", "bands-unmute", "bands-click", "bands-pitch", "bands-hold", "bands-level", "energy"]
    try:
        import webrtcvad  # noqa: F401

        names.append("webrtc")
    except ImportError:
        pass
    try:  # the optional 'silero' extra (installed by the bench extra, not by CI's test extra)
        make_classifier("silero", 8000)
        names += ["silero", "bands-judge"]
    except ClassifierError:
        pass
    return names


CLASSIFIERS = _classifiers()
KINDS = ["silence", "noise", "tone", "speech", "clip", "dc", "extreme", "impulses"]


@st.composite
def signals(draw: st.DrawFn, rate: int, max_ms: int = 4000) -> np.ndarray:
    parts = []
    total = 0
    limit = max_ms * rate // 1000
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(KINDS))
        n = draw(st.integers(0, 1500)) * rate // 1000
        n = min(n, limit - total)
        level = draw(st.sampled_from([0.0, 1.0, 30.0, 300.0, 3000.0, 20000.0, 40000.0]))
        t = np.arange(n) / rate
        if kind == "silence":
            x = np.zeros(n)
        elif kind == "noise":
            x = rng.standard_normal(n) * level
        elif kind == "tone":
            x = level * np.sin(2 * np.pi * draw(st.floats(20, rate / 2)) * t)
        elif kind == "speech":
            f0 = draw(st.floats(80, 300))
            env = np.abs(np.sin(2 * np.pi * draw(st.floats(1, 8)) * t))
            x = level * env * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
        elif kind == "clip":
            x = np.sign(np.sin(2 * np.pi * 200 * t)) * 40000
        elif kind == "dc":
            x = np.full(n, draw(st.integers(-32768, 32767)), float)
        elif kind == "extreme":
            x = np.where(np.arange(n) % 2, 32767.0, -32768.0)
        else:
            x = np.zeros(n)
            x[rng.integers(0, max(n, 1), size=min(n, 5))] = level
        if draw(st.booleans()):
            x = x + draw(st.integers(-2000, 2000))  # DC offset
        parts.append(np.clip(x, -32768, 32767).astype(np.int16))
        total += n
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)


chunkings = st.lists(st.sampled_from([0, 1, 2, 7, 79, 80, 159, 160, 161, 320, 1000, 4093]), min_size=1, max_size=6)


@st.composite
def configs(draw: st.DrawFn) -> tuple[EndpointingConfig, int]:
    rate = draw(st.sampled_from([8000, 16000]))
    cfg = EndpointingConfig(
        classifier=draw(st.sampled_from(CLASSIFIERS)),  # type: ignore[arg-type]
        sample_rate=rate,
        frame_ms=draw(st.sampled_from([10, 20, 30])),
        start_ms=draw(st.sampled_from([10, 30, 60, 100, 250])),
        end_ms=draw(st.sampled_from([20, 80, 120, 200, 300, 700])),
        preroll_ms=draw(st.sampled_from([0, 10, 100, 300, 1000])),
        max_utterance_ms=draw(st.sampled_from([1000, 1500, 30000])),
        min_utterance_ms=draw(st.sampled_from([0, 0, 0, 300, 1200])),
        merge_ms=draw(st.sampled_from([0, 100, 300, 600, 2000])),
    )
    return cfg, rate


@given(data=st.data())
def test_invariants_chunking_invariance_determinism(data: st.DataObject) -> None:
    cfg, rate = data.draw(configs())
    sig = data.draw(signals(rate, max_ms=3000))
    ref = run(cfg, sig, [rate // 50])
    check(cfg, rate, sig, ref)
    other = run(cfg, sig, data.draw(chunkings))
    check(cfg, rate, sig, other)
    assert [key(e) for e in other.events] == [key(e) for e in ref.events]
    assert other.decisions == ref.decisions
    # determinism: a second endpointer fed the same chunks agrees, event for event
    again = run(cfg, sig, [rate // 50])
    assert [key(e) for e in again.events] == [key(e) for e in ref.events]
    assert again.emitted_at == ref.emitted_at


@given(
    name=st.sampled_from(CLASSIFIERS),
    rate=st.sampled_from([8000, 16000]),
    frame_ms=st.sampled_from([10, 20, 30]),
    start_ms=st.sampled_from([10, 40, 60, 100]),
    kind=st.sampled_from(["white", "pink", "tone", "speech"]),
    level=st.sampled_from([10.0, 100.0, 1000.0, 10000.0]),
    noise_ms=st.integers(0, 3000),
    silence_ms=st.integers(0, 2000),
    idle=st.sampled_from([0, 1, -1]),
    chunks=chunkings,
    seed=st.integers(0, 2**16),
)
def test_digital_silence_after_noise_never_starts_speech(
    name: str, rate: int, frame_ms: int, start_ms: int, kind: str, level: float, noise_ms: int, silence_ms: int,
    idle: int, chunks: list[int], seed: int,
) -> None:
    """Hold/mute on a Twilio line: whatever came before, μ-law digital silence (0xFF → 0, or the
    ±1-step idle pattern) is never judged speech and never starts an utterance."""
    cfg = EndpointingConfig(classifier=name, sample_rate=rate, frame_ms=frame_ms, start_ms=start_ms)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    n = noise_ms * rate // 1000
    t = np.arange(n) / rate
    if kind == "white":
        x = rng.standard_normal(n) * level
    elif kind == "pink":
        x = np.cumsum(rng.standard_normal(n)) * level / 30
        width = min(64, n)  # "same" returns max(len) samples: a window longer than x would grow it
        if width:
            x -= np.convolve(x, np.ones(width) / width, "same")
    elif kind == "tone":
        x = level * np.sin(2 * np.pi * 440 * t)
    else:
        x = level * np.abs(np.sin(2 * np.pi * 3 * t)) * sum(np.sin(2 * np.pi * k * 140 * t) / k for k in range(1, 8))
    quiet = silence_ms * rate // 1000
    digital = np.zeros(quiet) if idle == 0 else np.where(rng.random(quiet) < 0.5, 8.0, 0.0) * idle
    sig = np.clip(np.concatenate([x, digital]), -32768, 32767).astype(np.int16)
    r = run(cfg, sig, chunks)
    check(cfg, rate, sig, r)
    frame = r.frame
    first_quiet = -(-n // frame)  # the first frame wholly in the silence
    assert not any(r.decisions[first_quiet:]), "digital silence judged speech"
    assert all(e.start < first_quiet * frame for e in r.events if isinstance(e, SpeechStarted))


@given(
    name=st.sampled_from(CLASSIFIERS),
    rate=st.sampled_from([8000, 16000]),
    frame_ms=st.sampled_from([10, 20, 30]),
    value=st.integers(-32768, 32767),
    seconds=st.integers(0, 1),
    extra=st.integers(0, 500),
    chunks=chunkings,
)
def test_silence_and_constant_dc_never_start(
    name: str, rate: int, frame_ms: int, value: int, seconds: int, extra: int, chunks: list[int]
) -> None:
    cfg = EndpointingConfig(classifier=name, sample_rate=rate, frame_ms=frame_ms, start_ms=10)  # type: ignore[arg-type]
    for v in (0, value):
        sig = np.full(seconds * rate + extra, v, np.int16)
        r = run(cfg, sig, chunks)
        assert r.events == []
        assert not any(r.decisions)


@given(
    name=st.sampled_from(CLASSIFIERS),
    rate=st.sampled_from([8000, 16000]),
    frame_ms=st.sampled_from([10, 20, 30]),
    start_ms=st.sampled_from([10, 30, 60, 100, 250]),
    lead=st.integers(0, 20_000),
    frac=st.floats(0.0, 1.0),
    kind=st.sampled_from(["speech", "noise", "clip", "extreme", "impulse"]),
    level=st.sampled_from([300.0, 3000.0, 32767.0]),
    background=st.sampled_from([0.0, 3.0]),
    bursts=st.integers(1, 4),
    gap_ms=st.integers(0, 400),
    seed=st.integers(0, 2**16),
)
def test_bursts_shorter_than_start_ms_never_start(
    name: str, rate: int, frame_ms: int, start_ms: int, lead: int, frac: float, kind: str, level: float,
    background: float, bursts: int, gap_ms: int, seed: int,
) -> None:
    """Isolated bursts (separated by at least a frame of quiet) shorter than start_ms."""
    cfg = EndpointingConfig(classifier=name, sample_rate=rate, frame_ms=frame_ms, start_ms=start_ms)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    frame = rate * frame_ms // 1000
    length = max(1, int(frac * (start_ms * rate // 1000 - 1)))
    t = np.arange(length) / rate
    if kind == "speech":
        burst = level * np.sin(2 * np.pi * 180 * t) * np.hanning(length + 2)[1:-1]
    elif kind == "noise":
        burst = rng.standard_normal(length) * level
    elif kind == "clip":
        burst = np.sign(np.sin(2 * np.pi * 300 * t)) * level
    elif kind == "extreme":
        burst = np.where(np.arange(length) % 2, 32767.0, -32768.0)
    else:
        burst = np.zeros(length)
        burst[0] = level
    pieces = [rng.standard_normal(lead % (3 * rate)) * background]
    for _ in range(bursts):
        pieces.append(burst)
        quiet = max(gap_ms * rate // 1000, frame + frame)
        pieces.append(rng.standard_normal(quiet) * background)
    sig = np.clip(np.concatenate(pieces), -32768, 32767).astype(np.int16)
    r = run(cfg, sig, [frame])
    assert r.events == [], f"a {length}-sample burst (< start_ms) started speech"
    assert limits(cfg, rate, frame)[0] * frame >= start_ms * rate // 1000


@given(data=st.data(), give_codes=st.sampled_from(["all", "none", "some"]))
def test_mulaw_history_is_the_int16_history(data: st.DataObject, give_codes: str) -> None:
    """Issue 13: on μ-law-representable input, the μ-law history (codes given, withheld, or for some chunks
    only) gives every event of the int16 history, pre-roll samples byte for byte, in any chunking."""
    from engine.audio import mulaw
    from engine.endpointing import Endpointer

    cfg, rate = data.draw(configs())
    codes = mulaw.encode(data.draw(signals(rate, max_ms=3000)))
    sig = mulaw.decode(codes)
    chunks = data.draw(chunkings)
    outs = []
    for history in (False, True):
        ep = Endpointer(cfg, sample_rate=rate, mulaw_history=history)
        events, pos, i = [], 0, 0
        while pos < len(sig):
            n = max(1, chunks[i % len(chunks)])
            given_codes = give_codes == "all" or (give_codes == "some" and i % 2 == 0)
            events += ep.push(sig[pos : pos + n], codes[pos : pos + n] if given_codes else None)
            pos += n
            i += 1
        events += ep.end()
        outs.append([key(e) for e in events])  # pre-roll and audio as bytes
    assert outs[0] == outs[1]

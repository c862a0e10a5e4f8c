"""Issue 13: the endpointer's idle history as μ-law codes (``mulaw_history``) halves its memory and changes
nothing else: every event, pre-roll samples included, is identical to the int16 history's, over the committed
corpora, with the codes given, without them (re-encoded), across chunkings and in the batched two-phase use."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import Endpointer, EndpointerError, EndpointEvent, SpeechStarted
from engine.endpointing.endpointer import Pcm

from .signals import concat, noise, silence, speechlike

BENCH = Path(__file__).resolve().parents[2] / "bench"


def corpus(name: str) -> list[tuple[str, Pcm]]:
    sys.path.insert(0, str(BENCH))
    from corpus import load

    return [(n, pcm) for n, pcm, _lab in load(BENCH / name)]


def flatten(events: Sequence[EndpointEvent]) -> list[tuple[Any, ...]]:
    """Every event as comparable values: its type, its fields, and the bytes of its audio."""
    out = []
    for e in events:
        fields = []
        for name in e.__slots__ if hasattr(e, "__slots__") else vars(e):
            v = getattr(e, name)
            fields.append((v.dtype.str, v.tobytes()) if isinstance(v, np.ndarray) else v)
        out.append((type(e).__name__, *fields))
    return out


def drive(cfg: EndpointingConfig, pcm: Pcm, chunks: Sequence[int], *, history: str, two_phase: bool = False) -> list[
        EndpointEvent]:
    """Push ``pcm`` in chunks (cycled); ``history``: "pcm" (int16 ring), "codes" (μ-law ring, codes given) or
    "encode" (μ-law ring, no codes given)."""
    ep = Endpointer(cfg, mulaw_history=history != "pcm")
    codes = mulaw.encode(pcm)
    events: list[EndpointEvent] = []
    pos = i = 0
    while pos < len(pcm):
        n = chunks[i % len(chunks)]
        i += 1
        part = pcm[pos : pos + n]
        given = codes[pos : pos + n] if history == "codes" else None
        pos += n
        if two_phase:
            frames = ep.frames_ready(part, given)
            if frames is not None:
                events += ep.push_decided(ep.classifier.classify(frames))
        else:
            events += ep.push(part, given)
    return events + ep.end()


def decoded(pcm: Pcm) -> Pcm:
    """The samples a μ-law line can carry (what Twilio's audio decodes to)."""
    return mulaw.decode(mulaw.encode(pcm))


@pytest.mark.parametrize("name", ["corpus", "corpus_real"])
def test_committed_corpora_give_identical_events(name: str) -> None:
    cfg = EndpointingConfig()
    starts = 0
    for call, pcm in corpus(name):
        assert np.array_equal(pcm, decoded(pcm)), call  # μ-law WAVs: every sample is a decoded code
        want = flatten(drive(cfg, pcm, [160], history="pcm"))
        assert flatten(drive(cfg, pcm, [160], history="codes", two_phase=True)) == want, call
        starts += sum(e[0] == "SpeechStarted" for e in want)
    assert starts > 20  # the corpora do exercise the pre-roll


@pytest.mark.parametrize("history", ["codes", "encode"])
@pytest.mark.parametrize("chunks", [[160], [37, 160, 400], [1000], [80, 80, 240]])
@pytest.mark.parametrize(
    "extra",
    [{}, {"merge_ms": 0}, {"preroll_ms": 0, "merge_ms": 0}, {"max_utterance_ms": 1000}, {"frame_ms": 10},
     {"min_utterance_ms": 900, "merge_ms": 300}],
)
def test_chunkings_and_settings_give_identical_events(history: str, chunks: list[int], extra: dict[str, int]) -> None:
    cfg = EndpointingConfig(**extra)  # type: ignore[arg-type]
    rate = 8000
    sig = decoded(concat(
        noise(rate, 40.0, seed=3), speechlike(rate * 3 // 2, rate, seed=4), noise(rate // 5, 40.0, seed=5),
        speechlike(rate // 2, rate, seed=6), silence(rate // 2), speechlike(rate * 2, rate, seed=7), noise(rate, 40.0, seed=8),
    ))
    want = drive(cfg, sig, chunks, history="pcm")
    started = [e for e in want if isinstance(e, SpeechStarted)]
    assert len(started) >= 2 and (cfg.preroll_ms == 0 or any(len(e.preroll) for e in started))
    for two_phase in (False, True):
        assert flatten(drive(cfg, sig, chunks, history=history, two_phase=two_phase)) == flatten(want)


def test_the_history_takes_one_byte_per_sample() -> None:
    cfg = EndpointingConfig()
    pcm, codes = Endpointer(cfg), Endpointer(cfg, mulaw_history=True)
    assert codes.mulaw_history and not pcm.mulaw_history
    # 600 ms of continuation window + the 4-frame confirming run at 8 kHz
    assert pcm.history_bytes == 2 * 5440 and codes.history_bytes == 5440


def test_codes_of_another_length_are_refused_and_ignored_without_mulaw_history() -> None:
    frame = np.zeros(160, np.int16)
    ep = Endpointer(EndpointingConfig(), mulaw_history=True)
    with pytest.raises(EndpointerError, match="159"):
        ep.push(frame, b"\xff" * 159)
    plain = Endpointer(EndpointingConfig())
    sig = decoded(concat(noise(4000, 40.0, seed=1), speechlike(8000, 8000, seed=2), noise(4000, 40.0, seed=3)))
    wrong = bytes(len(sig))  # not sig's codes: a plain history must not use them
    events = []
    for at in range(0, len(sig), 160):
        events += plain.push(sig[at : at + 160], wrong[at : at + 160])
    assert flatten(events) == flatten(drive(EndpointingConfig(), sig, [160], history="pcm")[: len(events)])


def _call_utterances(audio: bytes, *, plain_history: bool, batched: bool) -> list[bytes]:
    """The utterance audio a Call keeps for STT (pre-roll first) from Twilio-style μ-law frames."""
    from engine.budgets import Budgets
    from engine.call import Call
    from engine.config import BudgetsConfig, Config, RtzrConfig
    from engine.endpointing import make_classifier
    from engine.endpointing.batch import FrameBatch
    from engine.media import AudioReceived, StreamStarted
    from engine.metrics import Registry

    started = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                            provider="test")
    config = Config(rtzr=RtzrConfig(encoding="LINEAR16", sample_rate=8000))
    call = Call(started, config=config, pool=None, emit=lambda e: None,  # type: ignore[arg-type]
                metrics=Registry(), budgets=Budgets(BudgetsConfig()))
    assert call.endpointer.mulaw_history  # Twilio's mono μ-law, not resampled
    if plain_history:
        ep = config.endpointing
        call.endpointer = Endpointer(ep, classifier=make_classifier(ep.classifier, 8000, frame_ms=ep.frame_ms))
    batch = FrameBatch()
    if batched:
        call.attach_batch(batch)
    for i in range(0, len(audio) - 159, 160):
        batch.begin()
        call.on_event(AudioReceived(audio[i : i + 160], i / 8))
        batch.end()
    assert not batched or batch.decoded > 0
    call.on_close("stop")
    return [u.audio.read(0, u.audio.size) for u in call._open]


@pytest.mark.parametrize("batched", [False, True])
async def test_a_twilio_calls_utterance_audio_is_unchanged(batched: bool) -> None:
    """engine/call.py gives the endpointer Twilio's payloads as the codes: the utterances it keeps for STT,
    pre-roll included, are byte for byte those of an int16 history (Call needs Trio's clock, hence async)."""
    from tests.pipeline.test_pipeline_e2e import phrase_call

    audio, _texts = phrase_call(["diary", "tonight"], gap_ms=1200)
    with trio.fail_after(20):
        want = _call_utterances(audio, plain_history=True, batched=batched)
        assert len(want) >= 2 and sum(len(b) for b in want) > 16000
        assert _call_utterances(audio, plain_history=False, batched=batched) == want

"""Issue 13: utterance audio kept as μ-law codes when the STT wants LINEAR16 at 8 kHz (half the memory),
bit-identical to the LINEAR16 buffer it replaces."""

from __future__ import annotations

import numpy as np
import trio

from engine.audio import mulaw
from engine.budgets import Budgets
from engine.call import Call
from engine.config import BudgetsConfig, Config, RtzrConfig
from engine.media import AudioReceived, StreamStarted
from engine.metrics import Registry
from engine.utterance import UtteranceAudio

from .test_pipeline_e2e import phrase_call

STARTED = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                      provider="test")


def test_every_mulaw_code_survives_compact_storage_in_any_chunking() -> None:
    rng = np.random.default_rng(7)
    codes = np.concatenate([np.arange(256, dtype=np.uint8), rng.integers(0, 256, 5000, dtype=np.uint8)])
    pcm = mulaw.decode(codes)
    audio = UtteranceAudio(mulaw_as_pcm16=True)
    pos = 0
    while pos < len(pcm):
        n = int(rng.integers(1, 400))
        audio.append_pcm(pcm[pos:pos + n], mulaw_out=False)
        pos += n
    expected = pcm.astype("<i2").tobytes()
    assert audio.size == len(expected)
    got, offset = b"", 0
    while offset < audio.size:
        chunk = audio.read(offset, 2 * int(rng.integers(1, 900)))
        got += chunk
        offset += len(chunk)
    assert got == expected
    plain = UtteranceAudio()
    plain.append_pcm(pcm, mulaw_out=False)
    assert plain.size == audio.size and plain.read(0, plain.size) == expected


def test_every_code_pair_reads_back_through_the_batch_lookup() -> None:
    """The push's read (whole code pairs within a block: one lookup per two samples, issue 13 round 5) gives
    what decoding the codes one by one gives, for all 65,536 pairs, in 100 ms batches as the push reads, and
    when a batch is cut at an odd code or across blocks (the per-code path)."""
    pairs = np.arange(1 << 16, dtype="<u2")
    codes = pairs.view(np.uint8).tobytes()  # every (first, second) pair, aligned
    expected = mulaw.decode(codes).astype("<i2").tobytes()
    audio = UtteranceAudio(mulaw_as_pcm16=True)
    for i in range(0, len(codes), 160):
        audio.append_mulaw(codes[i:i + 160])
    got = b"".join(audio.read(offset, 1600) for offset in range(0, audio.size, 1600))
    assert got == expected
    rng = np.random.default_rng(5)
    for _ in range(300):  # odd codes at either end, across blocks: the same bytes
        offset = 2 * int(rng.integers(0, len(codes)))
        n = 2 * int(rng.integers(1, 1200))
        assert audio.read(offset, n) == expected[offset:offset + n]


def _utterance_bytes(compact: bool, audio: bytes) -> list[bytes]:
    config = Config(rtzr=RtzrConfig(encoding="LINEAR16", sample_rate=8000))
    call = Call(STARTED, config=config, pool=None, emit=lambda e: None,  # type: ignore[arg-type]
                metrics=Registry(), budgets=Budgets(BudgetsConfig()))
    assert call._compact  # LINEAR16 at 8 kHz, endpointer at 8 kHz: the compact case
    call._compact = compact
    call._raw_ok = compact  # LINEAR16 storage holds PCM, never the received μ-law bytes
    for i in range(0, len(audio) - 159, 160):
        call.on_event(AudioReceived(audio[i:i + 160], i / 8))
    call.on_close("stop")
    return [u.audio.read(0, u.audio.size) for u in call._open]


async def test_call_sends_the_same_bytes_with_compact_storage() -> None:
    audio, _texts = phrase_call(["diary", "tonight"], gap_ms=1200)
    with trio.fail_after(10):
        compact = _utterance_bytes(True, audio)
        plain = _utterance_bytes(False, audio)
    assert len(plain) >= 2 and sum(len(b) for b in plain) > 16000
    assert compact == plain

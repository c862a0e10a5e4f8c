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

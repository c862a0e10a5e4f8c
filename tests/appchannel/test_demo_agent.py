"""``sori demo --agent``: every final answered with a clip through the engine, each turn timed."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import trio

from engine import events as ev
from engine.demo import demo_config, run_demo
from tests.appchannel.support import phrase_pcm


async def test_agent_answers_every_final_and_times_the_turn(tmp_path: Path) -> None:
    pcm = np.concatenate([np.zeros(2400, np.int16), phrase_pcm("okay.wav"), np.zeros(12000, np.int16),
                          phrase_pcm("thanks.wav"), np.zeros(4000, np.int16)])
    path = tmp_path / "two.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.astype("<i2").tobytes())
    out = io.StringIO()
    with trio.fail_after(60):
        result = await run_demo(demo_config(["endpointing.end_ms=200"]), path, out=out, agent=True)
    finals = [f for f in result.finals if f.text]
    assert len(finals) >= 2
    turns = result.agent.turns
    assert len(turns) == len(finals)
    assert all(t.answered is not None and t.answered > t.caller_stopped for t in turns)
    started = [e for e in result.events if isinstance(e, ev.PlaybackStarted)]
    assert [e.playback_id for e in started] == [t.playback_id for t in turns]
    assert "caller stopped → agent audio starts" in out.getvalue()
    assert len(result.report.heard) >= 1  # the simulated caller heard the answers
    assert "turn  utterance" in result.agent.table()

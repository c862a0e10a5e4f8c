"""The rig-only stand-in (bench/standin.py) drives the emulator as the engine would: a session per call, all
of the call's audio in 100 ms messages, EOS at the end; the load generator sees a clean Twilio close."""

from __future__ import annotations

import argparse
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import trio

from engine.rtzr.emulator import Emulator, EmulatorConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import loadgen
import standin


def tone_wav(path: Path, ms: int) -> None:
    t = np.arange(ms * 8) / 8000
    samples = (np.sin(2 * np.pi * 220 * t) * 8000 * ((t > 0.1) & (t < ms / 1000 - 0.3))).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(samples.tobytes())


async def test_standin_forwards_every_call_to_its_own_emulator_session(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    tone_wav(wav, 1000)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            emu = await nursery.start(Emulator(EmulatorConfig(handshake_ms=5, final_ms=20, max_sessions=10,
                                                              cheap=True)).run)
            address = f"127.0.0.1:{emu.port}"
            token = await trio.to_thread.run_sync(standin.authenticate, address)
            relay = standin.StandIn(0, address, token)
            stop = threading.Event()
            thread = threading.Thread(target=relay.serve, args=(stop,))
            thread.start()
            try:
                args = argparse.Namespace(url=f"ws://127.0.0.1:{relay.port}/twilio/media", calls=3, audio=[str(wav)],
                                          repeat=2, stagger_ms=5.0, trailing_silence_ms=200, seed=1, progress=None)
                doc = await loadgen.main_async(args)
                while relay.stats.sessions_closed < 3:  # EOS → final → close, after the Twilio side ended
                    await trio.sleep(0.01)
            finally:
                stop.set()
                await trio.to_thread.run_sync(thread.join)
            assert doc["ok"] == 3
            per_call_ms = 2 * 1000 + 200
            st = relay.stats
            assert (st.calls, st.sessions_opened, st.sessions_closed, st.rejected) == (3, 3, 3, 0)
            assert st.audio_messages == 3 * per_call_ms // 100
            assert emu.stats.bytes_received == 3 * per_call_ms * 16  # LINEAR16 at 8 kHz
            assert st.finals == 3 and st.errors == 0  # the plays are 0.4 s apart: one utterance, answered at EOS
            assert len(st.eos_to_close_ms) == 3
            nursery.cancel_scope.cancel()

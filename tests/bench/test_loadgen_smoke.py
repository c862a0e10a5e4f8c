"""Smoke test of the capacity rig's load generator against the real engine (in-process, loopback, port 0).

The load generator writes pre-encoded, zero-key-masked frames straight to its sockets; this checks the engine
takes them as a faithful Twilio stream: every frame accepted in order, no protocol error, every call ended by
its ``stop``.
"""

from __future__ import annotations

import argparse
import sys
import wave
from pathlib import Path

import numpy as np
import trio

from engine.app import Engine, serve
from engine.config import cli_overrides, load
from engine.rtzr.emulator.local import in_process

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import loadgen


def short_wav(path: Path, ms: int) -> None:
    t = np.arange(ms * 8) / 8000
    samples = (np.sin(2 * np.pi * 220 * t) * 8000 * (t > 0.1)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(samples.tobytes())


async def test_loadgen_drives_the_engine_with_a_faithful_stream(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    short_wav(wav, 400)
    config = load(environ={}, cli=cli_overrides(["server.port=0", "server.admin_port=0", "server.allow_unsigned=true",
                                                  "sinks.jsonl=", "server.gc_policy=default"]))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            engine: Engine = await nursery.start(lambda task_status: serve(
                config, stt=in_process(), handle_signals=False, task_status=task_status))
            await engine.wait_ready()
            args = argparse.Namespace(url=engine.twilio_url, calls=3, audio=[str(wav)], repeat=2, stagger_ms=5.0,
                                      trailing_silence_ms=100, seed=1, progress=str(tmp_path / "progress.jsonl"))
            doc = await loadgen.main_async(args)
            per_call = 2 * 20 + 5  # 2 × 400 ms + 100 ms of silence, 20 ms frames
            assert doc["ok"] == 3
            assert [c["frames_sent"] for c in doc["calls"]] == [per_call] * 3  # type: ignore[index]
            while engine.metrics.value("twilio_calls_ended_total", "reason=stop") < 3:
                await trio.sleep(0.01)
            assert engine.metrics.value("twilio_frames_total") == 3 * per_call
            for counter in ("twilio_frames_duplicate_total", "twilio_frames_reordered_total",
                            "twilio_frames_filled_total"):
                assert engine.metrics.value(counter) == 0, counter
            assert "sori_twilio_protocol_errors_total" not in engine.metrics.render()
            assert (tmp_path / "progress.jsonl").read_text().count("all_live") == 1
            engine.shutdown()


def unframe(data: bytes) -> list[bytes]:
    """Payloads of consecutive client TEXT frames with the zero masking key."""
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos] == 0x81 and data[pos + 1] & 0x80
        n, head = data[pos + 1] & 0x7F, pos + 2
        if n == 126:
            n, head = int.from_bytes(data[head:head + 2], "big"), head + 2
        assert data[head:head + 4] == b"\0\0\0\0"
        out.append(data[head + 4:head + 4 + n])
        pos = head + 4 + n
    return out


def test_pre_encoded_frames_are_a_gapless_twilio_stream() -> None:
    from engine.media import AudioReceived, StreamStopped
    from engine.twilio.protocol import (
        ConnectedMessage,
        MediaFormat,
        StartInfo,
        StartMessage,
        StopInfo,
        StopMessage,
        TwilioStream,
        encode,
    )

    payloads = [bytes([k % 256]) * 160 for k in range(130)]
    enc = loadgen.Encoded.of(payloads)
    sid = "MZ" + "ab" * 16
    start = encode(StartMessage(stream_sid=sid, sequence_number="1", start=StartInfo(
        stream_sid=sid, account_sid="AC1", call_sid="CA1", tracks=["inbound"], media_format=MediaFormat())))
    wire = loadgen.client_text_frame(encode(ConnectedMessage()).encode()) + loadgen.client_text_frame(start.encode())
    wire += b"".join(b + sid.encode() + a for b, a in zip(enc.before, enc.after, strict=True))
    wire += loadgen.client_text_frame(encode(StopMessage(stream_sid=sid, sequence_number=str(len(payloads) + 2),
                                                         stop=StopInfo(account_sid="AC1", call_sid="CA1"))).encode())
    proto = TwilioStream()
    events = [e for text in unframe(wire) for e in proto.receive_text(text.decode())]
    assert b"".join(e.payload for e in events if isinstance(e, AudioReceived)) == b"".join(payloads)
    assert isinstance(events[-1], StreamStopped)
    s = proto.stats
    assert (s.frames, s.sequence_gaps, s.timestamp_jumps, s.duplicates, s.reordered, s.errors) == (130, 0, 0, 0, 0, 0)

"""Simulator: audio files, frame timing and wire faithfulness, and the ``sori simulate-call`` CLI."""

from __future__ import annotations

import json
import queue
import struct
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from trio_websocket import serve_websocket

from engine.audio import mulaw
from engine.cli import main
from engine.twilio.protocol import encode_mark, encode_media
from engine.twilio.signature import compute_signature
from engine.twilio.simulator import AudioFileError, frames_of, load_audio, make_sid, simulate_call
from tests.twilio.twilio_support import TOKEN, running_server


def _tone(rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * 440 * t) * amp).astype(np.float32)


def _write_wav(path: Path, pcm16: np.ndarray, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16.astype("<i2").tobytes())


def _riff(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes, extensible: bool = False) -> bytes:
    block = channels * bits // 8
    if extensible:
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0)
        fmt += struct.pack("<H", fmt_tag) + b"\x00" * 14
    else:
        fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk with a pad byte
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_wav_resampled_to_8k_mono(tmp_path: Path) -> None:
    tone = _tone(44100, 1.0)
    stereo = np.repeat((tone * 32767).astype(np.int16)[:, None], 2, axis=1).reshape(-1)
    path = tmp_path / "a.wav"
    _write_wav(path, stereo, 44100, channels=2)
    out = load_audio(path)
    assert abs(len(out) - 8000) <= 2
    pcm = mulaw.decode(out).astype(np.float32) / 32768
    expected = _tone(8000, len(out) / 8000)
    assert np.corrcoef(pcm[100:-100], expected[100:-100])[0, 1] > 0.99


@pytest.mark.parametrize(("tag", "bits", "encode_fn"), [
    (1, 8, lambda x: ((x * 127) + 128).astype(np.uint8).tobytes()),
    (1, 24, lambda x: b"".join(int(v).to_bytes(3, "little", signed=True) for v in (x * 8388607).astype(np.int32))),
    (1, 32, lambda x: (x * 2147483647).astype("<i4").tobytes()),
    (3, 32, lambda x: x.astype("<f4").tobytes()),
    (3, 64, lambda x: x.astype("<f8").tobytes()),
    (7, 8, lambda x: mulaw.encode((x * 32767).astype(np.int16))),
])
@pytest.mark.parametrize("extensible", [False, True])
def test_wav_encodings(tmp_path: Path, tag: int, bits: int, encode_fn, extensible: bool) -> None:
    tone = _tone(8000, 0.1)
    path = tmp_path / "b.wav"
    path.write_bytes(_riff(tag, 1, 8000, bits, encode_fn(tone), extensible))
    out = load_audio(path)
    assert len(out) == 800
    pcm = mulaw.decode(out).astype(np.float32) / 32768
    assert np.max(np.abs(pcm - tone)) < 0.03


def test_raw_mulaw_is_passed_through(tmp_path: Path) -> None:
    for suffix in (".ulaw", ".mulaw", ".raw"):
        path = tmp_path / f"c{suffix}"
        path.write_bytes(bytes(range(256)))
        assert load_audio(path) == bytes(range(256))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.wav", None, "No such file"),
    ("text.wav", b"hello world, not audio", "not a WAV"),
    ("nofmt.wav", b"RIFF\x04\x00\x00\x00WAVE", "without fmt"),
    ("adpcm.wav", _riff(2, 1, 8000, 4, b"\x00" * 10), "unsupported WAV encoding"),
    ("zero.wav", _riff(1, 0, 8000, 16, b"\x00" * 10), "unsupported WAV"),
])
def test_bad_audio_files(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioFileError, match=message):
        load_audio(path)


def test_frames_are_160_bytes_with_a_padded_tail() -> None:
    frames = frames_of(b"\x01" * 400)
    assert [len(f) for f in frames] == [160, 160, 160]
    assert frames[-1] == b"\x01" * 80 + b"\xff" * 80
    assert frames_of(b"") == []


def test_sids_look_like_twilio() -> None:
    import random
    sid = make_sid("MZ", random.Random(1))
    assert len(sid) == 34 and sid.startswith("MZ") and all(c in "0123456789abcdef" for c in sid[2:])


async def test_wire_is_twilio_shaped_and_paced(autojump_clock: trio.testing.MockClock) -> None:
    """A bare trio-websocket server records exactly what the simulator sends, and when (on the MockClock: the
    pacing is checked, not the machine's speed)."""
    seen: list[tuple[float, dict]] = []
    headers: dict[str, str] = {}
    target: list[str] = []

    async def handler(request) -> None:
        headers.update({k.decode().lower(): v.decode() for k, v in request.headers})
        target.append(request.path)
        ws = await request.accept()
        try:
            while True:
                seen.append((trio.current_time(), json.loads(await ws.get_message())))
                if seen[-1][1]["event"] == "start":
                    sid = seen[-1][1]["streamSid"]
                    await ws.send_message(encode_media(sid, b"\xff" * 160))
                    await ws.send_message(encode_mark(sid, "m"))
                    await ws.send_message('{"event":"bogus"}')
                if seen[-1][1]["event"] == "stop":
                    await ws.aclose()  # as the engine does: the simulator waits for this close
        except Exception:
            pass

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            url = f"ws://127.0.0.1:{server.port}/twilio/media"
            report = await simulate_call(url, b"\x10" * 1600, auth_token=TOKEN, speed="realtime",
                                         custom_parameters={"a": "b"}, dtmf={3: "9"}, seed=5)
            nursery.cancel_scope.cancel()
    assert report.ok and report.close_code == 1000, report.summary()
    assert headers["user-agent"] == "Twilio.TmeWs/1.0"
    assert headers["x-twilio-signature"] == compute_signature(TOKEN, url)
    assert "origin" not in headers and target == ["/twilio/media"]
    messages = [m for _, m in seen]
    assert [m["event"] for m in messages[:2]] == ["connected", "start"]
    start = messages[1]
    assert start["sequenceNumber"] == "1" and start["start"]["customParameters"] == {"a": "b"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["callSid"].startswith("CA") and start["start"]["accountSid"].startswith("AC")
    media = [m for m in messages if m["event"] == "media"]
    assert len(media) == 10
    assert all(isinstance(m["sequenceNumber"], str) for m in messages[1:])
    assert [int(m["sequenceNumber"]) for m in messages[1:]] == list(range(1, len(messages)))
    ts = [int(m["media"]["timestamp"]) for m in media]
    assert ts[0] > 0 and np.all(np.diff(ts) == 20)
    assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, 11)]
    assert [m["event"] for m in messages].count("dtmf") == 1 and messages[-1]["event"] == "stop"
    times = [t for t, m in seen if m["event"] == "media"]
    assert 0.15 <= times[-1] - times[0] <= 0.35  # 9 intervals of 20 ms, paced in real time
    assert report.marks_echoed == 1 and report.unexpected_messages == 1
    echoes = [m for m in messages if m["event"] == "mark"]
    assert echoes and echoes[0]["mark"] == {"name": "m"}


async def test_the_report_has_the_servers_close_even_when_the_server_closes_after_a_while() -> None:
    """After ``stop`` the simulator waits (bounded) for the server's close: a server that takes its time (an
    engine finishing the call) is reported with its own code and reason, not the simulator's exit."""
    stopped = trio.Event()

    async def handler(request) -> None:
        ws = await request.accept()
        while json.loads(await ws.get_message())["event"] != "stop":
            pass
        stopped.set()
        await trio.sleep(0.3)  # the slow server under test (not synchronisation: the client must wait for it)
        await ws.aclose(4000, "finished later")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            url = f"ws://127.0.0.1:{server.port}/twilio/media"
            report = await simulate_call(url, b"\x10" * 320, speed="fast")
            nursery.cancel_scope.cancel()
    assert stopped.is_set() and report.error is None
    assert (report.close_code, report.close_reason) == (4000, "finished later"), report.summary()


async def test_unreachable_server_is_reported_not_raised() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(10):
        report = await simulate_call(f"ws://127.0.0.1:{port}/twilio/media", b"\xff" * 160, speed="fast")
    assert report.error and not report.ok
    bad = await simulate_call("http://x/y", b"", speed="fast")
    assert bad.error and "ws://" in bad.error


def test_cli_against_a_live_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ports: queue.Queue[int] = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        async with running_server() as srv:
            ports.put(srv.port)
            while not stop.is_set():
                await trio.sleep(0.02)

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    try:
        port = ports.get(timeout=10)
        audio = tmp_path / "call.ulaw"
        audio.write_bytes(b"\x22" * 800)
        url = f"ws://127.0.0.1:{port}/twilio/media"
        code = main(["simulate-call", url, "--audio", str(audio), "--calls", "2", "--auth-token", TOKEN,
                     "--speed", "fast", "--param", "k=v", "--json", "--seed", "3"])
        doc = json.loads(capsys.readouterr().out)
        assert code == 0 and doc["ok"] == 2 and doc["failed"] == 0
        assert [c["frames_sent"] for c in doc["calls"]] == [5, 5]
        code = main(["simulate-call", url, "--audio", str(audio), "--auth-token", "wrong", "--speed", "fast"])
        out = capsys.readouterr().out
        assert code == 1 and "rejected with HTTP 403" in out
        assert main(["simulate-call", url, "--audio", str(audio), "--param", "novalue"]) == 2
        assert main(["simulate-call", url, "--audio", str(tmp_path / "missing.wav")]) == 2
    finally:
        stop.set()
        thread.join(10)

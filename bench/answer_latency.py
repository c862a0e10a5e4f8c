"""Answer latency (issue 14): the caller's last speech → the first frame of the answer on the Twilio socket.

Three processes: the RTZR emulator and this driver on core 1, the engine (``sori serve`` with the
application channel on) pinned to core 0. The driver runs N simulated Twilio calls (real-time 20 ms frames;
each call is K turns of one phrase clip then 1 s of silence) and one application on the channel, subscribed
to every call, that answers each ``speech.ended`` at once with 200 ms of audio (``play``). Per turn, on the
driver's clock:

- engine-added = first answer frame received by the call − the send time of the frame whose audio ends at
  the endpoint decision (``speech.ended.end_ms``): everything between the audio that completed the hangover
  leaving the caller and the answer arriving back (engine read + endpointer, event to the application over
  the channel, the application's decode and ``play``, the engine's decode, μ-law, pacing, the send);
- of which event: the ``speech.ended`` message reaching the application, and answer back: the application's
  ``play`` → the answer's first frame at the call (the new path of issue 14);
- engine play → first frame: the engine's own histogram ``playback_start_ms`` (play command accepted → first
  frame written), bucket upper bounds;
- caller's last speech → answer = the same, from the frame carrying the end of the last speech audio (adds
  the endpointer's hangover, ``endpointing.end_ms``, a policy, not engine work).

    .venv/bin/python bench/answer_latency.py [--n 1 100] [--turns-1 25] [--turns-n 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
import numpy as np
import trio
import wsproto
from loadgen import client_text_frame
from trio_websocket import open_websocket
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request, TextMessage

from engine.audio import mulaw
from engine.twilio.protocol import (
    ConnectedMessage,
    InboundMedia,
    MarkInfo,
    MarkMessage,
    MediaFormat,
    MediaMessage,
    OutboundMark,
    OutboundMedia,
    StartInfo,
    StartMessage,
    StopMessage,
    decode_outbound,
    encode,
)

SECRET = "bench-app-secret"
SID_MARK = b"MZ" + b"#" * 10  # the length of the bench's streamSids (MZbench00000)
PHRASE = Path(__file__).resolve().parents[1] / "engine" / "demo" / "phrases" / "thanks.wav"
GAP_MS = 1000
ANSWER = mulaw.encode((np.sin(np.arange(1600) / 4) * 6000).astype(np.int16))  # 200 ms


@dataclass
class Turn:
    end_ms: float
    last_speech_ms: float
    event_at: float
    answer_at: float | None = None


@dataclass
class CallState:
    sid: str
    sent: list[float] = field(default_factory=list)  # send time of frame i
    turns: list[Turn] = field(default_factory=list)
    awaiting: Turn | None = None


def call_audio(turns: int) -> bytes:
    with wave.open(str(PHRASE), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    one = np.concatenate([pcm, np.zeros(GAP_MS * 8, np.int16)])
    return mulaw.encode(np.concatenate([np.zeros(400 * 8, np.int16), *([one] * turns)]))


async def run_call(port: int, state: CallState, frames: list[bytes], delay: float) -> None:
    """One call on a raw socket: frames pre-encoded with the zero mask (as bench/loadgen.py does, so the
    driver is not the limit at 100 calls), received frames parsed by wsproto, marks echoed at once."""
    await trio.sleep(delay)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = wsproto.WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target="/twilio/media")))
    accepted = False
    while not accepted:
        ws.receive_data(await stream.receive_some(65536))
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                accepted = True
            elif isinstance(event, RejectConnection):
                raise RuntimeError("rejected")
    sid = state.sid.encode()
    lock = trio.StrictFIFOLock()  # the frame sender and the mark echoes share the socket

    async def send_raw(data: bytes) -> None:
        async with lock:
            await stream.send_all(data)

    async def send_text(text: str) -> None:
        await send_raw(client_text_frame(text.encode()))

    async def receive() -> None:
        buffer = ""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if not isinstance(event, TextMessage):
                    continue
                buffer += event.data
                if not event.message_finished:
                    continue
                message, buffer = decode_outbound(buffer), ""
                if isinstance(message, OutboundMedia) and state.awaiting is not None:
                    state.awaiting.answer_at = trio.current_time()
                    state.awaiting = None
                elif isinstance(message, OutboundMark):  # as if played at once: the answers are short
                    await send_text(encode(MarkMessage(stream_sid=state.sid, mark=MarkInfo(name=message.mark.name))))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await send_text(encode(ConnectedMessage()))
        await send_text(encode(StartMessage(stream_sid=state.sid, sequence_number="1", start=StartInfo(
            stream_sid=state.sid, call_sid="CA" + state.sid[2:], media_format=MediaFormat()))))
        t0 = trio.current_time()
        for i, frame in enumerate(frames):
            await trio.sleep_until(t0 + (i + 1) * 0.02)
            await send_raw(frame.replace(SID_MARK, sid, 1))
            state.sent.append(trio.current_time())
        await trio.sleep(0.5)
        await send_text(encode(StopMessage(stream_sid=state.sid)))
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    await stream.aclose()


def encode_frames(audio: bytes) -> list[bytes]:
    """Every media message of a call, framed once, with a placeholder streamSid of the same length."""
    return [client_text_frame(encode(MediaMessage(
        stream_sid=SID_MARK.decode(), sequence_number=str(i + 2),
        media=InboundMedia(chunk=str(i + 1), timestamp=str(i * 20), payload=audio[i * 160:(i + 1) * 160]))).encode())
        for i in range(len(audio) // 160)]


async def run_app(port: int, calls: dict[str, CallState], ready: trio.Event) -> None:
    answer = base64.b64encode(ANSWER).decode()
    async with open_websocket("127.0.0.1", port, "/app", use_ssl=False,
                              extra_headers=[(b"Authorization", f"Bearer {SECRET}".encode())]) as ws:
        ready.set()
        while True:
            msg = json.loads(await ws.get_message())
            if msg.get("type") != "speech.ended":
                continue
            state = calls[msg["stream_sid"]]
            turn = Turn(msg["end_ms"], msg["last_speech_ms"], trio.current_time())
            state.turns.append(turn)
            state.awaiting = turn
            await ws.send_message(json.dumps({"type": "play", "stream_sid": state.sid, "audio": answer}))


async def drive(twilio_port: int, app_port: int, n: int, turns: int) -> list[CallState]:
    frames = encode_frames(call_audio(turns))
    calls = {f"MZbench{i:05d}": CallState(f"MZbench{i:05d}") for i in range(n)}
    assert all(len(sid) == len(SID_MARK) for sid in calls)
    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_app, app_port, calls, ready)
        await ready.wait()
        async with trio.open_nursery() as call_nursery:
            for i, state in enumerate(calls.values()):
                call_nursery.start_soon(run_call, twilio_port, state, frames, i * 0.0137 % 1.0)
        nursery.cancel_scope.cancel()
    return list(calls.values())


def bucket_quantile(metrics: dict[str, float], name: str, q: float) -> float | None:
    """Upper bound of the histogram bucket holding quantile ``q`` (the engine's own view, coarse)."""
    buckets = sorted((float(key.split('le="')[1].split('"')[0]), value) for key, value in metrics.items()
                     if key.startswith(name + "_bucket{"))
    if not buckets or not buckets[-1][1]:
        return None
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= q * total)


def sender_lag(calls: list[CallState]) -> float:
    """p99 of how late the driver sent its frames (vs t0 + (i + 1) * 20 ms): above a few ms the rig is the limit."""
    lags = []
    for state in calls:
        if state.sent:
            t0 = state.sent[0] - 0.02
            lags.extend((t - (t0 + (i + 1) * 0.02)) * 1000 for i, t in enumerate(state.sent))
    return round(c.pcts(lags)[2], 2) if lags else 0.0


def measure(calls: list[CallState]) -> dict[str, object]:
    added, event, total, back = [], [], [], []
    missing = 0
    for state in calls:
        for t in state.turns:
            if t.answer_at is None:
                missing += 1
                continue
            end_frame = round(t.end_ms / 20) - 1
            speech_frame = max(0, math.ceil(t.last_speech_ms / 20) - 1)
            added.append((t.answer_at - state.sent[end_frame]) * 1000)
            event.append((t.event_at - state.sent[end_frame]) * 1000)
            total.append((t.answer_at - state.sent[speech_frame]) * 1000)
            back.append((t.answer_at - t.event_at) * 1000)
    p = lambda v: tuple(round(x, 2) for x in c.pcts(v)) if v else None  # noqa: E731
    return {"turns": len(added), "missing": missing, "engine_added_p50_p90_p99": p(added),
            "event_p50_p90_p99": p(event), "answer_back_p50_p90_p99": p(back), "sender_lag_p99": sender_lag(calls),
            "last_speech_to_answer_p50_p90_p99": p(total),
            "engine_added_max": round(max(added), 2) if added else None}


def run(n: int, turns: int, workdir: Path) -> dict[str, object]:
    emu_port, port, admin, app_port = c.free_port(), c.free_port(), c.free_port(), c.free_port()
    # cheap: no recognition (STT is not on the answer's path; the emulator shares core 1 with this driver)
    emulator = c.start_emulator(emu_port, max_sessions=max(20, n * 2), log=workdir / f"emu-{n}.log", cpu=1, cheap=True)
    try:
        engine = c.start_engine(port, admin, emu_port, cpu=0, events=workdir / f"events-{n}.jsonl",
                                log=workdir / f"engine-{n}.log", env={"SORI_APP_SECRET": SECRET},
                                settings=["app_channel.enabled=true", f"app_channel.port={app_port}",
                                          f"rtzr.pool.spare={min(n, 50)}", "rtzr.pool.max_sessions=" + str(max(20, n * 2))])
        try:
            c.wait_port(app_port, engine)
            before = c.CpuSample.take(c.real_pid(engine))
            calls = trio.run(drive, port, app_port, n, turns)
            result = measure(calls)
            result["engine_cpu_pct"] = round(c.CpuSample.take(c.real_pid(engine)).percent_since(before), 1)
            metrics = c.scrape_metrics(admin)
            result["engine_play_to_first_frame_p50_p99_bucket_ms"] = (bucket_quantile(metrics, "sori_playback_start_ms", 0.5),
                                                                   bucket_quantile(metrics, "sori_playback_start_ms", 0.99))
            result["app_channel_dropped"] = c.metric(metrics, "sori_app_channel_events_dropped_total")
            result["twilio_send_timeouts"] = c.metric(metrics, "sori_twilio_send_timeouts_total")
        finally:
            c.stop(engine)
    finally:
        c.stop(emulator)
    return {"n": n, "turns_per_call": turns, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--turns-1", type=int, default=25, help="turns per call when n == 1")
    ap.add_argument("--turns-n", type=int, default=3, help="turns per call when n > 1")
    ap.add_argument("--pin-driver", action="store_true", help="run this driver on core 1 (the engine is on core 0)")
    args = ap.parse_args()
    if args.pin_driver and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    print(c.machine(), f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("ANSWER_BENCH_DIR") or tmp)
        for n in args.n:
            print(json.dumps(run(n, args.turns_1 if n == 1 else args.turns_n, work)), flush=True)
    print(f"loadavg after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

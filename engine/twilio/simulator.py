"""A Twilio Media Streams client that behaves as Twilio does: ``sori simulate-call`` and its API.

It opens a signed upgrade with Twilio's headers, sends ``connected`` and ``start`` (realistic
``MZ``/``CA``/``AC`` SIDs, custom parameters), then 160-byte μ-law frames every 20 ms with string
sequence numbers, chunks and timestamps (the first timestamp is not 0), optionally with jitter
(which bunches frames into bursts, as after a network stall) and dropped frames, then ``stop`` and
a close. What the server sends back is played in real time; marks are echoed when the audio queued
before them has played, and all pending marks at once on ``clear``. What was played is reported as
segments heard on the call's timeline (``CallReport.heard``: when each playback started and stopped being
heard, 0 = the start of the caller's first frame) and can be recorded to a WAV (``--record``), silence
where the engine played nothing.

Pacing sleeps to absolute deadlines (``t0 + i * 20 ms``), so there is no drift over long calls.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import random
import struct
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import numpy as np
import numpy.typing as npt
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection, open_websocket

from engine.audio import mulaw
from engine.twilio.protocol import (
    FRAME_BYTES,
    SILENCE,
    ConnectedMessage,
    DtmfInfo,
    DtmfMessage,
    InboundMedia,
    InboundMessage,
    MarkInfo,
    MarkMessage,
    MediaFormat,
    MediaMessage,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    StartInfo,
    StartMessage,
    StopInfo,
    StopMessage,
    TwilioProtocolError,
    decode_outbound,
    encode,
)
from engine.twilio.signature import compute_signature

FRAME_S = 0.020
SEGMENT_GAP_S = 0.1  # a longer silence between played frames starts a new heard segment (another playback)
USER_AGENT = b"Twilio.TmeWs/1.0"
RAW_SUFFIXES = (".ulaw", ".mulaw", ".raw", ".ul", ".mu")
Speed = Literal["realtime", "fast"]


class AudioFileError(ValueError):
    """The audio file cannot be read as WAV or raw μ-law."""


# ---------------------------------------------------------------------------------------------
# Audio files


def load_audio(path: str | os.PathLike[str]) -> bytes:
    """A WAV (any rate, mono/stereo, PCM 8–32 bit, float, μ-law) or raw μ-law file → μ-law 8 kHz."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AudioFileError(f"{p}: {exc.strerror or exc}") from None
    if p.suffix.lower() in RAW_SUFFIXES:
        return data
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFileError(f"{p}: not a WAV file (use .ulaw/.mulaw/.raw for raw 8 kHz μ-law)")
    pcm, rate = decode_wav(data, name=str(p))
    return pcm_to_mulaw8k(pcm, rate)


def decode_wav(data: bytes, *, name: str = "wav") -> tuple[npt.NDArray[np.float32], int]:
    """RIFF/WAVE bytes → (mono float32 in [-1, 1], sample rate). Channels are averaged."""
    fmt: tuple[int, int, int, int] | None = None
    body: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        chunk = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            if len(chunk) < 16:
                raise AudioFileError(f"{name}: truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", chunk)
            if tag == 0xFFFE and len(chunk) >= 26:
                tag = struct.unpack_from("<H", chunk, 24)[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            body = chunk
        pos += 8 + size + (size & 1)
    if fmt is None or body is None:
        raise AudioFileError(f"{name}: WAV without fmt or data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1000 or rate > 384_000:
        raise AudioFileError(f"{name}: unsupported WAV ({channels} channels, {rate} Hz)")
    samples = _wav_samples(body, tag, bits, name)
    usable = len(samples) - len(samples) % channels
    frames = samples[:usable].reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return frames.astype(np.float32), rate


def _wav_samples(body: bytes, tag: int, bits: int, name: str) -> npt.NDArray[np.float32]:
    if tag == 1 and bits == 16:
        return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    if tag == 1 and bits == 8:
        return (np.frombuffer(body, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if tag == 1 and bits == 24:
        raw = np.frombuffer(body[: len(body) // 3 * 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    if tag == 1 and bits == 32:
        return np.frombuffer(body[: len(body) // 4 * 4], dtype="<i4").astype(np.float32) / float(1 << 31)
    if tag == 3 and bits in (32, 64):
        dtype = "<f4" if bits == 32 else "<f8"
        size = bits // 8
        floats = np.frombuffer(body[: len(body) // size * size], dtype=dtype)
        return np.asarray(np.clip(floats, -1, 1), dtype=np.float32)
    if tag == 7 and bits == 8:
        return mulaw.decode(body).astype(np.float32) / 32768.0
    raise AudioFileError(f"{name}: unsupported WAV encoding (format {tag}, {bits} bit)")


def pcm_to_mulaw8k(pcm: npt.NDArray[np.float32], rate: int) -> bytes:
    """Mono float PCM at ``rate`` → μ-law 8 kHz (soxr high quality resampling)."""
    if rate != 8000 and len(pcm):
        import soxr

        pcm = np.asarray(soxr.resample(pcm, rate, 8000, quality="HQ"), dtype=np.float32)
    ints = np.clip(np.round(pcm * 32768.0), -32768, 32767).astype(np.int16)
    return mulaw.encode(ints)


def write_wav(path: str | os.PathLike[str], mulaw_audio: bytes) -> None:
    """μ-law 8 kHz → a 16-bit PCM mono WAV file."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(mulaw.decode(mulaw_audio).astype("<i2").tobytes())


def frames_of(mulaw_audio: bytes) -> list[bytes]:
    """Split into 160-byte frames; the last one is padded with silence, as Twilio always sends 160."""
    frames = [mulaw_audio[i:i + FRAME_BYTES] for i in range(0, len(mulaw_audio), FRAME_BYTES)]
    if frames and len(frames[-1]) < FRAME_BYTES:
        frames[-1] += bytes([SILENCE]) * (FRAME_BYTES - len(frames[-1]))
    return frames


# ---------------------------------------------------------------------------------------------
# One call


@dataclass
class CallReport:
    """What one simulated call did; ``dropped_frames`` lets a test rebuild what the server saw."""

    index: int = 0
    url: str = ""
    stream_sid: str = ""
    call_sid: str = ""
    frames_sent: int = 0
    frames_dropped: int = 0
    dropped_frames: list[int] = field(default_factory=list)
    bytes_sent: int = 0
    dtmf_sent: int = 0
    media_received_bytes: int = 0
    played_bytes: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears_received: int = 0
    unexpected_messages: int = 0
    close_code: int | None = None
    close_reason: str | None = None
    rejected_status: int | None = None
    error: str | None = None
    duration_s: float = 0.0
    received_audio: bytes = b""
    heard: list[dict[str, float]] = field(default_factory=list)  # {"start_s", "end_s"} per playback heard
    marks_heard: list[dict[str, str | float]] = field(default_factory=list)  # {"name", "at_s"} echo times
    played_audio: bytes = b""  # μ-law on the call timeline (``record=True``)
    underruns: int = 0  # gaps inside a playback (the server's audio arrived after the previous frame had played)
    underrun_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.rejected_status is None

    def summary(self) -> str:
        if self.rejected_status is not None:
            return f"call {self.index}: rejected with HTTP {self.rejected_status}"
        line = (f"call {self.index}: {self.stream_sid} frames={self.frames_sent} dropped={self.frames_dropped} "
                f"media_in={self.media_received_bytes}B marks_echoed={self.marks_echoed} "
                f"close={self.close_code} {self.duration_s:.2f}s")
        line += (f" error={self.error}" if self.error else "")
        for i, seg in enumerate(self.heard):
            line += f"\n  playback {i + 1} heard from {seg['start_s']:.3f}s to {seg['end_s']:.3f}s"
        if self.underruns:
            line += f"\n  {self.underruns} underruns ({self.underrun_ms:.0f} ms of gaps inside playbacks)"
        return line

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("received_audio")
        out.pop("played_audio")
        out["ok"] = self.ok
        return out


def make_sid(prefix: str, rng: random.Random) -> str:
    """A Twilio-style SID: two letters and 32 lowercase hex digits (34 chars)."""
    return f"{prefix}{rng.getrandbits(128):032x}"


class _Sender:
    """Serializes sends so sequence numbers are allocated in wire order (media and mark echoes)."""

    def __init__(self, ws: WebSocketConnection, stream_sid: str, timeout_s: float) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.timeout_s = timeout_s
        self.seq = 0
        self.lock = trio.Lock()

    async def send(self, message: InboundMessage) -> None:
        async with self.lock:
            if not isinstance(message, ConnectedMessage):
                self.seq += 1
                message.sequence_number = str(self.seq)
            with trio.fail_after(self.timeout_s):
                await self.ws.send_message(encode(message))

    def skip(self) -> None:
        """A message lost on the way: its sequence number is used but never arrives."""
        self.seq += 1


class _Player:
    """Plays server audio at real time; echoes marks when reached, all pending ones on clear."""

    def __init__(self, sender: _Sender, report: CallReport, *, realtime: bool, keep: bool, record: bool = False) -> None:
        self.sender = sender
        self.report = report
        self.realtime = realtime
        self.keep = keep
        self.record = record
        self.origin: float | None = None  # trio time of the call timeline's 0 (set by the streaming task)
        self.timeline = bytearray()  # what was heard, μ-law, on the call timeline
        self.segment: dict[str, float] | None = None  # the playback being heard
        self.queue: deque[tuple[bool, bytes | str]] = deque()  # (is_mark, audio or name)
        self.wake = trio.Event()
        self.idle = trio.Event()
        self.idle.set()
        self.play_until = 0.0
        self.scope: trio.CancelScope | None = None
        self.received = bytearray()

    def push(self, is_mark: bool, value: bytes | str) -> None:
        self.queue.append((is_mark, value))
        self.idle = trio.Event() if self.idle.is_set() else self.idle
        self.wake.set()

    async def clear(self) -> None:
        marks = [value for is_mark, value in self.queue if is_mark]
        self.queue.clear()
        if self.scope is not None:
            self.scope.cancel()
        if self.segment is not None:  # the audio being heard stops now
            self.segment["end_s"] = round(min(self.segment["end_s"], self._now_s()), 4)
            self.segment = None
            if self.record and self.realtime:
                del self.timeline[max(0, round(self._now_s() * 8000)):]
        self.play_until = min(self.play_until, trio.current_time())
        for name in marks:
            await self.echo(str(name))

    def _now_s(self) -> float:
        return trio.current_time() - (self.origin if self.origin is not None else 0.0)

    async def echo(self, name: str) -> None:
        try:
            await self.sender.send(MarkMessage(stream_sid=self.sender.stream_sid, mark=MarkInfo(name=name)))
        except (ConnectionClosed, trio.TooSlowError):
            return  # the call is ending; the streaming task reports why
        self.report.marks_echoed += 1
        self.report.marks_heard.append({"name": name, "at_s": round(self._now_s(), 4)})

    def _heard(self, chunk: bytes, start: float) -> None:
        """Note ``chunk`` as heard from trio time ``start``: a new segment after a gap, and the recording."""
        origin = self.origin if self.origin is not None else start
        at_s = start - origin
        end_s = at_s + len(chunk) / 8000
        seg = self.segment
        if seg is None or at_s > seg["end_s"] + SEGMENT_GAP_S:
            seg = self.segment = {"start_s": round(at_s, 4), "end_s": round(end_s, 4)}
            self.report.heard.append(seg)
        else:
            if at_s > seg["end_s"] + 0.001:  # the audio ran dry for a moment: a glitch a caller would hear
                self.report.underruns += 1
                self.report.underrun_ms = round(self.report.underrun_ms + (at_s - seg["end_s"]) * 1000, 1)
            seg["end_s"] = round(end_s, 4)
        if self.record:
            pos = max(0, round(at_s * 8000))
            if pos > len(self.timeline):
                self.timeline += bytes([SILENCE]) * (pos - len(self.timeline))
            self.timeline[pos:pos + len(chunk)] = chunk

    async def run(self) -> None:
        while True:
            if not self.queue:
                self.idle.set()
                self.wake = trio.Event()
                await self.wake.wait()
                continue
            is_mark, value = self.queue.popleft()
            if is_mark:
                await self.echo(str(value))
                continue
            assert isinstance(value, bytes)
            start = max(self.play_until, trio.current_time())
            self.play_until = start + len(value) / 8000
            self._heard(value, start)
            if self.realtime:
                with trio.CancelScope() as self.scope:
                    await trio.sleep_until(self.play_until)
                self.scope = None
            self.report.played_bytes += len(value)


async def simulate_call(
    url: str,
    mulaw_audio: bytes,
    *,
    auth_token: str | None = None,
    speed: Speed = "realtime",
    jitter_ms: float = 0.0,
    drop_rate: float = 0.0,
    custom_parameters: Mapping[str, str] | None = None,
    tracks: Sequence[str] = ("inbound",),
    dtmf: Mapping[int, str] | None = None,
    trailing_silence_ms: int = 0,
    seed: int | None = None,
    index: int = 0,
    sign_url: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    connect_timeout: float = 10.0,
    send_timeout: float = 5.0,
    keep_received: bool = False,
    record: bool = False,
) -> CallReport:
    """Play ``mulaw_audio`` (8 kHz μ-law) into ``url`` as one Twilio Media Stream.

    ``dtmf`` maps a frame index to a digit sent just before that frame. Dropped frames (chance
    ``drop_rate``; never the first) advance chunk, timestamp and sequence number but are not sent.
    Never raises for network trouble: failures land in ``CallReport.error``/``rejected_status``.
    """
    rng = random.Random(seed)
    report = CallReport(index=index, url=url)
    report.stream_sid = make_sid("MZ", rng)
    report.call_sid = make_sid("CA", rng)
    account_sid = make_sid("AC", rng)
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        report.error = f"not a ws:// or wss:// URL: {url}"
        return report
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    resource = parts.path or "/"
    headers = [(b"User-Agent", USER_AGENT)]
    if auth_token:
        signed = sign_url or f"{parts.scheme}://{parts.netloc}{resource}"
        headers.append((b"X-Twilio-Signature", compute_signature(auth_token, signed).encode()))
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra_headers)
    frames = frames_of(mulaw_audio + bytes([SILENCE]) * (trailing_silence_ms * 8))
    began = time.monotonic()
    try:
        async with open_websocket(parts.hostname, port, resource, use_ssl=parts.scheme == "wss",
                                  extra_headers=headers, message_queue_size=64,
                                  connect_timeout=connect_timeout, disconnect_timeout=send_timeout) as ws:
            sender = _Sender(ws, report.stream_sid, send_timeout)
            player = _Player(sender, report, realtime=speed == "realtime", keep=keep_received, record=record)
            server_closed = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(player.run)
                nursery.start_soon(_receive, ws, player, report, server_closed)
                try:
                    await _stream(sender, frames, report, rng, player, account_sid=account_sid, speed=speed,
                                  jitter_ms=jitter_ms, drop_rate=drop_rate, tracks=tracks,
                                  custom_parameters=dict(custom_parameters or {}), dtmf=dtmf or {})
                    # Twilio's stream is over once stop is sent; the server answers it by closing. Wait for that
                    # close (bounded) so the report's close code/reason are the server's, not our own exit's:
                    # leaving at once raced the server's close and reported ours whenever the server was slower.
                    with trio.move_on_after(send_timeout):
                        await server_closed.wait()
                except ConnectionClosed:
                    report.error = "closed by server before stop"
                except trio.TooSlowError:
                    report.error = f"send took longer than {send_timeout} s"
                nursery.cancel_scope.cancel()
            if keep_received:
                report.received_audio = bytes(player.received)
            if record:
                report.played_audio = bytes(player.timeline)
        closed = ws.closed
        if closed is not None:
            report.close_code, report.close_reason = closed.code, closed.reason
    except ConnectionRejected as exc:
        report.rejected_status = exc.status_code
    except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    report.duration_s = round(time.monotonic() - began, 3)
    return report


async def _stream(sender: _Sender, frames: list[bytes], report: CallReport, rng: random.Random, player: _Player, *,
                  account_sid: str, speed: Speed, jitter_ms: float, drop_rate: float, tracks: Sequence[str],
                  custom_parameters: dict[str, str], dtmf: Mapping[int, str]) -> None:
    sid = report.stream_sid
    await sender.send(ConnectedMessage())
    await sender.send(StartMessage(stream_sid=sid, start=StartInfo(
        stream_sid=sid, account_sid=account_sid, call_sid=report.call_sid, tracks=list(tracks),
        custom_parameters=custom_parameters, media_format=MediaFormat())))
    first_ts = rng.randrange(20, 120)
    t0 = trio.current_time()
    player.origin = t0  # frame i carries the audio of [i * 20 ms, (i + 1) * 20 ms) on the call timeline
    last_send = t0
    track = "inbound" if "inbound" in tracks else tracks[0]
    for i, frame in enumerate(frames):
        if speed == "realtime":
            # Absolute deadlines: no drift; jitter only delays, and never reorders (TCP).
            due = max(t0 + (i + 1) * FRAME_S + rng.uniform(0, jitter_ms / 1000), last_send)
            await trio.sleep_until(due)
            last_send = due
        if i in dtmf:
            await sender.send(DtmfMessage(stream_sid=sid, dtmf=DtmfInfo(digit=dtmf[i])))
            report.dtmf_sent += 1
        if i > 0 and drop_rate > 0 and rng.random() < drop_rate:
            sender.skip()
            report.frames_dropped += 1
            report.dropped_frames.append(i)
            continue
        await sender.send(MediaMessage(stream_sid=sid, media=InboundMedia(
            chunk=str(i + 1), timestamp=str(first_ts + i * 20), payload=frame, track=track)))
        report.frames_sent += 1
        report.bytes_sent += len(frame)
    await sender.send(StopMessage(stream_sid=sid, stop=StopInfo(account_sid=account_sid, call_sid=report.call_sid)))


async def _receive(ws: WebSocketConnection, player: _Player, report: CallReport, server_closed: trio.Event) -> None:
    while True:
        try:
            text = await ws.get_message()
        except ConnectionClosed:
            server_closed.set()
            return
        try:
            message = decode_outbound(text)
        except TwilioProtocolError:
            report.unexpected_messages += 1  # Twilio would log warning 31951 and carry on
            continue
        if isinstance(message, OutboundMedia):
            payload = message.media.payload
            report.media_received_bytes += len(payload)
            if player.keep:
                player.received += payload
            player.push(False, payload)
        elif isinstance(message, OutboundMark):
            report.marks_received += 1
            player.push(True, message.mark.name)
        elif isinstance(message, OutboundClear):
            report.clears_received += 1
            await player.clear()


async def simulate_calls(url: str, mulaw_audio: bytes, *, calls: int = 1, stagger_ms: float = 0.0,
                         seed: int | None = None, **kwargs: Any) -> list[CallReport]:
    """Run ``calls`` concurrent simulated calls (each with its own SIDs); reports in call order."""
    reports: list[CallReport | None] = [None] * calls

    async def one(i: int) -> None:
        await trio.sleep(i * stagger_ms / 1000)
        call_seed = None if seed is None else seed + i
        reports[i] = await simulate_call(url, mulaw_audio, seed=call_seed, index=i + 1, **kwargs)

    async with trio.open_nursery() as nursery:
        for i in range(calls):
            nursery.start_soon(one, i)
    return [r for r in reports if r is not None]


# ---------------------------------------------------------------------------------------------
# CLI: sori simulate-call


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the sori Twilio endpoint, e.g. ws://127.0.0.1:8080/twilio/media")
    p.add_argument("--audio", required=True, help="WAV (any rate, mono/stereo) or raw μ-law (.ulaw/.mulaw/.raw)")
    p.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    p.add_argument("--auth-token", default=None, help="Twilio auth token to sign with (env TWILIO_AUTH_TOKEN)")
    p.add_argument("--speed", choices=["realtime", "fast"], default="realtime")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="random extra delay per frame (bursts)")
    p.add_argument("--drop-rate", type=float, default=0.0, help="fraction of frames lost (0..1)")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="customParameters entry")
    p.add_argument("--trailing-silence-ms", type=int, default=0, help="silence after the audio, before stop")
    p.add_argument("--stagger-ms", type=float, default=0.0, help="delay between call starts")
    p.add_argument("--seed", type=int, default=None, help="seed for SIDs, jitter and drops")
    p.add_argument("--sign-url", default=None, help="URL to sign if not the one connected to (behind a proxy)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of summary lines")
    p.add_argument("--record", metavar="FILE.wav", default=None,
                   help="write what the engine played (8 kHz, on the call's timeline) to this WAV; with --calls N "
                        "each call gets FILE-<n>.wav")


def run_cli(args: argparse.Namespace) -> int:
    """Exit 0 when every call streamed and closed, 1 otherwise, 2 on bad arguments."""
    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"sori simulate-call: --param needs K=V, got {item!r}", file=sys.stderr)
            return 2
        params[key] = value
    if args.calls < 1 or not 0 <= args.drop_rate < 1 or args.jitter_ms < 0:
        print("sori simulate-call: --calls >= 1, 0 <= --drop-rate < 1, --jitter-ms >= 0", file=sys.stderr)
        return 2
    try:
        audio = load_audio(args.audio)
    except AudioFileError as exc:
        print(f"sori simulate-call: {exc}", file=sys.stderr)
        return 2
    token = args.auth_token or os.environ.get("TWILIO_AUTH_TOKEN") or None
    run = functools.partial(
        simulate_calls, args.url, audio, calls=args.calls, stagger_ms=args.stagger_ms, seed=args.seed,
        auth_token=token, speed=args.speed, jitter_ms=args.jitter_ms, drop_rate=args.drop_rate,
        custom_parameters=params, trailing_silence_ms=args.trailing_silence_ms, sign_url=args.sign_url,
    )
    reports = trio.run(functools.partial(run, record=bool(args.record)))
    if args.record:
        for r in reports:
            path = Path(args.record)
            if len(reports) > 1:
                path = path.with_name(f"{path.stem}-{r.index}{path.suffix or '.wav'}")
            write_wav(path, r.played_audio)
    out = io.StringIO()
    if args.json:
        doc = {"calls": [r.to_json() for r in reports],
               "ok": sum(r.ok for r in reports), "failed": sum(not r.ok for r in reports)}
        out.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        for r in reports:
            out.write(r.summary() + "\n")
    sys.stdout.write(out.getvalue())
    return 0 if all(r.ok for r in reports) else 1

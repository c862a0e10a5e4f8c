"""A Twilio Media Streams load generator for the benchmarks, built to drive many calls from one core.

Run alone (this script, beside ``sori emulate-rtzr``: the two-process rig) or inside bench/rig.py (the
one-process rig, bench/capacity.py's default), which calls :func:`main_async` with the emulator's read hub as
``after_tick``.

The same wire as ``sori simulate-call``: a WebSocket upgrade, ``connected``, ``start`` (sequence 1),
160-byte μ-law ``media`` frames every 20 ms (sequence numbers, chunks and timestamps in order), ``stop``,
then the engine closes. What makes it cheap:

- **Pre-encoded frames.** Every media message is encoded once per audio file at start-up, already framed
  as a client TEXT frame. RFC 6455 lets a client pick any masking key; this one uses the zero key, so a
  frame's bytes are the JSON itself, and the only per-call part, the 34-character ``streamSid``, is
  spliced in: per frame the sender does one ``bytes.join`` and one non-blocking ``send`` syscall.
- **One ticker for all calls.** One task wakes every 2 ms and writes the next frame to every call of the
  current phase group (10 groups, so calls are spread over the 20 ms as independent Twilio calls are);
  no task wake-up per call per frame. It waits on a periodic timerfd (Linux; ``--no-timerfd``: ``trio.sleep_until``
  as before), which costs no cancel scope or Cancelled exception per tick and fires on time (Trio's epoll
  timeout is rounded up to whole ms). Only a socket the engine stops draining gets its own flusher task.
  Its hot path (a call mid-stream, nothing backlogged) is ``Conn.write`` inlined. When the process was held up
  (a stall of the VM's core, RT throttling) every overdue tick is written back to back before anything else runs
  (``--catch-up``, an experiment, off by default; without it one tick per wake-up, the emulator's reads between them), so a stall of S ms
  makes ~S / 2 ms ticks late rather than ~S / (2 ms × the core's idle share). What it cannot make cheap
  is the kernel: a loopback TCP ``send`` costs ≈ 7–13 µs of system time on the 2-vCPU VM (BENCHMARKS.md).

Prints (or writes to ``--out``) one JSON document: per call ``t0_wall`` (Unix time at which audio position 0
started, so frame k is due at ``t0_wall + (k + 1) * 20 ms``), and the rig's own lag: for every 2 ms tick,
the time its last write returned minus the tick's due time (``tick_lag_ms``, tick i due at
``tick_start_wall + i * tick_step_s``; ``sender_lag_ms_p50/p99/max`` summarise it) and its thread CPU writing
(``tick_cpu_ms``: the one-process rig's load-generator share), and every frame's send lag by the engine's frame-lag
rule (sent − due, minus the call's least (sent − due) so far: the origin is its least-delayed frame), as one
histogram per second of ticks (``frame_lag_hist``, 0.5 ms buckets; ``frame_lag_max_ms``; :func:`frame_lag` reads
a window's p99 / max: what the rig adds to the engine's ``twilio_frame_lag_ms``). ``--progress FILE`` appends
``{"event": "all_live"}`` (every call is streaming) and ``{"event": "first_done"}`` lines as they happen.

    python bench/loadgen.py ws://127.0.0.1:8080/twilio/media --calls 50 --audio a.wav b.wav --repeat 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import _common
import trio
import trio.testing
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

from engine.twilio.protocol import (
    SILENCE,
    ConnectedMessage,
    InboundMedia,
    MediaFormat,
    MediaMessage,
    StartInfo,
    StartMessage,
    StopInfo,
    StopMessage,
    encode,
)
from engine.twilio.simulator import frames_of, load_audio

FRAME_S = 0.020
GROUPS = 10
TIMER_EARLY_S = 0.0002  # a timer expiry this close before a tick's due time is the tick's (clock rounding)
# Per-frame send lag (Ticker.frame_hist): one histogram per second of ticks, LAG_BUCKET_MS wide buckets, the last
# one everything from LAG_BUCKETS * LAG_BUCKET_MS up.
LAG_BUCKET_MS = 0.5
LAG_PER_S = 1000 / LAG_BUCKET_MS
LAG_BUCKETS = 200
SECOND_TICKS = GROUPS * 50  # ticks per second
SID_PLACEHOLDER = "MZ" + "0" * 32  # every streamSid is "MZ" + 32 hex digits: same length, so frames can be shared


def client_text_frame(payload: bytes) -> bytes:
    """A complete, final client TEXT frame masked with the all-zero key (so the payload bytes are unchanged)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


@dataclass(frozen=True)
class Encoded:
    """One audio file's media frames (with repeats and trailing silence), framed once: frame k of a call is
    ``before[k] + sid + after[k]``."""

    before: list[bytes]
    after: list[bytes]

    @staticmethod
    def of(frames: list[bytes]) -> Encoded:
        before: list[bytes] = []
        after: list[bytes] = []
        sid = SID_PLACEHOLDER.encode()
        for k, payload in enumerate(frames):
            # connected has no sequence number and start is 1, so media frame k is k + 2
            frame = client_text_frame(encode(MediaMessage(
                stream_sid=SID_PLACEHOLDER, sequence_number=str(k + 2),
                media=InboundMedia(chunk=str(k + 1), timestamp=str(k * 20), payload=payload, track="inbound"))).encode())
            head, sep, tail = frame.partition(sid)
            assert sep and sid not in tail
            before.append(head)
            after.append(tail)
        return Encoded(before, after)


@dataclass(slots=True)
class Conn:
    index: int
    name: str
    frames: Encoded
    before: list[bytes] = field(init=False)  # frames.before / frames.after, one attribute lookup less per frame
    after: list[bytes] = field(init=False)
    last: int = field(init=False)  # len(before)
    send: Callable[[bytes], int] = field(init=False)  # raw.send, bound once
    raw: socket.socket | None = None  # the non-blocking socket the ticker writes to directly
    stream: trio.SocketStream | None = None  # the same socket, for the handshake and the reader
    ws: wsproto.WSConnection = field(default_factory=lambda: wsproto.WSConnection(wsproto.ConnectionType.CLIENT))
    stream_sid: str = ""
    call_sid: str = ""
    account_sid: str = ""
    sid: bytes = b""
    sent: int = 0
    t0: float = 0.0  # trio clock: audio position 0
    least: float = math.inf  # the least (sent - due) of this call's frames so far: the frame-lag origin
    error: str | None = None
    backlog: bytearray = field(default_factory=bytearray)  # bytes the socket did not take yet (engine not reading)
    stalls: int = 0  # how often a write found the socket full
    server_messages: int = 0  # text messages from the engine (it sends none today; a mark would need an echo)
    wake: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    closed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.before, self.after = self.frames.before, self.frames.after
        self.last = len(self.before)

    def write(self, data: bytes) -> None:
        """Queue-free write from the ticker or the reader: whole frames stay in order via the backlog."""
        if self.error is not None:
            return
        if self.backlog:
            self.backlog += data
            return
        assert self.raw is not None
        try:
            n = self.raw.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.fail(f"send: {type(exc).__name__}")
            return
        if n < len(data):
            self.backlog += data[n:]
            self.stalls += 1
            self.wake.set()

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self.done.set()
        self.closed.set()


class Ticker:
    """Every 2 ms, writes the next frame to every active call of the current phase group."""

    def __init__(self, calls: int, progress: str | None, after_tick: Callable[[float, int], bool] | None = None,
                 *, use_timerfd: bool = True, on_wake: Callable[[float], None] | None = None,
                 catch_up: bool = False) -> None:
        self.groups: list[list[Conn]] = [[] for _ in range(GROUPS)]
        self.lag: list[float] = []
        self.cpu: list[float] = []  # per tick, this thread's CPU time writing the frames (the one-process rig's split)
        self.start = 0.0
        self.calls = calls
        self.live = 0
        self.failed = 0
        self.finished = 0
        self.progress = progress
        # bench/rig.py: the emulator reads its input here, after the tick's writes, until the next tick is due
        # (its first argument; the second: how many ticks were just written, > 1 after a catch-up); False: it
        # stopped there with input left for the next tick (recorded per tick, for each tick written).
        self.after_tick = after_tick
        self.deferred: list[int] = []
        self.use_timerfd = use_timerfd
        self.on_wake = on_wake  # each tick's wake-up lag, s (bench/rig.py: the emulator's loop-lag histogram)
        self.catch_up = catch_up  # overdue ticks written back to back (--catch-up, an experiment; default: one per wake-up)
        self.merged = 0  # ticks written right after another one, without a wake-up of their own
        self.frame_hist: list[list[int]] = []  # per second of ticks: frames by send lag (LAG_BUCKET_MS buckets)
        self.frame_max: list[float] = []  # per second of ticks: the largest frame send lag, s

    def live_or_failed(self, live: int = 0, failed: int = 0) -> None:
        """Count a call that started streaming or failed to connect; ``all_live`` once every call is one or the other."""
        before = self.live + self.failed
        self.live += live
        self.failed += failed
        if before < self.calls <= self.live + self.failed:
            self.note("all_live")

    def note(self, event: str) -> None:
        if self.progress:
            with open(self.progress, "a") as f:
                f.write(json.dumps({"event": event, "t_wall": time.time()}) + "\n")

    async def run(self, start: float) -> None:
        self.start = start
        step = FRAME_S / GROUPS
        tick = 0
        clock = trio.current_time
        cpu = time.thread_time
        join = b"".join
        timer = TimerFd.periodic(step) if self.use_timerfd else None
        # Frames are timed on perf_counter (a C call; Trio's clock is perf_counter + a fixed offset), or on Trio's
        # clock itself under a test's MockClock.
        frame_clock: Callable[[], float] = clock if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock) \
            else time.perf_counter
        offset = clock() - frame_clock()
        try:
            while True:
                due = start + tick * step
                if timer is None:
                    await trio.sleep_until(due)
                elif clock() < due - TIMER_EARLY_S:
                    while clock() < due - TIMER_EARLY_S:  # the timer's periods end at start + k * step
                        await timer.wait()
                else:  # behind: the next tick at once, as sleep_until a past deadline does
                    await trio.lowlevel.checkpoint()
                if self.on_wake is not None:
                    self.on_wake(clock() - due)
                # This tick, and every later one already due (the ticker was held up: a stall of the process or
                # of the VM's core), back to back: the overdue frames go out at write speed, not one tick's
                # worth per 2 ms with the emulator's reads in between, so a stall of S ms delays ~S / 2 ms ticks
                # instead of ~S / (2 ms × the core's idle share). The emulator then reads the merged ticks' input.
                merged = 0
                while True:
                    if tick % SECOND_TICKS == 0:
                        self.frame_hist.append([0] * (LAG_BUCKETS + 1))
                        self.frame_max.append(0.0)
                    cpu_a = cpu()
                    self.tick(self.groups[tick % GROUPS], due, join, frame_clock, due - offset)
                    self.lag.append(clock() - due)
                    self.cpu.append(cpu() - cpu_a)
                    tick += 1
                    merged += 1
                    due = start + tick * step
                    if not self.catch_up or clock() < due - TIMER_EARLY_S:
                        break
                self.merged += merged - 1
                if self.after_tick is not None:
                    flag = 0 if self.after_tick(due, merged) else 1
                    self.deferred.extend([flag] * merged)
        finally:
            if timer is not None:
                timer.close()

    def tick(self, group: list[Conn], due: float, join: Callable[[Iterable[bytes]], bytes],
             frame_clock: Callable[[], float], frame_due: float) -> None:
        """Every call of ``group`` its next frame (a call's first frame starts its clock; after its last, ``stop``).
        Each frame's send lag goes into this second's histogram (``frame_due``: ``due`` on ``frame_clock``)."""
        gone: list[Conn] = []
        hist = self.frame_hist[-1]
        top = self.frame_max[-1]
        for conn in group:
            k = conn.sent
            if 0 < k < conn.last and not conn.backlog and conn.error is None:
                # The hot path, Conn.write inlined (≈ 30 % of the ticker's Python per frame): one join, one send.
                data = join((conn.before[k], conn.sid, conn.after[k]))
                try:
                    n = conn.send(data)
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    conn.fail(f"send: {type(exc).__name__}")
                    gone.append(conn)
                    continue
                if n < len(data):
                    conn.backlog += data[n:]
                    conn.stalls += 1
                    conn.wake.set()
                conn.sent = k + 1
                # The engine's frame-lag rule: lag = (sent - due) - the call's least (sent - due) so far.
                late = frame_clock() - frame_due
                if late < conn.least:
                    conn.least = late
                late -= conn.least
                i = int(late * LAG_PER_S)
                hist[i if i < LAG_BUCKETS else LAG_BUCKETS] += 1
                if late > top:
                    top = self.frame_max[-1] = late
                continue
            if k == 0:
                conn.t0 = due - FRAME_S
                self.live_or_failed(live=1)
            if k < len(conn.frames.before):
                conn.write(b"".join((conn.frames.before[k], conn.sid, conn.frames.after[k])))
                conn.sent = k + 1
                late = frame_clock() - frame_due
                conn.least = min(conn.least, late)
                i = int((late - conn.least) * LAG_PER_S)
                hist[min(i, LAG_BUCKETS)] += 1
                top = self.frame_max[-1] = max(top, late - conn.least)
            else:
                gone.append(conn)
                conn.write(client_text_frame(encode(StopMessage(
                    stream_sid=conn.stream_sid, sequence_number=str(k + 2),
                    stop=StopInfo(account_sid=conn.account_sid, call_sid=conn.call_sid))).encode()))
                conn.done.set()
                self.finished += 1
                if self.finished == 1:
                    self.note("first_done")
                continue
            if conn.error is not None:
                gone.append(conn)
        for conn in gone:
            group.remove(conn)


class TimerFd:
    """A periodic Linux timerfd: the ticker waits for it with ``trio.lowlevel.wait_readable`` instead of
    ``trio.sleep_until`` (a cancel scope and a Cancelled exception per tick, ≈ 40 µs of the ≈ 150 µs a bare tick
    costs on the 2-vCPU VM; 500 ticks a second). It also fires on time, where Trio's epoll timeout is rounded up
    to whole ms. None where timerfd is missing (the ticker then sleeps as before)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @staticmethod
    def periodic(step_s: float) -> TimerFd | None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            create, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError):
            return None

        class Timespec(ctypes.Structure):
            _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("interval", Timespec), ("value", Timespec)]

        fd = create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC (Trio's clock), TFD_NONBLOCK | TFD_CLOEXEC
        if fd < 0:
            return None
        ns = round(step_s * 1e9)
        period = Timespec(ns // 1_000_000_000, ns % 1_000_000_000)
        if settime(fd, 0, ctypes.byref(Itimerspec(period, period)), None) != 0:
            os.close(fd)
            return None
        return TimerFd(fd)

    async def wait(self) -> None:
        await trio.lowlevel.wait_readable(self.fd)
        try:
            os.read(self.fd, 8)  # the expirations since the last read (the ticker counts ticks by the clock)
        except BlockingIOError:
            pass

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        os.close(self.fd)


async def run_call(conn: Conn, host: str, port: int, path: str, ticker: Ticker, rng: random.Random) -> None:
    conn.stream_sid = f"MZ{rng.getrandbits(128):032x}"
    conn.call_sid = f"CA{rng.getrandbits(128):032x}"
    conn.account_sid = f"AC{rng.getrandbits(128):032x}"
    conn.sid = conn.stream_sid.encode()
    assert len(conn.sid) == len(SID_PLACEHOLDER)
    try:
        with trio.fail_after(20):
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.setblocking(False)
            tsock = trio.socket.from_stdlib_socket(raw)
            conn.raw, conn.send = raw, raw.send
            await tsock.connect((host, port))
            conn.stream = trio.SocketStream(tsock)  # sets TCP_NODELAY
            await conn.stream.send_all(conn.ws.send(Request(host=f"{host}:{port}", target=path,
                                                            extra_headers=[(b"User-Agent", b"Twilio.TmeWs/1.0")])))
            accepted = False
            while not accepted:
                data = await conn.stream.receive_some(65536)
                if not data:
                    raise ConnectionError("closed during handshake")
                conn.ws.receive_data(data)
                for event in conn.ws.events():
                    if isinstance(event, RejectConnection):
                        raise ConnectionError(f"rejected {event.status_code}")
                    if isinstance(event, AcceptConnection):
                        accepted = True
            head = [encode(ConnectedMessage()), encode(StartMessage(
                stream_sid=conn.stream_sid, sequence_number="1", start=StartInfo(
                    stream_sid=conn.stream_sid, account_sid=conn.account_sid, call_sid=conn.call_sid,
                    tracks=["inbound"], custom_parameters={"corpus": conn.name}, media_format=MediaFormat())))]
            await conn.stream.send_all(b"".join(client_text_frame(m.encode()) for m in head))
    except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        conn.fail(f"connect: {type(exc).__name__}: {exc}")
        ticker.live_or_failed(failed=1)
        if conn.stream is not None:
            await trio.aclose_forcefully(conn.stream)
        elif conn.raw is not None:
            conn.raw.close()
        return
    ticker.groups[conn.index % GROUPS].append(conn)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_reader, conn)
        nursery.start_soon(_flusher, conn)
        await conn.done.wait()
        with trio.move_on_after(30):
            await conn.closed.wait()
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(conn.stream)


async def _flusher(conn: Conn) -> None:
    """Drains the backlog of a call whose socket was full (the engine not reading fast enough)."""
    assert conn.raw is not None
    while True:
        await conn.wake.wait()
        conn.wake = trio.Event()
        while conn.backlog and conn.error is None:
            await trio.lowlevel.wait_writable(conn.raw)
            try:
                n = conn.raw.send(conn.backlog)
            except BlockingIOError:
                continue
            except OSError as exc:
                conn.fail(f"send: {type(exc).__name__}")
                return
            del conn.backlog[:n]


async def _reader(conn: Conn) -> None:
    assert conn.stream is not None
    try:
        while True:
            data = await conn.stream.receive_some(65536)
            if not data:
                break
            conn.ws.receive_data(data)
            for event in conn.ws.events():
                if isinstance(event, CloseConnection):
                    if conn.ws.state == wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        conn.write(conn.ws.send(event.response()))
                    conn.closed.set()
                    return
                if isinstance(event, Ping):
                    conn.write(conn.ws.send(event.response()))
                elif isinstance(event, TextMessage):
                    conn.server_messages += 1
    except (trio.BrokenResourceError, trio.ClosedResourceError, wsproto.utilities.RemoteProtocolError):
        pass
    conn.closed.set()


def build_calls(args: argparse.Namespace) -> list[Conn]:
    silence = frames_of(bytes([SILENCE]) * (args.trailing_silence_ms * 8))
    encoded: dict[str, Encoded] = {}
    for p in args.audio:
        encoded[p] = Encoded.of(frames_of(load_audio(p)) * args.repeat + silence)
    return [Conn(i, args.audio[i % len(args.audio)], encoded[args.audio[i % len(args.audio)]]) for i in range(args.calls)]


async def main_async(args: argparse.Namespace, after_tick: Callable[[float, int], bool] | None = None,
                     on_wake: Callable[[float], None] | None = None) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    conns = build_calls(args)
    # The timer runs on the system's clock: not under a test's MockClock.
    timerfd = getattr(args, "timerfd", True) and not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    ticker = Ticker(len(conns), args.progress, after_tick, use_timerfd=timerfd, on_wake=on_wake,
                    catch_up=getattr(args, "catch_up", False))
    rng = random.Random(args.seed)
    wall_offset = time.time() - trio.current_time()
    began = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run, trio.current_time())
        async with trio.open_nursery() as calls:
            for conn in conns:
                calls.start_soon(run_call, conn, host, port, path, ticker, rng)
                await trio.sleep(args.stagger_ms / 1000)
        nursery.cancel_scope.cancel()
    lags = sorted(ticker.lag)
    return {
        "calls": [{"index": c.index, "audio": c.name, "stream_sid": c.stream_sid, "call_sid": c.call_sid,
                   "t0_wall": c.t0 + wall_offset, "frames_sent": c.sent, "error": c.error, "stalls": c.stalls,
                   "server_messages": c.server_messages} for c in conns],
        "ok": sum(c.error is None for c in conns),
        "sender_lag_ms_p50": 1000 * _common.percentile(lags, 50) if lags else 0.0,
        "sender_lag_ms_p99": 1000 * _common.percentile(lags, 99) if lags else 0.0,
        "sender_lag_ms_max": 1000 * lags[-1] if lags else 0.0,
        "stalls": sum(c.stalls for c in conns),
        "tick_start_wall": ticker.start + wall_offset,
        "tick_step_s": FRAME_S / GROUPS,
        "tick_lag_ms": [round(1000 * x, 3) for x in ticker.lag],
        "tick_cpu_ms": [round(1000 * x, 3) for x in ticker.cpu],
        "tick_deferred": ticker.deferred,  # after_tick stopped at the next tick with work left (one-process rig)
        "ticks_merged": ticker.merged,
        # per second of ticks (second i: ticks due in [tick_start_wall + i, + i + 1)): frames by send lag
        "frame_lag_bucket_ms": LAG_BUCKET_MS,
        "frame_lag_hist": [_trim(h) for h in ticker.frame_hist],
        "frame_lag_max_ms": [round(1000 * x, 3) for x in ticker.frame_max],
        "duration_s": round(time.monotonic() - began, 2),
    }


def _trim(counts: list[int]) -> list[int]:
    """A histogram without its trailing empty buckets."""
    n = len(counts)
    while n and not counts[n - 1]:
        n -= 1
    return counts[:n]


def frame_lag(load: dict[str, Any], t_from: float, t_to: float) -> tuple[float, float, int]:
    """Per-frame send lag (ms) p99 and max, and the frame count, over the whole seconds of ticks due inside
    [t_from, t_to) (wall clock); p99 is its bucket's upper bound. NaN without ``frame_lag_hist`` (an older tree)."""
    hists: list[list[int]] = load.get("frame_lag_hist") or []
    if not hists:
        return math.nan, math.nan, 0
    start, width = float(load["tick_start_wall"]), float(load["frame_lag_bucket_ms"])
    lo, hi = max(0, math.ceil(t_from - start)), min(len(hists), math.floor(t_to - start))
    total: list[int] = []
    top = 0.0
    for i in range(lo, hi):
        h = hists[i]
        if len(h) > len(total):
            total += [0] * (len(h) - len(total))
        for j, n in enumerate(h):
            total[j] += n
        top = max(top, float(load["frame_lag_max_ms"][i]))
    frames = sum(total)
    if not frames:
        return math.nan, math.nan, 0
    need, seen = 0.99 * frames, 0
    for j, n in enumerate(total):
        seen += n
        if seen >= need:
            break
    # the last bucket holds everything from LAG_BUCKETS * width up: a lower bound there
    return min(j + 1, LAG_BUCKETS) * width, round(top, 2), frames


def configure_parser(p: argparse.ArgumentParser) -> None:
    """The load generator's options (bench/rig.py adds the emulator's to the same parser)."""
    p.add_argument("url", help="the engine's Twilio media WebSocket, e.g. ws://127.0.0.1:8080/twilio/media")
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--audio", nargs="+", required=True)
    p.add_argument("--repeat", type=int, default=1, help="play each call's audio this many times")
    p.add_argument("--stagger-ms", type=float, default=10.0)
    p.add_argument("--trailing-silence-ms", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--progress", metavar="FILE", help="append all_live / first_done lines here as they happen")
    p.add_argument("--out", default="-")
    p.add_argument("--catch-up", action=argparse.BooleanOptionalAction, default=False,
                   help="a held-up ticker writes every overdue tick back to back (default no: one tick per wake-up; "
                        "with it, the engine's frames reached it late in 300-call steps, BENCHMARKS.md round 7)")
    p.add_argument("--timerfd", action=argparse.BooleanOptionalAction, default=True,
                   help="the ticker waits on a periodic timerfd (Linux), not trio.sleep_until")


def write_doc(doc: dict[str, object], out: str) -> None:
    text = json.dumps(doc)
    if out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(out, "w") as f:
            f.write(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configure_parser(p)
    args = p.parse_args()
    write_doc(trio.run(main_async, args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

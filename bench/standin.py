"""A trivial engine stand-in for measuring the load rig alone: Twilio in, RTZR emulator out, nothing in between.

``bench/capacity.py --rig-only N`` runs it on the engine's core, so the rig (load generator + emulator, on
the other core) carries the load it carries against the engine, while the stand-in costs far less than the
engine would. Per Twilio call: at ``start`` it opens one RTZR session (``POST /v1/authenticate`` once at
start-up, then a WebSocket upgrade with the token), forwards the call's audio as LINEAR16 in 100 ms binary
messages (the engine's RTZR batch size; audio that arrives during the handshake is sent when it completes),
and at ``stop`` sends ``EOS`` and closes. It forwards *all* of a call's audio (the engine streams only
utterances), so the emulator sees at least the engine's load. One selector loop, no frame work beyond
splitting: zero-key client frames (the load generator's) are read in place, other masks are applied; its
own frames to the emulator carry random masking keys, as the engine's do.

On SIGTERM it writes ``--stats`` (JSON): sessions opened/closed, results, EOS → closing final times.

    python bench/standin.py --port 18080 --emulator 127.0.0.1:18765 --stats stats.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import selectors
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from types import FrameType

import _common  # noqa: F401  (puts the repo on sys.path)

from engine.audio import mulaw
from engine.ws.frames import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BATCH = 800  # μ-law bytes per RTZR message: 100 ms at 8 kHz
QUERY = "/v1/transcribe:streaming?sample_rate=8000&encoding=LINEAR16"


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame with a random masking key, as the engine's RTZR client sends (the emulator unmasks)."""
    key = os.urandom(4)
    payload = apply_mask(payload, key)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + key + payload


def split_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete frames at the start of ``buf`` as (opcode, unmasked payload); consumes them."""
    out: list[tuple[int, bytes]] = []
    pos, n = 0, len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        length, head = b1 & 0x7F, pos + 2
        if length == 126:
            if n - head < 2:
                break
            length, head = int.from_bytes(buf[head:head + 2], "big"), head + 2
        elif length == 127:
            if n - head < 8:
                break
            length, head = int.from_bytes(buf[head:head + 8], "big"), head + 8
        masked = b1 & 0x80
        end = head + (4 if masked else 0) + length
        if end > n:
            break
        if masked:
            key = bytes(buf[head:head + 4])
            payload = bytes(buf[head + 4:end])
            if key != b"\0\0\0\0":
                payload = apply_mask(payload, key)
        else:
            payload = bytes(buf[head:end])
        out.append((b0 & 0x0F, payload))
        pos = end
    del buf[:pos]
    return out


class Out:
    """A non-blocking socket's write side with a backlog (registered for EVENT_WRITE while it has one)."""

    def __init__(self, sock: socket.socket, sel: selectors.BaseSelector, data: object) -> None:
        self.sock, self.sel, self.data = sock, sel, data
        self.backlog = bytearray()
        self.closed = False

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.backlog:
            self.backlog += data
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.closed = True
            return
        if n < len(data):
            self.backlog += data[n:]
            self.sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self.data)

    def flush(self) -> None:
        try:
            n = self.sock.send(self.backlog)
        except BlockingIOError:
            return
        except OSError:
            self.closed = True
            n = len(self.backlog)
        del self.backlog[:n]
        if not self.backlog:
            self.sel.modify(self.sock, selectors.EVENT_READ, self.data)


@dataclass
class Stats:
    calls: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0  # by the emulator's close frame (after EOS, or any other close)
    rejected: int = 0
    finals: int = 0
    interims: int = 0
    errors: int = 0  # in-band error results
    audio_messages: int = 0
    eos_to_close_ms: list[float] = field(default_factory=list)  # EOS sent → the emulator's close frame


@dataclass
class Rtzr:
    """One emulator session (client side)."""

    call: Call
    sock: socket.socket
    out: Out
    buf: bytearray = field(default_factory=bytearray)
    upgraded: bool = False
    eos_at: float = 0.0
    done: bool = False


@dataclass
class Call:
    """One Twilio connection (server side)."""

    sock: socket.socket
    out: Out
    buf: bytearray = field(default_factory=bytearray)
    upgraded: bool = False
    ulaw: bytearray = field(default_factory=bytearray)
    rtzr: Rtzr | None = None
    stopped: bool = False


class StandIn:
    def __init__(self, port: int, emulator: str, token: str) -> None:
        """Listens on ``port`` (0: any; see ``self.port``)."""
        self.sel = selectors.DefaultSelector()
        self.emulator = emulator
        self.token = token
        self.stats = Stats()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.sel.register(self.listener, selectors.EVENT_READ, None)

    def serve(self, stop: threading.Event | None = None) -> None:
        """Until SIGTERM (or ``stop`` is set: tests run it in a thread)."""
        while stop is None or not stop.is_set():
            for key, mask in self.sel.select(None if stop is None else 0.05):
                obj = key.data
                if obj is not None and obj.sock.fileno() < 0:  # closed earlier in this batch
                    continue
                if obj is None:
                    self.accept()
                elif mask & selectors.EVENT_WRITE and obj.out.backlog:
                    obj.out.flush()
                if obj is not None and mask & selectors.EVENT_READ:
                    if isinstance(obj, Call):
                        self.twilio_readable(obj)
                    else:
                        self.rtzr_readable(obj)

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        call = Call(conn, None)  # type: ignore[arg-type]
        call.out = Out(conn, self.sel, call)
        self.sel.register(conn, selectors.EVENT_READ, call)
        self.stats.calls += 1

    def close(self, sock: socket.socket) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    # ------------------------------------------------------------------ Twilio side
    def twilio_readable(self, call: Call) -> None:
        try:
            data = call.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(call.sock)
            if call.rtzr is not None and not call.rtzr.done:
                self.close(call.rtzr.sock)
            return
        call.buf += data
        if not call.upgraded:
            if b"\r\n\r\n" not in call.buf:
                return
            head, _, rest = bytes(call.buf).partition(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            call.out.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            call.upgraded = True
            call.buf = bytearray(rest)
        for opcode, payload in split_frames(call.buf):
            if opcode == 0x1:
                self.twilio_message(call, payload)
            elif opcode == 0x8:
                self.close(call.sock)
                return

    def twilio_message(self, call: Call, text: bytes) -> None:
        i = text.find(b'"payload":"')
        if i >= 0 and b'"event":"media"' in text[:40]:
            j = text.index(b'"', i + 11)
            call.ulaw += base64.b64decode(text[i + 11:j])
            self.forward(call)
        elif b'"event":"start"' in text:
            self.open_rtzr(call)
        elif b'"event":"stop"' in text:
            call.stopped = True
            self.forward(call)
            call.out.send(b"\x88\x02\x03\xe8")  # close 1000; the load generator answers, then closes

    def forward(self, call: Call) -> None:
        r = call.rtzr
        if r is None or not r.upgraded or r.done:
            return
        while len(call.ulaw) >= BATCH or (call.stopped and call.ulaw):
            chunk = bytes(call.ulaw[:BATCH])
            del call.ulaw[:BATCH]
            r.out.send(client_frame(0x2, mulaw.decode(chunk).astype("<i2").tobytes()))
            self.stats.audio_messages += 1
        if call.stopped and not r.eos_at:
            r.out.send(client_frame(0x1, b"EOS"))
            r.eos_at = time.monotonic()

    # ------------------------------------------------------------------ emulator side
    def open_rtzr(self, call: Call) -> None:
        host, port = self.emulator.rsplit(":", 1)
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((host, int(port)))
        except BlockingIOError:
            pass
        r = Rtzr(call, sock, None)  # type: ignore[arg-type]
        r.out = Out(sock, self.sel, r)
        call.rtzr = r
        self.sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, r)
        key = base64.b64encode(hashlib.sha1(str(id(r)).encode()).digest()[:16])
        r.out.backlog += (f"GET {QUERY} HTTP/1.1\r\nHost: {self.emulator}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
                          f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {self.token}\r\n\r\n").encode()

    def rtzr_readable(self, r: Rtzr) -> None:
        try:
            data = r.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            r.done = True
            self.close(r.sock)
            return
        r.buf += data
        if not r.upgraded:
            if b"\r\n\r\n" not in r.buf:
                return
            head, _, rest = bytes(r.buf).partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.stats.rejected += 1
                r.done = True
                self.close(r.sock)
                return
            r.upgraded = True
            self.stats.sessions_opened += 1
            r.buf = bytearray(rest)
            self.forward(r.call)
        for opcode, payload in split_frames(r.buf):
            if opcode == 0x1:
                if b'"final":true' in payload:
                    self.stats.finals += 1
                elif b'"final":false' in payload:
                    self.stats.interims += 1
                else:
                    self.stats.errors += 1
            elif opcode == 0x8:
                if r.eos_at:
                    self.stats.eos_to_close_ms.append(1000 * (time.monotonic() - r.eos_at))
                self.stats.sessions_closed += 1
                r.out.send(client_frame(0x8, payload[:2]))
                r.done = True
                self.close(r.sock)
                return


def authenticate(emulator: str) -> str:
    body = urllib.parse.urlencode({"client_id": "sori-emulator", "client_secret": "sori-emulator-secret"}).encode()
    with urllib.request.urlopen(f"http://{emulator}/v1/authenticate", data=body, timeout=10) as r:
        token: str = json.loads(r.read())["access_token"]
        return token


class Stop(Exception):
    pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--emulator", required=True, help="HOST:PORT of the RTZR emulator")
    p.add_argument("--stats", required=True, help="write counters here (JSON) on SIGTERM")
    args = p.parse_args()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, on_term)
    stand_in = StandIn(args.port, args.emulator, authenticate(args.emulator))
    try:
        stand_in.serve()
    except (Stop, KeyboardInterrupt):
        pass
    finally:
        with open(args.stats, "w") as f:
            json.dump(stand_in.stats.__dict__, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

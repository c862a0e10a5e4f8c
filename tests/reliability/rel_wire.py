"""A raw Twilio Media Streams client on wsproto: full control over what goes on the wire.

The simulator behaves like Twilio; this client misbehaves on purpose: abrupt TCP drops without a close
frame, bursts, duplicated and reordered frames, binary and oversized messages, garbage floods.
"""

from __future__ import annotations

import base64
import random

import msgspec
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from engine.twilio.protocol import FRAME_BYTES, SILENCE
from engine.twilio.signature import compute_signature

from .rel_rig import TWILIO_TOKEN


class Rejected(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def frames_of(audio: bytes) -> list[bytes]:
    out = [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
    if out and len(out[-1]) < FRAME_BYTES:
        out[-1] += bytes([SILENCE]) * (FRAME_BYTES - len(out[-1]))
    return out


class Wire:
    """Builds Twilio messages for one stream: JSON text exactly as Twilio sends it."""

    def __init__(self, seed: int = 0, stream_sid: str | None = None) -> None:
        rng = random.Random(seed)
        self.stream_sid = stream_sid or f"MZ{rng.getrandbits(128):032x}"
        self.call_sid = f"CA{rng.getrandbits(128):032x}"
        self.first_ts = 40

    @staticmethod
    def _enc(obj: object) -> str:
        return msgspec.json.encode(obj).decode()

    def connected(self) -> str:
        return self._enc({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        return self._enc({"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid, "start": {
            "streamSid": self.stream_sid, "accountSid": "AC" + "0" * 32, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})

    def media(self, i: int, payload: bytes) -> str:
        """Frame ``i`` (0-based): sequence i+2, chunk i+1, timestamp first_ts + 20 i."""
        return self._enc({"event": "media", "sequenceNumber": str(i + 2), "streamSid": self.stream_sid, "media": {
            "track": "inbound", "chunk": str(i + 1), "timestamp": str(self.first_ts + 20 * i),
            "payload": base64.b64encode(payload).decode()}})

    def stop(self, seq: int) -> str:
        return self._enc({"event": "stop", "sequenceNumber": str(seq), "streamSid": self.stream_sid,
                          "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})


class RawClient:
    """One WebSocket connection; ``close_code`` is set when the server closed it (None: TCP EOF only)."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.close_code: int | None = None
        self.eof = False

    @classmethod
    async def open(cls, port: int, path: str = "/twilio/media", *, token: str | None = TWILIO_TOKEN,
                   signed_url: str | None = None, timeout: float = 5.0) -> RawClient:
        host = f"127.0.0.1:{port}"
        headers: list[tuple[bytes, bytes]] = []
        if token is not None:
            url = signed_url or f"ws://{host}{path}"
            headers.append((b"X-Twilio-Signature", compute_signature(token, url).encode()))
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(ws.send(Request(host=host, target=path, extra_headers=headers)))
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    raise Rejected(0)
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return cls(stream, ws)
                    if isinstance(event, RejectConnection):
                        await stream.aclose()
                        raise Rejected(event.status_code)
                    if isinstance(event, RejectData):
                        continue

    async def send(self, message: str | bytes, timeout: float = 5.0) -> bool:
        """False once the server has gone (the connection was closed)."""
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        try:
            with trio.fail_after(timeout):
                await self.stream.send_all(self.ws.send(event))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        except Exception:
            if self.ws.state.name in ("CLOSED", "LOCAL_CLOSING", "REMOTE_CLOSING"):
                return False
            raise
        return True

    async def send_all(self, messages: list[str]) -> int:
        """Send in one TCP write (a burst); returns how many went out."""
        data = b"".join(self.ws.send(TextMessage(data=m)) for m in messages)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return 0
        return len(messages)

    async def drop(self) -> None:
        """Vanish: close the TCP connection without a WebSocket close frame."""
        await trio.aclose_forcefully(self.stream)

    async def close(self) -> None:
        try:
            await self.stream.send_all(self.ws.send(CloseConnection(code=1000)))
        except Exception:
            pass
        await self.wait_closed(2.0)
        await trio.aclose_forcefully(self.stream)

    async def wait_closed(self, timeout: float) -> int | None:
        """Read until the server closes (close frame or EOF); returns the close code."""
        with trio.move_on_after(timeout):
            while self.close_code is None and not self.eof:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.eof = True
                    break
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, CloseConnection):
                        self.close_code = event.code
                        if self.ws.state.name == "REMOTE_CLOSING":
                            try:
                                await self.stream.send_all(self.ws.send(event.response()))
                            except (trio.BrokenResourceError, trio.ClosedResourceError):
                                pass
                    elif isinstance(event, Ping):
                        await self.stream.send_all(self.ws.send(event.response()))
        return self.close_code

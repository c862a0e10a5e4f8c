"""The emulator's Trio shell: one TCP port serving HTTP (h11) and the WebSocket (wsproto).

``POST /v1/authenticate`` and the upgrade at ``/v1/transcribe:streaming`` share the port, as on
the real service. All decisions live in sans-IO pieces (TokenStore, parse_query, StreamSession);
this file only moves bytes and time. Every await that depends on the peer has a deadline.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import h11
import msgspec
import trio
from msgspec import Struct
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from engine.log import get_logger
from engine.rtzr.emulator.batch import AudioBatch
from engine.rtzr.emulator.codec import DECODABLE
from engine.rtzr.emulator.config import EmulatorConfig, Fault, FaultRule, parse_faults
from engine.rtzr.emulator.phrasebook import load_phrasebook
from engine.rtzr.emulator.reader import ReadHub
from engine.rtzr.emulator.recognizer import PhrasebookRecognizer, Recognizer, SkipRecognizer
from engine.rtzr.emulator.session import Abort, Close, Send, SessionParams, StreamSession
from engine.rtzr.emulator.tokens import TokenStore, parse_form
from engine.rtzr.emulator.wire import Done, SessionWire
from engine.rtzr.protocol import RtzrQueryError, parse_query

log = get_logger(__name__)

AUTH_PATH = "/v1/authenticate"
STREAM_PATH = "/v1/transcribe:streaming"
MAX_BODY = 64 * 1024
EMULATED_NOTICE = "RTZR EMULATOR: all transcript text is EMULATED (phrasebook lookup), not real speech recognition"


LAG_BOUNDS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


class LagHistogram(Struct, kw_only=True):
    """How late the emulator's event loop ran a task that was due (``lag_probe_ms``): is the rig keeping up?"""

    bounds_ms: tuple[float, ...] = LAG_BOUNDS_MS
    counts: list[int] = msgspec.field(default_factory=lambda: [0] * (len(LAG_BOUNDS_MS) + 1))  # last: above all
    max_ms: float = 0.0

    def add(self, lag_ms: float) -> None:
        i = 0
        while i < len(self.bounds_ms) and lag_ms > self.bounds_ms[i]:
            i += 1
        self.counts[i] += 1
        self.max_ms = max(self.max_ms, lag_ms)


class EmulatorStats(Struct, kw_only=True):
    """Counters for tests, the CLI and ``GET /stats`` (load tests); mutated in place."""

    auth_requests: int = 0
    handshakes: int = 0  # upgrade attempts on the streaming path
    sessions_opened: int = 0
    sessions_active: int = 0
    rejected: dict[int, int] = msgspec.field(default_factory=dict)  # by HTTP status
    interims_sent: int = 0
    finals_sent: int = 0
    errors_sent: int = 0
    bytes_received: int = 0
    reads: int = 0  # socket reads by the read hub
    read_wakeups: int = 0  # read-hub wake-ups (reads / wake-ups = sessions read per wake-up)
    loop_lag: LagHistogram = msgspec.field(default_factory=LagHistogram)


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _json_body(code: str, message: str) -> bytes:
    return msgspec.json.encode({"code": code, "msg": message})


class Emulator:
    """A local RTZR streaming STT server. Its text is emulated and says so."""

    def __init__(self, config: EmulatorConfig | None = None, *, recognizer: Recognizer | None = None) -> None:
        self.config = config or EmulatorConfig()
        if recognizer is None:
            recognizer = SkipRecognizer(self.config.speech_dbfs) if self.config.cheap else PhrasebookRecognizer(
                load_phrasebook(self.config.phrasebook_dir()), speech_dbfs=self.config.speech_dbfs)
        self.recognizer: Recognizer = recognizer
        rules = parse_faults(self.config.faults)
        self._rules: list[FaultRule] = [r for r in rules if r.first is not None]
        self._injected: deque[Fault] = deque(r.fault for r in rules if r.first is None)
        self.stats = EmulatorStats()
        self.port = 0
        self.tokens: TokenStore | None = None
        self._reserved = 0
        self._hub: ReadHub | None = None
        self._batch: AudioBatch | None = None  # the hub's pass's audio messages, handled together

    @property
    def api_base(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{STREAM_PATH}"

    @property
    def hub(self) -> ReadHub | None:
        """The read hub of the running emulator (``read_driven``: its owner calls ``hub.drain()``)."""
        return self._hub

    def inject(self, fault: Fault) -> None:
        """Apply ``fault`` to the next ``fault.sessions`` upgrade attempts."""
        self._injected.append(fault)

    def issue_token(self, subject: str = "test") -> str:
        """A valid token without the HTTP round trip (for tests); needs a running emulator."""
        assert self.tokens is not None, "the emulator is not running"
        return self.tokens.issue(subject, trio.current_time())[0]

    def _faults_for(self, attempt: int) -> list[Fault]:
        faults = [r.fault for r in self._rules if r.applies(attempt)]
        if self._injected:
            fault = self._injected[0]
            faults.append(fault)
            if fault.sessions > 1:
                self._injected[0] = msgspec.structs.replace(fault, sessions=fault.sessions - 1)
            else:
                self._injected.popleft()
        return faults

    async def run(self, *, task_status: trio.TaskStatus[Emulator] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``task_status.started(self)`` once the port is bound."""
        self.tokens = TokenStore(
            lifetime_s=self.config.token_lifetime_s, client_id=self.config.client_id,
            client_secret=self.config.client_secret, epoch_offset=time.time() - trio.current_time())
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = listeners[0].socket.getsockname()[1]
        log.warning("rtzr_emulator_started", notice=EMULATED_NOTICE, api_base=self.api_base, ws_url=self.ws_url)
        async with trio.open_nursery() as nursery:
            hub = ReadHub(batch_s=self.config.read_batch_ms / 1000, driven=self.config.read_driven,
                          after_pass=lambda: batch.flush(trio.current_time()))
            batch = self._batch = AudioBatch(hub.drop)
            self._hub = await nursery.start(hub.run)
            if self.config.lag_probe_ms:
                nursery.start_soon(self._probe_lag, self.config.lag_probe_ms / 1000)
            task_status.started(self)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _probe_lag(self, period_s: float) -> None:
        """Every ``period_s``, how late the loop woke a task that was due (the emulator's own lag under load)."""
        while True:
            due = trio.current_time() + period_s
            await trio.sleep_until(due)
            self.stats.loop_lag.add(1000 * (trio.current_time() - due))

    def stats_json(self) -> bytes:
        if self._hub is not None:
            self.stats.reads, self.stats.read_wakeups = self._hub.reads, self._hub.wakeups
        return msgspec.json.encode(self.stats)

    # ------------------------------------------------------------------ HTTP
    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            while True:
                with trio.fail_after(self.config.request_timeout_s):
                    request, body = await self._read_request(stream, conn)
                if request is None:
                    return
                if self._is_upgrade(request):
                    await self._upgrade(stream, conn, request)
                    return
                status, payload = self._http(request, body)
                await self._respond(stream, conn, status, payload)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
            log.debug("rtzr_emulator_connection_dropped", error=type(exc).__name__)
        except Exception as exc:  # one bad connection (or an emulator bug) must not stop the server
            log.error("rtzr_emulator_connection_failed", exc=exc)
        finally:
            await stream.aclose()

    async def _read_request(self, stream: trio.SocketStream, conn: h11.Connection) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("body too large")
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return request, bytes(body)
            else:  # ConnectionClosed
                return None, b""

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        with trio.fail_after(self.config.send_timeout_s):
            await stream.send_all(data)

    async def _respond(self, stream: trio.SocketStream, conn: h11.Connection, status: int, payload: bytes,
                       *, close: bool = False) -> None:
        headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
        if close:
            headers.append(("connection", "close"))
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        data += conn.send(h11.Data(data=payload)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await self._send(stream, data)

    def _http(self, request: h11.Request, body: bytes) -> tuple[int, bytes]:
        path = request.target.decode("latin-1").split("?", 1)[0]
        if path == AUTH_PATH:
            if request.method != b"POST":
                return 405, _json_body("H0001", "use POST")
            self.stats.auth_requests += 1
            assert self.tokens is not None
            status, payload = self.tokens.authenticate(parse_form(body), trio.current_time())
            log.info("rtzr_emulator_auth", status=status)
            return status, payload
        if path == "/healthz":
            return 200, b'{"status":"ok","emulated":true}'
        if path == "/stats":  # the emulator's own counters, for load tests (not an RTZR endpoint)
            return 200, self.stats_json()
        return 404, _json_body("H0404", "not found")

    @staticmethod
    def _is_upgrade(request: h11.Request) -> bool:
        return any(name == b"upgrade" and value.lower() == b"websocket" for name, value in request.headers)

    # ------------------------------------------------------------------ upgrade
    def _check_upgrade(self, request: h11.Request, faults: list[Fault]) -> SessionParams:
        """The handshake decision (raises _Reject): fault, path, version, token, query, concurrency."""
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        for fault in faults:
            if fault.kind == "reject":
                raise _Reject(fault.value, "E500" if fault.value >= 500 else "A0001", "emulated fault: rejected")
        if path != STREAM_PATH:
            raise _Reject(404, "H0404", "not found")
        if headers.get("sec-websocket-version") != "13" or not headers.get("sec-websocket-key"):
            raise _Reject(400, "H0001", "bad WebSocket handshake")
        assert self.tokens is not None
        reason = self.tokens.check(headers.get("authorization"), trio.current_time())
        if reason is not None:
            raise _Reject(401, "H0002", reason)
        try:
            q = parse_query(query)
        except RtzrQueryError as exc:
            raise _Reject(400, "H0001", str(exc)) from None
        if q.encoding not in DECODABLE:
            raise _Reject(400, "H0001", f"the emulator decodes only {', '.join(sorted(DECODABLE))}")
        if self.stats.sessions_active + self._reserved >= self.config.max_sessions:
            raise _Reject(429, "A0001", "too many concurrent sessions")
        epd = q.epd_time if q.epd_time is not None else self.config.epd_time
        return SessionParams(
            sample_rate=q.sample_rate, encoding=q.encoding, epd_time=epd, final_ms=self.config.final_ms,
            interim_ms=self.config.interim_ms, idle_timeout_s=self.config.idle_timeout_s,
            max_session_s=self.config.max_session_s, speech_dbfs=self.config.speech_dbfs,
            max_utter_s=q.max_utter_duration if q.max_utter_duration is not None else 30.0,
        )

    async def _upgrade(self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request) -> None:
        self.stats.handshakes += 1
        attempt = self.stats.handshakes
        faults = self._faults_for(attempt)
        try:
            params = self._check_upgrade(request, faults)
        except _Reject as rej:
            await trio.sleep(self.config.handshake_ms / 1000)
            self.stats.rejected[rej.status] = self.stats.rejected.get(rej.status, 0) + 1
            log.info("rtzr_emulator_rejected", attempt=attempt, status=rej.status, reason=str(rej))
            await self._respond(stream, conn, rej.status, _json_body(rej.code, str(rej)), close=True)
            return
        self._reserved += 1
        try:
            await trio.sleep(self.config.handshake_ms / 1000)
            key = dict(request.headers)[b"sec-websocket-key"]
            accept: bytes = generate_accept_token(key)
            await self._send(stream, conn.send(h11.InformationalResponse(
                status_code=101,
                headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", accept)],
            )) or b"")
        finally:
            self._reserved -= 1
        trailing = conn.trailing_data[0]
        self.stats.sessions_opened += 1
        self.stats.sessions_active += 1
        session = StreamSession(params, self.recognizer, faults, trio.current_time())
        log.info("rtzr_emulator_session_opened", attempt=attempt, rate=params.sample_rate,
                 encoding=params.encoding, faults=",".join(f.kind for f in faults))
        try:
            await self._session(stream, session, trailing)
        except Done:
            pass
        finally:
            self.stats.sessions_active -= 1
            log.info("rtzr_emulator_session_closed", attempt=attempt, finals=session.counters.finals_sent,
                     bytes=session.counters.bytes_received)

    # ------------------------------------------------------------------ WebSocket
    async def _session(self, stream: trio.SocketStream, session: StreamSession, trailing: bytes) -> None:
        """Writes and waits for one session; its input arrives through the read hub (wire.SessionWire)."""
        assert self._hub is not None
        ws = Connection(ConnectionType.SERVER)
        wire = SessionWire(stream.socket.fileno(), ws, session, self._hub, self.stats,
                           max_message_bytes=self.config.max_message_bytes, batch=self._batch)
        self._hub.add(wire)
        try:
            if trailing:
                wire.feed(trailing)
            while True:
                # Outside any deadline scope: sends (results, pongs, close replies) are never cut in half.
                if wire.fatal is not None:
                    raise Done from wire.fatal
                await self._ws_events(stream, wire)
                wire.poll()
                await self._perform(stream, wire)
                if wire.fatal is not None:
                    raise Done from wire.fatal
                if wire.eof and not wire.pending:
                    raise Done
                if not wire.pending:
                    wire.resume()
                await wire.wait()
        finally:
            self._hub.remove(wire)

    async def _ws_events(self, stream: trio.SocketStream, wire: SessionWire) -> None:
        """Control frames and the messages queued behind them, in wire order."""
        while wire.pending:
            event = wire.pending.popleft()
            now = trio.current_time()
            if wire.data_event(event, now):
                continue
            if isinstance(event, Ping):
                if wire.session.pong_allowed(now):
                    await self._send(stream, wire.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if not wire.session.stalled:
                    await self._send(stream, wire.ws.send(event.response()))
                raise Done

    async def _perform(self, stream: trio.SocketStream, wire: SessionWire) -> None:
        while wire.actions:
            action = wire.actions.popleft()
            if isinstance(action, Send):
                if wire.ws.state is ConnectionState.OPEN:
                    await self._send_result(stream, wire, action.text)
                else:  # wsproto decides (it raises for a closed connection)
                    await self._send(stream, wire.ws.send(TextMessage(data=action.text)))
                self._count(action.text)
            elif isinstance(action, Close):
                await self._send(stream, wire.ws.send(CloseConnection(code=action.code, reason=action.reason)))
                await self._await_close_reply(stream, wire.ws)
                raise Done
            elif isinstance(action, Abort):
                raise Done  # _handle closes the TCP stream without a close frame

    async def _send_result(self, stream: trio.SocketStream, wire: SessionWire, text: str) -> None:
        """One result as a TEXT frame (a server's: unmasked, no extension is ever negotiated) written straight to the
        socket; what the kernel does not take at once goes out with ``send_all`` under the send deadline. The
        bytes wsproto would write, without its frame encoder, a cancel scope and Trio's send path per result."""
        data = text_frame(text.encode())
        try:
            n = os.write(wire.fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if n < len(data):
            await self._send(stream, data[n:])

    def _count(self, text: str) -> None:
        if '"final":true' in text:
            self.stats.finals_sent += 1
        elif '"final":false' in text:
            self.stats.interims_sent += 1
        else:
            self.stats.errors_sent += 1

    async def _await_close_reply(self, stream: trio.SocketStream, ws: Connection) -> None:
        """Give the client a moment to answer our close frame (then drop the TCP connection anyway)."""
        with trio.move_on_after(1.0):
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                ws.receive_data(data)
                if any(isinstance(e, CloseConnection) for e in ws.events()):
                    return


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked TEXT frame (RFC 6455 § 5.2), as wsproto encodes it for a server."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


def describe(emulator: Emulator) -> dict[str, Any]:
    """What the CLI prints: where it listens and how to point ``sori serve`` at it."""
    cfg = emulator.config
    return {
        "api_base": emulator.api_base,
        "ws_url": emulator.ws_url,
        "env": {
            "RTZR_API_BASE": emulator.api_base,
            "RTZR_WS_URL": emulator.ws_url,
            "RTZR_CLIENT_ID": cfg.client_id or "any",
            "RTZR_CLIENT_SECRET": cfg.client_secret or "any",
        },
    }

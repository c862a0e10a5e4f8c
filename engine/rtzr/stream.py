"""One RTZR streaming socket on our thin wsproto client: handshake, audio, Finalize/EOS, reader, pings.

The socket's whole life is one task (started in the caller's nursery, normally the pool's): it
connects, reports started, then reads and routes results until the socket closes. Results go to
whichever lessee is attached (:meth:`RtzrSocket.attach`); a socket that dies tells that lessee
with :class:`RtzrSocketLost`. Bookkeeping (pending audio, seq, timeline) is the sans-IO
:class:`UtteranceTracker`. The WebSocket itself is :class:`engine.rtzr.wsclient.WsClientConnection`
(not trio-websocket: its per-send lock + wsproto framing + reader task and channel were ~12 % of the
engine at 60 calls; BENCHMARKS.md, Hot path).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable

import trio

from engine.budgets import BudgetExpired, Budgets
from engine.config import RtzrConfig
from engine.log import get_logger
from engine.metrics import Registry
from engine.rtzr.auth import Token, TokenManager
from engine.rtzr.protocol import (
    EOS,
    FINALIZE,
    RtzrProtocolError,
    RtzrServerError,
    build_query,
    bytes_per_ms,
    decode_server_message,
)
from engine.rtzr.tracker import SERVER_EPD_MS, SERVER_MAX_UTTER_MS, ForeignResult, LeaseResult, UtteranceTracker
from engine.rtzr.wsclient import ConnectionClosed, WsClientConnection, WsHandshakeError, WsRejected
from engine.stt import SttSaturated, SttStreamLost, SttUnavailable

log = get_logger(__name__)

MAX_MESSAGE_BYTES = 1 << 20
CLOSE_GRACE_S = 0.5  # how long our close frame waits for the server's reply before we drop TCP


class RtzrConnectError(SttUnavailable):
    """A socket could not be opened (network error, bad handshake)."""


class RtzrHandshakeError(RtzrConnectError):
    """The server rejected the WebSocket upgrade with an HTTP status."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"RTZR rejected the stream: HTTP {status}{': ' + detail if detail else ''}")
        self.status = status


class RtzrSaturated(RtzrHandshakeError, SttSaturated):
    """HTTP 429: the organisation's concurrent-session limit (or usage quota) is reached."""


class RtzrSocketLost(SttStreamLost):
    """The socket died (closed, in-band error, protocol error, finalize timeout) before the final."""


class _Lost:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


LeaseItem = LeaseResult | _Lost

_socket_ids = itertools.count(1)  # SocketInfo.id in events (issue 15)


def _rejection(exc: WsRejected) -> RtzrHandshakeError:
    body = exc.body[:200].decode("utf-8", "replace")
    if exc.status == 429:
        return RtzrSaturated(429, body)
    return RtzrHandshakeError(exc.status, body)


class RtzrSocket:
    """One RTZR WebSocket. Create with :meth:`connect`; close with :meth:`close`."""

    def __init__(
        self, config: RtzrConfig, tokens: TokenManager, budgets: Budgets, metrics: Registry, *, query: str | None = None
    ) -> None:
        self._config = config
        self._tokens = tokens
        self._budgets = budgets
        self._query = query if query is not None else build_query(config)
        self.tracker = UtteranceTracker(
            bytes_per_ms(config), cover_slack_ms=config.pool.final_cover_slack_ms,
            tolerance_ms=config.pool.timestamp_tolerance_ms,
            server_epd_ms=SERVER_EPD_MS if config.epd_time is None else config.epd_time * 1000.0,
            max_utter_ms=SERVER_MAX_UTTER_MS if config.max_utter_duration is None else config.max_utter_duration * 1000.0,
        )
        self._ws: WsClientConnection | None = None
        self._scope = trio.CancelScope()
        self._closed = trio.Event()
        self._done = trio.Event()
        self._sink: trio.MemorySendChannel[LeaseItem] | None = None
        self.opened_at = trio.current_time()
        self.last_used = self.opened_at
        self.token_expire_at = math.inf
        self.handshake_ms = 0.0
        self.id = f"s{next(_socket_ids)}"  # issue 15 (report): socket id, leases served, token fetch time
        self.uses = 0
        self.token_fetched_at = 0.0
        self.close_reason = ""
        self.bad = False  # state uncertain: never hand it out again
        self.eos_sent = False
        self.pings_answered = 0  # pongs checked in time (tests)
        # Called once when the socket dies (the pool's wake-up to replace it): a callback rather than a
        # watcher task per socket, which cost a Task, its coroutine and a wait per open socket (issue 13).
        self.on_closed: Callable[[RtzrSocket], None] | None = None
        # Called when a result makes the socket unclean (untrusted timestamps) without closing it: an idle
        # socket is then no longer usable, and the pool, which no longer rescans its idle sockets, must know.
        self.on_unclean: Callable[[RtzrSocket], None] | None = None
        self._handshake_hist = metrics.histogram("rtzr_handshake_ms", "RTZR WebSocket handshake time")
        self._metrics = metrics

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(
        cls,
        config: RtzrConfig,
        tokens: TokenManager,
        budgets: Budgets,
        metrics: Registry,
        nursery: trio.Nursery,
        *,
        query: str | None = None,
    ) -> RtzrSocket:
        """Open a socket whose reader runs in ``nursery``; raises RtzrConnectError / BudgetExpired."""
        sock = cls(config, tokens, budgets, metrics, query=query)
        await nursery.start(sock._run)
        return sock

    @property
    def bytes_sent(self) -> int:
        return self.tracker.bytes_sent

    @property
    def is_open(self) -> bool:
        return self._ws is not None and not self._closed.is_set() and self._ws.closed is None

    @property
    def lost(self) -> bool:
        """The socket is dead (what :meth:`wait_closed` waits for)."""
        return self._closed.is_set()

    @property
    def usable(self) -> bool:
        """Open, healthy and provably clean (engine/rtzr/tracker.py): safe for a new lessee."""
        return self.is_open and not self.bad and not self.eos_sent and self.tracker.clean

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:  # _lose() cancels it: the socket's whole life, connect included
                conn, token = await self._connect()
                try:
                    self._ws = conn
                    self.opened_at = self.last_used = trio.current_time()
                    self.token_expire_at = token.expire_at
                    self.token_fetched_at = token.fetched_at
                    task_status.started()
                    await self._serve(conn)
                finally:
                    grace = min(self._config.pool.close_timeout_ms / 1000.0, CLOSE_GRACE_S)
                    await conn.aclose(1000, grace=grace)
            self._require_connected()
        except (ConnectionClosed, WsHandshakeError, OSError, trio.BrokenResourceError) as exc:
            if self._ws is None:
                raise RtzrConnectError(f"cannot open RTZR stream: {type(exc).__name__}: {exc}") from None
            self._lose(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            if self._ws is None:
                raise
            log.error("rtzr_socket_failed", exc=exc)
            self._lose(f"{type(exc).__name__}: {exc}")
        finally:
            self._lose(self.close_reason or "closed")
            self._done.set()

    def _require_connected(self) -> None:
        if self._ws is None:  # close() cancelled us before the handshake finished
            raise RtzrConnectError("socket closed while connecting")

    async def _connect(self) -> tuple[WsClientConnection, Token]:
        """Token, TCP, TLS, upgrade and the one retry after a 401, all within ONE ``budgets.connect``."""
        url = f"{self._config.ws_url}?{self._query}"
        t0 = trio.current_time()
        with self._budgets.connect():
            token = await self._tokens.get()
            for attempt in (0, 1):
                try:
                    conn = await WsClientConnection.connect(
                        url,
                        send_budget=self._budgets.send,
                        max_message_size=MAX_MESSAGE_BYTES,
                        extra_headers=[(b"Authorization", f"Bearer {token.value}".encode())],
                    )
                except WsRejected as exc:
                    if exc.status == 401 and attempt == 0:
                        log.info("rtzr_handshake_401_refreshing")
                        token = await self._tokens.invalidate_and_refresh(token)
                        continue
                    raise _rejection(exc) from None
                self.handshake_ms = (trio.current_time() - t0) * 1000.0
                self._handshake_hist.observe(self.handshake_ms)
                return conn, token
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _serve(self, ws: WsClientConnection) -> None:
        """Read until the socket closes, pinging while it is quiet: the reader is also the pinger.

        A ping goes out every ``ping_interval_ms``; its pong must arrive within ``budgets.send`` of it,
        else the socket is lost ("ping timeout"). One task per socket, not a reader and a sleeping pinger
        (a Task, its coroutines and a cancel scope per open socket: issue 13, memory per call).
        """
        interval = self._config.pool.ping_interval_ms / 1000.0
        pong_budget = self._budgets.send.seconds
        next_ping = trio.current_time() + interval
        pong: trio.Event | None = None
        pong_due = math.inf
        n = 0
        while True:
            try:
                message = await ws.receive_message_before(next_ping if pong is None else pong_due)
            except ConnectionClosed as exc:
                self._lose(f"closed by server: {exc.code} {exc.reason}")
                return
            if message is not None:
                if not self._route(message):
                    return
                continue
            now = trio.current_time()
            if pong is not None and now >= pong_due:
                if not pong.is_set():
                    self._lose("ping timeout")
                    return
                pong, pong_due = None, math.inf
                self.pings_answered += 1
            if pong is None and now >= next_ping:  # one ping in flight at a time
                n += 1
                next_ping = now + interval
                try:
                    pong = await ws.send_ping(n.to_bytes(8, "big"))
                except ConnectionClosed:
                    continue  # the next receive reports the close
                except BudgetExpired:  # the ping frame itself could not be written in time
                    self._lose("ping timeout")
                    return
                pong_due = trio.current_time() + pong_budget

    def _route(self, message: str | bytes) -> bool:
        """Decode one server message and route it to the attached lessee; False when the socket is lost.

        A function of its own so that the message and its decoded result are not kept alive (as a loop's
        locals would be) while the reader waits for the next one.
        """
        if self._closed.is_set():
            return False  # lost (closed by us, a foreign result): what is still buffered is no one's
        try:
            decoded = decode_server_message(message)
        except RtzrProtocolError as exc:
            self._metrics.counter("rtzr_socket_errors_total", "RTZR socket failures", "kind=protocol").inc()
            self._lose(f"protocol error: {exc}")
            return False
        if isinstance(decoded, RtzrServerError):
            self._metrics.counter("rtzr_socket_errors_total", "RTZR socket failures", "kind=server").inc()
            self._lose(f"server error {decoded.code or ''}: {decoded.message}")
            return False
        was_trusted = not self.tracker.untrusted
        mapped = self.tracker.on_result(decoded)
        if isinstance(mapped, ForeignResult):
            # The clean-socket rule (tracker.py, rule 4): never delivered, counted, and the socket closed.
            self._drop(mapped, decoded.final, decoded.end_at)
            return False
        if mapped is not None and self._sink is not None:
            try:
                self._sink.send_nowait(mapped)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._sink = None
        if was_trusted and self.tracker.untrusted and self.on_unclean is not None:
            self.on_unclean(self)
        return True

    def _drop(self, foreign: ForeignResult, final: bool, end_at: int) -> None:
        """Count and log a result that reaches no one, then close the socket (rule 4). An orphan (a late answer
        after a lease that ended unclean, on a socket never handed out again) is expected; a foreign result
        means rules 1-3 failed: a warning, with the socket's state to find out how (never text or audio)."""
        t = self.tracker
        if foreign.orphan:
            self._metrics.counter("rtzr_orphan_results_total",
                                  "results dropped: late answers after a lease ended unclean").inc()
            log.info("rtzr_orphan_result", reason=foreign.reason, seq=foreign.seq, start_at=foreign.start_at,
                     final=final, socket=self.id)
        else:
            self._metrics.counter("rtzr_foreign_results_total",
                                  "results dropped: not produced by the current lessee's audio").inc()
            log.warning("rtzr_foreign_result", reason=foreign.reason, seq=foreign.seq, start_at=foreign.start_at,
                        end_at=end_at, final=final, socket=self.id, uses=self.uses, leased=t.leased,
                        sent_ms=round(t.sent_ms), settled_ms=round(t.settled_bytes / t.bytes_per_ms),
                        lease_offset_ms=round(t.lease_offset_ms), lease_first_seq=t.lease_first_seq,
                        last_final_end_ms=t.last_final_end_ms)
        self._lose(f"{'orphan' if foreign.orphan else 'foreign'} result: {foreign.reason}")

    def _lose(self, reason: str) -> None:
        """Mark the socket dead, tell the lessee, and stop the socket task."""
        if self._closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.bad = True
        self._closed.set()
        on_closed, self.on_closed = self.on_closed, None
        if on_closed is not None:
            on_closed(self)
        if self._sink is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._sink.send_nowait(_Lost(self.close_reason))
            self._sink.close()
            self._sink = None
        log.info("rtzr_socket_closed", reason=self.close_reason, bytes_sent=self.bytes_sent)
        self._scope.cancel()

    async def close(self, *, eos: bool = True) -> None:
        """Close: EOS first (the server answers pending audio, then closes), all under a shielded deadline."""
        timeout = self._config.pool.close_timeout_ms / 1000.0
        with trio.move_on_after(timeout, shield=True):
            if eos and self.is_open and not self.eos_sent:
                try:
                    await self.end()
                    await self._closed.wait()
                except (RtzrSocketLost, BudgetExpired):
                    pass
            self.close_reason = self.close_reason or "closed by client"
            self._lose(self.close_reason)
            await self._done.wait()

    # ------------------------------------------------------------------ lessee side

    def attach(self) -> trio.MemoryReceiveChannel[LeaseItem]:
        """Start a lease: its timeline begins at the current byte offset; returns its result stream."""
        send, receive = trio.open_memory_channel[LeaseItem](math.inf)
        if self._sink is not None:
            self._sink.close()
        self.tracker.begin_lease()
        self.uses += 1
        self._sink = send
        self.last_used = trio.current_time()
        if self._closed.is_set():
            send.send_nowait(_Lost(self.close_reason))
            send.close()
            self._sink = None
        return receive

    def detach(self) -> None:
        self.tracker.end_lease()
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        self.last_used = trio.current_time()

    async def _send(self, message: bytes | str, *, touch: bool = True) -> None:
        """One message under the connection's lock and budgets.send; ``touch`` marks the socket used."""
        ws = self._ws
        if ws is None or self._closed.is_set():
            raise RtzrSocketLost(self.close_reason or "socket not open")
        try:
            # One lock and budgets.send inside the connection; audio is framed without wsproto.
            if isinstance(message, str):
                await ws.send_text(message)
            else:
                await ws.send_bytes(message)
        except (ConnectionClosed, BudgetExpired) as exc:
            raise self._write_failed(exc) from None
        if touch:
            self.last_used = trio.current_time()

    def _write_failed(self, exc: ConnectionClosed | BudgetExpired) -> Exception:
        """A write (a send, a flush) could not finish: the socket is lost; what its caller raises."""
        if isinstance(exc, BudgetExpired):
            self._lose("send timeout")
            return exc
        self._lose("closed while sending")
        return RtzrSocketLost(self.close_reason)

    async def send_audio(self, pcm: bytes) -> None:
        """Send audio in the configured encoding (LINEAR16 little-endian, or MULAW passthrough).

        The hot path (one call per 100 ms per utterance): ``last_used`` is left alone (attach and detach
        set it; the pool reads it only for idle sockets).
        """
        if not pcm:
            return
        if self.eos_sent:
            raise RtzrSocketLost("EOS already sent")
        self.tracker.audio_sent(len(pcm))
        await self._send(pcm, touch=False)

    def send_audio_nowait(self, pcm: bytes) -> int:
        """:meth:`send_audio` from synchronous code, with no task switch (the lessee pushes each batch as the
        Twilio reader appends it): 1 when it is written, 2 when it is started with its tail :attr:`write_pending`
        (the lessee must then ``await`` :meth:`flush`); 0, nothing sent, when only the awaited
        :meth:`send_audio` can send it (it also reports why: a lost socket, EOS sent). Never raises.

        Once per 100 ms batch of every speaking call: ``bad`` (set first by :meth:`_lose`, also by a finalize
        timeout) stands for the closed check, an attribute instead of a call; refusing more is always safe."""
        ws = self._ws
        if not pcm or ws is None or self.bad or self.eos_sent:
            return 0
        state = ws.send_bytes_nowait(pcm)
        if state:
            self.tracker.bytes_sent += len(pcm)  # tracker.audio_sent, inlined: a call less per batch
        return state

    @property
    def pushable(self) -> bool:
        """:meth:`send_audio_nowait` can ever send (plain TCP: the emulator, a local proxy; not TLS)."""
        ws = self._ws
        return ws is not None and ws.nowait_capable

    @property
    def write_pending(self) -> bool:
        """Part of a :meth:`send_audio_nowait` message is still to be written (by :meth:`flush`)."""
        ws = self._ws
        return ws is not None and ws.pending

    async def flush(self) -> None:
        """Complete a :meth:`send_audio_nowait` message the kernel took only part of (no-op if none)."""
        ws = self._ws
        if ws is None or not ws.pending:
            return
        try:
            await ws.flush()
        except (ConnectionClosed, BudgetExpired) as exc:
            raise self._write_failed(exc) from None

    async def finalize(self, speech_end_ms: float | None = None) -> bool:
        """Send Finalize if audio is pending; returns whether a final is now expected.

        ``speech_end_ms``: the lessee's last speech on its timeline (see UtteranceTracker.finalize_sent).
        """
        if not self.tracker.finalize_sent(speech_end_ms):
            return False
        await self._send(FINALIZE)
        return True

    async def end(self) -> None:
        """Send EOS: the server sends the pending final and closes the socket."""
        if self.tracker.pending:
            self.tracker.finalize_sent()
        self.eos_sent = True
        await self._send(EOS)

    def age_s(self, now: float) -> float:
        return now - self.opened_at

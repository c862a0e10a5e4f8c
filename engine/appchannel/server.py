"""The application channel's WebSocket listener (a supervisor service, on its own host and port).

Authentication happens before the upgrade, on the request h11 parsed: ``Authorization: Bearer <secret>``
compared with ``app_channel.secret`` (env ``SORI_APP_SECRET``) in constant time; 401 when it is missing,
403 when it is wrong (or no secret is configured: the channel is then closed to everyone), 404 for another
path, 503 at ``max_connections``. The secret is never logged.

Each connection: a ``channel.hello``, then a reader that applies commands, and events written from the
emit path itself when nothing is queued (:meth:`WsServerConnection.send_text_nowait`), else by a writer
task that drains the connection's bounded queue (:class:`~engine.appchannel.hub.Subscriber`) in one write. A write that exceeds
``budgets.send`` (the application stopped reading and its socket is full) ends the connection; an
application that leaves never affects its calls: they keep running, and a new connection may pick them up.
"""

from __future__ import annotations

import hmac
import itertools
import urllib.parse

import trio

from engine.appchannel import messages as msg
from engine.appchannel.hub import AppHub, Subscriber
from engine.budgets import BudgetExpired, Budgets
from engine.config import AppChannelConfig
from engine.listeners import accept_or_pause
from engine.log import get_logger
from engine.metrics import Registry
from engine.twilio.wsconn import ConnectionClosed, HandshakeFailed, UpgradeRequest, WsServerConnection

log = get_logger(__name__)



def check_secret(secret: str | None, header: bytes | None) -> int:
    """0 when ``header`` (the Authorization value) carries ``secret``; else 401 (missing) or 403 (wrong)."""
    if header is None:
        return 401
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return 401
    if not secret:
        return 403
    return 0 if hmac.compare_digest(token.strip(), secret.encode()) else 403


class AppChannelServer:
    """``app_channel``: the WebSocket endpoint where applications connect (docs/app-channel.md)."""

    name = "app_channel"

    def __init__(self, config: AppChannelConfig, hub: AppHub, *, metrics: Registry, budgets: Budgets) -> None:
        self.config = config
        self.hub = hub
        self.budgets = budgets
        self.port: int | None = None
        self.connections = 0
        self._ids = itertools.count(1)
        self._m_accepted = metrics.counter("app_channel_connections_total", "application connections accepted")
        self._m_live = metrics.gauge("app_channel_connections_live", "application connections open")
        self._metrics = metrics
        if not config.secret:
            log.warning("app_channel_no_secret", hint="every connection will be refused with 403; set SORI_APP_SECRET")

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the port, serve connections until cancelled."""
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("app_channel_listening", host=self.config.host, port=self.port, path=self.config.path)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self.port)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                stream = await accept_or_pause(listener.accept, "app_channel_accept_failed")
                if stream is None:
                    continue
                nursery.start_soon(self._on_connection, stream)

    async def _on_connection(self, stream: trio.SocketStream) -> None:
        conn = f"app-{next(self._ids)}"
        try:
            await self._serve(stream, conn)
        except Exception as exc:
            log.error("app_channel_connection_failed", conn=conn, exc=exc)
        finally:
            await trio.aclose_forcefully(stream)

    def _admit(self, request: UpgradeRequest) -> tuple[int, str, str | None]:
        """(0, "", call filter) to accept, else (HTTP status, reason, None)."""
        path, _, query = request.target.partition("?")
        if path != self.config.path:
            return 404, "not found", None
        status = check_secret(self.config.secret, request.header(b"authorization"))
        if status:
            return status, "missing credentials" if status == 401 else "bad credentials", None
        if self.connections >= self.config.max_connections:
            return 503, "too many connections", None
        calls = urllib.parse.parse_qs(query).get("call", [])
        return 0, "", calls[0] if calls and calls[0] not in ("", "*") else None

    async def _serve(self, stream: trio.SocketStream, conn: str) -> None:
        ws = WsServerConnection(stream, send_budget=self.budgets.send, max_message_size=self.config.max_message_bytes)
        try:
            with self.budgets.twilio_start():  # the handshake deadline (a slowloris head is cut here)
                request = await ws.read_request()
        except BudgetExpired:
            return
        except HandshakeFailed as exc:
            if exc.status:
                await self._reject(ws, exc.status, "bad request")
            return
        status, why, call = self._admit(request)
        if status:
            log.info("app_channel_rejected", conn=conn, status=status, reason=why)
            await self._reject(ws, status, why)
            return
        self.connections += 1
        sub = self.hub.subscribe(call, self.config.queue)
        try:
            with self.budgets.send():
                await ws.accept()
                await ws.send_text(msg.encode(msg.Hello(subscribed=call or "*", queue=self.config.queue,
                                                        calls=self.hub.live_calls(sub))).decode())
            self._m_accepted.inc()
            self._m_live.inc()
            log.info("app_channel_connected", conn=conn, subscribed=call or "*", remote=ws.remote)
            try:
                why = await self._run(ws, sub)
            finally:
                self._m_live.dec()
            log.info("app_channel_disconnected", conn=conn, reason=why, dropped=sub.dropped)
        except (BudgetExpired, ConnectionClosed):
            log.info("app_channel_upgrade_failed", conn=conn)
        finally:
            self.hub.unsubscribe(sub)
            self.connections -= 1
            try:
                with self.budgets.send(shield=True):
                    await ws.aclose(1000, "bye")
            except BudgetExpired:
                pass

    async def _reject(self, ws: WsServerConnection, status: int, why: str) -> None:
        self._metrics.counter("app_channel_rejected_total", "connections refused before the upgrade",
                              f"status={status}").inc()
        try:
            with self.budgets.send(shield=True):
                await ws.reject(status, f"{why}\n".encode())
        except (BudgetExpired, ConnectionClosed):
            pass

    async def _run(self, ws: WsServerConnection, sub: Subscriber) -> str:
        """Reader and writer until either ends; returns why."""
        why = "closed"

        def send_now(body: bytes) -> bool:
            if not ws.send_text_nowait(body):
                return False
            if ws.pending:  # the kernel took part of it: the writer completes it
                sub.wake.set()
            return True

        async def writer(cancel: trio.CancelScope) -> None:
            nonlocal why
            try:
                while True:
                    if ws.pending:
                        await ws.flush()
                    batch = sub.take()
                    if not batch:
                        await sub.wake.wait()
                        continue
                    await ws.send_texts(batch)  # everything queued, in one write
            except BudgetExpired:
                why = "slow_application"
            except ConnectionClosed:
                why = "closed"
            cancel.cancel()

        sub.send_now = send_now
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, nursery.cancel_scope)
                # Every read is bounded: after ping_ms of silence a ping, and a peer that does not answer it
                # (nor sends anything) within ping_ms more is gone.
                ping_s = self.config.ping_ms / 1000
                pong: trio.Event | None = None
                pings = itertools.count()
                while True:
                    try:
                        data = await ws.receive_message_before(trio.current_time() + ping_s)
                        if data is None:
                            if pong is not None and not pong.is_set():
                                why = "ping_timeout"
                                break
                            pong = await ws.send_ping(next(pings).to_bytes(8, "big"))
                            continue
                    except (ConnectionClosed, BudgetExpired):
                        break
                    pong = None  # the peer is alive: the next silence starts a new ping
                    if isinstance(data, bytes):
                        error: msg.ChannelError | None = msg.ChannelError(code="binary", message="commands are JSON text")
                    else:
                        error = self.hub.command(sub, data)
                    if error is not None:
                        sub.push(msg.encode(error))
                nursery.cancel_scope.cancel()
        finally:
            sub.send_now = None
        return why

"""The admin HTTP endpoint: ``GET /healthz`` (200 ok / 503 draining) and ``GET /metrics``.

A deliberately tiny HTTP/1.1 server on h11 (sans-IO) + trio: one request per connection, every
read and write under a short deadline so a slow client cannot hold a task for long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h11
import trio

from engine.log import get_logger
from engine.metrics import Registry

log = get_logger(__name__)

IO_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 16 * 1024


class AdminServer:
    """Serves health and metrics; ``is_draining`` is read on every /healthz request."""

    name = "admin"

    def __init__(self, host: str, port: int, metrics: Registry, is_draining: Callable[[], bool]) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.is_draining = is_draining
        self.bound_port: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        log.info("admin_listening", host=self.host, port=self.bound_port)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.bound_port)

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """Route one request (sans-IO, for tests): status, content type, body."""
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            if self.is_draining():
                return 503, "text/plain", b"draining\n"
            return 200, "text/plain", b"ok\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics.render().encode()
        return 404, "text/plain", b"not found\n"

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            with trio.move_on_after(IO_TIMEOUT_S):
                request = await _next_request(conn, stream)
                if request is None:
                    return
                status, ctype, body = self.respond(request.method.decode(), request.target.decode())
                headers: list[tuple[str, Any]] = [
                    ("content-type", ctype),
                    ("content-length", str(len(body))),
                    ("connection", "close"),
                ]
                data = conn.send(h11.Response(status_code=status, headers=headers))
                if request.method != b"HEAD":
                    data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
                data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("admin_request_failed", error=type(exc).__name__)
        finally:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()


async def _next_request(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            conn.receive_data(data)
            if not data:
                return None
        elif isinstance(event, h11.ConnectionClosed):
            return None

"""The admin HTTP endpoint: liveness, readiness and metrics.

- ``GET /livez``: 200 ``ok`` whenever this server answers (the event loop is running).
- ``GET /readyz``: 200 ``ok`` when the engine can take a call and transcribe it at once, else 503
  with the first failing reason as plain text (see :class:`Readiness`). ``/healthz`` is an alias
  kept for compatibility.
- ``GET /metrics``: Prometheus text.
- ``GET /status``: a self-refreshing HTML page for people (``engine/report/live.py``): calls in progress,
  pool state, token expiry, readiness, recent latency percentiles. Read-only, and only on this listener.

A deliberately tiny HTTP/1.1 server on h11 (sans-IO) + trio: one request per connection, every
read and write under a short deadline so a slow client cannot hold a task for long.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import h11
import trio

from engine.log import get_logger, redactor
from engine.metrics import Registry

log = get_logger(__name__)

IO_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 16 * 1024
READY_POLL_S = 0.05  # how often Readiness.wait re-checks (the checks have no change notification)

Check = Callable[[], str | None]  # None when fine, else why the engine is not ready


class Readiness:
    """The readiness checks in order; the first one that returns a reason decides.

    The engine's checks (engine/app.py): not draining, a valid RTZR token held, the Twilio
    listener bound, the RTZR pool holding its spares (or at least one idle socket).
    """

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = list(checks)

    def reason(self) -> str | None:
        """Why the engine is not ready, or None when it is."""
        for check in self.checks:
            why = check()
            if why is not None:
                return why
        return None

    async def wait(self) -> None:
        """Return once ready; bound it with a deadline (it waits forever if readiness never comes)."""
        # A poll, not an event: the pool and the token manager expose reasons but no public change
        # notification, and a check is a cheap attribute read. A deadline around this is the bound.
        while self.reason() is not None:  # noqa: ASYNC110
            await trio.sleep(READY_POLL_S)


class AdminServer:
    """Serves liveness, readiness and metrics; ``not_ready`` is called on every /readyz request."""

    name = "admin"

    def __init__(self, host: str, port: int, metrics: Registry, not_ready: Check,
                 status: Callable[[], bytes] | None = None) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.not_ready = not_ready
        self.status = status  # renders /status (None: no page)
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
        if path == "/livez":
            return 200, "text/plain", b"ok\n"
        if path in ("/readyz", "/healthz"):
            reason = self._not_ready_reason()
            if reason is not None:
                return 503, "text/plain; charset=utf-8", f"{reason}\n".encode()
            return 200, "text/plain", b"ok\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics.render().encode()
        if path == "/status" and self.status is not None:
            return self._status_page()
        return 404, "text/plain", b"not found\n"

    async def respond_async(self, method: str, target: str) -> tuple[int, str, bytes]:
        """What ``_handle`` serves; ``engine.workers`` overrides it to answer from its workers."""
        return self.respond(method, target)
    def _status_page(self) -> tuple[int, str, bytes]:
        try:
            return 200, "text/html; charset=utf-8", self.status() if self.status is not None else b""
        except Exception as exc:  # a page bug must not cost the admin port: say so, keep serving
            log.error("status_page_failed", exc=exc)
            return 500, "text/plain", f"status page failed: {type(exc).__name__}\n".encode()

    def _not_ready_reason(self) -> str | None:
        """The readiness reason as one line with secrets scrubbed; a failing check is itself a reason."""
        try:
            reason = self.not_ready()
        except Exception as exc:
            log.error("readiness_check_failed", exc=exc)
            reason = f"readiness check failed: {type(exc).__name__}"
        if reason is None:
            return None
        return redactor.scrub(" ".join(reason.split())) or "not ready"

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            with trio.move_on_after(IO_TIMEOUT_S):
                request = await _next_request(conn, stream)
                if request is None:
                    return
                status, ctype, body = await self.respond_async(request.method.decode(), request.target.decode())
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

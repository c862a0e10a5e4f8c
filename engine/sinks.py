"""Event delivery off the hot path: JSON lines (stdout or a file), a signed webhook, a Python callback.

``EventSinks.emit(event)`` is synchronous and never blocks a call: it hands the encoded event to
bounded queues drained by worker tasks in the supervisor. A full queue drops the event, counts it
and logs it. On shutdown the workers flush what is queued under a short shielded deadline.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import random
import stat
import sys
from collections.abc import Callable
from functools import partial
from typing import IO

import httpx
import trio

from engine.config import SinksConfig
from engine.events import Event, encode
from engine.log import get_logger
from engine.metrics import Registry

log = get_logger(__name__)

FLUSH_DEADLINE_S = 2.0
JSONL_QUEUE = 100_000


def _is_regular_file(out: IO[str]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(out.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False  # e.g. a StringIO in tests, or a closed stream: the thread path is always safe


def _write_and_flush(out: IO[str], text: str) -> None:
    out.write(text)
    out.flush()


def sign(secret: str, body: bytes) -> str:
    """The ``X-Sori-Signature`` header value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class EventSinks:
    """All configured sinks; run by the supervisor as the ``sinks`` service."""

    name = "sinks"

    def __init__(
        self,
        config: SinksConfig,
        metrics: Registry,
        *,
        on_event: Callable[[Event], None] | None = None,
        stdout: IO[str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.on_event = on_event
        self._stdout = stdout
        self._http_client = http_client
        self._jsonl_send, self._jsonl_recv = trio.open_memory_channel[bytes](JSONL_QUEUE if config.jsonl else 0)
        # Webhook lanes: events of one call always take the same lane, so each call's events arrive in order,
        # while up to ``webhook_workers`` requests are in flight (a 50 ms webhook must not cap the whole engine
        # at 20 events/s). The queue bound is shared out between the lanes.
        lanes = config.webhook_workers
        self._hook_lanes = [trio.open_memory_channel[bytes](max(1, config.webhook_queue // lanes)) for _ in range(lanes)]
        self._emitted = metrics.counter("events_total", "events emitted")
        self._dropped_jsonl = metrics.counter("events_dropped_total", "events dropped by a sink", "sink=jsonl")
        self._dropped_hook = metrics.counter("events_dropped_total", "events dropped by a sink", "sink=webhook")
        self._delivered_hook = metrics.counter("webhook_delivered_total", "webhook deliveries that got a 2xx")
        self._hook_failures = metrics.counter("webhook_failures_total", "webhook attempts that failed")

    def emit(self, event: Event) -> None:
        """Deliver an event to every sink without blocking; drops are counted and logged."""
        self._emitted.inc()
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:
                log.error("on_event_callback_failed", exc=exc)
        if not (self.config.jsonl or self.config.webhook_url):
            return
        body = encode(event)
        if self.config.jsonl:
            try:
                self._jsonl_send.send_nowait(body)
            except trio.WouldBlock:
                self._dropped_jsonl.inc()
                log.warning("event_dropped", sink="jsonl", type=type(event).__name__, call_sid=event.call_sid)
        if self.config.webhook_url:
            try:
                self._hook_lanes[hash(event.call_sid) % len(self._hook_lanes)][0].send_nowait(body)
            except trio.WouldBlock:
                self._dropped_hook.inc()
                log.warning("event_dropped", sink="webhook", type=type(event).__name__, call_sid=event.call_sid)

    def webhook_queued(self) -> int:
        """Events waiting for the webhook, across lanes (for metrics and tests)."""
        return sum(send.statistics().current_buffer_used for send, _ in self._hook_lanes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.config.jsonl:
                nursery.start_soon(self._jsonl_worker)
            if self.config.webhook_url:
                nursery.start_soon(self._webhook_workers)
            task_status.started()
            await trio.sleep_forever()  # a service runs until cancelled, even with no worker

    # -- JSON lines ----------------------------------------------------------------------------
    async def _jsonl_worker(self) -> None:
        target = self.config.jsonl
        raw: IO[str] = (self._stdout or sys.stdout) if target == "-" else await trio.to_thread.run_sync(
            partial(open, target, "a", encoding="utf-8"))
        # A regular file takes a small write into the page cache in microseconds: write it inline. A pipe or
        # a terminal can block when its reader is slow: write through a worker thread (one hop per batch).
        inline = _is_regular_file(raw)
        try:
            while True:
                first = await self._jsonl_recv.receive()
                await self._write_batch(raw, first, inline=inline)
        finally:
            with trio.move_on_after(FLUSH_DEADLINE_S, shield=True):
                await self._write_batch(raw, None, inline=inline)
            if target != "-":
                raw.close()

    async def _write_batch(self, out: IO[str], first: bytes | None, *, inline: bool) -> None:
        """Write every queued line at once."""
        lines = [first] if first is not None else []
        while True:
            try:
                lines.append(self._jsonl_recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if not lines:
            return
        text = "".join(line.decode() + "\n" for line in lines)
        if inline:
            out.write(text)
            out.flush()
        else:
            await trio.to_thread.run_sync(_write_and_flush, out, text)

    # -- webhook -------------------------------------------------------------------------------
    async def _webhook_workers(self) -> None:
        client = self._http_client or httpx.AsyncClient(timeout=self.config.webhook_timeout_ms / 1000)
        try:
            async with trio.open_nursery() as nursery:
                for _, receive in self._hook_lanes:
                    nursery.start_soon(self._webhook_worker, client, receive)
        finally:
            if self._http_client is None:
                with trio.move_on_after(1.0, shield=True):
                    await client.aclose()

    async def _webhook_worker(self, client: httpx.AsyncClient, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        try:
            while True:
                body = await receive.receive()
                await self._deliver(client, body)
        finally:
            with trio.move_on_after(FLUSH_DEADLINE_S, shield=True):
                while True:
                    try:
                        body = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    await self._deliver(client, body, retries=0)

    async def _deliver(self, client: httpx.AsyncClient, body: bytes, retries: int | None = None) -> None:
        assert self.config.webhook_url is not None
        headers = {"content-type": "application/json"}
        if self.config.webhook_secret:
            headers["x-sori-signature"] = sign(self.config.webhook_secret, body)
        attempts = 1 + (self.config.webhook_retries if retries is None else retries)
        timeout_s = self.config.webhook_timeout_ms / 1000
        problem = "no attempt"
        for attempt in range(attempts):
            try:
                with trio.fail_after(timeout_s):
                    response = await client.post(self.config.webhook_url, content=body, headers=headers)
                if response.status_code < 300:
                    self._delivered_hook.inc()
                    return
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    problem = f"rejected with status {response.status_code}"
                    break
                problem = f"status {response.status_code}"
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                problem = type(exc).__name__
            self._hook_failures.inc()
            if attempt + 1 < attempts:
                await trio.sleep(min(10.0, 0.2 * 2**attempt) * (1 + 0.2 * random.random()))
        self._dropped_hook.inc()
        log.warning("event_dropped", sink="webhook", reason=problem)

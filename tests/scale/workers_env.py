"""Runs ``sori serve --workers N`` as a real process tree and watches its logs, events and admin endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from .redis_server import free_port


class Parent:
    def __init__(self, proc: trio.Process, admin_port: int) -> None:
        self.proc = proc
        self.admin_port = admin_port
        self.logs: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.changed = trio.Event()
        self.twilio_port: int | None = None

    async def _pump(self, stream: Any, into: list[dict[str, Any]]) -> None:
        buf = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    into.append(json.loads(line))
                except ValueError:
                    into.append({"raw": line.decode(errors="replace")})
            old, self.changed = self.changed, trio.Event()
            old.set()

    async def wait_log(self, predicate: Callable[[dict[str, Any]], bool], start: int = 0) -> dict[str, Any]:
        """The first log line (from index ``start``) matching ``predicate``, waiting for it."""
        while True:
            for entry in self.logs[start:]:
                if predicate(entry):
                    return entry
            await self.changed.wait()

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.get(f"http://127.0.0.1:{self.admin_port}{path}")

    async def wait_ready(self) -> None:
        while (await self.get("/readyz")).status_code != 200:
            await trio.sleep(0.05)  # a poll of the condition, not a timing assumption

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)


@asynccontextmanager
async def workers(n: int, *extra: str, env: dict[str, str] | None = None) -> AsyncIterator[Parent]:
    admin_port = free_port()
    cmd = [sys.executable, "-m", "engine", "serve", "--workers", str(n), "--stt", "emulator", "--allow-unsigned",
           "--port", "0", "--admin-port", str(admin_port), *extra]
    full_env = {**os.environ, **(env or {})}
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)
    parent = Parent(proc, admin_port)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parent._pump, proc.stderr, parent.logs)
            nursery.start_soon(parent._pump, proc.stdout, parent.events)
            started = await parent.wait_log(lambda e: e.get("event") == "workers_starting")
            parent.twilio_port = int(started["port"])
            yield parent
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(20, shield=True):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        _kill_orphans(parent)


def _kill_orphans(parent: Parent) -> None:
    """Workers left behind by a failed test (they also drain by themselves once the parent is gone)."""
    pids = {e.get("pid") for e in parent.logs if e.get("event") == "worker_spawned"}
    for pid in pids:
        if isinstance(pid, int):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

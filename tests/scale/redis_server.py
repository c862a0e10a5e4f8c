"""A real ``redis-server`` for the scale tests: a free port, a temp dir, started and stopped by fixtures."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

READY_TIMEOUT_S = 20.0


def redis_server_binary() -> str:
    """The redis-server path, or skip with the reason (``make test`` installs Debian's ``redis-server``)."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not installed (make test installs it: apt-get install redis-server)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``stop``/``start`` keep the port, so clients reconnect to the same URL."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None
        # No persistence: a restart comes back empty, the hardest case for the budget.
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ping()

    def _wait_ping(self) -> None:
        """Wait until it answers PING (a condition, bounded; it exits early if the server died)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
            proc.wait(timeout=10)

    def command(self, *args: str) -> bytes:
        """A blocking one-shot command (for assertions), raw reply bytes."""
        from engine.redis.resp import encode_command

        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(encode_command(*args))
            return s.recv(65536)

    def zcard(self, key: str) -> int:
        reply = self.command("ZCARD", key)
        assert reply.startswith(b":"), reply
        return int(reply[1:].strip())

"""Start-up, readiness and shutdown of the real engine (``engine.app``) on loopback.

- A port that cannot be bound is a start-up failure: ``serve`` raises a StartupError naming the
  service and the port, and ``sori serve`` prints one line and exits 1 (it used to retry forever).
- /livez answers while the event loop runs; /readyz answers 200 only when a call would be served
  at once, and 503 with the reason otherwise.
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from engine.app import Engine, build, serve
from engine.config import Config, cli_overrides, load
from engine.nursery import StartupError
from engine.rtzr.auth import RtzrAuthError
from engine.rtzr.emulator import Emulator, EmulatorConfig
from engine.rtzr.emulator.local import in_process

ROOT = Path(__file__).resolve().parents[2]


def make_config(*assignments: str) -> Config:
    return load(environ={}, cli=cli_overrides([
        "server.host=127.0.0.1", "server.port=0", "server.admin_host=127.0.0.1", "server.admin_port=0",
        "server.allow_unsigned=true", "sinks.jsonl=", *assignments,
    ]))


def fast_emulator(**kw: object) -> EmulatorConfig:
    return EmulatorConfig(host="127.0.0.1", port=0, handshake_ms=10, final_ms=50, **kw)  # type: ignore[arg-type]


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the duration."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def serve_expecting_startup_error(config: Config) -> StartupError:
    with trio.fail_after(30):  # the old supervisor retried the bind forever: this deadline fired
        with pytest.raises(StartupError) as info:
            await serve(config, stt=in_process(fast_emulator()), handle_signals=False)
    return info.value


@pytest.mark.parametrize(("service", "flag"), [("admin", "server.admin_port"), ("twilio", "server.port")])
async def test_a_taken_port_is_a_startup_error_naming_service_host_and_port(service: str, flag: str) -> None:
    with taken_port() as port:
        err = await serve_expecting_startup_error(make_config(f"{flag}={port}"))
    assert err.service == service and err.address == ("127.0.0.1", port)
    assert isinstance(err.cause, OSError) and err.cause.errno == errno.EADDRINUSE
    assert str(err).startswith(f"cannot listen on 127.0.0.1:{port} ({service}): [Errno {errno.EADDRINUSE}]")


async def test_admin_starts_first_so_a_taken_admin_port_fails_before_rtzr_is_touched() -> None:
    with taken_port() as admin_port, taken_port() as twilio_port:
        err = await serve_expecting_startup_error(make_config(f"server.admin_port={admin_port}",
                                                              f"server.port={twilio_port}"))
    assert err.service == "admin"


async def test_sori_serve_with_the_admin_port_taken_prints_one_line_and_exits_1() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORI_", "RTZR_", "TWILIO_"))}
    with taken_port() as port:
        with trio.fail_after(60):
            proc = await trio.run_process(
                [sys.executable, "-m", "engine", "serve", "--stt", "emulator", "--allow-unsigned",
                 "--host", "127.0.0.1", "--port", "0", "--admin-port", str(port), "--set", "sinks.jsonl="],
                cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True, check=False)
    stderr = proc.stderr.decode()
    plain = [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert proc.returncode == 1, stderr
    assert plain == [f"sori: cannot listen on 127.0.0.1:{port} (admin): [Errno {errno.EADDRINUSE}] "
                     f"{os.strerror(errno.EADDRINUSE)}"], stderr
    for line in stderr.splitlines():  # the JSON log lines name the real cause, not a trio wrapper
        if line.startswith("{") and json.loads(line)["level"] == "error":
            assert "ExceptionGroup" not in line


async def test_readyz_is_200_once_the_emulated_engine_is_ready_and_livez_always() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            engine: Engine = await nursery.start(
                lambda task_status: serve(make_config(), stt=in_process(fast_emulator()), handle_signals=False,
                                          task_status=task_status))
            admin_port = engine.admin.bound_port
            assert admin_port is not None
            assert await http_get(admin_port, "/livez") == (200, b"ok\n")
            await engine.wait_ready()
            assert engine.pool.idle_count >= 1
            assert await http_get(admin_port, "/readyz") == (200, b"ok\n")
            assert await http_get(admin_port, "/healthz") == (200, b"ok\n")
            engine.shutdown()


async def test_readyz_is_503_naming_authentication_when_rtzr_rejects_the_credentials() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            emulator = await nursery.start(Emulator(fast_emulator(client_id="sori", client_secret="right-secret")).run)
            config = make_config(f"rtzr.api_base={emulator.api_base}", f"rtzr.ws_url={emulator.ws_url}",
                                 "rtzr.client_id=sori", "rtzr.client_secret=wrong-secret")
            engine = build(config, handle_signals=False)
            nursery.start_soon(engine.supervisor.run)
            await engine.supervisor.ready.wait()
            with pytest.raises(RtzrAuthError):
                await engine.tokens.get()  # returns when the token manager has its answer: rejected
            admin_port = engine.admin.bound_port
            assert admin_port is not None
            status, body = await http_get(admin_port, "/readyz")
            assert status == 503 and b"authentication" in body, body
            assert b"wrong-secret" not in body
            assert await http_get(admin_port, "/livez") == (200, b"ok\n")
            engine.shutdown()
            nursery.cancel_scope.cancel()


async def test_demo_says_the_pool_is_warm_only_once_it_is() -> None:
    from engine.demo import DEMO_AUDIO, demo_config, run_demo

    out = io.StringIO()
    config = demo_config(["rtzr.pool.spare=2", "budgets.auth=20000", "budgets.connect=20000"])  # bound, not a race
    with trio.fail_after(60):
        result = await run_demo(config, DEMO_AUDIO, out=out, speed="fast")
    first = out.getvalue().splitlines()[0]
    assert first.endswith("(EMULATED text), pool warm with 2 sockets"), first
    assert result.ended is not None

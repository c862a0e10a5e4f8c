"""wss:// for real: the RTZR client through TLS (a local TLS terminator in front of the emulator)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio

from engine.budgets import Budget
from engine.rtzr.emulator.server import Emulator
from engine.rtzr.protocol import EOS
from engine.rtzr.wsclient import ConnectionClosed, WsClientConnection

from .rtzr_env import emulator_config, tone

trustme = pytest.importorskip("trustme")


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.move_on_after(1, shield=True):
            await dst.aclose()


async def tls_terminator(server_ctx: ssl.SSLContext, backend_port: int, *, task_status: Any) -> None:
    """Accept TLS on an ephemeral port and forward the plaintext to the emulator (what a proxy does)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handle(tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, server_ctx, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return  # e.g. the client refused our certificate
        backend = await trio.open_tcp_stream("127.0.0.1", backend_port)
        async with trio.open_nursery() as n:
            n.start_soon(_pump, tls, backend)
            n.start_soon(_pump, backend, tls)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def test_wss_handshake_audio_and_eos_through_tls() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            emu: Emulator = await nursery.start(Emulator(emulator_config()).run)
            port = await nursery.start(tls_terminator, server_ctx, emu.port)
            url = f"wss://127.0.0.1:{port}/v1/transcribe:streaming?sample_rate=8000&encoding=LINEAR16"
            conn = await WsClientConnection.connect(
                url, send_budget=Budget("send", 1000), max_message_size=1 << 20, ssl_context=client_ctx,
                extra_headers=[(b"authorization", f"Bearer {emu.issue_token()}".encode())])
            await conn.send_bytes(tone(600))
            await conn.send_text(EOS)
            messages: list[str | bytes] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    messages.append(await conn.receive_message())
            assert closed.value.code == 1000
            assert any('"final":true' in m for m in messages if isinstance(m, str))
            nursery.cancel_scope.cancel()


async def test_wss_refuses_an_untrusted_certificate() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    untrusting = ssl.create_default_context()  # does not trust our test CA
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            emu: Emulator = await nursery.start(Emulator(emulator_config()).run)
            port = await nursery.start(tls_terminator, server_ctx, emu.port)
            url = f"wss://127.0.0.1:{port}/v1/transcribe:streaming?sample_rate=8000&encoding=LINEAR16"
            with pytest.raises((trio.BrokenResourceError, ssl.SSLError, OSError)):
                await WsClientConnection.connect(url, send_budget=Budget("send", 1000), max_message_size=1 << 20,
                                                 ssl_context=untrusting)
            nursery.cancel_scope.cancel()

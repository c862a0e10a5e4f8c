"""The application channel never waits on a dead peer: after ``ping_ms`` of silence sori pings, and a peer
that answers neither the ping nor anything else within ``ping_ms`` more is closed ("ping_timeout")."""

from __future__ import annotations

import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Event, Ping, Request

from tests.appchannel.support import SECRET, make_config, running_engine


async def _raw_app(port: int) -> tuple[trio.SocketStream, wsproto.WSConnection]:
    """An application that speaks WebSocket by hand: it answers a ping only when the test says so."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target="/app",
                                          extra_headers=[(b"authorization", f"Bearer {SECRET}".encode())])))
    return stream, ws


async def _events(stream: trio.SocketStream, ws: wsproto.WSConnection) -> list[Event]:
    data = await stream.receive_some(65536)
    ws.receive_data(data or None)
    return list(ws.events())


async def test_a_peer_that_never_answers_is_closed() -> None:
    config = make_config()
    config.app_channel.ping_ms = 100
    with trio.fail_after(20):
        async with running_engine(config) as (engine, _):
            assert engine.app_channel is not None
            stream, ws = await _raw_app(engine.app_channel.port or 0)
            seen: list[Event] = []
            while not any(isinstance(e, CloseConnection) for e in seen):
                seen += await _events(stream, ws)  # EOF reads as a close (1006) too
            assert any(isinstance(e, AcceptConnection) for e in seen)
            assert any(isinstance(e, Ping) for e in seen)  # pinged, not answered, then closed by sori
            close = next(e for e in seen if isinstance(e, CloseConnection))
            assert close.code == 1000, close
            await stream.aclose()


async def test_a_peer_that_answers_pings_stays() -> None:
    config = make_config()
    config.app_channel.ping_ms = 1500  # a peer on a loaded machine still answers within 1.5 s
    with trio.fail_after(30):
        async with running_engine(config) as (engine, _):
            assert engine.app_channel is not None
            stream, ws = await _raw_app(engine.app_channel.port or 0)
            pings = 0
            while pings < 2:
                for event in await _events(stream, ws):
                    assert not isinstance(event, CloseConnection), event
                    if isinstance(event, Ping):
                        pings += 1
                        await stream.send_all(ws.send(event.response()))
            assert engine.app_channel.connections == 1  # still connected after two silences
            await stream.aclose()

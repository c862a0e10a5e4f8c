"""Issue 13 round 3 (mem2): wsproto's event queue as a list (an empty deque is 0.74 KiB on every connection)."""

from __future__ import annotations

from collections import deque

from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import CloseConnection, Ping, TextMessage

from engine.ws.connection import lean_events


def test_wsproto_reports_the_same_events_from_the_list() -> None:
    client, server = Connection(ConnectionType.CLIENT), Connection(ConnectionType.SERVER)
    assert type(server._events) is deque
    lean_events(server)
    assert type(server._events) is not deque and isinstance(server._events, list)
    data = client.send(Ping(b"p")) + client.send(TextMessage("hi")) + client.send(CloseConnection(1000, "bye"))
    server.receive_data(data)
    got = list(server.events())
    assert [type(e) for e in got] == [Ping, TextMessage, CloseConnection]
    server.receive_data(None)  # EOF: wsproto appends its 1006 close itself
    assert [(type(e), e.code) for e in server.events()] == [(CloseConnection, 1006)]  # type: ignore[attr-defined]


def test_events_already_queued_are_kept() -> None:
    client, server = Connection(ConnectionType.CLIENT), Connection(ConnectionType.SERVER)
    server.receive_data(client.send(Ping(b"a")))
    lean_events(server)
    assert [type(e) for e in server.events()] == [Ping]
    lean_events(object())  # anything without wsproto's deque is left alone

"""The opening handshake: UpgradeHandshake (h11, sans-IO) against a wsproto client, and at the server."""

from __future__ import annotations

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request, TextMessage

from engine.twilio.signature import compute_signature
from engine.twilio.wsconn import HandshakeFailed, UpgradeHandshake
from tests.twilio.twilio_support import TOKEN, make_config, running_server

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's sample nonce (16 bytes)


def head(*lines: bytes, method: bytes = b"GET", version: bytes = b"1.1", target: bytes = b"/twilio/media") -> bytes:
    return b"%s %s HTTP/%s\r\n" % (method, target, version) + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


GOOD = (b"Host: example.com", b"Upgrade: websocket", b"Connection: keep-alive, Upgrade",
        b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: " + KEY)


def test_request_byte_by_byte_then_accept_hands_over_the_trailing_frames() -> None:
    client = WSConnection(ConnectionType.CLIENT)
    data = client.send(Request(host="example.com", target="/twilio/media", subprotocols=["audio.twilio.com"],
                               extra_headers=[(b"X-Twilio-Signature", b"s")]))
    frames = Connection(ConnectionType.CLIENT).send(TextMessage("early"))
    hs = UpgradeHandshake()
    stream = data + frames
    got = [hs.receive_data(stream[i:i + 1]) for i in range(len(data) - 1)]
    assert got == [None] * (len(data) - 1)  # nothing before the head is complete
    request = hs.receive_data(stream[len(data) - 1:len(data) + 3])  # the last byte of the head + 3 of a frame
    assert request is not None and hs.request is request
    assert (request.target, request.host) == ("/twilio/media", "example.com")
    assert request.header(b"x-twilio-signature") == b"s" and request.header(b"host") == b"example.com"
    assert request.subprotocols == ("audio.twilio.com",)
    response, trailing = hs.accept()
    assert trailing == frames[:3]  # exactly what followed the head, for the frame layer
    client.receive_data(response)
    accepted = list(client.events())
    assert len(accepted) == 1 and isinstance(accepted[0], AcceptConnection)
    assert accepted[0].subprotocol is None and accepted[0].extensions == []  # offered, none selected
    assert hs.reject(503, b"late") == b""  # after the 101 there is no HTTP left to answer with


@pytest.mark.parametrize(("data", "status"), [
    (head(*GOOD, method=b"POST"), 400),
    (head(*GOOD, version=b"1.0"), 400),
    (head(*(h for h in GOOD if not h.startswith(b"Connection"))), 400),
    (head(*(h for h in GOOD if not h.startswith(b"Upgrade")), b"Upgrade: h2c"), 400),
    (head(*(h for h in GOOD if not h.startswith(b"Sec-WebSocket-Version"))), 400),
    (head(*(h for h in GOOD if not h.startswith(b"Sec-WebSocket-Version")), b"Sec-WebSocket-Version: 8"), 426),
    (head(*(h for h in GOOD if not h.startswith(b"Sec-WebSocket-Key"))), 400),
    (head(*(h for h in GOOD if not h.startswith(b"Sec-WebSocket-Key")), b"Sec-WebSocket-Key: c2hvcnQ="), 400),
    (head(*GOOD, b"Sec-WebSocket-Key: " + KEY), 400),  # two keys
    (head(*(h for h in GOOD if not h.startswith(b"Host")), b"Host: \xff"), 400),
    (head(*GOOD, b"Host: other.example"), 400),  # two hosts: which URL was signed?
    (head(*GOOD, b"Content-Length: 3") + b"abc", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n", 400),
    (head(*GOOD, b"X-Pad: " + b"a" * 20_000), 431),
])
def test_what_is_not_a_websocket_upgrade_gets_its_status(data: bytes, status: int) -> None:
    hs = UpgradeHandshake()
    with pytest.raises(HandshakeFailed) as info:
        hs.receive_data(data)
    assert info.value.status == status
    client = WSConnection(ConnectionType.CLIENT)
    client.send(Request(host="example.com", target="/"))
    client.receive_data(hs.reject(status, b"bad request\n"))  # h11 still answers after a parse error
    events = list(client.events())
    assert isinstance(events[0], RejectConnection) and events[0].status_code == status
    assert b"".join(bytes(e.data) for e in events if isinstance(e, RejectData)) == b"bad request\n"
    if status == 426:  # RFC 6455 4.4: the versions we speak
        assert (b"sec-websocket-version", b"13") in events[0].headers


def test_head_request_rejection_has_no_body() -> None:
    hs = UpgradeHandshake()
    with pytest.raises(HandshakeFailed):
        hs.receive_data(head(*GOOD, method=b"HEAD"))
    answer = hs.reject(400, b"bad request\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b"\r\n\r\n")


async def _exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    response = b""
    while chunk := await stream.receive_some(4096):
        response += chunk
        if b"\r\n\r\n" in response and response.startswith(b"HTTP/1.1 101"):
            break
    await stream.aclose()
    return response


async def test_a_host_that_is_not_ascii_is_400_not_a_crash() -> None:
    """wsproto's handshake IDNA-decoded Host and its UnicodeError escaped: no answer, a connection failure."""
    garbage = head(*(h for h in GOOD if not h.startswith(b"Host")), b"Host: \xff",
                   b"X-Twilio-Signature: x")
    with trio.fail_after(10):
        async with running_server(make_config()) as srv:
            response = await _exchange(srv.port, garbage)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert srv.metrics.value("twilio_calls_rejected_total", "status=400") == 1
    assert srv.metrics.value("twilio_connection_failures_total") == 0 and srv.handlers == []


async def test_punycode_host_is_signed_as_sent() -> None:
    """The signed URL uses the Host header verbatim; wsproto's handshake turned xn-- labels into Unicode (403)."""
    host = "xn--bcher-kva.example"
    signature = compute_signature(TOKEN, f"wss://{host}/twilio/media").encode()
    with trio.fail_after(10):
        async with running_server(make_config()) as srv:
            client = WSConnection(ConnectionType.CLIENT)
            data = client.send(Request(host=host, target="/twilio/media",
                                       extra_headers=[(b"X-Twilio-Signature", signature)]))
            client.receive_data(await _exchange(srv.port, data))
            events = list(client.events())
    assert isinstance(events[0], AcceptConnection), events
    assert srv.metrics.value("twilio_calls_accepted_total") == 1

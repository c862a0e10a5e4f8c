"""The server side of the WebSocket opening handshake on h11, sans-IO (RFC 6455 4.2).

The upgrade is ours, as in hypercorn: :class:`UpgradeHandshake` parses the request with h11 and checks
it (RFC 6455 4.2.1), the caller admits it, then we answer 101 (or an HTTP error) through the same h11
connection and hand the bytes the client sent behind the request head (h11's public
``trailing_data``) to a wsproto :class:`~wsproto.connection.Connection` (the post-handshake frame
layer). wsproto's own handshake object is not used.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import h11
from wsproto.utilities import generate_accept_token


class HandshakeFailed(Exception):
    """No usable upgrade request: ``status`` is the HTTP error to answer with (0: the peer left)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(f"{status} {why}")
        self.status = status
        self.why = why


WEBSOCKET_VERSION = b"13"  # RFC 6455 4.1: the only version; anything else gets 426 + this version
MAX_REQUEST_HEAD = 16 * 1024  # h11's default: a longer head is 431


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A checked WebSocket upgrade request (RFC 6455 4.2.1).

    ``headers`` are all the request's headers as received (``Host`` included), names lower-cased by
    h11. ``subprotocols`` and ``extensions`` are what the client offered; we select none (Twilio
    offers none, and an unselected offer is a valid answer).
    """

    target: str
    host: str
    key: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    subprotocols: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` lower case), or None."""
        return next((value for key, value in self.headers if key == name), None)


def _tokens(values: list[bytes]) -> list[bytes]:
    """The comma-separated tokens of a header's values, stripped and lower-cased."""
    return [token.strip().lower() for value in values for token in value.split(b",") if token.strip()]


def _check_upgrade(event: h11.Request) -> UpgradeRequest:
    """An h11 request as a WebSocket upgrade (RFC 6455 4.2.1), or HandshakeFailed with the status to answer."""
    if event.method != b"GET":
        raise HandshakeFailed(400, f"method {event.method.decode('ascii', 'replace')} is not GET")
    if event.http_version != b"1.1":  # 4.1: "The method of the request MUST be GET, and the HTTP version MUST be at least 1.1"
        raise HandshakeFailed(400, "HTTP/1.1 is required")
    values: dict[bytes, list[bytes]] = {}
    for name, value in event.headers:  # h11 lower-cases names and validates the syntax
        values.setdefault(name, []).append(value)
    if b"upgrade" not in _tokens(values.get(b"connection", [])):
        raise HandshakeFailed(400, "missing Connection: Upgrade")
    if b"websocket" not in _tokens(values.get(b"upgrade", [])):
        raise HandshakeFailed(400, "missing Upgrade: websocket")
    versions = values.get(b"sec-websocket-version", [])
    if versions != [WEBSOCKET_VERSION]:
        raise HandshakeFailed(426 if versions else 400, "Sec-WebSocket-Version must be 13")
    keys = values.get(b"sec-websocket-key", [])
    try:
        valid_key = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16  # 4.2.1 item 5
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeFailed(400, "bad Sec-WebSocket-Key")
    hosts = values.get(b"host", [])  # h11 already requires one for HTTP/1.1
    if len(hosts) != 1 or not hosts[0] or not hosts[0].isascii():
        raise HandshakeFailed(400, "bad Host")
    return UpgradeRequest(
        target=event.target.decode("ascii"),  # h11 admits only visible ASCII in the target
        host=hosts[0].decode("ascii"),  # as sent: the signed URL uses it verbatim (no IDNA decoding)
        key=keys[0],
        headers=tuple((name, value) for name, value in event.headers),
        subprotocols=tuple(t.decode("latin-1") for t in _tokens(values.get(b"sec-websocket-protocol", []))),
        extensions=tuple(t.decode("latin-1") for t in _tokens(values.get(b"sec-websocket-extensions", []))),
    )


class UpgradeHandshake:
    """The server side of the opening handshake on h11, sans-IO (hypercorn's way, not wsproto's handshake).

    Feed the request bytes to :meth:`receive_data` until it returns the checked request; the caller
    decides, then :meth:`accept` gives the 101 response and the bytes the client sent behind the
    request head (its first WebSocket frames, for a wsproto ``Connection``), or :meth:`reject` gives
    an HTTP error response. Anything that is not an upgrade raises :class:`HandshakeFailed` with the
    status to answer (400, 426 wrong version, 431 head too long), which :meth:`reject` can still send.
    """

    def __init__(self, max_head: int = MAX_REQUEST_HEAD) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._max_head = max_head
        self._method = b""
        self._checked: UpgradeRequest | None = None  # the request head, checked; complete at PAUSED
        self.request: UpgradeRequest | None = None

    def receive_data(self, data: bytes) -> UpgradeRequest | None:
        """Feed received bytes (not EOF); the request once it is complete, else None (send more)."""
        if self.request is not None:
            raise RuntimeError("the upgrade request is complete; answer it")
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HandshakeFailed(exc.error_status_hint, str(exc) or "bad HTTP request") from None
            if event is h11.NEED_DATA:
                return None
            if event is h11.PAUSED:  # the request is complete; h11 waits for our answer to its Upgrade
                self.request = self._checked
                return self.request
            if isinstance(event, h11.Request):
                self._method = event.method
                # h11 bounds only an incomplete head; one that arrives whole in a read is bounded here.
                if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > self._max_head:
                    raise HandshakeFailed(431, "request head too long")
                self._checked = _check_upgrade(event)
            elif isinstance(event, h11.Data):
                raise HandshakeFailed(400, "an upgrade request has no body")
            elif not isinstance(event, h11.EndOfMessage):  # ConnectionClosed: we never feed EOF
                raise HandshakeFailed(400, f"unexpected {type(event).__name__}")

    def accept(self) -> tuple[bytes, bytes]:
        """The 101 response (no subprotocol, no extension), and the bytes received after the request head."""
        if self.request is None:
            raise RuntimeError("no complete upgrade request to accept")
        headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                   (b"sec-websocket-accept", generate_accept_token(self.request.key))]
        response = self._h11.send(h11.InformationalResponse(status_code=101, headers=headers,
                                                            reason=b"Switching Protocols"))
        # h11 is now SWITCHED_PROTOCOL: what it buffered past the request is the WebSocket's, by its public API.
        trailing, _eof = self._h11.trailing_data
        return response or b"", trailing

    def reject(self, status: int, body: bytes) -> bytes:
        """An HTTP error response (the connection is to be closed after it); b"" if none can be sent now."""
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        if status == 426:  # RFC 6455 4.4: tell the client the versions we speak
            headers.append((b"sec-websocket-version", WEBSOCKET_VERSION))
        try:
            data = self._h11.send(h11.Response(status_code=status, headers=headers)) or b""
            if self._method != b"HEAD":  # a response to HEAD has no body
                data += self._h11.send(h11.Data(data=body)) or b""
            data += self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # already answered (101 sent): nothing valid to say in HTTP
            return b""
        return data

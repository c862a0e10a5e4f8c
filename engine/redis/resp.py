"""RESP2 (the Redis serialization protocol), sans-IO: encode commands, parse replies incrementally.

``RespParser.feed(data)`` then ``next_reply()`` until it returns :data:`NEED_DATA`. A reply is
``str`` (simple string), ``int``, ``bytes`` or ``None`` (bulk), ``list`` or ``None`` (array), or a
:class:`RedisError` (an error reply is a value, so one bad command never desynchronises the stream).
Malformed input raises :class:`RespProtocolError`; sizes and nesting are bounded, so a hostile or
broken peer cannot make us allocate without limit.
"""

from __future__ import annotations

import re
from typing import Final, TypeAlias

MAX_BULK: Final = 16 * 1024 * 1024
MAX_ARRAY: Final = 1_000_000
MAX_DEPTH: Final = 16
MAX_LINE: Final = 64 * 1024

class RespProtocolError(Exception):
    """The peer sent bytes that are not RESP2 (or exceed our bounds); the connection must be dropped."""


class RedisError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``); returned as a value, raised by the client."""

    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]


Reply: TypeAlias = "str | int | bytes | list[Reply] | RedisError | None"
_INT = re.compile(rb"-?[0-9]{1,19}\Z")


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


def encode_command(*args: bytes | str | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("bool is not a Redis argument")
        else:
            data = repr(arg).encode() if isinstance(arg, float) else str(arg).encode()
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class RespParser:
    """Incremental RESP2 reply parser (one per connection)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_reply(self) -> Reply | _NeedData:
        """The next complete reply, or NEED_DATA (nothing consumed) until more bytes arrive."""
        result = self._parse(0, 0)
        if result is None:
            return NEED_DATA
        value, end = result
        del self._buf[:end]
        return value

    def _line(self, pos: int) -> tuple[bytes, int] | None:
        end = self._buf.find(b"\r\n", pos, pos + MAX_LINE + 2)
        if end < 0:
            if len(self._buf) - pos > MAX_LINE + 1:
                raise RespProtocolError("line too long")
            return None
        return bytes(self._buf[pos:end]), end + 2

    @staticmethod
    def _int(raw: bytes) -> int:
        if not _INT.match(raw):
            raise RespProtocolError(f"bad integer {raw[:32]!r}")
        return int(raw)

    def _parse(self, pos: int, depth: int) -> tuple[Reply, int] | None:
        if depth > MAX_DEPTH:
            raise RespProtocolError("arrays nested too deeply")
        got = self._line(pos)
        if got is None:
            return None
        line, nxt = got
        if not line:
            raise RespProtocolError("empty line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace"), nxt
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace")), nxt
        if kind == b":":
            return self._int(rest), nxt
        if kind == b"$":
            n = self._int(rest)
            if n == -1:
                return None, nxt
            if n < 0 or n > MAX_BULK:
                raise RespProtocolError(f"bad bulk length {n}")
            if len(self._buf) < nxt + n + 2:
                return None
            if self._buf[nxt + n : nxt + n + 2] != b"\r\n":
                raise RespProtocolError("bulk string not terminated by CRLF")
            return bytes(self._buf[nxt : nxt + n]), nxt + n + 2
        if kind == b"*":
            n = self._int(rest)
            if n == -1:
                return None, nxt
            if n < 0 or n > MAX_ARRAY:
                raise RespProtocolError(f"bad array length {n}")
            items: list[Reply] = []
            for _ in range(n):
                sub = self._parse(nxt, depth + 1)
                if sub is None:
                    return None
                value, nxt = sub
                items.append(value)
            return items, nxt
        raise RespProtocolError(f"unknown reply type {kind!r}")

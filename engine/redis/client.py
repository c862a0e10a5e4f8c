"""One Redis connection under Trio: commands in order, each under a deadline, reconnect on demand.

Every failure of the connection (refused, reset, timeout, garbage) becomes :class:`RedisUnavailable`
and drops the socket; the next command reconnects. A reply that arrives after its deadline would
desynchronise the stream, so a timeout always closes the connection. Error replies raise
:class:`RedisError` and keep the connection.
"""

from __future__ import annotations

import hashlib
import ssl
import urllib.parse
from dataclasses import dataclass

import trio

from engine.redis.resp import RedisError, Reply, RespParser, RespProtocolError, _NeedData, encode_command

READ_CHUNK = 65536


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer in time (the connection has been dropped)."""


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    def display(self) -> str:
        """host:port/db, never the password."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS); ValueError when malformed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("expected redis://host[:port][/db] or rediss://...")
    port = parts.port or 6379
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"database must be a number, got {path!r}")
    return RedisAddress(parts.hostname, port, int(path or 0),
                        urllib.parse.unquote(parts.username) if parts.username else None,
                        urllib.parse.unquote(parts.password) if parts.password else None,
                        parts.scheme == "rediss")


class Script:
    """A Lua script run with EVALSHA, falling back to EVAL once the server has forgotten it (NOSCRIPT)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisClient:
    """A single connection; concurrent callers are serialised (one round trip at a time)."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.address = parse_redis_url(url)
        self.timeout_s = timeout_s
        self._stream: trio.abc.Stream | None = None
        self._parser = RespParser()
        self._lock = trio.Lock()

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def command(self, *args: bytes | str | int | float) -> Reply:
        """Send one command and return its reply; raises RedisError (error reply) or RedisUnavailable."""
        async with self._lock:
            try:
                with trio.fail_after(self.timeout_s):
                    stream = await self._connected()
                    reply = await self._round_trip(stream, encode_command(*args))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                    RespProtocolError, ssl.SSLError) as exc:
                await self._drop()
                raise RedisUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
            except BaseException:
                # Cancelled mid-round-trip: the reply may still come, and would answer the next command.
                await self._drop()
                raise
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def eval(self, script: Script, keys: list[str], args: list[bytes | str | int | float]) -> Reply:
        try:
            return await self.command("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisError as exc:
            if exc.code != "NOSCRIPT":
                raise
            return await self.command("EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        self._parser = RespParser()
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _connected(self) -> trio.abc.Stream:
        if self._stream is not None:
            return self._stream
        addr = self.address
        stream: trio.abc.Stream = await trio.open_tcp_stream(addr.host, addr.port)
        if addr.tls:
            ssl_stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=addr.host)
            await ssl_stream.do_handshake()
            stream = ssl_stream
        self._stream = stream
        try:
            if addr.password is not None:
                auth = ("AUTH", addr.username, addr.password) if addr.username else ("AUTH", addr.password)
                self._raise_error(await self._round_trip(stream, encode_command(*auth)))
            if addr.db:
                self._raise_error(await self._round_trip(stream, encode_command("SELECT", addr.db)))
        except RedisError as exc:
            await self._drop()
            raise RedisUnavailable(f"handshake refused: {exc}") from None
        return stream

    @staticmethod
    def _raise_error(reply: Reply) -> None:
        if isinstance(reply, RedisError):
            raise reply

    async def _round_trip(self, stream: trio.abc.Stream, data: bytes) -> Reply:
        await stream.send_all(data)
        while True:
            reply = self._parser.next_reply()
            if not isinstance(reply, _NeedData):
                return reply
            chunk = await stream.receive_some(READ_CHUNK)
            if not chunk:
                raise trio.BrokenResourceError("connection closed by Redis")
            self._parser.feed(chunk)

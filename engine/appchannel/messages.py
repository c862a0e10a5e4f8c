"""The application channel's wire schema (docs/app-channel.md), as msgspec Structs tagged by ``type``.

Application → sori: commands, one JSON text message each, addressed to a call by ``stream_sid``.
sori → application: the engine's events exactly as the sinks write them (``engine.events``), plus the
channel's own ``channel.*`` messages defined here. An optional ``ref`` on a command is echoed on the
error it causes, so an application can tell which command failed.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

Name = Annotated[str, Meta(min_length=1, max_length=256)]
Ref = Annotated[str, Meta(max_length=256)] | None


class Command(Struct, tag_field="type", kw_only=True, forbid_unknown_fields=True):
    """Base of every command."""

    stream_sid: Annotated[str, Meta(min_length=1, max_length=128)]
    ref: Ref = None


class Play(Command, tag="play"):
    """Queue audio: ``audio`` is base64 μ-law 8 kHz (``encoding="mulaw"``) or little-endian PCM16 at
    ``sample_rate`` (``"pcm16"``, resampled to 8 kHz). Reported by ``playback.started`` and then
    ``playback.finished`` or ``playback.interrupted``, under ``playback_id`` (sori's ``p<n>`` if absent)."""

    audio: bytes
    encoding: Literal["mulaw", "pcm16"] = "mulaw"
    sample_rate: Annotated[int, Meta(ge=4000, le=192_000)] = 8000
    playback_id: Name | None = None


class Mark(Command, tag="mark"):
    """Queue a mark: a ``mark`` event with this name once the audio queued before it has played."""

    name: Name


class Clear(Command, tag="clear"):
    """Drop queued and playing audio (``playback.interrupted``, reason ``clear``)."""


class Stop(Command, tag="stop"):
    """Clear playback and end the media stream (sori closes Twilio's WebSocket; the call then ends)."""


AnyCommand = Play | Mark | Clear | Stop


class Hello(Struct, tag_field="type", tag="channel.hello", kw_only=True):
    """First message after the upgrade: what this connection receives (``"*"``: every call), and the live
    calls it follows now (their ``stream_sid``: an application that reconnects mid-call picks them up)."""

    subscribed: str
    queue: int
    calls: list[str]


class ChannelError(Struct, tag_field="type", tag="channel.error", kw_only=True):
    """A command was refused; the call (if any) is unaffected."""

    code: str
    message: str
    ref: str | None = None
    stream_sid: str | None = None


class Dropped(Struct, tag_field="type", tag="channel.dropped", kw_only=True):
    """This connection read too slowly: ``count`` events were dropped (since the previous notice)."""

    count: int


_decoder: msgspec.json.Decoder[AnyCommand] = msgspec.json.Decoder(AnyCommand)
_encoder = msgspec.json.Encoder()


class BadCommand(Exception):
    """A message that is not a valid command; ``code`` for the application."""

    def __init__(self, code: str, message: str, ref: str | None = None, stream_sid: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.ref = ref
        self.stream_sid = stream_sid


class _Peek(Struct):
    ref: str | None = None
    stream_sid: str | None = None


_peek = msgspec.json.Decoder(_Peek)


def decode_command(data: str | bytes) -> AnyCommand:
    """One message → a command, or :class:`BadCommand` (``json``, ``schema`` or ``unknown_command``)."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        reason = str(exc)
        try:
            peek = _peek.decode(data)
            ref = peek.ref if isinstance(peek.ref, str) else None
            sid = peek.stream_sid if isinstance(peek.stream_sid, str) else None
        except (msgspec.ValidationError, msgspec.DecodeError):
            ref = sid = None
        code = "unknown_command" if "`$.type`" in reason else "schema"
        raise BadCommand(code, reason[:300], ref, sid) from None
    except msgspec.DecodeError as exc:
        raise BadCommand("json", str(exc)[:300]) from None


def encode(message: Hello | ChannelError | Dropped) -> bytes:
    return _encoder.encode(message)

"""RESP2 codec properties: any reply round-trips through any chunking; garbage is a clean protocol error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.redis.resp import NEED_DATA, RedisError, RespParser, RespProtocolError, encode_command

simple = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)
replies = st.recursive(
    st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=200), st.none(),
              simple.map(lambda s: ("+", s)), simple.map(lambda s: ("-", s))),
    lambda children: st.lists(children, max_size=6),
    max_leaves=30,
)


def encode_reply(value: Any) -> bytes:
    """A reference encoder for replies (the server side, which sori never needs)."""
    if isinstance(value, tuple):
        return f"{value[0]}{value[1]}\r\n".encode()
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(encode_reply(v) for v in value)


def expected(value: Any) -> Any:
    if isinstance(value, tuple):
        return value[1] if value[0] == "+" else ("ERR", value[1])
    if isinstance(value, list):
        return [expected(v) for v in value]
    return value


def normalise(reply: Any) -> Any:
    if isinstance(reply, RedisError):
        return ("ERR", str(reply))
    if isinstance(reply, list):
        return [normalise(v) for v in reply]
    return reply


@given(st.lists(replies, min_size=1, max_size=5), st.data())
def test_replies_round_trip_through_any_chunking(values: list[Any], data: st.DataObject) -> None:
    wire = b"".join(encode_reply(v) for v in values)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    parser = RespParser()
    got: list[Any] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        parser.feed(wire[prev:cut])
        prev = cut
        while (reply := parser.next_reply()) is not NEED_DATA:
            got.append(normalise(reply))
    assert got == [expected(v) for v in values]


@given(st.binary(max_size=300))
def test_garbage_never_crashes(blob: bytes) -> None:
    parser = RespParser()
    parser.feed(blob)
    try:
        for _ in range(len(blob) + 1):
            if parser.next_reply() is NEED_DATA:
                break
    except RespProtocolError:
        pass


@given(st.lists(st.one_of(st.binary(max_size=50), st.text(max_size=20), st.integers()), min_size=1, max_size=8))
def test_commands_are_arrays_of_bulk_strings(args: list[Any]) -> None:
    parser = RespParser()
    parser.feed(encode_command(*args))
    reply = parser.next_reply()
    assert reply == [a if isinstance(a, bytes) else str(a).encode() for a in args]


def test_bounds() -> None:
    for bad in (b"$99999999999\r\n", b"*-5\r\n", b"?x\r\n", b":12a\r\n", b"$3\r\nabcXY", b"\r\n"):
        parser = RespParser()
        parser.feed(bad)
        with pytest.raises(RespProtocolError):
            parser.next_reply()
    deep = RespParser()
    deep.feed(b"*1\r\n" * 40 + b":1\r\n")
    with pytest.raises(RespProtocolError):
        deep.next_reply()

"""Fragment reassembly shared by the Twilio server and RTZR client connections."""

from __future__ import annotations

import pytest
from wsproto.events import BytesMessage, TextMessage

from engine.ws.frames import MessageAssembler, MessageTooBig


def test_single_frame_message_passes_through() -> None:
    a = MessageAssembler(10)
    assert a.add(TextMessage(data="hello", message_finished=True)) == "hello"


def test_fragments_are_joined_in_order_for_text_and_bytes() -> None:
    a = MessageAssembler(100)
    assert a.add(TextMessage(data="안녕 ", message_finished=False)) is None
    assert a.add(TextMessage(data="오늘", message_finished=True)) == "안녕 오늘"
    assert a.add(BytesMessage(data=b"ab", message_finished=False)) is None
    assert a.add(BytesMessage(data=bytearray(b"cd"), message_finished=True)) == b"abcd"


def test_oversize_raises_and_resets() -> None:
    a = MessageAssembler(4)
    assert a.add(TextMessage(data="abc", message_finished=False)) is None
    with pytest.raises(MessageTooBig):
        a.add(TextMessage(data="de", message_finished=False))
    with pytest.raises(MessageTooBig):
        a.add(TextMessage(data="abcde", message_finished=True))
    assert a.add(TextMessage(data="ok", message_finished=True)) == "ok"

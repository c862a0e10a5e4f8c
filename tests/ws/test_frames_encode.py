"""The frame encoder (numpy masking for large payloads, the int XOR below) against a plain RFC 6455 reference,
and the masking keys (fresh per frame, drawn from os.urandom in batches, never shared with a forked child)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage

from engine.ws import frames
from engine.ws.frames import encode_frame, mask_key


def reference_frame(opcode: int, payload: bytes, mask: bytes | None) -> bytes:
    """RFC 6455 5.2 / 5.3 written out byte by byte: FIN, opcode, mask bit, minimal length, key, payload."""
    n = len(payload)
    out = bytearray([0x80 | opcode])
    bit = 0x80 if mask is not None else 0
    if n <= 125:
        out.append(bit | n)
    elif n <= 0xFFFF:
        out.append(bit | 126)
        out += bytes([n >> 8, n & 0xFF])
    else:
        out.append(bit | 127)
        out += bytes((n >> (8 * i)) & 0xFF for i in range(7, -1, -1))
    if mask is None:
        return bytes(out + payload)
    out += mask
    out += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(out)


# Both masking branches (numpy from frames._NUMPY_MASK_MIN bytes and a multiple of 4, the int XOR otherwise)
# and every length encoding (7-bit, 16-bit, 64-bit).
sizes = st.one_of(
    st.integers(0, 130),
    st.integers(frames._NUMPY_MASK_MIN - 8, frames._NUMPY_MASK_MIN + 8),
    st.sampled_from([800, 1600, 3200, 65532, 65535, 65536, 65540]),
    st.integers(0, 70_000),
)


@settings(max_examples=300, deadline=None)
@given(size=sizes, seed=st.binary(min_size=0, max_size=64), mask=st.binary(min_size=4, max_size=4),
       opcode=st.sampled_from([0x1, 0x2]))
def test_masked_frames_are_byte_identical_to_the_reference(size: int, seed: bytes, mask: bytes, opcode: int) -> None:
    payload = (seed * (size // max(1, len(seed)) + 1))[:size] if seed else os.urandom(size)
    assert encode_frame(opcode, payload, mask) == reference_frame(opcode, payload, mask)


@settings(max_examples=50, deadline=None)
@given(size=sizes)
def test_unmasked_frames_are_byte_identical_to_the_reference(size: int) -> None:
    payload = os.urandom(size)
    assert encode_frame(0x1, payload, None) == reference_frame(0x1, payload, None)


@pytest.mark.parametrize("n", [1600, 3200, 4096])
def test_numpy_masked_frames_decode_with_wsproto(n: int) -> None:
    server = Connection(ConnectionType.SERVER)
    payload = os.urandom(n)
    server.receive_data(encode_frame(0x2, payload, mask_key()))
    got = b"".join(bytes(e.data) for e in server.events() if isinstance(e, BytesMessage))
    assert got == payload


def test_mask_keys_are_fresh_and_drawn_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = os.urandom

    def counting(n: int) -> bytes:
        nonlocal calls
        calls += 1
        return real(n)

    monkeypatch.setattr(frames.os, "urandom", counting)
    frames._mask_keys.reset()
    keys = [mask_key() for _ in range(4096)]
    assert all(len(k) == 4 for k in keys)
    assert len(set(keys)) > 4000  # 4-byte random keys: a handful of repeats at most
    assert calls == 4096 * 4 // frames._MaskKeys.BATCH  # one os.urandom call per 1024 keys


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_its_own_keys() -> None:
    mask_key()  # the parent holds a batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next keys, to the parent
        try:
            os.write(write, b"".join(mask_key() for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while len(child) < 32:
        chunk = os.read(read, 32)
        assert chunk
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(mask_key() for _ in range(8))
    assert child != parent  # without the at-fork reset both would continue the same batch

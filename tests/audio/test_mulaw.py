"""Exhaustive μ-law tests against a plain reference of the algorithm in protocols/twilio.md."""

from __future__ import annotations

import numpy as np

from engine.audio import mulaw

SEG_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def ref_decode(b: int) -> int:
    u = ~b & 0xFF
    sign = u & 0x80
    exp = (u >> 4) & 7
    man = u & 0x0F
    s = (((man << 3) + 0x84) << exp) - 0x84
    return -s if sign else s


def ref_encode(s16: int) -> int:
    x = s16 >> 2
    mask = 0xFF
    if x < 0:
        x = -x
        mask = 0x7F
    x = min(x, 8159) + 33
    seg = next((i for i, end in enumerate(SEG_ENDS) if x <= end), 8)
    code = 0x7F if seg == 8 else (seg << 4) | ((x >> (seg + 1)) & 0x0F)
    return code ^ mask


def test_decode_all_256_codes() -> None:
    got = mulaw.decode(bytes(range(256)))
    assert got.dtype == np.int16
    assert got.tolist() == [ref_decode(b) for b in range(256)]
    assert int(got.max()) == 32124 and int(got.min()) == -32124


def test_encode_all_65536_inputs() -> None:
    samples = np.arange(-32768, 32768, dtype=np.int16)
    got = mulaw.encode(samples)
    assert len(got) == 65536
    assert list(got) == [ref_encode(s) for s in range(-32768, 32768)]


def test_known_values_and_silence() -> None:
    assert mulaw.encode(np.array([32767, -32768, 0], np.int16)) == bytes([0x80, 0x00, 0xFF])
    assert mulaw.silence(160) == b"\xff" * 160
    assert not mulaw.decode(mulaw.silence(160)).any()
    assert mulaw.decode(b"\x7f").tolist() == [0]


def test_round_trip_is_stable() -> None:
    # decode(encode(decode(b))) == decode(b): every decoded value is a fixed point of the codec
    codes = bytes(range(256))
    once = mulaw.decode(codes)
    assert np.array_equal(mulaw.decode(mulaw.encode(once)), once)


def test_decode_accepts_buffers() -> None:
    data = bytes([0, 0x7F, 0x80, 0xFF])
    expect = [ref_decode(b) for b in data]
    for buf in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        assert mulaw.decode(buf).tolist() == expect
    assert mulaw.decode(b"").shape == (0,)

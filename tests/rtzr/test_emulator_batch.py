"""A read-hub pass's audio handled together (engine/rtzr/emulator/batch.py) gives exactly what each read handled
at once (SessionWire.feed) gives: every action, byte for byte, at the same time, with the same counters, for
random audio, message sizes (on and off the 10 ms grid, odd byte counts), chunkings, pings and Finalize; and a
server's result frame is the bytes wsproto writes."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from engine.rtzr.emulator import SessionParams, SkipRecognizer, StreamSession
from engine.rtzr.emulator.batch import AudioBatch, Decoded
from engine.rtzr.emulator.reader import ReadHub
from engine.rtzr.emulator.server import text_frame
from engine.rtzr.emulator.session import Action
from engine.rtzr.emulator.wire import SessionWire
from engine.rtzr.emulator.wsfast import Masked
from tests.rtzr.test_emulator_session import REC, quiet, speechlike


class Counter:
    bytes_received = 0


def frame(opcode: int, payload: bytes, rng: random.Random) -> bytes:
    """A client frame with a random masking key."""
    key = rng.randbytes(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x80 | opcode, 0x80 | n]) if n < 126 else bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + key + body


def stream(rng: random.Random) -> tuple[list[bytes], list[bool]]:
    """One session's reads (frames cut at random places) and, per read, whether a pass ends after it."""
    parts = [speechlike(rng.choice([40, 300, 900, 2500]), seed=k) if rng.random() < 0.5 else
             quiet(rng.choice([50, 450, 1200]), seed=k) for k in range(rng.randint(3, 8))]
    audio = np.concatenate(parts).astype("<i2").tobytes()
    frames = []
    pos = 0
    while pos < len(audio):
        size = rng.choice([1600, 1600, 1600, 320, 3200, 160 * rng.randint(1, 20), rng.randint(1, 1800)])
        frames.append(frame(0x2, audio[pos:pos + size], rng))
        pos += size
        r = rng.random()
        if r < 0.04:
            frames.append(frame(0x1, b'{"type":"Finalize"}', rng))
        elif r < 0.06:
            frames.append(frame(0x9, b"ping", rng))
    frames.append(frame(0x1, b"EOS", rng))
    reads = []
    k = 0
    while k < len(frames):  # mostly whole frames per read (as the stand-in's and the engine's), sometimes cut
        n = rng.randint(1, 3)
        data = b"".join(frames[k:k + n])
        k += n
        if rng.random() < 0.2 and len(data) > 2:
            cut = rng.randint(1, len(data) - 1)
            reads += [data[:cut], data[cut:]]
        else:
            reads.append(data)
    return reads, [rng.random() < 0.5 for _ in reads]


Outcome = tuple[list[tuple[float, Action]], int, list[str]]


def run(reads: list[bytes], ends: list[bool], *, batched: bool, recognizer: object) -> Outcome:
    async def main() -> Outcome:
        params = SessionParams(sample_rate=8000, encoding="LINEAR16", interim_ms=300)
        failures: list[Exception] = []
        batch = AudioBatch(lambda _w, exc: failures.append(exc)) if batched else None
        stats = Counter()
        session = StreamSession(params, recognizer, [], trio.current_time())  # type: ignore[arg-type]
        wire = SessionWire(-1, Connection(ConnectionType.SERVER), session, ReadHub(), stats,
                           max_message_bytes=1 << 20, batch=batch)
        out: list[tuple[float, Action]] = []
        seen: list[str] = []
        for data, end in zip(reads, ends, strict=True):
            if batch is not None:
                events = wire.frames.feed(data, defer=True)
                seen += [type(e).__name__ for e in events]
                batch.add(wire, list(events))  # type: ignore[arg-type]
                if end:
                    batch.flush(trio.current_time())
            else:
                wire.feed(data)
            if not end:  # a pass: its reads at one instant (the batch handles them at its end)
                continue
            while wire.pending:  # what the session task does with a ping: answer it, read on
                wire.data_event(wire.pending.popleft(), trio.current_time())
            await trio.sleep(0.1)
            wire.poll()
            out += [(trio.current_time(), a) for a in wire.actions]
            wire.actions.clear()
        if batch is not None:
            batch.flush(trio.current_time())
        while wire.pending:
            wire.data_event(wire.pending.popleft(), trio.current_time())
        for _ in range(4):
            await trio.sleep(0.2)
            wire.poll()
            out += [(trio.current_time(), a) for a in wire.actions]
            wire.actions.clear()
        assert not failures
        return out, stats.bytes_received, seen

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("seed", range(30))
def test_a_pass_handled_together_gives_what_each_read_gave(seed: int) -> None:
    rng = random.Random(seed)
    reads, ends = stream(rng)
    recognizer = REC if seed % 5 == 0 else SkipRecognizer()
    expected, expected_bytes, _ = run(reads, ends, batched=False, recognizer=recognizer)
    got, got_bytes, seen = run(reads, ends, batched=True, recognizer=recognizer)
    assert any(a.__class__.__name__ == "Send" for _, a in expected)
    assert got == expected
    assert got_bytes == expected_bytes
    assert "Masked" in seen  # the batch path was taken


def test_only_whole_audio_messages_of_one_read_are_deferred() -> None:
    rng = random.Random(1)
    splitter = SessionWire(-1, Connection(ConnectionType.SERVER), StreamSession(
        SessionParams(sample_rate=8000, encoding="LINEAR16"), SkipRecognizer(), [], 0.0), ReadHub(), Counter(),
        max_message_bytes=1 << 20).frames
    audio = os.urandom(1600)
    data = frame(0x2, audio, rng) + frame(0x2, audio, rng)
    events = splitter.feed(data[:2000], defer=True)  # the first whole, the second cut
    assert [type(e) for e in events] == [Masked]
    events = splitter.feed(data[2000:], defer=True)  # completed from the splitter's buffer: unmasked at once
    assert [type(e) for e in events] == [np.ndarray]
    assert bytes(events[0]) == audio  # type: ignore[arg-type]


def test_the_batch_decodes_each_message_into_its_own_array() -> None:
    rng = random.Random(2)
    params = SessionParams(sample_rate=8000, encoding="LINEAR16")
    wires = [SessionWire(-1, Connection(ConnectionType.SERVER), StreamSession(params, SkipRecognizer(), [], 0.0),
                         ReadHub(), Counter(), max_message_bytes=1 << 20) for _ in range(3)]
    audio = [speechlike(100, seed=i).astype("<i2").tobytes() for i in range(3)]
    got: list[Decoded] = []

    class Probe(AudioBatch):
        pass

    batch = Probe(lambda _w, exc: (_ for _ in ()).throw(exc))
    for w, a in zip(wires, audio, strict=True):
        events = w.frames.feed(frame(0x2, a, rng), defer=True)
        batch.add(w, list(events))  # type: ignore[arg-type]
        w.process = lambda evs, now, got=got: got.extend(evs)  # type: ignore[method-assign,misc]
    batch.flush(0.0)
    assert [d.samples.tobytes() for d in got] == audio
    assert all(d.samples.base is None for d in got)  # copies: a session keeps none of the pass's buffer alive
    assert all(d.loud is not None and len(d.loud) == 10 for d in got)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_result_frame_is_what_wsproto_writes(size: int) -> None:
    text = "가" * (size // 3) + "x" * (size % 3)
    ws = Connection(ConnectionType.SERVER)
    assert text_frame(text.encode()) == ws.send(TextMessage(data=text))

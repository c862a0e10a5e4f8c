"""WsClientConnection's audio send path (issue 13): a whole write takes no lock and no schedule point (but
every YIELD_EVERY-th in a row yields), a partial write finishes under the lock and budgets.send, a
cancelled sender writes nothing, and what reaches the server is the exact payload."""

from __future__ import annotations

import os

import pytest
import trio
from wsproto.events import BytesMessage

from engine.rtzr.wsclient import YIELD_EVERY
from engine.ws import connection

from .test_rtzr_wsclient import Peer, connect, server


async def collect(peer: Peer, count: int, out: list[bytes]) -> None:
    await peer.accept()
    part = b""
    while len(out) < count:
        event = await peer.next_event()
        assert isinstance(event, BytesMessage)
        part += bytes(event.data)
        if event.message_finished:
            out.append(part)
            part = b""
    await trio.sleep_forever()


class Steps(trio.abc.Instrument):
    """Counts one task's steps: a new step starts each time the task is resumed after a schedule point."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def test_whole_writes_yield_once_per_yield_every_sends() -> None:
    got: list[bytes] = []
    payloads = [os.urandom(1600) for _ in range(3 * YIELD_EVERY)]
    with trio.fail_after(10):
        async with server(lambda peer: collect(peer, len(payloads), got)) as url:
            conn = await connect(url)
            steps = Steps(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            try:
                for sent, chunk in enumerate(payloads, 1):
                    await conn.send_bytes(chunk)
                    assert steps.count == sent // YIELD_EVERY  # a schedule point at each YIELD_EVERY-th only
            finally:
                trio.lowlevel.remove_instrument(steps)
            while len(got) < len(payloads):
                await trio.sleep(0.01)
            await conn.aclose(grace=0.1)
    assert got == payloads


async def test_a_cancelled_sender_writes_nothing() -> None:
    got: list[bytes] = []
    with trio.fail_after(10):
        async with server(lambda peer: collect(peer, 1, got)) as url:
            conn = await connect(url)
            with trio.CancelScope() as scope:
                scope.cancel()
                with pytest.raises(trio.Cancelled):
                    await conn.send_bytes(b"\x01" * 1600)
            await conn.send_bytes(b"\x02" * 1600)
            while not got:
                await trio.sleep(0.01)
            await conn.aclose(grace=0.1)
    assert got == [b"\x02" * 1600]


async def test_a_partial_write_finishes_under_the_lock_before_any_other_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel takes part of a frame: the rest goes out under the lock; a sender meanwhile waits for it."""
    got: list[bytes] = []
    first, second = os.urandom(1600), os.urandom(1600)
    real_write = os.write
    writes = 0

    def short_write(fd: int, data: bytes) -> int:
        nonlocal writes
        writes += 1
        if writes == 1:
            return real_write(fd, data[:100])  # as if the socket buffer had room for 100 bytes only
        return real_write(fd, data)

    with trio.fail_after(10):
        async with server(lambda peer: collect(peer, 2, got)) as url:
            conn = await connect(url)
            locked = conn._send_locked
            waited = 0

            async def counting(frame: bytes) -> None:
                nonlocal waited
                waited += 1
                await locked(frame)

            monkeypatch.setattr(conn, "_send_locked", counting)
            monkeypatch.setattr(connection.os, "write", short_write)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.send_bytes, first)
                nursery.start_soon(conn.send_bytes, second)
            while len(got) < 2:
                await trio.sleep(0.01)
            await conn.aclose(grace=0.1)
    assert sorted(got) == sorted([first, second])  # both whole: nothing came between the two parts
    assert waited == 1  # the other sender found the lock held and waited for it


async def test_send_bytes_nowait_writes_from_synchronous_code_and_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The push path (engine/call.py): written before any schedule point; a short write leaves the tail
    pending, refused pushes meanwhile, flush() completes it; nothing is written once the connection closed."""
    got: list[bytes] = []
    payloads = [os.urandom(1600) for _ in range(4)]
    real_write = os.write
    with trio.fail_after(10):
        async with server(lambda peer: collect(peer, len(payloads), got)) as url:
            conn = await connect(url)
            assert conn.nowait_capable
            assert conn.send_bytes_nowait(payloads[0]) == 1 and not conn.pending  # written whole
            monkeypatch.setattr(connection.os, "write", lambda fd, data: real_write(fd, data[:10]))
            assert conn.send_bytes_nowait(payloads[1]) == 2 and conn.pending  # its tail waits for flush()
            monkeypatch.undo()
            assert conn.send_bytes_nowait(payloads[2]) == 0  # nothing overtakes the partly written frame
            await conn.flush()
            assert not conn.pending
            async with conn._send_lock:
                assert not conn.send_bytes_nowait(payloads[2])  # another task is writing
            assert conn.send_bytes_nowait(payloads[2])
            await conn.send_bytes(payloads[3])
            while len(got) < len(payloads):
                await trio.sleep(0.01)
            await conn.aclose(grace=0.1)
            assert not conn.send_bytes_nowait(b"late")
    assert got == payloads


async def test_send_bytes_nowait_frames_every_length_class_exactly() -> None:
    """The push packs a 16-bit-length head itself (issue 13 round 5); shorter and longer payloads go through
    encode_frame: the server gets each payload exactly, at every length boundary (RFC 6455 5.2)."""
    got: list[bytes] = []
    payloads = [os.urandom(n) for n in (1, 125, 126, 1600, 65535, 65536, 70001)]
    with trio.fail_after(10):
        async with server(lambda peer: collect(peer, len(payloads), got)) as url:
            conn = await connect(url)
            for payload in payloads:
                assert conn.send_bytes_nowait(payload)
                if conn.pending:
                    await conn.flush()
            while len(got) < len(payloads):
                await trio.sleep(0.01)
            await conn.aclose(grace=0.1)
    assert got == payloads

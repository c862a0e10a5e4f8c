"""Instructions of the STT receive path alone (issue 13): one RTZR interim from the socket to the call's event.

A real ``RtzrSocket`` (its reader task, ``_serve``) + ``WsClientConnection`` on a local socket pair, a real
``engine.rtzr.pool.Lease`` on it, and a real ``Call``'s ``_receive_results`` task for one utterance: the other
end of the pair writes server frames (the emulator's interim shape, ``--finals`` for non-closing finals with
words), and the loop waits until the call has emitted the ``transcript.partial`` (or final) for it. What the
profile counts as the utterances' STT tasks (``_transcribe`` / ``_stream_once``, ``RtzrSocket._run``): the
frame parse, the msgspec decode, the tracker, the lease's channel and the task switches, the event.

Load-independent by the difference of two callgrind runs (``--results N`` minus ``--results 0``), for any tree
that has these APIs (run it with the other tree's venv from that tree's directory)::

    cd /work/wt-base6 && OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python /work/wt-r6-stt/bench/stt_receive.py --results 2000   # and --results 0
"""

from __future__ import annotations

import argparse
import struct
from typing import Any

import msgspec
import trio
from ingest_ab import rtzr_socket_on_pair

from engine import events as ev
from engine.budgets import Budgets
from engine.config import Config
from engine.media import StreamStarted
from engine.metrics import Registry
from engine.ws.client_frames import UnmaskedFrameDecoder

TEXT = "안녕하세요 오늘 날씨가 정말 좋네요"  # an interim of a few words, as RTZR's (and the emulator's) carry


def _frame(text: str) -> bytes:
    """An unmasked server text frame."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    return struct.pack("!BBH", 0x81, 126, n) + data


def _result(seq: int, k: int, final: bool) -> str:
    start = 40 * k
    if not final:
        return (f'{{"seq":{seq},"start_at":{start},"duration":0,"final":false,'
                f'"alternatives":[{{"text":"{TEXT}","confidence":0.93,"words":null}}]}}')
    words = ",".join(f'{{"text":"w{i}","start_at":{100 * i},"duration":90,"confidence":0.9}}' for i in range(5))
    return (f'{{"seq":{seq},"start_at":{start},"duration":30,"final":true,'
            f'"alternatives":[{{"text":"{TEXT}","confidence":0.93,"words":[{words}]}}]}}')


class _Pool:
    """What ``Lease`` reads of its pool (nothing on the receive path but these)."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self.tokens = self  # socket_info's wall clock (a final's socket field)

    def wall(self) -> float:
        return 0.0

    def note_finalize_timeout(self) -> None:
        raise SystemExit("no finalize in this bench")


async def run(results: int, finals: bool) -> int:
    from engine.call import Call, Utterance, _Attempt
    from engine.rtzr.pool import Lease

    config = Config()
    # No pings: nothing answers them here, and under callgrind a run outlasts the interval.
    pool_cfg = msgspec.structs.replace(config.rtzr.pool, ping_interval_ms=10**9)
    config = msgspec.structs.replace(config, rtzr=msgspec.structs.replace(config.rtzr, pool=pool_cfg))
    metrics = Registry()
    budgets = Budgets(config.budgets)
    sock: Any
    sock, peer = rtzr_socket_on_pair(config, budgets, metrics)
    sock.tracker.end_lease()
    # As after a real handshake (WsClientConnection._handshake): the fast decoder parses the results, not wsproto.
    sock._ws._fast = UnmaskedFrameDecoder(1 << 20)
    seen = 0
    got = trio.Event()

    def emit(event: ev.Event) -> None:
        nonlocal seen, got
        if isinstance(event, ev.TranscriptPartial | ev.TranscriptFinal):
            seen += 1
            got.set()

    started = StreamStarted(stream_id="MZ" + "0" * 32, call_id="CA" + "0" * 32, account_id="AC" + "1" * 32,
                            encoding="mulaw", sample_rate=8000, provider="twilio")
    call = Call(started, config=config, pool=None, emit=emit, metrics=metrics, budgets=budgets)  # type: ignore[arg-type]
    utt = Utterance(0, "MZ:0", 0.0, 0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sock._serve, sock._ws)
        lease = Lease(_Pool(budgets), sock, lease_ms=0.0, pool_hit=True)  # type: ignore[arg-type]
        sock.tracker.bytes_sent = 1 << 40  # after the lease's start: results never end after the audio sent (rule 3)
        attempt = _Attempt(lease, False)
        nursery.start_soon(call._receive_results, utt, attempt)
        await trio.sleep(0)
        for k in range(results):
            got = trio.Event()
            peer.send(_frame(_result(k if finals else 0, k, finals)))
            await got.wait()
        nursery.cancel_scope.cancel()
    peer.close()
    return seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=int, default=2000)
    p.add_argument("--finals", action="store_true", help="non-closing finals with 5 words instead of interims")
    args = p.parse_args()
    seen = trio.run(run, args.results, args.finals)
    if seen != args.results:
        raise SystemExit(f"{seen} of {args.results} results reached the call")


if __name__ == "__main__":
    main()

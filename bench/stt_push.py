"""Instructions of the STT push alone (issue 13): the read of one 100 ms batch of compact (μ-law) utterance audio
and its send through a real ``RtzrSocket`` + ``WsClientConnection`` onto a local socket pair, per batch.

Real speech (the demo call's μ-law), appended 160 bytes at a time as the Twilio reader does; every 5th frame the
batch is read and sent (``send_audio_nowait``), what ``Call._send_and_finalize``'s push does. Load-independent by
the difference of two callgrind runs (``--batches N`` minus ``--batches 0``), for any tree that has these APIs
(run it with the other tree's venv from that tree's directory)::

    cd /work/wt-base5 && OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python /work/wt-r5-stt/bench/stt_push.py --batches 2000   # and --batches 0

``--read-only`` leaves the send out (the decode alone). Add ``--cache-sim=yes`` to valgrind for the data-cache
misses of the lookup tables (callgrind's instruction count does not see them).
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import trio
from ingest_ab import rtzr_socket_on_pair

from engine.budgets import Budgets
from engine.config import Config
from engine.metrics import Registry
from engine.twilio.simulator import frames_of, load_audio
from engine.utterance import UtteranceAudio

DEMO_WAV = Path(os.getcwd()) / "engine" / "demo" / "call.wav"  # the tree run from


def _socket() -> tuple[object, socket.socket]:
    config = Config()
    return rtzr_socket_on_pair(config, Budgets(config.budgets), Registry())


def _drain(peer: socket.socket) -> None:
    try:
        while peer.recv(1 << 20):
            pass
    except BlockingIOError:
        pass


async def run(batches: int, read_only: bool) -> int:
    frames = frames_of(load_audio(str(DEMO_WAV)))
    sock, peer = _socket()
    send = sock.send_audio_nowait  # type: ignore[attr-defined]
    sent = 0
    audio = UtteranceAudio(mulaw_as_pcm16=True)
    k = 0
    for b in range(batches):
        for _ in range(5):
            audio.append_mulaw(frames[k % len(frames)])
            k += 1
        chunk = audio.read(sent, 1600)
        if not read_only:
            if send(chunk) != 1:
                raise SystemExit("the socket did not take the batch whole")
            if b % 64 == 63:
                _drain(peer)
        sent += len(chunk)
        if audio.held_bytes > 1 << 16:  # keep the utterance short: a new one, as after a final
            audio, sent = UtteranceAudio(mulaw_as_pcm16=True), 0
    peer.close()
    return sent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--read-only", action="store_true", help="the read (decode) alone, no send")
    args = p.parse_args()
    trio.run(run, args.batches, args.read_only)


if __name__ == "__main__":
    main()

"""The emulator's per-message input cost without sockets: µs per 100 ms LINEAR16 message through ``SessionWire.feed``.

What the read hub does per ready socket once ``os.read`` returned (frame split, unmask, decode, EPD, interims,
finals, ``poll``), for ``--sessions`` ``--cheap`` sessions fed round-robin the frames bench/standin.py sends
(corpus audio as LINEAR16, 100 ms per message, random masking keys). ``--tree DIR`` imports the emulator of
another checkout (an A/B in one process run: run it once per tree, alternating).

    .venv/bin/python bench/rig_micro.py --sessions 300 --seconds 20 [--tree /work/wt-base3]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=300)
    p.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    p.add_argument("--tree", help="import engine/ from this checkout instead")
    p.add_argument("--rounds", type=int, default=5, help="fresh sessions each round; the cheapest round counts")
    p.add_argument("--profile", action="store_true", help="cProfile the feed loop (top 25 by own time)")
    p.add_argument("--pass-size", type=int, default=0,
                   help="feed as the read hub does: this many sessions' messages per pass, handled together "
                        "(engine/rtzr/emulator/batch.py; 0: SessionWire.feed per message, the old way)")
    args = p.parse_args()
    import _common  # puts this repo first on sys.path: --tree goes before it
    if args.tree:
        sys.path.insert(0, args.tree)
    import trio
    from standin import BATCH, client_frame
    from wsproto.connection import Connection, ConnectionType

    from engine.audio import mulaw
    from engine.rtzr.emulator.recognizer import SkipRecognizer
    from engine.rtzr.emulator.session import SessionParams, StreamSession
    from engine.rtzr.emulator.wire import SessionWire
    from engine.twilio.simulator import load_audio

    corpus = _common.load_corpus()
    audio = b"".join(load_audio(c.wav) for c in corpus)
    need = int(args.seconds * 8000)
    audio = (audio * (need // len(audio) + 1))[:need]
    messages = [client_frame(0x2, mulaw.decode(audio[i:i + BATCH]).astype("<i2").tobytes())
                for i in range(0, len(audio) - BATCH + 1, BATCH)]

    class Hub:
        def pause(self, _r: Any) -> None: ...
        def resume(self, _r: Any) -> None: ...
        def remove(self, _r: Any) -> None: ...

    class Stats:
        bytes_received = 0

    async def run() -> tuple[float, int, int]:
        params = SessionParams(sample_rate=8000, encoding="LINEAR16", final_ms=150, interim_ms=1000)
        rec = SkipRecognizer()
        now = trio.current_time()
        wires = []
        batch = None
        if args.pass_size:
            from engine.rtzr.emulator.batch import AudioBatch

            def fail(_w: Any, exc: Exception) -> None:
                raise exc

            batch = AudioBatch(fail)
        for i in range(args.sessions):
            session = StreamSession(params, rec, [], now)
            kw = {"batch": batch} if batch is not None else {}
            wires.append(SessionWire(1000 + i, Connection(ConnectionType.SERVER), session, Hub(),  # type: ignore[arg-type]
                                     Stats(), max_message_bytes=1 << 20, **kw))
        # Each session starts at its own offset into the audio (independent calls).
        offsets = [(i * 37) % len(messages) for i in range(args.sessions)]
        gc.collect()
        t0 = time.process_time()
        sent = 0
        for k in range(len(messages)):
            if batch is not None:
                for j, (w, off) in enumerate(zip(wires, offsets, strict=True)):
                    batch.add(w, w.frames.feed(messages[(off + k) % len(messages)], defer=True))
                    sent += 1
                    if (j + 1) % args.pass_size == 0 or j == len(wires) - 1:
                        batch.flush(trio.current_time())
                        for x in wires[j + 1 - (j % args.pass_size) - 1:j + 1]:
                            x.actions.clear()
                continue
            for w, off in zip(wires, offsets, strict=True):
                w.feed(messages[(off + k) % len(messages)])
                w.actions.clear()
                sent += 1
        elapsed = time.process_time() - t0  # CPU time: this machine is shared
        finals = sum(w.session.counters.finals_sent for w in wires)
        return elapsed, sent, finals + sum(w.session.counters.interims_sent for w in wires)

    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        elapsed, sent, results = trio.run(run)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    else:
        runs = [trio.run(run) for _ in range(args.rounds)]
        elapsed, sent, results = min(runs)
    print(f"{args.tree or 'this tree'}: {args.sessions} sessions, {sent} messages, {results} results queued: "
          f"{1e6 * elapsed / sent:.1f} µs per message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

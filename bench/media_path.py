"""µs per Twilio media message on the per-message path, stage by stage, in one process (no sockets, no Trio).

The stages the reactor runs for every 20 ms frame of every call before the call's own work
(BENCHMARKS.md § Capacity, "Issue 13: per-message path"):

* ``ws``: ``TextFrameDecoder.one`` of one read holding one masked media frame (random mask, as Twilio);
* ``decode``: the msgspec decode of the message alone;
* ``stream``: ``TwilioStream.receive_text`` of an in-step media message, which returns the neutral
  ``AudioReceived`` itself (what ``_CallReader`` hands ``Call.on_event``).

Each figure is the minimum over ``--repeat`` passes of ``--messages`` messages (the minimum filters out
the other processes of a shared machine). Runs against whichever tree's ``engine`` is importable, so an A/B
is this script run from two trees with their own venvs (``cd <tree> && .venv/bin/python bench/media_path.py``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.getcwd())  # the tree this runs from

from engine.twilio.protocol import TwilioStream, decode_inbound
from engine.ws.frames import TextFrameDecoder, apply_mask

SID = "MZ" + "0" * 32


def _media(seq: int, chunk: int, payload: bytes) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": SID,
                       "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
                                 "payload": base64.b64encode(payload).decode()}}, separators=(",", ":"))


def _frame(text: str) -> bytes:
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + mask + apply_mask(data, mask)


def _best(run: Callable[[], float], repeat: int) -> float:
    return min(run() for _ in range(repeat))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--repeat", type=int, default=40)
    args = p.parse_args()
    n: int = args.messages
    messages = [_media(k + 2, k + 1, os.urandom(160)) for k in range(n)]
    frames = [_frame(m) for m in messages]
    connected = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID,
                        "start": {"streamSid": SID, "callSid": "CA1", "tracks": ["inbound"]}})

    def ws() -> float:
        decoder = TextFrameDecoder(64 * 1024)
        t = time.perf_counter()
        for f in frames:
            decoder.one(f)
        return (time.perf_counter() - t) / n * 1e6

    def decode() -> float:
        t = time.perf_counter()
        for m in messages:
            decode_inbound(m)
        return (time.perf_counter() - t) / n * 1e6

    def stream() -> float:
        s = TwilioStream()
        s.receive_text(connected)
        s.receive_text(start)
        receive = s.receive_text
        t = time.perf_counter()
        for m in messages:
            receive(m)  # the neutral events themselves (AudioReceived), as the call gets them
        return (time.perf_counter() - t) / n * 1e6

    import engine

    result = {"tree": os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__))),
              "ws_us": round(_best(ws, args.repeat), 2), "decode_us": round(_best(decode, args.repeat), 2),
              "stream_us": round(_best(stream, args.repeat), 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""µs of CPU per Twilio media message on the ingest path alone: socket bytes in, the call's event out.

What it runs is the server's own per-message code, :class:`engine.twilio.server._CallReader` ``.readable``
(what the reactor calls with the bytes of one read) on a real :class:`WsServerConnection` and
:class:`TwilioStream` after ``start``; the handler only counts the events (no endpointing, no STT), so
the figure is the WebSocket frame decode, the Twilio parse and timeline, the error policy, the neutral
event and the frame-lag metric, per message. Each read holds one masked frame, as Twilio sends them.

Runs against whichever tree's ``engine`` is importable from the working directory. ``--ab OLD_TREE`` runs
this same file in this tree and in ``OLD_TREE`` (each with its own ``.venv``) alternately, ``--rounds``
times each, and prints both medians and the ratio, so old and new are measured in the same run::

    .venv/bin/python bench/message_path.py --ab /work/wt-base --rounds 5
    .venv/bin/python bench/message_path.py --calls-per-message   # cProfile: function calls per message
    .venv/bin/python bench/message_path.py --ab /work/wt-base --instructions  # callgrind, load-independent
    .venv/bin/python bench/message_path.py --ab /work/wt-base --instructions --per-read 2  # two frames a read

``--instructions`` counts CPU instructions per message under valgrind's callgrind (the same run with and
without the messages, subtracted), which does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, os.getcwd())  # the tree this runs from

from engine.budgets import Budgets
from engine.metrics import Registry
from engine.twilio.protocol import TwilioStream
from engine.twilio.server import _CallReader, _ErrorPolicy, _Metrics, _StatsReporter
from engine.twilio.wsconn import WsServerConnection

SID = "MZ" + "a" * 32
PASS_CALLS = 50  # reads per reactor pass (200 calls, a pass every 5 ms)


def _frame(text: str, mask: bytes) -> bytes:
    """A masked client text frame (as Twilio sends it)."""
    data = text.encode()
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    key = (mask * (n // 4 + 1))[:n]
    return head + mask + (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _media(seq: int, chunk: int) -> str:
    payload = bytes((chunk * 7 + i) % 256 for i in range(160))
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": SID,
                       "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
                                 "payload": base64.b64encode(payload).decode()}}, separators=(",", ":"))


class _Counting:
    """A handler that only counts what it is handed."""

    def __init__(self) -> None:
        self.events = 0

    def on_event(self, event: Any) -> None:
        self.events += 1

    async def run(self) -> None:
        return None

    def on_close(self, reason: str) -> None:
        return None


async def _measure(messages: int, profile: bool, run: bool = True, per_read: int = 1) -> dict[str, float]:
    import socket

    lsock = socket.create_server(("127.0.0.1", 0))
    b = socket.create_connection(lsock.getsockname())
    a = trio.socket.from_stdlib_socket(lsock.accept()[0])
    lsock.close()
    ws = WsServerConnection(trio.SocketStream(a), send_budget=Budgets().send, max_message_size=64 * 1024)
    key = base64.b64encode(os.urandom(16)).decode()
    b.sendall((f"GET /twilio/media HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await ws.read_request()
    await ws.accept()  # upgraded as the server leaves it (the 101 response stays unread in b)
    proto = TwilioStream()
    start = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID,
                        "start": {"streamSid": SID, "callSid": "CA1", "tracks": ["inbound"]}})
    proto.receive_text(start)
    metrics = _Metrics(Registry())
    handler = _Counting()
    common = {"errors": _ErrorPolicy(10, metrics, "c"), "reporter": _StatsReporter(proto.stats, metrics),
              "idle_s": 15.0, "debug": False}
    try:  # since issue 13 round 3: the pass hook (IngestPass) observes the frame lag at each pass's end
        from engine.twilio.server import IngestPass  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # an older tree: the reader observes it per message
        ingest = None
        reader = _CallReader(ws, proto, handler, lag=metrics.frame_lag, **common)  # type: ignore[arg-type,call-arg,unused-ignore]
    else:
        ingest = IngestPass(metrics.frame_lag)
        reader = _CallReader(ws, proto, handler, ingest=ingest, **common)  # type: ignore[arg-type,unused-ignore]
    frames = [_frame(_media(k + 2, k + 1), os.urandom(4)) for k in range(messages)]
    # ``per_read`` frames per read (a late pass finds several in a socket: the decoder's general loop and the
    # connection's queue); a pass is PASS_CALLS reads, each pass's end as the reactor's (the lag observed).
    reads = [b"".join(frames[i:i + per_read]) for i in range(0, len(frames), per_read)]
    readable = reader.readable
    now = trio.current_time()
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    cpu0 = time.process_time()
    for i, data in enumerate(reads if run else ()):
        if ingest is not None and i % PASS_CALLS == 0:
            ingest.end()
            ingest.begin()
        if readable(data, now):
            raise RuntimeError(f"the reader paused: {reader.reason} {reader.error}")
    if ingest is not None:
        ingest.end()
    cpu1 = time.process_time()
    if prof is not None:
        prof.disable()
    if run and handler.events != messages:
        raise RuntimeError(f"{handler.events} events for {messages} messages")
    a.close()
    b.close()
    out = {"us_per_message": (cpu1 - cpu0) / messages * 1e6}
    if prof is not None:
        stats = pstats.Stats(prof)
        calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        out["calls_per_message"] = calls / messages
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])  # type: ignore[attr-defined]
        out["by_function"] = [f"{v[1] / messages:.2f} {Path(k[0]).name}:{k[1]}({k[2]})" for k, v in rows]  # type: ignore[assignment]
    return out


def _one(messages: int, repeat: int, profile: bool, run: bool = True, per_read: int = 1) -> dict[str, Any]:
    import engine

    runs = [trio.run(_measure, messages, False, run, per_read) for _ in range(repeat)]
    out: dict[str, Any] = {"tree": str(Path(engine.__file__).resolve().parent.parent),
                           "us_per_message": round(min(r["us_per_message"] for r in runs), 2),
                           "runs": [round(r["us_per_message"], 2) for r in runs]}
    if profile:
        prof = trio.run(_measure, 2000, True, True, per_read)
        out["calls_per_message"] = round(prof["calls_per_message"], 2)
        out["by_function"] = prof["by_function"]
    return out


def _instructions(python: str, tree: Path, messages: int, per_read: int = 1) -> float:
    """Instructions per message under callgrind: a run with ``messages`` minus the same run without them."""
    counts = []
    for run in ("1", "0"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", python, str(Path(__file__).resolve()),
                   "--messages", str(messages), "--repeat", "1", "--run", run, "--per-read", str(per_read)]
            env = os.environ | {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
            res = subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True, env=env)
            counts.append(int(re.findall(r"Collected : (\d+)", res.stderr)[-1]))
    return (counts[0] - counts[1]) / messages


def _ab(old: Path, rounds: int, messages: int, repeat: int, instructions: bool = False, per_read: int = 1) -> dict[str, Any]:
    new = Path(os.getcwd())
    script = str(Path(__file__).resolve())
    if instructions:
        ins = {name: _instructions(str(tree / ".venv" / "bin" / "python"), tree, messages, per_read)
               for name, tree in (("new", new), ("old", old))}
        return {"new_tree": str(new), "old_tree": str(old), "messages": messages,
                "new_instructions_per_message": round(ins["new"]), "old_instructions_per_message": round(ins["old"]),
                "new_over_old": round(ins["new"] / ins["old"], 3)}
    got: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(rounds):
        for name, tree in (("new", new), ("old", old)):
            cmd = [str(tree / ".venv" / "bin" / "python"), script, "--messages", str(messages), "--repeat", str(repeat),
                   "--per-read", str(per_read)]
            res = subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True)
            got[name].append(json.loads(res.stdout)["us_per_message"])
    new_m, old_m = statistics.median(got["new"]), statistics.median(got["old"])
    return {"new_tree": str(new), "old_tree": str(old), "messages": messages, "rounds": rounds,
            "new_us_per_message": round(new_m, 2), "old_us_per_message": round(old_m, 2),
            "new_over_old": round(new_m / old_m, 3), "new_runs": got["new"], "old_runs": got["old"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=5, help="runs per process (the fastest is kept)")
    p.add_argument("--calls-per-message", action="store_true", help="also count function calls (cProfile)")
    p.add_argument("--ab", type=Path, help="another tree (with its own .venv) to compare with, alternately")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--instructions", action="store_true", help="with --ab: callgrind instructions per message")
    p.add_argument("--per-read", type=int, default=1, help="frames per socket read (>1: a late pass's reads)")
    p.add_argument("--run", type=int, default=1, help=argparse.SUPPRESS)  # 0: everything but the messages
    args = p.parse_args()
    if args.ab is not None:
        messages = 2000 if args.instructions and args.messages == 20_000 else args.messages
        print(json.dumps(_ab(args.ab.resolve(), args.rounds, messages, args.repeat, args.instructions, args.per_read)))
    elif args.instructions:
        print(json.dumps({"instructions_per_message": round(_instructions(sys.executable, Path(os.getcwd()), args.messages,
                                                                             args.per_read))}))
    else:
        print(json.dumps(_one(args.messages, args.repeat, args.calls_per_message, bool(args.run), args.per_read), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

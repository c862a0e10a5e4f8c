"""The machine's own floor for the answer path's hops (issue 14): what ``bench/answer_latency.py``'s
"engine-added" would read if the engine did no work at all.

The answer path crosses processes four times — the caller's frame to the engine, the engine's event to
the application, the application's ``play`` back to the engine, the engine's first answer frame to the
caller — and each crossing is a wake-up of a process that was waiting in ``epoll``. On a VM an idle vCPU
must be woken by the host first, so a wake-up's tail is the machine's, not the program's. This script
runs the same four hops with the same placement (the "engine" alone on core 0, the caller and the
application on core 1 under SCHED_FIFO, as ``answer_latency.py --pin-driver --rt-driver``) and the same
traffic (a 20 ms frame per call, a turn every ``--turn-every`` frames), through plain blocking sockets and
``selectors`` with no work in between: its percentiles are the floor the engine's figure stands on.

``python bench/wakeup_floor.py --turns 150`` prints one JSON line: the four-hop round trip p50/p90/p99/max
in ms and the caller's own send lag.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time

FRAME = b"f" * 299 + b"\n"
TURN = b"t" * 299 + b"\n"
ANSWER = b"a" * 299 + b"\n"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def run_engine(port_file: str) -> None:
    """Reads the caller's frames; forwards a turn to the application and the application's answer back."""
    listener = socket.create_server(("127.0.0.1", 0))
    with open(port_file, "w") as f:
        f.write(str(listener.getsockname()[1]))
    first, _ = listener.accept()
    second, _ = listener.accept()
    # each peer names itself in its first byte (C: the caller, A: the application), in either order
    caller, app = (first, second) if first.recv(1) == b"C" and second.recv(1) == b"A" else (second, first)
    for s in (caller, app):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sel = selectors.DefaultSelector()
    sel.register(caller, selectors.EVENT_READ, "caller")
    sel.register(app, selectors.EVENT_READ, "app")
    while True:
        for key, _ in sel.select():
            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            if not data:
                return
            if key.data == "caller" and b"t" in data:
                app.sendall(TURN)
            elif key.data == "app":
                caller.sendall(ANSWER)


def run_app(port: int) -> None:
    """Answers every turn at once."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(b"A")
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(ANSWER)


def run_caller(port: int, turns: int, turn_every: int) -> dict[str, object]:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(b"C")
    conn.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ)
    trips: list[float] = []
    lags: list[float] = []
    start = time.monotonic() + 0.5
    frame = 0
    sent_turn: float | None = None
    while len(trips) < turns:
        due = start + frame * 0.020
        timeout = max(0.0, due - time.monotonic())
        for _key, _ in sel.select(timeout):
            data = conn.recv(65536)
            now = time.monotonic()
            if b"a" in data and sent_turn is not None:
                trips.append((now - sent_turn) * 1000)
                sent_turn = None
        now = time.monotonic()
        if now >= due:
            is_turn = frame % turn_every == turn_every - 1
            conn.sendall(TURN if is_turn else FRAME)
            lags.append((now - due) * 1000)
            if is_turn:
                sent_turn = time.monotonic()
            frame += 1
    return {
        "turns": len(trips),
        "four_hops_p50_p90_p99_ms": [_pct(trips, 0.5), _pct(trips, 0.9), _pct(trips, 0.99)],
        "four_hops_max_ms": round(max(trips), 2),
        "caller_lag_p50_p99_ms": [_pct(lags, 0.5), _pct(lags, 0.99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=150)
    parser.add_argument("--turn-every", type=int, default=77, help="frames per turn (0.84 s + 0.7 s ≈ 77)")
    parser.add_argument("--rt-engine", action="store_true", help="the engine process under SCHED_FIFO 1 too")
    parser.add_argument("--role", choices=["engine", "app"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "engine":
        run_engine(args.port_file)
        return
    if args.role == "app":
        run_app(args.port)
        return
    port_file = f"/tmp/wakeup-floor-{os.getpid()}"
    me = [sys.executable, __file__]
    engine_cmd = ["taskset", "-c", "0", *(["chrt", "-f", "1"] if args.rt_engine else []), *me]
    engine = subprocess.Popen([*engine_cmd, "--role", "engine", "--port-file", port_file])
    try:
        while not (os.path.exists(port_file) and open(port_file).read()):
            time.sleep(0.01)  # start-up only: waiting for the engine's port file
        port = int(open(port_file).read())
        os.sched_setaffinity(0, {1})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        # The caller is a thread of this process; the application a child on the same core, SCHED_FIFO too.
        result: dict[str, object] = {}

        def caller() -> None:
            result.update(run_caller(port, args.turns, args.turn_every))

        thread = threading.Thread(target=caller)
        thread.start()
        app = subprocess.Popen(["taskset", "-c", "1", "chrt", "-f", "1", *me, "--role", "app", "--port", str(port)])
        thread.join()
        app.kill()
        result.update({"rt_engine": args.rt_engine, "loadavg": os.getloadavg()[0]})
        print(json.dumps(result))
    finally:
        engine.kill()
        os.unlink(port_file)


if __name__ == "__main__":
    main()

"""CPU per read of a Twilio-sized frame over loopback TCP, with and without a delayed ACK asked first (issue 13 r7).

Why: Linux ACKs a small pushed segment from inside the ``read`` that empties the socket, and on loopback that
ACK also runs the sender's receive path in the reader's context; the ingest reactor now asks for a delayed ACK
(``TCP_QUICKACK`` 0) before every read (engine/twilio/reactor.py, ``twilio.delayed_ack``). This measures the
two as the reactor reads: ``--sockets`` connections, a sender process writing one ``--size``-byte frame to each
(``TCP_NODELAY``, as the load generator and nginx) every ``--every-ms``, the reader draining them through an
epoll; reader CPU (user + system, ``getrusage``) per read, the modes interleaved ``--pairs`` times (a shared
machine: only same-run ratios mean anything)::

    python3 bench/read_ack_cost.py --pairs 6
    python3 bench/read_ack_cost.py --pairs 1 --sockets 20 --rounds 20 --nagle   # why it needs a NODELAY sender
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import statistics
import time


def run(delayed: bool, sockets: int, rounds: int, size: int, every_s: float,
        nagle: bool = False) -> tuple[float, float, float, float]:
    """(user, system) µs per read of one mode, in a fresh set of connections, the ms from a round's start to
    its last frame read (median), and the sender's CPU µs per frame sent (on loopback an ACK the reader no
    longer sends from its read is sent on a later segment's arrival, in the sender's context)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=sockets + 8)
    senders, ours = [], []
    for _ in range(sockets):
        c = socket.create_connection(listener.getsockname())
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0 if nagle else 1)
        s, _ = listener.accept()
        s.setblocking(False)
        senders.append(c)
        ours.append(s)
    listener.close()
    go_r, go_w = os.pipe()
    cost_r, cost_w = os.pipe()
    frame = b"x" * size
    child = os.fork()
    if child == 0:  # the sender: a frame to every socket per go-byte
        try:
            for s in ours:
                s.close()
            start = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(rounds):
                os.read(go_r, 1)
                for c in senders:
                    c.send(frame)
            time.sleep(0.1)  # the last delayed ACKs
            end = resource.getrusage(resource.RUSAGE_SELF)
            spent = end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime
            os.write(cost_w, b"%.9f" % (spent / (rounds * len(senders)) * 1e6))
        finally:
            os._exit(0)
    for c in senders:
        c.close()
    epoll = select.epoll()
    by_fd = {s.fileno(): s for s in ours}
    for fd in by_fd:
        epoll.register(fd, select.EPOLLIN)
    before = resource.getrusage(resource.RUSAGE_SELF)
    reads = 0
    spans: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        os.write(go_w, b"g")
        got = 0
        while got < sockets * size:
            for fd, _mask in epoll.poll():
                if delayed:
                    by_fd[fd].setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
                got += len(os.read(fd, 65536))
                reads += 1
        spans.append((time.perf_counter() - started) * 1000)
        time.sleep(every_s)
    after = resource.getrusage(resource.RUSAGE_SELF)
    sender_us = float(os.read(cost_r, 64))
    os.waitpid(child, 0)
    epoll.close()
    for s in ours:
        s.close()
    for fd in (go_r, go_w, cost_r, cost_w):
        os.close(fd)
    return ((after.ru_utime - before.ru_utime) / reads * 1e6, (after.ru_stime - before.ru_stime) / reads * 1e6,
            statistics.median(spans), sender_us)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sockets", type=int, default=300)
    p.add_argument("--rounds", type=int, default=120, help="frames per socket")
    p.add_argument("--size", type=int, default=385, help="bytes per frame (a media message as the reactor reads it)")
    p.add_argument("--every-ms", type=float, default=20.0)
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--nagle", action="store_true",
                   help="the sender without TCP_NODELAY: shows why delayed ACKs need a NODELAY peer (round spans)")
    args = p.parse_args()
    totals: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.pairs):
        for delayed in (False, True):
            user, system, span, sender = run(delayed, args.sockets, args.rounds, args.size, args.every_ms / 1000, args.nagle)
            totals[delayed].append(user + system)
            print(f"pair {i + 1} {'delayed ACK' if delayed else 'default    '}: user {user:.2f} + system {system:.2f} "
                  f"= {user + system:.2f} µs per read; a round's frames all read in {span:.1f} ms (median); "
                  f"the sender {sender:.2f} µs per frame", flush=True)
    a, b = statistics.median(totals[False]), statistics.median(totals[True])
    wins = sum(y < x for x, y in zip(totals[False], totals[True], strict=True))
    print(f"median µs per read: default {a:.2f}, delayed ACK {b:.2f} ({b / a:.2f}x); delayed cheaper in {wins} of "
          f"{args.pairs} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

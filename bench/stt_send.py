"""CPU of the STT streaming side per audio message and per pool lease/return (issue 13), old tree vs new.

One RTZR emulator (``sori emulate-rtzr --cheap``, its own process) serves both; each round runs a fresh
client process from each tree's venv, alternately, and reads that process's CPU time (its own work only,
not the emulator's):

- ``send``: ``--lessees`` leases, each sending ``--messages`` audio messages of 100 ms (1600 bytes of
  8 kHz LINEAR16 silence), one per 100 ms as the engine does: CPU µs per message (all included:
  Lease.send_audio down to the socket write, the sleep that paces it, the socket readers); then the same
  loop without the send: the difference is the send path's own CPU per message. Then one lease sends
  ``--bursts`` messages back-to-back to /dev/null (its socket's fd swapped): the send path's code alone,
  without the kernel's loopback TCP work, which dominates the paced figure and is the same in both trees.
- ``lease``: ``--idle`` pre-warmed idle sockets; ``--cycles`` lease + return (nothing sent), the pool's
  maintainer run after each: CPU µs per lease + return.

    .venv/bin/python bench/stt_send.py --old /work/wt-base --new . --rounds 3

Figures are comparable only within one run (the machine is shared); the medians of the rounds are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------- client side


class _NullSocket:
    """Stands in for a connection's socket where only ``fileno()`` is asked (its fd: /dev/null)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


async def _client(port: int, lessees: int, messages: int, idle: int, cycles: int, bursts: int) -> dict[str, float]:
    import trio

    from engine.budgets import Budgets
    from engine.config import BudgetsConfig, PoolConfig, RtzrConfig
    from engine.metrics import Registry
    from engine.rtzr.auth import TokenManager
    from engine.rtzr.emulator.config import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
    from engine.rtzr.pool import RtzrPool

    config = RtzrConfig(api_base=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}/v1/transcribe:streaming",
                        client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET,
                        pool=PoolConfig(spare=idle, max_sessions=idle + lessees + 20))
    budgets = Budgets(BudgetsConfig(connect=30_000, lease=30_000))
    metrics = Registry()
    tokens = TokenManager(config, budgets, metrics)
    pool = RtzrPool(config, tokens, budgets, metrics)
    out: dict[str, float] = {}
    pcm = bytes(1600)
    async with trio.open_nursery() as n:
        await n.start(tokens.run)
        await n.start(pool.run)
        with trio.fail_after(120):
            while pool.idle_count < idle:
                await trio.sleep(0.05)
        await trio.sleep(0.5)

        # lease + return, one at a time, the maintainer running after each
        for _ in range(50):  # warm
            async with pool.lease():
                pass
            await trio.sleep(0)
        c0 = time.process_time()
        for _ in range(cycles):
            async with pool.lease():
                pass
            await trio.sleep(0)
        out["lease_us"] = (time.process_time() - c0) / cycles * 1e6

        # paced audio messages on many leases at once; then the same without sending (the pacing, the
        # readers): the difference is the send path alone
        async def paced(send: bool) -> float:
            ready = trio.Event()
            leased = 0
            sent = 0

            async def lessee(offset: float) -> None:
                nonlocal leased, sent
                async with pool.lease() as lease:
                    leased += 1
                    if leased == lessees:
                        ready.set()
                    await ready.wait()
                    await trio.sleep(1.0 + offset)  # the pool replaces the leased spares meanwhile
                    t = trio.current_time()
                    for _ in range(messages):
                        if send:
                            await lease.send_audio(pcm)
                        sent += 1
                        t += 0.1
                        await trio.sleep_until(t)

            async with trio.open_nursery() as ln:
                for i in range(lessees):
                    ln.start_soon(lessee, 0.1 * i / lessees)
                await ready.wait()
                await trio.sleep(1.0)
                c0 = time.process_time()
            return (time.process_time() - c0) / sent * 1e6

        out["send_us"] = await paced(True)
        await trio.sleep(1.0)  # the sent-on sockets are closed (unclean), their spares replaced
        out["pace_us"] = await paced(False)
        out["send_only_us"] = out["send_us"] - out["pace_us"]

        # the send path's own code, without the kernel's loopback TCP work: one lease writing back-to-back
        # to /dev/null (its connection's plain-TCP fd swapped; both trees write audio through that fd)
        null = os.open(os.devnull, os.O_WRONLY)
        async with pool.lease() as lease:
            ws = lease.socket._ws
            assert ws is not None
            # Older trees keep the fd in ``_fd``; newer ones read ``_socket.fileno()`` per write.
            swap = "_fd" if hasattr(ws, "_fd") else "_socket"
            real = getattr(ws, swap)
            setattr(ws, swap, null if swap == "_fd" else _NullSocket(null))
            try:
                for _ in range(500):
                    await lease.send_audio(pcm)
                c0 = time.process_time()
                for _ in range(bursts):
                    await lease.send_audio(pcm)
                out["code_us"] = (time.process_time() - c0) / bursts * 1e6
            finally:
                setattr(ws, swap, real)
        os.close(null)
        n.cancel_scope.cancel()
    return out


def client_main(args: argparse.Namespace) -> None:
    import trio

    result = trio.run(_client, args.port, args.lessees, args.messages, args.idle, args.cycles, args.bursts)
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------- driver


def run_client(tree: Path, port: int, args: argparse.Namespace) -> dict[str, float]:
    py = tree / ".venv" / "bin" / "python"
    cmd = [str(py), str(HERE), "--client", "--port", str(port), "--lessees", str(args.lessees),
           "--messages", str(args.messages), "--idle", str(args.idle), "--cycles", str(args.cycles), "--bursts", str(args.bursts)]
    done = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False, timeout=600)
    if done.returncode:
        sys.exit(f"client in {tree} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, default=Path("/work/wt-base"))
    p.add_argument("--new", type=Path, default=ROOT)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lessees", type=int, default=150)
    p.add_argument("--messages", type=int, default=100, help="per lessee (100 ms each)")
    p.add_argument("--idle", type=int, default=300)
    p.add_argument("--cycles", type=int, default=3000)
    p.add_argument("--bursts", type=int, default=20000, help="back-to-back messages to /dev/null")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        client_main(args)
        return
    args.old, args.new = args.old.resolve(), args.new.resolve()
    port = free_port()
    sessions = args.idle + args.lessees + 100
    log = open(Path(tempfile.gettempdir()) / f"stt_send_emu_{port}.log", "wb")
    emu = subprocess.Popen([str(ROOT / ".venv/bin/python"), "-m", "engine", "emulate-rtzr", "--port", str(port),
                            "--handshake-ms", "5", "--max-sessions", str(sessions), "--log-level", "warning",
                            "--idle-timeout-s", "600", "--cheap"], cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or emu.poll() is not None:
                    sys.exit("emulator did not start")
                time.sleep(0.1)
        results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for r in range(args.rounds):
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                res = run_client(args.old if name == "old" else args.new, port, args)
                results[name].append(res)
                print(f"round {r + 1} {name}: paced send {res['send_us']:.1f} µs/message, without the send "
                      f"{res['pace_us']:.1f}, send path {res['send_only_us']:.1f}, its code alone {res['code_us']:.2f}; "
                      f"lease+return {res['lease_us']:.1f} µs",
                      flush=True)
                time.sleep(1.0)  # the emulator closes the previous client's sockets
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        for key, label in (("send_us", "µs CPU per 100 ms audio message (paced, all included)"),
                           ("send_only_us", "µs CPU of the send path per message (paced minus pacing only)"),
                           ("code_us", "µs CPU of the send path's code per message (back-to-back to /dev/null)"),
                           ("lease_us", f"µs CPU per lease + return ({args.idle} idle sockets)")):
            old = statistics.median(x[key] for x in results["old"])
            new = statistics.median(x[key] for x in results["new"])
            print(f"{label}: old {old:.1f}, new {new:.1f}, new/old {new / old:.2f}")
    finally:
        emu.terminate()
        emu.wait(timeout=10)
        log.close()


if __name__ == "__main__":
    main()

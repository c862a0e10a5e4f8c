"""``kill -9`` of a worker holding RTZR sessions in the shared Redis budget: they come back within the TTL."""

from __future__ import annotations

import os
import signal

import trio

from .redis_server import RedisServer
from .workers_env import workers

TTL_MS = 2000
KEY = "crash:sessions"


def leases(server: RedisServer) -> dict[str, int]:
    """Lease id -> expiry (Redis ms), parsed from ZRANGE ... WITHSCORES."""
    raw = server.command("ZRANGE", KEY, "0", "-1", "WITHSCORES")
    lines = raw.split(b"\r\n")
    values = [lines[i + 1].decode() for i in range(1, len(lines) - 1, 2) if lines[i].startswith(b"$")]
    return {values[i]: int(float(values[i + 1])) for i in range(0, len(values) - 1, 2)}


def redis_now_ms(server: RedisServer) -> int:
    parts = server.command("TIME").split(b"\r\n")
    return int(parts[2]) * 1000 + int(parts[4]) // 1000


async def test_kill_9_worker_sessions_return_within_the_ttl(redis_server: RedisServer) -> None:
    with trio.fail_after(120):
        async with workers(2, "--set", f"redis.url={redis_server.url}", "--set", f"redis.key={KEY}",
                           "--set", f"redis.lease_ttl_ms={TTL_MS}", "--set", "rtzr.pool.spare=2",
                           "--set", "rtzr.pool.max_sessions=4") as parent:
            await parent.wait_ready()
            victim = await parent.wait_log(lambda e: e.get("event") == "worker_started" and e.get("worker") == 1)
            pid = f":{victim['pid']}:"
            while sum(pid in lease for lease in leases(redis_server)) < 2:
                await trio.sleep(0.02)  # both spares of worker 1 hold a lease
            assert len(leases(redis_server)) == 4  # the organisation's limit (4) is fully held
            mark = len(parent.logs)
            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = redis_now_ms(redis_server)
            dead = {lease: exp for lease, exp in leases(redis_server).items() if pid in lease}
            assert len(dead) == 2
            # nothing renews them any more: each expires at most one TTL after the kill
            assert all(exp <= killed_at + TTL_MS for exp in dead.values())
            await parent.wait_log(lambda e: e.get("event") == "worker_started" and e.get("worker") == 1, mark)
            # the restarted worker gets the sessions back once the dead leases have expired (never 5 at once)
            while True:
                current = leases(redis_server)
                assert len(current) <= 4
                if not any(lease in current for lease in dead) and len(current) == 4:
                    break
                await trio.sleep(0.02)
            await parent.wait_ready()
            parent.signal()
            assert await parent.proc.wait() == 0
        assert redis_server.zcard(KEY) == 0  # a clean shutdown gives every lease back

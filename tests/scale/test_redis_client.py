"""The Redis connection stays in step with its replies, whatever interrupts a command."""

from __future__ import annotations

import trio

from engine.redis.client import RedisClient


async def test_a_command_cancelled_mid_round_trip_does_not_answer_the_next_one() -> None:
    # A fake server that holds the first command's reply until the test has cancelled that command. Before the
    # fix the client kept the connection, so the late "+first" answered the next command.
    got_first, release = trio.Event(), trio.Event()
    commands = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal commands
        async with stream:
            while data := await stream.receive_some(4096):
                del data
                commands += 1
                if commands == 1:
                    got_first.set()
                    await release.wait()
                    await stream.send_all(b"+first\r\n")
                else:
                    await stream.send_all(b"+second\r\n")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, serve, 0)
            port = listeners[0].socket.getsockname()[1]
            client = RedisClient(f"redis://127.0.0.1:{port}", timeout_s=5)
            with trio.CancelScope() as first:
                async def cancel_when_received() -> None:
                    await got_first.wait()
                    first.cancel()
                nursery.start_soon(cancel_when_received)
                await client.command("PING")
            assert first.cancelled_caught
            release.set()
            assert await client.command("PING") == "second"
            await client.aclose()
            nursery.cancel_scope.cancel()

"""Issue 13 (memory per call): what a live call costs in Trio tasks, end to end through the real engine.

Between utterances a call is two tasks (the Twilio connection's, the handler's; playback's only once the
application gave a command) and each open RTZR socket one; no task exists only to sleep or to wait for one
event (the RTZR pinger, the pool's per-socket watcher and an idle call's playback task were such tasks)."""

from __future__ import annotations

from collections import Counter

import trio

from engine import events as ev
from engine.twilio.simulator import simulate_call

from .test_pipeline_e2e import make_config, phrase_call, running_engine


def engine_tasks() -> Counter[str]:
    """Every task in this Trio run whose function is the engine's, by qualified name."""
    names: Counter[str] = Counter()

    def walk(task: trio.lowlevel.Task) -> None:
        if task.name.startswith("engine."):
            names[task.name] += 1
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


async def test_an_idle_live_call_is_two_tasks_and_a_socket_is_one() -> None:
    audio, _ = phrase_call(["diary"], gap_ms=0)
    with trio.fail_after(60):
        async with running_engine(make_config()) as (engine, got):
            before = engine_tasks()
            async with trio.open_nursery() as nursery:
                # Realtime, with a long silence after the phrase: the call stays live, idle, after its final.
                nursery.start_soon(lambda: simulate_call(engine.twilio_url, audio, speed="realtime",
                                                         trailing_silence_ms=30_000))
                while not got.of(ev.TranscriptFinal):
                    await trio.sleep(0.02)
                while engine.supervisor.live_calls < 1 or any(n.startswith("engine.call.Call._") for n in engine_tasks()):
                    await trio.sleep(0.02)  # the utterance's tasks end right after its final
                during = engine_tasks()
                nursery.cancel_scope.cancel()
    added = during - before
    per_call = {name: n for name, n in added.items()
                if name.startswith(("engine.twilio.server.", "engine.call.", "engine.playback_driver."))}
    assert per_call == {"engine.twilio.server.TwilioServer._on_connection": 1,
                        "engine.twilio.server.TwilioServer._run_handler": 1}, added
    assert not [n for n in during if "_pinger" in n or "_nursery_watch" in n or "watch" in n.rsplit(".", 1)[-1]]
    assert during["engine.rtzr.stream.RtzrSocket._run"] >= 1  # one task per open socket, nothing beside it

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


def _scope_depth(task: trio.lowlevel.Task) -> int:
    """How many cancel scopes enclose ``task``'s current checkpoint, up to the root (each scope has a
    ``CancelStatus`` of ≈ 0.6 KiB; Trio's private chain, read only here)."""
    depth = 0
    status: object = task._cancel_status
    while status is not None:
        depth += 1
        status = status.parent  # type: ignore[attr-defined]
    return depth


def _tasks_named(suffix: str) -> list[trio.lowlevel.Task]:
    found: list[trio.lowlevel.Task] = []

    def walk(task: trio.lowlevel.Task) -> None:
        if task.name.endswith(suffix):
            found.append(task)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return found


async def test_an_idle_live_call_nests_few_scopes_and_one_nursery() -> None:
    """Issue 13 round 3 (mem2): the connection task waits under the call nursery's own scope (the drain
    deadline; no separate grace scope) and the reader's idle scope (which session.end() also cancels; no
    separate end scope); the handler task adds no nursery for playback (its task, when needed, runs in the
    call nursery)."""
    audio, _ = phrase_call(["diary"], gap_ms=0)
    with trio.fail_after(60):
        async with running_engine(make_config()) as (engine, got):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: simulate_call(engine.twilio_url, audio, speed="realtime",
                                                         trailing_silence_ms=30_000))
                while not got.of(ev.TranscriptFinal):
                    await trio.sleep(0.02)
                while engine.supervisor.live_calls < 1 or any(n.startswith("engine.call.Call._") for n in engine_tasks()):
                    await trio.sleep(0.02)
                [conn] = _tasks_named("TwilioServer._on_connection")
                [handler] = _tasks_named("TwilioServer._run_handler")
                assert conn.parent_nursery is not None
                # Scopes the connection task added over those of the calls nursery it runs in.
                conn_depth = _scope_depth(conn) - _scope_depth(conn.parent_nursery.parent_task)
                handler_nurseries = len(handler.child_nurseries)
                nursery.cancel_scope.cancel()
    # The call nursery's own scope and the reader's idle scope; old code 4: the grace scope, the nursery's,
    # the end scope and the reader's.
    assert conn_depth == 2
    # Call.run's own (its utterances' tasks); old code 2: ControlledCall.run's nursery besides.
    assert handler_nurseries == 1

"""Issue 13 (memory per call): a call's playback task runs only once the application gave a command.

ControlledCall starts CallControl's task at the first play / mark / clear / stop (or at once when one came
before the call ran); until then an idle call has no playback task, and what the application does is played
exactly as before."""

from __future__ import annotations

import trio
import trio.testing

from engine import events as ev
from engine.config import PlaybackConfig
from engine.metrics import Registry
from engine.playback_driver import CallControl, ControlledCall
from tests.appchannel.test_barge_in import FakeSession


class _IdleCall:
    """A call handler whose run() lasts until the stream closes (as engine.call.Call's)."""

    def __init__(self) -> None:
        self.closed = trio.Event()

    def on_event(self, event: object) -> None:
        pass

    async def run(self) -> None:
        await self.closed.wait()

    def on_close(self, reason: str) -> None:
        self.closed.set()


def _make() -> tuple[ControlledCall, CallControl, FakeSession, list[ev.Event], _IdleCall]:
    session = FakeSession()
    events: list[ev.Event] = []
    control = CallControl(session, PlaybackConfig(), events.append, Registry())  # type: ignore[arg-type]
    call = _IdleCall()
    return ControlledCall(call, control), control, session, events, call


def _control_tasks(nursery: trio.Nursery) -> int:
    """Tasks running ControlledCall._run_control under ``nursery`` (any depth)."""
    def count(task: trio.lowlevel.Task) -> int:
        own = task.name.endswith("ControlledCall._run_control")
        return own + sum(count(child) for n in task.child_nurseries for child in n.child_tasks)
    return sum(count(task) for task in nursery.child_tasks)


async def test_an_idle_call_has_no_playback_task_until_the_first_play(autojump_clock: trio.testing.MockClock) -> None:
    controlled, control, session, events, _call = _make()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controlled.run)
            await trio.testing.wait_all_tasks_blocked()
            assert _control_tasks(nursery) == 0  # old code: 1, waiting for a command that never came
            control.play_nowait(b"\xff" * 1600)  # 200 ms: 10 frames, paced by the task
            await trio.testing.wait_all_tasks_blocked()
            assert _control_tasks(nursery) == 1
            while sum(1 for _t, kind, _x in session.sent if kind == "media") < 10:
                await trio.sleep(0.02)
            assert [x for _t, kind, x in session.sent if kind == "media"] == [160] * 10
            assert [type(e) for e in events] == [ev.PlaybackStarted]
            controlled.on_close("stop")
    assert control.closed


async def test_a_command_before_the_call_runs_starts_the_task_with_it() -> None:
    controlled, control, session, _events, _call = _make()
    control.mark_nowait("early")  # the application marked before the handler's task ran
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controlled.run)
            while not any(kind == "mark" for _t, kind, _x in session.sent):
                await trio.sleep(0.01)
            assert len([x for _t, kind, x in session.sent if kind == "mark"]) == 1
            controlled.on_close("stop")


async def test_stop_on_an_idle_call_ends_the_stream_through_the_task() -> None:
    controlled, control, session, _events, _call = _make()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controlled.run)
            await trio.testing.wait_all_tasks_blocked()
            control.stop_nowait()
            while session.ended is None:
                await trio.sleep(0.01)
            assert session.ended == "app_stop"
            controlled.on_close("app_stop")


async def test_a_call_that_never_played_closes_without_a_task() -> None:
    controlled, control, session, events, _call = _make()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controlled.run)
            await trio.testing.wait_all_tasks_blocked()
            assert _control_tasks(nursery) == 0
            controlled.on_close("stop")
    assert control.closed and not session.sent and not events


async def test_the_playback_task_runs_in_the_nursery_that_runs_the_call() -> None:
    """Issue 13 round 3 (mem2): ControlledCall.run opens no nursery of its own (≈ 1.5 KiB a call): the playback
    task is a sibling of the call's task in the nursery that started it (the server's per-call nursery)."""
    controlled, control, session, _events, _call = _make()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controlled.run)
            await trio.testing.wait_all_tasks_blocked()
            control.mark_nowait("m")
            await trio.testing.wait_all_tasks_blocked()
            siblings = [t for t in nursery.child_tasks if t.name.endswith("ControlledCall._run_control")]
            assert len(siblings) == 1  # old code: 0 (it ran in ControlledCall.run's own nursery)
            assert len([x for _t, kind, x in session.sent if kind == "mark"]) == 1
            controlled.on_close("stop")
    assert control.closed


def test_run_as_the_root_task_gets_a_nursery_of_its_own() -> None:
    """Without a nursery to share (run as trio.run's own task) the playback task still runs, under run()."""
    controlled, control, session, _events, call = _make()
    control.mark_nowait("early")

    async def until_marked() -> None:
        while not session.sent:
            await trio.sleep(0.01)
        call.on_close("stop")

    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_marked)
                await controlled.run()  # as the root task's own code: this task has no nursery to share

    trio.run(main)
    assert len([x for _t, kind, x in session.sent if kind == "mark"]) == 1 and control.closed

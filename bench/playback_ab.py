"""ingest_ab.py with every call wrapped as engine.app wraps it: a Call inside a ControlledCall with its
CallControl (the playback layer; nothing plays), for the per-frame cost of that layer (issue 13).

Same options and output as ingest_ab.py (run from the tree to measure, with its venv: the engine is imported
from the working directory, ingest_ab.py from beside this file)::

    cd /work/wt-base2 && .venv/bin/python /work/wt-play/bench/playback_ab.py --calls 200 --frames 250 \\
        --repeat 1 --clients-process
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())  # the tree this runs from

from engine.config import Config
from engine.metrics import Registry
from engine.playback_driver import CallControl, ControlledCall

_spec = importlib.util.spec_from_file_location("ingest_ab", Path(__file__).with_name("ingest_ab.py"))
assert _spec is not None and _spec.loader is not None
ab: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ab)

_metrics = Registry()


class _Session:
    """The outbound side for a call that plays nothing (never written to)."""

    def __init__(self, stream_sid: str, call_sid: str) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid

    async def send_media(self, audio: bytes) -> bool:
        raise AssertionError("nothing plays in this benchmark")

    async def send_mark(self, name: str) -> bool:
        raise AssertionError("nothing plays in this benchmark")

    async def clear(self) -> bool:
        raise AssertionError("nothing plays in this benchmark")

    def end(self, reason: str) -> None:
        pass


class _Wrapped(ControlledCall):
    """A ControlledCall that also reads as its Call (ingest_ab reads ``_current`` off its handlers)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.call, name)


def _wrap(call: Any) -> _Wrapped:
    control = CallControl(_Session(call.stream_sid, call.call_sid), Config().playback, lambda e: None, _metrics)
    call.emit = control.on_engine_event  # as engine.app's call_emit (the sinks are not measured)
    return _Wrapped(call, control)


def _server(config: Any, *, handler_factory: Any, **kw: Any) -> Any:
    return _TwilioServer(config, handler_factory=lambda session: _wrap(handler_factory(session)), **kw)


def _direct_call(*args: Any, **kw: Any) -> _Wrapped:
    return _wrap(_Call(*args, **kw))


_TwilioServer, _Call = ab.TwilioServer, ab.Call
ab.TwilioServer = _server
if "--direct" in sys.argv:
    ab.Call = _direct_call

if __name__ == "__main__":
    raise SystemExit(ab.main())

"""bench/call_memory.py's grouping of tracemalloc differences by the innermost line of the engine's own code
(who allocated Trio's tasks, scopes and events on a call's behalf)."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import call_memory


def _allocate_here() -> list[bytearray]:
    return [bytearray(1000) for _ in range(50)]


def test_differences_are_grouped_by_the_innermost_engine_frame() -> None:
    tracemalloc.start(10)
    try:
        before = tracemalloc.take_snapshot()
        # allocated in bytearray's C code, called from this file: no engine/ frame, so the innermost frame counts
        kept = _allocate_here()
        from engine.audio import mulaw

        silence = [mulaw.silence(2000) for _ in range(20)]  # innermost engine frame: engine/audio/mulaw.py
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    rows = {where: size for where, size, _count in call_memory.by_engine_line(after.compare_to(before, "traceback"))}
    mulaw_rows = [size for where, size in rows.items() if where.startswith("audio/mulaw.py:")]
    assert mulaw_rows and max(mulaw_rows) >= 20 * 2000
    here = [size for where, size in rows.items() if "test_call_memory.py" in where]
    assert here and max(here) >= 50 * 1000
    assert kept and silence

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


class _Owner:
    def __init__(self) -> None:
        self.tags: set[str] = set()
        self.more = 1


def test_the_census_names_instance_dicts_and_containers_after_their_owner() -> None:
    before = call_memory.sizes_by_kind()
    owners = [_Owner() for _ in range(100)]
    after = call_memory.sizes_by_kind()
    grown = {k: after[k][1] - before.get(k, [0, 0])[1] for k in after}
    assert grown["_Owner"] == 100
    assert grown["_Owner>set"] == 100  # each empty set counted once, under its owner, not as a plain set
    assert grown.get("set", 0) < 100
    assert owners


def test_the_heap_is_split_by_allocator() -> None:
    heap = call_memory.allocators()
    assert heap["pymalloc_live"] > 0 and heap["pymalloc_arenas"] >= heap["pymalloc_live"]

"""The daemon's malloc policy: give the C heap's free pages back to the kernel every few seconds (glibc only).

Why (issue 13; BENCHMARKS.md § Capacity, "Issue 13 round 5: memory per call"): glibc's malloc keeps memory freed
in the middle of its heap resident until ``malloc_trim``; only the heap's top is returned by itself. What the
calls free there (an ended utterance's 2 KiB audio blocks, numpy buffers, large messages) is reused by later
allocations, so under steady load the free heap is a pool the calls churn through, not growth (a trim every
5 s left RSS per call within 0.3 KiB at 300 calls, `bench/call_census.py --rss --corpus`); but when utterances
or calls end, 12-17 KiB per call stayed resident until a trim (300 calls). A ``malloc_trim(0)`` costs 0.3-1.0 ms
of CPU at 300 calls (the first one, after start-up, more), so the daemon runs one every
``server.malloc_trim_interval_ms``. ``mallopt`` thresholds were measured and rejected: a fixed
``M_MMAP_THRESHOLD`` or ``M_TRIM_THRESHOLD`` changed no reading and cost 33x the page faults and ~20 % CPU;
``M_ARENA_MAX`` changes nothing in a single-threaded engine. A shorter interval was measured too (issue 13 round 7):
the pages a trim gives back at 300 calls are touched again within 2-3 s, so trimming every 2 s left the census's
RSS per call where it was (peak 91.6 vs 91.3 KiB) for 45 % more page faults.

Process-wide, so only ``sori serve`` (``engine.app.run_engine``) applies it; ``engine.app.serve()`` never does.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

import trio


def glibc_malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` (1 if memory went back to the kernel), or None where the C library is not
    glibc (musl, macOS: other allocators, other calls)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols the interpreter is linked with: its C library's
        libc.gnu_get_libc_version  # noqa: B018  # glibc's own symbol: musl has a malloc_trim stub too
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def trim_heap() -> int:
        return int(trim(0))

    return trim_heap


def malloc_policy(interval_ms: int) -> tuple[Callable[[], int] | None, str]:
    """The trim to run every ``interval_ms`` (0: never) and a line saying what was decided, for the log."""
    if interval_ms <= 0:
        return None, "malloc_trim off (server.malloc_trim_interval_ms = 0)"
    trim = glibc_malloc_trim()
    if trim is None:
        return None, "malloc_trim off (the C library is not glibc)"
    return trim, f"malloc_trim(0) every {interval_ms} ms"


async def trim_heap_every(interval_s: float, trim: Callable[[], int]) -> None:
    """Until cancelled: ``trim()`` every ``interval_s``. It runs on the event loop (0.3-1.0 ms at 300 calls):
    from a thread it would hold malloc's lock against the loop's own allocations all the same."""
    while True:
        await trio.sleep(interval_s)
        trim()

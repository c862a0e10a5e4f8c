"""bench/rss_trace.py: the capacity step's RSS per call, peak-based and steady, kept apart by phase."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import rss_trace
from rss_trace import RssTrace

KIB = 1024


def _trace(samples: list[tuple[float, int, str]], idle: int) -> RssTrace:
    trace = RssTrace(pid=os.getpid())
    trace.idle = idle
    trace.samples = samples
    return trace


def test_a_peak_after_the_window_is_not_the_steady_figure() -> None:
    idle = 50_000 * KIB
    calls = 100
    # window readings 70 and 80 KiB per call above idle; a later burst to 100
    samples = [(0.5, idle + 40 * calls * KIB, "ramp"), (2.0, idle + 70 * calls * KIB, "window"),
               (3.0, idle + 80 * calls * KIB, "window"), (9.0, idle + 100 * calls * KIB, "after")]
    s = _trace(samples, idle).summary(calls)
    assert s["peak"] == 100 and s["peak_phase"] == "after" and s["peak_t"] == 9.0
    assert s["window_mean"] == 75 and s["window_max"] == 80
    assert s["max_by_phase"] == {"ramp": 40, "window": 80, "after": 100}


def test_no_window_reading_is_nan_not_zero() -> None:
    idle = 10 * KIB
    s = _trace([(1.0, idle + 5 * KIB, "ramp")], idle).summary(1)
    assert s["peak"] == 5 and math.isnan(s["window_mean"]) and math.isnan(s["window_max"])
    assert _trace([], idle).summary(1) == {}


def test_rss_by_mapping_adds_up_to_this_process_rss() -> None:
    parts = rss_trace.rss_by_mapping(os.getpid())
    total_kib = sum(parts.values())
    rss_kib = rss_trace.rss_bytes(os.getpid()) // KIB
    assert parts["file"] > 0 and parts["heap"] + parts["arenas"] + parts["anon"] > 0
    assert abs(total_kib - rss_kib) <= max(512, rss_kib // 20)  # read a moment apart


def test_pool_gauges_are_picked_from_a_metrics_text() -> None:
    text = "# HELP x\nsori_rtzr_pool_open 320.0\nsori_rtzr_pool_idle 12\nsori_rtzr_pool_opens_total 400\n"
    assert rss_trace.gauges(text) == {"sori_rtzr_pool_open": 320.0, "sori_rtzr_pool_idle": 12.0}

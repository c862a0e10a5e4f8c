"""bench/latency.py's naive ÷ sori ratio column: a 0 ms pooled figure (a lease from a warm pool) has no ratio."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import latency


def test_ratio_of_two_figures() -> None:
    assert latency.ratio([652.0] * 10, [232.0] * 10, 50) == "  2.8×"


def test_ratio_over_a_zero_figure_is_a_dash() -> None:
    # The round-9 run printed "102600000000.0×" for the pooled lease wait (0 ms against 103 ms).
    assert latency.ratio([103.0] * 10, [0.0] * 10, 50) == "    –"
    assert latency.ratio([103.0] * 10, [0.2] * 10, 99) == "    –"


def test_ratio_without_samples_is_a_dash() -> None:
    assert latency.ratio([], [1.0], 50) == "    –"

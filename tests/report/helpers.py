"""Shared by the report tests: the recorded logs and an independent reading of them (plain json)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
DEMO = DATA / "demo_call.jsonl"  # `sori demo` (realtime), one call
TWO = DATA / "two_calls.jsonl"  # `sori serve --stt emulator` + `sori simulate-call --calls 2`


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def closing_finals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "transcript.final" and e.get("latency")]

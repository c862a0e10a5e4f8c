"""bench/stt_receive.py measures what it says: every result written by the peer reaches the call as an event."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import stt_receive


@pytest.mark.parametrize("finals", [False, True])
def test_every_result_reaches_the_call(finals: bool) -> None:
    async def main() -> int:
        with trio.fail_after(20):
            return await stt_receive.run(12, finals)

    assert trio.run(main) == 12

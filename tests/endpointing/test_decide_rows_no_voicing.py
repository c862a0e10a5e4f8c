"""_decide_rows without voicing for classifiers that have a periodicity rule (review 4): the rows are decided as
each classifier's own ``decide`` with voicing 0 decides them (the contract its docstring states: "None: 0"),
not a ValueError from the rescued flags it no longer builds for that case."""

from __future__ import annotations

import copy

import numpy as np

from engine.endpointing.classifiers import _band_array, _decide_rows
from engine.endpointing.pitch import PitchBandClassifier


def test_rows_without_voicing_decide_as_decide_does() -> None:
    rng = np.random.default_rng(0)
    rows = [PitchBandClassifier(8000, 20) for _ in range(3)]
    for c in rows:  # settled: floors learnt, no unmute window (the vectorised rows)
        for _ in range(60):
            c.classify(rng.normal(0, 3000, (1, 160)).astype(np.int16))
    alone = copy.deepcopy(rows)
    frames = rng.normal(0, 3000, (3, 160)).astype(np.int16)
    bands = _band_array(rows[0]._basis, rows[0]._group, frames)
    got, rescued = _decide_rows(rows, bands, None, None, min_rows=1)
    want = [c.decide(r, 0.0, 0.0) for c, r in zip(alone, bands.tolist(), strict=True)]
    assert got == want and rescued == [c._rescued for c in alone]
    assert [c._floors for c in rows] == [c._floors for c in alone] and [c._run for c in rows] == [c._run for c in alone]

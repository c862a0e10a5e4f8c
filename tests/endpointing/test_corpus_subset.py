"""The committed corpus subset loads without espeak-ng and the default endpointer finds its speech."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from engine.config import EndpointingConfig

from .helpers import check, run

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_clean_calls_are_found() -> None:
    sys.path.insert(0, str(BENCH))
    from corpus import load

    calls = load(BENCH / "corpus")
    assert len(calls) >= 16
    cfg = EndpointingConfig()
    for name, pcm, lab in calls:
        assert pcm.dtype == np.int16 and lab["sample_rate"] == 8000
        if lab["noise_only"] or lab["snr_db"] < 30:
            continue
        r = run(cfg, pcm, [160])
        found = check(cfg, 8000, pcm, r)
        covered = np.zeros(len(pcm), bool)
        for u in found:
            covered[u.preroll_start : u.end] = True
        for u in lab["utterances"]:
            for s, e in u["segments"]:
                assert covered[s:e].mean() > 0.99, name

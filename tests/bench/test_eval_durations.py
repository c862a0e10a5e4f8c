"""bench/endpointing_eval.py --durations (issue 13 round 6): what a max_utterance_ms cut splits of the labelled
utterances, and the joining of a condition's files into one long call."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import endpointing_eval as ev

# One labelled utterance, 1.0-3.0 s, two speech segments with a pause between them (1.8-2.2 s).
LAB = {"sample_rate": 8000, "utterances": [{"start": 8000, "end": 24000, "segments": [[8000, 14400], [17600, 24000]]}]}


def _det(pre: int, start: int, last: int, end: int, reason: str, continues: bool) -> ev.Detection:
    return (pre, start, last, end, reason, continues)


def test_a_cut_inside_a_segment_splits_mid_speech_and_is_joined_by_a_continuation() -> None:
    det = [_det(4000, 6400, 12000, 12000, "max_length", False), _det(12000, 12000, 24000, 24640, "silence", True)]
    r = ev.cut_effects(det, LAB)
    assert (r["cuts"], r["split"], r["mid_speech"], r["unjoined"]) == (1, 1, 1, 0)


def test_a_cut_in_the_pause_splits_but_not_mid_speech_and_a_later_new_start_is_not_joined() -> None:
    det = [_det(4000, 6400, 14400, 16000, "max_length", False), _det(17000, 17600, 24000, 24640, "silence", False)]
    r = ev.cut_effects(det, LAB)
    assert (r["cuts"], r["split"], r["mid_speech"], r["unjoined"]) == (1, 1, 0, 1)


def test_a_cut_outside_every_utterance_and_silence_ends_split_nothing() -> None:
    det = [_det(0, 400, 6000, 6000, "max_length", False), _det(6000, 6000, 7000, 7640, "silence", True),
           _det(7700, 8000, 24000, 24640, "silence", False)]
    r = ev.cut_effects(det, LAB)
    assert (r["cuts"], r["split"], r["unjoined"]) == (1, 0, 0)


def test_joined_files_shift_the_labels_by_the_audio_before_them() -> None:
    a = ("a", np.zeros(30000, np.int16), {"split": "dev", "noise": "pink", "snr_db": 10, **LAB})
    b = ("b", np.ones(20000, np.int16), {"split": "dev", "noise": "pink", "snr_db": 10, **LAB})
    other = ("c", np.zeros(100, np.int16), {"split": "dev", "noise": "hum", "snr_db": 10, **LAB})
    joined = ev.concat_by_condition([a, b, other])
    assert [name for name, _, _ in joined] == ["c", "a+b"]
    _, pcm, lab = joined[1]
    assert len(pcm) == 50000 and pcm[30000] == 1
    assert [(u["start"], u["end"]) for u in lab["utterances"]] == [(8000, 24000), (38000, 54000)]
    assert lab["utterances"][1]["segments"] == [[38000, 44400], [47600, 54000]]

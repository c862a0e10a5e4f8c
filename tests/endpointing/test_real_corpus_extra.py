"""The real-speech corpus's third split (``extra``: voices never tuned on, issue 12 round 4) and its babble of
voices other than the caller's: deterministic, labels that are the clean clips' own speech segments.

Runs only where the Debian voice packages are installed (``make corpus`` installs them); CI skips it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SOUNDS = Path("/usr/share/asterisk/sounds")


def corpus_real() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    import corpus_real as mod

    return mod


needs_ru = pytest.mark.skipif(
    not (SOUNDS / "ru_RU_f_IvrvoiceRU").is_dir(),
    reason="asterisk-core-sounds-ru-wav not installed (make corpus installs it)",
)
needs_allison = pytest.mark.skipif(
    not (SOUNDS / "en_US_f_Allison").is_dir() or not (SOUNDS / "es_MX_f_Allison").is_dir(),
    reason="asterisk-core-sounds-en-wav / -es-wav not installed (make corpus installs them)",
)
needs_gsm = pytest.mark.skipif(
    shutil.which("untoast") is None or not (SOUNDS / "fr").is_dir(),
    reason="libgsm-tools / asterisk-prompt-fr-armelle not installed (make corpus installs them)",
)


def extra_call(name: str) -> tuple[np.ndarray, dict[str, object]]:
    cr = corpus_real()
    kw = dict(cr.names("extra", 8))[name]
    pcm, labels = cr.build_call(name, "extra", **kw)
    return pcm, json.loads(json.dumps(labels))


@needs_ru
def test_extra_split_builds_deterministically(tmp_path: Path) -> None:
    cr = corpus_real()
    name = "extra_pink_snr10_00"  # the Russian voice (index 0 of the split), no babble: only its prompts load
    assert dict(cr.names("extra", 8))[name]["lang"] == "ru"
    files = []
    for k in range(2):
        pcm, labels = extra_call(name)
        cr.prompts.cache_clear()  # the second build re-reads the clips from disk
        cr.write_mulaw_wav(tmp_path / f"{k}.wav", pcm)
        files.append(((tmp_path / f"{k}.wav").read_bytes(), labels))
    assert files[0] == files[1]
    labels = files[0][1]
    assert labels["split"] == "extra" and labels["voice"] == "ru_RU_f_IvrvoiceRU" and labels["language"] == "ru"
    assert labels["utterances"]


@needs_ru
def test_extra_labels_are_the_clean_clips_segments() -> None:
    """Every utterance = its prompts' own speech segments (from the clean clip), in order, each prompt's
    segments at one offset; pauses between prompts 80–300 ms; the clean speech is loud on the line there."""
    cr = corpus_real()
    by_name = {p.name: p for p in cr.prompts("ru")}
    pcm, labels = extra_call("extra_hum_snr20_04")  # index 4 % 4 = 0: Russian
    assert labels["voice"] == "ru_RU_f_IvrvoiceRU"
    utts = labels["utterances"]
    assert isinstance(utts, list) and len(utts) >= 2
    x = pcm.astype(np.float64)
    for u in utts:
        segs = u["segments"]
        i = 0
        offsets = []
        for pname in u["prompts"]:
            pr = by_name[pname]
            off = segs[i][0] - pr.segments[0][0]
            offsets.append(off)
            for a, b in pr.segments:
                assert segs[i] == [off + a, off + b], (pname, i)
                i += 1
        assert i == len(segs) and u["start"] == segs[0][0] and u["end"] == segs[-1][1]
        for k in range(1, len(offsets)):
            gap = offsets[k] - (offsets[k - 1] + len(by_name[u["prompts"][k - 1]].pcm))
            assert 0.08 * cr.RATE - 1 <= gap <= 0.30 * cr.RATE + 1
        assert u["max_pause"] <= cr.MAX_PAUSE
        # at 20 dB hum, labelled speech carries far more energy than the 300 ms before the utterance
        speech = np.concatenate([x[a:b] for a, b in segs])
        before = x[max(0, u["start"] - 2400) : u["start"]]
        if before.size >= 800:
            assert np.mean(speech**2) > 5 * np.mean(before**2)


@needs_allison
def test_babble_other_excludes_the_callers_voice() -> None:
    cr = corpus_real()
    used = {cr.prompts("en")[0].name}
    split_pool = cr.babble_pool("dev", "en", used, "split")
    other_pool = cr.babble_pool("dev", "en", used, "other")
    assert {p.name.split("/")[0] for p in split_pool} == {"en", "es"}
    assert {p.name.split("/")[0] for p in other_pool} == {"es"}
    assert {p.name.split("/")[0] for p in cr.babble_pool("dev", "en", used, "own")} == {"en"}
    assert all(p.name not in used for p in split_pool)
    with pytest.raises(ValueError):
        cr.babble_pool("dev", "en", used, "mine")
    # the default keeps dev/test as built before (their own voice in the babble); extra uses other voices
    assert cr.BABBLE_VOICES == {"dev": "split", "test": "split", "extra": "other"}


@needs_ru
@needs_gsm
def test_gsm_voices_decode_to_speech() -> None:
    """The GSM 06.10 voices (Colombian Spanish, Armelle) decode to 8 kHz speech with usable prompts."""
    cr = corpus_real()
    for lang in ("es-co", "fr-armelle"):
        ps = cr.prompts(lang)
        assert len(ps) > 100, lang
        assert all(0.25 * cr.RATE <= len(p.pcm) <= 4.0 * cr.RATE for p in ps)

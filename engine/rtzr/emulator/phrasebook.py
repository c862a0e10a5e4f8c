"""The phrasebook: known clips (8 kHz mono WAV) with their text and word timings.

``phrases.json`` in the directory lists ``[{"id", "file", "text", "words"?}]``; ``words`` is
``[{"text", "start_ms", "end_ms"}]`` relative to the clip. Without it, the text's words are spread
over the clip's energetic span in proportion to their length, so partial clips still map to words.
"""

from __future__ import annotations

import wave
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
import soxr
from msgspec import Struct

RATE = 8000
MAX_CLIPS = 1000
MAX_CLIP_SECONDS = 60


class PhrasebookError(ValueError):
    """The phrasebook directory, its phrases.json, or a clip is unusable; names the file."""


class WordSpec(Struct, kw_only=True, frozen=True):
    text: str
    start_ms: int
    end_ms: int


class PhraseSpec(Struct, kw_only=True, frozen=True):
    id: str
    file: str
    text: str
    words: list[WordSpec] | None = None


class ClipWord(Struct, kw_only=True, frozen=True):
    """A word of a clip in clip samples (8 kHz)."""

    text: str
    start: int
    end: int


class Clip(Struct, kw_only=True, frozen=True):
    id: str
    text: str
    samples: npt.NDArray[np.int16]
    words: tuple[ClipWord, ...]


def _read_wav(path: Path) -> npt.NDArray[np.int16]:
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise PhrasebookError(f"{path}: must be 16-bit PCM WAV")
            channels, rate, frames = w.getnchannels(), w.getframerate(), w.getnframes()
            if frames > MAX_CLIP_SECONDS * rate:
                raise PhrasebookError(f"{path}: longer than {MAX_CLIP_SECONDS} s")
            data = np.frombuffer(w.readframes(frames), dtype="<i2")
    except (OSError, EOFError, wave.Error) as exc:
        raise PhrasebookError(f"{path}: {exc}") from None
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        data = soxr.resample(data.astype(np.float32), rate, RATE, quality="HQ")
    return np.clip(np.round(data), -32768, 32767).astype(np.int16)


def _spread_words(text: str, samples: npt.NDArray[np.int16]) -> tuple[ClipWord, ...]:
    """Word spans proportional to word length over the clip's loud part (no timings given)."""
    words = text.split()
    if not words:
        return ()
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 1000)
    lo, hi = (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, len(samples))
    weights = np.array([len(w) for w in words], dtype=np.float64)
    edges = lo + np.concatenate([[0.0], np.cumsum(weights) / weights.sum()]) * (hi - lo)
    return tuple(ClipWord(text=w, start=int(edges[i]), end=int(edges[i + 1])) for i, w in enumerate(words))


def load_phrasebook(directory: str | Path) -> list[Clip]:
    """Read ``phrases.json`` and its clips; every problem is a PhrasebookError."""
    root = Path(directory)
    index = root / "phrases.json"
    try:
        specs = msgspec.json.decode(index.read_bytes(), type=list[PhraseSpec])
    except OSError as exc:
        raise PhrasebookError(f"{index}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PhrasebookError(f"{index}: {exc}") from None
    if len(specs) > MAX_CLIPS:
        raise PhrasebookError(f"{index}: more than {MAX_CLIPS} clips")
    clips: list[Clip] = []
    for spec in specs:
        path = (root / spec.file).resolve()
        if root.resolve() not in path.parents:
            raise PhrasebookError(f"{index}: {spec.file!r} is outside the phrasebook directory")
        samples = _read_wav(path)
        if spec.words:
            scale = RATE / 1000
            words = tuple(
                ClipWord(text=w.text, start=max(0, int(w.start_ms * scale)),
                         end=min(len(samples), int(w.end_ms * scale)))
                for w in spec.words
            )
            if any(w.end <= w.start for w in words):
                raise PhrasebookError(f"{index}: {spec.id}: a word has no extent inside the clip")
        else:
            words = _spread_words(spec.text, samples)
        clips.append(Clip(id=spec.id, text=spec.text, samples=samples, words=words))
    return clips

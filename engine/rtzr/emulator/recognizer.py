"""The emulator's pluggable recognizer; the default matches phrasebook clips by audio fingerprint.

Text is a function of the audio only (never of the socket or request order): one RTZR socket
carries utterances of many calls, so anything else would hand one caller's words to another.

Matching, in order:
1. exact: a rolling hash of every 20 ms window at every offset of every clip, looked up at 5 ms
   steps of the received audio (8 kHz only). Audio that went μ-law → PCM unchanged arrives
   bit-exact, so three hits at one alignment are proof. Words of the clip that are at least half
   inside the received audio become tokens (an utterance cut mid-phrase gets the words it holds).
2. envelope: normalised correlation of 10 ms log-energy envelopes (any sample rate, any gain) for
   loud audio the exact pass did not explain.
3. placeholder: remaining loud audio becomes "[에뮬레이터: 인식되지 않은 음성 N.N초]".
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
from msgspec import Struct
from numpy.lib.stride_tricks import sliding_window_view

from engine.rtzr.emulator.phrasebook import RATE, Clip

WINDOW = 160  # 20 ms at 8 kHz
STEP = 40  # query every 5 ms
MIN_HITS = 3
WORD_COVER = 0.5
ENV_MIN_SCORE = 0.9
PLACEHOLDER_GAP_FRAMES = 30  # merge loud runs closer than 300 ms
PLACEHOLDER_MIN_FRAMES = 10  # ignore loud blips under 100 ms
ONSET_SLACK = 6  # frames of onset misalignment tolerated (gain changes move the threshold crossing)
_BASE = np.uint64(0x9E3779B97F4A7C15)


class Token(Struct, kw_only=True, frozen=True):
    """One recognised word; times in ms from the first sample given to the recognizer."""

    text: str
    start_ms: float
    end_ms: float
    confidence: float


class Recognizer(Protocol):
    """Anything that turns audio into tokens; must be a pure function of the samples."""

    def recognize(self, samples: npt.NDArray[np.int16], rate: int) -> list[Token]: ...


class SkipRecognizer:
    """``--cheap``: no recognition, for load tests that must not spend the rig's CPU on text.

    The audio from its first to its last loud 10 ms frame (frame RMS above ``speech_dbfs``, as the
    session's EPD judges speech) is tiled with words reading ``CHEAP_WORD``, one per ``CHEAP_WORD_MS`` (the
    last may be shorter); quiet audio gives no words, so a final for trailing silence has empty text as
    with the phrasebook recogniser. Interims, finals and word timings keep their usual shape, at a cost
    of one energy pass per call, whatever the audio says.
    """

    def __init__(self, speech_dbfs: float = -45.0) -> None:
        self.speech_dbfs = speech_dbfs

    def recognize(self, samples: npt.NDArray[np.int16], rate: int) -> list[Token]:
        frame = max(1, rate // 100)
        n = len(samples) // frame
        if n == 0:
            return []
        frames = samples[: n * frame].astype(np.float64).reshape(n, frame)
        threshold = frame * (32768.0 * 10 ** (self.speech_dbfs / 20)) ** 2
        loud = np.flatnonzero(np.einsum("ij,ij->i", frames, frames) >= threshold)
        if loud.size == 0:
            return []
        return cheap_tokens(int(loud[0]), int(loud[-1]) + 1, frame * 1000.0 / rate)


def cheap_tokens(first_loud: int, last_end: int, ms_per_frame: float) -> list[Token]:
    """``SkipRecognizer``'s words for loud frames from ``first_loud`` up to ``last_end`` (frame numbers)."""
    start, total_ms = float(first_loud) * ms_per_frame, float(last_end) * ms_per_frame
    out: list[Token] = []
    while start < total_ms:
        end = min(total_ms, start + CHEAP_WORD_MS)
        out.append(Token(text=CHEAP_WORD, start_ms=start, end_ms=end, confidence=0.0))
        start = end
    return out


CHEAP_WORD = "[에뮬레이터:인식생략]"
CHEAP_WORD_MS = 500.0


def placeholder_text(seconds: float) -> str:
    return f"[에뮬레이터: 인식되지 않은 음성 {seconds:.1f}초]"


def _powers() -> npt.NDArray[np.uint64]:
    out = np.empty(WINDOW, dtype=np.uint64)
    acc = np.uint64(1)
    with np.errstate(over="ignore"):
        for k in range(WINDOW - 1, -1, -1):
            out[k] = acc
            acc = acc * _BASE
    return out


_POWERS = _powers()


def _hashes(windows: npt.NDArray[np.int16]) -> npt.NDArray[np.uint64]:
    """Polynomial hash (mod 2**64) of each row; uint64 matmul wraps, which is what we want."""
    values = (windows.astype(np.int64) + 32768).astype(np.uint64)
    result: npt.NDArray[np.uint64] = values @ _POWERS
    return result


def _window_energy(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    sq = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    energy: npt.NDArray[np.float64] = sq[WINDOW:] - sq[:-WINDOW]
    return energy


def envelope_db(samples: npt.NDArray[np.int16], rate: int, floor_db: float) -> npt.NDArray[np.float64]:
    """10 ms frame energies in dBFS, floored (so silence of any kind looks the same)."""
    frame = max(1, rate // 100)
    n = len(samples) // frame
    if n == 0:
        return np.zeros(0)
    x = samples[: n * frame].astype(np.float64).reshape(n, frame) / 32768.0
    db: npt.NDArray[np.float64] = np.maximum(10.0 * np.log10(np.mean(x * x, axis=1) + 1e-12), floor_db)
    return db


class _Match(Struct, kw_only=True, frozen=True):
    clip: int
    align: int  # received sample index of the clip's first sample (may be negative)
    confidence: float


class PhrasebookRecognizer:
    """Default recognizer over a list of clips (see the module docstring)."""

    def __init__(self, clips: list[Clip], *, speech_dbfs: float = -45.0) -> None:
        self.clips = clips
        self.speech_dbfs = speech_dbfs
        self._min_energy = WINDOW * (32768.0 * 10 ** (speech_dbfs / 20)) ** 2
        keys: list[npt.NDArray[np.uint64]] = []
        owners: list[npt.NDArray[np.int64]] = []
        for ci, clip in enumerate(clips):
            if len(clip.samples) < WINDOW:
                continue
            loud = np.flatnonzero(_window_energy(clip.samples) >= self._min_energy)
            windows = sliding_window_view(clip.samples, WINDOW)[loud]
            keys.append(_hashes(windows))
            owners.append((np.int64(ci) << 32) | loud.astype(np.int64))
        all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        all_owners = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
        uniq, first, counts = np.unique(all_keys, return_index=True, return_counts=True)
        keep = counts == 1  # a window found in two places proves nothing
        self._keys = uniq[keep]
        self._owners = all_owners[first[keep]]
        self._envelopes = [envelope_db(c.samples, RATE, speech_dbfs - 15.0) for c in clips]
        self._first_loud = [int(np.argmax(e > speech_dbfs)) if (e > speech_dbfs).any() else -1 for e in self._envelopes]

    # ------------------------------------------------------------------ exact
    def _exact(self, samples: npt.NDArray[np.int16]) -> list[_Match]:
        if len(samples) < WINDOW or self._keys.size == 0:
            return []
        starts = np.arange(0, len(samples) - WINDOW + 1, STEP)
        energy = _window_energy(samples)[starts]
        starts = starts[energy >= self._min_energy]
        if starts.size == 0:
            return []
        hashes = _hashes(sliding_window_view(samples, WINDOW)[starts])
        idx = np.minimum(np.searchsorted(self._keys, hashes), self._keys.size - 1)
        found = self._keys[idx] == hashes
        if not found.any():
            return []
        owners = self._owners[idx[found]]
        clip_ids = owners >> 32
        align = starts[found] - (owners & 0xFFFFFFFF)
        pairs, counts = np.unique(np.stack([clip_ids, align], axis=1), axis=0, return_counts=True)
        return [_Match(clip=int(c), align=int(a), confidence=0.99)
                for (c, a), n in zip(pairs, counts, strict=True) if n >= MIN_HITS]

    # ------------------------------------------------------------------ envelope
    def _envelope(self, env: npt.NDArray[np.float64], covered: npt.NDArray[np.bool_],
                  rate: int) -> list[_Match]:
        """Correlate clip envelopes only at offsets that line a clip's onset up with a received one."""
        loud = env > self.speech_dbfs
        onsets = np.flatnonzero(loud & ~np.concatenate([[False], loud[:-1]]))
        candidates: list[tuple[float, int, int]] = []
        for ci, clip_env in enumerate(self._envelopes):
            m = len(clip_env)
            first = self._first_loud[ci]
            if m < 10 or len(env) < m or first < 0 or onsets.size == 0:
                continue
            ref = clip_env - clip_env.mean()
            ref_norm = float(np.linalg.norm(ref))
            if ref_norm == 0:
                continue
            offsets = np.unique((onsets[:, None] - first + np.arange(-ONSET_SLACK, ONSET_SLACK + 1)).ravel())
            offsets = offsets[(offsets >= 0) & (offsets <= len(env) - m)]
            if offsets.size == 0:
                continue
            rows = sliding_window_view(env, m)[offsets]
            centred = rows - rows.mean(axis=1, keepdims=True)
            norms = np.linalg.norm(centred, axis=1) * ref_norm
            scores = np.where(norms > 0, centred @ ref / np.where(norms > 0, norms, 1.0), 0.0)
            for found in np.flatnonzero(scores >= ENV_MIN_SCORE):
                off = int(offsets[found])
                if covered[off : off + m].mean() < 0.2:
                    candidates.append((float(scores[found]), ci, off))
        taken = np.zeros(len(env), dtype=bool)
        matches: list[_Match] = []
        frame = max(1, rate // 100)
        for score, ci, off in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
            m = len(self._envelopes[ci])
            if taken[off : off + m].mean() > 0.2:
                continue
            taken[off : off + m] = True
            matches.append(_Match(clip=ci, align=off * frame, confidence=round(score, 3)))
        return matches

    # ------------------------------------------------------------------ tokens
    def recognize(self, samples: npt.NDArray[np.int16], rate: int) -> list[Token]:
        ms_per_sample = 1000.0 / rate
        scale = rate / RATE  # clip samples -> received samples
        n = len(samples)
        env = envelope_db(samples, rate, self.speech_dbfs - 15.0)
        loud = env > self.speech_dbfs
        covered = np.zeros(len(env), dtype=bool)
        frame = max(1, rate // 100)
        matches = self._exact(samples) if rate == RATE else []

        def cover(match: _Match) -> None:
            lo = max(0, match.align) // frame
            hi = max(0, min(n, match.align + int(len(self.clips[match.clip].samples) * scale))) // frame + 1
            covered[lo:hi] = True

        for match in matches:
            cover(match)
        if (loud & ~covered).sum() >= PLACEHOLDER_MIN_FRAMES:
            for match in self._envelope(env, covered, rate):
                matches.append(match)
                cover(match)

        tokens: list[Token] = []
        for match in matches:
            for word in self.clips[match.clip].words:
                ws = match.align + int(word.start * scale)
                we = match.align + int(word.end * scale)
                inside = min(we, n) - max(ws, 0)
                if we > ws and inside / (we - ws) >= WORD_COVER:
                    tokens.append(Token(text=word.text, start_ms=max(ws, 0) * ms_per_sample,
                                        end_ms=min(we, n) * ms_per_sample, confidence=match.confidence))
        tokens.extend(self._placeholders(loud & ~covered))
        tokens.sort(key=lambda t: (t.start_ms, t.end_ms, t.text))
        return tokens

    @staticmethod
    def _placeholders(mask: npt.NDArray[np.bool_]) -> list[Token]:
        frames = np.flatnonzero(mask)
        if frames.size == 0:
            return []
        breaks = np.flatnonzero(np.diff(frames) > PLACEHOLDER_GAP_FRAMES)
        run_starts = np.concatenate([[frames[0]], frames[breaks + 1]])
        run_ends = np.concatenate([frames[breaks], [frames[-1]]]) + 1
        out: list[Token] = []
        for lo, hi in zip(run_starts, run_ends, strict=True):
            if hi - lo >= PLACEHOLDER_MIN_FRAMES:
                out.append(Token(text=placeholder_text((hi - lo) / 100.0), start_ms=float(lo * 10),
                                 end_ms=float(hi * 10), confidence=0.0))
        return out

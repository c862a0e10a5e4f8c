"""The emulator's run-by-run EPD, the --cheap words from its loud runs and the chunk list kept without coalescing
give exactly what the per-frame EPD, ``SkipRecognizer.recognize`` over the samples and the coalesced buffer gave:
every action, byte for byte, with its time, for random audio, chunkings and Finalize messages."""

from __future__ import annotations

import random

import numpy as np
import numpy.typing as npt
import pytest

from engine.rtzr.emulator import SessionParams, SkipRecognizer, StreamSession
from engine.rtzr.emulator.recognizer import Token
from engine.rtzr.emulator.session import MIN_SPEECH_FRAMES, Action
from tests.rtzr.test_emulator_session import REC, quiet, speechlike


class ReferenceSession(StreamSession):
    """The session before: the per-frame loop (verbatim), words always recognised from samples, the buffer coalesced."""

    def _cheap_tokens(self, lo: int, hi: int) -> list[Token] | None:
        return None

    def _drop_before(self, cut: int) -> None:  # the old coalesce-and-copy
        keep = self._samples(cut, self._total).copy()
        self._chunks = [keep] if keep.size else []
        self._buf_start = cut

    def _run_epd(self, samples: npt.NDArray[np.int16], now: float) -> None:
        data = np.concatenate([self._carry, samples]) if self._carry.size else samples
        n_frames = data.size // self._frame
        first = self._total - data.size  # timeline index of data[0]
        self._carry = data[n_frames * self._frame :]
        if n_frames == 0:
            return
        frames = data[: n_frames * self._frame].astype(np.float64).reshape(n_frames, self._frame)
        # Exact in float64 (80 squares of int16 < 2**53); a list, since the loop below reads it element by element.
        loud: list[bool] = (np.einsum("ij,ij->i", frames, frames, optimize=False) >= self._threshold).tolist()
        max_utter, epd = self._max_utter, self._epd
        # Fast paths, with the loop's exact outcome: a quiet batch outside speech changes nothing; a quiet batch
        # inside speech that does not reach epd_time only adds silence; an all-loud batch inside speech that does
        # not reach max_utter only extends it. (``_silence`` is only read while in speech, and reset when speech starts.)
        n_loud = sum(loud)
        if n_loud == 0 and (self._speech_start is None or self._silence + n_frames * self._frame < epd):
            if self._speech_start is not None:
                self._silence += n_frames * self._frame
            return
        last_end = first + n_frames * self._frame
        if n_loud == n_frames and self._speech_start is not None and last_end - self._speech_start < max_utter:
            self._speech_end = last_end
            self._speech_frames += n_frames
            self._silence = 0
            return
        for i in range(n_frames):
            start = first + i * self._frame
            end = start + self._frame
            if loud[i]:
                if self._speech_start is None:
                    self._speech_start = start
                self._speech_end = end
                self._speech_frames += 1
                self._silence = 0
                if end - self._speech_start >= max_utter:
                    self._final(end, now + self.p.final_ms / 1000.0)
            elif self._speech_start is not None:
                self._silence += self._frame
                if self._silence >= epd:
                    if self._speech_frames >= MIN_SPEECH_FRAMES:
                        self._final(self._speech_end, now + self.p.final_ms / 1000.0)
                    else:  # a blip, not speech: forget it (its audio stays pending)
                        self._speech_start = None
                        self._speech_frames = 0


def scenario(rng: random.Random) -> tuple[npt.NDArray[np.int16], list[int], set[int]]:
    """Audio (speech, quiet, blips, long runs), chunk sizes (some off the 10 ms grid), chunks followed by Finalize."""
    parts = []
    for k in range(rng.randint(4, 12)):
        kind = rng.random()
        if kind < 0.4:
            parts.append(speechlike(rng.choice([20, 40, 60, 300, 900, 2500]), seed=k))
        elif kind < 0.5:
            parts.append(speechlike(rng.choice([10, 30]), seed=k))  # a blip under 50 ms
        else:
            parts.append(quiet(rng.choice([10, 50, 200, 450, 800, 1200]), seed=k))
    audio = np.concatenate(parts)
    sizes = []
    total = 0
    while total < audio.size:
        size = rng.choice([800, 800, 800, 160, 1600, 80 * rng.randint(1, 30), rng.randint(1, 900)])
        sizes.append(size)
        total += size
    finalize = {i for i in range(len(sizes)) if rng.random() < 0.05}
    return audio, sizes, finalize


def run(cls: type[StreamSession], recognizer: object, params: SessionParams, audio: npt.NDArray[np.int16],
        sizes: list[int], finalize: set[int]) -> list[tuple[float, Action]]:
    now = 1000.0
    session = cls(params, recognizer, (), now)  # type: ignore[arg-type]
    out: list[tuple[float, Action]] = []
    pos = 0
    for i, size in enumerate(sizes):
        session.receive_audio(audio[pos:pos + size].astype("<i2").tobytes(), now)
        pos += size
        if i in finalize:
            session.receive_text('{"type":"Finalize"}', now)
        now += size / 8000
        out += [(now, a) for a in session.poll(now)]
    session.receive_text("EOS", now)
    for _ in range(3):
        now += 0.5
        out += [(now, a) for a in session.poll(now)]
    return out


@pytest.mark.parametrize("seed", range(40))
def test_run_by_run_epd_and_cheap_words_match_the_per_frame_reference(seed: int) -> None:
    rng = random.Random(seed)
    audio, sizes, finalize = scenario(rng)
    params = SessionParams(sample_rate=8000, encoding="LINEAR16", epd_time=rng.choice([0.0, 0.05, 0.3, 0.8]),
                           interim_ms=rng.choice([100, 300, 1000]), max_utter_s=rng.choice([0.5, 1.0, 30.0]))
    cheap = SkipRecognizer()
    expected = run(ReferenceSession, cheap, params, audio, sizes, finalize)
    assert any(a.__class__.__name__ == "Send" for _, a in expected)
    assert run(StreamSession, cheap, params, audio, sizes, finalize) == expected
    if seed % 4 == 0:  # with real recognition too (it reads the kept samples)
        assert run(StreamSession, REC, params, audio, sizes, finalize) == run(ReferenceSession, REC, params, audio,
                                                                               sizes, finalize)


def test_the_reference_is_the_per_frame_loop() -> None:
    """The reference must not share the code it checks (a test that cannot fail otherwise)."""
    assert ReferenceSession._run_epd is not StreamSession._run_epd
    assert MIN_SPEECH_FRAMES == 5

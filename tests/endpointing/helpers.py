"""Shared checks for the Endpointer tests and fuzz properties.

``run`` drives an Endpointer over a chunking and records every frame decision of its
classifier; ``reference`` replays those decisions through a plain, obviously-correct
model of the rules; ``check`` verifies every invariant of the event stream against the
input signal and the reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.config import EndpointingConfig
from engine.endpointing import (
    Endpointer,
    EndpointEvent,
    FrameClassifier,
    SpeechAudio,
    SpeechEnded,
    SpeechStarted,
    make_classifier,
)

Pcm = npt.NDArray[np.int16]


class Recording:
    """Wraps a classifier and remembers every decision, in frame order."""

    def __init__(self, inner: FrameClassifier) -> None:
        self.inner = inner
        self.decisions: list[bool] = []

    @property
    def frame_samples(self) -> int:
        return self.inner.frame_samples

    def classify(self, frames: Any) -> list[bool]:
        out = self.inner.classify(frames)
        assert len(out) == frames.shape[0]
        self.decisions.extend(bool(d) for d in out)
        return out


@dataclass
class Run:
    events: list[EndpointEvent]
    emitted_at: list[int]  # Endpointer.position when each event was returned
    decisions: list[bool]
    frame: int
    position: int
    after_end: list[EndpointEvent] = field(default_factory=list)


def run(
    cfg: EndpointingConfig,
    signal: Pcm,
    chunks: Iterable[int],
    *,
    sample_rate: int | None = None,
    classifier: FrameClassifier | None = None,
) -> Run:
    """Push ``signal`` in chunks of the given sizes (cycled until it is consumed), then end()."""
    rate = sample_rate or cfg.sample_rate
    rec = Recording(classifier or make_classifier(cfg.classifier, rate, frame_ms=cfg.frame_ms))
    ep = Endpointer(cfg, sample_rate=rate, classifier=rec)
    events: list[EndpointEvent] = []
    at: list[int] = []
    pos = 0
    sizes = list(chunks) or [len(signal)]
    i = 0
    while pos < len(signal):
        n = sizes[i % len(sizes)]
        i += 1
        if i > 10 * len(signal) + 100:
            n = len(signal) - pos  # only zero-size chunks: finish in one push
        out = ep.push(signal[pos : pos + n])
        pos += min(n, len(signal) - pos)
        assert ep.position == pos
        events += out
        at += [ep.position] * len(out)
    out = ep.end()
    events += out
    at += [ep.position] * len(out)
    return Run(events, at, rec.decisions, rec.frame_samples, ep.position, ep.end())


def key(ev: EndpointEvent) -> tuple[Any, ...]:
    """A comparable form of an event (arrays as bytes)."""
    if isinstance(ev, SpeechStarted):
        return ("started", ev.start, ev.preroll_start, ev.preroll.tobytes(), ev.continues)
    if isinstance(ev, SpeechAudio):
        return ("audio", ev.start, ev.pcm.tobytes())
    return ("ended", ev.end, ev.reason, ev.last_speech_end)


@dataclass(frozen=True)
class Utt:
    start: int
    preroll_start: int
    end: int
    reason: str
    last_speech_end: int
    continues: bool = False


def limits(cfg: EndpointingConfig, rate: int, frame: int) -> tuple[int, int, int, int, int]:
    """(start_frames, end_frames, preroll, max_frames, min_samples) as the rules define them."""
    ms = lambda v: v * rate // 1000  # noqa: E731
    start_frames = -(-max(ms(cfg.start_ms) - 2, 0) // frame) + 2
    end_frames = max(1, -(-ms(cfg.end_ms) // frame))
    max_frames = max(start_frames + 1, ms(cfg.max_utterance_ms) // frame)
    return start_frames, end_frames, ms(cfg.preroll_ms), max_frames, ms(cfg.min_utterance_ms)


def reference(cfg: EndpointingConfig, rate: int, frame: int, decisions: Sequence[bool], total: int) -> list[Utt]:
    """The rules, written plainly over the per-frame decisions."""
    start_frames, end_frames, preroll, max_frames, min_samples = limits(cfg, rate, frame)
    merge = cfg.merge_ms * rate // 1000
    utts: list[Utt] = []
    prev_end = 0
    prev_last: int | None = None
    k = 0
    n = len(decisions)
    while k < n:
        # find a run of start_frames speech frames
        run = 0
        while k < n and run < start_frames:
            run = run + 1 if decisions[k] else 0
            k += 1
        if run < start_frames:
            break
        start = (k - run) * frame
        # a continuation: the run starts within merge_ms of the previous last speech; its pre-roll is the gap
        cont = merge > 0 and prev_last is not None and start - prev_last <= merge
        pre = prev_end if cont else max(start - preroll, prev_end)
        last = k * frame
        silence = 0
        ended = None
        while k < n:
            end = (k + 1) * frame
            if decisions[k]:
                silence = 0
                last = end
            else:
                silence += 1
            k += 1
            if silence >= end_frames and end - start >= min_samples:
                ended = Utt(start, pre, end, "silence", last, cont)
                break
            if end >= start + max_frames * frame:
                ended = Utt(start, pre, end, "max_length", last, cont)
                break
        if ended is None:
            ended = Utt(start, pre, total, "end_of_stream", last, cont)
        utts.append(ended)
        prev_end = ended.end
        prev_last = ended.last_speech_end
    return utts


def utterances(events: Sequence[EndpointEvent]) -> list[tuple[SpeechStarted, list[SpeechAudio], SpeechEnded]]:
    """Group events into utterances, asserting strict Started/Audio*/Ended alternation."""
    out = []
    cur: tuple[SpeechStarted, list[SpeechAudio]] | None = None
    for ev in events:
        if isinstance(ev, SpeechStarted):
            assert cur is None, "SpeechStarted inside an open utterance"
            cur = (ev, [])
        elif isinstance(ev, SpeechAudio):
            assert cur is not None, "SpeechAudio outside an utterance"
            cur[1].append(ev)
        else:
            assert isinstance(ev, SpeechEnded)
            assert cur is not None, "SpeechEnded without SpeechStarted"
            out.append((cur[0], cur[1], ev))
            cur = None
    assert cur is None, "utterance left open after end()"
    return out


def check(cfg: EndpointingConfig, rate: int, signal: Pcm, r: Run) -> list[Utt]:
    """Every invariant of the issue, for one run. Returns the utterances found."""
    frame = r.frame
    start_frames, end_frames, preroll, max_frames, min_samples = limits(cfg, rate, frame)
    assert r.position == len(signal)
    assert r.after_end == []
    assert len(r.decisions) == len(signal) // frame
    groups = utterances(r.events)
    merge = cfg.merge_ms * rate // 1000
    prev_end = 0
    prev_last: int | None = None
    found = []
    for started, audio, ended in groups:
        # well-formedness and forward motion
        assert prev_end <= started.preroll_start <= started.start < ended.end <= len(signal)
        assert started.start < ended.last_speech_end <= ended.end
        # conservation: preroll + audio == the input slice, sample for sample
        assert len(started.preroll) == started.start - started.preroll_start
        pos = started.start
        for a in audio:
            assert a.start == pos, "SpeechAudio not contiguous"
            assert a.pcm.dtype == np.int16 and a.pcm.ndim == 1 and len(a.pcm) > 0
            pos += len(a.pcm)
        assert pos == ended.end, "audio does not reach SpeechEnded.end"
        got = np.concatenate([started.preroll, *(a.pcm for a in audio)])
        assert np.array_equal(got, signal[started.preroll_start : ended.end])
        # continuation: iff the run starts within merge_ms of the previous last speech frame; then the
        # pre-roll is the whole gap (contiguous with the previous utterance: nothing between them lost)
        assert started.continues == (merge > 0 and prev_last is not None and started.start - prev_last <= merge)
        if started.continues:
            assert started.preroll_start == prev_end
        # bounds
        assert started.start - started.preroll_start <= max(preroll, merge if started.continues else 0)
        assert ended.end - started.start <= max_frames * frame <= cfg.max_utterance_ms * rate // 1000 + frame
        if ended.reason != "end_of_stream":
            assert ended.end % frame == 0
        # latency: ended by silence at most end_ms + one frame after the last speech frame
        if ended.reason == "silence":
            bound = max(end_frames * frame, started.start + min_samples - ended.last_speech_end + frame)
            assert ended.end - ended.last_speech_end <= bound
            assert end_frames * frame <= cfg.end_ms * rate // 1000 + frame
        found.append(Utt(started.start, started.preroll_start, ended.end, ended.reason, ended.last_speech_end,
                         started.continues))
        prev_end = ended.end
        prev_last = ended.last_speech_end
    # events are emitted as soon as the audio that completes them is in
    for ev, at in zip(r.events, r.emitted_at, strict=True):
        if isinstance(ev, SpeechEnded) and ev.reason != "end_of_stream":
            assert at >= ev.end
        if isinstance(ev, SpeechStarted):
            assert at >= ev.start + start_frames * frame
    # the decisions, replayed through the plain rules, give the same utterances
    assert found == reference(cfg, rate, frame, r.decisions, len(signal))
    return found

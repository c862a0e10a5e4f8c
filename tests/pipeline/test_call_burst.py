"""Issue 13, a late pass: a call whose socket held two (or more) chunks in one reactor pass classifies them all in
the pass's FrameBatch (one decode, the batch's rounds), instead of deciding the earlier chunk alone (a row-by-row
classify, the dearer path exactly when the engine is late), with the same events and stored audio."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import numpy as np
import pytest

from engine import events as ev
from engine.budgets import Budgets
from engine.call import Call, Utterance
from engine.config import BudgetsConfig, Config
from engine.endpointing.batch import FrameBatch
from engine.media import AudioReceived, StreamStarted
from engine.metrics import Registry

from .test_pipeline_e2e import phrase_call

STARTED = StreamStarted(stream_id="MZ1", call_id="CA1", account_id="AC1", encoding="mulaw", sample_rate=8000,
                        provider="test")


class _NoPool:
    """run() is never started here: utterances wait in the call (their audio is what we compare)."""

    def lease(self) -> object:  # pragma: no cover - never called
        raise AssertionError("no lease in this test")


def _audio() -> bytes:
    audio, _ = phrase_call(["diary", "tonight"], gap_ms=900, lead_ms=300)
    return audio


def _passes(n_chunks: int, sizes: list[int]) -> list[int]:
    """How many chunks each pass reads, cycling through ``sizes``, covering ``n_chunks``."""
    out: list[int] = []
    i = 0
    while sum(out) < n_chunks:
        out.append(sizes[i % len(sizes)])
        i += 1
    return out


def _feed(chunks: list[bytes], per_pass: list[int], *, batched: bool = True,
          setup: Callable[[Call], None] | None = None) -> tuple[Call, list[dict[str, object]], FrameBatch]:
    events: list[ev.Event] = []
    call = Call(STARTED, config=Config(), pool=_NoPool(), emit=events.append,  # type: ignore[arg-type]
                metrics=Registry(), budgets=Budgets(BudgetsConfig()))
    if setup is not None:
        setup(call)
    batch = FrameBatch()
    if batched:
        call.attach_batch(batch)
    at = 0
    for n in per_pass:
        batch.begin()
        for chunk in chunks[at:at + n]:
            call.on_event(AudioReceived(chunk, at * 20.0))
            at += 1
        batch.end()
    call.on_close("stop")
    return call, _plain(events), batch


def _plain(events: list[ev.Event]) -> list[dict[str, object]]:
    """The events without their wall-clock stamp."""
    out = []
    for e in events:
        d = msgspec.to_builtins(e)
        d.pop("ts", None)
        out.append(d)
    return out


def _stored(call: Call) -> list[bytes]:
    utts: list[Utterance] = call._unspawned
    return [u.audio.read(0, u.audio.size) for u in utts]


@pytest.mark.parametrize("sizes", [[2], [1, 2, 3], [3, 1]])
async def test_chunks_of_one_pass_are_classified_in_the_batch_with_the_same_events(sizes: list[int]) -> None:
    audio = _audio()
    chunks = [audio[i:i + 160] for i in range(0, len(audio) - 159, 160)]
    one_by_one, ref_events, ref_batch = _feed(chunks, [1] * len(chunks))
    pushed, push_events, _ = _feed(chunks, [1] * len(chunks), batched=False)
    call, events, batch = _feed(chunks, _passes(len(chunks), sizes))
    assert sum(e["type"] == "speech.started" for e in ref_events) >= 2
    assert events == ref_events == push_events
    assert _stored(call) == _stored(one_by_one) == _stored(pushed)
    assert call.stats == one_by_one.stats
    assert call.last_audio == one_by_one.last_audio
    # The frames went through the batch (before: the earlier chunks of a pass were classified alone, half
    # of them here), but for a pass where speech may be confirmed in a waiting chunk (Call._may_join: it
    # decides alone first, as before), a few frames around each speech start.
    assert ref_batch.frames == len(chunks)
    starts = sum(e["type"] == "speech.started" for e in ref_events)
    assert len(chunks) - 3 * starts <= batch.frames <= len(chunks)
    assert call.metrics.value("call_chunks_joined_total") >= len(chunks) // 3


async def test_uneven_chunks_in_one_pass_store_the_same_audio() -> None:
    """Chunks that cut frames anywhere (a frame across two chunks of one pass): same events, same bytes."""
    audio = _audio()
    rng = np.random.default_rng(7)
    chunks, pos = [], 0
    while pos < len(audio):
        n = int(rng.integers(1, 400))
        chunks.append(audio[pos:pos + n])
        pos += n
    one_by_one, ref_events, _ = _feed(chunks, [1] * len(chunks))
    call, events, _ = _feed(chunks, _passes(len(chunks), [2, 3, 1]))
    assert events == ref_events
    assert _stored(call) == _stored(one_by_one)
    assert call.stats == one_by_one.stats


async def test_a_call_with_a_playback_hook_or_a_turn_that_may_end_decides_the_earlier_chunk_first() -> None:
    """What would see the state between two chunks keeps the old path: the playback hook gets every chunk
    after the earlier ones were decided, and a turn that may end is advanced after each chunk."""
    audio = _audio()
    chunks = [audio[i:i + 160] for i in range(0, len(audio) - 159, 160)]
    seen: list[int] = []

    def hooked(call: Call) -> None:
        call.audio_listener = lambda e: seen.append(call.endpointer.position)

    _, ref_events, _ = _feed(chunks, [1] * len(chunks), setup=hooked)
    ref_seen, seen[:] = list(seen), []
    _call, events, batch = _feed(chunks, _passes(len(chunks), [2]), setup=hooked)
    assert events == ref_events
    # Every chunk reached the hook after the earlier ones were decided (joined, the second chunk of a pass
    # would have seen the endpointer before the first), and only one chunk a pass went through the batch.
    assert seen == ref_seen == [160 * k for k in range(len(chunks))]
    assert batch.frames == (len(chunks) + 1) // 2

    def turn_open(call: Call) -> None:
        call.turns.add_final("MZ0:0", "앞", 0.0, 0.0)  # a final before: the turn may end in the lead silence
        call.turns.turn_ms = 100

    _, ref_events, _ = _feed(chunks, [1] * len(chunks), setup=turn_open)
    _call, events, batch = _feed(chunks, _passes(len(chunks), [2]), setup=turn_open)
    assert events == ref_events
    assert sum(e["type"] == "turn.ended" for e in events) >= 1
    assert len(chunks) // 2 < batch.frames < len(chunks)  # alone while the turn could end, batched after

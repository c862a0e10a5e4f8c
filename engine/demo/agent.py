"""``sori demo --agent``: an answering agent on the embedding API, timing each turn.

Every final with text is answered at once (from the event callback) with a phrase clip through the call's
:class:`~engine.playback_driver.CallControl`. Per turn the agent notes when the caller stopped speaking (the
``speech.ended`` decision minus its hangover: the end of the last speech audio) and when the answer's first
frame went to Twilio (``playback.started``), and prints the gap: what the caller waits in silence.
"""

from __future__ import annotations

import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import trio

from engine import events as ev
from engine.audio import mulaw

PHRASES = Path(__file__).parent / "phrases"
ANSWER_CLIPS = ("okay.wav", "thanks.wav", "wait.wav")


def load_clip(path: Path) -> bytes:
    """A bundled 8 kHz PCM16 phrase clip → μ-law."""
    with wave.open(str(path), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
        assert w.getframerate() == 8000
    return mulaw.encode(pcm)


@dataclass
class AgentTurn:
    utterance_id: str
    caller_stopped: float  # trio time of the end of the caller's last speech audio
    answered: float | None = None  # playback.started: the answer's first frame sent to Twilio
    playback_id: str = ""
    outcome: str = ""  # finished, or interrupted (barge_in, ...) with ms played


class Agent:
    """Answers every final with the next clip; ``control_of`` finds the call's handle (``engine.control``)."""

    def __init__(self, control_of: Callable[[str], Any], out: IO[str] | None = None) -> None:
        self.control_of = control_of
        self.out = out
        self.clips = [load_clip(PHRASES / name) for name in ANSWER_CLIPS]
        self.turns: list[AgentTurn] = []
        self._stopped: dict[str, float] = {}  # utterance_id -> caller stopped
        self._by_playback: dict[str, AgentTurn] = {}

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.SpeechEnded):
            self._stopped[event.utterance_id] = trio.current_time() - (event.end_ms - event.last_speech_ms) / 1000
        elif isinstance(event, ev.TranscriptFinal) and event.text:
            self._answer(event)
        elif isinstance(event, ev.PlaybackStarted) and event.playback_id in self._by_playback:
            turn = self._by_playback[event.playback_id]
            turn.answered = trio.current_time()
            self._print(f"turn {len(self.turns)}: caller stopped → agent audio starts "
                        f"+{(turn.answered - turn.caller_stopped) * 1000:.0f} ms")
        elif isinstance(event, ev.PlaybackFinished) and event.playback_id in self._by_playback:
            self._by_playback[event.playback_id].outcome = "finished"
        elif isinstance(event, ev.PlaybackInterrupted) and event.playback_id in self._by_playback:
            self._by_playback[event.playback_id].outcome = f"{event.reason} after {event.played_ms:.0f} ms"

    def _answer(self, final: ev.TranscriptFinal) -> None:
        control = self.control_of(final.stream_sid)
        if control is None or control.closed:
            return
        stopped = self._stopped.get(final.utterance_id, trio.current_time())
        turn = AgentTurn(final.utterance_id, stopped)
        turn.playback_id = control.play_nowait(self.clips[len(self.turns) % len(self.clips)],
                                               playback_id=f"answer-{len(self.turns) + 1}")
        self.turns.append(turn)
        self._by_playback[turn.playback_id] = turn

    def _print(self, line: str) -> None:
        if self.out is not None:
            self.out.write(f"         {line}\n")
            self.out.flush()

    def table(self) -> str:
        rows = ["turn  utterance  caller stops → agent audio starts  answer",
                "----  ---------  --------------------------------  ------"]
        gaps: list[float] = []
        for i, t in enumerate(self.turns, 1):
            gap = "not started" if t.answered is None else f"{(t.answered - t.caller_stopped) * 1000:6.0f} ms"
            if t.answered is not None:
                gaps.append((t.answered - t.caller_stopped) * 1000)
            rows.append(f"{i:>4}  {t.utterance_id.rsplit(':', 1)[-1]:>9}  {gap:>32}  {t.outcome or '-'}")
        if gaps:
            ordered = sorted(gaps)
            rows.append(f"median {ordered[len(ordered) // 2]:.0f} ms, max {ordered[-1]:.0f} ms (the hangover, "
                        "the emulated STT's final, then the answer's first frame)")
        return "\n".join(rows)

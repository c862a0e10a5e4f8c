"""``sori demo``: a bundled Korean call through the whole engine, with the RTZR emulator in-process.

The Twilio simulator plays ``call.wav`` at real time into the engine's signed WebSocket endpoint;
the engine endpoints, leases pooled emulator sockets and prints every event as it happens, then a
per-utterance latency table. The emulator's phrasebook holds the demo's phrase clips, so the text
follows the audio, but it is emulated text, not real recognition.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import trio

from engine import events as ev
from engine.config import Config, ConfigError, cli_overrides, load
from engine.log import setup_logging

DEMO_DIR = Path(__file__).parent
DEMO_AUDIO = DEMO_DIR / "call.wav"
DEMO_LABELS = DEMO_DIR / "call.json"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio", metavar="FILE", help="play this WAV or raw μ-law file instead of the bundled call")
    p.add_argument("--json", action="store_true", help="print the raw events as JSON lines")
    p.add_argument("--speed", choices=["realtime", "fast"], default="realtime", help="how the simulator paces frames")
    p.add_argument("--set", dest="assign", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set endpointing.end_ms=120")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument("--agent", action="store_true",
                   help="answer every final with a phrase clip (playback through the engine), timing each turn")


@dataclass
class DemoResult:
    """What the demo saw: every event, and the finals in order."""

    events: list[ev.Event] = field(default_factory=list)
    finals: list[ev.TranscriptFinal] = field(default_factory=list)
    errors: list[ev.ErrorEvent] = field(default_factory=list)
    ended: ev.CallEnded | None = None
    report: Any = None
    agent: Any = None


class Printer:
    """Readable one-line-per-event output, with time since the call started."""

    def __init__(self, out: IO[str], *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.t0: float | None = None

    def __call__(self, event: ev.Event) -> None:
        if self.as_json:
            self.out.write(ev.encode(event).decode() + "\n")
            self.out.flush()
            return
        now = trio.current_time()
        if self.t0 is None:
            self.t0 = now
        stamp = f"{now - self.t0:6.2f}s"
        line = _describe(event)
        if line:
            self.out.write(f"{stamp}  {line}\n")
            self.out.flush()


def _describe(event: ev.Event) -> str:
    if isinstance(event, ev.CallStarted):
        return f"call started   {event.call_sid}"
    if isinstance(event, ev.SpeechStarted):
        return f"speech started utterance {event.utterance_id.rsplit(':', 1)[-1]} at {event.start_ms / 1000:.2f}s"
    if isinstance(event, ev.TranscriptPartial):
        return f"  … {event.text}"
    if isinstance(event, ev.TranscriptFinal):
        lat = event.latency
        timing = f"  [total {lat.total_ms:.0f} ms: endpoint {lat.endpoint_ms:.0f} + lease {lat.lease_ms:.0f} " \
                 f"+ stt {lat.stt_ms:.0f}]" if lat else ""
        joins = f" (continues {event.continues.rsplit(':', 1)[-1]})" if event.continues else ""
        return f"FINAL  «{event.text}»{joins}{timing}"
    if isinstance(event, ev.TurnEnded):
        return f"turn ended     «{event.text}»"
    if isinstance(event, ev.ErrorEvent):
        return f"ERROR  {event.kind}: {event.message}"
    if isinstance(event, ev.PlaybackStarted):
        return f"AGENT  ▶ {event.playback_id} ({event.duration_ms:.0f} ms)"
    if isinstance(event, ev.PlaybackFinished):
        return f"AGENT  ■ {event.playback_id} finished"
    if isinstance(event, ev.PlaybackInterrupted):
        return f"AGENT  ✂ {event.playback_id} interrupted ({event.reason}) after {event.played_ms:.0f} ms"
    if isinstance(event, ev.Dtmf):
        return f"dtmf           {event.digit}"
    if isinstance(event, ev.CallEnded):
        return (f"call ended     {event.reason}: {event.utterances} utterances, {event.finals} finals, "
                f"{event.audio_sent_s:.2f}s of audio sent to STT, {event.errors} errors")
    return ""


def sentences(finals: list[ev.TranscriptFinal]) -> list[list[ev.TranscriptFinal]]:
    """Group finals the way an application joins them: a final that ``continues`` an utterance joins its group."""
    groups: list[list[ev.TranscriptFinal]] = []
    group_of: dict[str, int] = {}
    for final in finals:
        index = group_of.get(final.continues) if final.continues else None
        if index is None:
            index = len(groups)
            groups.append([])
        groups[index].append(final)
        group_of[final.utterance_id] = index
    return groups


def sentence_text(group: list[ev.TranscriptFinal]) -> str:
    return " ".join(f.text for f in group if f.text)


def latency_table(finals: list[ev.TranscriptFinal], labels: list[dict[str, Any]] | None = None) -> str:
    """Per-sentence latency table plus medians, as the demo prints it.

    A sentence is an utterance and its continuations (speech that resumed within ``merge_ms``); its latency
    is its last final's: what the caller waits for once they stopped talking.
    """
    rows = ["utt  text                     parts  endpoint   lease    stt    total  pool   text ok",
            "---  -----------------------  -----  --------  ------  -----  -------  -----  -------"]
    totals: list[float] = []
    for i, group in enumerate(sentences(finals)):
        text = sentence_text(group)
        last = group[-1]
        lat = last.latency
        expected = labels[i]["text"] if labels and i < len(labels) else None
        ok = "-" if expected is None else ("yes" if text == expected else f"no ({expected})")
        if lat is None:
            rows.append(f"{i:>3}  {_pad(text, 23)}  {len(group):>5}  (server end-point final)  {ok}")
            continue
        totals.append(lat.total_ms)
        pool = "hit" if last.pool_hit else "miss"
        rows.append(f"{i:>3}  {_pad(text, 23)}  {len(group):>5}  {lat.endpoint_ms:6.0f}ms  {lat.lease_ms:4.0f}ms  "
                    f"{lat.stt_ms:3.0f}ms  {lat.total_ms:5.0f}ms  {pool:<5}  {ok}")
    if totals:
        ordered = sorted(totals)
        rows.append(f"median total {ordered[len(ordered) // 2]:.0f} ms, max {ordered[-1]:.0f} ms "
                    f"over {len(totals)} sentences (last speech audio → its last final emitted)")
    return "\n".join(rows)


def _pad(text: str, width: int) -> str:
    """Pad for a terminal: Hangul syllables take two columns."""
    cols = sum(2 if "\uac00" <= ch <= "\ud7a3" else 1 for ch in text)
    return text + " " * max(0, width - cols)


async def run_demo(config: Config, audio_path: Path, *, out: IO[str], as_json: bool = False,
                   speed: str = "realtime", agent: bool = False) -> DemoResult:
    """Engine + emulator in-process, one simulated call; returns what happened."""
    from engine.app import Engine, serve
    from engine.demo.agent import Agent
    from engine.twilio.simulator import load_audio, simulate_call

    result = DemoResult()
    printer = Printer(out, as_json=as_json)
    call_done = trio.Event()
    engines: list[Engine] = []
    if agent:
        result.agent = Agent(lambda sid: engines[0].control(sid) if engines else None, None if as_json else out)

    def on_event(event: ev.Event) -> None:
        result.events.append(event)
        if isinstance(event, ev.TranscriptFinal):
            result.finals.append(event)
        elif isinstance(event, ev.ErrorEvent):
            result.errors.append(event)
        elif isinstance(event, ev.CallEnded):
            result.ended = event
            call_done.set()
        printer(event)
        if result.agent is not None:
            result.agent(event)

    audio = load_audio(str(audio_path))
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(_serve, serve, config, on_event)
        engines.append(engine)
        with trio.move_on_after(config.budgets.auth / 1000 + config.budgets.connect / 1000):
            await engine.wait_ready()  # /readyz: token held, listener bound, spares open
        if not as_json:
            reason = engine.not_ready_reason()
            pool = f"pool warm with {engine.pool.idle_count} sockets" if reason is None else f"not ready: {reason}"
            out.write(f"sori demo: engine on {engine.twilio_url}, RTZR emulator on {engine.config.rtzr.api_base} "
                      f"(EMULATED text), {pool}\n")
            out.write(f"playing {audio_path.name} ({len(audio) / 8000:.1f}s) as a signed Twilio Media Stream...\n\n")
        result.report = await simulate_call(engine.twilio_url, audio, auth_token=config.twilio.auth_token,
                                            speed="fast" if speed == "fast" else "realtime",
                                            trailing_silence_ms=2000 if agent else 1000,
                                            custom_parameters={"demo": "true"})
        with trio.move_on_after(config.budgets.finalize / 1000 + 5):
            await call_done.wait()
        engine.shutdown()
    return result


async def _serve(serve: Any, config: Config, on_event: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    from engine.rtzr.emulator.local import in_process

    await serve(config, on_event=on_event, stt=in_process(), handle_signals=False, task_status=task_status)


def demo_config(assignments: list[str]) -> Config:
    """The demo's settings: ephemeral loopback ports, a fresh Twilio token, no JSONL sink."""
    base = load(environ={}, cli=cli_overrides(["server.port=0", "server.admin_port=0", "sinks.jsonl=", *assignments]))
    return msgspec.structs.replace(base, twilio=msgspec.structs.replace(base.twilio, auth_token=secrets.token_hex(16)))


def run_cli(args: argparse.Namespace) -> int:
    try:
        config = demo_config(list(args.assign))
    except ConfigError as exc:
        print(f"sori: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, secrets=config.secrets())
    audio_path = Path(args.audio) if args.audio else DEMO_AUDIO
    if not audio_path.exists():
        print(f"sori demo: {audio_path}: no such file", file=sys.stderr)
        return 2
    result = trio.run(lambda: run_demo(config, audio_path, out=sys.stdout, as_json=args.json, speed=args.speed,
                                       agent=args.agent))
    labels = json.loads(DEMO_LABELS.read_text())["phrases"] if audio_path == DEMO_AUDIO else None
    if not args.json:
        print("\n" + latency_table(result.finals, labels))
        if result.agent is not None:
            print("\n" + result.agent.table())
            heard = result.report.heard if result.report is not None else []
            print("the simulated caller heard: " + (", ".join(f"{h['start_s']:.2f}–{h['end_s']:.2f}s" for h in heard)
                                                  or "nothing"))
        print("\nText comes from the RTZR emulator's phrasebook (emulated, not real recognition); latencies are "
              "measured with its 100 ms handshake and 150 ms final delay.")
        if result.ended is not None:  # issue 15: point at this call's report
            from engine.report import write_call_report

            jsonl, page = write_call_report(result.events, Path(tempfile.gettempdir()) / "sori-demo", result.ended.call_sid)
            print(f"\nReport of this call: {page}\n  (in a terminal: sori report {jsonl} --call {result.ended.call_sid})")
    if result.ended is None:
        print("sori demo: the call did not end cleanly", file=sys.stderr)
        return 1
    if labels is not None and [sentence_text(g) for g in sentences(result.finals)] != [p["text"] for p in labels]:
        print("sori demo: transcripts differ from the bundled call's labels", file=sys.stderr)
        return 1
    return 0

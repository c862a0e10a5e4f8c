"""What the report reads of each event: lenient msgspec Structs, decoded line by line.

Only the fields the report uses are declared (msgspec skips the rest without building them), every field
the engine added later has a default (older logs decode), and unknown fields are ignored (newer logs
decode). A line that is not JSON is *malformed*; JSON that is not an event we know (a log line, a newer
event type, a wrong field type) is *not an event*. Both are counted and skipped by the reader.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct


class _Event(Struct, tag_field="type", kw_only=True):
    call_sid: str = ""
    stream_sid: str = ""
    ts: float = 0.0


class CallStarted(_Event, tag="call.started"):
    pass


class SpeechStarted(_Event, tag="speech.started"):
    utterance_id: str
    start_ms: float = 0.0
    continues: str | None = None


class SpeechEnded(_Event, tag="speech.ended"):
    utterance_id: str
    last_speech_ms: float = 0.0
    end_ms: float = 0.0
    reason: str = ""


class TranscriptPartial(_Event, tag="transcript.partial"):
    pass


class Latency(Struct, kw_only=True):
    endpoint_ms: float = 0.0
    lease_ms: float = 0.0
    stt_ms: float = 0.0
    total_ms: float = 0.0


class SocketInfo(Struct, kw_only=True):
    id: str = ""
    uses: int = 0
    handshake_ms: float = 0.0
    age_s: float = 0.0
    token_age_s: float | None = None
    token_ttl_s: float | None = None


class TranscriptFinal(_Event, tag="transcript.final"):
    utterance_id: str
    text: str = ""
    start_ms: float = 0.0
    end_ms: float = 0.0
    latency: Latency | None = None
    source: str = "finalize"
    pool_hit: bool | None = None
    replayed: bool = False
    continues: str | None = None
    socket: SocketInfo | None = None


class TurnEnded(_Event, tag="turn.ended"):
    text: str = ""
    utterance_ids: list[str] = msgspec.field(default_factory=list)
    start_ms: float = 0.0
    end_ms: float = 0.0


class CallEnded(_Event, tag="call.ended"):
    reason: str = ""
    duration_ms: float = 0.0
    utterances: int = 0
    finals: int = 0
    errors: int = 0


class ErrorEvent(_Event, tag="error"):
    kind: str = ""
    message: str = ""
    budget: str | None = None
    utterance_id: str | None = None


AnyEvent = (CallStarted | SpeechStarted | SpeechEnded | TranscriptPartial | TranscriptFinal | TurnEnded | CallEnded
            | ErrorEvent)

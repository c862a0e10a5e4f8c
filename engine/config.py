"""One msgspec Struct tree for all of sori's settings.

Sources, later wins: defaults < TOML file (``--config``) < environment < CLI flags.
Every value is validated by msgspec; a bad one becomes a :class:`ConfigError` whose
message names the key and the reason on one line (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

Port = Annotated[int, Meta(ge=0, le=65535)]
PositiveMs = Annotated[int, Meta(ge=1, le=86_400_000)]
NonNegativeMs = Annotated[int, Meta(ge=0, le=86_400_000)]
Count = Annotated[int, Meta(ge=0, le=1_000_000)]


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message is one line for the operator."""


class _Section(Struct, kw_only=True, forbid_unknown_fields=True):
    """Base for config sections: unknown keys are errors, so typos never pass silently."""


class ServerConfig(_Section):
    """The Twilio WebSocket endpoint and the admin HTTP port (/livez, /readyz, /metrics)."""

    host: str = "127.0.0.1"
    port: Port = 8080
    admin_host: str = "127.0.0.1"
    admin_port: Port = 9090
    trust_proxy_headers: bool = False
    max_calls: Annotated[int, Meta(ge=1, le=100_000)] = 500
    max_message_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    protocol_error_budget: Annotated[int, Meta(ge=1, le=1_000_000)] = 20
    allow_unsigned: bool = False
    # The garbage-collector policy of the daemon (``sori serve`` only: ``engine.app.serve``, the embedding
    # API, never touches the process-wide collector). "throughput": gen-0 threshold 50000 (gen-1 50, gen-2
    # 100) from start-up, and the start-up heap frozen (``gc.freeze()``) once the engine is first ready, so
    # collections neither run every few calls' frames nor rescan the long-lived heap; "default": CPython's
    # collector as it is. Measured in BENCHMARKS.md (Capacity); see docs/architecture.md, "GC policy".
    gc_policy: Literal["throughput", "default"] = "throughput"
    # ``sori serve`` only, glibc only: ``malloc_trim(0)`` this often, so the C heap that ended utterances and
    # calls freed goes back to the kernel (0.3-1.0 ms a trim at 300 calls); 0 = never. engine/memory.py says
    # why; measured in BENCHMARKS.md (Capacity, "Issue 13 round 5: memory per call").
    malloc_trim_interval_ms: NonNegativeMs = 10_000
    # ``sori serve`` only, a diagnostic (engine/task_steps.py): > 0 times every Trio task step by task name and
    # keeps the steps of at least this many ms in a histogram; costs a few % of the engine, so 0 (off) by default.
    task_steps_slow_ms: NonNegativeMs = 0
    # Scale-out (docs/deploy.md): worker processes sharing the Twilio port; "auto" = one per usable core.
    workers: Annotated[int, Meta(ge=1, le=256)] | Literal["auto"] = 1
    # Set by ``sori serve --workers`` for its workers: the Unix socket the parent hands accepted Twilio
    # connections over (engine/workers.py; not for users).
    handoff_fd: Annotated[int, Meta(ge=0)] | None = None


class PoolConfig(_Section):
    """The process-wide pool of pre-warmed RTZR sockets, leased per utterance."""

    mode: Literal["pooled", "connect-per-utterance"] = "pooled"
    spare: Annotated[int, Meta(ge=0, le=1000)] = 2
    max_sessions: Annotated[int, Meta(ge=1, le=10_000)] = 5
    max_idle_ms: PositiveMs = 20_000
    max_age_ms: PositiveMs = 600_000
    ping_interval_ms: PositiveMs = 15_000
    token_min_remaining_ms: NonNegativeMs = 600_000
    # A final covers our Finalize when it ends within this of the lessee's last speech (tracker.py, rule 1).
    final_cover_slack_ms: NonNegativeMs = 300
    # How far a result's timestamps may stray from our exact byte positions before the socket is untrusted.
    timestamp_tolerance_ms: Annotated[int, Meta(ge=0, le=1000)] = 20
    close_timeout_ms: PositiveMs = 1000
    open_retry_max_ms: PositiveMs = 30_000


class RtzrConfig(_Section):
    """RTZR credentials, endpoints and the streaming query (only parameters set are sent).

    ``api_base`` serves ``/v1/authenticate``; ``ws_url`` is the streaming endpoint. When a source sets
    ``api_base`` but no source sets ``ws_url``, :func:`build` derives it (see :func:`derive_ws_url`).
    """

    api_base: str = "https://openapi.vito.ai"
    ws_url: str = "wss://openapi.vito.ai/v1/transcribe:streaming"
    client_id: str | None = None
    client_secret: str | None = None
    token_margin_ms: NonNegativeMs = 1_800_000
    auth_retry_base_ms: PositiveMs = 500
    auth_retry_max_ms: PositiveMs = 30_000
    sample_rate: Annotated[int, Meta(ge=8000, le=48000)] = 8000
    encoding: Literal["LINEAR16", "MULAW"] = "LINEAR16"
    model_name: str | None = None
    domain: Literal["CALL", "MEETING"] | None = None
    use_itn: bool | None = None
    use_disfluency_filter: bool | None = None
    use_profanity_filter: bool | None = None
    use_punctuation: bool | None = None
    keywords: list[str] | None = None
    language: str | None = None
    epd_time: Annotated[float, Meta(gt=0, le=60)] | None = None
    noise_threshold: float | None = None
    active_threshold: float | None = None
    max_utter_duration: Annotated[float, Meta(gt=0, le=3600)] | None = None
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)


class EndpointingConfig(_Section):
    """The local endpointer: short hangover for STT; turn taking is separate (turn_ms)."""

    # bands: per-band SNR in 300–3400 Hz (see engine/endpointing/classifiers.py and BENCHMARKS.md);
    # bands-unmute: the same, with 60 ms after Twilio hold/mute (digital silence) in which the floors catch up
    # with the resumed noise instead of hearing it as speech; bands-click (the default): bands-unmute whose
    # hysteresis a line click cannot engage, so it holds weak endings lower (BENCHMARKS.md, issue 12);
    # bands-pitch: bands-click + a periodicity cue (engine/endpointing/pitch.py); bands-hold: bands-click + a short
    # syllable hold after the talker's words (engine/endpointing/hold.py); bands-level: bands-click + a talker-level
    # gate on busy (babble) lines (engine/endpointing/level.py); bands-judge: bands-click + Silero as a judge in the
    # frames after the talker's words (engine/endpointing/judge.py). silero and bands-judge need the silero extra.
    classifier: Literal[
        "bands-click", "bands-pitch", "bands-hold", "bands-level", "bands-judge", "bands-unmute", "bands", "energy",
        "webrtc", "silero",
    ] = "bands-click"
    sample_rate: Literal[8000, 16000] = 8000
    # 40 ms → 4 frames of 20 ms confirm speech: at 5 dB SNR quiet utterances have only ~80 ms of
    # frames above the trigger (60 needed 5 frames and missed them).
    start_ms: Annotated[int, Meta(ge=10, le=2000)] = 40
    # Short hangover: the end (and the Finalize) is decided 80 ms after the last speech frame; a pause
    # that turns out shorter than merge_ms becomes a continuation (see BENCHMARKS.md, issue 12).
    end_ms: Annotated[int, Meta(ge=20, le=5000)] = 80
    preroll_ms: Annotated[int, Meta(ge=0, le=5000)] = 300
    # The longest utterance: at 15 s speech that goes on is cut (speech.ended reason max_length; its final comes
    # at once) and goes on in a continuation starting at the cut (no audio lost; one turn). Measured (BENCHMARKS.md,
    # issue 13 round 6): no labelled utterance of either corpus is over 8.6 s, no detection outside babble over
    # 7 s, so the cut only ends babble run-ons, and halves the audio an open utterance keeps for replay (30 s:
    # 240 KB of mu-law). Cost: a talker's turn over 15 s is split there, perhaps mid-word, for STT.
    max_utterance_ms: Annotated[int, Meta(ge=1000, le=600_000)] = 15_000
    min_utterance_ms: Annotated[int, Meta(ge=0, le=10_000)] = 0
    # Speech confirmed again within merge_ms of the previous utterance's last speech frame continues it
    # (speech.started / transcript.final carry ``continues``; the turn stays open). 0 disables it.
    merge_ms: Annotated[int, Meta(ge=0, le=5000)] = 600
    frame_ms: Literal[10, 20, 30] = 20
    turn_ms: Annotated[int, Meta(ge=0, le=60_000)] = 600


class BudgetsConfig(_Section):
    """Deadlines (ms) for every network await; an expiry is an error event, never a hang."""

    auth: PositiveMs = 5000
    connect: PositiveMs = 3000
    # Longest wait in the queue for a socket (FIFO across calls); at least `connect`, so a socket being
    # opened for the queue is never abandoned half-open. The call's audio buffer bounds it too.
    lease: PositiveMs = 10_000
    finalize: PositiveMs = 2000
    send: PositiveMs = 1000
    twilio_start: PositiveMs = 5000
    drain: PositiveMs = 30_000


class SinksConfig(_Section):
    """Where transcript events go: JSON lines ('-' = stdout, '' = off) and an optional webhook."""

    jsonl: str = "-"
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_queue: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    webhook_workers: Annotated[int, Meta(ge=1, le=256)] = 8
    webhook_timeout_ms: PositiveMs = 5000
    webhook_retries: Annotated[int, Meta(ge=0, le=100)] = 5


class TwilioConfig(_Section):
    """Twilio Media Streams: the signing token, the WebSocket path, and the public URL override."""

    auth_token: str | None = None
    path: str = "/twilio/media"
    public_url: str | None = None
    track: Literal["inbound", "outbound"] = "inbound"
    # Twilio sends a frame every 20 ms even in silence: a socket quiet this long is dead.
    read_idle_ms: PositiveMs = 15_000
    # Longest gap filled with silence; a bigger timestamp jump re-bases the timeline instead.
    max_gap_ms: PositiveMs = 10_000
    # The ingest reactor's shortest time between two passes (engine/twilio/reactor.py): frames that arrive
    # sooner wait for the next pass, so one pass reads and classifies more calls at once (fewer wake-ups, larger
    # batches). Adds at most this much to a frame's lag, and only when passes come this close (many calls);
    # 0 = a pass per wake-up. Measured in BENCHMARKS.md (Capacity, "pass interval").
    pass_interval_ms: Annotated[int, Meta(ge=0, le=20)] = 5
    # A pass hands its frames to the endpointer in batches of at most this many (engine/twilio/server.py
    # IngestPass): a frame read early in a long pass is handled after its batch, not after every later read of the
    # pass (the frame-lag tail, issue 13). Each batch has a fixed cost (~0.3 M instructions: 32 costs ~6 % more CPU
    # per frame at 74 frames a pass), so the default splits only the long passes that make the tail (128 reads:
    # ~7.5 ms at 300 calls, beyond the pass p99). 0 = one batch per pass.
    pass_batch_frames: Annotated[int, Meta(ge=0, le=100_000)] = 128
    # Let the kernel delay the ACK of what the reactor reads (engine/twilio/reactor.py: one ACK per read, ~65 % of a
    # read's kernel time, without it). Needs a peer that sends with TCP_NODELAY (nginx's WebSocket proxying does):
    # false for a proxy running Nagle's algorithm, which would hold every second frame ~40 ms. Off by default: in the
    # lead's 300-call runs (BENCHMARKS.md § Capacity, round 7) it made frames reach the socket late even from a
    # TCP_NODELAY sender (frame lag p50 15-200 ms against 10-15 off), for a CPU saving not shown at that scale.
    delayed_ack: bool = False


class CallConfig(_Section):
    """Per-call pipeline: audio batching toward RTZR and the bounded buffer that protects the reader."""

    send_batch_ms: Annotated[int, Meta(ge=20, le=200)] = 100
    audio_buffer_ms: Annotated[int, Meta(ge=100, le=600_000)] = 10_000


class RedisConfig(_Section):
    """The RTZR session budget shared by every worker and host (``SORI_REDIS_URL``); '' = this process only.

    With a URL, ``rtzr.pool.max_sessions`` is the organisation's limit across every process using ``key``.
    """

    url: str = ""
    key: str = "sori:rtzr:sessions"
    # A crashed process's sessions come back within this; renewed every third of it while a socket lives.
    lease_ttl_ms: Annotated[int, Meta(ge=300, le=600_000)] = 15_000
    timeout_ms: PositiveMs = 1000
    # How soon an open refused by the budget (limit reached, Redis unreachable) is retried.
    retry_ms: PositiveMs = 500


class PlaybackConfig(_Section):
    """Audio the application plays into calls (engine/playback.py): pacing and barge-in."""

    # Audio sent ahead of real time: Twilio holds at most this much, so a clear (barge-in) drops at most
    # this much and the answer's first frame still goes out at once.
    # 120 ms: a loaded host or a jittery path can delay a frame by tens of ms without the caller hearing a gap.
    lead_ms: Annotated[int, Meta(ge=20, le=1000)] = 120
    max_queued_ms: Annotated[int, Meta(ge=1000, le=3_600_000)] = 300_000  # per call, queued and not yet sent
    # The caller speaking over playback clears it (playback.interrupted, reason barge_in) without a round trip
    # through the application, once the speech has lasted barge_in_min_speech_ms past its confirmed start.
    barge_in: bool = True
    barge_in_min_speech_ms: Annotated[int, Meta(ge=0, le=10_000)] = 0


class AppChannelConfig(_Section):
    """The application channel (docs/app-channel.md): a WebSocket, on its own listener, where an application
    receives its calls' events and sends play/mark/clear/stop. The secret comes from ``SORI_APP_SECRET``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 8081
    path: str = "/app"
    secret: str | None = None
    queue: Annotated[int, Meta(ge=1, le=1_000_000)] = 2000  # events waiting for a slow application, per connection
    max_message_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024)] = 8 * 1024 * 1024
    max_connections: Annotated[int, Meta(ge=1, le=100_000)] = 100
    # Liveness: after this long with nothing from the application, sori pings it; no pong (or other message)
    # within as long again and the connection is closed ("ping_timeout"): a dead peer never holds a read.
    ping_ms: Annotated[int, Meta(ge=100, le=3_600_000)] = 20_000


class LogConfig(_Section):
    """JSON-lines logs on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    """The whole configuration tree."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    rtzr: RtzrConfig = msgspec.field(default_factory=RtzrConfig)
    endpointing: EndpointingConfig = msgspec.field(default_factory=EndpointingConfig)
    budgets: BudgetsConfig = msgspec.field(default_factory=BudgetsConfig)
    sinks: SinksConfig = msgspec.field(default_factory=SinksConfig)
    twilio: TwilioConfig = msgspec.field(default_factory=TwilioConfig)
    call: CallConfig = msgspec.field(default_factory=CallConfig)
    playback: PlaybackConfig = msgspec.field(default_factory=PlaybackConfig)
    app_channel: AppChannelConfig = msgspec.field(default_factory=AppChannelConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)

    def secrets(self) -> list[str]:
        """Every secret value in the tree, so the logger can redact them."""
        values = [
            self.rtzr.client_secret,
            self.twilio.auth_token,
            self.sinks.webhook_secret,
            urllib.parse.urlsplit(self.redis.url).password if self.redis.url else None,
            self.app_channel.secret,
        ]
        return [v for v in values if v]


SECRET_KEYS = frozenset({"rtzr.client_secret", "twilio.auth_token", "sinks.webhook_secret", "app_channel.secret"})

# Environment variables with conventional names; everything else is SORI_<SECTION>_<KEY>.
NAMED_ENV = {
    "RTZR_CLIENT_ID": "rtzr.client_id",
    "RTZR_CLIENT_SECRET": "rtzr.client_secret",
    "RTZR_API_BASE": "rtzr.api_base",
    "RTZR_WS_URL": "rtzr.ws_url",
    "TWILIO_AUTH_TOKEN": "twilio.auth_token",
    "SORI_APP_SECRET": "app_channel.secret",
}


def _struct_fields(cls: type[Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


def _is_struct_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Struct)


def resolve_key(dotted: str) -> tuple[str, ...]:
    """Split and check ``section.key`` against the tree; raise ConfigError for an unknown key."""
    parts = tuple(p for p in dotted.strip().split(".") if p)
    cls: Any = Config
    for i, part in enumerate(parts):
        if not _is_struct_type(cls):
            raise ConfigError(f"{dotted}: unknown key")
        fields = _struct_fields(cls)
        if part not in fields:
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: unknown key")
        cls = fields[part]
    if not parts or _is_struct_type(cls):
        raise ConfigError(f"{dotted}: not a setting (name a key inside the section)")
    return parts


def _env_key(suffix: str) -> tuple[str, ...] | None:
    """Map the part after SORI_ (e.g. RTZR_POOL_SPARE) onto the tree by walking field names."""
    rest = suffix.lower()
    cls: Any = Config
    path: list[str] = []
    while True:
        fields = _struct_fields(cls)
        match = None
        for name in sorted(fields, key=len, reverse=True):
            if rest == name and not _is_struct_type(fields[name]):
                return (*path, name)
            if rest.startswith(name + "_") and _is_struct_type(fields[name]):
                match = name
                break
        if match is None:
            return None
        path.append(match)
        rest = rest[len(match) + 1 :]
        cls = fields[match]


def _set(tree: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce_text(parts: tuple[str, ...], text: str) -> Any:
    """Turn a string from env/CLI into a value msgspec can convert (lists are comma-separated)."""
    if parts == ("rtzr", "keywords"):
        return [w.strip() for w in text.split(",") if w.strip()]
    if text.lower() in ("none", "null") and parts[-1] not in ("path", "host"):
        return None
    return text


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file; any read or syntax problem is a one-line ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {p}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"--config {p}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {p}: invalid TOML ({exc})") from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Collect settings from the environment: the named variables and SORI_<SECTION>_<KEY>."""
    tree: dict[str, Any] = {}
    for name, dotted in NAMED_ENV.items():
        if environ.get(name):
            parts = tuple(dotted.split("."))
            _set(tree, parts, _coerce_text(parts, environ[name]))
    sections = tuple(f"SORI_{name.upper()}_" for name in _struct_fields(Config))
    for name, text in environ.items():
        # Only SORI_<SECTION>_* are settings; other SORI_* variables belong to tools (SORI_CONFIG, ...).
        if not name.startswith(sections):
            continue
        found = _env_key(name[len("SORI_") :])
        if found is None:
            raise ConfigError(f"{name}: unknown setting (expected SORI_<SECTION>_<KEY>)")
        _set(tree, found, _coerce_text(found, text))
    return tree


def cli_overrides(assignments: list[str]) -> dict[str, Any]:
    """Parse ``--set section.key=value`` assignments."""
    tree: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected key=value")
        parts = resolve_key(key)
        _set(tree, parts, _coerce_text(parts, text))
    return tree


STREAMING_PATH = "/v1/transcribe:streaming"


def derive_ws_url(api_base: str) -> str:
    """The streaming URL on the same host as ``api_base``: http->ws, https->wss, same port and path prefix.

    ``https://proxy.example.com:8443/rtzr`` -> ``wss://proxy.example.com:8443/rtzr/v1/transcribe:streaming``.
    """
    parts = _check_url("rtzr.api_base", api_base, ("http", "https"))
    scheme = "wss" if parts.scheme.lower() == "https" else "ws"
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + STREAMING_PATH, "", ""))


def _check_url(key: str, url: str, schemes: tuple[str, ...]) -> urllib.parse.SplitResult:
    """Parse ``url`` or raise a one-line ConfigError naming ``key``."""
    expected = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"{key}: invalid URL {url!r} ({exc})") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ConfigError(f"{key}: expected a URL starting with {expected} and naming a host, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{key}: must not have a query or fragment, got {url!r}")
    return parts


def build(*layers: Mapping[str, Any]) -> Config:
    """Merge layers (earliest first) over the defaults and validate the result.

    If any layer sets ``rtzr.api_base`` and none sets ``rtzr.ws_url``, ``ws_url`` is derived from
    ``api_base`` (so pointing sori at a proxy or an emulator with one setting moves both endpoints).
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    try:
        config = msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    rtzr = merged.get("rtzr")
    if isinstance(rtzr, Mapping) and "api_base" in rtzr and "ws_url" not in rtzr:
        config.rtzr.ws_url = derive_ws_url(config.rtzr.api_base)
    _check_url("rtzr.api_base", config.rtzr.api_base, ("http", "https"))
    _check_url("rtzr.ws_url", config.rtzr.ws_url, ("ws", "wss"))
    if config.redis.url:
        _check_redis_url(config.redis.url)
    return config


def _check_redis_url(url: str) -> None:
    """Like _check_url, but never echoes the URL (it may hold the Redis password)."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
        ok = parts.scheme in ("redis", "rediss") and bool(parts.hostname) and (parts.path.strip("/") or "0").isdigit()
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError("redis.url: expected redis://[[user]:password@]host[:port][/db] or rediss://...")


def _describe(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's "Expected ... - at `$.a.b`" into "a.b: expected ..." (one line)."""
    text = str(exc).replace("\n", " ")
    reason, sep, where = text.rpartition(" - at `")
    if not sep:
        reason, where = text, ""
    key = where.rstrip("`").removeprefix("$").lstrip(".")
    if reason.startswith("Object contains unknown field"):
        field = reason.split("`")[1] if "`" in reason else "?"
        return f"{key}.{field}: unknown key" if key else f"{field}: unknown key"
    if not key:
        return reason
    return f"{key}: {reason[0].lower()}{reason[1:]}"


def load(
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> Config:
    """Load the configuration from every source, later wins."""
    env = os.environ if environ is None else environ
    path = config_file or env.get("SORI_CONFIG")
    file_layer = load_toml(path) if path else {}
    return build(file_layer, env_overrides(env), dict(cli or {}))


def redacted(config: Config) -> dict[str, Any]:
    """The config as a plain dict with secrets replaced, safe to log."""
    tree: dict[str, Any] = msgspec.to_builtins(config)
    for dotted in SECRET_KEYS:
        section, key = dotted.split(".")
        if tree[section].get(key):
            tree[section][key] = "***"
    return tree

"""``sori emulate-rtzr``: run the emulator in the foreground and print how to point sori at it."""

from __future__ import annotations

import argparse
import sys

import msgspec
import trio

from engine.log import setup_logging
from engine.rtzr.emulator.config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    EmulatorConfig,
    FaultSpecError,
    parse_faults,
)
from engine.rtzr.emulator.phrasebook import PhrasebookError
from engine.rtzr.emulator.server import EMULATED_NOTICE, Emulator, describe

DEFAULT_CLI_PORT = 8765


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_CLI_PORT, help=f"port (default {DEFAULT_CLI_PORT}; 0 = any)")
    p.add_argument("--handshake-ms", type=int, default=100, help="delay before answering an upgrade")
    p.add_argument("--final-ms", type=int, default=150, help="delay before a final result")
    p.add_argument("--interim-ms", type=int, default=300, help="interim cadence (ms of utterance audio)")
    p.add_argument("--max-sessions", type=int, default=5, help="concurrent sessions before 429")
    p.add_argument("--token-lifetime-s", type=float, default=21600.0, help="access token lifetime")
    p.add_argument("--idle-timeout-s", type=float, default=60.0, help="close a socket idle this long")
    p.add_argument("--max-session-s", type=float, default=3600.0, help="close a socket this old")
    p.add_argument("--epd-time", type=float, default=0.8, help="end-point silence (s) for server finals")
    p.add_argument("--phrasebook", metavar="DIR", help="clips + phrases.json (default: the bundled demo phrases)")
    p.add_argument("--cheap", action="store_true",
                   help="skip recognition (load tests): EPD, Finalize/EOS and timestamps as usual, placeholder words")
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID,
                   help=f"accepted client_id (default {DEFAULT_CLIENT_ID}; '' = accept any id/secret pair)")
    p.add_argument("--client-secret", default=None,
                   help=f"accepted client_secret (default {DEFAULT_CLIENT_SECRET}; must be '' or omitted "
                        "when --client-id is '')")
    p.add_argument("--faults", default="", metavar="SPEC",
                   help="e.g. 'session=3:close_after=500;session=5:reject=429'; kinds: reject=STATUS, "
                        "close_after=MS, error_after=MS, empty_text, stall[=MS]; session=N, N-M or *")
    p.add_argument("--lag-probe-ms", type=int, default=0,
                   help="load tests: sample the event loop's own lag this often; GET /stats reports it (0 = off)")
    p.add_argument("--read-batch-ms", type=float, default=0.0,
                   help="load tests: read input at most once per this many ms (more sessions per wake-up; "
                        "every message, Finalize included, read up to this much later; 0 = at once)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


class CredentialsError(ValueError):
    """--client-id and --client-secret disagree (exactly one of them is empty)."""


def credentials_from_args(client_id: str, client_secret: str | None) -> tuple[str | None, str | None]:
    """The accepted (id, secret), or (None, None) to accept any pair; ``client_secret`` None = not given.

    ``--client-id ''`` (with no secret, or ``--client-secret ''``) accepts any pair; an empty secret with
    an id, or a secret with an empty id, is an error rather than a silently ignored flag.
    """
    if not client_id:
        if client_secret:
            raise CredentialsError(
                "--client-id '' accepts any credentials, so --client-secret would be ignored:"
                " give both, or drop --client-secret"
            )
        return None, None
    if client_secret is None:
        return client_id, DEFAULT_CLIENT_SECRET
    if not client_secret:
        raise CredentialsError(
            "--client-secret '' with a --client-id: give both, or --client-id '' to accept any credentials"
        )
    return client_id, client_secret


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    client_id, client_secret = credentials_from_args(args.client_id, args.client_secret)
    raw = {
        "host": args.host, "port": args.port, "handshake_ms": args.handshake_ms, "final_ms": args.final_ms,
        "interim_ms": args.interim_ms, "max_sessions": args.max_sessions,
        "token_lifetime_s": args.token_lifetime_s, "idle_timeout_s": args.idle_timeout_s,
        "max_session_s": args.max_session_s, "epd_time": args.epd_time, "phrasebook": args.phrasebook,
        "cheap": bool(getattr(args, "cheap", False)),
        "client_id": client_id, "client_secret": client_secret, "faults": args.faults,
        "lag_probe_ms": int(getattr(args, "lag_probe_ms", 0)),
        "read_batch_ms": float(getattr(args, "read_batch_ms", 0.0)),
    }
    config = msgspec.convert(raw, EmulatorConfig)
    parse_faults(config.faults)
    return config


def run_cli(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        emulator = Emulator(config)
    except (msgspec.ValidationError, FaultSpecError, PhrasebookError, CredentialsError) as exc:
        print(f"sori emulate-rtzr: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(emulator.run)
            info = describe(emulator)
            print(f"*** {EMULATED_NOTICE} ***", flush=True)
            print(f"api_base: {info['api_base']}\nws_url:   {info['ws_url']}", flush=True)
            print("point sori at it with:", flush=True)
            for key, value in info["env"].items():
                print(f"  export {key}={value}", flush=True)

    try:
        trio.run(main)
    except OSError as exc:
        print(f"sori emulate-rtzr: {exc}", file=sys.stderr)
        return 1
    return 0

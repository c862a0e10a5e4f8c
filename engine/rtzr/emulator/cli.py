"""``sori emulate-rtzr``: run the emulator in the foreground and print how to point sori at it."""

from __future__ import annotations

import argparse
import sys

import msgspec
import trio

from engine.log import setup_logging
from engine.rtzr.emulator.config import EmulatorConfig, FaultSpecError, parse_faults
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
    p.add_argument("--client-id", default="sori-emulator", help="accepted client_id ('' = accept any)")
    p.add_argument("--client-secret", default="sori-emulator-secret", help="accepted client_secret")
    p.add_argument("--faults", default="", metavar="SPEC",
                   help="e.g. 'session=3:close_after=500;session=5:reject=429'; kinds: reject=STATUS, "
                        "close_after=MS, error_after=MS, empty_text, stall[=MS]; session=N, N-M or *")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    any_pair = not args.client_id
    raw = {
        "host": args.host, "port": args.port, "handshake_ms": args.handshake_ms, "final_ms": args.final_ms,
        "interim_ms": args.interim_ms, "max_sessions": args.max_sessions,
        "token_lifetime_s": args.token_lifetime_s, "idle_timeout_s": args.idle_timeout_s,
        "max_session_s": args.max_session_s, "epd_time": args.epd_time, "phrasebook": args.phrasebook,
        "client_id": None if any_pair else args.client_id,
        "client_secret": None if any_pair else args.client_secret, "faults": args.faults,
    }
    config = msgspec.convert(raw, EmulatorConfig)
    parse_faults(config.faults)
    return config


def run_cli(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        emulator = Emulator(config)
    except (msgspec.ValidationError, FaultSpecError, PhrasebookError) as exc:
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

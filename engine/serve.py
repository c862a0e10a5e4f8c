"""``sori serve``: check the configuration, then run the engine under the supervisor."""

from __future__ import annotations

import argparse
import sys

import trio

from engine.config import Config, ConfigError
from engine.log import get_logger, setup_logging

log = get_logger(__name__)

EXIT_CONFIG = 2


def check_serve_config(config: Config, *, stt: str) -> None:
    """Refuse to start with a config that cannot work in production; one clear line each."""
    if stt == "rtzr" and not (config.rtzr.client_id and config.rtzr.client_secret):
        raise ConfigError(
            "rtzr.client_id/rtzr.client_secret: not set; export RTZR_CLIENT_ID and RTZR_CLIENT_SECRET "
            "(or use `sori serve --stt emulator` for local development without credentials)"
        )
    if not config.twilio.auth_token and not config.server.allow_unsigned:
        raise ConfigError(
            "twilio.auth_token: not set; export TWILIO_AUTH_TOKEN so X-Twilio-Signature can be validated "
            "(or pass --allow-unsigned for local development)"
        )


def run_serve(args: argparse.Namespace) -> int:
    from engine.cli import config_from_args

    config = config_from_args(args)
    check_serve_config(config, stt=args.stt)
    setup_logging(config.log.level, secrets=config.secrets())
    if config.server.allow_unsigned and not config.twilio.auth_token:
        log.warning("unsigned_streams_allowed", hint="every call will be accepted without a signature")
    from engine.app import run_engine

    stt = None
    if args.stt == "emulator":  # the engine knows no emulator: the CLI wires it (engine/rtzr/emulator/local.py)
        from engine.rtzr.emulator.local import in_process

        stt = in_process()
    try:
        trio.run(run_engine, config, stt)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"sori: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0

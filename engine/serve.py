"""``sori serve``: check the configuration, then run the engine under the supervisor.

With ``--workers N`` (``server.workers``) above 1 this process becomes the parent of N engine processes
(engine/workers.py); each of them runs this same command as a worker (``--worker-status-fd``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import trio

from engine.config import Config, ConfigError
from engine.log import get_logger, setup_logging

if TYPE_CHECKING:
    from engine.app import SttLauncher

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
    if args.worker_status_fd is not None:
        return _run_worker(config, args.stt, args.worker_index or 0, args.worker_status_fd)
    from engine.workers import resolve_workers

    workers = resolve_workers(config.server.workers)
    if workers > 1:
        return _run_parent(config, workers, _child_args(args))
    from engine.app import run_engine

    try:
        trio.run(run_engine, config, _stt_launcher(args.stt))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"sori: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _stt_launcher(stt: str) -> SttLauncher | None:
    """The engine knows no emulator by name: the CLI wires it (engine/rtzr/emulator/local.py)."""
    if stt != "emulator":
        return None
    from engine.rtzr.emulator.local import in_process

    return in_process()


def _child_args(args: argparse.Namespace) -> list[str]:
    """The ``serve`` arguments each worker gets: the same configuration sources (the environment is inherited)."""
    out = ["--stt", args.stt]
    if args.config:
        out += ["--config", args.config]
    for assignment in args.assign or []:
        out += ["--set", assignment]
    if args.log_level:
        out += ["--log-level", args.log_level]
    if args.allow_unsigned:
        out.append("--allow-unsigned")
    return out


def _run_parent(config: Config, workers: int, child_args: list[str]) -> int:
    from engine.nursery import StartupError, root_cause
    from engine.workers import WorkerPool, worker_overrides

    worker_overrides(config, workers)  # a config error (sessions cannot be split) before anything starts
    try:
        return trio.run(WorkerPool(config, workers, child_args).run)
    except BaseExceptionGroup as group:
        cause = root_cause(group)
        if isinstance(cause, StartupError):
            raise cause from cause.cause
        raise
    except KeyboardInterrupt:
        return 130


def _run_worker(config: Config, stt: str, index: int, status_fd: int) -> int:
    """One worker of ``--workers``: the engine on the connections the parent hands over, reporting to the parent."""
    from engine.app import Engine, apply_gc_policy, apply_memory_policy, freeze_when_ready, serve
    from engine.memory import trim_heap_every
    from engine.workers import report_and_watch_parent, tag_worker_logs

    tag_worker_logs(index)
    freeze = apply_gc_policy(config.server.gc_policy)
    trim = apply_memory_policy(config.server)  # as run_engine: each worker is a daemon process of its own

    async def after_start(engine: Engine) -> None:
        async with trio.open_nursery() as nursery:
            if freeze:
                nursery.start_soon(freeze_when_ready, engine)
            if trim is not None:
                nursery.start_soon(trim_heap_every, config.server.malloc_trim_interval_ms / 1000, trim)
            assert engine.admin.bound_port is not None
            await report_and_watch_parent(status_fd, engine.admin.bound_port, engine.shutdown)

    async def main() -> None:
        await serve(config, stt=_stt_launcher(stt), after_start=after_start)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 130
    return 0

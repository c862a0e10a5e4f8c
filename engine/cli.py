"""The ``sori`` command: ``serve``, ``demo``, ``emulate-rtzr``, ``simulate-call``, ``report``.

Configuration errors print one line (``sori: config error: <key>: <reason>``) and exit 2. A service
that cannot start (a port already in use) prints one line naming it
(``sori: cannot listen on 127.0.0.1:9090 (admin): [Errno 98] Address already in use``) and exits 1.
Subcommands owned by other modules register through ``configure_parser(parser)`` and run
through ``run_cli(args) -> int``. Importing this module sizes numpy's BLAS/OpenMP thread pools at one
thread unless the environment already says otherwise (:mod:`engine._threads`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

import engine._threads  # noqa: F401  (first of sori's imports: single-threaded BLAS, set before numpy loads)
from engine import __version__
from engine.config import Config, ConfigError, cli_overrides, load
from engine.log import redactor
from engine.nursery import StartupError

EXIT_STARTUP = 1
EXIT_CONFIG = 2

# subcommand -> module that implements configure_parser/run_cli
DELEGATED = {
    "emulate-rtzr": ("engine.rtzr.emulator", "run a local RTZR streaming STT emulator (emulated text!)"),
    "simulate-call": ("engine.twilio.simulator", "play audio into a sori server as Twilio Media Streams would"),
    "demo": ("engine.demo", "play a bundled Korean call through the engine with the emulated RTZR"),
    "report": ("engine.report", "analyse an events JSONL log: per-call timelines, latency summary, HTML"),
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (env SORI_CONFIG)")
    p.add_argument("--set", dest="assign", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set rtzr.pool.spare=4 (repeatable)")
    p.add_argument("--host", help="Twilio endpoint bind address (server.host)")
    p.add_argument("--port", type=int, help="Twilio endpoint port (server.port)")
    p.add_argument("--admin-port", type=int, help="admin /livez, /readyz and /metrics port (server.admin_port)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log.level")


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the config from file, environment and this command's flags (flags win)."""
    assignments: list[str] = list(getattr(args, "assign", []) or [])
    flag_keys = {"host": "server.host", "port": "server.port", "admin_port": "server.admin_port",
                 "log_level": "log.level", "workers": "server.workers"}
    for attr, key in flag_keys.items():
        value = getattr(args, attr, None)
        if value is not None:
            assignments.append(f"{key}={value}")
    if getattr(args, "allow_unsigned", False):
        assignments.append("server.allow_unsigned=true")
    overrides: dict[str, Any] = cli_overrides(assignments)
    return load(config_file=getattr(args, "config", None), cli=overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sori", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"sori {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the engine: Twilio endpoint, RTZR pool, event sinks")
    _add_config_flags(serve)
    serve.add_argument("--stt", choices=["rtzr", "emulator"], default="rtzr",
                       help="rtzr (default, needs RTZR_CLIENT_ID/RTZR_CLIENT_SECRET) or an in-process emulator")
    serve.add_argument("--allow-unsigned", action="store_true",
                       help="accept Twilio streams without X-Twilio-Signature (development only)")
    serve.add_argument("--workers", metavar="N|auto",
                       help="worker processes sharing the Twilio port (server.workers; auto = one per core)")
    # Set by the parent of `--workers` for each worker process (engine/workers.py); not for users.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-status-fd", type=int, help=argparse.SUPPRESS)

    for name, (module_name, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text)
        module = _try_import(module_name)
        configure = getattr(module, "configure_parser", None) if module else None
        if configure is not None:
            configure(p)
        else:
            _add_config_flags(p)
    return parser


def _try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "serve":
            from engine.serve import run_serve

            return run_serve(args)
        module_name, _ = DELEGATED[args.command]
        module = _try_import(module_name)
        run = getattr(module, "run_cli", None) if module else None
        if run is None:
            print(f"sori {args.command}: not built yet", file=sys.stderr)
            return 0
        result: int = run(args)
        return result
    except ConfigError as exc:
        print(f"sori: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"sori: {redactor.scrub(str(exc))}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 130

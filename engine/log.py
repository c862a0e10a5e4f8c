"""JSON-lines structured logging to stderr, with secrets redacted from every line.

Use ``log = get_logger(__name__)`` then ``log.info("socket_opened", call_sid=..., ms=12)``.
One object per line: ts, level, logger, event, and the fields given.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any

import msgspec

_encoder = msgspec.json.Encoder()


class _Redactor:
    """Holds the secret strings to scrub (config secrets, access tokens)."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            with self._lock:
                self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


redactor = _Redactor()


def add_secret(secret: str | None) -> None:
    """Register a value that must never appear in logs (e.g. a fresh access token)."""
    redactor.add(secret)


class JsonLinesFormatter(logging.Formatter):
    """Formats a record as one JSON object; fields come from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                obj[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            obj["error"] = f"{type(exc).__name__}: {exc}"
        try:
            line = _encoder.encode(obj).decode()
        except (TypeError, ValueError):
            line = _encoder.encode({k: str(v) for k, v in obj.items()}).decode()
        return redactor.scrub(line)


class Logger:
    """A thin structured wrapper: event name first, then keyword fields."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, exc: BaseException | None, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, None, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, None, fields)

    def warning(self, event: str, *, exc: BaseException | None = None, **fields: Any) -> None:
        self._log(logging.WARNING, event, exc, fields)

    def error(self, event: str, *, exc: BaseException | None = None, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc, fields)

    def enabled(self, level: str) -> bool:
        return self._logger.isEnabledFor(logging.getLevelName(level.upper()))


def get_logger(name: str) -> Logger:
    return Logger(logging.getLogger(name))


def setup_logging(level: str = "info", *, secrets: list[str] | None = None, stream: IO[str] | None = None) -> None:
    """Install the JSON-lines handler on the root logger (idempotent) and register secrets."""
    for secret in secrets or []:
        add_secret(secret)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sori", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLinesFormatter())
    handler._sori = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime

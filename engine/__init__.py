"""sori: real-time Korean transcription of Twilio phone calls over RTZR streaming STT, on Trio."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``engine.serve`` and ``engine.load_config`` without importing trio at package import time."""
    if name == "serve":
        from engine.app import serve

        return serve
    if name == "load_config":
        from engine.config import load

        return load
    raise AttributeError(name)

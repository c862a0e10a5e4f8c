"""Moved to :mod:`engine.ws.frames` (one WebSocket layer); kept so existing imports keep working."""

from __future__ import annotations

from engine.ws.frames import MessageAssembler, MessageTooBig, apply_mask

__all__ = ["MessageAssembler", "MessageTooBig", "apply_mask"]

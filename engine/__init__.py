"""sori: real-time Korean transcription of Twilio phone calls over RTZR streaming STT, on Trio."""

from __future__ import annotations

__version__ = "0.1.0"

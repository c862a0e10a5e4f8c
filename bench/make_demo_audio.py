"""Generate the demo's Korean phrase clips and the demo call (deterministic, needs espeak-ng).

Each phrase is synthesised word by word with ``espeak-ng -v ko`` (so word timings are exact and
can be listed in ``phrases.json``), resampled to 8 kHz with soxr, band-limited to 300-3400 Hz like
a phone line, given a faint noise floor, and μ-law round-tripped, so that audio going Twilio μ-law
→ sori → LINEAR16 8 kHz reaches the RTZR emulator bit-exact and its phrasebook matches it exactly.

Outputs (engine/demo/):
  phrases/<id>.wav, phrases/phrases.json  [{"id", "file", "text", "words": [{"text","start_ms","end_ms"}]}]
  call.wav, call.json                     the four demo phrases with pauses, labels in ms

Usage: python bench/make_demo_audio.py [--out engine/demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.audio import mulaw

RATE = 8000
WORD_GAP_MS = 90
CLIP_PAD_MS = 60
NOISE_RMS = 12.0
PEAK = 0.5 * 32767

# (id, text, in the demo call?)
PHRASES: list[tuple[str, str, bool]] = [
    ("diary", "안녕 오늘 일지 쓰려", True),
    ("tonight", "오늘 밤", True),
    ("ate", "먹었어", True),
    ("dunno", "모르겠어", True),
    ("okay", "네 알겠습니다", False),
    ("wait", "잠깐만요", False),
    ("thanks", "고마워요", False),
]


def _espeak(text: str, workdir: Path) -> tuple[np.ndarray, int]:
    out = workdir / "w.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-s", "150", "-w", str(out), text], check=True)
    with wave.open(str(out), "rb") as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    return data, rate


def _trim(x: np.ndarray, threshold: float = 200.0) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > threshold)
    return x[idx[0] : idx[-1] + 1] if idx.size else x[:0]


def _phone_band(x: np.ndarray) -> np.ndarray:
    """300-3400 Hz band-pass in the frequency domain with raised-cosine edges (zero phase)."""
    n = len(x)
    spec = np.fft.rfft(x, n=2 * n)
    f = np.fft.rfftfreq(2 * n, 1 / RATE)
    gain = np.ones_like(f)
    lo = (f >= 200) & (f < 300)
    gain[f < 200] = 0
    gain[lo] = 0.5 - 0.5 * np.cos(np.pi * (f[lo] - 200) / 100)
    hi = (f > 3400) & (f <= 3700)
    gain[hi] = 0.5 + 0.5 * np.cos(np.pi * (f[hi] - 3400) / 300)
    gain[f > 3700] = 0
    return np.fft.irfft(spec * gain)[:n]


def _roundtrip(x: np.ndarray) -> np.ndarray:
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return mulaw.decode(mulaw.encode(pcm))


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def make_phrase(text: str, seed: int, workdir: Path) -> tuple[np.ndarray, list[dict[str, object]]]:
    """One clip: words with fixed gaps, padded, band-limited, normalised, noise floor, μ-law round trip."""
    pad = np.zeros(RATE * CLIP_PAD_MS // 1000)
    gap = np.zeros(RATE * WORD_GAP_MS // 1000)
    parts: list[np.ndarray] = [pad]
    words: list[dict[str, object]] = []
    pos = len(pad)
    for i, word in enumerate(text.split()):
        raw, rate = _espeak(word, workdir)
        audio = _trim(soxr.resample(_trim(raw), rate, RATE, quality="HQ"), 100.0)
        if i:
            parts.append(gap)
            pos += len(gap)
        words.append({"text": word, "start_ms": round(pos * 1000 / RATE), "end_ms": round((pos + len(audio)) * 1000 / RATE)})
        parts.append(audio)
        pos += len(audio)
    parts.append(pad)
    x = _phone_band(np.concatenate(parts))
    x *= PEAK / max(1.0, float(np.max(np.abs(x))))
    x += np.random.default_rng(seed).normal(0.0, NOISE_RMS, len(x))
    return _roundtrip(x), words


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "engine" / "demo"))
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng not found: apt-get install -y espeak-ng", file=sys.stderr)
        return 1
    out = Path(args.out)
    phrases_dir = out / "phrases"
    phrases_dir.mkdir(parents=True, exist_ok=True)
    book: list[dict[str, object]] = []
    clips: dict[str, tuple[np.ndarray, list[dict[str, object]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, (pid, text, _) in enumerate(PHRASES, start=1):
            pcm, words = make_phrase(text, seed, Path(tmp))
            clips[pid] = (pcm, words)
            _write_wav(phrases_dir / f"{pid}.wav", pcm)
            book.append({"id": pid, "file": f"{pid}.wav", "text": text, "words": words})
    (phrases_dir / "phrases.json").write_text(json.dumps(book, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    # The demo call: clips copied verbatim (so they stay bit-exact), noise-only pauses between them.
    rng = np.random.default_rng(2024)
    segments: list[np.ndarray] = []
    labels: list[dict[str, object]] = []
    pos = 0

    def noise(ms: int) -> None:
        nonlocal pos
        seg = _roundtrip(rng.normal(0.0, NOISE_RMS, RATE * ms // 1000))
        segments.append(seg)
        pos += len(seg)

    noise(700)
    demo = [(pid, text) for pid, text, in_call in PHRASES if in_call]
    for i, (pid, text) in enumerate(demo):
        if i:
            noise(int(rng.integers(800, 1501)))
        pcm, words = clips[pid]
        start = pos * 1000 // RATE
        labels.append({"id": pid, "text": text,
                       "start_ms": start + int(words[0]["start_ms"]),  # type: ignore[call-overload]
                       "end_ms": start + int(words[-1]["end_ms"])})  # type: ignore[call-overload]
        segments.append(pcm)
        pos += len(pcm)
    noise(1000)
    call = np.concatenate(segments)
    _write_wav(out / "call.wav", call)
    meta = {"sample_rate": RATE, "duration_ms": len(call) * 1000 // RATE, "phrases": labels}
    (out / "call.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(book)} phrases and call.wav ({meta['duration_ms']} ms) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

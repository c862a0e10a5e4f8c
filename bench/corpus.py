"""Build a labelled corpus of phone-like Korean calls for the endpointing evaluation.

Deterministic: the same seed gives byte-identical files. Each call is Korean phrases
synthesised with ``espeak-ng -v ko`` (words joined with intra-utterance pauses of
50–400 ms, utterances separated by 0.9–2.5 s of silence), mixed with noise at a given SNR
(white, pink or babble from other phrases, before the channel; mains hum on the line,
after it), passed through a telephone channel (300–3400 Hz band-pass, 8 kHz, μ-law
round trip). Labels are the true speech intervals, known from the clean synthesis.

Files: ``<name>.wav`` (8 kHz μ-law WAV, format 7) and ``<name>.json``::

    {"sample_rate": 8000, "noise": "pink", "snr_db": 10, "noise_only": false,
     "utterances": [{"start": s, "end": e, "segments": [[s, e], ...]}, ...]}

``python bench/corpus.py`` writes the small committed subset to bench/corpus/ (one call
per noise × SNR, plus noise-only recordings); ``--full`` writes more and longer calls to
bench/corpus_full/.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.audio import mulaw

RATE = 8000
NOISES = ("white", "pink", "babble", "hum")
SNRS = (30, 20, 10, 5)
SPEECH_LEVEL_DBFS = -22.0  # active speech level on the line

PHRASES = [
    "안녕하세요 고객센터입니다",
    "주문한 물건이 아직 도착하지 않았어요",
    "네 맞습니다",
    "카드 결제를 취소하고 싶은데요",
    "배송 주소를 바꾸려고 전화했습니다",
    "잠시만요 확인해 볼게요",
    "아니요 그게 아니라 환불을 원해요",
    "내일 오후 세시에 방문 가능할까요",
    "비밀번호를 잊어버렸어요",
    "네 알겠습니다 감사합니다",
    "예약 번호는 일 이 삼 사 오 입니다",
    "상담원 연결 부탁드립니다",
    "요금이 너무 많이 나온 것 같아요",
    "인터넷이 자꾸 끊겨요",
    "지난달에 신청한 서비스요",
    "그럼 다시 연락 주세요",
]


@functools.cache
def synth(text: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng → float32 at 8 kHz (cached per argument set)."""
    out = subprocess.run(
        ["espeak-ng", "-v", "ko", "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    pcm = np.frombuffer(out[44 : 44 + (len(out) - 44) // 2 * 2], dtype="<i2").astype(np.float32) / 32768
    y = soxr.resample(pcm, 22050, RATE).astype(np.float32)
    # trim the synthesiser's own leading/trailing silence so labels are tight
    active = np.flatnonzero(np.abs(y) > 10 ** (-45 / 20))
    return y[active[0] : active[-1] + 1] if active.size else y[:0]


def speech_segments(y: np.ndarray, offset: int) -> list[list[int]]:
    """True speech inside one synthesised word group: 10 ms blocks above −40 dB of its peak."""
    block = RATE // 100
    n = len(y) // block
    if n == 0:
        return [[offset, offset + len(y)]] if len(y) else []
    e = (y[: n * block].reshape(n, block) ** 2).mean(1)
    on = e > e.max() * 1e-4
    segs: list[list[int]] = []
    k = 0
    while k < n:
        if on[k]:
            j = k
            while j < n and on[j]:
                j += 1
            s, t = offset + k * block, offset + min(j * block, len(y))
            if segs and s - segs[-1][1] < 4 * block:  # merge gaps < 40 ms (plosive closures)
                segs[-1][1] = t
            else:
                segs.append([s, t])
            k = j
        else:
            k += 1
    return segs


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    return np.fft.irfft(spec, n).astype(np.float32)


def bandpass(x: np.ndarray, lo: float = 300.0, hi: float = 3400.0) -> np.ndarray:
    """Telephone channel: a smooth (raised-cosine edged) FFT band-pass."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    gain = np.clip((f - (lo - 100)) / 100, 0, 1) * np.clip(((hi + 200) - f) / 200, 0, 1)
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)
    return np.fft.irfft(spec * gain, len(x)).astype(np.float32)


def babble(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n, np.float32)
    for _ in range(6):
        pos = 0
        while pos < n:
            y = synth(PHRASES[rng.integers(len(PHRASES))], int(rng.integers(140, 200)), int(rng.integers(20, 80)))
            y = y[: n - pos]
            out[pos : pos + len(y)] += y / (np.sqrt(np.mean(y**2)) + 1e-9)
            pos += len(y) + int(rng.integers(0, RATE // 5))
    return out


def hum(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / RATE
    f0 = float(rng.choice([50.0, 60.0]))
    return sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in (1, 2, 3, 5, 7)).astype(np.float32)


def make_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "white":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "pink":
        return pink(n, rng)
    if kind == "babble":
        return babble(n, rng)
    return hum(n, rng)


def build_call(seed: int, kind: str, snr_db: float, seconds: float, noise_only: bool = False) -> tuple[np.ndarray, dict]:
    """One call: int16 PCM after the μ-law round trip, and its labels."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    clean = np.zeros(n, np.float32)
    utts: list[dict] = []
    pos = int(rng.uniform(0.8, 1.5) * RATE)
    while not noise_only:
        words = PHRASES[rng.integers(len(PHRASES))].split()
        speed, pitch = int(rng.integers(130, 190)), int(rng.integers(25, 75))
        groups: list[str] = []
        for w in words:  # pause after some words, not all
            if groups and rng.random() < 0.5:
                groups[-1] += " " + w
            else:
                groups.append(w)
        parts, segs, p = [], [], pos
        for gi, g in enumerate(groups):
            y = synth(g, speed, pitch)
            segs += speech_segments(y, p)
            parts.append((p, y))
            p += len(y)
            if gi < len(groups) - 1:
                p += int(rng.uniform(0.05, 0.4) * RATE)
        if p + RATE // 2 > n:
            break
        for q, y in parts:
            clean[q : q + len(y)] += y
        utts.append({"start": segs[0][0], "end": segs[-1][1], "segments": segs})
        pos = p + int(rng.uniform(0.9, 2.5) * RATE)
    level = 10 ** (SPEECH_LEVEL_DBFS / 20)
    mask = np.zeros(n, bool)
    for u in utts:
        for s, e in u["segments"]:
            mask[s:e] = True
    active_rms = float(np.sqrt(np.mean(clean[mask] ** 2))) if mask.any() else 1.0
    speech = clean * (level / active_rms) if mask.any() else clean
    noise = make_noise(kind, n, rng)
    noise *= level / 10 ** (snr_db / 20) / (np.sqrt(np.mean(noise**2)) + 1e-12)
    if kind == "hum":  # on the line, after the channel filter
        line = bandpass(speech) + noise
    else:  # acoustic background at the caller's end
        line = bandpass(speech + noise)
    pcm = np.clip(np.rint(line * 32768), -32768, 32767).astype(np.int16)
    pcm = mulaw.decode(mulaw.encode(pcm))
    labels = {"sample_rate": RATE, "noise": kind, "snr_db": snr_db, "noise_only": noise_only, "seed": seed,
              "utterances": utts}
    return pcm, labels


def write_mulaw_wav(path: Path, pcm: np.ndarray) -> None:
    data = mulaw.encode(pcm)
    fmt = struct.pack("<HHIIHHH", 7, 1, RATE, RATE, 1, 8, 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"fact" + struct.pack("<II", 4, len(data)) + b"data" + struct.pack("<I", len(data)) + data
    if len(data) % 2:
        body += b"\x00"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a μ-law (format 7) or PCM16 WAV into int16 samples."""
    raw = path.read_bytes()
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a WAV file")
    pos, fmt_tag, rate, data = 12, None, 0, b""
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        chunk = raw[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt_tag, _, rate = struct.unpack("<HHI", chunk[:8])
        elif cid == b"data":
            data = chunk
        pos += 8 + size + (size & 1)
    if fmt_tag == 7:
        return mulaw.decode(data), rate
    if fmt_tag == 1:
        return np.frombuffer(data, "<i2").astype(np.int16), rate
    raise ValueError(f"{path}: unsupported WAV format {fmt_tag}")


def load(directory: Path) -> list[tuple[str, np.ndarray, dict]]:
    """All (name, pcm, labels) in a corpus directory, sorted by name."""
    out = []
    for js in sorted(directory.glob("*.json")):
        pcm, _ = read_wav(js.with_suffix(".wav"))
        out.append((js.stem, pcm, json.loads(js.read_text())))
    return out


def build(directory: Path, calls_per_condition: int, seconds: float, noise_only_seconds: float) -> None:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install -y espeak-ng (make corpus does it)")
    directory.mkdir(parents=True, exist_ok=True)
    seed = 1000
    for kind in NOISES:
        for snr in SNRS:
            for i in range(calls_per_condition):
                seed += 1
                pcm, labels = build_call(seed, kind, snr, seconds)
                name = f"{kind}_snr{snr:02d}_{i:02d}"
                write_mulaw_wav(directory / f"{name}.wav", pcm)
                (directory / f"{name}.json").write_text(json.dumps(labels, separators=(",", ":")) + "\n")
        for snr in (20, 10):
            seed += 1
            pcm, labels = build_call(seed, kind, snr, noise_only_seconds, noise_only=True)
            name = f"noiseonly_{kind}_snr{snr:02d}"
            write_mulaw_wav(directory / f"{name}.wav", pcm)
            (directory / f"{name}.json").write_text(json.dumps(labels, separators=(",", ":")) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="build the larger set into bench/corpus_full/")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    if args.full:
        build(args.out or here / "corpus_full", calls_per_condition=4, seconds=40.0, noise_only_seconds=60.0)
    else:
        build(args.out or here / "corpus", calls_per_condition=1, seconds=18.0, noise_only_seconds=15.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build a labelled corpus of phone calls from REAL recorded speech (issue 12).

Sources: Debian's ``asterisk-core-sounds-{en,es,fr,it}-wav`` (8 kHz 16-bit WAV prompts under
/usr/share/asterisk/sounds/). For dev/test, three professional voices: Allison (``en_US_f_Allison`` and
``es_MX_f_Allison``, the same speaker in two languages), June (``fr_CA_f_June``) and Carlo
(``it_IT_m_Carlo``, male). Splits are voice-disjoint:

* ``dev``  = Allison (en + es): tune on this; the committed subset is taken from it;
* ``test`` = June (fr) + Carlo (it): held out, never in the committed subset;
* ``extra`` = four more voices nothing was tuned on (issue 12 round 4): ``ru_RU_f_IvrvoiceRU`` (Russian,
  ``asterisk-core-sounds-ru-wav``), ``it_IT_f_Menardi`` (Italian, ``asterisk-prompt-it-menardi-wav``), July E.
  Jiménez (Colombian Spanish, ``asterisk-prompt-es-co``) and Armelle Desjardins (French,
  ``asterisk-prompt-fr-armelle``); the last two ship 8 kHz GSM 06.10 (``*.gsm``), decoded with libgsm's
  ``untoast`` (so they have been through a GSM codec before our μ-law channel). Its babble is made of the
  split's OTHER voices only (``--babble-voices other``, its default; dev/test default to ``split``, i.e. the
  caller's own voice included, as they were built first, and stay byte-identical).

One call = one voice (one language). Each utterance is 1–3 prompts; prompts inside an
utterance are separated by 80–300 ms within-sentence pauses and labelled as ONE utterance;
utterances are separated by 0.6–2 s (sometimes 2–3.5 s) of noise. Calls with an odd index
contain a hold/mute stretch: the line goes to μ-law digital silence (0xFF) for 1–2 s in a gap,
then the noise comes back. Noise-only recordings end with 3 s of digital silence after the noise.

Labels come from the clean clips: each prompt is cut to its speech with an energy threshold
relative to the clip's own peak (5 ms blocks, ``max(peak − 40 dB, floor + 12 dB)``), and its
speech segments (gaps under 50 ms merged) are placed on the call's timeline sample-exactly.
Prompts that are tones or contain pauses over 300 ms are not used, so every labelled
utterance has internal pauses ≤ 300 ms.

Channel: speech (per-call level −28…−18 dBFS, ±3 dB per utterance) and acoustic noise
(babble from 6 streams of OTHER prompts of the same split — of other voices only in ``extra`` — or pink) pass a 300–3400 Hz
band-pass; line noise (50/60 Hz hum with harmonics, or band-limited hiss + clicks) is added
after it; then the μ-law round trip. SNR (20 / 10 / 5 dB) = active speech level on the line
÷ noise RMS on the line.

Files are the synthetic corpus's format (``<name>.wav`` μ-law + ``<name>.json``, loaded by
``corpus.load``) with extra label fields: ``split``, ``language``, ``voice``,
``digital_silence`` ([[s, e], ...]) and per utterance ``prompts`` and ``max_pause``
(samples). Deterministic: the seed is derived from the file name.

``python bench/corpus_real.py`` writes the committed subset (dev split, calls 00–01 of every
noise × SNR, plus the noise-only recordings) to bench/corpus_real/; ``--full`` writes every
split (``--splits`` to choose), 8 calls per noise × SNR × split, to bench/corpus_real_full/ (``extra``: call i
is voice i mod 4, so 2 calls per voice per condition). The subset files are byte-identical to the same names
in the full set.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
import wave
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import bandpass, pink, write_mulaw_wav

from engine.audio import mulaw

RATE = 8000
SOUNDS = Path("/usr/share/asterisk/sounds")
VOICES = {"en": "en_US_f_Allison", "es": "es_MX_f_Allison", "fr": "fr_CA_f_June", "it": "it_IT_m_Carlo",
          "ru": "ru_RU_f_IvrvoiceRU", "it-menardi": "it_IT_f_Menardi",
          "es-co": "es_CO_f_July", "fr-armelle": "fr_f_Armelle"}
# The `extra` split's voices: no labels key of the dev/test files changes (their prompt names stay
# "<lang>/<path>", their "language" the lang key). GSM voices ship raw GSM 06.10 frames (*.gsm), decoded
# by libgsm's `untoast` (apt libgsm-tools); they are listed from their Debian package, because
# sounds/es and sounds/fr may also hold other packages' files.
LANGUAGE = {"ru": "ru", "it-menardi": "it", "es-co": "es", "fr-armelle": "fr"}
GSM_PACKAGES = {"es-co": "asterisk-prompt-es-co", "fr-armelle": "asterisk-prompt-fr-armelle"}
GSM_ROOTS = {"es-co": "es", "fr-armelle": "fr"}
SPLITS = {"dev": ("en", "es"), "test": ("fr", "it"), "extra": ("ru", "it-menardi", "es-co", "fr-armelle")}
# babble from the split's prompts ("split": the caller's own voice included, as dev/test were built) or
# only from the split's OTHER voices ("other"); default per split, so dev/test stay byte-identical
BABBLE_VOICES = {"dev": "split", "test": "split", "extra": "other"}
BABBLE_CHOICES = ("split", "other", "own")
NOISES = ("babble", "pink", "hum", "line")
SNRS = (20, 10, 5)
CALL_SECONDS = 15.0
NOISE_ONLY_SECONDS = 10.0
HOLD_TAIL_SECONDS = 3.0
BLOCK = RATE // 200  # 5 ms
EXCLUDE = ("beep", "tone", "tt-monkeys", "silence/")
MAX_PAUSE = int(0.3 * RATE)


class Prompt:
    __slots__ = ("name", "pcm", "segments")

    def __init__(self, name: str, pcm: np.ndarray, segments: list[list[int]]) -> None:
        self.name = name
        self.pcm = pcm  # trimmed to [first speech sample, last speech sample], unit active RMS
        self.segments = segments  # speech inside pcm, relative to its start


def trim(x: np.ndarray) -> tuple[int, int, list[list[int]]] | None:
    """Speech inside a clean clip: (start, end, segments) in samples, or None if there is none."""
    n = len(x) // BLOCK
    if n < 4:
        return None
    e = (x[: n * BLOCK].reshape(n, BLOCK).astype(np.float64) ** 2).mean(1) + 1e-12
    db = 10 * np.log10(e)
    thr = max(db.max() - 40.0, np.percentile(db, 5) + 12.0)
    on = np.flatnonzero(db > thr)
    if on.size == 0:
        return None
    segs: list[list[int]] = []
    for k in on:
        s, t = int(k) * BLOCK, int(k + 1) * BLOCK
        if segs and s - segs[-1][1] < 10 * BLOCK:  # merge gaps < 50 ms (stop closures)
            segs[-1][1] = t
        else:
            segs.append([s, t])
    # refine the outer edges to the sample: first/last sample above the threshold amplitude
    amp = np.sqrt(10 ** (thr / 10))
    a = np.flatnonzero(np.abs(x[segs[0][0] : segs[0][1]]) > amp)
    b = np.flatnonzero(np.abs(x[segs[-1][0] : segs[-1][1]]) > amp)
    if a.size:
        segs[0][0] += int(a[0])
    if b.size:
        segs[-1][1] = segs[-1][0] + int(b[-1]) + 1
    start, end = segs[0][0], segs[-1][1]
    return start, end, [[s - start, t - start] for s, t in segs]


def _wav_clips(lang: str) -> list[tuple[str, np.ndarray]]:
    """(path relative to the voice's dir, float32 samples) for every 8 kHz 16-bit mono WAV prompt."""
    root = SOUNDS / VOICES[lang]
    if not root.is_dir() and lang not in LANGUAGE:
        root = SOUNDS / lang
    if not root.is_dir():
        pkg = f"asterisk-core-sounds-{lang}-wav" if lang not in LANGUAGE else (
            "asterisk-core-sounds-ru-wav" if lang == "ru" else "asterisk-prompt-it-menardi-wav")
        raise SystemExit(f"{root}: missing; apt-get install -y {pkg} (make corpus does it)")
    out = []
    for f in sorted(root.rglob("*.wav")):
        with wave.open(str(f)) as w:
            if w.getframerate() != RATE or w.getsampwidth() != 2 or w.getnchannels() != 1:
                continue
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        out.append((f.relative_to(root).as_posix(), x))
    return out


def _gsm_clips(lang: str) -> list[tuple[str, np.ndarray]]:
    """(path relative to sounds/<lang dir>, float32 samples) for every GSM 06.10 prompt of the package."""
    pkg = GSM_PACKAGES[lang]
    try:
        listed = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"{pkg}: not installed; apt-get install -y {pkg} libgsm-tools (make corpus does it)") from None
    root = SOUNDS / GSM_ROOTS[lang]
    out = []
    for f in sorted(Path(p) for p in listed.splitlines() if p.endswith(".gsm")):
        try:
            raw = subprocess.run(["untoast", "-l", "-c", str(f)], capture_output=True, check=True).stdout
        except OSError:
            raise SystemExit("untoast: missing; apt-get install -y libgsm-tools (make corpus does it)") from None
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768  # untoast -l: host order, little-endian here
        out.append((f.relative_to(root).as_posix(), x))
    return out


@functools.cache
def prompts(lang: str) -> tuple[Prompt, ...]:
    """Every usable prompt of one voice, sorted by name, normalised to unit active RMS."""
    out = []
    for rel, x in (_gsm_clips(lang) if lang in GSM_PACKAGES else _wav_clips(lang)):
        if any(e in rel for e in EXCLUDE):
            continue
        t = trim(x)
        if t is None:
            continue
        s, e, segs = t
        dur = (e - s) / RATE
        if not 0.25 <= dur <= 4.0:
            continue
        if any(segs[i + 1][0] - segs[i][1] > MAX_PAUSE for i in range(len(segs) - 1)):
            continue
        y = x[s:e]
        act = np.concatenate([y[a:b] for a, b in segs])
        y = y / (np.sqrt(np.mean(act.astype(np.float64) ** 2)) + 1e-9)
        out.append(Prompt(f"{lang}/{rel}", y.astype(np.float32), segs))
    return tuple(out)


def babble(n: int, pool: list[Prompt], rng: np.random.Generator) -> np.ndarray:
    """Six overlapping streams of prompts (other than the call's own), each starting in the first second."""
    out = np.zeros(n, np.float32)
    for _ in range(6):
        pos = int(rng.integers(0, RATE))
        while pos < n:
            y = pool[int(rng.integers(len(pool)))].pcm[: n - pos]
            out[pos : pos + len(y)] += y * float(rng.uniform(0.5, 1.5))
            pos += len(y) + int(rng.integers(0, RATE // 4))
    return out


def babble_from_start(n: int, pool: list[Prompt], rng: np.random.Generator) -> np.ndarray:
    """Six streams as :func:`babble`, but every one already talking at the call's first sample (no fade-in:
    the ``--babble-from-start`` variant, BENCHMARKS.md, issue 12)."""
    out = np.zeros(n, np.float32)
    for _ in range(6):
        first = pool[int(rng.integers(len(pool)))].pcm
        pos = -int(rng.integers(0, len(first)))  # mid-prompt when the call starts
        y = first
        while pos < n:
            seg = y[max(0, -pos) : max(0, -pos) + n - max(pos, 0)]
            out[max(pos, 0) : max(pos, 0) + len(seg)] += seg * float(rng.uniform(0.5, 1.5))
            pos += len(y) + int(rng.integers(0, RATE // 4))
            y = pool[int(rng.integers(len(pool)))].pcm
    return out


def babble_pool(split: str, lang: str, used: set[str], voices: str) -> list[Prompt]:
    """The prompts babble is drawn from: the split's prompts not spoken in the call, from every voice of the
    split ("split"), only from voices other than the caller's ("other"), or only from the caller's own voice
    ("own": the contrast case, the caller talking over themself)."""
    if voices not in BABBLE_CHOICES:
        raise ValueError(f"babble voices: {voices!r} ({', '.join(BABBLE_CHOICES)})")
    keep = {"split": lambda lg: True, "other": lambda lg: lg != lang, "own": lambda lg: lg == lang}[voices]
    return [pr for lg in SPLITS[split] if keep(lg) for pr in prompts(lg) if pr.name not in used]


def hum(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: 50 or 60 Hz with harmonics (odd ones stronger), slight frequency drift."""
    t = np.arange(n) / RATE
    f0 = float(rng.choice([50.0, 60.0])) * (1 + 0.002 * np.sin(2 * np.pi * 0.1 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = np.zeros(n)
    for k in range(1, 16):
        amp = (1.0 if k % 2 else 0.35) / k**0.8
        x += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return x.astype(np.float32)


def line(n: int, rng: np.random.Generator) -> np.ndarray:
    """Line noise: band-limited hiss plus clicks (short decaying bursts, ~2 per second)."""
    x = bandpass(rng.standard_normal(n).astype(np.float32))
    x /= np.sqrt(np.mean(x**2)) + 1e-12
    k = np.arange(int(0.004 * RATE))
    for pos in np.flatnonzero(rng.random(n) < 2.0 / RATE):
        burst = rng.choice([-1.0, 1.0]) * rng.uniform(6, 20) * np.exp(-k / rng.uniform(2, 8))
        burst *= rng.standard_normal(len(k)) * 0.5 + 1
        m = min(len(k), n - int(pos))
        x[pos : pos + m] += burst[:m].astype(np.float32)
    return x


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def build_call(name: str, split: str, lang: str, kind: str, snr_db: float, seconds: float,
               noise_only: bool = False, hold: bool = False, babble_at_start: bool = False,
               babble_voices: str | None = None) -> tuple[np.ndarray, dict]:
    """One call: int16 PCM after the μ-law round trip, and its labels. ``babble_voices``: "split" (every
    voice of the split, the caller's included), "other" (the split's voices other than the caller's) or
    "own" (the caller's voice only); None = the split's default (:data:`BABBLE_VOICES`)."""
    rng = np.random.default_rng(seed_of(name))
    n = int(seconds * RATE)
    pool = list(prompts(lang))
    speech = np.zeros(n, np.float32)
    utts: list[dict] = []
    used: set[str] = set()
    pos = int(rng.uniform(0.8, 1.5) * RATE)
    gaps: list[tuple[int, int]] = []  # inter-utterance gaps (for the hold stretch)
    while not noise_only:
        k = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
        chosen = [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]
        gain = float(10 ** (rng.uniform(-3, 3) / 20))
        p, segs, parts = pos, [], []
        for j, pr in enumerate(chosen):
            parts.append((p, pr))
            segs += [[p + a, p + b] for a, b in pr.segments]
            p += len(pr.pcm)
            if j < k - 1:
                p += int(rng.uniform(0.08, 0.30) * RATE)
        if p + RATE // 2 > n:
            break
        for q, pr in parts:
            speech[q : q + len(pr.pcm)] += pr.pcm * gain
            used.add(pr.name)
        if utts:
            gaps.append((utts[-1]["end"], segs[0][0]))
        pauses = [segs[i + 1][0] - segs[i][1] for i in range(len(segs) - 1)]
        utts.append({"start": segs[0][0], "end": segs[-1][1], "segments": segs,
                     "prompts": [pr.name for pr in chosen], "max_pause": max(pauses, default=0)})
        long_gap = rng.random() < 0.2
        pos = p + int((rng.uniform(2.0, 3.5) if long_gap else rng.uniform(0.6, 2.0)) * RATE)
    # levels: per call −28…−18 dBFS active speech on the line
    level = float(10 ** (rng.uniform(-28, -18) / 20))
    mask = np.zeros(n, bool)
    for u in utts:
        for s, e in u["segments"]:
            mask[s:e] = True
    on_line = bandpass(speech)
    active = float(np.sqrt(np.mean(on_line[mask].astype(np.float64) ** 2))) if mask.any() else 1.0
    on_line *= level / active
    # noise, scaled so that its RMS on the line is `snr_db` under the active speech level
    bv = babble_voices or BABBLE_VOICES[split]
    if kind == "babble":
        others = babble_pool(split, lang, used, bv)
        noise = bandpass((babble_from_start if babble_at_start else babble)(n, others, rng))
    elif kind == "pink":
        noise = bandpass(pink(n, rng))
    elif kind == "hum":
        noise = hum(n, rng)
    else:
        noise = line(n, rng)
    noise *= level / 10 ** (snr_db / 20) / (np.sqrt(np.mean(noise.astype(np.float64) ** 2)) + 1e-12)
    x = on_line + noise
    silent: list[list[int]] = []
    if noise_only:
        silent.append([n - int(HOLD_TAIL_SECONDS * RATE), n])
    elif hold and gaps:
        a, b = max(gaps, key=lambda g: g[1] - g[0])
        room = b - a - int(0.6 * RATE)
        if room > int(0.5 * RATE):
            length = min(room, int(rng.uniform(1.0, 2.0) * RATE))
            s = a + int(0.3 * RATE) + int(rng.integers(0, room - length + 1))
            silent.append([s, s + length])
    pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)
    for s, e in silent:
        pcm[s:e] = 0  # encodes to 0xFF, μ-law digital silence
    pcm = mulaw.decode(mulaw.encode(pcm))
    labels = {"sample_rate": RATE, "noise": kind, "snr_db": snr_db, "noise_only": noise_only,
              "seed": seed_of(name), "split": split, "language": LANGUAGE.get(lang, lang), "voice": VOICES[lang],
              "digital_silence": silent, "utterances": utts}
    if bv != "split":  # only then: dev/test labels stay byte-identical
        labels["babble_voices"] = bv
    return pcm, labels


def names(split: str, calls_per_condition: int) -> list[tuple[str, dict]]:
    """Every file of a split: (name, build_call keyword arguments)."""
    out: list[tuple[str, dict]] = []
    langs = SPLITS[split]
    for kind in NOISES:
        for snr in SNRS:
            for i in range(calls_per_condition):
                out.append((f"{split}_{kind}_snr{snr:02d}_{i:02d}",
                            {"lang": langs[i % len(langs)], "kind": kind, "snr_db": snr,
                             "seconds": CALL_SECONDS, "hold": i % 2 == 1}))
            out.append((f"{split}_noiseonly_{kind}_snr{snr:02d}",
                        {"lang": langs[0], "kind": kind, "snr_db": snr, "seconds": NOISE_ONLY_SECONDS,
                         "noise_only": True}))
    return out


def build(directory: Path, splits: tuple[str, ...], calls_per_condition: int, *,
          kinds: tuple[str, ...] = NOISES, babble_at_start: bool = False, babble_voices: str | None = None) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for split in splits:
        for name, kw in names(split, calls_per_condition):
            if kw["kind"] not in kinds:
                continue
            pcm, labels = build_call(name, split, **kw, babble_at_start=babble_at_start, babble_voices=babble_voices)
            write_mulaw_wav(directory / f"{name}.wav", pcm)
            (directory / f"{name}.json").write_text(json.dumps(labels, separators=(",", ":")) + "\n")
            count += 1
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true",
                    help="every split (dev, test, extra), 8 calls per condition, into bench/corpus_real_full/")
    ap.add_argument("--splits", default=None, help="comma-separated splits to build (default: all with --full, else dev)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--kinds", default=",".join(NOISES), help="comma-separated noise kinds to build")
    ap.add_argument("--babble-from-start", action="store_true",
                    help="babble already at full density at the call's first sample (a variant; use with --out)")
    ap.add_argument("--babble-voices", choices=BABBLE_CHOICES, default=None,
                    help="babble from every voice of the split, only from voices other than the caller's, or only "
                         "from the caller's own voice (default: other in the extra split, split in dev/test)")
    args = ap.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    here = Path(__file__).resolve().parent
    splits = tuple(args.splits.split(",")) if args.splits else (tuple(SPLITS) if args.full else ("dev",))
    if unknown := [s for s in splits if s not in SPLITS]:
        ap.error(f"unknown split(s) {unknown}; known: {', '.join(SPLITS)}")
    t0 = time.perf_counter()
    out = args.out or here / ("corpus_real_full" if args.full else "corpus_real")
    count = build(out, splits, calls_per_condition=8 if args.full else 2, kinds=kinds,
                  babble_at_start=args.babble_from_start, babble_voices=args.babble_voices)
    for lg in dict.fromkeys(lg for s in splits for lg in SPLITS[s]):
        print(f"{lg} ({VOICES[lg]}): {len(prompts(lg))} usable prompts")
    print(f"wrote {count} files to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

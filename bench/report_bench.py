"""``sori report`` on a day of events: time and peak memory, at two sizes of the same synthetic day.

Writes a synthetic JSONL log (not committed; in a temp dir unless --out): ``--calls`` calls spread over 24 h,
each a stream of utterances with the engine's own event Structs and encoder (speech.started, partials,
speech.ended, transcript.final with latency, words and socket, turn.ended), interleaved in time order as the
engine's JSONL sink writes them, with pool misses, errors and a few malformed lines mixed in. Then runs
``sori report FILE --json`` as a child process on the first quarter of the lines and on the whole file,
and on the first quarter repeated four times (as long as the day, with the quarter's number of calls
at once), and reports wall and CPU time and the child's peak RSS: memory follows the calls in progress
(and the ones kept in detail), not the length of the file. For scale, the same run also times a bare ``json.loads`` of every line.

    python bench/report_bench.py                    # 300 calls, ~3.4 M lines
    python bench/report_bench.py --calls 30 --utterances 100   # quick
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import events as ev

DAY_S = 86_400.0
DAY0 = 1_795_910_400.0  # 2026-11-29 00:00 UTC


def call_events(n: int, utterances: int, rng: random.Random) -> Iterator[tuple[float, bytes]]:
    """One call's lines, in time order: (ts, JSON line)."""
    sid, stream = f"CA{n:032x}", f"MZ{n:032x}"
    t = DAY0 + rng.uniform(0, DAY_S - utterances * 5.0)
    audio_ms = 0.0
    enc = ev.encode
    yield t, enc(ev.CallStarted(call_sid=sid, stream_sid=stream, account_sid="AC" + "0" * 32, tracks=["inbound"],
                                custom_parameters={"customer_id": str(n)}, sample_rate=8000, ts=t))
    sock_id, sock_uses, handshake = f"c{n}s0", 0, rng.uniform(90, 130)
    started = t
    token_fetched = DAY0 - 3600 + (t - DAY0) // 19_800 * 19_800  # a token refresh every 5.5 h
    for i in range(utterances):
        uid = f"{stream}:{i}"
        gap = rng.uniform(0.6, 4.0)
        speech = rng.uniform(0.6, 3.5)
        audio_ms += gap * 1000
        t += gap
        yield t, enc(ev.SpeechStarted(call_sid=sid, stream_sid=stream, utterance_id=uid, start_ms=round(audio_ms, 1), ts=t))
        text_words = ["안녕하세요", "오늘", "예약", "확인", "부탁드립니다", "네", "감사합니다", "잠시만요"]
        for k in range(int(speech / 0.5)):
            yield t + 0.5 * (k + 1), enc(ev.TranscriptPartial(
                call_sid=sid, stream_sid=stream, utterance_id=uid, text=" ".join(rng.sample(text_words, 2)),
                start_ms=round(audio_ms, 1), ts=t + 0.5 * (k + 1)))
        last = audio_ms + speech * 1000
        t += speech + 0.08
        yield t, enc(ev.SpeechEnded(call_sid=sid, stream_sid=stream, utterance_id=uid, last_speech_ms=round(last, 1),
                                    end_ms=round(last + 80, 1), reason="silence", ts=t))
        miss = rng.random() < 0.03
        if miss:
            sock_id, sock_uses, handshake = f"c{n}s{i}", 0, rng.uniform(90, 130)
        sock_uses += 1
        stt = rng.gammavariate(9.0, 17.0)
        lease = rng.uniform(80, 140) if miss else rng.uniform(0, 0.5)
        total = 80 + stt + max(0.0, lease - speech * 1000)
        done = t + (total - 80) / 1000
        if rng.random() < 0.005:
            yield done, enc(ev.ErrorEvent(call_sid=sid, stream_sid=stream, kind="budget_expired", budget="finalize",
                                          message="budget 'finalize' expired after 2000 ms", utterance_id=uid, ts=done))
        else:
            words = [ev.Word(text=w, start_ms=round(audio_ms + 300 * j, 1), end_ms=round(audio_ms + 300 * j + 250, 1),
                             confidence=0.95) for j, w in enumerate(rng.sample(text_words, 3))]
            yield done, enc(ev.TranscriptFinal(
                call_sid=sid, stream_sid=stream, utterance_id=uid, text=" ".join(w.text for w in words), confidence=0.95,
                start_ms=round(audio_ms, 1), end_ms=round(last, 1), words=words,
                latency=ev.Latency(endpoint_ms=80.0, lease_ms=round(lease, 1), stt_ms=round(stt, 1), total_ms=round(total, 1)),
                pool_hit=not miss, socket=ev.SocketInfo(id=sock_id, uses=sock_uses, handshake_ms=round(handshake, 1),
                                                        age_s=1.0, token_age_s=round(done - token_fetched, 3),
                                                        token_ttl_s=21_600.0), ts=done))
        if rng.random() < 0.4:
            yield done + 0.6, enc(ev.TurnEnded(call_sid=sid, stream_sid=stream, text="네", utterance_ids=[uid],
                                               start_ms=round(audio_ms, 1), end_ms=round(last, 1), ts=done + 0.6))
        audio_ms = last + 80
        t = done
    yield t + 1, enc(ev.CallEnded(call_sid=sid, stream_sid=stream, reason="stop", duration_ms=round((t + 1 - started) * 1000, 1),
                                  utterances=utterances,
                                  finals=utterances, audio_sent_s=1.0, frames_received=1, frames_filled=0,
                                  frames_dropped=0, errors=0, ts=t + 1))


def write_day(path: Path, calls: int, utterances: int, seed: int) -> int:
    rng = random.Random(seed)
    streams = [call_events(n, utterances, random.Random(rng.random())) for n in range(calls)]
    lines = 0
    with path.open("wb", buffering=1 << 22) as out:
        for _, line in heapq.merge(*streams, key=lambda item: item[0]):
            out.write(line + b"\n")
            lines += 1
            if lines % 200_000 == 0:
                out.write(b'{"type":"transcript.final","utterance_id":"cut mid-wr\n')  # a torn line
                lines += 1
    return lines


def run_report(path: Path) -> tuple[float, float, int, dict[str, Any]]:
    """Wall seconds, CPU seconds (whole process), peak RSS (KiB) of a fresh ``sori report --json`` child, and its
    analysis."""
    code = ("import resource, sys, time\nfrom engine.cli import main\nt = time.perf_counter()\n"
            "rc = main(['report', sys.argv[1], '--json'])\n"
            "u = resource.getrusage(resource.RUSAGE_SELF)\n"
            "sys.stderr.write(f'{time.perf_counter() - t} {u.ru_utime + u.ru_stime} {u.ru_maxrss}\\n')\n"
            "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, check=True)
    seconds, cpu, rss = done.stderr.decode().split()[-3:]
    return float(seconds), float(cpu), int(rss), json.loads(done.stdout)


def bare_json(path: Path) -> float:
    """CPU seconds to json.loads every line and keep nothing (this process)."""
    t = time.process_time()
    with path.open("rb") as f:
        for line in f:
            try:
                json.loads(line)
            except ValueError:
                pass
    return time.process_time() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--utterances", type=int, default=1000, help="utterances per call")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--out", type=Path, help="keep the log here (default: a temp dir, removed)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or Path(tmp) / "day.jsonl"
        t = time.perf_counter()
        lines = write_day(path, args.calls, args.utterances, args.seed)
        print(f"wrote {lines:,} lines ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t:.1f} s")
        quarter = Path(tmp) / "quarter.jsonl"
        with path.open("rb") as src, quarter.open("wb") as dst:
            for i, line in enumerate(src):
                if i >= lines // 4:
                    break
                dst.write(line)
        repeated = Path(tmp) / "quarter-x4.jsonl"  # as long as the day, with the first quarter's concurrency
        with repeated.open("wb") as dst:
            for _ in range(4):
                dst.write(quarter.read_bytes())
        rows = []
        for name, target, n in (("first quarter", quarter, lines // 4), ("quarter x4", repeated, 4 * (lines // 4)),
                                ("whole day", path, lines)):
            seconds, cpu, rss, report = run_report(target)
            sm = report["summary"]
            rows.append((name, n, cpu, rss))
            print(f"{name:13s}: {n:>10,} lines in {seconds:6.2f} s ({n / seconds / 1e3:,.0f} k lines/s; CPU {cpu:.2f} s), peak RSS "
                  f"{rss / 1024:6.1f} MiB; calls {sm['calls']}, utterances {sm['utterances']:,}, "
                  f"malformed {report['malformed']}, total p50 {sm['total']['p50']} p95 {sm['total']['p95']} ms, "
                  f"tokens {sm['tokens']}")
        bare = bare_json(path)
        print(f"reference: json.loads of every line, nothing kept: CPU {bare:.2f} s "
              f"(sori report CPU / bare json = {rows[-1][2] / bare:.2f})")
        for name, n, seconds, rss in rows[1:]:
            print(f"{name} / first quarter: time x{seconds / rows[0][2]:.2f}, peak RSS x{rss / rows[0][3]:.2f}")
        print(f"machine load while measuring: {open('/proc/loadavg').read().split()[:3]} on {resource.getpagesize()} B pages")


if __name__ == "__main__":
    main()

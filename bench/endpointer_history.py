"""CPU per frame of the endpointer's two-phase path (frames_ready + push_decided) as the batched Call drives it:
200 streams × 250 frames of μ-law line noise, decisions given (5 % speech-like: the general step sometimes).

``pcm``: the int16 history (any tree); ``codes``: the μ-law history with Twilio's payloads as the codes (issue 13,
trees that have ``mulaw_history``). Process CPU time, best of 5; an A/B is this file run by two trees' venvs:

    .venv/bin/python bench/endpointer_history.py codes
    /work/wt-base/.venv/bin/python bench/endpointer_history.py pcm
"""

from __future__ import annotations

import inspect
import sys
import time

import numpy as np

from engine.audio import mulaw
from engine.config import EndpointingConfig
from engine.endpointing import Endpointer


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "codes"
    if mode not in ("pcm", "codes"):
        raise SystemExit("usage: endpointer_history.py [pcm|codes]")
    if mode == "codes" and "mulaw_history" not in inspect.signature(Endpointer).parameters:
        raise SystemExit("this tree's Endpointer has no mulaw_history")
    cfg = EndpointingConfig()
    rng = np.random.default_rng(3)
    sig = mulaw.encode(rng.normal(0, 200, 160 * 250).astype(np.int16))
    payloads = [sig[i : i + 160] for i in range(0, len(sig), 160)]
    pcms = [mulaw.decode(p) for p in payloads]
    decisions = [[bool(d)] for d in (rng.random(250) < 0.05)]

    def once() -> float:
        eps = [Endpointer(cfg, mulaw_history=True) if mode == "codes" else Endpointer(cfg) for _ in range(200)]
        t = time.process_time()
        for k in range(250):
            pcm, codes, decided = pcms[k], payloads[k], decisions[k]
            for ep in eps:
                if mode == "codes":
                    ep.frames_ready(pcm, codes)
                else:
                    ep.frames_ready(pcm)
                ep.push_decided(decided)
        return (time.process_time() - t) / (250 * 200) * 1e6

    print(f"{sys.prefix} {mode}: {min(once() for _ in range(5)):.3f} µs per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Single-threaded BLAS/OpenMP for every ``sori`` process, set before anything imports numpy.

Why: the per-frame numeric work is small matrix products (the bands classifier's ``(n × 161) @ (161 × 65)``
over one reactor wake-up's frames). OpenBLAS hands products above ~50 rows to a second thread, and on a
2-core machine (or with the engine pinned to one core) the hand-off costs 3–30× per row (BENCHMARKS.md
§ Capacity, "OpenBLAS threads"). A real-time daemon wants its one core, so the thread pools are sized
at 1 unless the operator chose otherwise (an environment variable already set wins). OpenBLAS reads the
variable once, when numpy loads it: this module must be imported before numpy (``engine.cli`` imports
it first).
"""

from __future__ import annotations

import os
from typing import Final

THREAD_VARIABLES: Final = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")

for _name in THREAD_VARIABLES:
    os.environ.setdefault(_name, "1")

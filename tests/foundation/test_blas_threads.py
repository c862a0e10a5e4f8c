"""``sori``'s entry runs numpy's BLAS single-threaded unless the operator chose a thread count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A fresh interpreter imports the entry point (as the ``sori`` script and ``python -m engine`` do), then numpy,
# and reports the environment and, where it can find the library, OpenBLAS's own thread count.
_PROBE = r"""
import ctypes, json, os
import engine.cli
import numpy
threads = None
for line in open("/proc/self/maps"):
    path = line.split()[-1]
    if "openblas" in path.lower() and ".so" in path:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                threads = getattr(lib, name)()
                break
        break
print(json.dumps({"openblas": os.environ.get("OPENBLAS_NUM_THREADS"), "omp": os.environ.get("OMP_NUM_THREADS"),
                  "threads": threads}))
"""


def _probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=60, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_entry_sets_one_blas_thread() -> None:
    seen = _probe()
    assert seen["openblas"] == "1"
    assert seen["omp"] == "1"
    if seen["threads"] is None:
        pytest.skip("numpy's OpenBLAS not found in this process (another BLAS): only the environment is checked")
    assert seen["threads"] == 1


def test_operator_setting_wins() -> None:
    seen = _probe(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="3")
    assert seen["openblas"] == "2"
    assert seen["omp"] == "3"
    if seen["threads"] is not None:
        assert seen["threads"] == 2

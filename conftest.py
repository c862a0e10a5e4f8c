"""Hypothesis profiles for the whole suite (tests/ and fuzz/): a bounded run inside ``make test``, a long one
for ``make fuzz``.

This is the rootdir conftest so that it is loaded before any test module is imported: ``@given`` and
``@settings`` capture ``settings.default`` at import time, and tests/ is collected before fuzz/. In
fuzz/conftest.py the profile reached fuzz/ only, and tests/ ran on hypothesis' defaults: a 200 ms deadline
per example and the too_slow health check, both failures on a loaded CI machine rather than defects.

``SORI_FUZZ_EXAMPLES`` sets the example count (``make fuzz`` passes 20,000 by default).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_examples = int(os.environ.get("SORI_FUZZ_EXAMPLES", "0") or 0)
settings.register_profile(
    "sori",
    max_examples=_examples or 150,
    deadline=None,  # wall-clock per example: a loaded machine, not a defect
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not _examples,
    print_blob=True,
)
settings.load_profile("sori")

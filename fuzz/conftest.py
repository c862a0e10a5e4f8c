"""Hypothesis profiles: a bounded run inside ``make test``, a long one for ``make fuzz``.

``SORI_FUZZ_EXAMPLES`` sets the example count (``make fuzz`` passes 20,000 by default).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_examples = int(os.environ.get("SORI_FUZZ_EXAMPLES", "0") or 0)
settings.register_profile(
    "sori",
    max_examples=_examples or 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not _examples,
    print_blob=True,
)
settings.load_profile("sori")

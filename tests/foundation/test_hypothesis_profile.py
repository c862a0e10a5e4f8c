"""Every hypothesis test in tests/ runs on the suite's profile, not on hypothesis' defaults: no per-example
wall-clock deadline and no too_slow health check, which fail on a loaded CI machine rather than on a defect."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@given(st.integers())
def _undecorated(x: int) -> None:
    pass


@settings(max_examples=5)
@given(st.integers())
def _decorated(x: int) -> None:
    pass


def test_tests_dir_hypothesis_tests_have_no_deadline_and_no_too_slow_check() -> None:
    assert settings.get_current_profile_name() == "sori"
    # @given and @settings capture the default when this module is imported (tests/ is collected first)
    for test in (_undecorated, _decorated):
        captured = test._hypothesis_internal_use_settings  # type: ignore[attr-defined]
        assert captured.deadline is None
        assert HealthCheck.too_slow in captured.suppress_health_check

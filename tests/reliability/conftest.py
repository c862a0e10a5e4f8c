"""Reliability suite: ``slow`` variants (soak sizes) run only with SORI_SOAK=1 (``make soak``)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SORI_SOAK"):
        return
    skip = pytest.mark.skip(reason="soak variant: run with `make soak` (SORI_SOAK=1)")
    for item in items:
        if item.get_closest_marker("slow") is not None and item.path.is_relative_to(os.path.dirname(__file__)):
            item.add_marker(skip)

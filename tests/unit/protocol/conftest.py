"""Pytest setup shared by the protocol codec tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Also to be registered in pyproject.toml; registering twice is harmless.
    config.addinivalue_line(
        "markers",
        "fuzz: long property tests; ZTPKI_FUZZ_EXAMPLES=N raises their example count (make fuzz)",
    )

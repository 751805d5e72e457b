"""Fixtures running the store contract suite against every implementation in KINDS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_backends import KINDS, Backend, close, locator_for

from ztpki.store import IssuanceStore, NodeStore


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with locator_for(request.param, tmp_path) as locator:
        b = Backend(request.param, locator, [])
        yield b
        for store in b.opened:
            close(store)


@pytest.fixture
def ca_store(backend: Backend) -> IssuanceStore:
    return backend.ca()


@pytest.fixture
def node_store(backend: Backend) -> NodeStore:
    return backend.node()

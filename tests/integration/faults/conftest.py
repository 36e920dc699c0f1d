"""The fault scenarios' fixtures: a fresh edge cluster, throwaway data servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mmo.testing.data import ThrowawayPostgres, ThrowawayRedis

from .load import FaultCluster, ready


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[FaultCluster]:
    """A fresh, ready edge cluster (each scenario breaks it its own way)."""
    with ready(FaultCluster, tmp_path) as cluster:
        yield cluster


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of the test's own (never the machine's shared one)."""
    server = ThrowawayPostgres().init().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A Redis server of the test's own (never the machine's shared one)."""
    server = ThrowawayRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()

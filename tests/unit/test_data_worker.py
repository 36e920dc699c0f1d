"""A worker's service tree holds its database and cache; its handler sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import task
from twisted.python import usage

from mmo.data import MemoryCache, SQLiteDatabase
from mmo.examples.echo import EchoService
from mmo.logic import ServiceHandler
from mmo.logic.runtime import WorkerService
from mmo.testing import handler_factory
from mmo.worker.config import WorkerConfig
from mmo.worker.service import make_worker_service
from mmo.worker.tap import Options

YELLOW = ("tcp://127.0.0.1:5555",)


def test_database_and_cache_services_come_before_the_worker(tmp_path: Path) -> None:
    """The tree holds database and cache before the worker; the handler has them as db/cache."""
    config = WorkerConfig(
        yellow=YELLOW,
        handler="mmo.examples.echo:EchoService",
        service="echo",
        database=f"sqlite:///{tmp_path}/mmo.db",
    )
    top = make_worker_service(config, handler_class=EchoService)
    names = [s.name for s in top]
    assert names.index("database") < names.index("cache") < names.index("worker")
    db, cache = top.getServiceNamed("database"), top.getServiceNamed("cache")
    assert isinstance(db, SQLiteDatabase) and db.path == f"{tmp_path}/mmo.db"
    assert isinstance(cache, MemoryCache)
    worker = top.getServiceNamed("worker")
    assert isinstance(worker, WorkerService)
    assert worker.handler.db is db and worker.handler.cache is cache
    assert not db.running  # built, not started


def test_a_worker_without_data_settings_has_neither() -> None:
    """No --database and no --cache: the handler's db and cache are None."""
    config = WorkerConfig(yellow=YELLOW, handler="mmo.examples.echo:EchoService", service="echo")
    top = make_worker_service(config, handler_class=EchoService)
    assert "database" not in [s.name for s in top]
    worker = top.getServiceNamed("worker")
    assert isinstance(worker, WorkerService)
    assert worker.handler.db is None and worker.handler.cache is None


def test_handlers_may_replace_their_db_and_cache() -> None:
    """Assigning handler.db or .cache (a test fake, or None) overrides the runtime's."""
    cache = MemoryCache(task.Clock())
    handler = handler_factory(ServiceHandler, cache=cache)
    assert handler.cache is cache and handler.db is None
    handler.cache = None
    assert handler.cache is None and handler.runtime.cache is cache


def test_a_handler_refusing_its_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sso without $MMO_AUTH_KEY (and no demo mode): twistd shows a usage error naming
    the variable, before anything starts."""
    monkeypatch.delenv("MMO_AUTH_KEY", raising=False)
    monkeypatch.delenv("MMO_DEMO", raising=False)
    with pytest.raises(usage.UsageError, match=r"^\$MMO_AUTH_KEY: is not set"):
        Options().parseOptions(
            ["--yellow", YELLOW[0], "--handler", "mmo.examples.sso:SSOService", "--service", "sso"]
        )

"""The conformance suite (convostore.testing) over every backend on real servers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import convostore as cs
from convostore.testing import AsyncStoreConformance, StoreConformance

BACKENDS = ["memory", "sqlite", "postgresql", "mariadb", "redis"]
SQL_STORE = Path(cs.__file__).parent / "_async" / "sql_store.py"


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('conformance') / 'store.db'}"


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    from convostore._migrate import upgrade

    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def migrated_mysql(mysql_url: str) -> str:
    from convostore._migrate import upgrade

    upgrade(mysql_url)
    return mysql_url


def _target(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The URL and options of the backend this test runs on."""
    backend: str = request.param
    if backend == "memory":
        return f"memory://conformance-{uuid.uuid4().hex}", {}
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        return url, {"key_prefix": request.getfixturevalue("redis_prefix")}
    if not SQL_STORE.exists():
        pytest.skip("the SQL store is not available in this tree yet")
    fixture = {"sqlite": "sqlite_url", "postgresql": "migrated_postgres"}.get(
        backend, "migrated_mysql"
    )
    return request.getfixturevalue(fixture), {}


class TestStoreConformance(StoreConformance):
    @pytest.fixture(params=BACKENDS)
    def store_factory(self, request: pytest.FixtureRequest) -> Callable[[], Any]:
        url, options = _target(request)
        return lambda: cs.open_store(url, **options)


class TestAsyncStoreConformance(AsyncStoreConformance):
    @pytest.fixture(params=BACKENDS)
    def async_store_factory(self, request: pytest.FixtureRequest) -> Callable[[], Any]:
        url, options = _target(request)
        return lambda: cs.open_async_store(url, **options)


def test_named_memory_stores_share_data_and_private_ones_do_not() -> None:
    from convostore.testing import add_turn, make_record

    name = f"memory://shared-{uuid.uuid4().hex}"
    first, second = cs.open_store(name), cs.open_store(name)
    record = add_turn(first, first.create_conversation(make_record()))
    assert second.get_conversation(record.id, tenant=record.tenant) == record
    assert len(second.load_steps(record.id, tenant=record.tenant)) == 2
    private = cs.open_store("memory://")
    with pytest.raises(cs.ConversationNotFound):
        private.get_conversation(record.id, tenant=record.tenant)
    assert private.url == "memory://" and first.url == name
    with pytest.raises(cs.ConfigurationError):
        cs.open_store("memory://", key_prefix="x")

"""Store URLs are checked when a store is opened: an unknown or malformed option is a
ConfigurationError naming it and the accepted ones, on every backend, before any I/O."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import convostore as cs
from convostore.testing import add_turn, make_record

BAD = [
    # (URL, the option named in the error, an accepted option listed with it)
    ("sqlite:///{tmp}/x.db?bogus_option=1", "bogus_option", "pool_size"),
    ("sqlite:///{tmp}/x.db?timeout=soon", "timeout", None),
    ("postgresql://postgres@127.0.0.1:5432/x?bogus_option=1", "bogus_option", "sslmode"),
    ("postgresql://postgres@127.0.0.1:5432/x?pool_size=-1", "pool_size", None),
    ("postgres://postgres@127.0.0.1/x?prepare_threshold=sometimes", "prepare_threshold", None),
    ("mysql+pymysql://root@127.0.0.1:3306/x?bogus_option=1", "bogus_option", "charset"),
    ("mariadb://root@127.0.0.1/x?pool_pre_ping=maybe", "pool_pre_ping", None),
    ("redis://127.0.0.1:6379/0?bogus_option=1", "bogus_option", "socket_timeout"),
    ("redis://127.0.0.1:6379/0?socket_timeout=fast", "socket_timeout", None),
    ("rediss://127.0.0.1:6379/0?ssl_cert_reqs", "ssl_cert_reqs", "ssl_ca_certs"),
    ("redis+cluster://127.0.0.1:7000/?bogus_option=1", "bogus_option", "key_prefix"),
    ("rediss+cluster://127.0.0.1:7000/?max_connections=many", "max_connections", None),
    ("memory://?bogus_option=1", "bogus_option", "none"),
]


@pytest.mark.parametrize(("template", "option", "listed"), BAD)
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_bad_option_is_refused_at_open_naming_it(
    template: str, option: str, listed: str | None, flavour: str, tmp_path: Path
) -> None:
    url = template.format(tmp=tmp_path)
    opener = cs.open_store if flavour == "sync" else cs.open_async_store
    with pytest.raises(cs.ConfigurationError) as caught:
        opener(url)
    message = str(caught.value)
    assert repr(option) in message
    if listed is not None:
        assert "accepted options:" in message and listed in message
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


def test_the_error_prints_no_password() -> None:
    with pytest.raises(cs.ConfigurationError) as caught:
        cs.open_store("postgresql://app:s3cret@127.0.0.1/x?bogus=1")
    assert "s3cret" not in str(caught.value) and "app:***@" in str(caught.value)


def test_an_option_given_twice_or_without_a_value_is_refused() -> None:
    with pytest.raises(cs.ConfigurationError, match="given twice"):
        cs.open_store("redis://127.0.0.1:6379/0?socket_timeout=1&socket_timeout=2")
    with pytest.raises(cs.ConfigurationError, match="malformed option 'socket_timeout'"):
        cs.open_store("redis://127.0.0.1:6379/0?socket_timeout")


def test_unknown_keyword_options_are_refused_too(tmp_path: Path) -> None:
    with pytest.raises(cs.ConfigurationError, match="bogus_option"):
        cs.open_store("redis://127.0.0.1:6379/0", bogus_option=1)
    with pytest.raises(cs.ConfigurationError, match="bogus_option"):
        cs.open_store(f"sqlite:///{tmp_path}/x.db", bogus_option=1)
    with pytest.raises(cs.ConfigurationError, match="in-memory SQLite"):
        cs.open_store("sqlite://", pool_size=3)
    with pytest.raises(cs.ConfigurationError, match="PostgreSQL"):
        cs.open_store(f"sqlite:///{tmp_path}/x.db", prepare_threshold=None)


def test_driver_keywords_are_checked_against_the_client_that_takes_them() -> None:
    unreachable = ("redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1/")
    for url in unreachable:
        for opener in (cs.open_store, cs.open_async_store):
            with pytest.raises(cs.ConfigurationError, match="sockettimeout"):
                opener(url, sockettimeout=5)
    # accepted; the sync cluster client reads the slot map when it is made
    cs.open_async_store(unreachable[1], socket_timeout=5, max_connections=10)
    with pytest.raises(cs.StoreUnavailable, match="cannot be connected"):
        cs.open_store(unreachable[1], socket_timeout=5, max_connections=10)


def test_an_unreachable_cluster_is_store_unavailable_at_first_use() -> None:
    async def first_use() -> None:
        store = cs.open_async_store("redis+cluster://127.0.0.1:1/")
        try:
            await store.list_conversations(tenant="t")
        finally:
            await store.aclose()

    with pytest.raises(cs.StoreUnavailable):
        asyncio.run(first_use())


def test_accepted_redis_options_open_a_working_store(redis_url: str, redis_prefix: str) -> None:
    url = f"{redis_url}?socket_timeout=5&health_check_interval=10&key_prefix={redis_prefix}"
    with contextlib.closing(cs.open_store(url)) as store:
        record = add_turn(store, store.create_conversation(make_record()))
        assert len(store.load_steps(record.id, tenant=record.tenant)) == 2


def _engine_settings(store: Any) -> dict[str, Any]:
    engine = store._engine
    assert engine is not None
    pool = engine.pool
    return {
        "size": pool.size(),
        "overflow": pool._max_overflow,
        "timeout": pool.timeout(),
        "pre_ping": pool._pre_ping,
    }


@pytest.mark.parametrize("via", ["url", "options"])
def test_pool_settings_reach_the_engine(via: str, postgres_url: str) -> None:
    from convostore._migrate import upgrade

    upgrade(postgres_url)
    settings = {"pool_size": 2, "max_overflow": 1, "pool_timeout": 7, "pool_pre_ping": True}
    if via == "url":
        query = "&".join(f"{k}={str(v).lower()}" for k, v in settings.items())
        store = cs.open_store(f"{postgres_url}?{query}&prepare_threshold=none")
    else:
        store = cs.open_store(postgres_url, prepare_threshold=None, **settings)
    with contextlib.closing(store):
        record = add_turn(store, store.create_conversation(make_record()))
        assert store.get_conversation(record.id, tenant=record.tenant).turn_count == 1
        assert _engine_settings(store) == {
            "size": 2,
            "overflow": 1,
            "timeout": 7,
            "pre_ping": True,
        }
        with store._engine.connect() as conn:  # type: ignore[union-attr]
            assert conn.connection.dbapi_connection.prepare_threshold is None


def test_defaults_are_the_documented_ones(postgres_url: str) -> None:
    from convostore._migrate import upgrade

    upgrade(postgres_url)
    store = cs.open_store(postgres_url)
    with contextlib.closing(store):
        store.list_conversations(tenant="t")
        assert _engine_settings(store) == {
            "size": 5,
            "overflow": 10,
            "timeout": 30,
            "pre_ping": False,  # the liveness check runs instead (_sql.install_liveness_check)
        }
    assert asyncio.run(_async_defaults(postgres_url)) == (5, 10)


async def _async_defaults(url: str) -> tuple[int, int]:
    store = cs.open_async_store(url)
    try:
        await store.list_conversations(tenant="t")
        pool = store._engine.sync_engine.pool
        return pool.size(), pool._max_overflow
    finally:
        await store.aclose()

"""Shared fixtures: real servers (PostgreSQL, MariaDB, Redis) and the emulator over HTTP.

Server URLs come from the environment, defaulting to the loopback services:

    CONVOSTORE_TEST_POSTGRES  postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    CONVOSTORE_TEST_MYSQL     mysql+pymysql://root@127.0.0.1:3306/mysql
    CONVOSTORE_TEST_REDIS     redis://127.0.0.1:6379/0

Each test session works in a database (or Redis key prefix) of its own, dropped at the end.
A server that cannot be reached skips its tests with the reason, or fails them when CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

POSTGRES_ADMIN = os.environ.get(
    "CONVOSTORE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN = os.environ.get("CONVOSTORE_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/mysql")
REDIS_URL = os.environ.get("CONVOSTORE_TEST_REDIS", "redis://127.0.0.1:6379/0")

RUN_ID = uuid.uuid4().hex[:10]


def unavailable(what: str, exc: BaseException) -> None:
    """Skip (or, under CI=true, fail) because a server is missing."""
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI requires it", pytrace=False)
    pytest.skip(f"{message}; start it to run these tests (see README)")


def _swap_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session (not yet migrated)."""
    import sqlalchemy as sa

    name = f"convostore_test_{RUN_ID}"
    try:
        admin = sa.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    yield _swap_database(POSTGRES_ADMIN, name)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    """URL of a fresh MariaDB/MySQL database for this test session (not yet migrated)."""
    import sqlalchemy as sa

    name = f"convostore_test_{RUN_ID}"
    try:
        admin = sa.create_engine(MYSQL_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except Exception as exc:
        unavailable("MariaDB/MySQL", exc)
    yield _swap_database(MYSQL_ADMIN, name) + "?charset=utf8mb4"
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis server; isolate by key prefix (see ``redis_prefix``)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:
        unavailable("Redis", exc)
    yield REDIS_URL
    for key in client.scan_iter(match=f"cstest{RUN_ID}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own (cleaned up with the session)."""
    return f"cstest{RUN_ID}:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[object]:
    """One emulator served over real HTTP for the whole session."""
    from convostore.emulator import Emulator

    with Emulator() as emu:
        yield emu


@pytest.fixture
def emulator(emulator_server: object) -> Iterator[object]:
    """The session's emulator with its faults, settings and request log reset for this test.

    Stored interactions are kept (ids are unique); use ``emulator.expire()`` to drop them.
    """
    emulator_server.reset()  # type: ignore[attr-defined]
    yield emulator_server
    emulator_server.reset()  # type: ignore[attr-defined]

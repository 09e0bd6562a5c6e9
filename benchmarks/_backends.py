"""The backends under measurement: a scratch place on each, its floor, and its footprint.

Server URLs come from the environment (admin URLs: a scratch database is created, migrated
with ``convostore._migrate.upgrade`` and dropped afterwards; Redis keys live under a prefix of
their own and are deleted afterwards)::

    CONVOSTORE_BENCH_POSTGRES  default postgresql://postgres@127.0.0.1:5432/postgres
    CONVOSTORE_BENCH_MYSQL     default mysql://root@127.0.0.1:3306/mysql
    CONVOSTORE_BENCH_REDIS     default redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ._floors import Floor, MemoryFloor, RedisFloor, SQLFloor

BACKENDS = ("sqlite", "postgresql", "mariadb", "redis", "memory")

POSTGRES = os.environ.get(
    "CONVOSTORE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MYSQL = os.environ.get("CONVOSTORE_BENCH_MYSQL", "mysql://root@127.0.0.1:3306/mysql")
REDIS = os.environ.get("CONVOSTORE_BENCH_REDIS", "redis://127.0.0.1:6379/0")


class Unavailable(Exception):
    """The backend cannot be reached; its rows are reported as skipped."""


@dataclass
class Env:
    """One backend, ready: open stores with ``url`` and ``options``."""

    name: str
    url: str
    floor: Floor
    options: dict[str, Any] = field(default_factory=dict)
    size: Callable[[], int] | None = None
    """Bytes the backend holds for convostore's data now (None: measured by tracemalloc)."""


def _server_database(admin: str, create: str, drop: str) -> Iterator[str]:
    import sqlalchemy as sa

    from convostore._migrate import upgrade
    from convostore._sql import normalize_url

    name = f"convostore_bench_{uuid.uuid4().hex[:8]}"
    try:
        engine = sa.create_engine(
            normalize_url(admin, is_async=False), isolation_level="AUTOCOMMIT"
        )
        with engine.connect() as conn:
            conn.execute(sa.text(create.format(name)))
    except Exception as exc:  # any driver error here means "not reachable"
        raise Unavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}") from exc
    try:
        url = sa.make_url(admin).set(database=name).render_as_string(False)
        upgrade(url)
        yield url
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(drop.format(name)))
        engine.dispose()


@contextmanager
def open_backend(name: str) -> Iterator[Env]:
    """A scratch place on backend ``name``, removed on exit.

    Raises:
        Unavailable: the server cannot be reached.
    """
    if name == "memory":
        yield Env(name, "memory://", MemoryFloor())
    elif name == "sqlite":
        yield from _sqlite()
    elif name == "postgresql":
        yield from _postgresql()
    elif name == "mariadb":
        yield from _mariadb()
    elif name == "redis":
        yield from _redis()
    else:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")


def _sqlite() -> Iterator[Env]:
    import sqlite3

    from convostore._migrate import upgrade

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.db")
        upgrade(f"sqlite:///{path}")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")

        def size() -> int:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return os.path.getsize(path)

        floor = SQLFloor("sqlite", conn)
        # sqlite3 in autocommit mode: the floor's commit() is a no-op there, so it sends
        # BEGIN IMMEDIATE / COMMIT itself
        floor.conn = _AutocommitSQLite(conn)
        try:
            yield Env("sqlite", f"sqlite:///{path}", floor, size=size)
        finally:
            conn.close()


class _AutocommitSQLite:
    """A sqlite3 connection whose commit() ends the transaction the floor began."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def cursor(self) -> Any:
        return self._conn.cursor()

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


def _postgresql() -> Iterator[Env]:
    import psycopg

    for url in _server_database(
        POSTGRES, 'CREATE DATABASE "{}"', 'DROP DATABASE IF EXISTS "{}" WITH (FORCE)'
    ):
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))

        def size(conn: Any = conn) -> int:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_total_relation_size('steps') + pg_total_relation_size('turns')"
                    " + pg_total_relation_size('conversations')"
                )
                value = int(cursor.fetchone()[0])
            conn.commit()
            return value

        try:
            yield Env("postgresql", url, SQLFloor("postgresql", conn), size=size)
        finally:
            conn.close()


def _mariadb() -> Iterator[Env]:
    import pymysql
    import sqlalchemy as sa

    for url in _server_database(
        MYSQL, "CREATE DATABASE `{}` CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS `{}`"
    ):
        parts = sa.make_url(url)
        conn = pymysql.connect(
            host=parts.host,
            port=parts.port or 3306,
            user=parts.username,
            password=parts.password or "",
            database=parts.database,
            charset="utf8mb4",
        )

        def size(conn: Any = conn) -> int:
            with conn.cursor() as cursor:
                cursor.execute("ANALYZE TABLE steps, turns, conversations")
                cursor.fetchall()
                cursor.execute(
                    "SELECT SUM(data_length + index_length) FROM information_schema.tables"
                    " WHERE table_schema = DATABASE()"
                )
                value = int(cursor.fetchone()[0])
            conn.commit()
            return value

        try:
            yield Env("mariadb", url, SQLFloor("mysql", conn), size=size)
        finally:
            conn.close()


def _redis() -> Iterator[Env]:
    import redis

    prefix = f"csbench{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    def size() -> int:
        total = 0
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            total += int(client.memory_usage(key, samples=0) or 0)
        return total

    try:
        yield Env("redis", REDIS, RedisFloor(client, prefix), {"key_prefix": prefix}, size=size)
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()

"""SQL schema and dialect helpers shared by the sync and asyncio SQL stores.

The tables here describe the schema Alembic creates (``migrations/versions``); a test checks
that autogenerate finds no difference between the two on every dialect. Nothing here opens a
connection.

Step payloads are written as compact JSON text, serialised once, and read back as text and
decoded here. On PostgreSQL they live in a JSONB column so they stay queryable, except the
payloads JSONB cannot hold exactly (a U+0000 in a string is refused outright; a float such as
``1e+16`` or ``-0.0`` comes back as an int or as 0): those are kept verbatim in the same row's
``payload_text`` with ``payload`` NULL, so every step round-trips on every dialect. MariaDB
and MySQL do the same for payloads nested deeper than their JSON checks accept.
"""

from __future__ import annotations

import json
import re
import select
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import event
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import URL, Dialect, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler

from ._core.store_rules import (
    APPEND_FIELDS,
    PENDING_PROGRESS_FIELDS,
    REQUIRES_ACTION,
    UPDATE_FIELDS,
    decode_outbox,
    decode_pending,
    dumps,
    loads,
    pending_data,
)
from ._exceptions import (
    ConfigurationError,
    CorruptRecordError,
    SchemaError,
    StoreError,
    StoreUnavailable,
    ValidationError,
)
from ._urls import redact
from .models import (
    ConversationRecord,
    OutboxItem,
    PendingTurnRecord,
    StoredStep,
    TurnCommit,
    TurnRecord,
)

__all__ = [
    "compactions",
    "conversations",
    "install_sqlite_hooks",
    "jsonb_safe",
    "metadata",
    "normalize_url",
    "outbox",
    "pending_turns",
    "steps",
    "translate_errors",
    "turns",
]

# --------------------------------------------------------------------------- column types


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out. SQLite and MySQL keep no zone, so values are stored as
    naive UTC there and get their zone back on read; MySQL needs ``fsp=6`` to keep the
    microseconds that listing order and cursors rely on."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "mysql":
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # a SQLite row written by another tool
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def _id() -> sa.types.TypeEngine[str]:
    # ids are ASCII (models.check_id): on MySQL an ascii column keeps composite indexes far
    # under the 3072-byte key limit. Binary collations everywhere make ids case-sensitive and
    # order them bytewise, so listing ties break the same way on every backend.
    return (
        sa.String(200)
        .with_variant(postgresql.VARCHAR(200, collation="C"), "postgresql")
        .with_variant(mysql.VARCHAR(200, charset="ascii", collation="ascii_bin"), "mysql")
    )


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


_KEY = sa.String(200).with_variant(
    mysql.VARCHAR(200, charset="utf8mb4", collation="utf8mb4_bin"), "mysql"
)

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("tenant", _id(), nullable=False),
    sa.Column("user", _id(), nullable=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("model", sa.Text(), nullable=False),
    sa.Column("config", _json(), nullable=False),
    sa.Column("head_interaction_id", sa.Text(), nullable=True),
    sa.Column("head_created_at", UTCDateTime(), nullable=True),
    sa.Column("head_model", sa.Text(), nullable=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("turn_count", sa.Integer(), nullable=False),
    sa.Column("step_count", sa.Integer(), nullable=False),
    sa.Column("last_turn_hash", sa.Text(), nullable=True),
    sa.Column("metadata", _json(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("context_epoch", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Index(None, "tenant", "created_at", "id"),
    sa.Index(None, "tenant", "user", "created_at", "id"),
    sa.Index(None, "created_at", "id"),
    sa.Index(None, "expires_at"),
    sa.Index(None, "updated_at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

turns = sa.Table(
    "turns",
    metadata,
    sa.Column(
        "conversation_id",
        _id(),
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("interaction_id", sa.Text(), nullable=True),
    sa.Column("previous_interaction_id", sa.Text(), nullable=True),
    sa.Column("model", sa.Text(), nullable=True),
    sa.Column("mode_used", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("usage", _json(), nullable=True),
    sa.Column("idempotency_key", _KEY, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("audit_hash", sa.Text(), nullable=True),
    sa.Column("context_epoch", sa.Integer(), nullable=False, server_default=sa.text("0")),
    # NULL keys never collide (SQL unique semantics on all three dialects)
    sa.UniqueConstraint("conversation_id", "idempotency_key"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column(
        "conversation_id",
        _id(),
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("turn_seq", sa.Integer(), nullable=False),
    sa.Column("type", sa.Text(), nullable=False),
    sa.Column("payload", _json(), nullable=True),
    # JSON text of a payload that JSONB cannot hold losslessly; ``payload`` is NULL then
    sa.Column("payload_text", sa.Text(), nullable=True),
    # seq rides along so "first/last step of a turn" is answered from the index alone
    sa.Index(None, "conversation_id", "turn_seq", "seq"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# JSON text no backend looks into; LONGTEXT on MySQL, whose TEXT stops at 64 KB
_DOCUMENT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")

# A turn in flight (at most one per conversation). The fields no query filters on and that
# never change after begin_turn (PENDING_DATA_FIELDS) are one JSON document in ``data``,
# kept as text so input steps round-trip verbatim (JSONB would not keep every payload).
pending_turns = sa.Table(
    "pending_turns",
    metadata,
    sa.Column(
        "conversation_id",
        _id(),
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("tenant", _id(), nullable=False),
    sa.Column("seq", sa.Integer(), nullable=False),
    sa.Column("planned_version", sa.Integer(), nullable=False),
    sa.Column("idempotency_key", _KEY, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("lease_owner", _id(), nullable=False),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("interaction_id", sa.Text(), nullable=True),
    sa.Column("continuation_token", sa.Text(), nullable=True),
    sa.Column("hop_ids", _DOCUMENT, nullable=False),
    sa.Column("data", _DOCUMENT, nullable=False),
    sa.Index(None, "created_at", "conversation_id"),
    sa.Index(None, "lease_expires_at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Compactions: appended, never rewritten (the covered steps stay in ``steps``). The record
# as a JSON document in ``data`` (its replacement steps are payloads: kept as text, verbatim).
compactions = sa.Table(
    "compactions",
    metadata,
    sa.Column(
        "conversation_id",
        _id(),
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("epoch", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("last_seq", sa.Integer(), nullable=False),
    sa.Column("last_turn", sa.Integer(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("data", _DOCUMENT, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# Server-side effects still to be done. No foreign key: an item outlives its conversation.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("tenant", _id(), nullable=False),
    sa.Column("conversation_id", _id(), nullable=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Index(None, "next_attempt_at"),
    sa.Index(None, "tenant", "created_at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

# --------------------------------------------------------------------------- JSONB safety

# JSONB rejects U+0000 in strings, and stores numbers as ``numeric``: a float written with an
# exponent (1e+16) or negative zero comes back as an int or as 0. Both would break the
# verbatim round trip, so such payloads go to ``payload_text`` instead.
_MAYBE_UNSAFE = re.compile(r"[0-9][eE]|-0")


def jsonb_safe(value: Any, text: str) -> bool:
    """Whether JSONB keeps ``value`` (whose JSON is ``text``) exactly."""
    if "\\u0000" in text:
        return False
    if not _MAYBE_UNSAFE.search(text):
        return True
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and ("e" in repr(item) or repr(item) == "-0.0"):
            return False
    return True


# MariaDB's CHECK (json_valid(...)) on JSON columns fails past 32 levels of nesting, MySQL
# refuses documents deeper than 100; a deeper step goes to ``payload_text``.
_MYSQL_MAX_DEPTH = 30


def mysql_json_safe(value: Any, text: str) -> bool:
    """Whether MariaDB/MySQL accept ``value`` (whose JSON is ``text``) in a JSON column."""
    if text.count("{") + text.count("[") <= _MYSQL_MAX_DEPTH:
        return True  # cannot nest deeper than it has openers
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > _MYSQL_MAX_DEPTH:
            return False
        if isinstance(item, dict):
            stack.extend((sub, depth + 1) for sub in item.values() if isinstance(sub, dict | list))
        elif isinstance(item, list):
            stack.extend((sub, depth + 1) for sub in item if isinstance(sub, dict | list))
    return True


_NATIVE_JSON_CHECKS: dict[str, Callable[[Any, str], bool]] = {
    "postgresql": jsonb_safe,
    "mysql": mysql_json_safe,
}

# --------------------------------------------------------------------------- URLs and engines

_SYNC_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg", "mysql": "pymysql"}
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "psycopg", "mysql": "aiomysql"}
_BACKENDS = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
_BACKENDS.update({"mysql": "mysql", "mariadb": "mysql"})


def normalize_url(url: str, *, is_async: bool) -> URL:
    """The SQLAlchemy URL for a store URL, with the driver convostore uses for the flavour.

    ``postgres://``, ``postgresql://``, ``mysql://``, ``mariadb://`` and any ``+driver``
    suffix are accepted; the driver is replaced by the one the flavour needs.

    Raises:
        ConfigurationError: not a SQL URL this store supports.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"not a SQL URL: {redact(url)!r}") from exc
    backend = _BACKENDS.get(parsed.get_backend_name())
    if backend is None:
        raise ConfigurationError(f"unsupported SQL URL scheme in {redact(url)!r}")
    driver = (_ASYNC_DRIVERS if is_async else _SYNC_DRIVERS)[backend]
    parsed = parsed.set(drivername=f"{backend}+{driver}")
    if backend == "mysql" and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def engine_options(url: URL) -> dict[str, Any]:
    """``create_engine`` keyword arguments for a normalised URL."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        options: dict[str, Any] = {"connect_args": {"timeout": 30.0}}
        if is_memory_sqlite(url):
            options["poolclass"] = sa.StaticPool
            options["connect_args"]["check_same_thread"] = False
        return options
    # no pre-ping (a round trip on every checkout): ``install_liveness_check`` instead
    options = {"pool_pre_ping": False}
    if backend == "mysql":
        # An append re-reads the idempotency key after a lost version race; under
        # REPEATABLE READ that read would see the transaction's old snapshot.
        options["isolation_level"] = "READ COMMITTED"
        # Every operation ends its own transaction (committed, or rolled back when its
        # connection closes); the pool's ROLLBACK on return would be one more round trip
        # after each write (pymysql sends it even with no transaction open).
        options["pool_reset_on_return"] = None
    return options


# Pool settings a SQL store takes as options or in its URL's query (the store strips them
# from the URL), with SQLAlchemy's QueuePool defaults: pool_size 5, max_overflow 10,
# pool_timeout 30 s, pool_recycle off, pool_pre_ping off (the liveness check of
# ``install_liveness_check`` runs on every checkout instead; pre-ping adds a round trip to
# it). prepare_threshold
# is psycopg's: after that many runs of one query it is prepared on the server, which a
# transaction-mode pooler (PgBouncer < 1.21, or max_prepared_statements = 0) cannot follow;
# ``none`` never prepares.
POOL_SETTINGS = ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping")
STORE_SETTINGS = (*POOL_SETTINGS, "prepare_threshold")


def settings_options(url: URL, settings: dict[str, Any]) -> dict[str, Any]:
    """``create_engine`` keyword arguments for the pool settings of ``STORE_SETTINGS``.

    Raises:
        ConfigurationError: a setting that does not apply to this database.
    """
    backend = url.get_backend_name()
    options = {name: settings[name] for name in POOL_SETTINGS if name in settings}
    if options and is_memory_sqlite(url):
        raise ConfigurationError(
            f"pool settings ({', '.join(sorted(options))}) do not apply to an in-memory "
            "SQLite database: it has one connection"
        )
    if "pool_recycle" in options:
        options["pool_recycle"] = int(options["pool_recycle"])
    if "prepare_threshold" in settings:
        if backend != "postgresql":
            raise ConfigurationError("prepare_threshold applies to PostgreSQL (psycopg) only")
        options["connect_args"] = {"prepare_threshold": settings["prepare_threshold"]}
    return options


def _set_wal(cursor: Any, *, patience: float = 30.0) -> None:
    """Put the file in WAL mode (persistent: once done, every later connection finds it so).

    Switching the journal mode needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy handler, when waiting could deadlock: two processes
    opening a new file together both try the switch. So retry with a short backoff.
    """
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # the driver's OperationalError (sqlite3 or aiosqlite)
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def install_liveness_check(engine: Engine | AsyncEngine) -> None:
    """Check every connection the pool hands out without a round trip (PostgreSQL, MySQL).

    An idle connection that the server closed (a restart, a kill, an idle timeout) has the
    server's goodbye waiting on it: an error message, or the end of the stream. A sound idle
    connection has nothing to read. So a readable socket (or a buffered reply, or EOF, for
    the asyncio driver that reads ahead) raises ``DisconnectionError``, and the pool
    discards that connection and connects anew, as pre-ping would after a ``SELECT 1`` that
    costs a round trip on every checkout. What it cannot see, a peer gone without closing
    (a cable cut), pre-ping would wait for too; ``pool_pre_ping=True`` adds it anyway.
    """
    if isinstance(engine, AsyncEngine):
        engine = engine.sync_engine

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        conn = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        if not _connection_is_quiet(conn):
            raise DisconnectionError("the server closed the connection while it was idle")


def _connection_is_quiet(conn: Any) -> bool:
    """False when the server said something to an idle connection, or closed it."""
    try:
        reader = getattr(conn, "_reader", None)  # aiomysql: the event loop may have read it
        pgconn = getattr(conn, "pgconn", None)  # psycopg, both flavours
        if reader is not None:
            if reader.at_eof() or reader._buffer:
                return False
            fd = conn._writer.transport.get_extra_info("socket").fileno()
        elif pgconn is not None:
            fd = pgconn.socket  # raises on a closed connection
        else:
            sock = getattr(conn, "_sock", None)  # pymysql
            if sock is None:
                return False
            fd = sock.fileno()
        readable, _, _ = select.select([fd], [], [], 0)
    except Exception:  # a closed connection, or a socket gone: connect anew
        return False
    return not readable


WRITE_WITHOUT_WAITING: ContextVar[bool] = ContextVar(
    "convostore_write_without_waiting", default=False
)
"""Set by the asyncio SQLite store around a write it runs in the event loop's thread: a
``BEGIN IMMEDIATE`` that would wait for another writer raises :class:`WouldWait` instead."""


class WouldWait(Exception):
    """Internal: under ``WRITE_WITHOUT_WAITING``, the write lock was not free at once. Nothing
    was written (the transaction did not begin); the operation is re-run where it may wait."""


def begin_sqlite(cursor: Any, sql: str, error: type[Exception]) -> None:
    """Run a SQLite ``BEGIN``; a ``BEGIN IMMEDIATE`` under ``WRITE_WITHOUT_WAITING`` does
    not wait for the write lock (busy_timeout 0 for that statement): WouldWait if taken."""
    if sql != "BEGIN IMMEDIATE" or not WRITE_WITHOUT_WAITING.get():
        cursor.execute(sql)
        return
    cursor.execute("PRAGMA busy_timeout = 0")
    try:
        cursor.execute(sql)
    except error as exc:
        if "locked" in str(exc).lower() or "busy" in str(exc).lower():
            raise WouldWait(str(exc)) from exc
        raise
    finally:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


SQLITE_BUSY_TIMEOUT_MS = 30000


def install_sqlite_hooks(engine: Engine | AsyncEngine) -> None:
    """Take over SQLite transaction control (SQLAlchemy's documented recipe).

    pysqlite and aiosqlite otherwise begin transactions lazily, so two processes that read
    then write deadlock into ``database is locked``. With the driver in autocommit mode we
    emit ``BEGIN`` ourselves: ``BEGIN IMMEDIATE`` when the connection carries the
    ``convostore_write`` execution option, so a writer waits (busy_timeout) for the write
    lock up front instead of failing half way.
    """
    if isinstance(engine, AsyncEngine):
        engine = engine.sync_engine

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get("convostore_read", False):
            # a read of one statement (or of several that need not agree) needs no
            # transaction: each statement reads one snapshot in autocommit mode, and a
            # BEGIN and a ROLLBACK around it cost more than the statement
            return
        write = options.get("convostore_write", False)
        sql = "BEGIN IMMEDIATE" if write else "BEGIN"
        # on the driver's cursor: a statement through the Connection costs more than the
        # BEGIN itself. Its errors are wrapped as Connection.execute would wrap them.
        error = conn.dialect.loaded_dbapi.Error
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            begin_sqlite(cursor, sql, error)
        except error as exc:
            raise DBAPIError.instance(sql, None, exc, error) from exc
        finally:
            cursor.close()


# --------------------------------------------------------------------------- errors


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Translate driver errors into the store's error tree, chained to the original."""
    try:
        yield
    except (OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError) as exc:
        if isinstance(exc, OperationalError) and _missing_table(exc):
            raise schema_error(url, "missing") from exc
        if _refused_json(exc):
            raise ValidationError(
                f"{url} refused the value (JSON nested deeper than this server accepts?): "
                f"{_first_line(exc)}"
            ) from exc
        raise StoreUnavailable(f"{url}: {_first_line(exc)}") from exc
    except ProgrammingError as exc:
        if _missing_table(exc):
            raise schema_error(url, "missing") from exc
        if "prepared statement" in _first_line(exc):
            # psycopg prepared the query on a server connection a pooler gave another client
            raise StoreError(
                f"{url}: {_first_line(exc)} (behind a transaction-mode PgBouncer older than "
                "1.21? add ?prepare_threshold=none to the store URL)"
            ) from exc
        raise StoreError(f"{url}: {_first_line(exc)}") from exc
    except DataError as exc:
        raise ValidationError(f"{url} refused the value: {_first_line(exc)}") from exc
    except IntegrityError as exc:
        raise StoreError(f"{url}: integrity error: {_first_line(exc)}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"{url}: {_first_line(exc)}") from exc
        raise StoreError(f"{url}: {_first_line(exc)}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"{url}: {_first_line(exc)}") from exc
    except OSError as exc:
        raise StoreUnavailable(f"{url}: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


# MariaDB checks JSON columns with json_valid(), which fails past 31 levels of nesting
# (error 4025, a failed CHECK); MySQL refuses documents deeper than 100 (error 3157). Both
# arrive as OperationalError, yet the value is at fault, not the connection.
_REFUSED_JSON_CODES = frozenset({4025, 3157})


def _refused_json(exc: BaseException) -> bool:
    args: Any = getattr(getattr(exc, "orig", None), "args", ())
    return bool(args) and args[0] in _REFUSED_JSON_CODES


def _missing_table(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return (
        "no such table" in text  # SQLite
        or ("relation" in text and "does not exist" in text)  # PostgreSQL
        or ("table" in text and "doesn't exist" in text)  # MySQL/MariaDB
    )


def schema_error(url: str, state: str) -> SchemaError:
    """The error for a database whose schema is missing or behind; names the fix."""
    return SchemaError(
        f"the convostore schema of {url} is {state}; run: convostore db upgrade {url}"
    )


# --------------------------------------------------------------------------- rows <-> records

_CONVERSATION_COLUMNS = tuple(c.name for c in conversations.columns)
_TURN_COLUMNS = tuple(c.name for c in turns.columns)


def conversation_row(record: ConversationRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _CONVERSATION_COLUMNS}


def turn_row(turn: TurnRecord) -> dict[str, Any]:
    row = {name: getattr(turn, name) for name in _TURN_COLUMNS}
    # psycopg adapts Enum members by name; the column holds the value
    row["reason"] = str(turn.reason)
    return row


def step_rows(step_list: Sequence[StoredStep], *, dialect_name: str) -> list[dict[str, Any]]:
    """Rows for ``step_insert``; a payload the dialect's JSON column cannot keep exactly
    goes to ``payload_text`` instead (see the module docstring)."""
    check = _NATIVE_JSON_CHECKS.get(dialect_name)
    rows = []
    for step in step_list:
        text = dumps(step.payload)
        native = check is None or check(step.payload, text)
        rows.append(
            {
                "conversation_id": step.conversation_id,
                "seq": step.seq,
                "turn_seq": step.turn_seq,
                "type": step.type,
                "payload": text if native else None,
                "payload_text": None if native else text,
            }
        )
    return rows


def step_insert(dialect_name: str) -> sa.Insert:
    """The INSERT for ``step_rows``: payloads are bound as JSON text, serialised once."""
    text = sa.bindparam("payload", type_=sa.Text())
    payload: Any = sa.cast(text, postgresql.JSONB()) if dialect_name == "postgresql" else text
    return steps.insert().values(
        conversation_id=sa.bindparam("conversation_id"),
        seq=sa.bindparam("seq"),
        turn_seq=sa.bindparam("turn_seq"),
        type=sa.bindparam("type"),
        payload=payload,
        payload_text=sa.bindparam("payload_text"),
    )


def step_select(dialect_name: str) -> sa.Select[Any]:
    """Steps as ``(seq, turn_seq, payload JSON text)``, unordered.

    As few columns as possible: the driver's per-column decoding is most of a long read.
    The step type is taken from the payload (the write path checked they agree).
    """
    payload: Any = steps.c.payload
    if dialect_name == "postgresql":
        payload = sa.func.coalesce(steps.c.payload_text, sa.cast(payload, sa.Text()))
    elif dialect_name == "mysql":
        payload = sa.func.coalesce(steps.c.payload_text, payload, type_=sa.Text())
    else:
        payload = sa.type_coerce(payload, sa.Text())  # JSON text as stored, no json.loads
    return sa.select(steps.c.seq, steps.c.turn_seq, payload)


_STEP_FIELDS = set(StoredStep.model_fields)
_raw_decode = json.JSONDecoder().raw_decode
_new = object.__new__
_set = object.__setattr__


def _stored_step(conversation_id: str, seq: int, turn_seq: int, kind: str, payload: Any) -> Any:
    # What StoredStep.model_construct does, minus its per-field default handling: every
    # field is given here, and this runs 10,000 times for a long history. The fields-set is
    # shared: the model is frozen, and model_copy copies the set before touching it.
    step = _new(StoredStep)
    _set(
        step,
        "__dict__",
        {
            "conversation_id": conversation_id,
            "seq": seq,
            "turn_seq": turn_seq,
            "type": kind,
            "payload": payload,
        },
    )
    _set(step, "__pydantic_fields_set__", _STEP_FIELDS)
    _set(step, "__pydantic_extra__", None)
    _set(step, "__pydantic_private__", None)
    return step


def _decode_leniently(conversation_id: str, seq: int, text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise CorruptRecordError(
            f"step {seq} of {conversation_id!r} is not valid JSON: {exc}"
        ) from exc


def decode_steps(conversation_id: str, rows: Sequence[Any]) -> list[StoredStep]:
    """Build steps from rows without pydantic validation (reads are hot; writes validated).

    Raises:
        CorruptRecordError: a row's payload is missing, not JSON, or not a JSON object.
    """
    out = []
    for seq, turn_seq, text in rows:
        try:
            # what convostore wrote is compact: skip the whitespace scans of json.loads
            value, end = _raw_decode(text)
            if end != len(text):
                raise ValueError("text after the value")
        except (TypeError, ValueError):
            value = _decode_leniently(conversation_id, seq, text)
        if type(value) is not dict or type(value.get("type")) is not str:
            raise CorruptRecordError(
                f"step {seq} of {conversation_id!r} is not a JSON object with a string type"
            )
        out.append(_stored_step(conversation_id, seq, turn_seq, value["type"], value))
    return out


STORED = {"stored": True}
"""Validation context of records read back from a store (see ``ConversationRecord._json``)."""


def decode_conversation(row: Any) -> ConversationRecord:
    """A conversation from a result row, or from a ``{column: value}`` mapping."""
    values = row if isinstance(row, dict) else dict(row._mapping)
    try:
        return ConversationRecord.model_validate(values, context=STORED)
    except PydanticValidationError as exc:
        raise CorruptRecordError(f"conversation row does not parse: {exc}") from exc


_PENDING_COLUMNS = tuple(c.name for c in pending_turns.columns if c.name not in ("hop_ids", "data"))


def pending_row(pending: PendingTurnRecord) -> dict[str, Any]:
    row = {name: getattr(pending, name) for name in _PENDING_COLUMNS}
    row.update(hop_ids=dumps(pending.hop_ids), data=pending_data(pending))
    return row


def decode_pending_row(row: Any) -> PendingTurnRecord:
    fields = dict(row._mapping)
    try:
        data = loads(fields.pop("data"), "stored pending turn")
        fields["hop_ids"] = loads(fields["hop_ids"], "stored pending turn")
        return decode_pending({**fields, **data})
    except (TypeError, KeyError) as exc:
        raise CorruptRecordError(f"pending turn row does not parse: {exc}") from exc


def outbox_row(item: OutboxItem) -> dict[str, Any]:
    return item.model_dump()


def decode_outbox_row(row: Any) -> OutboxItem:
    return decode_outbox(dict(row._mapping))


def decode_turn(row: Any) -> TurnRecord:
    try:
        return TurnRecord.model_validate(dict(row._mapping))
    except PydanticValidationError as exc:
        raise CorruptRecordError(f"turn row does not parse: {exc}") from exc


# --------------------------------------------------------------------------- prepared statements

# Built once with bind parameters: building Core statements per call costs more than the
# round trip on SQLite, and the compiled form is cached under the statement's cache key.

_conv = conversations.c
_SCOPE = sa.and_(_conv.id == sa.bindparam("w_id"), _conv.tenant == sa.bindparam("w_tenant"))


def _versioned_update(fields: Sequence[str]) -> sa.Update:
    return (
        conversations.update()
        .where(_SCOPE, _conv.version == sa.bindparam("w_version"))
        .values({_conv[name]: sa.bindparam(f"v_{name}", type_=_conv[name].type) for name in fields})
    )


APPEND_UPDATE = _versioned_update(APPEND_FIELDS)
SETTINGS_UPDATE = _versioned_update(UPDATE_FIELDS)
SELECT_CONVERSATION = sa.select(conversations).where(_SCOPE)
SELECT_VERSION = sa.select(_conv.version).where(_SCOPE)
SELECT_TURN_BY_KEY = (
    sa.select(turns)
    .join(conversations, _conv.id == turns.c.conversation_id)
    .where(_SCOPE, turns.c.conversation_id == sa.bindparam("w_id"))
    .where(turns.c.idempotency_key == sa.bindparam("w_key"))
)


_pend = pending_turns.c
_PENDING_SCOPE = sa.and_(
    _pend.conversation_id == sa.bindparam("w_id"), _pend.tenant == sa.bindparam("w_tenant")
)
SELECT_PENDING = sa.select(pending_turns).where(_PENDING_SCOPE)
# An INSERT guarded by the version check: it writes a row only while the conversation is at
# the planned version and count (locked until the commit, so no append slips in between).
# A second turn in flight collides on the primary key.
# (SQLAlchemy keeps the rowcount of an INSERT only when asked to.)
BEGIN_PENDING = (
    pending_turns.insert()
    .from_select(
        [c.name for c in pending_turns.columns],
        sa.select(*(sa.bindparam(c.name, type_=c.type) for c in pending_turns.columns))
        .where(
            _SCOPE,
            _conv.version == sa.bindparam("w_version"),
            _conv.turn_count == sa.bindparam("w_turns"),
        )
        .with_for_update(),
    )
    .execution_options(preserve_rowcount=True)
)
UPDATE_PENDING = (
    pending_turns.update()
    .where(
        _PENDING_SCOPE,
        _pend.idempotency_key == sa.bindparam("w_key"),
        _pend.lease_owner == sa.bindparam("w_owner"),
    )
    .values(
        {
            _pend[name]: sa.bindparam(f"v_{name}", type_=_pend[name].type)
            for name in PENDING_PROGRESS_FIELDS
        }
    )
)
# compare-and-set: taken only when the lease expired, or renewed by its holder
CLAIM_PENDING = (
    pending_turns.update()
    .where(
        _PENDING_SCOPE,
        sa.or_(
            _pend.lease_expires_at <= sa.bindparam("w_now", type_=UTCDateTime()),
            _pend.lease_owner == sa.bindparam("v_lease_owner"),
        ),
    )
    .values(
        lease_owner=sa.bindparam("v_lease_owner"),
        lease_expires_at=sa.bindparam("v_lease_expires_at", type_=UTCDateTime()),
    )
)
RELEASE_PENDING = pending_turns.delete().where(
    _PENDING_SCOPE, _pend.idempotency_key == sa.bindparam("w_key")
)
# what an append runs with its idempotency key (the conversation was scoped by then)
DROP_COMMITTED_PENDING = pending_turns.delete().where(
    _pend.conversation_id == sa.bindparam("w_id"), _pend.idempotency_key == sa.bindparam("w_key")
)
UPDATE_OUTBOX = (
    outbox.update()
    .where(outbox.c.id == sa.bindparam("w_id"), outbox.c.tenant == sa.bindparam("w_tenant"))
    .values(
        attempts=sa.bindparam("v_attempts"),
        last_error=sa.bindparam("v_last_error"),
        next_attempt_at=sa.bindparam("v_next_attempt_at", type_=UTCDateTime()),
    )
)


def begin_params(pending: PendingTurnRecord) -> dict[str, Any]:
    """Parameters of BEGIN_PENDING."""
    params = pending_row(pending)
    params.update(
        w_id=pending.conversation_id,
        w_tenant=pending.tenant,
        w_version=pending.planned_version,
        w_turns=pending.seq - 1,
    )
    return params


def progress_params(pending: PendingTurnRecord, owner: str) -> dict[str, Any]:
    """Parameters of UPDATE_PENDING (the progress columns only: not the input's JSON)."""
    params = {f"v_{name}": getattr(pending, name) for name in PENDING_PROGRESS_FIELDS}
    params["v_hop_ids"] = dumps(pending.hop_ids)
    params.update(
        w_id=pending.conversation_id,
        w_tenant=pending.tenant,
        w_key=pending.idempotency_key,
        w_owner=owner,
    )
    return params


def versioned_params(record: ConversationRecord, fields: Sequence[str]) -> dict[str, Any]:
    """Parameters of APPEND_UPDATE / SETTINGS_UPDATE for ``record`` (the version after)."""
    params = {f"v_{name}": getattr(record, name) for name in fields}
    params.update(w_id=record.id, w_tenant=record.tenant, w_version=record.version - 1)
    return params


def step_read(select: sa.Select[Any], *, after: bool, turn: bool, newest: bool) -> sa.Select[Any]:
    """``select`` (a ``step_select``) narrowed to one conversation, in seq order, in one
    statement: the tenant check (an uncorrelated EXISTS, evaluated once) and the newest-N
    boundary ride along, so no separate read of the conversation row is needed. Built once per
    shape with bind parameters ``w_id``, ``w_tenant`` and ``after_seq``/``turn``/``newest``.
    """
    c = steps.c
    query = select.where(c.conversation_id == sa.bindparam("w_id"), sa.exists().where(_SCOPE))
    if after:
        query = query.where(c.seq > sa.bindparam("after_seq"))
    if turn:
        query = query.where(c.turn_seq == sa.bindparam("turn"))
    if newest:
        count, want = _conv.step_count, sa.bindparam("newest", type_=sa.Integer())
        anchor = (
            sa.select(sa.case((count > want, count - want + 1), else_=1))
            .where(_SCOPE)
            .scalar_subquery()
        )
        # joined as a one-row derived table rather than compared with a scalar subquery:
        # MariaDB uses a subquery's value for an index range only in this form, and would
        # otherwise read the whole conversation to keep its newest steps
        first_turn = newest_turn(sa.bindparam("w_id"), anchor).scalar_subquery()
        first = sa.select(first_turn.label("turn_seq")).subquery("first_turn")
        query = query.select_from(steps.join(first, c.turn_seq >= first.c.turn_seq))
    # seq order equals (turn_seq, seq) order; naming turn_seq when filtering on it lets
    # planners read the suffix from the turn index instead of the whole conversation from
    # the primary key
    return query.order_by(*((c.turn_seq, c.seq) if turn or newest else (c.seq,)))


def newest_turn(conversation_id: Any, anchor_seq: Any) -> sa.Select[Any]:
    """The first turn of ``load_steps(newest=N)``'s suffix, as a one-row query.

    ``anchor_seq`` is the first step the caller wants (step_count - N + 1; a number or a
    scalar subquery). The suffix starts
    at the latest turn, at or before the anchor's, whose predecessor did not end in
    ``requires_action`` (``store_rules.newest_start`` states the same rule for backends that
    walk turns in Python): one primary-key probe and a short backward walk over turns.
    """
    anchor_step = steps.alias("anchor_step")
    anchor_turn = (
        sa.select(anchor_step.c.turn_seq)
        .where(anchor_step.c.conversation_id == conversation_id, anchor_step.c.seq == anchor_seq)
        .scalar_subquery()
    )
    clean_before = (
        sa.select(turns.c.seq)
        .where(
            turns.c.conversation_id == conversation_id,
            turns.c.seq < anchor_turn,
            turns.c.status != REQUIRES_ACTION,
        )
        .order_by(turns.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    return sa.select(sa.func.coalesce(clean_before, 0) + 1)


# --------------------------------------------------------------------------- driver-level SQL


class DriverStatement:
    """A Core statement rendered once for one dialect, run with ``exec_driver_sql``.

    An append is a handful of tiny statements; SQLAlchemy's per-execution work (parameter
    construction from the compiled form, bind processing, result setup) cost more than the
    statements themselves on SQLite. The bind processors of the statement's own types are
    applied here, so the values stored are exactly what ``Connection.execute`` would store.
    """

    def __init__(self, statement: sa.ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        self.names = tuple(compiled.positiontup or ()) if self.positional else tuple(compiled.binds)
        processors = {}
        for name in self.names:
            process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        self._processors = processors
        # the values a statement carries itself (literals SQLAlchemy bound anonymously)
        self._defaults = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if not bind.required and name in self.names
        }
        # a SELECT's columns and their types' result processors, for rows read on the
        # driver's cursor (see ``mappings``)
        selected = list(getattr(statement, "selected_columns", ()))
        self.columns = tuple(str(column.key) for column in selected)
        self._results = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in selected
        ]

    def params(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """``values`` (by bind name) in the driver's form, bind-processed."""
        if self._defaults:
            values = {**self._defaults, **values}
        for name, process in self._processors.items():
            values[name] = process(values[name])
        if self.positional:
            return tuple([values[name] for name in self.names])
        return values

    def mappings(self, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Driver rows of this SELECT as ``{column: value}``, result-processed as a
        ``Connection.execute`` result would be (datetimes, JSON)."""
        pairs = list(zip(self.columns, self._results, strict=True))
        return [
            {
                name: (process(value) if process is not None and value is not None else value)
                for (name, process), value in zip(pairs, row, strict=True)
            }
            for row in rows
        ]


class AppendParams(NamedTuple):
    """One append's parameters in the driver's form (see ``AppendStatements``)."""

    update: tuple[Any, ...] | dict[str, Any]
    turn: tuple[Any, ...] | dict[str, Any]
    steps: list[tuple[Any, ...] | dict[str, Any]]
    pending: tuple[Any, ...] | dict[str, Any] | None = None
    """The delete of the pending turn carrying the turn's key (None without a key)."""


class AppendStatements:
    """The append's version-checked update, its two inserts and the delete of the pending
    turn it replaces, as driver SQL."""

    def __init__(self, dialect: Dialect, step_insert: sa.Insert) -> None:
        self.dialect_name = dialect.name
        self.update = DriverStatement(APPEND_UPDATE, dialect)
        self.turn = DriverStatement(turns.insert(), dialect)
        self.steps = DriverStatement(step_insert, dialect)
        self.pending = DriverStatement(DROP_COMMITTED_PENDING, dialect)

    def params(self, commit: TurnCommit) -> AppendParams:
        """The parameters of ``commit``'s statements."""
        rows = step_rows(commit.steps, dialect_name=self.dialect_name)
        key = commit.turn.idempotency_key
        return AppendParams(
            self.update.params(versioned_params(commit.record, APPEND_FIELDS)),
            self.turn.params(turn_row(commit.turn)),
            [self.steps.params(row) for row in rows],
            None if key is None else self.pending.params({"w_id": commit.record.id, "w_key": key}),
        )

    def write_on_cursor(
        self, conn: sa.Connection, params: AppendParams, *, begin: str | None = None
    ) -> bool:
        """Run the statements on one driver cursor of ``conn``; False if the version
        check missed (nothing written then). See :func:`on_driver_cursor`."""

        def write(cursor: Any, run: Callable[[str, Any], Any]) -> bool:
            if run(self.update.sql, params.update).rowcount != 1:
                return False
            run(self.turn.sql, params.turn)
            if params.steps:
                run(self.steps.sql, params.steps)
            if params.pending is not None:
                run(self.pending.sql, params.pending)
            return True

        return bool(on_driver_cursor(conn, write, begin=begin))


def on_driver_cursor(
    conn: sa.Connection,
    work: Callable[[Any, Callable[[str, Any], Any]], Any],
    *,
    begin: str | None = None,
) -> Any:
    """``work(cursor, run)`` on one driver cursor of ``conn``; ``run(sql, params)`` executes
    (``executemany`` for a list of parameter sets) and returns the cursor.

    Used on SQLite, where a statement takes microseconds and going through the Connection
    for each cost more. Without ``begin`` the statements run in ``conn``'s open transaction;
    with it, in a transaction of their own, begun with that statement and committed when
    ``work`` returns a true value (rolled back when it returns a false one, or raises).
    Driver errors are wrapped as the Connection would wrap them (there are no disconnects
    to detect on SQLite).
    """
    error = conn.dialect.loaded_dbapi.Error
    cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    last: list[Any] = [begin, None]

    def run(statement: str, values: Any) -> Any:
        last[:] = [statement, values]
        if isinstance(values, list):
            cursor.executemany(statement, values)
        else:
            cursor.execute(statement, values)
        return cursor

    began = False
    try:
        if begin is not None:
            begin_sqlite(cursor, begin, error)
            began = True
        result = work(cursor, run)
        if began and result:
            last[:] = ["COMMIT", None]
            cursor.execute("COMMIT")
            began = False
        return result
    except error as exc:
        raise DBAPIError.instance(last[0], last[1], exc, error) from exc
    finally:
        if began:  # a miss or an error: the pool's reset would roll back too, later
            with suppress(error):
                cursor.execute("ROLLBACK")
        cursor.close()


class OneStatementAppend:
    """The whole append as ONE statement on PostgreSQL: data-modifying CTEs, each insert (and
    the delete of the pending turn) reading the row the version-checked update returned, so
    they write only if it matched. Run outside a transaction it is one round trip (a
    statement is atomic on its own) instead of BEGIN, four statements and COMMIT. It returns
    the number of conversations updated (0: the version check missed, nothing written).

    A used idempotency key is not looked up first: a used key means either a moved version
    (the update misses) or the unique (conversation_id, idempotency_key) index fails the
    statement, and the caller looks the key up then (same outcome, one round trip fewer on
    the path every turn takes).
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._shapes: dict[tuple[int, bool], DriverStatement] = {}

    def _statement(self, step_count: int, with_key: bool) -> DriverStatement:
        shape = (step_count, with_key)
        found = self._shapes.get(shape)
        if found is not None:
            return found
        updated = APPEND_UPDATE.returning(_conv.id).cte("u")
        turn_values = [sa.bindparam(f"t_{c.name}", type_=c.type) for c in turns.columns]
        writes: list[Any] = [
            turns.insert()
            .from_select(
                [c.name for c in turns.columns], sa.select(*turn_values).select_from(updated)
            )
            .cte("t")
        ]
        for i in range(step_count):
            payload = sa.cast(sa.bindparam(f"s{i}_payload", type_=sa.Text()), postgresql.JSONB())
            values = sa.select(
                updated.c.id,
                sa.bindparam(f"s{i}_seq", type_=steps.c.seq.type),
                sa.bindparam(f"s{i}_turn_seq", type_=steps.c.turn_seq.type),
                sa.bindparam(f"s{i}_type", type_=steps.c.type.type),
                payload,
                sa.bindparam(f"s{i}_payload_text", type_=steps.c.payload_text.type),
            ).select_from(updated)
            columns = ["conversation_id", "seq", "turn_seq", "type", "payload", "payload_text"]
            writes.append(steps.insert().from_select(columns, values).cte(f"s{i}"))
        if with_key:
            writes.append(
                pending_turns.delete()
                .where(
                    _pend.conversation_id.in_(sa.select(updated.c.id)),
                    _pend.idempotency_key == sa.bindparam("w_key"),
                )
                .cte("d")
            )
        query = sa.select(sa.func.count()).select_from(updated).add_cte(*writes)
        statement = self._shapes[shape] = DriverStatement(query, self.dialect)
        return statement

    def prepare(self, commit: TurnCommit) -> tuple[str, tuple[Any, ...] | dict[str, Any]]:
        """The SQL and parameters of ``commit``'s append."""
        key = commit.turn.idempotency_key
        statement = self._statement(len(commit.steps), key is not None)
        values = versioned_params(commit.record, APPEND_FIELDS)
        values.update({f"t_{name}": value for name, value in turn_row(commit.turn).items()})
        for i, row in enumerate(step_rows(commit.steps, dialect_name=self.dialect.name)):
            for name in ("seq", "turn_seq", "type", "payload", "payload_text"):
                values[f"s{i}_{name}"] = row[name]
        if key is not None:
            values["w_key"] = key
        return statement.sql, statement.params(values)

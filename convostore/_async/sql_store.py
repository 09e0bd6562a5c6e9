"""The SQL store: SQLite, PostgreSQL and MariaDB/MySQL through SQLAlchemy Core.

Differences from the contract's defaults worth knowing: SQLite files migrate themselves on
the first operation; a PostgreSQL/MySQL database must be migrated with
``convostore db upgrade URL`` first (the first operation raises SchemaError otherwise).

Turns in flight and the outbox are in ``sql_pending`` (a base class of this store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .. import _migrate
from .._core.store_rules import (
    UPDATE_FIELDS,
    check_commit,
    check_idempotency_key,
    check_list,
    check_load,
    check_new_conversation,
    check_purge,
    check_scope,
    check_update,
    decode_cursor,
    encode_cursor,
)
from .._exceptions import (
    ConcurrentTurnError,
    ConfigurationError,
    ConversationExists,
    ConversationNotFound,
    StoreError,
)
from .._sql import (
    DROP_COMMITTED_PENDING,
    SELECT_CONVERSATION,
    SELECT_TURN_BY_KEY,
    SELECT_VERSION,
    SETTINGS_UPDATE,
    STORE_SETTINGS,
    AppendParams,
    AppendStatements,
    DriverStatement,
    OneStatementAppend,
    compactions,
    conversation_row,
    conversations,
    decode_conversation,
    decode_steps,
    decode_turn,
    install_liveness_check,
    install_sqlite_hooks,
    normalize_url,
    on_driver_cursor,
    pending_turns,
    schema_error,
    settings_options,
    step_insert,
    step_read,
    step_rows,
    step_select,
    translate_errors,
    turn_row,
    versioned_params,
)
from .._sql import (
    engine_options as default_engine_options,
)
from .._sql import steps as steps_table
from .._sql import turns as turns_table
from .._urls import redact, url_options, without_options
from ..models import (
    AppendResult,
    ConversationRecord,
    Page,
    StoredStep,
    TurnCommit,
    TurnRecord,
)
from .sql_compaction import AsyncSQLCompaction
from .sql_pending import AsyncSQLPending

IS_ASYNC = True


class AsyncSQLStore(AsyncSQLPending, AsyncSQLCompaction):
    """A store in a SQL database (see :class:`~convostore._async.store.AsyncStore`)."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        engine_options: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self.url = redact(url)
        # pool settings: the URL's query, then keyword arguments (which win)
        found = {k: v for k, v in url_options(url).items() if k in STORE_SETTINGS}
        unknown = set(settings) - set(STORE_SETTINGS)
        if unknown:
            raise ConfigurationError(f"unknown SQL store option(s): {', '.join(sorted(unknown))}")
        found.update(settings)
        self._sa_url = normalize_url(without_options(url, STORE_SETTINGS), is_async=IS_ASYNC)
        self._dialect = self._sa_url.get_backend_name()
        self._options: dict[str, Any] = {"echo": echo, **default_engine_options(self._sa_url)}
        self._options.update(settings_options(self._sa_url, found))
        self._options.update(engine_options or {})
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._reader: AsyncEngine | None = None
        self._ready = False
        self._closed = False
        self._lock = asyncio.Lock()
        self._step_insert = step_insert(self._dialect)
        self._step_select = step_select(self._dialect)
        self._step_reads: dict[tuple[bool, bool, bool], DriverStatement] = {}
        self._driver_sql: dict[int, DriverStatement] = {}
        self._append_sql: AppendStatements | None = None
        self._one_append: OneStatementAppend | None = None
        self._autocommit: AsyncEngine | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncSQLStore:
        """A store for ``url``; no I/O happens until the first operation.

        Args:
            url: ``sqlite:///path``, ``postgresql://…``, ``mysql://…`` or ``mariadb://…``
                (any ``+driver`` is replaced by the one this flavour uses).
            **options: ``echo`` (log SQL), the pool settings ``pool_size`` (default 5),
                ``max_overflow`` (10), ``pool_timeout`` (30 s), ``pool_recycle`` (off),
                ``pool_pre_ping`` (off: a check without a round trip runs instead), and on
                PostgreSQL ``prepare_threshold`` (psycopg's; ``None`` for a
                transaction-mode PgBouncer older than 1.21), each also
                accepted in the URL's query (``?pool_size=10``); ``engine_options`` (extra
                keyword arguments for SQLAlchemy's engine).

        Raises:
            ConfigurationError: not a SQL URL, or an unknown option.
        """
        unknown = set(options) - {"echo", "engine_options", *STORE_SETTINGS}
        if unknown:
            raise ConfigurationError(f"unknown SQL store option(s): {', '.join(sorted(unknown))}")
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # ------------------------------------------------------------------ connections

    async def _engines(self) -> tuple[AsyncEngine, AsyncEngine]:
        """The engine (its events reach both twins) and its twin whose transactions write
        (BEGIN IMMEDIATE on SQLite); created, and the schema checked or migrated, on first
        use. Reads go through ``_reads``."""
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        if not self._ready:
            async with self._lock:
                if not self._ready:
                    if self._engine is None:
                        self._engine = create_async_engine(self._sa_url, **self._options)
                        if self._dialect == "sqlite":
                            install_sqlite_hooks(self._engine)
                        else:
                            install_liveness_check(self._engine)
                        self._writer = self._engine.execution_options(convostore_write=True)
                        self._reader = self._engine
                        if self._dialect == "sqlite":
                            self._reader = self._engine.execution_options(convostore_read=True)
                        if self._dialect == "postgresql":
                            self._autocommit = self._engine.execution_options(
                                isolation_level="AUTOCOMMIT"
                            )
                        if self._dialect == "postgresql" and "isolation_level" not in self._options:
                            # At READ COMMITTED every statement takes its own snapshot even
                            # inside a transaction, so one around a read buys nothing and
                            # costs a BEGIN and a ROLLBACK round trip (psycopg's autocommit
                            # switch is client-side, so it costs none)
                            self._reader = self._engine.execution_options(
                                isolation_level="AUTOCOMMIT"
                            )
                    assert self._writer is not None
                    await self._prepare_schema(self._writer)
                    self._ready = True
        if self._engine is None or self._writer is None:  # closed by another task meanwhile
            raise StoreError(f"{self.url}: the store is closed")
        return self._engine, self._writer

    async def _reads(self) -> AsyncEngine:
        """The engine read-only operations use (see ``_engines``)."""
        engine, _ = await self._engines()
        return self._reader or engine

    async def _prepare_schema(self, writer: AsyncEngine) -> None:
        with translate_errors(self.url):
            async with writer.connect() as conn:
                if self._dialect == "sqlite":
                    # under BEGIN IMMEDIATE: a second process waits, then finds it done
                    async with conn.begin():
                        await conn.run_sync(_migrate.upgrade_connection)
                    return
                inspector_sql = sa.text("SELECT version_num FROM alembic_version")
                try:
                    found = (await conn.execute(inspector_sql)).scalars().all()
                except sa.exc.DBAPIError as exc:
                    raise schema_error(self.url, "missing") from exc
        if _migrate.head() not in found:
            raise schema_error(self.url, f"at revision {found or None}, not {_migrate.head()}")

    async def aclose(self) -> None:
        self._closed = True
        self._ready = False
        engine, self._engine, self._writer, self._reader = self._engine, None, None, None
        self._autocommit = None
        if engine is not None:
            await engine.dispose()

    def _one_statement(self, writer: AsyncEngine) -> Any:
        """A connection for a write of one statement: outside a transaction on PostgreSQL (a
        statement is atomic on its own, and BEGIN and COMMIT are a round trip each), in a
        write transaction elsewhere."""
        if self._autocommit is not None:
            return self._autocommit.connect()
        return writer.begin()

    # ------------------------------------------------------------------ helpers

    async def _record(
        self, conn: AsyncConnection, conversation_id: str, tenant: str
    ) -> ConversationRecord:
        scope = {"w_id": conversation_id, "w_tenant": tenant}
        if self._dialect == "sqlite":
            statement = self._driver_statement(conn, SELECT_CONVERSATION)
            found = statement.mappings(await self._driver_rows(conn, statement, scope))
            if not found:
                raise ConversationNotFound(conversation_id)
            return decode_conversation(found[0])
        row = (await conn.execute(SELECT_CONVERSATION, scope)).first()
        if row is None:
            raise ConversationNotFound(conversation_id)
        return decode_conversation(row)

    def _driver_statement(self, conn: AsyncConnection, statement: Any) -> DriverStatement:
        found = self._driver_sql.get(id(statement))
        if found is None:
            found = self._driver_sql[id(statement)] = DriverStatement(statement, conn.dialect)
        return found

    async def _driver_rows(
        self, conn: AsyncConnection, statement: DriverStatement, params: dict[str, Any]
    ) -> list[Any]:
        """The rows of a read rendered once: on SQLite from the driver's cursor (a read
        there takes microseconds, less than SQLAlchemy's result handling), elsewhere
        through ``exec_driver_sql``."""
        values = statement.params(params)
        if self._dialect != "sqlite":
            return list((await conn.exec_driver_sql(statement.sql, values)).all())

        def read(sync_conn: sa.Connection) -> list[Any]:
            return list(
                on_driver_cursor(
                    sync_conn, lambda _cursor, run: run(statement.sql, values).fetchall()
                )
            )

        return await conn.run_sync(read)

    async def _turn_by_key(
        self, conn: AsyncConnection, conversation_id: str, tenant: str, key: str
    ) -> TurnRecord | None:
        scope = {"w_id": conversation_id, "w_tenant": tenant, "w_key": key}
        row = (await conn.execute(SELECT_TURN_BY_KEY, scope)).first()
        return None if row is None else decode_turn(row)

    async def _stale(
        self, conn: AsyncConnection, record: ConversationRecord
    ) -> ConcurrentTurnError | ConversationNotFound:
        scope = {"w_id": record.id, "w_tenant": record.tenant}
        found = (await conn.execute(SELECT_VERSION, scope)).scalar_one_or_none()
        if found is None:
            return ConversationNotFound(record.id)
        return ConcurrentTurnError(
            record.id, expected_version=record.version - 1, actual_version=found
        )

    # ------------------------------------------------------------------ writes

    async def create_conversation(
        self,
        record: ConversationRecord,
        *,
        turns: Sequence[TurnRecord] = (),
        steps: Sequence[StoredStep] = (),
    ) -> ConversationRecord:
        check_new_conversation(record, turns, steps)
        _, writer = await self._engines()
        with translate_errors(self.url):
            try:
                async with writer.begin() as conn:
                    await conn.execute(conversations.insert(), conversation_row(record))
                    if turns:
                        await conn.execute(turns_table.insert(), [turn_row(turn) for turn in turns])
                    if steps:
                        await conn.execute(
                            self._step_insert,
                            step_rows(steps, dialect_name=self._dialect),
                        )
            except IntegrityError as exc:
                async with writer.connect() as conn:
                    exists = (
                        await conn.execute(
                            sa.select(conversations.c.id).where(conversations.c.id == record.id)
                        )
                    ).first()
                if exists is not None:
                    raise ConversationExists(record.id) from exc
                raise
        return record

    async def append_turn(self, commit: TurnCommit) -> AppendResult:
        check_commit(commit)
        record, turn, key = commit.record, commit.turn, commit.turn.idempotency_key
        _, writer = await self._engines()
        with translate_errors(self.url):
            try:
                # a used key is not looked up first: it means a moved version (the update
                # misses) or a taken (conversation, key) (the insert fails), and is looked up
                # then; the turn every send commits saves that read
                if self._dialect == "sqlite":
                    return await self._append_on_driver(writer, commit)
                if self._autocommit is not None:
                    return await self._append_in_one_statement(self._autocommit, commit)
                async with writer.begin() as conn:
                    sql = self._statements(conn)
                    params = sql.params(commit)
                    if not await self._write_turn(conn, sql, params):
                        # a writer with the same key may have won the race we just lost
                        if key is not None:
                            stored = await self._turn_by_key(conn, record.id, record.tenant, key)
                            if stored is not None:
                                return await self._replayed(conn, stored, key)
                        raise await self._stale(conn, record)
            except IntegrityError as exc:
                async with writer.begin() as conn:
                    if key is not None:
                        stored = await self._turn_by_key(conn, record.id, record.tenant, key)
                        if stored is not None:
                            return await self._replayed(conn, stored, key)
                    raise await self._stale(conn, record) from exc
        return AppendResult(turn=turn, created=True)

    async def _replayed(self, conn: AsyncConnection, stored: TurnRecord, key: str) -> AppendResult:
        """The answer to a commit whose key was used; its pending turn goes all the same."""
        params = {"w_id": stored.conversation_id, "w_key": key}
        await conn.execute(DROP_COMMITTED_PENDING, params)
        return AppendResult(turn=stored, created=False)

    def _statements(self, conn: AsyncConnection) -> AppendStatements:
        if self._append_sql is None:
            self._append_sql = AppendStatements(conn.dialect, self._step_insert)
        return self._append_sql

    async def _append_on_driver(self, writer: AsyncEngine, commit: TurnCommit) -> AppendResult:
        """An append on SQLite, in a transaction of the driver's own (``BEGIN IMMEDIATE`` …
        ``COMMIT`` on one cursor): SQLAlchemy's transaction bookkeeping cost more than the
        statements. Errors as ``append_turn`` raises them."""
        record, key = commit.record, commit.turn.idempotency_key
        async with writer.connect() as conn:
            sql = self._statements(conn)
            params = sql.params(commit)

            def write(sync_conn: sa.Connection) -> bool:
                return sql.write_on_cursor(sync_conn, params, begin="BEGIN IMMEDIATE")

            if await conn.run_sync(write):
                return AppendResult(turn=commit.turn, created=True)
        async with writer.begin() as conn:
            if key is not None:  # a writer with the same key may have won
                stored = await self._turn_by_key(conn, record.id, record.tenant, key)
                if stored is not None:
                    return await self._replayed(conn, stored, key)
            raise await self._stale(conn, record)

    async def _append_in_one_statement(
        self, engine: AsyncEngine, commit: TurnCommit
    ) -> AppendResult:
        """PostgreSQL: the append as one statement outside a transaction (one round trip;
        see ``_sql.OneStatementAppend``); a key already used is looked up only on a miss."""
        record, key = commit.record, commit.turn.idempotency_key
        async with engine.connect() as conn:
            if self._one_append is None:
                self._one_append = OneStatementAppend(conn.dialect)
            sql, params = self._one_append.prepare(commit)
            conflict: IntegrityError | None = None
            try:
                written = (await conn.exec_driver_sql(sql, params)).scalar_one()
            except IntegrityError as exc:  # the key (or the turn's seq) is taken
                written, conflict = 0, exc
            if written == 1:
                return AppendResult(turn=commit.turn, created=True)
            if key is not None:
                stored = await self._turn_by_key(conn, record.id, record.tenant, key)
                if stored is not None:
                    return await self._replayed(conn, stored, key)
            raise await self._stale(conn, record) from conflict

    async def _write_turn(
        self, conn: AsyncConnection, sql: AppendStatements, params: AppendParams
    ) -> bool:
        """The append's writes in the open transaction (MySQL/MariaDB); False if the version
        check missed (nothing written then)."""
        updated = await conn.exec_driver_sql(sql.update.sql, params.update)
        if updated.rowcount != 1:
            return False
        await conn.exec_driver_sql(sql.turn.sql, params.turn)
        if params.steps:
            await conn.exec_driver_sql(sql.steps.sql, params.steps)
        if params.pending is not None:
            await conn.exec_driver_sql(sql.pending.sql, params.pending)
        return True

    async def update_conversation(self, record: ConversationRecord) -> ConversationRecord:
        check_update(record)
        _, writer = await self._engines()
        with translate_errors(self.url):
            async with writer.begin() as conn:
                params = versioned_params(record, UPDATE_FIELDS)
                updated = await conn.execute(SETTINGS_UPDATE, params)
                if updated.rowcount != 1:
                    raise await self._stale(conn, record)
                return await self._record(conn, record.id, record.tenant)

    async def delete_conversation(self, conversation_id: str, *, tenant: str) -> bool:
        check_scope(conversation_id, tenant)
        _, writer = await self._engines()
        with translate_errors(self.url):
            async with writer.begin() as conn:
                return await self._delete(conn, [conversation_id], tenant=tenant) > 0

    async def _delete(
        self, conn: AsyncConnection, ids: Sequence[str], *, tenant: str | None
    ) -> int:
        owned = sa.select(conversations.c.id).where(conversations.c.id.in_(ids))
        if tenant is not None:
            owned = owned.where(conversations.c.tenant == tenant)
        found = list((await conn.execute(owned)).scalars())
        if not found:
            return 0
        # children first: SQLite enforces the cascade only where foreign_keys is on
        await conn.execute(pending_turns.delete().where(pending_turns.c.conversation_id.in_(found)))
        await conn.execute(compactions.delete().where(compactions.c.conversation_id.in_(found)))
        await conn.execute(steps_table.delete().where(steps_table.c.conversation_id.in_(found)))
        await conn.execute(turns_table.delete().where(turns_table.c.conversation_id.in_(found)))
        result = await conn.execute(conversations.delete().where(conversations.c.id.in_(found)))
        return result.rowcount

    async def purge(
        self,
        *,
        now: datetime | None = None,
        older_than: datetime | None = None,
        tenant: str | None = None,
        dry_run: bool = False,
    ) -> list[ConversationRecord]:
        now = check_purge(now, older_than, tenant)
        expired = conversations.c.expires_at <= now
        if older_than is not None:
            expired = sa.or_(expired, conversations.c.updated_at < older_than)
        query = sa.select(conversations).where(expired)
        if tenant is not None:
            query = query.where(conversations.c.tenant == tenant)
        query = query.order_by(conversations.c.created_at.desc(), conversations.c.id.desc())
        _, writer = await self._engines()
        with translate_errors(self.url):
            async with writer.begin() as conn:
                found = [decode_conversation(row) for row in await conn.execute(query)]
                if found and not dry_run:
                    for start in range(0, len(found), 500):
                        chunk = [record.id for record in found[start : start + 500]]
                        await self._delete(conn, chunk, tenant=None)
        return found

    # ------------------------------------------------------------------ reads

    async def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        check_scope(conversation_id, tenant)
        engine = await self._reads()
        with translate_errors(self.url):
            async with engine.connect() as conn:
                return await self._record(conn, conversation_id, tenant)

    async def find_turn(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> TurnRecord | None:
        check_scope(conversation_id, tenant)
        check_idempotency_key(idempotency_key)
        engine = await self._reads()
        with translate_errors(self.url):
            async with engine.connect() as conn:
                await self._record(conn, conversation_id, tenant)
                return await self._turn_by_key(conn, conversation_id, tenant, idempotency_key)

    async def load_steps(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        newest: int | None = None,
        turn: int | None = None,
    ) -> list[StoredStep]:
        check_load(conversation_id, tenant, after_seq=after_seq, newest=newest, turn=turn)
        engine = await self._reads()
        if newest == 0:
            await self.get_conversation(conversation_id, tenant=tenant)  # the tenant check
            return []
        shape = (after_seq > 0, turn is not None, newest is not None)
        params: dict[str, Any] = {"w_id": conversation_id, "w_tenant": tenant}
        for name, value in (("after_seq", after_seq or None), ("turn", turn), ("newest", newest)):
            if value is not None:
                params[name] = value
        with translate_errors(self.url):
            async with engine.connect() as conn:
                # rendered once per shape and run as driver SQL: the columns are an int, an
                # int and JSON text, so there is nothing for SQLAlchemy to process per row
                query = self._step_reads.get(shape)
                if query is None:
                    select = step_read(
                        self._step_select, after=shape[0], turn=shape[1], newest=shape[2]
                    )
                    query = self._step_reads[shape] = DriverStatement(select, conn.dialect)
                rows = await self._driver_rows(conn, query, params)
                if not rows:  # an empty range, or no such conversation in this tenant
                    await self._record(conn, conversation_id, tenant)
        return decode_steps(conversation_id, rows)

    async def load_turns(
        self, conversation_id: str, *, tenant: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TurnRecord]:
        check_load(conversation_id, tenant, after_seq=after_seq, limit=limit)
        engine = await self._reads()
        query = (
            sa.select(turns_table)
            .where(turns_table.c.conversation_id == conversation_id, turns_table.c.seq > after_seq)
            .order_by(turns_table.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)
        with translate_errors(self.url):
            async with engine.connect() as conn:
                await self._record(conn, conversation_id, tenant)
                rows = (await conn.execute(query)).all()
        return [decode_turn(row) for row in rows]

    async def list_conversations(
        self,
        *,
        tenant: str | None,
        user: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        check_list(tenant, user, limit, cursor)
        c = conversations.c
        query = sa.select(conversations).order_by(c.created_at.desc(), c.id.desc())
        if tenant is not None:
            query = query.where(c.tenant == tenant)
        if user is not None:
            query = query.where(c.user == user)
        if cursor is not None:
            at, last_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(c.created_at < at, sa.and_(c.created_at == at, c.id < last_id))
            )
        engine = await self._reads()
        with translate_errors(self.url):
            async with engine.connect() as conn:
                rows = (await conn.execute(query.limit(limit + 1))).all()
        items = [decode_conversation(row) for row in rows[:limit]]
        more = len(rows) > limit
        next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if more else None
        return Page(items=items, next_cursor=next_cursor)

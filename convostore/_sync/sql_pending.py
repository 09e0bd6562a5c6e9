# Generated from convostore/_async by scripts/unasync.py. Do not edit.
"""Turns in flight and the outbox on SQL: the part of :class:`SQLStore` behind
``begin_turn`` … ``remove_outbox`` (a base class of it; it uses the store's engines).

``begin_turn`` is one INSERT guarded by the version check (``_sql.BEGIN_PENDING``); a second
turn in flight collides on the primary key. ``claim_pending`` is one compare-and-set UPDATE.
The append's delete of the pending turn it replaces is in the append's own transaction
(``_sql.AppendStatements``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy import Connection, Engine

from .._core import store_rules as rules
from .._exceptions import ConcurrentTurnError, LeaseLost, TurnInFlight
from .._sql import (
    BEGIN_PENDING,
    CLAIM_PENDING,
    RELEASE_PENDING,
    SELECT_PENDING,
    UPDATE_OUTBOX,
    UPDATE_PENDING,
    DriverStatement,
    begin_params,
    decode_outbox_row,
    decode_pending_row,
    on_driver_cursor,
    outbox,
    outbox_row,
    pending_turns,
    progress_params,
    translate_errors,
)
from ..models import ConversationRecord, OutboxItem, PendingTurnRecord


class SQLPending:
    """Turns in flight and the outbox (see the module docstring)."""

    url: str
    _dialect: str

    def _driver_statement(self, conn: Connection, statement: Any) -> DriverStatement:
        raise NotImplementedError  # the store's

    def _engines(self) -> tuple[Engine, Engine]:
        raise NotImplementedError  # the store's

    def _reads(self) -> Engine:
        raise NotImplementedError  # the store's

    def _one_statement(self, writer: Engine) -> Any:
        raise NotImplementedError  # the store's

    def _record(
        self, conn: Connection, conversation_id: str, tenant: str
    ) -> ConversationRecord:
        raise NotImplementedError  # the store's

    def _write_one(self, writer: Engine, statement: Any, params: dict[str, Any]) -> int:
        """One write statement; its row count. On SQLite it runs on the driver's cursor in a
        ``BEGIN IMMEDIATE`` transaction of its own (SQLAlchemy's bookkeeping costs more than
        the statement there); elsewhere as ``_one_statement`` says."""
        if self._dialect != "sqlite":
            with self._one_statement(writer) as conn:
                return int((conn.execute(statement, params)).rowcount)
        with writer.connect() as conn:
            driver = self._driver_statement(conn, statement)
            values = driver.params(params)

            def write(sync_conn: sa.Connection) -> int:
                return int(
                    on_driver_cursor(
                        sync_conn,
                        lambda _cursor, run: run(driver.sql, values).rowcount,
                        begin="BEGIN IMMEDIATE",
                    )
                )

            return write(conn)

    def begin_turn(self, pending: PendingTurnRecord) -> None:
        rules.check_pending(pending)
        _, writer = self._engines()
        cid, tenant = pending.conversation_id, pending.tenant
        with translate_errors(self.url):
            try:
                if self._write_one(writer, BEGIN_PENDING, begin_params(pending)) == 1:
                    return
                with (self._reads()).connect() as conn:
                    # nothing written: say why, in the contract's order of precedence
                    stored = self._pending(conn, cid, tenant)
                    if stored is not None:
                        raise TurnInFlight(cid, pending=stored)
                    rules.check_begin(self._record(conn, cid, tenant), pending)
                    raise ConcurrentTurnError(cid, expected_version=pending.planned_version)
            except IntegrityError as exc:  # the primary key: a turn is in flight
                with writer.connect() as conn:
                    stored = self._pending(conn, cid, tenant)
                if stored is None:  # ended meanwhile: the conversation moved on, or will
                    raise ConcurrentTurnError(
                        cid, expected_version=pending.planned_version
                    ) from exc
                raise TurnInFlight(cid, pending=stored) from exc

    def _pending(
        self, conn: Connection, conversation_id: str, tenant: str
    ) -> PendingTurnRecord | None:
        scope = {"w_id": conversation_id, "w_tenant": tenant}
        row = (conn.execute(SELECT_PENDING, scope)).first()
        return None if row is None else decode_pending_row(row)

    def get_pending(self, conversation_id: str, *, tenant: str) -> PendingTurnRecord | None:
        rules.check_scope(conversation_id, tenant)
        engine = self._reads()
        with translate_errors(self.url):
            with engine.connect() as conn:
                return self._pending(conn, conversation_id, tenant)

    def update_pending(self, pending: PendingTurnRecord, *, owner: str) -> None:
        rules.check_progress(pending)
        rules.check_owner(owner)
        _, writer = self._engines()
        with translate_errors(self.url):
            updated = self._write_one(writer, UPDATE_PENDING, progress_params(pending, owner))
        if updated != 1:
            raise LeaseLost(pending.conversation_id, idempotency_key=pending.idempotency_key)

    def claim_pending(
        self,
        conversation_id: str,
        *,
        tenant: str,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
    ) -> PendingTurnRecord | None:
        rules.check_claim(conversation_id, tenant, owner, now, lease_expires_at)
        params = {"w_id": conversation_id, "w_tenant": tenant, "w_now": now}
        params.update(v_lease_owner=owner, v_lease_expires_at=lease_expires_at)
        _, writer = self._engines()
        with translate_errors(self.url):
            with writer.begin() as conn:
                if (conn.execute(CLAIM_PENDING, params)).rowcount != 1:
                    return None
                return self._pending(conn, conversation_id, tenant)

    def release_pending(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> bool:
        rules.check_pending_key(conversation_id, tenant, idempotency_key)
        params = {"w_id": conversation_id, "w_tenant": tenant, "w_key": idempotency_key}
        _, writer = self._engines()
        with translate_errors(self.url):
            with writer.begin() as conn:
                return (conn.execute(RELEASE_PENDING, params)).rowcount > 0

    def list_pending(
        self,
        *,
        tenant: str | None,
        expired_at: datetime | None = None,
        limit: int = 100,
    ) -> list[PendingTurnRecord]:
        rules.check_list_pending(tenant, expired_at, limit)
        c = pending_turns.c
        query = sa.select(pending_turns).order_by(c.created_at, c.conversation_id).limit(limit)
        if tenant is not None:
            query = query.where(c.tenant == tenant)
        if expired_at is not None:
            query = query.where(c.lease_expires_at <= expired_at)
        engine = self._reads()
        with translate_errors(self.url):
            with engine.connect() as conn:
                rows = (conn.execute(query)).all()
        return [decode_pending_row(row) for row in rows]

    # ------------------------------------------------------------------ outbox

    def add_outbox(self, items: Sequence[OutboxItem]) -> None:
        rows = {item.id: outbox_row(item) for item in rules.check_outbox_items(items)}
        if not rows:
            return
        _, writer = self._engines()
        with translate_errors(self.url):
            with writer.begin() as conn:
                conn.execute(outbox.delete().where(outbox.c.id.in_(list(rows))))
                conn.execute(outbox.insert(), list(rows.values()))

    def list_outbox(
        self, *, tenant: str | None, due_at: datetime | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        rules.check_list_outbox(tenant, due_at, limit)
        query = sa.select(outbox).order_by(outbox.c.created_at, outbox.c.id).limit(limit)
        if tenant is not None:
            query = query.where(outbox.c.tenant == tenant)
        if due_at is not None:
            query = query.where(outbox.c.next_attempt_at <= due_at)
        engine = self._reads()
        with translate_errors(self.url):
            with engine.connect() as conn:
                rows = (conn.execute(query)).all()
        return [decode_outbox_row(row) for row in rows]

    def update_outbox(self, item: OutboxItem) -> None:
        rules.check_outbox_items([item])
        params = {f"v_{name}": getattr(item, name) for name in rules.OUTBOX_RETRY_FIELDS}
        params.update(w_id=item.id, w_tenant=item.tenant)
        _, writer = self._engines()
        with translate_errors(self.url):
            with writer.begin() as conn:
                conn.execute(UPDATE_OUTBOX, params)

    def remove_outbox(self, ids: Sequence[str]) -> None:
        checked = rules.check_outbox_ids(ids)
        _, writer = self._engines()
        with translate_errors(self.url):
            with writer.begin() as conn:
                for start in range(0, len(checked), 500):
                    chunk = checked[start : start + 500]
                    conn.execute(outbox.delete().where(outbox.c.id.in_(chunk)))

"""Compactions on SQL: the part of :class:`AsyncSQLStore` behind ``append_compaction`` and
``load_compactions`` (a base class of it; it uses the store's engines).

``append_compaction`` is the version-checked UPDATE of the conversation (``COMPACT_FIELDS``)
and one INSERT, in one transaction; nothing in ``steps`` or ``turns`` is touched.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._core import context as _context
from .._core.store_rules import dumps, loads
from .._exceptions import (
    ConcurrentTurnError,
    ConversationNotFound,
    CorruptRecordError,
    TurnInFlight,
)
from .._sql import (
    SELECT_CONVERSATION,
    SELECT_PENDING,
    compactions,
    conversations,
    decode_pending_row,
    decode_steps,
    steps,
    translate_errors,
)
from .._sql import decode_conversation as _decode_conversation
from ..models import CompactionRecord, ConversationRecord, StoredStep

_c = conversations.c
COMPACT_UPDATE = (
    conversations.update()
    .where(
        _c.id == sa.bindparam("w_id"),
        _c.tenant == sa.bindparam("w_tenant"),
        _c.version == sa.bindparam("w_version"),
    )
    .values(
        {
            _c[name]: sa.bindparam(f"v_{name}", type_=_c[name].type)
            for name in _context.COMPACT_FIELDS
        }
    )
)


def compaction_row(compaction: CompactionRecord) -> dict[str, object]:
    return {
        "conversation_id": compaction.conversation_id,
        "epoch": compaction.epoch,
        "last_seq": compaction.last_seq,
        "last_turn": compaction.last_turn,
        "created_at": compaction.created_at,
        "data": dumps(compaction.model_dump(mode="json")),
    }


def decode_compaction(text: str) -> CompactionRecord:
    try:
        return CompactionRecord.model_validate(loads(text, "stored compaction"))
    except ValueError as exc:
        raise CorruptRecordError(f"stored compaction does not parse: {exc}") from exc


class AsyncSQLCompaction:
    """Compactions and pages of the record (see the module docstring)."""

    url: str
    _step_select: sa.Select[Any]

    async def _engines(self) -> tuple[AsyncEngine, AsyncEngine]:
        raise NotImplementedError  # the store's

    async def _reads(self) -> AsyncEngine:
        raise NotImplementedError  # the store's

    async def _compaction_scope(
        self, conn: AsyncConnection, conversation_id: str, tenant: str
    ) -> ConversationRecord:
        scope = {"w_id": conversation_id, "w_tenant": tenant}
        row = (await conn.execute(SELECT_CONVERSATION, scope)).first()
        if row is None:
            raise ConversationNotFound(conversation_id)
        return _decode_conversation(row)

    async def append_compaction(
        self, record: ConversationRecord, compaction: CompactionRecord
    ) -> ConversationRecord:
        record, compaction = _context.check_compaction(record, compaction)
        params = {f"v_{name}": getattr(record, name) for name in _context.COMPACT_FIELDS}
        params.update(w_id=record.id, w_tenant=record.tenant, w_version=record.version - 1)
        _, writer = await self._engines()
        with translate_errors(self.url):
            async with writer.begin() as conn:
                stored = await self._compaction_scope(conn, record.id, record.tenant)
                _context.check_compacts(stored, record, compaction)
                if (await conn.execute(COMPACT_UPDATE, params)).rowcount != 1:
                    raise ConcurrentTurnError(record.id, expected_version=record.version - 1)
                # after the version moved: a turn begun from the old version is seen here (and
                # this transaction rolls back), one begun later fails its own version check
                scope = {"w_id": record.id, "w_tenant": record.tenant}
                row = (await conn.execute(SELECT_PENDING, scope)).first()
                if row is not None:
                    raise TurnInFlight(record.id, pending=decode_pending_row(row))
                await conn.execute(compactions.insert(), [compaction_row(compaction)])
                return await self._compaction_scope(conn, record.id, record.tenant)

    async def load_compactions(
        self, conversation_id: str, *, tenant: str, epoch: int | None = None
    ) -> list[CompactionRecord]:
        _context.check_load_compactions(conversation_id, tenant, epoch)
        query = (
            sa.select(compactions.c.data)
            .where(compactions.c.conversation_id == conversation_id)
            .order_by(compactions.c.epoch)
        )
        if epoch is not None:
            query = query.where(compactions.c.epoch == epoch)
        engine = await self._reads()
        with translate_errors(self.url):
            async with engine.connect() as conn:
                await self._compaction_scope(conn, conversation_id, tenant)
                texts = list((await conn.execute(query)).scalars())
        return [decode_compaction(text) for text in texts]

    async def load_step_range(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int | None = None,
    ) -> list[StoredStep]:
        _context.check_step_range(conversation_id, tenant, after_seq, before_seq, limit)
        seq = steps.c.seq
        query = self._step_select.where(steps.c.conversation_id == conversation_id)
        query = query.where(seq > after_seq)
        if before_seq is not None:
            query = query.where(seq < before_seq)
        backwards = before_seq is not None and limit is not None
        query = query.order_by(seq.desc() if backwards else seq)
        if limit is not None:
            query = query.limit(limit)
        engine = await self._reads()
        with translate_errors(self.url):
            async with engine.connect() as conn:
                await self._compaction_scope(conn, conversation_id, tenant)
                rows = list((await conn.execute(query)).all())
        if backwards:
            rows.reverse()
        return decode_steps(conversation_id, rows)

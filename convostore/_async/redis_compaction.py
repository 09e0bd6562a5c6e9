"""Compactions on Redis: the part of :class:`AsyncRedisStore` behind ``append_compaction`` and
``load_compactions`` (a base class of it; it uses the store's client).

Per conversation, beside the keys of ``_redis_keys``::

    <prefix>{<id>}:x   list: one JSON compaction record per epoch, in epoch order

``append_compaction`` is one script: the version and epoch check, the conversation's
``COMPACT_FIELDS`` and the RPUSH, atomically (a re-run of itself is recognised by its token).
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio
import redis.exceptions

from .. import _redis_keys as keys
from .._core import context as _context
from .._core import store_rules as rules
from .._exceptions import (
    ConcurrentTurnError,
    ConversationNotFound,
    CorruptRecordError,
    TurnInFlight,
    ValidationError,
)
from ..models import CompactionRecord, ConversationRecord, StoredStep
from .redis_pending import translate_errors

_FIRST_VALUE = 7
_HSET = ", ".join(
    f"'{name}', ARGV[{_FIRST_VALUE + index}]"
    for index, name in enumerate((*_context.COMPACT_FIELDS, "_w"))
)
_RECORD_AT = _FIRST_VALUE + len(_context.COMPACT_FIELDS) + 1

# KEYS: record, compactions, pending.  ARGV: tenant JSON, expected version, epoch before, last seq,
# last turn, token, COMPACT_FIELDS values…, token, compaction JSON.  Returns {0} missing,
# {2, version} stale, {4} an epoch that does not follow, {5} past the stored counts, {6,
# pending} a turn is in flight,
# {3} written (also for a re-run of itself).
APPEND_COMPACTION = f"""
local now = redis.call('HMGET', KEYS[1], 'tenant', 'version', 'context_epoch', 'step_count',
  'turn_count', '_exp', '_w')
if now[1] ~= ARGV[1] then return {{0}} end
if now[7] == ARGV[6] then return {{3}} end
if now[2] ~= ARGV[2] then return {{2, now[2]}} end
if (now[3] or '0') ~= ARGV[3] then return {{4}} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {{6, redis.call('HGETALL', KEYS[3])}} end
if tonumber(ARGV[4]) > tonumber(now[4]) or tonumber(ARGV[5]) > tonumber(now[5]) then
  return {{5}}
end
redis.call('HSET', KEYS[1], {_HSET})
redis.call('RPUSH', KEYS[2], ARGV[{_RECORD_AT}])
if now[6] and now[6] ~= '' then redis.call('PEXPIREAT', KEYS[2], now[6]) end
return {{3}}
"""


def compaction_key(prefix: str, conversation_id: str) -> str:
    return f"{prefix}{{{conversation_id}}}:x"


class AsyncRedisCompaction:
    """Compactions (see the module docstring)."""

    _client: redis.asyncio.Redis
    _prefix: str

    async def _eval(self, source: str, script_keys: list[str], args: list[Any]) -> Any:
        raise NotImplementedError  # redis_pending's

    async def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        raise NotImplementedError  # the store's

    async def _scoped(self, conversation_id: str, tenant: str, *commands: Any) -> list[Any]:
        raise NotImplementedError  # the store's

    async def _expire_compactions(self, record: ConversationRecord) -> None:
        """The compactions take the conversation's expiry (after ``update_conversation``)."""
        key = compaction_key(self._prefix, record.id)
        with translate_errors():
            if record.expires_at is None:
                await self._client.persist(key)
            else:
                await self._client.pexpireat(key, int(record.expires_at.timestamp() * 1000))

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
        steps_key = keys.conversation_keys(self._prefix, conversation_id)[2]
        with translate_errors():
            found = await self._scoped(conversation_id, tenant)
            first, last = _context.step_window(found[0], after_seq, before_seq, limit)
            if first > last:
                return []
            rows: Any = await self._client.lrange(steps_key, first - 1, last - 1)
        return keys.decode_steps(conversation_id, first, rows)

    async def append_compaction(
        self, record: ConversationRecord, compaction: CompactionRecord
    ) -> ConversationRecord:
        record, compaction = _context.check_compaction(record, compaction)
        cid = record.id
        data = record.model_dump(mode="json", include=set(_context.COMPACT_FIELDS))
        token = os.urandom(16).hex()
        args: list[Any] = [
            rules.dumps(record.tenant),
            rules.dumps(record.version - 1),
            rules.dumps(compaction.epoch - 1),
            str(compaction.last_seq),
            str(compaction.last_turn),
            token,
            *(rules.dumps(data[name]) for name in _context.COMPACT_FIELDS),
            token,
            rules.dumps(compaction.model_dump(mode="json")),
        ]
        record_key = keys.conversation_keys(self._prefix, cid)[0]
        with translate_errors():
            status = await self._eval(
                APPEND_COMPACTION,
                [
                    record_key,
                    compaction_key(self._prefix, cid),
                    keys.pending_key(self._prefix, cid),
                ],
                args,
            )
        if status[0] == 0:
            raise ConversationNotFound(cid)
        if status[0] == 2:
            raise ConcurrentTurnError(
                cid, expected_version=record.version - 1, actual_version=int(status[1])
            )
        if status[0] == 4:
            raise ValidationError(f"compaction epoch {compaction.epoch} does not follow the stored")
        if status[0] == 6:
            raise TurnInFlight(cid, pending=keys.decode_pending_hash(status[1]))
        if status[0] == 5:
            raise ValidationError("a compaction cannot cover steps or turns not yet stored")
        return await self.get_conversation(cid, tenant=record.tenant)

    async def load_compactions(
        self, conversation_id: str, *, tenant: str, epoch: int | None = None
    ) -> list[CompactionRecord]:
        _context.check_load_compactions(conversation_id, tenant, epoch)
        record_key = keys.conversation_keys(self._prefix, conversation_id)[0]
        with translate_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(record_key, "tenant")
                pipe.lrange(compaction_key(self._prefix, conversation_id), 0, -1)
                stored_tenant, raw = await pipe.execute()
        if stored_tenant != rules.dumps(tenant).encode():
            raise ConversationNotFound(conversation_id)
        try:
            found = [CompactionRecord.model_validate_json(item) for item in raw]
        except ValueError as exc:
            raise CorruptRecordError(f"stored compaction does not parse: {exc}") from exc
        return _context.select(found, epoch)

"""Turns in flight and the outbox on Redis: the part of :class:`AsyncRedisStore` behind
``begin_turn`` … ``remove_outbox`` (a base class of it; it uses the store's client), and the
translation of redis-py errors both use. Keys and scripts are in ``convostore._redis_keys``.

A turn in flight is one hash under the conversation's hash tag, written by scripts that check
the conversation (begin) or the lease (update, claim, release); the append and delete scripts
remove it. Its entries in the listing index are written after the begin script, and removed
after a release or a delete; a commit (the append script) leaves its entry to the next begin
on that conversation to remove, in the round trip that writes the new one, so a turn costs
no extra round trip. ``list_pending`` skips and removes entries left behind (the last
commit of a conversation, a crash, an expiry). The outbox is a hash and a sorted set under
one hash tag, written by scripts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import redis.asyncio
import redis.exceptions

from .. import _redis_keys as keys
from .._core import store_rules as rules
from .._exceptions import (
    ConcurrentTurnError,
    ConversationNotFound,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    TurnInFlight,
    ValidationError,
)
from ..models import OutboxItem, PendingTurnRecord

BATCH = 200
MAX_STALE = 10_000
"""Stale listing entries remembered for removal at most (see ``_left_stale``)."""


@contextmanager
def translate_errors() -> Iterator[None]:
    """The one place redis-py errors become convostore errors."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"Redis error: {exc}") from exc
    except redis.exceptions.RedisClusterException as exc:  # not a RedisError
        if "cannot be connected" in str(exc):
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        raise StoreError(f"Redis error: {exc}") from exc
    except (AttributeError, TypeError) as exc:
        # redis-py's asyncio connections let a transport's AttributeError/TypeError out when
        # the connection is closed under a write (redis/redis-py#4287; seen on a cluster
        # client whose first concurrent commands race its slot-map initialisation): a broken
        # connection, so retryable, not a bug of the caller's
        if not _raised_in_driver(exc):
            raise
        raise StoreUnavailable(f"Redis connection broken: {type(exc).__name__}: {exc}") from exc


def _raised_in_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = "" if tb is None else str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.startswith(("redis.", "asyncio."))


class AsyncRedisPending:
    """Turns in flight and the outbox (see the module docstring)."""

    _client: redis.asyncio.Redis
    _prefix: str
    _stale: dict[str, tuple[str, Any]]
    """Listing entries left by committed turns, by conversation (see ``_left_stale``)."""
    _cluster: bool
    """A Redis Cluster client (its pipelines refuse scripts)."""

    async def _eval(
        self,
        source: str,
        script_keys: list[str],
        args: list[Any],
        *,
        index: Sequence[tuple[str, str, Any]] = (),
    ) -> Any:
        """``_run`` for a script given by its source (loaded by EVAL on NOSCRIPT).

        ``index``: ``(command, index key, member)`` updates of the listing indexes (other
        hash tags than the script's keys, so not in it) sent in the same round trip, ahead
        of the script; they are idempotent, and the listing drops entries it finds stale.
        """
        count = len(script_keys)
        sha = keys.sha(source)
        try:
            if not index:
                return await self._client.evalsha(sha, count, *script_keys, *args)
            async with self._client.pipeline(transaction=False) as pipe:
                for command, index_key, member in index:
                    if command == "zadd":
                        pipe.zadd(index_key, {member: 0})
                    else:
                        pipe.zrem(index_key, member)
                if self._cluster:  # a cluster pipeline refuses scripts
                    await pipe.execute()
                    return await self._client.evalsha(sha, count, *script_keys, *args)
                pipe.evalsha(sha, count, *script_keys, *args)
                return (await pipe.execute())[-1]
        except redis.exceptions.NoScriptError:
            return await self._client.eval(source, count, *script_keys, *args)

    def _left_stale(self, conversation_id: str) -> list[tuple[str, str, Any]]:
        """The removal of the listing entry a conversation's previous turn in flight left
        (handed back by its next ``begin_turn``), to send with this worker's next write on
        it; a worker that dies first leaves it to the listing's own cleaning."""
        stale = self._stale.pop(conversation_id, None)
        if stale is None:
            return []
        tenant, member = stale
        return [("zrem", index, member) for index in keys.pending_index_keys(self._prefix, tenant)]

    def _pkey(self, conversation_id: str) -> str:
        return keys.pending_key(self._prefix, conversation_id)

    async def _unlist_pending(self, tenant: str, member: Any) -> None:
        """Remove a pending turn's index entries (after the script that deleted it)."""
        if member:
            async with self._client.pipeline(transaction=False) as pipe:
                for index in keys.pending_index_keys(self._prefix, tenant):
                    pipe.zrem(index, member)
                await pipe.execute()

    # ----------------------------------------------------------------- turns in flight

    async def begin_turn(self, pending: PendingTurnRecord) -> None:
        rules.check_pending(pending)
        cid, tenant, token = pending.conversation_id, pending.tenant, uuid.uuid4().hex
        member = keys.index_member(pending.created_at, cid)
        args: list[Any] = [rules.dumps(tenant), str(pending.planned_version), str(pending.seq - 1)]
        args += [token, *keys.pending_fields(pending, member, token)]
        # listed before the pending record exists (same round trip): a worker that dies
        # right after the script leaves a turn recovery can find; a refused begin leaves an
        # entry the listing drops
        listed = [
            ("zadd", index, member) for index in keys.pending_index_keys(self._prefix, tenant)
        ]
        with translate_errors():
            record_key = keys.conversation_keys(self._prefix, cid)[0]
            status = await self._eval(
                keys.BEGIN,
                [record_key, self._pkey(cid)],
                args,
                index=[*listed, *self._left_stale(cid)],
            )
            if status[0] == 3:
                if len(status) > 1 and status[1]:  # the previous turn's entry
                    if len(self._stale) >= MAX_STALE:
                        self._stale.clear()  # the listing cleans what is dropped here
                    self._stale[cid] = (tenant, status[1])
                return
        if status[0] == 0:
            raise ConversationNotFound(cid)
        if status[0] == 1:
            raise TurnInFlight(cid, pending=keys.decode_pending_hash(status[1]))
        if status[0] == 2:
            raise ConcurrentTurnError(
                cid, expected_version=pending.planned_version, actual_version=int(status[1])
            )
        raise ValidationError(f"pending turn seq {pending.seq} of {cid!r} is not the next seq")

    async def get_pending(self, conversation_id: str, *, tenant: str) -> PendingTurnRecord | None:
        rules.check_scope(conversation_id, tenant)
        with translate_errors():
            raw = await self._client.hgetall(self._pkey(conversation_id))
        if not raw or raw.get(b"tenant") != rules.dumps(tenant).encode():
            return None
        return keys.decode_pending_hash(raw)

    async def update_pending(self, pending: PendingTurnRecord, *, owner: str) -> None:
        rules.check_progress(pending)
        rules.check_owner(owner)
        args = [rules.dumps(pending.tenant), pending.idempotency_key, rules.dumps(owner)]
        args += keys.progress_fields(pending)
        with translate_errors():
            written = await self._eval(
                keys.UPDATE_PENDING,
                [self._pkey(pending.conversation_id)],
                args,
                index=self._left_stale(pending.conversation_id),
            )
        if not written:
            raise LeaseLost(pending.conversation_id, idempotency_key=pending.idempotency_key)

    async def claim_pending(
        self,
        conversation_id: str,
        *,
        tenant: str,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
    ) -> PendingTurnRecord | None:
        rules.check_claim(conversation_id, tenant, owner, now, lease_expires_at)
        args = [rules.dumps(tenant), rules.dumps(owner), str(rules.epoch_us(now))]
        expiry = rules.epoch_us(lease_expires_at)
        args += [str(expiry), rules.dumps(lease_expires_at.isoformat())]
        with translate_errors():
            raw = await self._eval(keys.CLAIM, [self._pkey(conversation_id)], args)
        return None if raw is None else keys.decode_pending_hash(raw)

    async def release_pending(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> bool:
        rules.check_pending_key(conversation_id, tenant, idempotency_key)
        args = [rules.dumps(tenant), idempotency_key]
        with translate_errors():
            member = await self._eval(keys.RELEASE, [self._pkey(conversation_id)], args)
            await self._unlist_pending(tenant, member)
        return member is not None

    async def list_pending(
        self,
        *,
        tenant: str | None,
        expired_at: datetime | None = None,
        limit: int = 100,
    ) -> list[PendingTurnRecord]:
        """As the contract says; index entries left by a crash or by a commit are removed
        on the way (a commit deletes the pending hash in its script, the entry after it)."""
        rules.check_list_pending(tenant, expired_at, limit)
        all_index, tenant_index = keys.pending_index_keys(self._prefix, tenant or "")
        index = all_index if tenant is None else tenant_index
        out: list[PendingTurnRecord] = []
        bound = b"-"
        with translate_errors():
            while len(out) < limit:
                members: Any = await self._client.zrange(
                    index, bound, "+", bylex=True, offset=0, num=BATCH
                )
                if not members:
                    break
                async with self._client.pipeline(transaction=False) as pipe:
                    for member in members:
                        pipe.hgetall(self._pkey(keys.member_id(member)))
                    raws: list[Any] = await pipe.execute()
                dangling = []
                for member, raw in zip(members, raws, strict=True):
                    if raw.get(b"_m") != member:  # gone, or a later turn's under this id
                        dangling.append(member)
                        continue
                    found = keys.decode_pending_hash(raw)
                    if expired_at is None or found.lease_expires_at <= expired_at:
                        out.append(found)
                if dangling:
                    await self._client.zrem(index, *dangling)
                bound = b"(" + members[-1]
        return out[:limit]

    # ----------------------------------------------------------------- outbox

    async def add_outbox(self, items: Sequence[OutboxItem]) -> None:
        checked = {item.id: item for item in rules.check_outbox_items(items)}
        args = []
        for item_id, item in checked.items():
            args += [item_id, item.model_dump_json(), str(rules.epoch_us(item.next_attempt_at))]
        with translate_errors():
            for start in range(0, len(args), 3 * BATCH):
                chunk = args[start : start + 3 * BATCH]
                await self._eval(keys.ADD_OUTBOX, keys.outbox_keys(self._prefix), chunk)

    async def list_outbox(
        self, *, tenant: str | None, due_at: datetime | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        """As the contract says; every due item is read (the outbox holds what is still to
        be done, normally a handful), then filtered by tenant and ordered."""
        rules.check_list_outbox(tenant, due_at, limit)
        items_key, due_key = keys.outbox_keys(self._prefix)
        top = "+inf" if due_at is None else rules.epoch_us(due_at)
        found: list[OutboxItem] = []
        with translate_errors():
            ids: Any = await self._client.zrangebyscore(due_key, "-inf", top)
            for start in range(0, len(ids), BATCH):
                chunk = ids[start : start + BATCH]
                texts: Any = await self._client.hmget(items_key, chunk)
                gone = [item_id for item_id, text in zip(chunk, texts, strict=True) if not text]
                if gone:
                    await self._client.zrem(due_key, *gone)
                found += [
                    rules.decode_outbox(rules.loads(text, "stored outbox item"))
                    for text in texts
                    if text
                ]
        return rules.select_outbox(found, tenant=tenant, due_at=due_at, limit=limit)

    async def update_outbox(self, item: OutboxItem) -> None:
        rules.check_outbox_items([item])
        script_keys = keys.outbox_keys(self._prefix)
        with translate_errors():
            for _ in range(10):  # re-read when another update lands in between
                text: Any = await self._client.hget(script_keys[0], item.id)
                if text is None:
                    return
                stored = rules.decode_outbox(rules.loads(text, "stored outbox item"))
                if stored.tenant != item.tenant:
                    return
                fields = {name: getattr(item, name) for name in rules.OUTBOX_RETRY_FIELDS}
                new = stored.model_copy(update=fields)
                score = rules.epoch_us(new.next_attempt_at)
                args = [item.id, text, new.model_dump_json(), score]
                if await self._eval(keys.UPDATE_OUTBOX, script_keys, args):
                    return
        raise StoreError(f"outbox item {item.id!r} kept changing; not updated")

    async def remove_outbox(self, ids: Sequence[str]) -> None:
        checked = rules.check_outbox_ids(ids)
        with translate_errors():
            for start in range(0, len(checked), BATCH):
                chunk = checked[start : start + BATCH]
                await self._eval(keys.REMOVE_OUTBOX, keys.outbox_keys(self._prefix), chunk)

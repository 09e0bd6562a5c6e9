"""A store wrapper that encrypts step payloads and settings at rest (see convostore._encryption).

``open_async_store(url, encryption=KeyRing(...))`` returns one. It implements the whole store
contract over any backend: it checks its input as every store does, seals what it writes and
opens what it reads. Ids, tenants, timestamps, counts, versions, step types, turn records
(status, usage, interaction ids) stay readable by the backend, which orders, lists and cuts
histories with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .. import _encryption as enc
from .._core import context as _context
from .._core import store_rules as rules
from .._exceptions import (
    ConcurrentTurnError,
    ConversationNotFound,
    CorruptCiphertextError,
    TurnInFlight,
)
from ..models import (
    AppendResult,
    CompactionRecord,
    ConversationRecord,
    OutboxItem,
    Page,
    PendingTurnRecord,
    StoredStep,
    TurnCommit,
    TurnRecord,
)
from .store import AsyncStore

__all__ = ["AsyncEncryptedStore", "async_rotate_keys"]


def _compaction_aad(compaction: CompactionRecord, index: int, kind: str) -> bytes:
    # ids never contain "|" and the free-form type comes last: unambiguous
    return (
        f"convostore-compaction|{enc._VERSION}|{compaction.conversation_id}|{compaction.epoch}"
        f"|{index}|{kind}"
    ).encode()


def seal_compaction(dek: bytes, compaction: CompactionRecord) -> CompactionRecord:
    """The stored form of a compaction: its replacement steps (payloads) encrypted, their
    types kept readable."""
    aead = enc._aesgcm(dek)
    sealed = [
        {
            "type": step["type"],
            enc.ENCRYPTED_FIELD: enc._seal(
                aead, step, _compaction_aad(compaction, i, step["type"])
            ),
        }
        for i, step in enumerate(compaction.steps)
    ]
    return compaction.model_copy(update={"steps": sealed})


def open_compaction(dek: bytes, stored: CompactionRecord) -> CompactionRecord:
    """A compaction with its replacement steps decrypted.

    Raises:
        CorruptCiphertextError: altered, moved, or not encrypted.
    """
    aead = enc._aesgcm(dek)
    cid = stored.conversation_id
    opened = []
    for i, step in enumerate(stored.steps):
        kind = step.get("type")
        aad = _compaction_aad(stored, i, str(kind))
        payload = enc._open(aead, step.get(enc.ENCRYPTED_FIELD), aad, cid, None)
        if type(payload) is not dict or payload.get("type") != kind:
            raise CorruptCiphertextError(
                "decrypted compaction step is not a step of its type", conversation_id=cid
            )
        opened.append(payload)
    return stored.model_copy(update={"steps": opened})


class AsyncEncryptedStore:
    """Wraps a store so that what it stores is encrypted under ``keyring``.

    Args:
        inner: the backend store; the wrapper closes it on ``aclose``.
        keyring: the key-encryption keys; new data keys are wrapped under its primary.
        cache_size: how many unwrapped data keys to keep in memory (LRU by conversation).

    Reads raise :class:`~convostore.MissingKeyError`, :class:`~convostore.WrongKeyError` or
    :class:`~convostore.CorruptCiphertextError`; nothing undecryptable is ever skipped.
    """

    def __init__(self, inner: AsyncStore, keyring: enc.KeyRing, *, cache_size: int = 1024) -> None:
        self.inner = inner
        self.keyring = keyring
        self.url: str = inner.url
        self._deks = enc.DataKeyCache(cache_size)

    def __repr__(self) -> str:
        return f"<AsyncEncryptedStore {self.url} {self.keyring!r}>"

    # ------------------------------------------------------------------ data keys

    def _open_record(self, stored: ConversationRecord) -> ConversationRecord:
        """The caller's view of a stored record; caches its data key."""
        dek = enc.unwrap_dek(self.keyring, enc.envelope_of(stored), stored.id)
        self._deks.put(stored.id, dek, stored.created_at)
        metadata = {k: v for k, v in stored.metadata.items() if k != enc.DEK_FIELD}
        config = enc.open_config(dek, stored.id, stored.config)
        return stored.model_copy(update={"config": config, "metadata": metadata})

    async def _dek(
        self, conversation_id: str, tenant: str, created_at: datetime | None = None
    ) -> bytes:
        cached = self._deks.get(conversation_id)
        if cached is not None and (created_at is None or cached[1] == created_at):
            return cached[0]
        return await self._fresh_dek(conversation_id, tenant)

    async def _fresh_dek(self, conversation_id: str, tenant: str) -> bytes:
        stored = await self.inner.get_conversation(conversation_id, tenant=tenant)
        dek = enc.unwrap_dek(self.keyring, enc.envelope_of(stored), stored.id)
        self._deks.put(stored.id, dek, stored.created_at)
        return dek

    # ------------------------------------------------------------------ the contract

    async def create_conversation(
        self,
        record: ConversationRecord,
        *,
        turns: Sequence[TurnRecord] = (),
        steps: Sequence[StoredStep] = (),
    ) -> ConversationRecord:
        rules.check_new_conversation(record, turns, steps)
        enc.check_unreserved(record.metadata)
        dek = enc.new_dek()
        sealed = record.model_copy(
            update={
                "config": enc.seal_config(dek, record.id, record.config),
                "metadata": {
                    **record.metadata,
                    enc.DEK_FIELD: enc.wrap_dek(self.keyring, dek, record.id),
                },
            }
        )
        created = await self.inner.create_conversation(
            sealed, turns=turns, steps=enc.seal_steps(dek, steps)
        )
        self._deks.put(record.id, dek, created.created_at)
        return created.model_copy(update={"config": record.config, "metadata": record.metadata})

    async def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        return self._open_record(await self.inner.get_conversation(conversation_id, tenant=tenant))

    async def append_turn(self, commit: TurnCommit) -> AppendResult:
        rules.check_commit(commit)
        record = commit.record
        dek = await self._dek(record.id, record.tenant, record.created_at)
        # append never writes config or metadata; sealing the config all the same keeps
        # plaintext settings out of any backend that logs or caches what it is handed
        sealed = commit.model_copy(
            update={
                "record": record.model_copy(
                    update={"config": enc.seal_config(dek, record.id, record.config)}
                ),
                "steps": enc.seal_steps(dek, commit.steps),
            }
        )
        return await self.inner.append_turn(sealed)

    async def find_turn(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> TurnRecord | None:
        return await self.inner.find_turn(
            conversation_id, tenant=tenant, idempotency_key=idempotency_key
        )

    async def load_steps(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        newest: int | None = None,
        turn: int | None = None,
    ) -> list[StoredStep]:
        stored = await self.inner.load_steps(
            conversation_id, tenant=tenant, after_seq=after_seq, newest=newest, turn=turn
        )
        if not stored:
            return []
        cached = self._deks.get(conversation_id) is not None
        dek = await self._dek(conversation_id, tenant)
        try:
            return enc.open_steps(dek, stored)
        except CorruptCiphertextError:
            if not cached:
                raise
        # the cached key may belong to an earlier conversation under this id (deleted and
        # re-created by another process): one re-read settles it
        dek = await self._fresh_dek(conversation_id, tenant)
        return enc.open_steps(dek, stored)

    async def load_turns(
        self, conversation_id: str, *, tenant: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TurnRecord]:
        return await self.inner.load_turns(
            conversation_id, tenant=tenant, after_seq=after_seq, limit=limit
        )

    async def list_conversations(
        self,
        *,
        tenant: str | None,
        user: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        page = await self.inner.list_conversations(
            tenant=tenant, user=user, limit=limit, cursor=cursor
        )
        return page.model_copy(update={"items": [self._open_record(r) for r in page.items]})

    async def update_conversation(self, record: ConversationRecord) -> ConversationRecord:
        rules.check_update(record)
        enc.check_unreserved(record.metadata)
        # the stored envelope is read, not taken from the cache: a rotation may have re-wrapped
        # it since, and writing back an older envelope would undo that rotation
        stored = await self.inner.get_conversation(record.id, tenant=record.tenant)
        envelope = enc.envelope_of(stored)
        dek = enc.unwrap_dek(self.keyring, envelope, stored.id)
        sealed = record.model_copy(
            update={
                "config": enc.seal_config(dek, record.id, record.config),
                "metadata": {**record.metadata, enc.DEK_FIELD: envelope},
            }
        )
        return self._open_record(await self.inner.update_conversation(sealed))

    async def delete_conversation(self, conversation_id: str, *, tenant: str) -> bool:
        deleted = await self.inner.delete_conversation(conversation_id, tenant=tenant)
        if deleted:
            self._deks.drop(conversation_id)
        return deleted

    async def purge(
        self,
        *,
        now: datetime | None = None,
        older_than: datetime | None = None,
        tenant: str | None = None,
        dry_run: bool = False,
    ) -> list[ConversationRecord]:
        """As the contract says. Deleting needs no key (a lost key never makes data
        undeletable), but the records returned are decrypted: an undecryptable one raises
        after the deletion, naming the conversation."""
        purged = await self.inner.purge(
            now=now, older_than=older_than, tenant=tenant, dry_run=dry_run
        )
        if not dry_run:
            for record in purged:
                self._deks.drop(record.id)
        return [self._open_record(r) for r in purged]

    # ------------------------------------------------------------------ compactions

    async def append_compaction(
        self, record: ConversationRecord, compaction: CompactionRecord
    ) -> ConversationRecord:
        record, compaction = _context.check_compaction(record, compaction)
        # read afresh, as begin_turn does: sealing under a stale cached key would leave the
        # compaction unreadable
        stored = await self.inner.get_conversation(record.id, tenant=record.tenant)
        dek = enc.unwrap_dek(self.keyring, enc.envelope_of(stored), stored.id)
        sealed_record = record.model_copy(
            update={"config": stored.config, "metadata": stored.metadata}
        )
        try:
            written = await self.inner.append_compaction(
                sealed_record, seal_compaction(dek, compaction)
            )
        except TurnInFlight as exc:
            opened = await self._open_pending(exc.pending)
            raise TurnInFlight(record.id, pending=opened) from exc
        return self._open_record(written)

    async def load_compactions(
        self, conversation_id: str, *, tenant: str, epoch: int | None = None
    ) -> list[CompactionRecord]:
        found = await self.inner.load_compactions(conversation_id, tenant=tenant, epoch=epoch)
        if not found:
            return []
        dek = await self._fresh_dek(conversation_id, tenant)
        return [open_compaction(dek, c) for c in found]

    async def load_step_range(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int | None = None,
    ) -> list[StoredStep]:
        stored = await self.inner.load_step_range(
            conversation_id, tenant=tenant, after_seq=after_seq, before_seq=before_seq, limit=limit
        )
        if not stored:
            return []
        return enc.open_steps(await self._fresh_dek(conversation_id, tenant), stored)

    # ------------------------------------------------------------------ turns in flight

    async def _open_pending(self, stored: PendingTurnRecord) -> PendingTurnRecord:
        cid, tenant = stored.conversation_id, stored.tenant
        cached = self._deks.get(cid) is not None
        try:
            return enc.open_pending(await self._dek(cid, tenant), stored)
        except CorruptCiphertextError:
            if not cached:
                raise
        # as in load_steps: the cached key may be an earlier conversation's under this id
        return enc.open_pending(await self._fresh_dek(cid, tenant), stored)

    async def begin_turn(self, pending: PendingTurnRecord) -> None:
        """As the contract says; the input steps and settings are encrypted under the
        conversation's data key, read afresh (one more read per turn): sealing under a stale
        cached key would leave the record unreadable."""
        rules.check_pending(pending)
        dek = await self._fresh_dek(pending.conversation_id, pending.tenant)
        try:
            await self.inner.begin_turn(enc.seal_pending(dek, pending))
        except TurnInFlight as exc:
            opened = await self._open_pending(exc.pending)
            raise TurnInFlight(pending.conversation_id, pending=opened) from exc

    async def get_pending(self, conversation_id: str, *, tenant: str) -> PendingTurnRecord | None:
        stored = await self.inner.get_pending(conversation_id, tenant=tenant)
        return None if stored is None else await self._open_pending(stored)

    async def update_pending(self, pending: PendingTurnRecord, *, owner: str) -> None:
        rules.check_progress(pending)
        # only progress is written: the payloads need not travel (and must not, in clear)
        await self.inner.update_pending(
            pending.model_copy(update={"input_steps": [], "config": {}}), owner=owner
        )

    async def claim_pending(
        self,
        conversation_id: str,
        *,
        tenant: str,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
    ) -> PendingTurnRecord | None:
        claimed = await self.inner.claim_pending(
            conversation_id, tenant=tenant, owner=owner, now=now, lease_expires_at=lease_expires_at
        )
        return None if claimed is None else await self._open_pending(claimed)

    async def release_pending(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> bool:
        return await self.inner.release_pending(
            conversation_id, tenant=tenant, idempotency_key=idempotency_key
        )

    async def list_pending(
        self,
        *,
        tenant: str | None,
        expired_at: datetime | None = None,
        limit: int = 100,
    ) -> list[PendingTurnRecord]:
        found = await self.inner.list_pending(tenant=tenant, expired_at=expired_at, limit=limit)
        return [await self._open_pending(stored) for stored in found]

    # ------------------------------------------------------------------ outbox (not encrypted)

    async def add_outbox(self, items: Sequence[OutboxItem]) -> None:
        await self.inner.add_outbox(items)

    async def list_outbox(
        self, *, tenant: str | None, due_at: datetime | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        return await self.inner.list_outbox(tenant=tenant, due_at=due_at, limit=limit)

    async def update_outbox(self, item: OutboxItem) -> None:
        await self.inner.update_outbox(item)

    async def remove_outbox(self, ids: Sequence[str]) -> None:
        await self.inner.remove_outbox(ids)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def async_rotate_keys(
    store: AsyncStore | AsyncEncryptedStore,
    keyring: enc.KeyRing,
    *,
    tenant: str | None = None,
    page_size: int = 200,
    max_retries: int = 10,
) -> enc.RotationReport:
    """Re-wrap every conversation's data key under ``keyring.primary``.

    O(conversations): the payloads stay encrypted under their data keys, which do not
    change; only the wrapping does. Each conversation is written through
    ``update_conversation`` under the version check, re-read and retried when a turn lands
    in between. Running it again is harmless (already re-wrapped conversations are counted
    as ``current``); an interrupted run can simply be restarted.

    Args:
        store: the backend store, or an encrypted store (its backend is used).
        keyring: holds the new primary key and every key id still in use.
        tenant: only this tenant's conversations (default: every tenant).
        page_size: conversations listed per page.
        max_retries: re-reads allowed for one conversation before giving up.

    Raises:
        MissingKeyError, WrongKeyError, CorruptCiphertextError: a data key could not be
            unwrapped; the conversations before it are rotated, none after it is skipped
            silently.
        ConcurrentTurnError: one conversation kept changing for ``max_retries`` re-reads.
    """
    inner = store.inner if isinstance(store, AsyncEncryptedStore) else store
    counts = {"conversations": 0, "rewrapped": 0, "current": 0, "vanished": 0, "retries": 0}
    cursor: str | None = None
    while True:
        page = await inner.list_conversations(tenant=tenant, limit=page_size, cursor=cursor)
        for listed in page.items:
            counts["conversations"] += 1
            outcome = await _rotate_one(inner, keyring, listed, max_retries, counts)
            counts[outcome] += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    return enc.RotationReport(primary=keyring.primary, **counts)


async def _rotate_one(
    inner: AsyncStore,
    keyring: enc.KeyRing,
    record: ConversationRecord,
    max_retries: int,
    counts: dict[str, int],
) -> str:
    attempt = 0
    while True:
        envelope = enc.envelope_of(record)
        if enc.is_current(keyring, envelope):
            return "current"
        dek = enc.unwrap_dek(keyring, envelope, record.id)
        rewrapped = record.model_copy(
            update={
                "version": record.version + 1,
                "metadata": {
                    **record.metadata,
                    enc.DEK_FIELD: enc.wrap_dek(keyring, dek, record.id),
                },
            }
        )
        try:
            await inner.update_conversation(rewrapped)
            return "rewrapped"
        except ConversationNotFound:
            return "vanished"
        except ConcurrentTurnError:
            attempt += 1
            counts["retries"] += 1
            if attempt > max_retries:
                raise
        try:
            record = await inner.get_conversation(record.id, tenant=record.tenant)
        except ConversationNotFound:
            return "vanished"

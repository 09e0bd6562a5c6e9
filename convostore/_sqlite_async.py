"""The asyncio SQLite store: the sync SQL store's operations, each run whole on a worker thread.

SQLite does its work in the calling thread, so an asyncio store on it needs a thread either
way. Through SQLAlchemy's asyncio layer and aiosqlite, every driver call is a hop to the
connection's thread and back (a cursor, an execute, a fetch, a close, the pool's reset): a
dozen hops for one append or one resume, each costing more than the statements. Here an
operation is one hop: the sync store (``convostore._sync.sql_store.SQLStore``, the same code
and the same transactions) runs it on a small pool of threads owned by this store.

Cancelling the awaiting task does not stop an operation already running on its thread: it
completes (or fails) there, as a statement already sent to a server would.

Small bounded reads (the record, a turn by key, the turn in flight, the newest N or one turn's
steps) run in the event loop's own thread once the store is set up: in WAL mode a reader never
waits for a lock, so such a read takes about as long as the thread hop it saves (tens of
microseconds). So do the writes of a turn (``begin_turn``, ``update_pending``,
``append_turn``) when the write lock is free at that instant: each is a
transaction of a few statements that takes about as long as the hop; if another writer holds
the lock, the ``BEGIN IMMEDIATE`` fails at once without waiting (nothing written) and the
operation goes to the threads, where it waits for the lock as usual. (SQLite's automatic WAL
checkpoint, every ~4 MB written, runs in the thread that commits: now and then the loop's.)
Whole-history reads and every other write go to the threads. An in-memory database (one
connection shared by every caller) keeps everything on its one thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from ._exceptions import ConfigurationError, StoreError
from ._sql import STORE_SETTINGS, WRITE_WITHOUT_WAITING, WouldWait, is_memory_sqlite
from ._sync.sql_store import SQLStore
from .models import (
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

T = TypeVar("T")

_INLINE_NEWEST = 200
"""The largest ``newest`` read in the event loop's thread (see the module docstring)."""

_WORKERS = 4
"""Threads per store: reads of a WAL file run side by side; writes queue in SQLite anyway."""


class AsyncSQLiteStore:
    """A SQLite store for asyncio (see :class:`~convostore._async.store.AsyncStore`)."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        engine_options: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self._sync = SQLStore(url, echo=echo, engine_options=engine_options, **settings)
        self.url = self._sync.url
        # an in-memory database is one connection shared by every caller: one thread
        self._shared = is_memory_sqlite(self._sync._sa_url)
        workers = 1 if self._shared else _WORKERS
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="convostore-sqlite")
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncSQLiteStore:
        """A store for ``url`` (``sqlite:///path``); no I/O happens until the first operation.
        Options as :meth:`convostore._sync.sql_store.SQLStore.from_url` takes them.

        Raises:
            ConfigurationError: not a SQL URL, or an unknown option.
        """
        unknown = set(options) - {"echo", "engine_options", *STORE_SETTINGS}
        if unknown:
            raise ConfigurationError(f"unknown SQL store option(s): {', '.join(sorted(unknown))}")
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _inline(self) -> bool:
        """Whether a small read may run in the event loop's thread (see the module docstring)."""
        return self._sync._ready and not self._shared and not self._closed

    async def _run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _write(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """A turn's small write: in this thread if the write lock is free now, else on the
        threads (see the module docstring)."""
        if self._inline():
            token = WRITE_WITHOUT_WAITING.set(True)
            try:
                return function(*args, **kwargs)
            except WouldWait:
                pass  # another writer has the lock: wait for it on a thread
            finally:
                WRITE_WITHOUT_WAITING.reset(token)
        return await self._run(function, *args, **kwargs)

    # ------------------------------------------------------------------ conversations and turns

    async def create_conversation(
        self,
        record: ConversationRecord,
        *,
        turns: Sequence[TurnRecord] = (),
        steps: Sequence[StoredStep] = (),
    ) -> ConversationRecord:
        return await self._run(self._sync.create_conversation, record, turns=turns, steps=steps)

    async def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        if self._inline():
            return self._sync.get_conversation(conversation_id, tenant=tenant)
        return await self._run(self._sync.get_conversation, conversation_id, tenant=tenant)

    async def append_turn(self, commit: TurnCommit) -> AppendResult:
        return await self._write(self._sync.append_turn, commit)

    async def find_turn(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> TurnRecord | None:
        if self._inline():
            return self._sync.find_turn(
                conversation_id, tenant=tenant, idempotency_key=idempotency_key
            )
        return await self._run(
            self._sync.find_turn, conversation_id, tenant=tenant, idempotency_key=idempotency_key
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
        small = turn is not None or (newest is not None and newest <= _INLINE_NEWEST)
        if small and self._inline():
            return self._sync.load_steps(
                conversation_id, tenant=tenant, after_seq=after_seq, newest=newest, turn=turn
            )
        return await self._run(
            self._sync.load_steps,
            conversation_id,
            tenant=tenant,
            after_seq=after_seq,
            newest=newest,
            turn=turn,
        )

    async def load_turns(
        self, conversation_id: str, *, tenant: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TurnRecord]:
        return await self._run(
            self._sync.load_turns, conversation_id, tenant=tenant, after_seq=after_seq, limit=limit
        )

    async def list_conversations(
        self,
        *,
        tenant: str | None,
        user: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        return await self._run(
            self._sync.list_conversations, tenant=tenant, user=user, limit=limit, cursor=cursor
        )

    async def update_conversation(self, record: ConversationRecord) -> ConversationRecord:
        return await self._run(self._sync.update_conversation, record)

    async def delete_conversation(self, conversation_id: str, *, tenant: str) -> bool:
        return await self._run(self._sync.delete_conversation, conversation_id, tenant=tenant)

    async def purge(
        self,
        *,
        now: datetime | None = None,
        older_than: datetime | None = None,
        tenant: str | None = None,
        dry_run: bool = False,
    ) -> list[ConversationRecord]:
        return await self._run(
            self._sync.purge, now=now, older_than=older_than, tenant=tenant, dry_run=dry_run
        )

    # ------------------------------------------------------------------ turns in flight

    # ------------------------------------------------------------------ compactions

    async def append_compaction(
        self, record: ConversationRecord, compaction: CompactionRecord
    ) -> ConversationRecord:
        return await self._run(self._sync.append_compaction, record, compaction)

    async def load_compactions(
        self, conversation_id: str, *, tenant: str, epoch: int | None = None
    ) -> list[CompactionRecord]:
        return await self._run(
            self._sync.load_compactions, conversation_id, tenant=tenant, epoch=epoch
        )

    async def load_step_range(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int | None = None,
    ) -> list[StoredStep]:
        return await self._run(
            self._sync.load_step_range,
            conversation_id,
            tenant=tenant,
            after_seq=after_seq,
            before_seq=before_seq,
            limit=limit,
        )

    # ------------------------------------------------------------------ turns in flight

    async def begin_turn(self, pending: PendingTurnRecord) -> None:
        await self._write(self._sync.begin_turn, pending)

    async def get_pending(self, conversation_id: str, *, tenant: str) -> PendingTurnRecord | None:
        if self._inline():
            return self._sync.get_pending(conversation_id, tenant=tenant)
        return await self._run(self._sync.get_pending, conversation_id, tenant=tenant)

    async def update_pending(self, pending: PendingTurnRecord, *, owner: str) -> None:
        await self._write(self._sync.update_pending, pending, owner=owner)

    async def claim_pending(
        self,
        conversation_id: str,
        *,
        tenant: str,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
    ) -> PendingTurnRecord | None:
        return await self._run(
            self._sync.claim_pending,
            conversation_id,
            tenant=tenant,
            owner=owner,
            now=now,
            lease_expires_at=lease_expires_at,
        )

    async def release_pending(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> bool:
        return await self._run(
            self._sync.release_pending,
            conversation_id,
            tenant=tenant,
            idempotency_key=idempotency_key,
        )

    async def list_pending(
        self,
        *,
        tenant: str | None,
        expired_at: datetime | None = None,
        limit: int = 100,
    ) -> list[PendingTurnRecord]:
        return await self._run(
            self._sync.list_pending, tenant=tenant, expired_at=expired_at, limit=limit
        )

    # ------------------------------------------------------------------ outbox

    async def add_outbox(self, items: Sequence[OutboxItem]) -> None:
        await self._run(self._sync.add_outbox, items)

    async def list_outbox(
        self, *, tenant: str | None, due_at: datetime | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        return await self._run(self._sync.list_outbox, tenant=tenant, due_at=due_at, limit=limit)

    async def update_outbox(self, item: OutboxItem) -> None:
        await self._run(self._sync.update_outbox, item)

    async def remove_outbox(self, ids: Sequence[str]) -> None:
        await self._run(self._sync.remove_outbox, ids)

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            await self._run(self._sync.close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

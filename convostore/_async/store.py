"""The storage contract every backend implements (asyncio flavour; the sync twin is generated).

The store is convostore's system of record. It is conversation-shaped and small: records in,
records out, every read and write scoped by tenant, every write of a turn checked against the
version it was planned from.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class AsyncStore(Protocol):
    """The storage contract. One conformance suite (``convostore.testing``) checks it.

    Tenant scoping: every method that names a conversation also names its tenant; a
    conversation of another tenant is reported exactly like a missing one
    (:class:`~convostore.ConversationNotFound`).
    """

    url: str
    """The store's URL with any password hidden; safe to print."""

    async def create_conversation(
        self,
        record: ConversationRecord,
        *,
        turns: Sequence[TurnRecord] = (),
        steps: Sequence[StoredStep] = (),
    ) -> ConversationRecord:
        """Insert a new conversation, optionally with existing history (fork, import, copy).

        All of it is written atomically. ``record.turn_count``/``step_count`` must match the
        given ``turns``/``steps``, whose seqs run 1..n.

        Raises:
            ConversationExists: the id is taken.
            ValidationError: inconsistent counts or seqs.
        """
        ...

    async def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        """Load one conversation.

        Raises:
            ConversationNotFound: missing, deleted, or another tenant's.
        """
        ...

    async def append_turn(self, commit: TurnCommit) -> AppendResult:
        """Write one turn with its steps and advance the conversation, atomically.

        If ``commit.turn.idempotency_key`` was already used in this conversation, nothing is
        written and the stored turn is returned with ``created=False`` (checked before the
        version). Otherwise the conversation's stored version must equal
        ``commit.expected_version``.

        In the same transaction, a pending turn of the conversation carrying
        ``commit.turn.idempotency_key`` is deleted (the turn replaces its pending record), also
        when the key was already used (``created=False``).

        Writes to the conversation: version, turn_count, step_count, head_interaction_id,
        head_created_at, head_model, last_turn_hash, updated_at (all from ``commit.record``).

        Raises:
            ConcurrentTurnError: the stored version differs (another writer won).
            ConversationNotFound: missing or another tenant's.
        """
        ...

    async def find_turn(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> TurnRecord | None:
        """The turn stored under an idempotency key, if any."""
        ...

    async def load_steps(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        newest: int | None = None,
        turn: int | None = None,
    ) -> list[StoredStep]:
        """Steps in seq order.

        ``after_seq``: only steps with a greater seq. ``turn``: only that turn's steps.
        ``newest=N``: the shortest suffix of the conversation holding at least ``min(N, all)``
        steps that starts at a clean boundary: the first step of a turn whose preceding turn
        did not end in ``requires_action`` (so a ``function_call`` is never separated from the
        ``function_result`` that answers it). Reads only that suffix, not the whole history.

        Raises:
            ConversationNotFound: missing or another tenant's.
        """
        ...

    async def load_turns(
        self, conversation_id: str, *, tenant: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TurnRecord]:
        """Turns in seq order, after ``after_seq``, at most ``limit``.

        Raises:
            ConversationNotFound: missing or another tenant's.
        """
        ...

    async def list_conversations(
        self,
        *,
        tenant: str | None,
        user: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """A tenant's conversations (optionally one user's), newest first by
        ``(created_at, id)``, keyset-paginated: a page stays stable while new conversations
        arrive. ``tenant=None`` must be passed explicitly and lists every tenant (operations
        use: export, copy, purge).
        """
        ...

    async def update_conversation(self, record: ConversationRecord) -> ConversationRecord:
        """Replace the settings of a conversation under the version check.

        ``record.version`` must be the stored version plus one. Writes mode, model, config,
        metadata, expires_at, head_interaction_id, head_created_at, head_model, updated_at and
        version; never the counts, the hash or the identity.

        Raises:
            ConcurrentTurnError: the stored version is not ``record.version - 1``.
            ConversationNotFound: missing or another tenant's.
        """
        ...

    async def delete_conversation(self, conversation_id: str, *, tenant: str) -> bool:
        """Delete a conversation with all its turns, steps and its pending turn. Idempotent:
        returns False when there was nothing to delete (missing or another tenant's). Outbox
        items naming it are kept."""
        ...

    async def purge(
        self,
        *,
        now: datetime | None = None,
        older_than: datetime | None = None,
        tenant: str | None = None,
        dry_run: bool = False,
    ) -> list[ConversationRecord]:
        """Delete every conversation whose ``expires_at`` is at or before ``now`` (default:
        the current time) or, when ``older_than`` is given, whose ``updated_at`` is before it.
        Returns the records deleted (or, with ``dry_run``, that would be)."""
        ...

    # ---------------------------------------------------------------- compactions

    async def append_compaction(
        self, record: ConversationRecord, compaction: CompactionRecord
    ) -> ConversationRecord:
        """Append a compaction (never a rewrite: no step is deleted or changed) and move the
        conversation to its epoch, atomically, under the version check of a turn.

        ``record`` is the conversation after the compaction (``context.compacted_record``):
        its ``version`` is the stored version plus one and its ``context_epoch`` the
        compaction's ``epoch``, the stored epoch plus one. Writes to the conversation:
        version, context_epoch, head_interaction_id, head_created_at, head_model, updated_at.

        Raises:
            ConcurrentTurnError: the stored version is not ``record.version - 1``.
            ConversationNotFound: missing or another tenant's.
            TurnInFlight: a turn is in flight (its commit would no longer continue the
                version it was planned from); nothing is written.
            ValidationError: malformed, an epoch that does not follow the stored one, or a
                range past the stored steps or turns.
        """
        ...

    async def load_compactions(
        self, conversation_id: str, *, tenant: str, epoch: int | None = None
    ) -> list[CompactionRecord]:
        """The conversation's compactions in epoch order (``epoch``: only that one).

        Raises:
            ConversationNotFound: missing or another tenant's.
        """
        ...

    async def load_step_range(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int | None = None,
    ) -> list[StoredStep]:
        """A page of the record, in seq order: the steps with ``after_seq < seq < before_seq``
        (a keyset read: only the page is read). With ``limit``, at most that many: the last
        ones before ``before_seq`` when it is given (scrolling back), else the first ones
        after ``after_seq``. Pages need not start at a turn boundary.

        Raises:
            ConversationNotFound: missing or another tenant's.
            ValidationError: a negative seq or a limit below 1.
        """
        ...

    # ---------------------------------------------------------------- turns in flight

    async def begin_turn(self, pending: PendingTurnRecord) -> None:
        """Record a turn in flight, before its request is sent.

        Written only if the conversation's stored version equals ``pending.planned_version``
        and no turn is in flight on it (checked in that order of precedence: in flight first).

        Raises:
            TurnInFlight: a turn is already pending (the error carries its record).
            ConcurrentTurnError: the stored version differs.
            ConversationNotFound: missing or another tenant's.
            ValidationError: ``pending.seq`` is not the stored ``turn_count + 1`` (checked after
                the version), or the record is malformed (checked before anything is read).
        """
        ...

    async def get_pending(self, conversation_id: str, *, tenant: str) -> PendingTurnRecord | None:
        """The conversation's turn in flight, if any (None also when the conversation is
        missing or another tenant's)."""
        ...

    async def update_pending(self, pending: PendingTurnRecord, *, owner: str) -> None:
        """Write the progress of a turn in flight: ``state``, ``interaction_id``,
        ``hop_ids``, ``continuation_token``, ``lease_owner``, ``lease_expires_at`` and
        ``updated_at`` (nothing else changes) — only if the stored pending record has
        ``pending.idempotency_key`` and is held by ``owner``.

        A lease that expired without anyone claiming it still lets its owner write (and, with
        a later ``lease_expires_at``, renew it): expiry only matters to ``claim_pending``.

        Raises:
            LeaseLost: it is no longer there (committed, released), another owner holds it, or
                it is another tenant's.
        """
        ...

    async def claim_pending(
        self,
        conversation_id: str,
        *,
        tenant: str,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
    ) -> PendingTurnRecord | None:
        """Take over a turn in flight whose lease has expired at ``now`` (or that ``owner``
        already holds): compare-and-set of ``lease_owner``/``lease_expires_at``. Returns the
        record as stored after the claim; None when nothing is pending (or the conversation is
        missing or another tenant's) or another owner's lease is still live. Of two workers
        claiming at once, one wins. Only the lease is written: ``updated_at`` stays the time
        of the turn's last progress."""
        ...

    async def release_pending(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> bool:
        """Delete the pending record carrying ``idempotency_key`` without committing a turn
        (the turn failed or was cancelled). Returns False when there was none. Idempotent."""
        ...

    async def list_pending(
        self,
        *,
        tenant: str | None,
        expired_at: datetime | None = None,
        limit: int = 100,
    ) -> list[PendingTurnRecord]:
        """Turns in flight, oldest first (by ``created_at``, then conversation id).
        ``tenant=None`` lists every tenant; ``expired_at`` keeps only those whose lease expired
        at that time."""
        ...

    # ---------------------------------------------------------------- outbox

    async def add_outbox(self, items: Sequence[OutboxItem]) -> None:
        """Record server-side effects still to be done (an item whose id exists is replaced)."""
        ...

    async def list_outbox(
        self, *, tenant: str | None, due_at: datetime | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        """Outstanding items, oldest first (by ``created_at``, then id); ``due_at`` keeps those
        whose ``next_attempt_at`` is at or before it; ``tenant=None`` lists every tenant."""
        ...

    async def update_outbox(self, item: OutboxItem) -> None:
        """Write an item's ``attempts``, ``last_error`` and ``next_attempt_at`` after a failed
        try (no-op if it was removed meanwhile, or if the stored item is another tenant's)."""
        ...

    async def remove_outbox(self, ids: Sequence[str]) -> None:
        """Remove done items. Idempotent."""
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent."""
        ...

# Generated from convostore/_async by scripts/unasync.py. Do not edit.
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
    ConversationRecord,
    Page,
    StoredStep,
    TurnCommit,
    TurnRecord,
)


@runtime_checkable
class Store(Protocol):
    """The storage contract. One conformance suite (``convostore.testing``) checks it.

    Tenant scoping: every method that names a conversation also names its tenant; a
    conversation of another tenant is reported exactly like a missing one
    (:class:`~convostore.ConversationNotFound`).
    """

    url: str
    """The store's URL with any password hidden; safe to print."""

    def create_conversation(
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

    def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        """Load one conversation.

        Raises:
            ConversationNotFound: missing, deleted, or another tenant's.
        """
        ...

    def append_turn(self, commit: TurnCommit) -> AppendResult:
        """Write one turn with its steps and advance the conversation, atomically.

        If ``commit.turn.idempotency_key`` was already used in this conversation, nothing is
        written and the stored turn is returned with ``created=False`` (checked before the
        version). Otherwise the conversation's stored version must equal
        ``commit.expected_version``.

        Writes to the conversation: version, turn_count, step_count, head_interaction_id,
        head_created_at, head_model, last_turn_hash, updated_at (all from ``commit.record``).

        Raises:
            ConcurrentTurnError: the stored version differs (another writer won).
            ConversationNotFound: missing or another tenant's.
        """
        ...

    def find_turn(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> TurnRecord | None:
        """The turn stored under an idempotency key, if any."""
        ...

    def load_steps(
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

    def load_turns(
        self, conversation_id: str, *, tenant: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TurnRecord]:
        """Turns in seq order, after ``after_seq``, at most ``limit``.

        Raises:
            ConversationNotFound: missing or another tenant's.
        """
        ...

    def list_conversations(
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

    def update_conversation(self, record: ConversationRecord) -> ConversationRecord:
        """Replace the settings of a conversation under the version check.

        ``record.version`` must be the stored version plus one. Writes mode, model, config,
        metadata, expires_at, head_interaction_id, head_created_at, head_model, updated_at and
        version; never the counts, the hash or the identity.

        Raises:
            ConcurrentTurnError: the stored version is not ``record.version - 1``.
            ConversationNotFound: missing or another tenant's.
        """
        ...

    def delete_conversation(self, conversation_id: str, *, tenant: str) -> bool:
        """Delete a conversation with all its turns and steps. Idempotent: returns False when
        there was nothing to delete (missing or another tenant's)."""
        ...

    def purge(
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

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...

"""The read-only facade the web view opens a store through.

:class:`ReadOnlyStore` exposes the four reads of the store contract and nothing else: there is
no method here, and so no code path in the web view, that appends, creates, updates, deletes or
purges. The store it wraps is private to it.

Listing an encrypted store goes to the backend beneath the encryption: the columns a list
shows (ids, tenant, user, mode, model, times, counts) are stored in clear, so one conversation
whose key is missing or wrong is shown with its key problem instead of failing the whole page.
Everything else (a transcript, a verification, an export) goes through the encrypting store and
reports such a conversation's error on its own page.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, cast

from .. import _encryption as enc
from .._exceptions import EncryptionError
from .._sync.encrypted_store import EncryptedStore
from ..models import (
    CompactionRecord,
    ConversationRecord,
    OutboxItem,
    Page,
    PendingTurnRecord,
    StoredStep,
    TurnRecord,
)

if TYPE_CHECKING:
    from .._sync.store import Store

__all__ = ["ReadOnlyStore"]


class ReadOnlyStore:
    """Reads of a store: ``get_conversation``, ``list_conversations``, ``load_turns``,
    ``load_steps``, ``load_compactions``, ``get_pending``, ``list_pending``, ``list_outbox``
    (as the contract defines them), and ``close``."""

    def __init__(self, store: Store) -> None:
        self.__store = store
        self.__keyring: enc.KeyRing | None = None
        self.__listing: Store = store
        if isinstance(store, EncryptedStore):
            self.__keyring = store.keyring
            self.__listing = store.inner
        self.url: str = store.url

    @property
    def encrypted(self) -> bool:
        return self.__keyring is not None

    def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        return self.__store.get_conversation(conversation_id, tenant=tenant)

    def load_compactions(
        self, conversation_id: str, *, tenant: str, epoch: int | None = None
    ) -> list[CompactionRecord]:
        return self.__store.load_compactions(conversation_id, tenant=tenant, epoch=epoch)

    def load_turns(
        self, conversation_id: str, *, tenant: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TurnRecord]:
        return self.__store.load_turns(
            conversation_id, tenant=tenant, after_seq=after_seq, limit=limit
        )

    def load_steps(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        newest: int | None = None,
        turn: int | None = None,
    ) -> list[StoredStep]:
        return self.__store.load_steps(
            conversation_id, tenant=tenant, after_seq=after_seq, newest=newest, turn=turn
        )

    def get_pending(self, conversation_id: str, *, tenant: str) -> PendingTurnRecord | None:
        return self.__store.get_pending(conversation_id, tenant=tenant)

    def list_pending(
        self, *, tenant: str | None, expired_at: datetime | None = None, limit: int = 100
    ) -> list[PendingTurnRecord]:
        return self.__store.list_pending(tenant=tenant, expired_at=expired_at, limit=limit)

    def list_outbox(
        self, *, tenant: str | None, due_at: datetime | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        return self.__store.list_outbox(tenant=tenant, due_at=due_at, limit=limit)

    def list_conversations(
        self,
        *,
        tenant: str | None,
        user: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """As the contract lists; on an encrypted store the records carry no settings
        (``config`` is empty: read the conversation for them) and never the wrapped key."""
        return self.list_checked(tenant=tenant, user=user, limit=limit, cursor=cursor)[0]

    def list_checked(
        self,
        *,
        tenant: str | None,
        user: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[Page, dict[str, str]]:
        """:meth:`list_conversations`, with why each listed conversation that cannot be
        decrypted cannot be (by id; only the wrapped data key is checked here, a corrupt
        payload shows when the conversation is read)."""
        page = self.__listing.list_conversations(
            tenant=tenant, user=user, limit=limit, cursor=cursor
        )
        if self.__keyring is None:
            return page, {}
        problems: dict[str, str] = {}
        items = []
        for stored in page.items:
            try:
                enc.unwrap_dek(self.__keyring, enc.envelope_of(stored), stored.id)
            except EncryptionError as exc:
                problems[stored.id] = str(exc)
            metadata = {k: v for k, v in stored.metadata.items() if k != enc.DEK_FIELD}
            items.append(stored.model_copy(update={"config": {}, "metadata": metadata}))
        return page.model_copy(update={"items": items}), problems

    def get_listed(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        """The conversation as a list shows it: on an encrypted store read beneath the
        encryption (no settings), so it is there even when its key is not."""
        if self.__keyring is None:
            return self.__store.get_conversation(conversation_id, tenant=tenant)
        stored = self.__listing.get_conversation(conversation_id, tenant=tenant)
        metadata = {k: v for k, v in stored.metadata.items() if k != enc.DEK_FIELD}
        return stored.model_copy(update={"config": {}, "metadata": metadata})

    def as_store(self) -> Store:
        """This facade typed as a store, for the transfer functions (``load``, ``export``,
        ``verify``) that read through ``get_conversation``/``load_turns``/``load_steps`` only.
        Anything else they might call is missing here and would fail loudly."""
        return cast("Store", self)

    def close(self) -> None:
        self.__store.close()

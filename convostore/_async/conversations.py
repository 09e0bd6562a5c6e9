"""The entry point: create, get, list and delete conversations of a store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any

from .._core import planner
from .._exceptions import APIError, ConversationNotFound, NotFoundError, ValidationError
from .._registry import open_async_store
from ..models import ConversationRecord, DeleteReport, JSONObject, Mode, Page, check_id, utcnow
from .client import AsyncInteractionsClient
from .conversation import AsyncConversation
from .store import AsyncStore

DEFAULT_MODEL = "gemini-3-flash-preview"


class AsyncConversations:
    """Conversations kept in one store and sent through one client.

    Args:
        store: a store, or a store URL (then this object opens and closes it).
        client: the API client (default: a new one from the environment, closed with this).
        model: the default model of new conversations.
        retention: how long the server keeps interactions, for ``auto``: one ``timedelta``,
            a mapping tenant -> ``timedelta``, or a function of the tenant (default 55 days).
        policy: a full :class:`~convostore._core.planner.Policy` instead of ``retention``.
    """

    def __init__(
        self,
        store: AsyncStore | str,
        client: AsyncInteractionsClient | None = None,
        *,
        model: str = DEFAULT_MODEL,
        retention: planner.Retention | None = None,
        policy: planner.Policy | None = None,
    ) -> None:
        self._owns_store = isinstance(store, str)
        self.store: AsyncStore = open_async_store(store) if isinstance(store, str) else store
        self._owns_client = client is None
        self.client = client if client is not None else AsyncInteractionsClient()
        self.model = planner.check_model(model)
        if policy is None:
            policy = planner.Policy() if retention is None else planner.Policy(retention=retention)
        self.policy = policy

    def __repr__(self) -> str:
        return f"<AsyncConversations store={self.store.url!r} model={self.model!r}>"

    async def create(
        self,
        *,
        tenant: str,
        user: str | None = None,
        mode: Mode = "auto",
        model: str | None = None,
        system_instruction: str | None = None,
        tools: list[JSONObject] | None = None,
        generation_config: JSONObject | None = None,
        settings: Mapping[str, Any] | None = None,
        metadata: JSONObject | None = None,
        ttl: timedelta | None = None,
        conversation_id: str | None = None,
    ) -> AsyncConversation:
        """Create a conversation. Nothing is sent to the API until the first ``send``.

        ``settings`` takes any other interaction-scoped field (``response_format``,
        ``safety_settings``…); all settings are re-sent on every turn. ``ttl`` sets
        ``expires_at`` (a Redis store expires the keys; ``purge`` deletes it elsewhere).
        """
        named = {
            "system_instruction": system_instruction,
            "tools": tools,
            "generation_config": generation_config,
        }
        if settings is not None and not isinstance(settings, Mapping):
            raise ValidationError(f"settings must be a mapping, not {type(settings).__name__}")
        twice = sorted(k for k, v in named.items() if v is not None and k in (settings or {}))
        if twice:
            raise ValidationError(f"{twice} given both as an argument and in settings")
        # a setting passed only in ``settings`` is kept, not overwritten by the argument's None
        given = {k: v for k, v in named.items() if v is not None}
        config = planner.check_config({**(settings or {}), **given})
        if ttl is not None and (not isinstance(ttl, timedelta) or ttl <= timedelta(0)):
            raise ValidationError("ttl must be a positive timedelta")
        now = utcnow()
        try:
            record = ConversationRecord(
                id=conversation_id or planner.new_conversation_id(),
                tenant=tenant,
                user=user,
                mode=planner.check_mode(mode),
                model=planner.check_model(model if model is not None else self.model),
                config=config,
                metadata=metadata if metadata is not None else {},
                created_at=now,
                updated_at=now,
                expires_at=now + ttl if ttl is not None else None,
            )
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError(str(exc)) from exc
        record = await self.store.create_conversation(record)
        return AsyncConversation(self, record)

    async def get(self, conversation_id: str, *, tenant: str) -> AsyncConversation:
        """Open an existing conversation (after a restart: same history, same chain head).

        Raises:
            ConversationNotFound: missing, deleted, or another tenant's.
        """
        record = await self.store.get_conversation(conversation_id, tenant=tenant)
        return AsyncConversation(self, record)

    async def list(
        self, *, tenant: str, user: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """A tenant's conversations, newest first; pass ``page.next_cursor`` for more."""
        check_id(tenant, "tenant")
        return await self.store.list_conversations(
            tenant=tenant, user=user, limit=limit, cursor=cursor
        )

    async def delete(
        self, conversation_id: str, *, tenant: str, remote: bool = False
    ) -> DeleteReport:
        """Delete a conversation and everything stored with it. Idempotent.

        With ``remote=True`` the interactions the server stored for it are deleted too; any
        that could not be deleted are listed in the report (an interaction already gone
        counts as deleted).
        """
        report: dict[str, Any] = {"remote_deleted": [], "remote_failed": {}}
        if remote:
            try:
                turns = await self.store.load_turns(conversation_id, tenant=tenant)
            except ConversationNotFound:
                turns = []
            for turn in turns:
                if not planner.stored_on_server(turn) or turn.interaction_id is None:
                    continue
                try:
                    await self.client.delete(turn.interaction_id)
                except NotFoundError:
                    pass
                except APIError as exc:
                    report["remote_failed"][turn.interaction_id] = str(exc)
                    continue
                report["remote_deleted"].append(turn.interaction_id)
        deleted = await self.store.delete_conversation(conversation_id, tenant=tenant)
        return DeleteReport(deleted=deleted, **report)

    async def aclose(self) -> None:
        """Close the store and the client if this object opened them."""
        if self._owns_client:
            await self.client.aclose()
        if self._owns_store:
            await self.store.aclose()

    async def __aenter__(self) -> AsyncConversations:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

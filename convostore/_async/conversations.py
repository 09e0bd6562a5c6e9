"""The entry point: create, get, list and delete conversations of a store."""

from __future__ import annotations

import builtins
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

from .._core import context as _context
from .._core import lifecycle, planner
from .._core.webhooks import verify_webhook
from .._exceptions import (
    APIError,
    ConversationNotFound,
    InteractionFailed,
    NotFoundError,
    ValidationError,
)
from .._registry import open_async_store
from ..models import (
    ConversationRecord,
    DeleteReport,
    JSONObject,
    Mode,
    OutboxItem,
    Page,
    PendingTurnRecord,
    RecoveryReport,
    Turn,
    check_id,
    utcnow,
)
from .client import AsyncInteractionsClient
from .conversation import AsyncConversation, AsyncPendingTurn
from .store import AsyncStore
from .turns import AsyncTurnDriver

logger = logging.getLogger("convostore.conversations")

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
        lease: how long a turn in flight of this worker may go without a sign of life (an
            event of its answer, a write of progress) before another worker takes it over
            (default 2 minutes): the longest a dead worker's conversation stays blocked.
        poll_interval: the first pause between polls of an unfinished answer (doubling up to
            ``poll_interval * 16``).
        poll_timeout: how long ``send`` polls an unfinished answer before it raises
            :class:`InteractionUnfinished` (the turn stays pending; seconds, default 600).
        auto_continue: continue answers stopped at the decode limit (default True).
        webhook_uris: for background turns: the ``webhook_config.uris`` the API notifies.
        webhook_secret: the secret that signs those webhooks (see :meth:`handle_webhook`).
        worker_id: this worker's name on the turns it holds (default: host, pid, random).
    """

    def __init__(
        self,
        store: AsyncStore | str,
        client: AsyncInteractionsClient | None = None,
        *,
        model: str = DEFAULT_MODEL,
        retention: planner.Retention | None = None,
        policy: planner.Policy | None = None,
        lease: timedelta = lifecycle.DEFAULT_LEASE,
        poll_interval: float = 0.25,
        poll_timeout: float = 600.0,
        auto_continue: bool = True,
        webhook_uris: Sequence[str] = (),
        webhook_secret: str | bytes | None = None,
        worker_id: str | None = None,
        compaction: _context.CompactionPolicy | None = _context.REACTIVE_ONLY,
    ) -> None:
        self._owns_store = isinstance(store, str)
        self.store: AsyncStore = open_async_store(store) if isinstance(store, str) else store
        self._owns_client = client is None
        self.client = client if client is not None else AsyncInteractionsClient()
        self.model = planner.check_model(model)
        if policy is None:
            policy = planner.Policy() if retention is None else planner.Policy(retention=retention)
        self.policy = policy
        if not isinstance(lease, timedelta) or lease <= timedelta(0):
            raise ValidationError("lease must be a positive timedelta")
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float):
            raise ValidationError("poll_interval must be a number of seconds")
        if not poll_interval > 0:
            raise ValidationError("poll_interval must be positive")
        self.lease = lease
        self.poll_interval = float(poll_interval)
        if isinstance(poll_timeout, bool) or not isinstance(poll_timeout, int | float):
            raise ValidationError("poll_timeout must be a number of seconds")
        self.poll_timeout = float(poll_timeout)
        self.auto_continue = bool(auto_continue)
        if compaction is not None and not isinstance(compaction, _context.CompactionPolicy):
            raise ValidationError("compaction must be a CompactionPolicy or None")
        self.compaction = compaction
        """Every conversation's default compaction policy (``conversation.compaction``
        overrides it for one conversation; None: never compact)."""
        self.webhook_uris = list(webhook_uris)
        self.webhook_secret = webhook_secret
        self._orphaned: set[str] = set()
        """Keys of turns in flight this worker stopped driving after a failure (a store or API
        outage mid-turn): they may be taken over without waiting for their lease."""
        host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
        self.owner_id = check_id(
            worker_id or f"{host or 'host'}:{os.getpid()}:{uuid.uuid4().hex[:8]}", "worker_id"
        )

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

        With ``remote=True`` the interactions the server stored for it are deleted too. They
        are written to the store's outbox first: any that could not be deleted are listed in
        the report and stay in the outbox, retried by :meth:`recover` until they are gone
        (an interaction already gone counts as deleted).
        """
        report: dict[str, Any] = {"remote_deleted": [], "remote_failed": {}}
        if remote:
            try:
                turns = await self.store.load_turns(conversation_id, tenant=tenant)
            except ConversationNotFound:
                turns = []
            pending = await self.store.get_pending(conversation_id, tenant=tenant)
            ids = [t.interaction_id for t in turns if planner.stored_on_server(t)]
            if pending is not None and pending.store:
                ids.extend(pending.hop_ids)
            items = self._outbox_items(tenant, conversation_id, [i for i in ids if i])
            done, failed = await self._run_outbox(items)
            report["remote_deleted"], report["remote_failed"] = done, failed
        deleted = await self.store.delete_conversation(conversation_id, tenant=tenant)
        return DeleteReport(deleted=deleted, **report)

    # ------------------------------------------------------------------ turns in flight

    def poll_delay(self, polls: int) -> float:
        """Seconds before the ``polls``-th poll of an unfinished answer."""
        return float(min(self.poll_interval * 2 ** max(polls - 1, 0), self.poll_interval * 16))

    async def pending(
        self, *, tenant: str | None, limit: int = 100
    ) -> builtins.list[AsyncPendingTurn]:
        """Turns in flight (background turns included), oldest first; ``tenant=None`` lists
        every tenant."""
        if tenant is not None:
            check_id(tenant, "tenant")
        found = await self.store.list_pending(tenant=tenant, limit=limit)
        return [
            AsyncPendingTurn(AsyncConversation(self, await self._record_of(p)), p) for p in found
        ]

    async def _record_of(self, pending: PendingTurnRecord) -> ConversationRecord:
        return await self.store.get_conversation(pending.conversation_id, tenant=pending.tenant)

    async def recover(
        self,
        *,
        tenant: str | None = None,
        older_than: timedelta = timedelta(0),
        limit: int = 1000,
    ) -> RecoveryReport:
        """Finish the turns in flight whose worker is gone, and retry the outbox.

        For each pending turn whose lease has expired (and that is at least ``older_than``
        old): claim it (one worker wins), then adopt the answer the server kept (committed),
        continue it, leave it running, or record it as lost; a conversation that moved on
        meanwhile is never interleaved. Then every due outbox item is tried again.
        """
        if tenant is not None:
            check_id(tenant, "tenant")
        now = utcnow()
        report: dict[str, Any] = {k: [] for k in ("adopted", "lost", "failed", "running", "busy")}
        for pending in await self.store.list_pending(tenant=tenant, expired_at=now, limit=limit):
            if pending.created_at > now - older_than:
                continue
            name = f"{pending.conversation_id}#{pending.seq}"
            try:
                conv = AsyncConversation(self, await self._record_of(pending))
            except ConversationNotFound:
                continue
            claimed = await self.store.claim_pending(
                conv.id,
                tenant=conv.tenant,
                owner=self.owner_id,
                now=now,
                lease_expires_at=now + self.lease,
            )
            if claimed is None or claimed.idempotency_key != pending.idempotency_key:
                report["busy"].append(name)
                continue
            try:
                result = await AsyncTurnDriver(conv).resolve(claimed, wait=False)
            except InteractionFailed:
                report["failed"].append(name)
                continue
            except APIError as exc:
                logger.warning("recover %s: %s; left pending", name, exc)
                report["running"].append(name)
                continue
            if isinstance(result, Turn):
                report["adopted"].append(name)
            elif isinstance(result, PendingTurnRecord):
                report["running"].append(name)
            else:
                report["lost"].append(name)
        due = await self.store.list_outbox(tenant=tenant, due_at=utcnow(), limit=limit)
        report["deleted"], report["outstanding"] = await self._run_outbox(due, written=True)
        return RecoveryReport(**report)

    async def handle_webhook(self, body: bytes, headers: Mapping[str, str]) -> Turn | None:
        """Take a webhook the API sent for a background turn: verify its signature with
        ``webhook_secret``, then finish the turn it names (commit it, exactly once even while
        a poller finishes it too). Returns the committed turn, or None when the event is not
        about a turn in flight here (already finished, or not convostore's).

        Raises:
            ValidationError: a bad or missing signature, a stale timestamp, or a body that is
                not a webhook event; nothing is read or written.
        """
        if self.webhook_secret is None:
            raise ValidationError("handle_webhook needs webhook_secret")
        event = verify_webhook(self.webhook_secret, body, headers)
        meta = event.get("user_metadata") or {}
        conversation_id = meta.get("convostore_conversation")
        tenant = meta.get("convostore_tenant")
        if not isinstance(conversation_id, str) or not isinstance(tenant, str):
            return None
        try:
            conv = await self.get(conversation_id, tenant=tenant)
        except (ConversationNotFound, ValidationError):
            return None
        pending = await self.store.get_pending(conv.id, tenant=conv.tenant)
        if pending is None or pending.interaction_id != event.get("interaction_id"):
            return None
        handle = AsyncPendingTurn(conv, pending)
        try:
            return await handle.wait(timeout=self.lease.total_seconds())
        except InteractionFailed:
            return None

    # ------------------------------------------------------------------ outbox

    def _outbox_items(
        self, tenant: str, conversation_id: str, interaction_ids: Sequence[str]
    ) -> builtins.list[OutboxItem]:
        now = utcnow()
        return [
            OutboxItem(
                id=f"o-{uuid.uuid4().hex}",
                tenant=tenant,
                conversation_id=conversation_id,
                target=target,
                created_at=now,
                next_attempt_at=now,
            )
            for target in dict.fromkeys(interaction_ids)
        ]

    async def _run_outbox(
        self, items: Sequence[OutboxItem], *, written: bool = False
    ) -> tuple[builtins.list[str], dict[str, str]]:
        """Try each server deletion; done ones leave the outbox, failed ones stay with their
        error and a later ``next_attempt_at``. Written to the store first, so a crash between
        here and the deletion leaves them to ``recover``."""
        if not items:
            return [], {}
        if not written:
            await self.store.add_outbox(items)
        done: builtins.list[str] = []
        failed: dict[str, str] = {}
        for item in items:
            try:
                await self.client.delete(item.target)
            except NotFoundError:
                pass
            except APIError as exc:
                failed[item.target] = str(exc)
                attempts = item.attempts + 1
                await self.store.update_outbox(
                    item.model_copy(
                        update={
                            "attempts": attempts,
                            "last_error": str(exc)[:500],
                            "next_attempt_at": utcnow()
                            + min(timedelta(seconds=30) * 2 ** (attempts - 1), timedelta(hours=1)),
                        }
                    )
                )
                continue
            done.append(item.target)
        finished = [i.id for i in items if i.target in done]
        if finished:
            await self.store.remove_outbox(finished)
        return done, failed

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

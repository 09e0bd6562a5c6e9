"""One conversation: send a turn (unary or streamed), read it back, fork it, change it.

A thin driver: every decision is the planner's (``convostore._core.planner``); this module only
reads the store, calls the API, and writes the commit the planner produced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from .._core import planner
from .._exceptions import (
    APIError,
    BadRequestError,
    ConcurrentTurnError,
    ConversationNotFound,
    NotFoundError,
    ValidationError,
)
from ..models import (
    ConversationRecord,
    DeleteReport,
    Interaction,
    JSONObject,
    StepDeltaEvent,
    TextDelta,
    Turn,
    TurnRecord,
    to_wire,
    utcnow,
)

if TYPE_CHECKING:
    from .conversations import AsyncConversations

logger = logging.getLogger("convostore.conversation")

OnConflict = Literal["raise", "retry"]


class _Prepared:
    """A planned turn, before its request is sent."""

    def __init__(
        self, record: ConversationRecord, decision: planner.Decision, new_steps: list[JSONObject]
    ) -> None:
        self.record = record
        self.decision = decision
        self.new_steps = new_steps


class AsyncConversation:
    """A conversation bound to its store and client. Get one from ``AsyncConversations``."""

    def __init__(self, owner: AsyncConversations, record: ConversationRecord) -> None:
        self._owner = owner
        self._store = owner.store
        self._client = owner.client
        self._record = record

    def __repr__(self) -> str:
        r = self._record
        return f"<AsyncConversation {r.id} tenant={r.tenant!r} mode={r.mode} turns={r.turn_count}>"

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def tenant(self) -> str:
        return self._record.tenant

    @property
    def record(self) -> ConversationRecord:
        """The conversation as last read or written by this object."""
        return self._record

    async def refresh(self) -> ConversationRecord:
        """Re-read the conversation from the store."""
        self._record = await self._store.get_conversation(self.id, tenant=self.tenant)
        return self._record

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        input: Any,
        *,
        idempotency_key: str | None = None,
        on_conflict: OnConflict = "raise",
        max_conflict_retries: int = 5,
    ) -> Turn:
        """Send one user turn and commit it with the model's answer.

        Args:
            input: a string, content part(s), or steps (e.g. ``function_result`` answers).
            idempotency_key: a retry with the same key returns the stored turn, sending nothing.
            on_conflict: ``"retry"`` re-reads and re-plans (from the new head) when another
                writer appended first; ``"raise"`` raises :class:`ConcurrentTurnError`.
            max_conflict_retries: how many times ``"retry"`` tries again.

        Raises:
            ValidationError: bad input, before anything is sent or written.
            ConversationNotFound: the conversation is gone (or another tenant's).
            ConcurrentTurnError: another writer won and ``on_conflict="raise"``.
            APIError: the API failed; nothing was committed.
        """
        new_steps = planner.check_send_args(input, idempotency_key, on_conflict)
        attempt = 0
        while True:
            prepared = await self._prepare(new_steps, idempotency_key)
            if isinstance(prepared, Turn):
                return prepared
            interaction, decision = await self._create(prepared)
            try:
                return await self._commit(prepared, decision, interaction, idempotency_key)
            except ConcurrentTurnError:
                attempt += 1
                if on_conflict != "retry" or attempt > max_conflict_retries:
                    raise
                logger.info("conversation %s: conflict, re-planning (%d)", self.id, attempt)
                await asyncio.sleep(planner.conflict_delay(attempt))

    def stream(self, input: Any, *, idempotency_key: str | None = None) -> AsyncTurnStream:
        """Send one user turn and stream the answer as it arrives.

        Use as ``async with conv.stream(text) as events: async for event in events: ...``.
        The turn is committed when the stream completes (then ``events.turn`` is set). A stream
        that is cut, ends in an error event, or is left early commits nothing.
        """
        new_steps = planner.check_send_args(input, idempotency_key, "raise")
        return AsyncTurnStream(self, new_steps, idempotency_key)

    async def _prepare(
        self, new_steps: list[JSONObject], idempotency_key: str | None
    ) -> _Prepared | Turn:
        store, tenant = self._store, self.tenant
        if idempotency_key is not None:
            done = await store.find_turn(self.id, tenant=tenant, idempotency_key=idempotency_key)
            if done is not None:
                return await self._stored_turn(done, replayed=True)
        record = await self.refresh()
        if planner.answered_call_ids(new_steps):
            last = await store.load_steps(self.id, tenant=tenant, turn=record.turn_count)
            planner.check_function_results(new_steps, [s.payload for s in last])
        decision = planner.decide(record, policy=self._owner.policy, now=utcnow())
        return _Prepared(record, decision, new_steps)

    async def _body(self, prepared: _Prepared, decision: planner.Decision) -> JSONObject:
        history: list[JSONObject] = []
        if decision.needs_history:
            stored = await self._store.load_steps(self.id, tenant=self.tenant)
            history = [s.payload for s in stored]
        return planner.plan_request(
            prepared.record, decision, new_steps=prepared.new_steps, history=history
        )

    def _chain_broken(self, prepared: _Prepared, exc: APIError) -> planner.Decision:
        logger.warning(
            "conversation %s: head %s is gone on the server (%s); replaying the local history",
            self.id,
            prepared.decision.previous_interaction_id,
            exc,
        )
        return planner.decide(
            prepared.record, policy=self._owner.policy, now=utcnow(), chain_broken=True
        )

    async def _create(self, prepared: _Prepared) -> tuple[Interaction, planner.Decision]:
        decision = prepared.decision
        try:
            body = await self._body(prepared, decision)
            return await self._client._create_checked(body), decision
        except (NotFoundError, BadRequestError) as exc:
            if decision.previous_interaction_id is None:
                raise
            decision = self._chain_broken(prepared, exc)
        body = await self._body(prepared, decision)
        return await self._client._create_checked(body), decision

    async def _commit(
        self,
        prepared: _Prepared,
        decision: planner.Decision,
        interaction: Interaction,
        idempotency_key: str | None,
    ) -> Turn:
        commit = planner.commit_turn(
            prepared.record,
            decision,
            new_steps=prepared.new_steps,
            interaction_id=interaction.id,
            status=interaction.status,
            response_steps=interaction.steps,
            usage=to_wire(interaction.usage) if interaction.usage is not None else None,
            now=utcnow(),
            idempotency_key=idempotency_key,
        )
        try:
            result = await self._store.append_turn(commit)
        except (ConcurrentTurnError, ConversationNotFound):
            # certainly not stored: a lost race, or the conversation was deleted (erased)
            # while the request was in flight. Its interaction must not stay on the server.
            await self._discard(decision, interaction)
            raise
        if not result.created:
            await self._discard(decision, interaction)
            return await self._stored_turn(result.turn, replayed=True)
        self._record = commit.record
        return planner.turn_result(commit.turn, [s.payload for s in commit.steps], replayed=False)

    async def _discard(self, decision: planner.Decision, interaction: Interaction) -> None:
        """Best effort: delete an interaction the server stored for a turn that lost a race,
        so the server keeps no second chain."""
        if decision.store and interaction.id:
            try:
                await self._client.delete(interaction.id)
            except APIError as exc:
                logger.info("could not delete orphaned interaction %s: %s", interaction.id, exc)

    async def _stored_turn(self, turn: TurnRecord, *, replayed: bool) -> Turn:
        steps = await self._store.load_steps(self.id, tenant=self.tenant, turn=turn.seq)
        return planner.turn_result(turn, [s.payload for s in steps], replayed=replayed)

    # ------------------------------------------------------------------ reading

    async def history(self, *, newest: int | None = None) -> list[JSONObject]:
        """Every step in order as wire JSON (``newest=N``: the last N, cut at a turn boundary)."""
        steps = await self._store.load_steps(self.id, tenant=self.tenant, newest=newest)
        return [s.payload for s in steps]

    async def turns(self) -> list[TurnRecord]:
        """Every committed turn, in order."""
        return await self._store.load_turns(self.id, tenant=self.tenant)

    async def usage(self) -> dict[str, int]:
        """Token usage summed over every turn (integer fields of the API's usage)."""
        totals: dict[str, int] = {}
        for turn in await self.turns():
            for key, value in (turn.usage or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        return totals

    # ------------------------------------------------------------------ changing

    async def update(
        self,
        *,
        mode: str | None = None,
        model: str | None = None,
        metadata: JSONObject | None = None,
        **settings: Any,
    ) -> ConversationRecord:
        """Change the mode, the model, the metadata or interaction-scoped settings (a setting
        passed as ``None`` is removed). A model change makes the next turn replay."""
        record = await self.refresh()
        changes: dict[str, Any] = {"version": record.version + 1, "updated_at": utcnow()}
        if mode is not None:
            changes["mode"] = planner.check_mode(mode)
        if model is not None:
            changes["model"] = planner.check_model(model)
        if metadata is not None:
            changes["metadata"] = metadata
        if settings:
            changes["config"] = planner.check_config({**record.config, **settings})
        try:
            updated = ConversationRecord.model_validate({**record.model_dump(), **changes})
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError(str(exc)) from exc
        self._record = await self._store.update_conversation(updated)
        return self._record

    async def fork(self, *, at_turn: int | None = None) -> AsyncConversation:
        """A new conversation sharing this one's history up to turn ``at_turn`` (default: all).

        The original is untouched. When turn ``at_turn`` is stored on the server, the fork's
        first request chains from it; otherwise the fork replays.
        """
        record = await self.refresh()
        k = record.turn_count if at_turn is None else at_turn
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= record.turn_count:
            raise ValidationError(f"at_turn must be between 0 and {record.turn_count}; got {k!r}")
        turns = await self._store.load_turns(self.id, tenant=self.tenant, limit=k) if k else []
        steps = await self._store.load_steps(self.id, tenant=self.tenant) if k else []
        steps = [s for s in steps if s.turn_seq <= k]
        fork = planner.fork_record(
            record, turns, len(steps), new_id=planner.new_conversation_id(), now=utcnow()
        )
        await self._store.create_conversation(
            fork,
            turns=[t.model_copy(update={"conversation_id": fork.id}) for t in turns],
            steps=[s.model_copy(update={"conversation_id": fork.id}) for s in steps],
        )
        return AsyncConversation(self._owner, fork)

    async def delete(self, *, remote: bool = False) -> DeleteReport:
        """Delete this conversation (see ``AsyncConversations.delete``)."""
        return await self._owner.delete(self.id, tenant=self.tenant, remote=remote)


class AsyncTurnStream:
    """A streamed turn: iterate the API's events; ``turn`` is set once the stream completed
    and the turn was committed. Leaving early, a cut or an error event commits nothing."""

    def __init__(
        self, conversation: AsyncConversation, new_steps: list[JSONObject], key: str | None
    ) -> None:
        self._conversation = conversation
        self._new_steps = new_steps
        self._key = key
        self._prepared: _Prepared | None = None
        self._decision: planner.Decision | None = None
        self._api: Any = None
        self.turn: Turn | None = None

    async def __aenter__(self) -> AsyncTurnStream:
        conv = self._conversation
        prepared = await conv._prepare(self._new_steps, self._key)
        if isinstance(prepared, Turn):
            self.turn = prepared
            return self
        self._prepared = prepared
        decision = prepared.decision
        try:
            self._api = await self._open(prepared, decision)
        except (NotFoundError, BadRequestError) as exc:
            if decision.previous_interaction_id is None:
                raise
            decision = conv._chain_broken(prepared, exc)
            self._api = await self._open(prepared, decision)
        self._decision = decision
        return self

    async def _open(self, prepared: _Prepared, decision: planner.Decision) -> Any:
        body = await self._conversation._body(prepared, decision)
        api = self._conversation._client._stream_checked(body)
        await api.__aenter__()
        return api

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._api is not None:
            await self._api.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> AsyncTurnStream:
        return self

    async def __anext__(self) -> Any:
        if self._api is None or self.turn is not None:
            raise StopAsyncIteration
        try:
            return await self._api.__anext__()
        except StopAsyncIteration:
            assert self._prepared is not None and self._decision is not None
            self.turn = await self._conversation._commit(
                self._prepared, self._decision, self._api.interaction, self._key
            )
            raise

    async def text_deltas(self) -> AsyncIterator[str]:
        """Only the text as it arrives."""
        async for event in self:
            if isinstance(event, StepDeltaEvent) and isinstance(event.delta, TextDelta):
                yield event.delta.text

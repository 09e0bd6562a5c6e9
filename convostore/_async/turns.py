"""The effects of a turn's lifecycle (``convostore._core.lifecycle``), performed.

The machine decides; this module writes the store, calls the API and feeds the results back.
It also resolves a turn whose commit outcome it did not see (the connection dropped during
COMMIT): by the idempotency key, before anything is raised, so a caller never gets "outcome
unknown".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from .._core import context as _context
from .._core import lifecycle, planner
from .._core.continuation import continuation_body
from .._exceptions import (
    APIError,
    ConcurrentTurnError,
    ConversationNotFound,
    CorruptRecordError,
    EncryptionError,
    InteractionUnfinished,
    LeaseLost,
    NotFoundError,
    StoreError,
    StreamError,
    TurnInFlight,
)
from ..models import (
    LOST_STATUS,
    AppendResult,
    JSONObject,
    PendingTurnRecord,
    Reason,
    Turn,
    TurnCommit,
    utcnow,
)

if TYPE_CHECKING:
    from .conversation import AsyncConversation
    from .conversations import AsyncConversations

logger = logging.getLogger("convostore.turns")

COMMIT_RETRIES = 8
"""How often a commit whose outcome was not seen is looked up (and re-sent) before giving up;
the pending record stays, so recovery still adopts the answer after that."""
MAX_RESUMES = 3
"""Reconnects of a cut stream without progress, as the SDK allows."""


class Running(Exception):
    """Internal: the turn is still running on the server and the caller did not want to wait."""

    def __init__(self, pending: PendingTurnRecord) -> None:
        self.pending = pending


class AsyncTurnDriver:
    """Performs one conversation's lifecycle effects."""

    def __init__(self, conversation: AsyncConversation) -> None:
        self.conv = conversation
        self.owner: AsyncConversations = conversation._owner
        self.store = conversation._store
        self.client = conversation._client
        self.turn: Turn | None = None
        """The committed turn, once a streamed answer ended."""

    @staticmethod
    def streamed(machine: lifecycle.TurnLifecycle) -> bool:
        """Whether a unary send receives its answer as a stream: every turn but a background
        one. The interaction id is then recorded as soon as the server names it, and the
        lease is renewed while the answer arrives, so a long answer is never mistaken for a
        dead worker's."""
        return not machine.pending.background

    # ------------------------------------------------------------ the loop

    async def drive(
        self, machine: lifecycle.TurnLifecycle, effect: lifecycle.Effect, *, wait: bool = True
    ) -> Turn | PendingTurnRecord | None:
        """Perform effects until the turn is committed (the ``Turn``), handed back running
        (its ``PendingTurnRecord``: background, or ``wait=False``), or given up (raised; a
        lost turn returns None)."""
        try:
            return await self._drive(machine, effect, wait=wait)
        except ConcurrentTurnError:
            raise  # a conflict (or another turn in flight): this turn wrote nothing
        except BaseException:
            if machine.phase not in lifecycle.TERMINAL:
                # maybe left pending by a failure here (the store or the API went away, even
                # mid-begin): no call drives it any more, so this worker may take it over
                # before its lease ends
                self.owner._orphaned.add(machine.pending.idempotency_key)
            raise

    async def _drive(
        self, machine: lifecycle.TurnLifecycle, effect: lifecycle.Effect, *, wait: bool
    ) -> Turn | PendingTurnRecord | None:
        polls = 0
        deadline = time.monotonic() + self.owner.poll_timeout
        while True:
            if isinstance(effect, lifecycle.Send) and self.streamed(machine):
                # received as a stream, so the interaction id is recorded as soon as the
                # server names it: a worker killed while the answer is generated leaves an
                # answer another worker can adopt, not an orphan nobody knows about
                api, body = await self.open_stream(machine, effect.body, raw=True)
                try:
                    async for _ in self.events(machine, api, body):
                        pass
                    return self.turn
                except StreamError as exc:
                    known = machine.pending.interaction_id
                    if not (machine.pending.store and known) or machine.done:
                        effect = machine.api_error(exc, now=utcnow())
                        continue
                    # cut with no checkpoint to resume from: the server still finishes and
                    # keeps the answer, so fetch it rather than lose (and pay for) it twice
                    logger.info("turn %s: stream cut (%s); fetching the answer", known, exc)
                    effect = lifecycle.Poll(known)
                    continue
            if isinstance(effect, lifecycle.Send):
                effect = await self.send(machine, effect.body)
            elif isinstance(effect, lifecycle.Poll):
                if polls and not wait:
                    raise Running(machine.pending)
                if polls and time.monotonic() > deadline:
                    # it stays pending: a later wait() or recover() can still finish it
                    raise InteractionUnfinished(
                        interaction_id=effect.interaction_id,
                        status=machine.hops[-1].status if machine.hops else None,
                    )
                effect = await self.poll(machine, effect.interaction_id, polls)
                polls += 1
            elif isinstance(effect, lifecycle.Wait):
                return effect.pending
            else:
                done, result = await self.perform(machine, effect)
                if done:
                    assert result is None or isinstance(result, Turn)
                    return result
                effect = result

    async def perform(
        self, machine: lifecycle.TurnLifecycle, effect: lifecycle.Effect
    ) -> tuple[bool, Any]:
        """Every effect but Send/Poll/Wait (which the unary and streaming paths do their
        own way). Returns (done, result) or (False, next effect)."""
        if isinstance(effect, lifecycle.Begin):
            try:
                await self.store.begin_turn(effect.pending)
            except TurnInFlight as exc:
                # a begin re-sent after its reply was lost finds itself: it did begin
                if exc.pending.idempotency_key != effect.pending.idempotency_key:
                    raise
            return False, machine.begun()
        if isinstance(effect, lifecycle.Replan):
            await self.store.release_pending(
                machine.pending.conversation_id,
                tenant=machine.pending.tenant,
                idempotency_key=machine.pending.idempotency_key,
            )
            decision = planner.decide(
                machine.record, policy=self.owner.policy, now=utcnow(), chain_broken=True
            )
            logger.warning(
                "conversation %s: head %s is gone on the server; replaying the local history",
                machine.record.id,
                machine.decision.previous_interaction_id,
            )
            body = await self.conv._body(machine.record, decision, machine.pending.input_steps)
            return False, machine.replanned(decision, body)
        if isinstance(effect, lifecycle.Compact):
            return False, await self.compact(machine, effect.error)
        if isinstance(effect, lifecycle.Record):
            adopted = await self.record(machine, effect.pending)
            if adopted is not None:
                return True, adopted
            return False, machine.recorded()
        if isinstance(effect, lifecycle.Commit):
            return True, await self.commit(machine, effect.commit)
        if isinstance(effect, lifecycle.Release):
            await self.release(effect)
            if effect.error is not None:
                raise effect.error
            return True, None
        raise lifecycle.LifecycleError(f"no driver for {effect!r}")  # pragma: no cover

    async def compact(self, machine: lifecycle.TurnLifecycle, error: Exception) -> lifecycle.Effect:
        """The request was refused as too large: compact, then send the view once more."""
        pending = machine.pending
        await self.store.release_pending(
            pending.conversation_id, tenant=pending.tenant, idempotency_key=pending.idempotency_key
        )
        policy = self.conv.compaction or _context.REACTIVE_ONLY
        record = await self.conv.refresh()
        logger.warning(
            "conversation %s: the request was refused as too large; compacting", record.id
        )
        compacted = await self.conv._compact(record, policy, "too_large")
        if compacted is None:  # a single turn too large: nothing the view can leave out
            raise error
        planned = planner.decide(compacted, policy=self.owner.policy, now=utcnow())
        decision = planner.Decision(
            planned.mode_used, Reason.TOO_LARGE, planned.store, planned.previous_interaction_id
        )
        body = await self.conv._body(compacted, decision, pending.input_steps)
        return machine.compacted(compacted, decision, body)

    async def send(
        self, machine: lifecycle.TurnLifecycle, body: dict[str, Any]
    ) -> lifecycle.Effect:
        try:
            interaction = await self.client._create_checked(body)
        except APIError as exc:
            return machine.api_error(exc, now=utcnow())
        return machine.answered(interaction, now=utcnow(), lease=self.owner.lease)

    async def poll(
        self, machine: lifecycle.TurnLifecycle, interaction_id: str, polls: int
    ) -> lifecycle.Effect:
        if polls:
            await asyncio.sleep(self.owner.poll_delay(polls))
        try:
            interaction = await self.client.get(interaction_id)
        except APIError as exc:
            return machine.api_error(exc, now=utcnow())
        return machine.answered(interaction, now=utcnow(), lease=self.owner.lease)

    # ------------------------------------------------------------ streamed answers

    async def until_send(
        self, machine: lifecycle.TurnLifecycle, effect: lifecycle.Effect
    ) -> lifecycle.Send | None:
        """Perform effects up to the next request; None once the turn is finished (then
        :attr:`turn` holds it)."""
        while not isinstance(effect, lifecycle.Send):
            if isinstance(effect, lifecycle.Poll | lifecycle.Wait):
                result = await self.drive(machine, effect)
                self.turn = result if isinstance(result, Turn) else None
                return None
            done, result = await self.perform(machine, effect)
            if done:
                self.turn = result
                return None
            effect = result
        return effect

    async def open_stream(
        self, machine: lifecycle.TurnLifecycle, body: JSONObject, *, raw: bool = False
    ) -> tuple[Any, JSONObject]:
        """Open a request's stream; an error before it opens goes to the machine (a broken
        chain is re-planned and that request opened instead). ``raw``: nobody sees its
        events, so they are not parsed into models."""
        while True:
            api = self.client._stream_checked(body, raw=raw)
            try:
                await api.__aenter__()
            except APIError as exc:
                effect = await self.until_send(machine, machine.api_error(exc, now=utcnow()))
                assert effect is not None  # an error ends in a raise, never in a commit
                body = effect.body
                continue
            return api, body

    async def events(
        self, machine: lifecycle.TurnLifecycle, api: Any, body: JSONObject
    ) -> AsyncGenerator[Any, None]:
        """Every event of the answer, across continuation hops and resumed cuts; when it
        ends, the turn is committed (:attr:`turn`)."""
        resumes = 0
        renew_every = self.owner.lease.total_seconds() / 3
        last_write = time.monotonic()
        try:
            while True:
                try:
                    event = await api.__anext__()
                except StopAsyncIteration:
                    answer = machine.answered(api.interaction, now=utcnow(), lease=self.owner.lease)
                    send = await self.until_send(machine, answer)
                    if send is None:
                        return
                    await api.aclose()
                    api, body = await self.open_stream(machine, send.body, raw=api._raw)
                    continue
                except StreamError:
                    resumes += 1
                    resume = self.resume_body(machine, api, body, resumes)
                    if resume is None:
                        raise
                    machine.resumed(api.partial_interaction)
                    await api.aclose()
                    api, body = await self.open_stream(machine, resume, raw=api._raw)
                    continue
                # the hop's id, as soon as the server names it (interaction.created)
                named = api.interaction_id if machine.pending.store else None
                pending = None
                if named and named not in machine.pending.hop_ids:
                    pending = machine.started(named, now=utcnow(), lease=self.owner.lease)
                elif time.monotonic() - last_write > renew_every:
                    pending = machine.renewed(now=utcnow(), lease=self.owner.lease)
                if pending is not None:
                    adopted = await self.record(machine, pending)
                    last_write = time.monotonic()
                    if adopted is not None:  # another worker committed this very answer
                        self.turn = adopted
                        return
                yield event
        finally:
            await api.aclose()

    @staticmethod
    def resume_body(
        machine: lifecycle.TurnLifecycle, api: Any, body: JSONObject, resumes: int
    ) -> JSONObject | None:
        """The request that resumes a cut stream from its last checkpoint, as the SDK does
        (at most ``MAX_RESUMES`` times in a row without progress), or None."""
        if not api.can_resume or resumes > MAX_RESUMES:
            return None
        checkpoint = api.checkpoint
        store = machine.pending.store
        return continuation_body(
            machine.body or body,
            token=checkpoint.token,
            owner_id=checkpoint.owner_id if store else None,
            store=store,
        )

    async def record(
        self, machine: lifecycle.TurnLifecycle, pending: PendingTurnRecord
    ) -> Turn | None:
        """Write the turn's progress. When another worker took the turn over meanwhile (this
        one stalled past its lease), find out what became of it: the turn it committed with
        this worker's answer is returned; otherwise what this worker made the server store
        is deleted and :class:`LeaseLost` raised."""
        try:
            await self.store.update_pending(pending, owner=self.owner.owner_id)
            return None
        except LeaseLost:
            machine.taken_over()
            found = await self.store.find_turn(
                pending.conversation_id,
                tenant=pending.tenant,
                idempotency_key=pending.idempotency_key,
            )
            ours = set(machine._stored_ids())
            if found is not None and found.status != LOST_STATUS and found.interaction_id in ours:
                return await self.conv._stored_turn(found, replayed=False)
            keep = {found.interaction_id} if found is not None else set()
            await self.discard(sorted(ours - keep))
            raise

    # ------------------------------------------------------------ commit and release

    async def commit(self, machine: lifecycle.TurnLifecycle, commit: TurnCommit) -> Turn:
        try:
            result = await self.append(commit)
        except (ConcurrentTurnError, ConversationNotFound) as exc:
            # certainly not stored: the conversation moved on (or was erased) while the turn
            # was in flight. Its interaction must not stay on the server.
            release = machine.conflict(exc, now=utcnow())
            assert isinstance(release, lifecycle.Release)
            await self.release(release, pending_gone=isinstance(exc, ConversationNotFound))
            raise
        machine.committed()
        if not result.created:
            stored = result.turn
            if stored.status == LOST_STATUS and stored.interaction_id != (
                commit.turn.interaction_id
            ):
                # another worker gave this turn up as lost while this one was still waiting
                await self.discard(machine._stored_ids())
                raise LeaseLost(commit.record.id, idempotency_key=machine.pending.idempotency_key)
            return await self.conv._stored_turn(stored, replayed=False)
        self.conv._record = commit.record
        payloads = [s.payload for s in commit.steps]
        return planner.turn_result(commit.turn, payloads, replayed=False)

    async def append(self, commit: TurnCommit) -> AppendResult:
        """``append_turn``, with its outcome always known: a commit whose reply was lost is
        looked up by its idempotency key, and re-sent only when it is not there."""
        key = commit.turn.idempotency_key
        attempt = 0
        while True:
            try:
                return await self.store.append_turn(commit)
            except (ConcurrentTurnError, ConversationNotFound, CorruptRecordError):
                raise
            except EncryptionError:
                raise
            except StoreError as exc:
                attempt += 1
                if key is None or attempt > COMMIT_RETRIES:
                    raise
                logger.warning(
                    "conversation %s: commit outcome unknown (%s); looking it up by key",
                    commit.record.id,
                    exc,
                )
            await asyncio.sleep(planner.conflict_delay(attempt))
            try:
                found = await self.store.find_turn(
                    commit.record.id, tenant=commit.record.tenant, idempotency_key=key
                )
            except StoreError:
                continue
            if found is not None:
                return AppendResult(turn=found, created=found.audit_hash == commit.turn.audit_hash)

    async def release(self, effect: lifecycle.Release, *, pending_gone: bool = False) -> None:
        pending = effect.pending
        if effect.lost is not None:
            try:
                await self.append(effect.lost)
                pending_gone = True
            except (ConcurrentTurnError, ConversationNotFound):
                pass  # the conversation moved again (or is gone): only the record is dropped
            logger.warning(
                "conversation %s: turn %d (key %s) recorded as lost",
                pending.conversation_id,
                pending.seq,
                pending.idempotency_key,
            )
        if not pending_gone:
            await self.store.release_pending(
                pending.conversation_id,
                tenant=pending.tenant,
                idempotency_key=pending.idempotency_key,
            )
        await self.discard(effect.discard)

    async def discard(self, interaction_ids: Sequence[str]) -> None:
        """Delete interactions the server keeps for a turn that will never be committed, through
        the outbox (a failed deletion is retried by ``recover``)."""
        if interaction_ids:
            await self.owner._run_outbox(
                self.owner._outbox_items(self.conv.tenant, self.conv.id, interaction_ids)
            )

    # ------------------------------------------------------------ taking over

    async def resolve(
        self, pending: PendingTurnRecord, *, wait: bool
    ) -> Turn | PendingTurnRecord | None:
        """Finish a turn in flight that this worker holds the lease of (claimed, or its own
        background turn): adopt what the server answered, continue it, or record it lost."""
        record = await self.conv.refresh()
        machine = lifecycle.TurnLifecycle.resume(
            record, pending, auto_continue=self.owner.auto_continue
        )
        for hop in pending.hop_ids[:-1]:
            try:
                machine.hops.append(await self.client.get(hop))
            except NotFoundError:
                break
        machine.body = {
            "model": pending.model,
            **pending.config,
            "input": pending.input_steps,
            "store": pending.store,
        }
        effect = machine.recover(now=utcnow(), conversation=record)
        try:
            return await self.drive(machine, effect, wait=wait)
        except Running as running:
            return running.pending

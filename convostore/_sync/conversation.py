# Generated from convostore/_async by scripts/unasync.py. Do not edit.
"""One conversation: send a turn (unary or streamed), read it back, fork it, change it.

A thin driver: every decision is the planner's (``convostore._core.planner``); this module only
reads the store, calls the API, and writes the commit the planner produced.
"""

from __future__ import annotations

import threading
import time
import logging
import time
from collections.abc import Generator, Iterator
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

from .._core import context as _context
from .._core import lifecycle, planner
from .._exceptions import (
    APIError,
    ConcurrentTurnError,
    CorruptRecordError,
    InteractionFailed,
    LeaseLost,
    StreamError,
    TurnInFlight,
    ValidationError,
)
from ..models import (
    CompactionRecord,
    ConversationRecord,
    DeleteReport,
    JSONObject,
    PendingTurnRecord,
    StepDeltaEvent,
    StoredStep,
    TextDelta,
    Turn,
    TurnRecord,
    utcnow,
)
from .turns import MAX_RESUMES, TurnDriver

if TYPE_CHECKING:
    from .conversations import Conversations

logger = logging.getLogger("convostore.conversation")

OnConflict = Literal["raise", "retry"]
InFlight = Literal["reject", "wait", "cancel"]


class _Prepared:
    """A planned turn, before its request is sent."""

    def __init__(
        self, record: ConversationRecord, decision: planner.Decision, new_steps: list[JSONObject]
    ) -> None:
        self.record = record
        self.decision = decision
        self.new_steps = new_steps


REPLAY_CACHE_STEPS = 5000
"""The longest history a conversation object keeps between replayed turns (see
``Conversation._replay_view``)."""


class _ReplayCache:
    """The payloads of a conversation's steps 1..``last_seq``, as read for a replayed turn."""

    def __init__(self, created_at: datetime, last_seq: int, payloads: list[JSONObject]) -> None:
        self.created_at = created_at
        self.last_seq = last_seq
        self.payloads = payloads


class Conversation:
    """A conversation bound to its store and client. Get one from ``Conversations``."""

    def __init__(self, owner: Conversations, record: ConversationRecord) -> None:
        self._owner = owner
        self._store = owner.store
        self._client = owner.client
        self._record = record
        self.compaction: _context.CompactionPolicy | None = owner.compaction
        """This conversation's compaction policy (default: the ``Conversations``')."""
        self._replayed: _ReplayCache | None = None

    def __repr__(self) -> str:
        r = self._record
        return f"<Conversation {r.id} tenant={r.tenant!r} mode={r.mode} turns={r.turn_count}>"

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

    def refresh(self) -> ConversationRecord:
        """Re-read the conversation from the store."""
        self._record = self._store.get_conversation(self.id, tenant=self.tenant)
        return self._record

    # ------------------------------------------------------------------ sending

    @overload
    def send(
        self,
        input: Any,
        *,
        idempotency_key: str | None = None,
        on_conflict: OnConflict = "raise",
        max_conflict_retries: int = 5,
        in_flight: InFlight | None = None,
        background: Literal[False] = False,
        auto_continue: bool | None = None,
    ) -> Turn: ...

    @overload
    def send(
        self,
        input: Any,
        *,
        idempotency_key: str | None = None,
        on_conflict: OnConflict = "raise",
        max_conflict_retries: int = 5,
        in_flight: InFlight | None = None,
        background: Literal[True],
        auto_continue: bool | None = None,
    ) -> PendingTurn | Turn: ...

    def send(
        self,
        input: Any,
        *,
        idempotency_key: str | None = None,
        on_conflict: OnConflict = "raise",
        max_conflict_retries: int = 5,
        in_flight: InFlight | None = None,
        background: bool = False,
        auto_continue: bool | None = None,
    ) -> Turn | PendingTurn:
        """Send one user turn and commit it with the model's answer.

        The turn is recorded as pending before its request is sent, so a worker that dies
        mid-turn leaves it to be finished by another (``Conversations.recover``).

        Args:
            input: a string, content part(s), or steps (e.g. ``function_result`` answers).
            idempotency_key: a retry with the same key returns the stored turn, sending nothing
                (a key is generated when none is given: the commit is always deduplicated).
            on_conflict: ``"retry"`` re-reads and re-plans (from the new head) when another
                writer appended first; ``"raise"`` raises :class:`ConcurrentTurnError`.
            max_conflict_retries: how many times ``"retry"`` tries again after a conflict that
                cost a request. A conflict found before anything is sent (another turn was
                committed between the read and the begin) queues on without counting, for up
                to a minute.
            in_flight: what to do while another turn of this conversation is in flight:
                ``"reject"`` raises :class:`TurnInFlight` (nothing is sent), ``"wait"`` queues
                behind it, ``"cancel"`` cancels it on the server (a background turn) first.
                Default: ``"wait"`` with ``on_conflict="retry"``, else ``"reject"``. A turn in
                flight whose worker is gone (lease expired) is finished first.
            background: start the turn with ``background: true`` and return at once with an
                :class:`PendingTurn` (``wait()``, ``cancel()``, ``stream()``); any process
                can finish it. Not for stateless conversations (the API keeps nothing there).
            auto_continue: continue an answer that stopped at the decode limit
                (``requires_continuation``) and commit the hops as one turn (default: the
                ``Conversations`` setting, on).

        Raises:
            ValidationError: bad input, before anything is sent or written.
            ConversationNotFound: the conversation is gone (or another tenant's).
            ConcurrentTurnError: another writer won and ``on_conflict="raise"``.
            TurnInFlight: a turn is in flight and ``in_flight="reject"``.
            InteractionFailed: the API answered ``failed`` or ``cancelled``; nothing committed.
            APIError: the API failed; nothing was committed.
        """
        new_steps = planner.check_send_args(input, idempotency_key, on_conflict)
        if in_flight is None:
            in_flight = "wait" if on_conflict == "retry" else "reject"
        planner.check_turn_options(in_flight=in_flight, background=background)
        attempt = 0
        queued: float | None = None
        reread = False  # the first plan trusts the record this object holds (see _prepare)
        while True:
            prepared = self._prepare(new_steps, idempotency_key, reread=reread)
            if isinstance(prepared, Turn):
                return prepared
            machine = self._plan(
                prepared, idempotency_key, background=background, auto_continue=auto_continue
            )
            try:
                result = TurnDriver(self).drive(machine, machine.start())
            except TurnInFlight as exc:
                self._in_flight(exc.pending, in_flight)
                reread = True
                continue
            except ConcurrentTurnError:
                # a conflict at begin_turn cost no request (the record moved since it was
                # read): when that record was this object's own, read it and plan again
                free = machine.phase is lifecycle.Phase.PLANNED
                if free and not reread:
                    reread = True
                    continue
                # queueing behind a turn in flight means taking the head it leaves
                retry = on_conflict == "retry" or in_flight == "wait"
                if not retry:
                    raise
                # another turn was committed between the read and the begin: queue on,
                # within a time budget
                if free and queued is None:
                    queued = time.monotonic() + planner.CONFLICT_QUEUE_SECONDS
                if not free or (queued is not None and time.monotonic() > queued):
                    attempt += 1
                if attempt > max_conflict_retries:
                    raise
                logger.info("conversation %s: conflict, re-planning (%d)", self.id, attempt)
                time.sleep(planner.conflict_delay(attempt))
                continue
            if isinstance(result, PendingTurnRecord):
                return PendingTurn(self, result)
            assert isinstance(result, Turn)
            return result

    def stream(
        self,
        input: Any,
        *,
        idempotency_key: str | None = None,
        in_flight: InFlight = "reject",
        auto_continue: bool | None = None,
    ) -> TurnStream:
        """Send one user turn and stream the answer as it arrives.

        Use as ``with conv.stream(text) as events: for event in events: ...``.
        The turn is committed when the stream completes (then ``events.turn`` is set); an
        answer continued over several requests keeps streaming across them. A stream that is
        cut (and cannot be resumed from a checkpoint), ends in an error event, or is left early
        commits nothing.
        """
        new_steps = planner.check_send_args(input, idempotency_key, "raise")
        planner.check_turn_options(in_flight=in_flight, background=False)
        return TurnStream(self, new_steps, idempotency_key, in_flight, auto_continue)

    def pending(self) -> PendingTurn | None:
        """The turn in flight on this conversation, if any (e.g. a background turn started by
        another process)."""
        found = self._store.get_pending(self.id, tenant=self.tenant)
        return None if found is None else PendingTurn(self, found)

    def _prepare(
        self, new_steps: list[JSONObject], idempotency_key: str | None, *, reread: bool
    ) -> _Prepared | Turn:
        """Plan a turn from the stored record (``reread``), or from the one this object
        holds: the record it was opened with or last committed, refreshed or updated. That one
        may be stale (another worker moved on since); ``begin_turn`` checks its version
        before anything is sent, so a stale plan costs one refused write, and the caller
        plans again from a fresh read. A send on a conversation just opened, or on one this
        object keeps sending on, saves the read."""
        store, tenant = self._store, self.tenant
        if idempotency_key is not None:
            done = store.find_turn(self.id, tenant=tenant, idempotency_key=idempotency_key)
            if done is not None:
                return self._stored_turn(done, replayed=True)
        record = self.refresh() if reread else self._record
        policy = self.compaction
        if policy is not None and policy.budget(record.model) is not None and record.turn_count:
            latest = store.load_turns(self.id, tenant=tenant, after_seq=record.turn_count - 1)
            if _context.should_compact(policy, record, latest[-1] if latest else None):
                try:
                    record = self._compact(record, policy, "tokens") or record
                except (ConcurrentTurnError, TurnInFlight):
                    # another writer moved first: this turn goes as planned from what is
                    # stored now, and the next one measures again
                    record = self.refresh()
        if planner.answered_call_ids(new_steps):
            last = store.load_steps(self.id, tenant=tenant, turn=record.turn_count)
            planner.check_function_results(new_steps, [s.payload for s in last])
        decision = planner.decide(record, policy=self._owner.policy, now=utcnow())
        return _Prepared(record, decision, new_steps)

    def _plan(
        self,
        prepared: _Prepared,
        idempotency_key: str | None,
        *,
        background: bool,
        auto_continue: bool | None,
    ) -> lifecycle.TurnLifecycle:
        owner, decision = self._owner, prepared.decision
        if background and not decision.store:
            raise ValidationError(
                "background turns need the server to keep the interaction (store: true); "
                "this conversation is stateless"
            )
        body = self._body(prepared.record, decision, prepared.new_steps)
        if background and owner.webhook_uris:
            body["webhook_config"] = planner.webhook_config(owner.webhook_uris, prepared.record)
        now = utcnow()
        machine = lifecycle.TurnLifecycle.plan(
            prepared.record,
            decision,
            new_steps=prepared.new_steps,
            body=body,
            idempotency_key=idempotency_key or planner.new_turn_key(),
            owner=owner.owner_id,
            now=now,
            # a background turn is held by nobody: whoever polls, waits or receives its
            # webhook may finish it
            lease=timedelta(0) if background else owner.lease,
            background=background,
            auto_continue=owner.auto_continue if auto_continue is None else auto_continue,
        )
        machine.compact_on_refusal = self.compaction is not None and self.compaction.reactive
        return machine

    def _body(
        self,
        record: ConversationRecord,
        decision: planner.Decision,
        new_steps: list[JSONObject],
    ) -> JSONObject:
        history: list[JSONObject] = []
        if decision.needs_history:
            history = self._replay_view(record)
        return planner.plan_request(record, decision, new_steps=new_steps, history=history)

    def _replay_view(self, record: ConversationRecord) -> list[JSONObject]:
        """``_view`` for a request body, reading only the steps this object has not read yet.

        Stored steps never change (a conversation only grows, and an erased one is gone with
        its id's creation time), so the payloads read for one replayed turn serve the next
        one's request; only the steps committed since are read. Kept for histories of up to
        ``REPLAY_CACHE_STEPS`` steps; never handed to a caller (the body is encoded, not kept).
        """
        epoch = record.context_epoch
        cache = self._replayed
        if (
            epoch
            or cache is None
            or cache.created_at != record.created_at
            or cache.last_seq > record.step_count
        ):
            cache = None
        if cache is None:
            if epoch:
                return self._view(epoch)
            loaded = self._store.load_steps(self.id, tenant=self.tenant)
            cache = _ReplayCache(record.created_at, 0, [])
        else:
            loaded = self._store.load_steps(
                self.id, tenant=self.tenant, after_seq=cache.last_seq
            )
        cache.payloads.extend(s.payload for s in loaded)
        if loaded:
            cache.last_seq = loaded[-1].seq
        self._replayed = cache if len(cache.payloads) <= REPLAY_CACHE_STEPS else None
        return list(cache.payloads)

    def _view(self, epoch: int, *, before_turn: int | None = None) -> list[JSONObject]:
        """The history a request sends under compaction ``epoch`` (0: none): the
        replacement, then the steps after the covered range (those of turns before
        ``before_turn`` only, when given)."""
        compaction: CompactionRecord | None = None
        after = 0
        if epoch:
            found = self._store.load_compactions(self.id, tenant=self.tenant, epoch=epoch)
            if not found:  # never send the whole record in place of a lost view
                raise CorruptRecordError(f"compaction {epoch} of {self.id!r} is missing")
            compaction = found[0]
            after = compaction.last_seq
        loaded = self._store.load_steps(self.id, tenant=self.tenant, after_seq=after)
        if before_turn is not None:
            loaded = [s for s in loaded if s.turn_seq < before_turn]
        return _context.view(compaction, [s.payload for s in loaded])

    # ------------------------------------------------------------------ context

    def context(self, *, at_turn: int | None = None) -> list[JSONObject]:
        """What the model saw: the whole input of turn ``at_turn`` (the compacted view in
        force then, and that turn's input), or, by default, the history the next request
        would carry before its input (a dry run; nothing is sent).

        For a chained turn the server held the history; this is that history as the mirror
        rebuilds it.
        """
        record = self.refresh()
        if at_turn is None:
            return self._view(record.context_epoch)
        k = at_turn
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= record.turn_count:
            raise ValidationError(f"at_turn must be between 1 and {record.turn_count}; got {k!r}")
        turn = (self._store.load_turns(self.id, tenant=self.tenant, after_seq=k - 1))[0]
        history = self._view(turn.context_epoch, before_turn=k)
        own = self._store.load_steps(self.id, tenant=self.tenant, turn=k)
        shown = planner.turn_result(turn, [s.payload for s in own], replayed=False)
        return [*history, *shown.input_steps]

    def compactions(self) -> list[CompactionRecord]:
        """Every compaction of this conversation, oldest first."""
        return self._store.load_compactions(self.id, tenant=self.tenant)

    def compact(
        self,
        *,
        summarizer: str | _context.Summarizer | None = None,
        keep_turns: int | None = None,
    ) -> CompactionRecord | None:
        """Compact now: the oldest turns (all but the newest ``keep_turns``, cut at a clean
        boundary) leave the requests' view, replaced by what ``summarizer`` makes of them.
        The record keeps every step. Returns None when there is nothing to cover.

        Raises:
            ValidationError: a bad summarizer or keep_turns.
            ConcurrentTurnError: a turn was committed meanwhile.
        """
        base = self.compaction or _context.CompactionPolicy(summarizer="trim")
        changes: dict[str, Any] = {}
        if summarizer is not None:
            changes["summarizer"] = _context.check_summarizer(summarizer)
        if keep_turns is not None:
            changes["keep_turns"] = keep_turns
        policy = _context.CompactionPolicy(**{**base.__dict__, **changes})
        record = self.refresh()
        if self._compact(record, policy, "manual") is None:
            return None
        return (self.compactions())[-1]

    def _compact(
        self, record: ConversationRecord, policy: _context.CompactionPolicy, fired: str
    ) -> ConversationRecord | None:
        """Write the next compaction of ``record``; the record after it (None: nothing to
        cover)."""
        store, tenant = self._store, self.tenant
        previous: CompactionRecord | None = None
        if record.context_epoch:
            found = store.load_compactions(self.id, tenant=tenant, epoch=record.context_epoch)
            previous = found[0] if found else None
        after_turn = previous.last_turn if previous else 0
        turns = store.load_turns(self.id, tenant=tenant)
        after_seq = previous.last_seq if previous else 0
        steps = store.load_steps(self.id, tenant=tenant, after_seq=after_seq)
        keep = policy.keep_turns
        where = None
        while where is None and keep >= 0:
            where = _context.cut(turns, steps, after_turn=after_turn, keep_turns=keep)
            keep -= 1
            if fired == "manual" or fired == "tokens":
                break  # only a refusal may eat into the turns kept raw
        if where is None:
            return None
        last_turn, last_seq = where
        covered = [s.payload for s in steps if s.seq <= last_seq]
        prior = list(previous.steps) if previous else []
        model: str | None = None
        interaction_id: str | None = None
        usage: JSONObject | None = None
        kind = _context.summarizer_kind(policy.summarizer)
        if policy.summarizer == "trim":
            replacement = prior
        elif policy.summarizer == "summarize":
            model = policy.summary_model or record.model
            body = _context.summary_request(model, prior, covered, record.config)
            answer = self._client._create_checked(body)
            replacement = _context.summary_steps(answer.output_text)
            interaction_id = answer.id or None
            usage = answer.usage.model_dump(exclude_none=True) if answer.usage else None
        else:
            assert callable(policy.summarizer)
            replacement = [dict(s) for s in policy.summarizer(prior, covered)]
        now = utcnow()
        compaction = CompactionRecord(
            conversation_id=self.id,
            epoch=record.context_epoch + 1,
            last_seq=last_seq,
            last_turn=last_turn,
            steps=replacement,
            summarizer=kind,
            policy=fired,
            model=model,
            interaction_id=interaction_id,
            usage=usage,
            audit_hash=turns[last_turn - 1].audit_hash,
            created_at=now,
        )
        new = _context.compacted_record(record, compaction, now=now)
        self._record = store.append_compaction(new, compaction)
        logger.info(
            "conversation %s: turns 1-%d compacted (%s, %s)", self.id, last_turn, kind, fired
        )
        return self._record

    def _in_flight(self, pending: PendingTurnRecord, policy: InFlight) -> None:
        """Another turn is in flight: finish it if its worker is gone, else apply the policy.
        Returns when a new attempt may begin."""
        orphaned = (
            pending.lease_owner == self._owner.owner_id
            and pending.idempotency_key in self._owner._orphaned
        )
        expired = orphaned or pending.lease_expires_at <= utcnow()
        if policy == "cancel" and pending.background and pending.interaction_id:
            try:
                self._client.cancel(pending.interaction_id)
            except APIError as exc:  # already finished: it is committed below instead
                logger.info("could not cancel %s: %s", pending.interaction_id, exc)
            if self._take_over(pending, wait=True) is None:
                return
        elif expired and self._take_over(pending, wait=policy == "wait") is None:
            return
        if policy == "wait":
            logger.info("conversation %s: conflict with the turn in flight; waiting", self.id)
            time.sleep(self._owner.poll_delay(1))
            return
        raise TurnInFlight(self.id, pending=pending)

    def _take_over(
        self, pending: PendingTurnRecord, *, wait: bool
    ) -> PendingTurnRecord | None:
        """Claim a turn in flight and finish it. Returns its record while it still runs."""
        now = utcnow()
        claimed = self._store.claim_pending(
            self.id,
            tenant=self.tenant,
            owner=self._owner.owner_id,
            now=now,
            lease_expires_at=now + self._owner.lease,
        )
        if claimed is None:  # nothing in flight any more, or another worker holds it
            return self._store.get_pending(self.id, tenant=self.tenant)
        self._owner._orphaned.discard(claimed.idempotency_key)
        try:
            result = TurnDriver(self).resolve(claimed, wait=wait)
        except InteractionFailed as exc:
            logger.info("conversation %s: the turn in flight ended: %s", self.id, exc)
            return None
        except LeaseLost:  # another worker is finishing it (a background turn is anyone's)
            return self._store.get_pending(self.id, tenant=self.tenant)
        return result if isinstance(result, PendingTurnRecord) else None

    def _stored_turn(self, turn: TurnRecord, *, replayed: bool) -> Turn:
        steps = self._store.load_steps(self.id, tenant=self.tenant, turn=turn.seq)
        return planner.turn_result(turn, [s.payload for s in steps], replayed=replayed)

    # ------------------------------------------------------------------ reading

    def history(
        self,
        *,
        newest: int | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
    ) -> list[JSONObject]:
        """Every step in order as wire JSON (``newest=N``: the last N, cut at a turn boundary).

        Scroll-back through the whole record (compacted turns included): ``before_seq`` and
        ``limit`` give the ``limit`` steps before that seq, ``after_seq`` and ``limit`` the
        ones after it (step seqs are 1-based; ``history(after_seq=0, limit=50)`` is the
        first page). Use :meth:`page` for the seqs too.
        """
        if before_seq is None and after_seq is None and limit is None:
            steps = self._store.load_steps(self.id, tenant=self.tenant, newest=newest)
        else:
            if newest is not None:
                raise ValidationError("newest cannot be combined with before_seq/after_seq/limit")
            steps = self.page(before_seq=before_seq, after_seq=after_seq, limit=limit)
        return [s.payload for s in steps]

    def page(
        self,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
    ) -> list[StoredStep]:
        """A page of the record as stored steps (with their seqs), a keyset read."""
        return self._store.load_step_range(
            self.id,
            tenant=self.tenant,
            after_seq=after_seq or 0,
            before_seq=before_seq,
            limit=limit,
        )

    def turns(self) -> list[TurnRecord]:
        """Every committed turn, in order."""
        return self._store.load_turns(self.id, tenant=self.tenant)

    def usage(self) -> dict[str, int]:
        """Token usage summed over every turn (integer fields of the API's usage)."""
        totals: dict[str, int] = {}
        for turn in self.turns():
            for key, value in (turn.usage or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        return totals

    # ------------------------------------------------------------------ changing

    def update(
        self,
        *,
        mode: str | None = None,
        model: str | None = None,
        metadata: JSONObject | None = None,
        **settings: Any,
    ) -> ConversationRecord:
        """Change the mode, the model, the metadata or interaction-scoped settings (a setting
        passed as ``None`` is removed). A model change makes the next turn replay."""
        record = self.refresh()
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
        self._record = self._store.update_conversation(updated)
        return self._record

    def fork(self, *, at_turn: int | None = None) -> Conversation:
        """A new conversation sharing this one's history up to turn ``at_turn`` (default: all).

        The original is untouched. When turn ``at_turn`` is stored on the server, the fork's
        first request chains from it; otherwise the fork replays.
        """
        record = self.refresh()
        k = record.turn_count if at_turn is None else at_turn
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= record.turn_count:
            raise ValidationError(f"at_turn must be between 0 and {record.turn_count}; got {k!r}")
        turns = self._store.load_turns(self.id, tenant=self.tenant, limit=k) if k else []
        steps = self._store.load_steps(self.id, tenant=self.tenant) if k else []
        steps = [s for s in steps if s.turn_seq <= k]
        fork = planner.fork_record(
            record, turns, len(steps), new_id=planner.new_conversation_id(), now=utcnow()
        )
        self._store.create_conversation(
            fork,
            turns=[t.model_copy(update={"conversation_id": fork.id}) for t in turns],
            steps=[s.model_copy(update={"conversation_id": fork.id}) for s in steps],
        )
        for compaction in self.compactions():
            if compaction.last_turn > k:
                break
            copied = compaction.model_copy(update={"conversation_id": fork.id})
            fork = self._store.append_compaction(
                _context.compacted_record(fork, copied, now=utcnow()), copied
            )
        return Conversation(self._owner, fork)

    def delete(self, *, remote: bool = False) -> DeleteReport:
        """Delete this conversation (see ``Conversations.delete``)."""
        return self._owner.delete(self.id, tenant=self.tenant, remote=remote)


class TurnStream:
    """A streamed turn: iterate the API's events; ``turn`` is set once the stream completed
    and the turn was committed. Leaving early, a cut or an error event commits nothing (a cut
    after a checkpoint is resumed from it, and an answer stopped at the decode limit streams on
    from the next request)."""

    def __init__(
        self,
        conversation: Conversation,
        new_steps: list[JSONObject],
        key: str | None,
        in_flight: InFlight,
        auto_continue: bool | None,
    ) -> None:
        self._conversation = conversation
        self._new_steps = new_steps
        self._key = key
        self._in_flight = in_flight
        self._auto_continue = auto_continue
        self._driver = TurnDriver(conversation)
        self._machine: lifecycle.TurnLifecycle | None = None
        self._events: Generator[Any, None, None] | None = None
        self.turn: Turn | None = None

    def __enter__(self) -> TurnStream:
        conv, driver = self._conversation, self._driver
        reread = False  # as in send: the record held first, a fresh read after a refusal
        while True:
            prepared = conv._prepare(self._new_steps, self._key, reread=reread)
            if isinstance(prepared, Turn):
                self.turn = prepared
                return self
            machine = conv._plan(
                prepared, self._key, background=False, auto_continue=self._auto_continue
            )
            self._machine = machine
            try:
                send = driver.until_send(machine, machine.start())
            except TurnInFlight as exc:
                conv._in_flight(exc.pending, self._in_flight)
                reread = True
                continue
            except ConcurrentTurnError:
                if reread or machine.phase is not lifecycle.Phase.PLANNED:
                    raise
                reread = True
                continue
            break
        assert send is not None
        api, body = driver.open_stream(machine, send.body)
        self._events = driver.events(machine, api, body)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._events is not None:
            self._events.close()
        machine = self._machine
        if machine is not None and not machine.done and self.turn is None:
            # left early, or broken: nothing is committed, and nothing stays on the server
            self._driver.release(machine.abandoned())

    def __iter__(self) -> TurnStream:
        return self

    def __next__(self) -> Any:
        if self._events is None or self.turn is not None:
            raise StopIteration
        try:
            return self._events.__next__()
        except StopIteration:
            self.turn = self._driver.turn
            raise

    def text_deltas(self) -> Iterator[str]:
        """Only the text as it arrives."""
        for event in self:
            if isinstance(event, StepDeltaEvent) and isinstance(event.delta, TextDelta):
                yield event.delta.text


class PendingTurn:
    """A turn in flight (a background turn): ``wait()`` for it, ``cancel()`` it, or
    ``stream()`` it. Any process can finish it: get it back with ``conversation.pending()``
    or ``Conversations.pending()``."""

    def __init__(self, conversation: Conversation, record: PendingTurnRecord) -> None:
        self.conversation = conversation
        self.record = record

    def __repr__(self) -> str:
        r = self.record
        return f"<PendingTurn {r.conversation_id} seq={r.seq} {r.state} {r.interaction_id}>"

    @property
    def interaction_id(self) -> str | None:
        return self.record.interaction_id

    @property
    def seq(self) -> int:
        return self.record.seq

    def wait(self, *, timeout: float | None = None) -> Turn:
        """Poll until the answer is finished, commit it, and return the turn (or the turn
        another worker committed for it).

        Raises:
            InteractionFailed: it failed or was cancelled (nothing committed).
            TimeoutError: still running after ``timeout`` seconds (it stays pending).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        conv = self.conversation
        key = self.record.idempotency_key
        while True:
            done = conv._store.find_turn(conv.id, tenant=conv.tenant, idempotency_key=key)
            if done is not None:
                return conv._stored_turn(done, replayed=False)
            running = conv._take_over(self.record, wait=False)
            if running is not None:
                self.record = running
            else:
                done = conv._store.find_turn(conv.id, tenant=conv.tenant, idempotency_key=key)
                if done is not None:
                    return conv._stored_turn(done, replayed=False)
                if conv._store.get_pending(conv.id, tenant=conv.tenant) is None:
                    raise InteractionFailed(
                        interaction_id=self.record.interaction_id, status="cancelled", errors=[]
                    )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"turn {self.record.seq} of {conv.id} is still running")
            time.sleep(conv._owner.poll_delay(2))

    def cancel(self) -> None:
        """Cancel it on the server; nothing is committed (an answer that finished first is
        committed instead)."""
        conv = self.conversation
        if self.record.interaction_id:
            try:
                conv._client.cancel(self.record.interaction_id)
            except APIError as exc:
                logger.info("could not cancel %s: %s", self.record.interaction_id, exc)
        conv._take_over(self.record, wait=True)

    def stream(self) -> Iterator[Any]:
        """The answer's events as the server produces them (``GET …?stream=true``, resumed
        with ``last_event_id`` after a cut); the turn is committed when it completes."""
        conv = self.conversation
        interaction_id = self.record.interaction_id
        if interaction_id is None:
            raise ValidationError("this turn has no interaction id yet")
        last_event_id: str | None = None
        for _ in range(MAX_RESUMES + 1):
            try:
                events = conv._client.get(
                    interaction_id, stream=True, last_event_id=last_event_id
                )
                with events:
                    for event in events:
                        last_event_id = getattr(event, "event_id", None) or last_event_id
                        yield event
                break
            except StreamError:
                if last_event_id is None:
                    raise
        self.wait()

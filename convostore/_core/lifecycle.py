"""The lifecycle of one turn: every state it can be in, and the effect that moves it on.

This is where a turn becomes durable. The drivers (``_async/conversation.py`` and its generated
twin, and recovery in ``_async/conversations.py``) never decide anything: they ask the machine
for the next effect, perform it (a store write, an HTTP request), and feed the result back.

::

    planned ──Begin──> pending ──Send──> (answer with an id) ──Record──> sent
                          │                                             │
                          │    requires_continuation ──Record──> continuing ──Send──> sent …
                          │    in_progress / queued / idle ──Record──> sent ──Poll──> …
                          │    background ──Record──> sent  (returned to the caller: finish later)
                          │    completed / requires_action / incomplete / budget_exceeded
                          │        ──Record──> answered ──Commit──> committed
                          │    failed / cancelled ──Release──> failed / cancelled (raised)
                          └── an API error, a lost race, a lost answer ──Release──> failed / lost

``Begin`` writes the pending record (``Store.begin_turn``) *before* anything reaches the API:
from then on, whatever happens to this process, another worker can find the turn, claim its
lease and finish it (adopt the answer the server kept, continue it, or record it as lost).
``Record`` writes the server's progress onto the pending record (``update_pending``) before the
next request or the commit, so an answer the server has is never unknown to the store.
``Commit`` replaces the pending record with the turn, atomically (``append_turn``), deduplicated
by the idempotency key every turn now carries: two workers finishing the same turn commit once.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .._exceptions import (
    APIError,
    BadRequestError,
    ConvostoreError,
    InteractionFailed,
    NotFoundError,
)
from ..models import (
    LOST_STATUS,
    ConversationRecord,
    Interaction,
    JSONObject,
    PendingTurnRecord,
    TurnCommit,
    TurnRecord,
    to_wire,
)
from . import audit, context, planner
from .continuation import continuation_body, merge_hops

DEFAULT_LEASE = timedelta(minutes=2)
"""How long a worker holds a turn in flight before another may take it over: what a dead
worker's conversation waits at most before the next send (or ``recover``) finishes its turn.
Renewed at every write of progress and while an answer streams in, so it bounds the silence
between two events of one answer, not the answer."""

COMMITTED_STATUSES = frozenset({"completed", "requires_action", "incomplete", "budget_exceeded"})
"""Answers committed as they are (a partial answer keeps its status visible)."""
FAILED_STATUSES = frozenset({"failed", "cancelled"})
"""Answers raised as :class:`~convostore.InteractionFailed`; nothing is committed."""
CONTINUE_STATUS = "requires_continuation"


class Phase(enum.StrEnum):
    PLANNED = "planned"
    PENDING = "pending"
    SENT = "sent"
    CONTINUING = "continuing"
    ANSWERED = "answered"
    COMMITTED = "committed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


TERMINAL = frozenset({Phase.COMMITTED, Phase.FAILED, Phase.CANCELLED, Phase.LOST})


class LifecycleError(ConvostoreError):
    """An event arrived in a state that does not accept it (a driver bug, never user input)."""


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Begin:
    """Write the pending record (``Store.begin_turn``), then call ``begun()``."""

    pending: PendingTurnRecord


@dataclass(frozen=True)
class Send:
    """POST this create body, then call ``answered(interaction)`` (or ``api_error(exc)``).
    ``hop`` counts continuation hops (0: the turn's own request)."""

    body: JSONObject
    hop: int = 0


@dataclass(frozen=True)
class Replan:
    """The chain is broken: load the whole history, then call ``replanned(history)``."""


@dataclass(frozen=True)
class Compact:
    """The API refused the request as too large: release the pending record, compact the
    conversation, then call ``compacted(record, decision, body)`` with the compacted view
    (or, when nothing can be compacted, raise ``error``)."""

    error: Exception


@dataclass(frozen=True)
class Record:
    """Write the server's progress (``Store.update_pending``), then call ``recorded()``."""

    pending: PendingTurnRecord


@dataclass(frozen=True)
class Poll:
    """The answer is not finished: GET the interaction (after a pause), then ``answered``."""

    interaction_id: str


@dataclass(frozen=True)
class Commit:
    """Append the turn (``Store.append_turn``); then ``committed()``, or ``conflict()``."""

    commit: TurnCommit


@dataclass(frozen=True)
class Release:
    """Give the turn up: delete the pending record (or, with ``lost``, commit the lost turn),
    queue the deletion of ``discard`` on the server (the outbox), then raise ``error`` if set."""

    pending: PendingTurnRecord
    discard: tuple[str, ...] = ()
    error: Exception | None = None
    lost: TurnCommit | None = None


@dataclass(frozen=True)
class Wait:
    """Background turn recorded and running: hand the pending turn back to the caller."""

    pending: PendingTurnRecord


Effect = Begin | Send | Replan | Compact | Record | Poll | Commit | Release | Wait


# --------------------------------------------------------------------------- the machine


@dataclass
class TurnLifecycle:
    """One turn's state machine. Build it with :meth:`plan` (a new turn) or :meth:`resume`
    (a pending turn found in the store), then drive it: ``effect = machine.start()``, and
    after performing each effect, the method the effect names."""

    record: ConversationRecord
    decision: planner.Decision
    pending: PendingTurnRecord
    body: JSONObject | None
    auto_continue: bool = True
    phase: Phase = Phase.PLANNED
    hops: list[Interaction] = field(default_factory=list)
    _after_record: Effect | None = None
    _chain_broken: bool = False
    _compacted: bool = False
    compact_on_refusal: bool = True

    # ------------------------------------------------------------ construction

    @classmethod
    def plan(
        cls,
        record: ConversationRecord,
        decision: planner.Decision,
        *,
        new_steps: Sequence[JSONObject],
        body: JSONObject,
        idempotency_key: str,
        owner: str,
        now: datetime,
        lease: timedelta = DEFAULT_LEASE,
        background: bool = False,
        auto_continue: bool = True,
    ) -> TurnLifecycle:
        if background:
            body = {**body, "background": True}
        pending = PendingTurnRecord(
            conversation_id=record.id,
            tenant=record.tenant,
            seq=record.turn_count + 1,
            planned_version=record.version,
            idempotency_key=idempotency_key,
            mode_used=decision.mode_used,
            reason=decision.reason,
            model=record.model,
            store=decision.store,
            background=background,
            previous_interaction_id=decision.previous_interaction_id,
            input_steps=list(new_steps),
            config=record.config,
            lease_owner=owner,
            lease_expires_at=now + lease,
            created_at=now,
            updated_at=now,
        )
        return cls(record, decision, pending, body, auto_continue=auto_continue)

    @classmethod
    def resume(
        cls, record: ConversationRecord, pending: PendingTurnRecord, *, auto_continue: bool = True
    ) -> TurnLifecycle:
        """A pending turn taken over from another worker (its lease already claimed)."""
        decision = planner.Decision(
            pending.mode_used, pending.reason, pending.store, pending.previous_interaction_id
        )
        machine = cls(record, decision, pending, None, auto_continue=auto_continue)
        machine.phase = Phase(pending.state)
        return machine

    # ------------------------------------------------------------ driving

    def _expect(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise LifecycleError(f"turn in phase {self.phase.value!r}; expected {phases}")

    def start(self) -> Effect:
        self._expect(Phase.PLANNED)
        return Begin(self.pending)

    def begun(self) -> Effect:
        self._expect(Phase.PLANNED)
        self.phase = Phase.PENDING
        assert self.body is not None
        return Send(self.body)

    def recover(self, *, now: datetime, conversation: ConversationRecord) -> Effect:
        """The first effect for a turn taken over: GET what the server has, or give up."""
        self._expect(Phase.PENDING, Phase.SENT, Phase.CONTINUING)
        moved = conversation.version != self.pending.planned_version
        known = self.pending.interaction_id
        if moved or not known or not self.pending.store:
            # nothing the server kept can be adopted (no id, store:false), or the conversation
            # moved on meanwhile: committing now would interleave. Recorded as lost.
            self.record = conversation
            return self._lose(now)
        return Poll(known)

    def api_error(self, exc: APIError, *, now: datetime) -> Effect:
        """The create (or a poll) failed."""
        self._expect(Phase.PENDING, Phase.SENT, Phase.CONTINUING)
        chained = self.decision.previous_interaction_id is not None
        if (
            self.phase is Phase.PENDING
            and not self.hops
            and self.compact_on_refusal
            and not self._compacted
            and context.too_large(exc)
        ):
            self._compacted = True
            return Compact(exc)
        if (
            self.phase is Phase.PENDING
            and not self.hops
            and chained
            and not self._chain_broken
            and isinstance(exc, NotFoundError | BadRequestError)
        ):
            self._chain_broken = True
            return Replan()
        if self.phase is Phase.PENDING and not self.hops:
            self.phase = Phase.FAILED
            return Release(self.pending, error=exc)
        if isinstance(exc, NotFoundError):
            # the server lost (or someone deleted) what it had answered so far
            return self._lose(now)
        self.phase = Phase.FAILED
        return Release(self.pending, discard=self._stored_ids(), error=exc)

    def replanned(self, decision: planner.Decision, body: JSONObject) -> Effect:
        """The chain was broken: the pending record is released and begun again with the
        replayed body (the mode and reason of a pending record are not progress)."""
        self._expect(Phase.PENDING)
        self.decision = decision
        self.body = body
        self.pending = self.pending.model_copy(
            update={
                "mode_used": decision.mode_used,
                "reason": decision.reason,
                "store": decision.store,
                "previous_interaction_id": None,
            }
        )
        self.phase = Phase.PLANNED
        return Begin(self.pending)

    def compacted(
        self, record: ConversationRecord, decision: planner.Decision, body: JSONObject
    ) -> Effect:
        """The request was too large: the conversation is compacted (its version moved on),
        and the turn is begun again with the compacted view, once."""
        self._expect(Phase.PENDING)
        self.record = record
        self.decision = decision
        self.body = body
        self.pending = self.pending.model_copy(
            update={
                "planned_version": record.version,
                "mode_used": decision.mode_used,
                "reason": decision.reason,
                "store": decision.store,
                "previous_interaction_id": None,
            }
        )
        self.phase = Phase.PLANNED
        return Begin(self.pending)

    def answered(self, interaction: Interaction, *, now: datetime, lease: timedelta) -> Effect:
        """An answer (or a poll's view of it) arrived."""
        self._expect(Phase.PENDING, Phase.SENT, Phase.CONTINUING)
        if self.pending.background:
            lease = timedelta(0)  # held by nobody: whoever polls or gets the webhook finishes it
        if self.hops and self.hops[-1].id == interaction.id:
            self.hops[-1] = interaction  # a poll: the same hop, further on
        else:
            self.hops.append(interaction)
        status = interaction.status
        ids = [h.id for h in self.hops if h.id]
        token = interaction.continuation_token if status == CONTINUE_STATUS else None
        progress: dict[str, Any] = {
            "interaction_id": interaction.id or self.pending.interaction_id,
            "hop_ids": ids,
            "continuation_token": token,
            "lease_expires_at": now + lease,
            "updated_at": now,
        }
        if status in FAILED_STATUSES:
            self.phase = Phase.FAILED if status == "failed" else Phase.CANCELLED
            errors = list(getattr(interaction, "errors", None) or ())
            exc = InteractionFailed(
                interaction_id=interaction.id or None, status=status, errors=errors
            )
            return Release(self.pending, discard=self._stored_ids(), error=exc)
        if status == CONTINUE_STATUS and token and self.auto_continue:
            self.phase = Phase.CONTINUING
            body = self._continuation(token, interaction.id)
            self._after_record = Send(body, hop=len(self.hops))
            return self._record(progress, "continuing")
        if status in COMMITTED_STATUSES or status == CONTINUE_STATUS:
            self.phase = Phase.ANSWERED
            self._after_record = Commit(self._commit(now))
            known = self.pending.interaction_id == progress["interaction_id"]
            if not self.pending.store or (known and self.pending.hop_ids == ids):
                # nothing on the server to adopt, or the store already names the answer (a
                # stream recorded it when the server named it): straight to the commit
                return self._after_record
            return self._record(progress, "sent")
        # in_progress, queued, idle, or a status convostore does not know: never committed
        self.phase = Phase.SENT
        if not interaction.id:
            self.phase = Phase.FAILED
            failed = InteractionFailed(interaction_id=None, status=status, errors=[])
            return Release(self.pending, error=failed)
        self._after_record = Wait(self.pending) if self.pending.background else Poll(interaction.id)
        return self._record(progress, "sent")

    def started(self, interaction_id: str, *, now: datetime, lease: timedelta) -> PendingTurnRecord:
        """A stream named its interaction (``interaction.created``): the pending record to
        write at once, so a worker killed mid-stream leaves an answer another can adopt."""
        self._expect(Phase.PENDING, Phase.SENT, Phase.CONTINUING)
        if self.pending.background:
            lease = timedelta(0)
        if self.phase is Phase.PENDING:
            self.phase = Phase.SENT
        ids = [*self.pending.hop_ids]
        if interaction_id not in ids:
            ids.append(interaction_id)
        self.pending = self.pending.model_copy(
            update={
                "state": self.phase.value if self.phase is not Phase.SENT else "sent",
                "interaction_id": interaction_id,
                "hop_ids": ids,
                "lease_expires_at": now + lease,
                "updated_at": now,
            }
        )
        return self.pending

    def resumed(self, partial: Interaction) -> None:
        """A cut stream is resumed from its last checkpoint: what it produced up to there is
        a hop of the answer (the resumed request produces the rest)."""
        self._expect(Phase.PENDING, Phase.SENT, Phase.CONTINUING)
        if self.hops and partial.id and self.hops[-1].id == partial.id:
            self.hops[-1] = partial
        else:
            self.hops.append(partial)
        self.phase = Phase.CONTINUING

    def renewed(self, *, now: datetime, lease: timedelta) -> PendingTurnRecord:
        """The pending record with its lease extended (a long answer still arriving)."""
        self._expect(Phase.PENDING, Phase.SENT, Phase.CONTINUING)
        if not self.pending.background:
            self.pending = self.pending.model_copy(
                update={"lease_expires_at": now + lease, "updated_at": now}
            )
        return self.pending

    def taken_over(self) -> None:
        """Another worker took this turn over (this one stalled past its lease): this one
        stops here, whatever the other made of it."""
        self.phase = Phase.FAILED

    def abandoned(self, error: Exception | None = None) -> Release:
        """The caller left (or the stream broke) before the answer was complete: nothing is
        committed and what the server stored for it is deleted."""
        self._expect(Phase.PENDING, Phase.SENT, Phase.CONTINUING)
        self.phase = Phase.FAILED
        return Release(self.pending, discard=self._stored_ids(), error=error)

    def recorded(self) -> Effect:
        self._expect(Phase.SENT, Phase.CONTINUING, Phase.ANSWERED)
        effect, self._after_record = self._after_record, None
        assert effect is not None
        if isinstance(effect, Wait):
            return Wait(self.pending)
        return effect

    def committed(self) -> None:
        self._expect(Phase.ANSWERED, Phase.LOST)
        self.phase = Phase.COMMITTED if self.phase is Phase.ANSWERED else Phase.LOST

    def conflict(self, exc: Exception, *, now: datetime) -> Effect:
        """The commit lost: the conversation moved on since the turn was planned."""
        self._expect(Phase.ANSWERED)
        self.phase = Phase.FAILED
        return Release(self.pending, discard=self._stored_ids(), error=exc)

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    # ------------------------------------------------------------ pure pieces

    def _record(self, progress: dict[str, Any], state: str) -> Record:
        self.pending = self.pending.model_copy(update={**progress, "state": state})
        return Record(self.pending)

    def _stored_ids(self) -> tuple[str, ...]:
        if not self.pending.store:
            return ()
        ids = {*(h.id for h in self.hops if h.id), *self.pending.hop_ids}
        if self.pending.interaction_id:
            ids.add(self.pending.interaction_id)
        return tuple(sorted(ids))

    def _continuation(self, token: str, owner_id: str) -> JSONObject:
        assert self.body is not None
        if not owner_id:  # store: false answers have no id; the input is re-sent anyway
            return continuation_body(self.body, token=token, owner_id=None, store=False)
        return continuation_body(
            self.body, token=token, owner_id=owner_id, store=self.decision.store
        )

    def merged(self) -> Interaction:
        return merge_hops(self.hops)

    def _commit(self, now: datetime) -> TurnCommit:
        answer = self.merged()
        return planner.commit_turn(
            self.record,
            self.decision,
            new_steps=self.pending.input_steps,
            interaction_id=answer.id,
            status=answer.status,
            response_steps=answer.steps,
            usage=to_wire(answer.usage) if answer.usage is not None else None,
            now=now,
            idempotency_key=self.pending.idempotency_key,
        )

    def _lose(self, now: datetime) -> Release:
        self.phase = Phase.LOST
        return Release(
            self.pending,
            discard=self._stored_ids(),
            lost=lost_commit(self.record, self.pending, now),
        )


def lost_commit(
    record: ConversationRecord, pending: PendingTurnRecord, now: datetime
) -> TurnCommit:
    """The audit record of a turn whose answer was lost: a turn with no steps, status
    ``lost``, that moves neither the head nor the history (the next turn travels as if it had
    not happened)."""

    seq = record.turn_count + 1
    turn = TurnRecord(
        conversation_id=record.id,
        seq=seq,
        interaction_id=pending.interaction_id,
        previous_interaction_id=pending.previous_interaction_id,
        model=pending.model,
        mode_used=pending.mode_used,
        reason=pending.reason,
        status=LOST_STATUS,
        idempotency_key=pending.idempotency_key,
        created_at=now,
    )
    turn = turn.model_copy(update={"audit_hash": audit.turn_hash(record.last_turn_hash, turn, [])})
    new_record = record.model_copy(
        update={
            "version": record.version + 1,
            "turn_count": seq,
            "last_turn_hash": turn.audit_hash,
            "updated_at": now,
        }
    )
    return TurnCommit.model_construct(record=new_record, turn=turn, steps=[])

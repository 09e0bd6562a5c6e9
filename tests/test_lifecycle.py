"""The turn lifecycle (convostore._core.lifecycle): every state, every answer status, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from convostore import BadRequestError, InteractionFailed, InternalServerError, NotFoundError
from convostore._core import lifecycle, planner
from convostore._core.lifecycle import (
    Begin,
    Commit,
    LifecycleError,
    Phase,
    Poll,
    Record,
    Release,
    Replan,
    Send,
    TurnLifecycle,
    Wait,
)
from convostore.models import ConversationRecord, Interaction

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
USER = {"type": "user_input", "content": [{"type": "text", "text": "hi"}]}


def answer(
    status: str = "completed", *, id: str = "int_1", text: str = "hello", **extra: Any
) -> Interaction:
    steps = [{"type": "model_output", "content": [{"type": "text", "text": text}]}]
    return Interaction.model_validate(
        {"id": id, "status": status, "steps": steps if text else [], **extra}
    )


def record(**changes: Any) -> ConversationRecord:
    base = ConversationRecord(id="c1", tenant="t", model="m", mode="server")
    return base.model_copy(update=changes)


def machine(
    rec: ConversationRecord | None = None,
    *,
    background: bool = False,
    auto_continue: bool = True,
    chain: bool = False,
) -> TurnLifecycle:
    rec = rec or record()
    if chain:
        rec = rec.model_copy(
            update={
                "head_interaction_id": "h0",
                "head_created_at": NOW,
                "head_model": "m",
                "step_count": 2,
                "turn_count": 1,
                "version": 1,
            }
        )
    decision = planner.decide(rec, policy=planner.Policy(), now=NOW)
    body = planner.plan_request(rec, decision, new_steps=[USER])
    return TurnLifecycle.plan(
        rec,
        decision,
        new_steps=[USER],
        body=body,
        idempotency_key="k1",
        owner="w1",
        now=NOW,
        lease=LEASE,
        background=background,
        auto_continue=auto_continue,
    )


def sent(m: TurnLifecycle) -> Send:
    begin = m.start()
    assert isinstance(begin, Begin) and begin.pending.state == "pending"
    assert begin.pending.seq == m.record.turn_count + 1
    assert begin.pending.planned_version == m.record.version
    assert begin.pending.lease_expires_at == NOW + LEASE
    send = m.begun()
    assert isinstance(send, Send) and m.phase is Phase.PENDING
    return send


def test_completed_answer_is_recorded_then_committed() -> None:
    m = machine()
    send = sent(m)
    assert send.body["input"] == [USER] and send.body["store"] is True
    rec = m.answered(answer(), now=NOW, lease=LEASE)
    assert isinstance(rec, Record)
    assert rec.pending.interaction_id == "int_1" and rec.pending.state == "sent"
    assert rec.pending.hop_ids == ["int_1"]
    commit = m.recorded()
    assert isinstance(commit, Commit) and m.phase is Phase.ANSWERED
    assert commit.commit.turn.idempotency_key == "k1"
    assert commit.commit.turn.status == "completed"
    assert [s.payload["type"] for s in commit.commit.steps] == ["user_input", "model_output"]
    m.committed()
    assert m.phase is Phase.COMMITTED and m.done


def test_an_answer_whose_id_a_stream_recorded_goes_straight_to_the_commit() -> None:
    m = machine()
    sent(m)
    pending = m.started("int_1", now=NOW, lease=LEASE)
    assert pending.interaction_id == "int_1" and pending.state == "sent"
    assert isinstance(m.answered(answer(), now=NOW, lease=LEASE), Commit)


def test_stateless_answer_is_committed_without_recording() -> None:
    m = machine(record(mode="stateless"))
    sent(m)
    effect = m.answered(answer(id=""), now=NOW, lease=LEASE)
    assert isinstance(effect, Commit)
    assert effect.commit.record.head_interaction_id is None


@pytest.mark.parametrize("status", ["incomplete", "budget_exceeded", "requires_action"])
def test_partial_answers_are_committed_with_their_status(status: str) -> None:
    m = machine()
    sent(m)
    assert isinstance(m.answered(answer(status), now=NOW, lease=LEASE), Record)
    commit = m.recorded()
    assert isinstance(commit, Commit) and commit.commit.turn.status == status


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_failed_answers_release_and_raise(status: str) -> None:
    m = machine(chain=True)
    sent(m)
    errors = [{"code": "internal", "message": "boom"}]
    effect = m.answered(answer(status, text="", errors=errors), now=NOW, lease=LEASE)
    assert isinstance(effect, Release) and effect.lost is None
    assert effect.discard == ("int_1",)
    assert isinstance(effect.error, InteractionFailed)
    assert effect.error.status == status and effect.error.errors == errors
    assert effect.error.interaction_id == "int_1"
    assert m.phase in (Phase.FAILED, Phase.CANCELLED) and m.done


def test_failed_stateless_answer_has_nothing_to_discard() -> None:
    m = machine(record(mode="stateless"))
    sent(m)
    effect = m.answered(answer("failed", id=""), now=NOW, lease=LEASE)
    assert isinstance(effect, Release) and effect.discard == ()


def test_continuation_hops_are_merged_into_one_turn() -> None:
    m = machine()
    sent(m)
    hop1 = answer(
        "requires_continuation",
        id="h1",
        text="Once upon ",
        continuation_token="tok1",
        usage={"total_output_tokens": 2, "total_tokens": 5},
    )
    rec = m.answered(hop1, now=NOW, lease=LEASE)
    assert isinstance(rec, Record) and m.phase is Phase.CONTINUING
    assert rec.pending.continuation_token == "tok1" and rec.pending.state == "continuing"
    send = m.recorded()
    assert isinstance(send, Send) and send.hop == 1
    assert send.body["continuation_token"] == "tok1"
    assert send.body["previous_interaction_id"] == "h1"
    assert "input" not in send.body
    hop2 = answer("completed", id="h2", text="a time.", usage={"total_output_tokens": 3})
    rec = m.answered(hop2, now=NOW, lease=LEASE)
    assert isinstance(rec, Record) and rec.pending.hop_ids == ["h1", "h2"]
    assert rec.pending.continuation_token is None
    commit = m.recorded()
    assert isinstance(commit, Commit)
    turn = commit.commit.turn
    assert turn.interaction_id == "h2" and turn.status == "completed"
    assert turn.usage is not None and turn.usage["total_output_tokens"] == 5
    texts = [
        p["text"] for s in commit.commit.steps for p in s.payload.get("content", []) if "text" in p
    ]
    assert "".join(texts[1:]) == "Once upon a time."


def test_stateless_continuation_resends_the_input() -> None:
    m = machine(record(mode="stateless"))
    sent(m)
    hop1 = answer("requires_continuation", id="", continuation_token="tok1")
    send = m.answered(hop1, now=NOW, lease=LEASE)
    if isinstance(send, Record):
        send = m.recorded()
    assert isinstance(send, Send)
    assert send.body["input"] == [USER] and send.body["continuation_token"] == "tok1"


def test_without_auto_continue_the_partial_answer_is_committed() -> None:
    m = machine(auto_continue=False)
    sent(m)
    hop1 = answer("requires_continuation", id="h1", continuation_token="tok1")
    assert isinstance(m.answered(hop1, now=NOW, lease=LEASE), Record)
    commit = m.recorded()
    assert isinstance(commit, Commit)
    assert commit.commit.turn.status == "requires_continuation"


@pytest.mark.parametrize("status", ["in_progress", "queued", "idle", "some_new_status"])
def test_unfinished_answers_are_polled_never_committed(status: str) -> None:
    m = machine()
    sent(m)
    rec = m.answered(answer(status, text=""), now=NOW, lease=LEASE)
    assert isinstance(rec, Record) and rec.pending.state == "sent"
    poll = m.recorded()
    assert isinstance(poll, Poll) and poll.interaction_id == "int_1"
    # the poll finds it finished: the same hop, now complete; its id is already recorded
    commit = m.answered(answer(), now=NOW, lease=LEASE)
    assert isinstance(commit, Commit) and len(m.hops) == 1
    assert commit.commit.turn.status == "completed"


def test_unfinished_answer_without_id_fails() -> None:
    m = machine()
    sent(m)
    effect = m.answered(answer("in_progress", id="", text=""), now=NOW, lease=LEASE)
    assert isinstance(effect, Release) and isinstance(effect.error, InteractionFailed)


def test_background_turn_is_handed_back_once_recorded() -> None:
    m = machine(background=True)
    send = sent(m)
    assert send.body["background"] is True
    assert isinstance(m.answered(answer("in_progress", text=""), now=NOW, lease=LEASE), Record)
    wait = m.recorded()
    assert isinstance(wait, Wait) and wait.pending.interaction_id == "int_1"
    assert wait.pending.background is True


@pytest.mark.parametrize("error", [NotFoundError, BadRequestError])
def test_broken_chain_replans_once(error: type) -> None:
    m = machine(chain=True)
    send = sent(m)
    assert send.body["previous_interaction_id"] == "h0"
    exc = error("gone", status_code=404 if error is NotFoundError else 400)
    assert isinstance(m.api_error(exc, now=NOW), Replan)
    decision = planner.decide(m.record, policy=planner.Policy(), now=NOW, chain_broken=True)
    begin = m.replanned(decision, {"model": "m", "input": [USER], "store": True})
    assert isinstance(begin, Begin) and begin.pending.reason == "chain_broken"
    assert begin.pending.previous_interaction_id is None
    assert isinstance(m.begun(), Send)
    again = m.api_error(exc, now=NOW)
    assert isinstance(again, Release) and again.error is exc


def test_api_error_before_an_answer_releases() -> None:
    m = machine()
    sent(m)
    exc = InternalServerError("boom", status_code=500)
    effect = m.api_error(exc, now=NOW)
    assert isinstance(effect, Release) and effect.error is exc and effect.discard == ()


def test_a_lost_race_discards_the_answer() -> None:
    m = machine()
    sent(m)
    m.answered(answer(), now=NOW, lease=LEASE)
    m.recorded()
    effect = m.conflict(RuntimeError("stale"), now=NOW)
    assert isinstance(effect, Release) and effect.discard == ("int_1",)


def test_events_out_of_order_are_refused() -> None:
    m = machine()
    with pytest.raises(LifecycleError):
        m.answered(answer(), now=NOW, lease=LEASE)
    sent(m)
    with pytest.raises(LifecycleError):
        m.committed()
    with pytest.raises(LifecycleError):
        m.begun()


# ------------------------------------------------------------------ taking a turn over


def pending_of(m: TurnLifecycle, **changes: Any) -> Any:
    return m.pending.model_copy(update=changes)


def test_recovery_polls_what_the_server_has() -> None:
    m = machine()
    pending = pending_of(m, state="sent", interaction_id="int_1", hop_ids=["int_1"])
    r = TurnLifecycle.resume(m.record, pending)
    effect = r.recover(now=NOW, conversation=m.record)
    assert isinstance(effect, Poll) and effect.interaction_id == "int_1"


@pytest.mark.parametrize(
    "changes",
    [
        {"state": "pending"},  # never answered: no id to adopt
        {"state": "sent", "interaction_id": "int_1", "store": False},  # nothing kept
    ],
)
def test_recovery_records_what_cannot_be_adopted_as_lost(changes: dict[str, Any]) -> None:
    m = machine(chain=True)
    r = TurnLifecycle.resume(m.record, pending_of(m, **changes))
    effect = r.recover(now=NOW, conversation=m.record)
    assert isinstance(effect, Release) and effect.lost is not None
    lost = effect.lost
    assert lost.steps == [] and lost.turn.status == lifecycle.LOST_STATUS
    assert lost.record.head_interaction_id == "h0"  # the chain stays where it was
    assert lost.record.step_count == m.record.step_count
    assert lost.record.version == m.record.version + 1
    assert lost.turn.idempotency_key == "k1"


def test_recovery_never_interleaves_after_the_conversation_moved() -> None:
    m = machine()
    pending = pending_of(m, state="sent", interaction_id="int_1", hop_ids=["int_1"])
    moved = m.record.model_copy(update={"version": m.record.version + 1})
    r = TurnLifecycle.resume(m.record, pending)
    effect = r.recover(now=NOW, conversation=moved)
    assert isinstance(effect, Release) and effect.lost is not None
    assert effect.discard == ("int_1",)
    assert effect.lost.record.version == moved.version + 1

"""The pure planner, table-driven: every mode x reason, the request body, the commit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from convostore import ValidationError
from convostore._core import audit as _audit
from convostore._core import planner as _planner
from convostore._core.planner import Decision, Policy, decide, plan_request
from convostore.models import ConversationRecord, Reason, TurnRecord

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HI = {"type": "user_input", "content": [{"type": "text", "text": "hi"}]}


def record(**changes: Any) -> ConversationRecord:
    base: dict[str, Any] = {
        "id": "c1",
        "tenant": "acme",
        "mode": "auto",
        "model": "m1",
        "config": {"system_instruction": "Be a cat.", "generation_config": {"temperature": 0}},
        "head_interaction_id": "int_1",
        "head_created_at": NOW - timedelta(hours=1),
        "head_model": "m1",
        "version": 2,
        "turn_count": 2,
        "step_count": 4,
    }
    base.update(changes)
    return ConversationRecord(**base)


FRESH = {"head_interaction_id": None, "head_created_at": None, "head_model": None}
EMPTY = {**FRESH, "turn_count": 0, "step_count": 0, "version": 0}
OLD = {"head_created_at": NOW - timedelta(days=56)}

# (mode, record changes, chain_broken, policy) -> (mode_used, reason, store, previous id)
CASES = [
    ("auto", EMPTY, False, None, ("server", Reason.FIRST_TURN, True, None)),
    ("server", EMPTY, False, None, ("server", Reason.FIRST_TURN, True, None)),
    ("stateless", EMPTY, False, None, ("stateless", Reason.STATELESS_MODE, False, None)),
    ("auto", {}, False, None, ("server", Reason.CHAINED, True, "int_1")),
    ("server", {}, False, None, ("server", Reason.CHAINED, True, "int_1")),
    ("stateless", {}, False, None, ("stateless", Reason.STATELESS_MODE, False, None)),
    ("auto", OLD, False, None, ("stateless", Reason.HEAD_EXPIRED, True, None)),
    # server mode does not predict expiry: it tries the chain and falls back on "not found"
    ("server", OLD, False, None, ("server", Reason.CHAINED, True, "int_1")),
    ("auto", {"model": "m2"}, False, None, ("stateless", Reason.MODEL_CHANGED, True, None)),
    ("server", {"model": "m2"}, False, None, ("stateless", Reason.MODEL_CHANGED, True, None)),
    ("auto", FRESH, False, None, ("stateless", Reason.NO_SERVER_HEAD, True, None)),
    ("server", FRESH, False, None, ("stateless", Reason.NO_SERVER_HEAD, True, None)),
    ("auto", {}, True, None, ("stateless", Reason.CHAIN_BROKEN, True, None)),
    ("server", {}, True, None, ("stateless", Reason.CHAIN_BROKEN, True, None)),
    ("stateless", {}, True, None, ("stateless", Reason.STATELESS_MODE, False, None)),
    # per-tenant retention (free tier: 1 day)
    (
        "auto",
        {"head_created_at": NOW - timedelta(hours=30)},
        False,
        Policy(retention={"acme": timedelta(days=1)}),
        ("stateless", Reason.HEAD_EXPIRED, True, None),
    ),
    (
        "auto",
        {"head_created_at": NOW - timedelta(hours=30)},
        False,
        Policy(retention={"other": timedelta(days=1)}),
        ("server", Reason.CHAINED, True, "int_1"),
    ),
    # within the safety margin of the expiry counts as expired
    (
        "auto",
        {"head_created_at": NOW - timedelta(days=1) + timedelta(minutes=5)},
        False,
        Policy(retention=lambda tenant: timedelta(days=1)),
        ("stateless", Reason.HEAD_EXPIRED, True, None),
    ),
]


@pytest.mark.parametrize(("mode", "changes", "broken", "policy", "expected"), CASES)
def test_decide(
    mode: str, changes: dict[str, Any], broken: bool, policy: Policy | None, expected: tuple
) -> None:
    rec = record(mode=mode, **changes)
    decision = decide(rec, policy=policy or Policy(), now=NOW, chain_broken=broken)
    assert (
        decision.mode_used,
        decision.reason,
        decision.store,
        decision.previous_interaction_id,
    ) == expected


def test_plan_chained_sends_only_new_input_and_settings() -> None:
    rec = record()
    body = plan_request(rec, decide(rec, policy=Policy(), now=NOW), new_steps=[HI])
    assert body == {
        "model": "m1",
        "system_instruction": "Be a cat.",
        "generation_config": {"temperature": 0},
        "input": [HI],
        "previous_interaction_id": "int_1",
        "store": True,
    }


@pytest.mark.parametrize(
    ("mode", "broken", "store"), [("stateless", False, False), ("server", True, True)]
)
def test_plan_replay_sends_history_and_settings(mode: str, broken: bool, store: bool) -> None:
    rec = record(mode=mode)
    history = [HI, {"type": "model_output", "content": [{"type": "text", "text": "meow"}]}]
    decision = decide(rec, policy=Policy(), now=NOW, chain_broken=broken)
    body = plan_request(rec, decision, new_steps=[HI], history=history)
    assert body["input"] == [*history, HI]
    assert body["store"] is store
    assert "previous_interaction_id" not in body
    assert body["system_instruction"] == "Be a cat."


def test_first_turn_has_no_previous_id() -> None:
    rec = record(**EMPTY)
    body = plan_request(rec, decide(rec, policy=Policy(), now=NOW), new_steps=[HI])
    assert "previous_interaction_id" not in body and body["store"] is True


RESPONSES = [
    # (response steps, expected model steps)
    ([{"type": "model_output", "content": [{"type": "text", "text": "a"}]}], 1),
    ([HI, {"type": "model_output", "content": [{"type": "text", "text": "a"}]}], 1),
    (
        [
            {"type": "thought", "signature": "c2ln", "summary": [{"type": "text", "text": "t"}]},
            {"type": "function_call", "id": "call_1", "name": "f", "arguments": {"x": 1}},
        ],
        2,
    ),
    ([{"type": "hologram", "beam": [1, 2], "extra": {"k": "v"}}], 1),
    ([], 0),
    (None, 0),
]


@pytest.mark.parametrize(("response_steps", "kept"), RESPONSES)
@pytest.mark.parametrize(
    "decision",
    [
        Decision("server", Reason.CHAINED, True, "int_1"),
        Decision("stateless", Reason.STATELESS_MODE, False, None),
        Decision("stateless", Reason.CHAIN_BROKEN, True, None),
    ],
)
def test_commit(response_steps: list[dict[str, Any]] | None, kept: int, decision: Decision) -> None:
    rec = record(last_turn_hash="abc")
    commit = _planner.commit_turn(
        rec,
        decision,
        new_steps=[HI],
        interaction_id="int_2",
        status="completed",
        response_steps=response_steps,
        usage={"total_tokens": 5},
        now=NOW,
        idempotency_key="k1",
    )
    assert commit.expected_version == rec.version
    assert commit.record.version == rec.version + 1
    assert commit.turn.seq == 3 == commit.record.turn_count
    assert [s.seq for s in commit.steps] == list(range(5, 5 + 1 + kept))
    assert commit.steps[0].payload == HI
    assert all(s.payload["type"] != "user_input" for s in commit.steps[1:])
    if response_steps:
        assert [s.payload for s in commit.steps[1:]] == [
            s for s in response_steps if s["type"] != "user_input"
        ]
    assert commit.turn.mode_used == decision.mode_used and commit.turn.reason == decision.reason
    assert commit.turn.previous_interaction_id == decision.previous_interaction_id
    if decision.store:
        assert commit.record.head_interaction_id == "int_2"
        assert commit.record.head_created_at == NOW
    else:
        assert commit.record.head_interaction_id is None
    assert commit.turn.audit_hash == _audit.turn_hash("abc", commit.turn, commit.steps)
    assert commit.record.last_turn_hash == commit.turn.audit_hash


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hello", [{"type": "user_input", "content": [{"type": "text", "text": "hello"}]}]),
        (
            {"type": "image", "uri": "gs://b/cat.png", "mime_type": "image/png"},
            [
                {
                    "type": "user_input",
                    "content": [
                        {"type": "image", "uri": "gs://b/cat.png", "mime_type": "image/png"}
                    ],
                }
            ],
        ),
        (
            ["look", {"type": "document", "data": "JVBERi0=", "mime_type": "application/pdf"}],
            [
                {
                    "type": "user_input",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "document", "data": "JVBERi0=", "mime_type": "application/pdf"},
                    ],
                }
            ],
        ),
        (
            [{"type": "function_result", "call_id": "c", "name": "f", "result": {"t": 21}}],
            [{"type": "function_result", "call_id": "c", "name": "f", "result": {"t": 21}}],
        ),
    ],
)
def test_normalize_input(value: Any, expected: list[dict[str, Any]]) -> None:
    assert _planner.normalize_input(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        [],
        42,
        None,
        {"text": "no type"},
        {"type": "hologram"},
        {"type": "model_output", "content": []},
        {"type": "function_result", "result": 1},
        [{"type": "text", "text": "a"}, {"type": "function_result", "call_id": "c", "result": 1}],
        {"type": "text", "text": float("nan")},
        {"type": "text", "text": "x", "extra": {1, 2}},
        {"type": "user_input"},
    ],
)
def test_normalize_input_rejects(value: Any) -> None:
    with pytest.raises(ValidationError):
        _planner.normalize_input(value)


def test_function_results_must_answer_previous_calls() -> None:
    last = [
        {"type": "thought", "signature": "s"},
        {"type": "function_call", "id": "call_1", "name": "f", "arguments": {}},
    ]
    ok = [{"type": "function_result", "call_id": "call_1", "result": {}}]
    _planner.check_function_results(ok, last)
    bad = [{"type": "function_result", "call_id": "call_9", "result": {}}]
    with pytest.raises(ValidationError, match="call_9"):
        _planner.check_function_results(bad, last)


@pytest.mark.parametrize(
    "config",
    [{"store": True}, {"previous_interaction_id": "x"}, {"system_instruction": 3}, {"tools": {}}],
)
def test_config_rejects(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _planner.check_config(config)


def test_fork_record_chains_only_from_stored_turn() -> None:
    rec = record()
    stored = TurnRecord(
        conversation_id="c1",
        seq=1,
        interaction_id="int_1",
        model="m1",
        mode_used="server",
        reason=Reason.FIRST_TURN,
        status="completed",
        created_at=NOW,
        audit_hash="h1",
    )
    fork = _planner.fork_record(rec, [stored], 2, new_id="f1", now=NOW)
    assert (fork.head_interaction_id, fork.turn_count, fork.step_count) == ("int_1", 1, 2)
    assert fork.metadata["forked_from"] == {"conversation_id": "c1", "turn": 1}
    unstored = stored.model_copy(update={"mode_used": "stateless", "reason": Reason.STATELESS_MODE})
    fork = _planner.fork_record(rec, [unstored], 2, new_id="f2", now=NOW)
    assert fork.head_interaction_id is None
    assert decide(fork, policy=Policy(), now=NOW).reason == Reason.NO_SERVER_HEAD


def test_a_compaction_without_a_chain_reseeds_from_the_view() -> None:
    record = ConversationRecord(
        id="c", tenant="t", model="m", mode="server", turn_count=3, step_count=6, context_epoch=1
    )
    decision = decide(record, policy=Policy(), now=NOW)
    assert decision == Decision("stateless", Reason.COMPACTED, True, None)
    stateless = record.model_copy(update={"mode": "stateless"})
    assert decide(stateless, policy=Policy(), now=NOW).reason == Reason.STATELESS_MODE

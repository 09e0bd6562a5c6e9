"""The pure store rules: cursors, the newest-N boundary, input checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convostore import CorruptRecordError, ValidationError
from convostore._core import store_rules as rules
from convostore.models import StoredStep
from convostore.testing import make_commit, make_record, user_step

ids = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,60}", fullmatch=True)
moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(moments, ids)
def test_cursor_round_trips(created_at: datetime, conversation_id: str) -> None:
    cursor = rules.encode_cursor(created_at, conversation_id)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert rules.decode_cursor(cursor) == (created_at, conversation_id)


def test_cursor_keeps_the_instant_of_any_offset() -> None:
    local = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5)))
    decoded, _ = rules.decode_cursor(rules.encode_cursor(local, "c1"))
    assert decoded == local and decoded.tzinfo == UTC


@pytest.mark.parametrize(
    "cursor", ["", "a", "!!!!", "MTIzNA", "YWJjfGRlZg", "MTJ8", "MTJ8YSBi", "x" * 500, None, 7]
)
def test_garbage_cursors_are_rejected(cursor: object) -> None:
    with pytest.raises(ValidationError):
        rules.decode_cursor(cursor)  # type: ignore[arg-type]


def _brute_newest(sizes: list[int], statuses: list[str], newest: int) -> int:
    """The newest-N start by the contract's words, over the whole history."""
    total = sum(sizes)
    want = min(newest, total)
    if want <= 0:
        return total + 1
    starts = [sum(sizes[:i]) + 1 for i in range(len(sizes))]
    clean = [starts[i] for i in range(len(sizes)) if i == 0 or statuses[i - 1] != "requires_action"]
    return max([s for s in clean if total - s + 1 >= want], default=1)


turns = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from(["completed", "requires_action", "failed"])),
    min_size=1,
    max_size=12,
)


@given(turns, st.integers(0, 60), st.integers(1, 12))
def test_newest_start_matches_the_contract(
    history: list[tuple[int, str]], newest: int, tail: int
) -> None:
    sizes = [size for size, _ in history]
    statuses = [status for _, status in history]
    spans = [rules.TurnSpan(sum(sizes[:i]) + 1, status) for i, status in enumerate(statuses)]
    total = sum(sizes)
    expected = _brute_newest(sizes, statuses, newest)
    assert rules.newest_start(spans, step_count=total, newest=newest, complete=True) == expected
    # from a partial tail: the same answer, or a request for more turns
    partial = spans[-tail:]
    complete = len(partial) == len(spans)
    got = rules.newest_start(partial, step_count=total, newest=newest, complete=complete)
    assert got is None or got == expected
    if complete:
        assert got == expected


def test_newest_start_keeps_function_call_with_result() -> None:
    spans = [
        rules.TurnSpan(1, "completed"),
        rules.TurnSpan(3, "requires_action"),
        rules.TurnSpan(5, "completed"),
    ]
    assert rules.newest_start(spans, step_count=6, newest=2, complete=True) == 3
    assert rules.newest_start(spans[1:], step_count=6, newest=2, complete=False) is None
    assert rules.newest_start(spans, step_count=6, newest=0, complete=True) == 7


def test_check_commit_accepts_a_good_commit_and_rejects_broken_ones() -> None:
    record = make_record()
    good = make_commit(record, [user_step("a")])
    assert rules.check_commit(good) is good
    step = good.steps[0]
    broken = [
        good.model_copy(update={"turn": good.turn.model_copy(update={"seq": 2})}),
        good.model_copy(update={"steps": [step.model_copy(update={"seq": 2})]}),
        good.model_copy(update={"steps": [step.model_copy(update={"turn_seq": 0})]}),
        good.model_copy(update={"steps": [step.model_copy(update={"type": "model_output"})]}),
        good.model_copy(update={"record": good.record.model_copy(update={"version": 0})}),
        good.model_copy(update={"record": good.record.model_copy(update={"tenant": "a b"})}),
        good.model_copy(update={"turn": good.turn.model_copy(update={"idempotency_key": "k\n"})}),
        good.model_copy(
            update={"turn": good.turn.model_copy(update={"usage": {"x": float("nan")}})}
        ),
        "not a commit",
    ]
    for commit in broken:
        with pytest.raises(ValidationError):
            rules.check_commit(commit)


def test_check_new_conversation_requires_consistent_history() -> None:
    record = make_record(turn_count=1, step_count=1)
    turn = make_commit(make_record(id=record.id, tenant=record.tenant), []).turn
    step = StoredStep(
        conversation_id=record.id, seq=1, turn_seq=1, type="user_input", payload=user_step("x")
    )
    assert rules.check_new_conversation(record, [turn], [step]) is record
    with pytest.raises(ValidationError):
        rules.check_new_conversation(record, [turn], [])
    with pytest.raises(ValidationError):
        rules.check_new_conversation(record, [turn], [step.model_copy(update={"turn_seq": 2})])
    other = step.model_copy(update={"conversation_id": "someone-else"})
    with pytest.raises(ValidationError):
        rules.check_new_conversation(record, [turn], [other])
    two = record.model_copy(update={"turn_count": 2, "step_count": 1})
    keyed = turn.model_copy(update={"idempotency_key": "k"})
    with pytest.raises(ValidationError):
        rules.check_new_conversation(two, [keyed, keyed.model_copy(update={"seq": 2})], [step])


def test_check_scope_and_list_arguments() -> None:
    rules.check_scope("c-1", "acme")
    for bad in ("", "a b", "x%", 5, None):
        with pytest.raises(ValidationError):
            rules.check_scope(bad, "acme")
        with pytest.raises(ValidationError):
            rules.check_scope("c-1", bad)
    rules.check_list(None, None, 1, None)
    for limit in (0, 1001, True, 2.0):
        with pytest.raises(ValidationError):
            rules.check_list("acme", None, limit, None)


def test_purge_rule() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    expiring = make_record(expires_at=now)
    assert rules.is_purgeable(expiring, now=now, older_than=None)
    assert not rules.is_purgeable(expiring, now=now - timedelta(seconds=1), older_than=None)
    old = make_record(updated_at=now - timedelta(days=2))
    assert not rules.is_purgeable(old, now=now, older_than=None)
    assert rules.is_purgeable(old, now=now, older_than=now - timedelta(days=1))
    assert not rules.is_purgeable(old, now=now, older_than=now - timedelta(days=3))
    with pytest.raises(ValidationError):
        rules.check_purge(datetime(2026, 1, 1), None, None)


def test_stored_json_round_trips_and_corruption_is_reported() -> None:
    value = {"type": "x", "text": "é🐈\u0000", "f": 1.0, "i": 1}
    text = rules.dumps(value)
    assert "é🐈" in text
    assert rules.loads(text) == value and isinstance(rules.loads(text)["f"], float)
    with pytest.raises(CorruptRecordError):
        rules.loads(b"{broken")

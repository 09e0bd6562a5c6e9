"""The store conformance suite: every contract test, runnable against any backend.

Subclass :class:`StoreConformance` in a test module and provide a ``store_factory`` fixture
(a callable returning a new, open, sync ``Store`` on the backend under test)::

    import pytest
    import convostore as cs
    from convostore.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store_factory(self):
            return lambda: cs.open_store("sqlite:///" + "/tmp/conformance.db")

:class:`AsyncStoreConformance` is the asyncio subset; provide ``async_store_factory`` (a
callable returning a new ``AsyncStore``; it is called inside the running event loop). No
pytest plugin is needed: each async test drives itself with ``asyncio.run``.

Every test uses fresh tenant and conversation ids, so the tests can share one database; use
a database of their own all the same (``purge`` tests delete expired conversations of the
tenants they create only, but list across all tenants). A backend with a known divergence
lists it in ``known_divergences`` (test name -> reason): those tests become strict xfails.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest

from ._async.store import AsyncStore
from ._exceptions import (
    ConcurrentTurnError,
    ConversationExists,
    ConversationNotFound,
    LeaseLost,
    TurnInFlight,
    ValidationError,
)
from ._sync.store import Store
from .models import (
    CompactionRecord,
    ConversationRecord,
    JSONObject,
    OutboxItem,
    PendingTurnRecord,
    Reason,
    StoredStep,
    TurnCommit,
    TurnRecord,
    utcnow,
)

__all__ = [
    "AsyncStoreConformance",
    "StoreConformance",
    "add_turn",
    "make_commit",
    "make_outbox_item",
    "make_pending",
    "make_record",
    "model_step",
    "new_id",
    "user_step",
]


def new_id(kind: str = "c") -> str:
    """A fresh identifier, unique across test runs."""
    return f"{kind}-{uuid.uuid4().hex}"


def make_record(
    *,
    tenant: str | None = None,
    user: str | None = None,
    created_at: datetime | None = None,
    **fields: Any,
) -> ConversationRecord:
    """A new conversation record with fresh ids (``fields`` override anything)."""
    now = created_at or utcnow()
    values: dict[str, Any] = {
        "id": new_id(),
        "tenant": tenant or new_id("t"),
        "user": user,
        "model": "gemini-3-flash-preview",
        "config": {"system_instruction": "You are a cat. 🐈", "generation_config": {"t": 0.5}},
        "metadata": {"label": "conformance", "n": 1},
        "created_at": now,
        "updated_at": now,
    }
    values.update(fields)
    return ConversationRecord(**values)


def make_commit(
    record: ConversationRecord,
    payloads: Sequence[JSONObject],
    *,
    status: str = "completed",
    idempotency_key: str | None = None,
    expected_version: int | None = None,
) -> TurnCommit:
    """The commit of one turn with ``payloads`` as steps, planned against ``record``."""
    seq = record.turn_count + 1
    first = record.step_count + 1
    now = utcnow()
    interaction_id = f"v1_{uuid.uuid4().hex}"
    version = record.version if expected_version is None else expected_version
    after = record.model_copy(
        update={
            "version": version + 1,
            "turn_count": seq,
            "step_count": record.step_count + len(payloads),
            "head_interaction_id": interaction_id,
            "head_created_at": now,
            "head_model": record.model,
            "last_turn_hash": uuid.uuid4().hex,
            "updated_at": now,
        }
    )
    turn = TurnRecord(
        conversation_id=record.id,
        seq=seq,
        interaction_id=interaction_id,
        previous_interaction_id=record.head_interaction_id,
        model=record.model,
        mode_used="server",
        reason=Reason.FIRST_TURN if seq == 1 else Reason.CHAINED,
        status=status,
        usage={"total_tokens": 7 * seq},
        idempotency_key=idempotency_key,
        created_at=now,
        audit_hash=after.last_turn_hash,
        context_epoch=record.context_epoch,
    )
    steps = [
        StoredStep(
            conversation_id=record.id,
            seq=first + offset,
            turn_seq=seq,
            type=payload["type"],
            payload=payload,
        )
        for offset, payload in enumerate(payloads)
    ]
    return TurnCommit(record=after, turn=turn, steps=steps)


def make_pending(record: ConversationRecord, **fields: Any) -> PendingTurnRecord:
    """A turn in flight planned against ``record`` (``fields`` override anything)."""
    now = utcnow()
    values: dict[str, Any] = {
        "conversation_id": record.id,
        "tenant": record.tenant,
        "seq": record.turn_count + 1,
        "planned_version": record.version,
        "idempotency_key": new_id("k"),
        "mode_used": "server",
        "reason": Reason.CHAINED if record.turn_count else Reason.FIRST_TURN,
        "model": record.model,
        "store": True,
        "previous_interaction_id": record.head_interaction_id,
        "input_steps": [user_step("Grüße, 世界! 🎉 ünïcödé"), {"type": "x", "n": [1, 2.5, None]}],
        "config": {"system_instruction": "Be brief. 🐈", "tools": [{"type": "t"}]},
        "lease_owner": "worker-1",
        "lease_expires_at": now + timedelta(minutes=5),
        "created_at": now,
        "updated_at": now,
    }
    values.update(fields)
    return PendingTurnRecord(**values)


def make_outbox_item(tenant: str | None = None, **fields: Any) -> OutboxItem:
    """An outbox item with fresh ids (``fields`` override anything)."""
    values: dict[str, Any] = {
        "id": new_id("o"),
        "tenant": tenant or new_id("t"),
        "target": f"v1_{uuid.uuid4().hex}",
    }
    values.update(fields)
    return OutboxItem(**values)


def user_step(text: str) -> JSONObject:
    return {"type": "user_input", "content": [{"type": "text", "text": text}]}


def model_step(text: str) -> JSONObject:
    return {"type": "model_output", "content": [{"type": "text", "text": text}]}


def add_turn(
    store: Store,
    record: ConversationRecord,
    payloads: Sequence[JSONObject] | None = None,
    **options: Any,
) -> ConversationRecord:
    """Append one turn to ``record`` and return the record as it stands after it."""
    commit = make_commit(record, payloads or [user_step("hi"), model_step("hello")], **options)
    result = store.append_turn(commit)
    assert result.created
    return commit.record


VERBATIM_STEPS: list[JSONObject] = [
    user_step("Grüße, 世界! 🎉 café"),
    {"type": "thought", "signature": "c2lnbmF0dXJl", "summary": [], "x-extra": {"a": [1, 2.5]}},
    {"type": "function_call", "id": "call_1", "name": "lookup", "arguments": {"q": "a\u0000b"}},
    {"type": "function_result", "call_id": "call_1", "result": {"ok": True, "v": None}},
    {"type": "brand_new_step", "nested": {"deep": [{"k": "🐈‍⬛"}]}, "float": 1.0, "int": 2},
    model_step('tab\there, quote " and backslash \\ and \u2028 line sep'),
    {"type": "model_output", "content": [], "big": 12345678901234567, "neg": -0.0001},
]

BAD_IDS: list[Any] = [
    "",
    "x" * 201,
    'quo"te',
    "it's",
    "per%cent",
    "star*",
    "what?",
    "{brace}",
    "new\nline",
    "x'; DROP TABLE conversations; --",
    "a b",
    "../etc",
    123,
    None,
    b"bytes",
]


def _ids(values: Sequence[Any]) -> list[str]:
    return [repr(value)[:30] for value in values]


class _Divergences:
    known_divergences: ClassVar[dict[str, str]] = {}
    """Test name -> reason: tests this backend is known to fail (run as strict xfails).
    ``"test_name[param]"`` limits an entry to the runs whose fixture parameter is ``param``."""

    @pytest.fixture(autouse=True)
    def _known_divergence(self, request: pytest.FixtureRequest) -> None:
        name = getattr(request.node, "originalname", "")
        reason = self.known_divergences.get(name)
        if reason is None:
            # "test_name[param]" names one parametrised backend only
            callspec = getattr(request.node, "callspec", None)
            for param in getattr(callspec, "params", {}).values():
                reason = reason or self.known_divergences.get(f"{name}[{param}]")
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


class StoreConformance(_Divergences):
    """The contract tests for a sync ``Store``. Subclasses provide ``store_factory``."""

    @pytest.fixture
    def store(self, store_factory: Callable[[], Store]) -> Iterator[Store]:
        store = store_factory()
        try:
            yield store
        finally:
            store.close()

    # ------------------------------------------------------------- create / get

    def test_create_and_get(self, store: Store) -> None:
        record = make_record(user="u1", expires_at=utcnow() + timedelta(days=3))
        created = store.create_conversation(record)
        assert created == record
        assert store.get_conversation(record.id, tenant=record.tenant) == record
        assert isinstance(store, Store)

    def test_create_duplicate_id_raises_and_keeps_original(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record()))
        for tenant in (record.tenant, new_id("t")):
            clash = make_record(id=record.id, tenant=tenant, model="other")
            with pytest.raises(ConversationExists):
                store.create_conversation(clash)
        assert store.get_conversation(record.id, tenant=record.tenant) == record
        assert len(store.load_steps(record.id, tenant=record.tenant)) == 2

    def test_create_with_history(self, store: Store) -> None:
        source = store.create_conversation(make_record())
        source = add_turn(store, source, [user_step("q1"), model_step("a1")], idempotency_key="k1")
        source = add_turn(store, source, VERBATIM_STEPS)
        turns = store.load_turns(source.id, tenant=source.tenant)
        steps = store.load_steps(source.id, tenant=source.tenant)
        fork = make_record(
            tenant=source.tenant, turn_count=len(turns), step_count=len(steps), version=0
        )
        fork_turns = [t.model_copy(update={"conversation_id": fork.id}) for t in turns]
        fork_steps = [s.model_copy(update={"conversation_id": fork.id}) for s in steps]
        store.create_conversation(fork, turns=fork_turns, steps=fork_steps)
        assert store.load_turns(fork.id, tenant=fork.tenant) == fork_turns
        loaded = store.load_steps(fork.id, tenant=fork.tenant)
        assert [s.payload for s in loaded] == [s.payload for s in steps]
        assert [(s.seq, s.turn_seq) for s in loaded] == [(s.seq, s.turn_seq) for s in steps]
        found = store.find_turn(fork.id, tenant=fork.tenant, idempotency_key="k1")
        assert found is not None and found.seq == 1
        # the source is untouched, and the fork continues on its own
        add_turn(store, store.get_conversation(fork.id, tenant=fork.tenant))
        assert store.get_conversation(source.id, tenant=source.tenant) == source

    def test_create_with_inconsistent_history_writes_nothing(self, store: Store) -> None:
        record = make_record(turn_count=1, step_count=2)
        turn = make_commit(make_record(id=record.id, tenant=record.tenant), [user_step("x")]).turn
        step = StoredStep(
            conversation_id=record.id, seq=1, turn_seq=1, type="user_input", payload=user_step("x")
        )
        gap = step.model_copy(update={"seq": 3})
        wrong_turn = step.model_copy(update={"seq": 2, "turn_seq": 2})
        for turns, steps in (
            ([turn], [step]),
            ([], [step, step]),
            ([turn], [step, gap]),
            ([turn], [step, wrong_turn]),
            ([turn.model_copy(update={"seq": 2})], [step, step.model_copy(update={"seq": 2})]),
        ):
            with pytest.raises(ValidationError):
                store.create_conversation(record, turns=turns, steps=steps)
        with pytest.raises(ConversationNotFound):
            store.get_conversation(record.id, tenant=record.tenant)

    # ------------------------------------------------------------- steps

    def test_steps_round_trip_verbatim(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        add_turn(store, record, VERBATIM_STEPS)
        steps = store.load_steps(record.id, tenant=record.tenant)
        assert [s.payload for s in steps] == VERBATIM_STEPS
        assert [s.type for s in steps] == [p["type"] for p in VERBATIM_STEPS]
        assert isinstance(steps[4].payload["float"], float)
        assert isinstance(steps[4].payload["int"], int)
        assert steps[6].payload["big"] == 12345678901234567
        # what a caller gets back, or handed in, is its own copy
        steps[0].payload["content"].append("mutated")
        handed = copy.deepcopy(VERBATIM_STEPS[0])
        commit = make_commit(store.get_conversation(record.id, tenant=record.tenant), [handed])
        store.append_turn(commit)
        handed["content"].append("mutated after the append")
        assert (
            store.load_steps(record.id, tenant=record.tenant, turn=2)[0].payload
            == (VERBATIM_STEPS[0])
        )
        again = store.load_steps(record.id, tenant=record.tenant)
        assert again[0].payload == VERBATIM_STEPS[0]

    def test_large_step_round_trip(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        big = model_step("é" * 250_000 + "x" * 500_000)  # about 1 MB of UTF-8
        add_turn(store, record, [user_step("long?"), big])
        steps = store.load_steps(record.id, tenant=record.tenant)
        assert steps[1].payload == big

    def test_order_and_filters(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        assert store.load_steps(record.id, tenant=record.tenant) == []
        assert store.load_steps(record.id, tenant=record.tenant, newest=5) == []
        assert store.load_turns(record.id, tenant=record.tenant) == []
        for n in range(1, 5):
            record = add_turn(store, record, [user_step(f"q{n}"), model_step(f"a{n}")])
        steps = store.load_steps(record.id, tenant=record.tenant)
        assert [s.seq for s in steps] == list(range(1, 9))
        assert [s.turn_seq for s in steps] == [1, 1, 2, 2, 3, 3, 4, 4]
        assert [s.payload["content"][0]["text"] for s in steps[:3]] == ["q1", "a1", "q2"]
        assert all(s.conversation_id == record.id for s in steps)
        after = store.load_steps(record.id, tenant=record.tenant, after_seq=5)
        assert [s.seq for s in after] == [6, 7, 8]
        third = store.load_steps(record.id, tenant=record.tenant, turn=3)
        assert [s.seq for s in third] == [5, 6]
        assert store.load_steps(record.id, tenant=record.tenant, turn=9) == []
        assert store.load_steps(record.id, tenant=record.tenant, after_seq=8) == []
        turns = store.load_turns(record.id, tenant=record.tenant)
        assert [t.seq for t in turns] == [1, 2, 3, 4]
        page = store.load_turns(record.id, tenant=record.tenant, after_seq=1, limit=2)
        assert [t.seq for t in page] == [2, 3]
        assert store.load_turns(record.id, tenant=record.tenant, limit=0) == []
        both = store.load_steps(record.id, tenant=record.tenant, newest=3, after_seq=6)
        assert [s.seq for s in both] == [7, 8]
        # filters intersect
        both = store.load_steps(record.id, tenant=record.tenant, newest=3, turn=3)
        assert [s.seq for s in both] == [5, 6]
        assert store.load_steps(record.id, tenant=record.tenant, newest=2, turn=3) == []

    def test_append_writes_listed_fields(self, store: Store) -> None:
        record = store.create_conversation(make_record(metadata={"keep": "me"}))
        commit = make_commit(record, [user_step("q"), model_step("a")])
        result = store.append_turn(commit)
        assert result.created and result.turn == commit.turn
        assert store.get_conversation(record.id, tenant=record.tenant) == commit.record
        assert store.load_turns(record.id, tenant=record.tenant) == [commit.turn]

    def test_newest_cuts_at_turn_boundaries(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        record = add_turn(store, record, [user_step("q1"), model_step("a1")])
        call = {"type": "function_call", "id": "c1", "name": "f", "arguments": {}}
        record = add_turn(store, record, [user_step("q2"), call], status="requires_action")
        result = {"type": "function_result", "call_id": "c1", "result": 1}
        record = add_turn(store, record, [result, model_step("a2")])
        record = add_turn(store, record, [user_step("q3"), model_step("a3"), model_step("b3")])

        def seqs(n: int) -> list[int]:
            return [s.seq for s in store.load_steps(record.id, tenant=record.tenant, newest=n)]

        assert seqs(1) == [7, 8, 9]
        assert seqs(3) == [7, 8, 9]
        # steps 5-6 answer the function_call of turn 2: never start between them
        assert seqs(4) == [3, 4, 5, 6, 7, 8, 9]
        assert seqs(5) == [3, 4, 5, 6, 7, 8, 9]
        assert seqs(8) == list(range(1, 10))
        assert seqs(100) == list(range(1, 10))

    # ------------------------------------------------------------- concurrency

    def test_stale_version_conflicts_and_writes_nothing(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        stale = make_commit(record, [user_step("late")])
        current = add_turn(store, record)
        with pytest.raises(ConcurrentTurnError) as info:
            store.append_turn(stale)
        assert info.value.expected_version == 0
        assert store.get_conversation(record.id, tenant=record.tenant) == current
        assert len(store.load_steps(record.id, tenant=record.tenant)) == 2
        assert len(store.load_turns(record.id, tenant=record.tenant)) == 1

    def test_concurrent_appends_one_wins(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        record = add_turn(store, record)
        writers = 4
        commits = [make_commit(record, [user_step(f"w{n}")]) for n in range(writers)]
        barrier = threading.Barrier(writers)
        outcomes: list[object] = []

        def write(commit: TurnCommit) -> None:
            barrier.wait()
            try:
                outcomes.append(store.append_turn(commit))
            except Exception as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=write, args=(c,)) for c in commits]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wins = [o for o in outcomes if not isinstance(o, Exception)]
        losses = [o for o in outcomes if isinstance(o, Exception)]
        assert len(wins) == 1, outcomes
        assert all(isinstance(o, ConcurrentTurnError) for o in losses), losses
        stored = store.get_conversation(record.id, tenant=record.tenant)
        assert (stored.version, stored.turn_count, stored.step_count) == (2, 2, 3)
        assert len(store.load_steps(record.id, tenant=record.tenant)) == 3

    def test_first_turn_is_checked_too(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        first, second = make_commit(record, [user_step("a")]), make_commit(record, [user_step("b")])
        store.append_turn(first)
        with pytest.raises(ConcurrentTurnError):
            store.append_turn(second)

    # ------------------------------------------------------------- idempotency

    def test_idempotency_key_returns_stored_turn(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        commit = make_commit(record, [user_step("once")], idempotency_key="key-1")
        assert store.append_turn(commit).created
        after = store.get_conversation(record.id, tenant=record.tenant)
        for retry in (
            commit,
            make_commit(record, [user_step("twice")], idempotency_key="key-1"),  # stale version
            make_commit(after, [user_step("thrice")], idempotency_key="key-1"),
        ):
            again = store.append_turn(retry)
            assert again.created is False
            assert again.turn == commit.turn
        assert store.get_conversation(record.id, tenant=record.tenant) == after
        steps = store.load_steps(record.id, tenant=record.tenant)
        assert [s.payload for s in steps] == [user_step("once")]
        found = store.find_turn(record.id, tenant=record.tenant, idempotency_key="key-1")
        assert found == commit.turn
        assert store.find_turn(record.id, tenant=record.tenant, idempotency_key="nope") is None
        # keys are per conversation
        other = store.create_conversation(make_record(tenant=record.tenant))
        reused = make_commit(other, [user_step("x")], idempotency_key="key-1")
        assert store.append_turn(reused).created

    def test_find_turn_rejects_bad_keys(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record()), idempotency_key="k")
        for bad_key in ("", 5, None, "x" * 201, "line\nbreak"):
            with pytest.raises(ValidationError):
                store.find_turn(record.id, tenant=record.tenant, idempotency_key=bad_key)  # type: ignore[arg-type]

    # ------------------------------------------------------------- missing / tenants

    def test_missing_conversation(self, store: Store) -> None:
        missing = make_record()
        self._assert_invisible(store, missing)

    def test_tenant_isolation_on_every_operation(self, store: Store) -> None:
        record = store.create_conversation(make_record(user="u1"))
        record = add_turn(store, record, idempotency_key="iso")
        intruder = record.model_copy(update={"tenant": new_id("t")})
        self._assert_invisible(store, intruder)
        assert store.list_conversations(tenant=intruder.tenant).items == []
        assert store.list_conversations(tenant=intruder.tenant, user="u1").items == []
        assert store.purge(tenant=intruder.tenant, older_than=utcnow() + timedelta(days=1)) == []
        assert store.get_conversation(record.id, tenant=record.tenant) == record
        assert len(store.load_steps(record.id, tenant=record.tenant)) == 2

    def _assert_invisible(self, store: Store, record: ConversationRecord) -> None:
        cid, tenant = record.id, record.tenant
        with pytest.raises(ConversationNotFound):
            store.get_conversation(cid, tenant=tenant)
        with pytest.raises(ConversationNotFound):
            store.load_steps(cid, tenant=tenant)
        with pytest.raises(ConversationNotFound):
            store.load_steps(cid, tenant=tenant, newest=3)
        with pytest.raises(ConversationNotFound):
            store.load_turns(cid, tenant=tenant)
        with pytest.raises(ConversationNotFound):
            store.find_turn(cid, tenant=tenant, idempotency_key="iso")
        with pytest.raises(ConversationNotFound):
            store.append_turn(make_commit(record, [user_step("x")], idempotency_key="iso"))
        with pytest.raises(ConversationNotFound):
            store.update_conversation(record.model_copy(update={"version": record.version + 1}))
        assert store.delete_conversation(cid, tenant=tenant) is False

    # ------------------------------------------------------------- listing

    def test_list_newest_first_with_user_filter(self, store: Store) -> None:
        tenant = new_id("t")
        base = utcnow()
        made = [
            store.create_conversation(
                make_record(
                    tenant=tenant,
                    user="alice" if n % 2 else "bob",
                    created_at=base + timedelta(seconds=n),
                )
            )
            for n in range(5)
        ]
        page = store.list_conversations(tenant=tenant)
        assert [r.id for r in page.items] == [r.id for r in reversed(made)]
        assert page.next_cursor is None
        assert page.items[0] == made[-1]
        alice = store.list_conversations(tenant=tenant, user="alice")
        assert [r.id for r in alice.items] == [made[3].id, made[1].id]

    def test_list_ties_broken_by_id(self, store: Store) -> None:
        tenant = new_id("t")
        stamp = utcnow()
        made = [
            store.create_conversation(make_record(tenant=tenant, created_at=stamp)) for _ in "abc"
        ]
        ids = sorted((r.id for r in made), reverse=True)
        first = store.list_conversations(tenant=tenant, limit=2)
        assert [r.id for r in first.items] == ids[:2]
        assert first.next_cursor is not None
        rest = store.list_conversations(tenant=tenant, limit=2, cursor=first.next_cursor)
        assert [r.id for r in rest.items] == ids[2:]
        assert rest.next_cursor is None

    def test_list_pages_stay_stable_while_conversations_arrive(self, store: Store) -> None:
        tenant = new_id("t")
        base = utcnow()
        made = [
            store.create_conversation(
                make_record(tenant=tenant, created_at=base + timedelta(seconds=n))
            )
            for n in range(7)
        ]
        expected = [r.id for r in reversed(made)]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = store.list_conversations(tenant=tenant, limit=3, cursor=cursor)
            seen.extend(r.id for r in page.items)
            pages += 1
            # a newer conversation arrives between page fetches
            store.create_conversation(
                make_record(tenant=tenant, created_at=base + timedelta(minutes=pages))
            )
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == expected
        assert pages == 3

    def test_list_all_tenants(self, store: Store) -> None:
        # Later than anything any other test writes, and later on every call, so that the
        # first page of a listing across tenants holds these two only, even in a shared
        # database (whose other records this store may not be able to read).
        stamp = datetime(9000, 1, 1, tzinfo=UTC) + timedelta(microseconds=time.time_ns() // 100)
        user = new_id("u")
        first = store.create_conversation(make_record(created_at=stamp, user=user))
        second = store.create_conversation(
            make_record(created_at=stamp + timedelta(microseconds=1), user=user)
        )
        wanted = {first.id, second.id}
        order: list[str] = []
        cursor: str | None = None
        while wanted - set(order):
            page = store.list_conversations(tenant=None, limit=2, cursor=cursor)
            order.extend(r.id for r in page.items if r.id in wanted)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert order == [second.id, first.id]
        # one user across every tenant
        page = store.list_conversations(tenant=None, user=user)
        assert [r.id for r in page.items] == [second.id, first.id]

    def test_list_rejects_bad_arguments(self, store: Store) -> None:
        for cursor in ("garbage", "!!!", "", "eyJhIjoxfQ"):
            with pytest.raises(ValidationError):
                store.list_conversations(tenant=new_id("t"), cursor=cursor)
        for limit in (0, -1, True, "5"):
            with pytest.raises(ValidationError):
                store.list_conversations(tenant=new_id("t"), limit=limit)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.list_conversations(tenant=123)  # type: ignore[arg-type]

    # ------------------------------------------------------------- update / delete

    def test_update_writes_settings_not_counts(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record(user="u1")))
        later = utcnow() + timedelta(days=1)
        changed = record.model_copy(
            update={
                "version": record.version + 1,
                "mode": "stateless",
                "model": "gemini-3-pro-preview",
                "config": {"tools": [{"type": "google_search"}]},
                "metadata": {"title": "Über 🐈"},
                "expires_at": later,
                "head_interaction_id": None,
                "head_created_at": None,
                "head_model": None,
                "updated_at": later,
                # not written by update:
                "turn_count": 99,
                "step_count": 99,
                "last_turn_hash": "forged",
                "user": "someone-else",
                "created_at": later,
            }
        )
        store.update_conversation(changed)
        stored = store.get_conversation(record.id, tenant=record.tenant)
        expected = changed.model_copy(
            update={
                "turn_count": record.turn_count,
                "step_count": record.step_count,
                "last_turn_hash": record.last_turn_hash,
                "user": record.user,
                "created_at": record.created_at,
            }
        )
        assert stored == expected
        add_turn(store, stored)  # the counts still line up with the history

    def test_update_stale_version_conflicts(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        current = add_turn(store, record)
        stale = record.model_copy(update={"version": record.version + 1, "model": "x"})
        with pytest.raises(ConcurrentTurnError):
            store.update_conversation(stale)
        assert store.get_conversation(record.id, tenant=record.tenant) == current

    def test_delete_is_idempotent(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record(user="u1")))
        assert store.delete_conversation(record.id, tenant=record.tenant) is True
        self._assert_invisible(store, record)
        assert store.list_conversations(tenant=record.tenant).items == []
        assert store.list_conversations(tenant=record.tenant, user="u1").items == []
        # the id is free again
        store.create_conversation(make_record(id=record.id, tenant=record.tenant))
        assert store.load_steps(record.id, tenant=record.tenant) == []

    # ------------------------------------------------------------- purge

    def test_purge_by_expiry(self, store: Store) -> None:
        tenant = new_id("t")
        now = utcnow()
        gone = store.create_conversation(
            make_record(tenant=tenant, expires_at=now + timedelta(hours=1))
        )
        add_turn(store, gone)
        edge = store.create_conversation(
            make_record(tenant=tenant, expires_at=now + timedelta(hours=2))
        )
        kept = store.create_conversation(
            make_record(tenant=tenant, expires_at=now + timedelta(hours=3))
        )
        forever = store.create_conversation(make_record(tenant=tenant))
        moment = now + timedelta(hours=2)
        preview = store.purge(now=moment, tenant=tenant, dry_run=True)
        assert {r.id for r in preview} == {gone.id, edge.id}
        assert len(store.list_conversations(tenant=tenant).items) == 4
        everywhere = store.purge(now=moment, tenant=None, dry_run=True)
        assert {gone.id, edge.id} <= {r.id for r in everywhere}
        assert not {kept.id, forever.id} & {r.id for r in everywhere}
        purged = store.purge(now=moment, tenant=tenant)
        assert {r.id for r in purged} == {gone.id, edge.id}
        left = store.list_conversations(tenant=tenant).items
        assert {r.id for r in left} == {kept.id, forever.id}
        with pytest.raises(ConversationNotFound):
            store.load_steps(gone.id, tenant=tenant)

    def test_purge_older_than(self, store: Store) -> None:
        tenant, other = new_id("t"), new_id("t")
        old_day = utcnow() - timedelta(days=30)
        stale = store.create_conversation(
            make_record(tenant=tenant, created_at=old_day, updated_at=old_day)
        )
        neighbour = store.create_conversation(
            make_record(tenant=other, created_at=old_day, updated_at=old_day)
        )
        fresh = store.create_conversation(make_record(tenant=tenant))
        cutoff = utcnow() - timedelta(days=1)
        assert [r.id for r in store.purge(older_than=cutoff, tenant=tenant, dry_run=True)] == [
            stale.id
        ]
        assert store.get_conversation(stale.id, tenant=tenant) == stale
        assert [r.id for r in store.purge(older_than=cutoff, tenant=tenant)] == [stale.id]
        assert [r.id for r in store.list_conversations(tenant=tenant).items] == [fresh.id]
        assert store.get_conversation(neighbour.id, tenant=other) == neighbour
        # with older_than, what has expired by ``now`` goes too
        soon = utcnow() + timedelta(hours=1)
        expiring = store.create_conversation(make_record(tenant=tenant, expires_at=soon))
        purged = store.purge(now=soon, older_than=cutoff, tenant=tenant)
        assert [r.id for r in purged] == [expiring.id]
        assert [r.id for r in store.list_conversations(tenant=tenant).items] == [fresh.id]

    # ------------------------------------------------------------- bad input

    @pytest.mark.parametrize("bad", BAD_IDS, ids=_ids(BAD_IDS))
    def test_bad_ids_are_rejected(self, store: Store, bad: Any) -> None:
        good = store.create_conversation(make_record())
        tenant = good.tenant
        with pytest.raises(ValidationError):
            store.get_conversation(bad, tenant=tenant)
        with pytest.raises(ValidationError):
            store.get_conversation(good.id, tenant=bad)
        with pytest.raises(ValidationError):
            store.load_steps(bad, tenant=tenant)
        with pytest.raises(ValidationError):
            store.load_turns(good.id, tenant=bad)
        with pytest.raises(ValidationError):
            store.delete_conversation(bad, tenant=tenant)
        with pytest.raises(ValidationError):
            store.delete_conversation(good.id, tenant=bad)
        with pytest.raises(ValidationError):
            store.find_turn(good.id, tenant=bad, idempotency_key="k")
        if bad is not None:
            with pytest.raises(ValidationError):
                store.list_conversations(tenant=bad)
            with pytest.raises(ValidationError):
                store.list_conversations(tenant=tenant, user=bad)
            with pytest.raises(ValidationError):
                store.purge(tenant=bad, older_than=utcnow())
        for field in ("id", "tenant", "user"):
            if field == "user" and bad is None:
                continue
            forged = ConversationRecord.model_construct(
                **{**make_record(tenant=tenant).model_dump(), field: bad}
            )
            with pytest.raises(ValidationError):
                store.create_conversation(forged)
        assert [r.id for r in store.list_conversations(tenant=tenant).items] == [good.id]
        assert store.get_conversation(good.id, tenant=tenant) == good

    def test_bad_steps_are_rejected_before_writing(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record()))
        bad_payloads: list[Any] = [
            [1, 2],
            "text",
            None,
            {"no_type": 1},
            {"type": 5},
            {"type": "x", "v": float("nan")},
            {"type": "x", "v": float("inf")},
            {"type": "x", 1: "int key"},
            {"type": "x", "v": object()},
            {"type": "x", "v": "\ud800"},
        ]
        for payload in bad_payloads:
            good = make_commit(record, [user_step("ok")])
            step = StoredStep.model_construct(
                conversation_id=record.id,
                seq=record.step_count + 2,
                turn_seq=good.turn.seq,
                type=str(payload.get("type")) if isinstance(payload, dict) else "x",
                payload=payload,
            )
            commit = good.model_copy(
                update={
                    "steps": [*good.steps, step],
                    "record": good.record.model_copy(update={"step_count": record.step_count + 2}),
                }
            )
            with pytest.raises(ValidationError):
                store.append_turn(commit)
            fresh = make_record(turn_count=1, step_count=1)
            turn = make_commit(make_record(id=fresh.id, tenant=fresh.tenant), []).turn
            first = step.model_copy(update={"conversation_id": fresh.id, "seq": 1, "turn_seq": 1})
            with pytest.raises(ValidationError):
                store.create_conversation(fresh, turns=[turn], steps=[first])
            with pytest.raises(ConversationNotFound):
                store.get_conversation(fresh.id, tenant=fresh.tenant)
        assert store.get_conversation(record.id, tenant=record.tenant) == record
        assert len(store.load_steps(record.id, tenant=record.tenant)) == 2

    def test_inconsistent_commits_are_rejected(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record()))
        good = make_commit(record, [user_step("a"), model_step("b")])
        broken = [
            good.model_copy(update={"turn": good.turn.model_copy(update={"seq": 5})}),
            good.model_copy(update={"steps": list(reversed(good.steps))}),
            good.model_copy(
                update={"steps": [s.model_copy(update={"turn_seq": 1}) for s in good.steps]}
            ),
            good.model_copy(
                update={
                    "steps": [s.model_copy(update={"conversation_id": "other"}) for s in good.steps]
                }
            ),
            good.model_copy(update={"record": good.record.model_copy(update={"step_count": 1})}),
            good.model_copy(update={"record": good.record.model_copy(update={"version": 0})}),
            good.model_copy(
                update={"steps": [good.steps[0].model_copy(update={"type": "forged"})]}
            ),
            good.model_copy(update={"turn": good.turn.model_copy(update={"idempotency_key": ""})}),
        ]
        for commit in broken:
            with pytest.raises(ValidationError):
                store.append_turn(commit)
        assert store.get_conversation(record.id, tenant=record.tenant) == record
        assert len(store.load_steps(record.id, tenant=record.tenant)) == 2
        for kwargs in ({"after_seq": -1}, {"newest": -1}, {"turn": 0}, {"after_seq": "1"}):
            with pytest.raises(ValidationError):
                store.load_steps(record.id, tenant=record.tenant, **kwargs)
        store.append_turn(good)

    # ------------------------------------------------------------- turns in flight

    def test_begin_turn_writes_and_round_trips(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record()))
        assert store.get_pending(record.id, tenant=record.tenant) is None
        paris = timezone(timedelta(hours=2))
        pending = make_pending(
            record,
            idempotency_key="order #42 — ü 'quoted' | piped",
            state="continuing",
            background=True,
            input_steps=[*VERBATIM_STEPS[:2], VERBATIM_STEPS[4]],
            interaction_id="v1_hop2",
            hop_ids=["v1_hop1", "v1_hop2"],
            continuation_token="tok-ü",
            lease_expires_at=datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=paris),
            created_at=datetime(2030, 1, 2, 3, 4, 5, 654321, tzinfo=UTC),
        )
        store.begin_turn(pending)
        stored = store.get_pending(record.id, tenant=record.tenant)
        assert stored == pending
        assert stored is not None
        assert stored.lease_expires_at.utcoffset() is not None
        assert stored.created_at.tzinfo is not None
        assert isinstance(stored.input_steps[2]["float"], float)
        assert isinstance(stored.input_steps[2]["int"], int)
        assert stored.reason == pending.reason and stored.background is True
        # the conversation itself is untouched
        assert store.get_conversation(record.id, tenant=record.tenant) == record

    def test_begin_turn_checks_version_seq_and_scope(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record()))
        with pytest.raises(ConcurrentTurnError) as info:
            store.begin_turn(make_pending(record, planned_version=record.version - 1))
        assert info.value.actual_version == record.version
        with pytest.raises(ValidationError):
            store.begin_turn(make_pending(record, seq=record.turn_count + 2))
        assert store.get_pending(record.id, tenant=record.tenant) is None
        with pytest.raises(ConversationNotFound):
            store.begin_turn(make_pending(make_record()))
        intruder = record.model_copy(update={"tenant": new_id("t")})
        with pytest.raises(ConversationNotFound):
            store.begin_turn(make_pending(intruder))
        assert store.get_pending(record.id, tenant=record.tenant) is None

    def test_second_begin_raises_turn_in_flight(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        first = make_pending(record)
        store.begin_turn(first)
        for second in (
            make_pending(record, lease_owner="worker-2"),
            make_pending(record, planned_version=7),  # in flight is checked first
            first,
        ):
            with pytest.raises(TurnInFlight) as info:
                store.begin_turn(second)
            assert info.value.pending == first
            assert info.value.conversation_id == record.id
        assert store.get_pending(record.id, tenant=record.tenant) == first

    def test_concurrent_begins_one_wins(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        workers = 4
        barrier = threading.Barrier(workers)
        outcomes: list[object] = []

        def begin(pending: PendingTurnRecord) -> None:
            barrier.wait()
            try:
                store.begin_turn(pending)
                outcomes.append(pending)
            except Exception as exc:
                outcomes.append(exc)

        attempts = [make_pending(record, lease_owner=f"w{n}") for n in range(workers)]
        threads = [threading.Thread(target=begin, args=(p,)) for p in attempts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wins = [o for o in outcomes if isinstance(o, PendingTurnRecord)]
        assert len(wins) == 1, outcomes
        losses = [o for o in outcomes if not isinstance(o, PendingTurnRecord)]
        assert all(isinstance(o, TurnInFlight) and o.pending == wins[0] for o in losses), losses
        assert store.get_pending(record.id, tenant=record.tenant) == wins[0]

    def test_update_pending_writes_progress_only(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        pending = make_pending(record)
        store.begin_turn(pending)
        later = pending.updated_at + timedelta(seconds=3)
        progress = pending.model_copy(
            update={
                "state": "sent",
                "interaction_id": "v1_a",
                "hop_ids": ["v1_a"],
                "continuation_token": "c1",
                "lease_expires_at": later + timedelta(minutes=5),
                "updated_at": later,
                # not progress: never written by update_pending
                "seq": 99,
                "model": "other-model",
                "input_steps": [user_step("forged")],
                "created_at": later,
            }
        )
        store.update_pending(progress, owner="worker-1")
        stored = store.get_pending(record.id, tenant=record.tenant)
        expected = pending.model_copy(
            update={
                "state": "sent",
                "interaction_id": "v1_a",
                "hop_ids": ["v1_a"],
                "continuation_token": "c1",
                "lease_expires_at": later + timedelta(minutes=5),
                "updated_at": later,
            }
        )
        assert stored == expected
        # back to no token
        store.update_pending(
            expected.model_copy(update={"continuation_token": None}), owner="worker-1"
        )
        again = store.get_pending(record.id, tenant=record.tenant)
        assert again is not None and again.continuation_token is None

    def test_update_pending_by_another_owner_or_after_the_end_is_lease_lost(
        self, store: Store
    ) -> None:
        record = store.create_conversation(make_record())
        pending = make_pending(record)
        store.begin_turn(pending)
        sent = pending.model_copy(update={"state": "sent"})
        with pytest.raises(LeaseLost) as info:
            store.update_pending(sent, owner="worker-2")
        assert isinstance(info.value, ConcurrentTurnError)
        assert info.value.idempotency_key == pending.idempotency_key
        with pytest.raises(LeaseLost):
            store.update_pending(
                sent.model_copy(update={"idempotency_key": "other"}), owner="worker-1"
            )
        with pytest.raises(LeaseLost):
            store.update_pending(sent.model_copy(update={"tenant": new_id("t")}), owner="worker-1")
        assert store.get_pending(record.id, tenant=record.tenant) == pending
        # taken over by another worker
        expired = pending.lease_expires_at + timedelta(seconds=1)
        claimed = store.claim_pending(
            record.id,
            tenant=record.tenant,
            owner="worker-2",
            now=expired,
            lease_expires_at=expired + timedelta(minutes=5),
        )
        assert claimed is not None
        with pytest.raises(LeaseLost):
            store.update_pending(sent, owner="worker-1")
        # released
        assert store.release_pending(
            record.id, tenant=record.tenant, idempotency_key=pending.idempotency_key
        )
        with pytest.raises(LeaseLost):
            store.update_pending(sent, owner="worker-2")
        # committed
        second = make_pending(record)
        store.begin_turn(second)
        add_turn(store, record, idempotency_key=second.idempotency_key)
        with pytest.raises(LeaseLost):
            store.update_pending(second, owner="worker-1")

    def test_claim_pending(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        cid, tenant = record.id, record.tenant
        now = utcnow()
        assert (
            store.claim_pending(
                cid, tenant=tenant, owner="w2", now=now, lease_expires_at=now + timedelta(minutes=1)
            )
            is None
        )
        pending = make_pending(
            record, lease_owner="w1", lease_expires_at=now + timedelta(minutes=1)
        )
        store.begin_turn(pending)
        # another worker's live lease
        live = store.claim_pending(
            cid, tenant=tenant, owner="w2", now=now, lease_expires_at=now + timedelta(minutes=9)
        )
        assert live is None
        assert store.get_pending(cid, tenant=tenant) == pending
        # the holder renews its own
        renewed = store.claim_pending(
            cid, tenant=tenant, owner="w1", now=now, lease_expires_at=now + timedelta(minutes=2)
        )
        assert renewed == pending.model_copy(
            update={"lease_expires_at": now + timedelta(minutes=2)}
        )
        # expired: taken over
        later = now + timedelta(minutes=2)  # exactly at expiry counts as expired
        claimed = store.claim_pending(
            cid, tenant=tenant, owner="w2", now=later, lease_expires_at=later + timedelta(minutes=1)
        )
        assert claimed == pending.model_copy(
            update={"lease_owner": "w2", "lease_expires_at": later + timedelta(minutes=1)}
        )
        assert store.get_pending(cid, tenant=tenant) == claimed
        other = new_id("t")
        far = later + timedelta(days=1)
        assert (
            store.claim_pending(cid, tenant=other, owner="w3", now=far, lease_expires_at=far)
            is None
        )
        assert store.get_pending(cid, tenant=tenant) == claimed

    def test_concurrent_claims_one_wins(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        now = utcnow()
        store.begin_turn(make_pending(record, lease_expires_at=now - timedelta(seconds=1)))
        workers = 4
        barrier = threading.Barrier(workers)
        outcomes: list[object] = []

        def claim(owner: str) -> None:
            barrier.wait()
            try:
                outcomes.append(
                    store.claim_pending(
                        record.id,
                        tenant=record.tenant,
                        owner=owner,
                        now=now,
                        lease_expires_at=now + timedelta(minutes=1),
                    )
                )
            except Exception as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=claim, args=(f"w{n}",)) for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wins = [o for o in outcomes if isinstance(o, PendingTurnRecord)]
        assert len(wins) == 1, outcomes
        assert outcomes.count(None) == workers - 1, outcomes
        stored = store.get_pending(record.id, tenant=record.tenant)
        assert stored == wins[0]

    def test_release_pending_is_idempotent(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        pending = make_pending(record)
        store.begin_turn(pending)
        key = pending.idempotency_key
        assert store.release_pending(record.id, tenant=record.tenant, idempotency_key="x") is False
        assert store.release_pending(record.id, tenant=new_id("t"), idempotency_key=key) is False
        assert store.get_pending(record.id, tenant=record.tenant) == pending
        assert store.release_pending(record.id, tenant=record.tenant, idempotency_key=key) is True
        assert store.get_pending(record.id, tenant=record.tenant) is None
        assert store.release_pending(record.id, tenant=record.tenant, idempotency_key=key) is False
        missing = make_record()
        assert (
            store.release_pending(missing.id, tenant=missing.tenant, idempotency_key=key) is False
        )
        # the conversation is free for the next turn
        store.begin_turn(make_pending(record))

    def test_append_replaces_its_pending_turn(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        pending = make_pending(record)
        store.begin_turn(pending)
        key = pending.idempotency_key
        # other appends leave it: no key, another key, a stale version with its key
        stale = make_commit(record, [user_step("late")], idempotency_key=key)
        record = add_turn(store, record)
        record = add_turn(store, record, idempotency_key="another")
        with pytest.raises(ConcurrentTurnError):
            store.append_turn(stale)
        assert store.get_pending(record.id, tenant=record.tenant) == pending
        # its own commit removes it, in the same write
        record = add_turn(store, record, idempotency_key=key)
        assert store.get_pending(record.id, tenant=record.tenant) is None
        # a retried commit (created=False) removes a pending record carrying that key too
        store.begin_turn(make_pending(record, idempotency_key=key))
        retried = store.append_turn(make_commit(record, [user_step("again")], idempotency_key=key))
        assert retried.created is False
        assert store.get_pending(record.id, tenant=record.tenant) is None
        assert store.get_conversation(record.id, tenant=record.tenant) == record

    def test_delete_and_purge_remove_the_pending_turn(self, store: Store) -> None:
        record = store.create_conversation(make_record(expires_at=utcnow() + timedelta(hours=1)))
        pending = make_pending(record)
        store.begin_turn(pending)
        assert store.delete_conversation(record.id, tenant=record.tenant) is True
        assert store.get_pending(record.id, tenant=record.tenant) is None
        assert [p for p in store.list_pending(tenant=record.tenant)] == []
        again = store.create_conversation(make_record(id=record.id, tenant=record.tenant))
        assert store.get_pending(again.id, tenant=again.tenant) is None
        store.begin_turn(make_pending(again))  # nothing left in flight on the new one
        doomed = store.create_conversation(make_record(expires_at=utcnow() + timedelta(hours=1)))
        store.begin_turn(make_pending(doomed))
        store.purge(now=utcnow() + timedelta(hours=2), tenant=doomed.tenant)
        assert store.get_pending(doomed.id, tenant=doomed.tenant) is None
        assert store.list_pending(tenant=doomed.tenant) == []

    def test_list_pending(self, store: Store) -> None:
        tenant, other = new_id("t"), new_id("t")
        base = utcnow() - timedelta(minutes=10)
        made = []
        for n, (owner, lease) in enumerate([("a", -5), ("b", 5), ("c", -1), ("d", 5)]):
            record = store.create_conversation(make_record(tenant=tenant))
            pending = make_pending(
                record,
                lease_owner=owner,
                lease_expires_at=base + timedelta(minutes=10 + lease),
                created_at=base + timedelta(seconds=[3, 1, 2, 1][n]),
            )
            store.begin_turn(pending)
            made.append(pending)
        neighbour = store.create_conversation(make_record(tenant=other))
        store.begin_turn(make_pending(neighbour, created_at=base))
        ties = sorted([made[1], made[3]], key=lambda p: p.conversation_id)
        listed = store.list_pending(tenant=tenant)
        assert listed == [*ties, made[2], made[0]]
        assert store.list_pending(tenant=tenant, limit=2) == ties
        now = base + timedelta(minutes=10)
        assert store.list_pending(tenant=tenant, expired_at=now) == [made[2], made[0]]
        assert store.list_pending(tenant=tenant, expired_at=base) == []
        # every tenant: earlier than anything any other test writes, and earlier on every
        # call, so that the first page holds these two only, even in a shared database
        stamp = datetime(2000, 1, 1, tzinfo=UTC) - timedelta(microseconds=time.time_ns() // 100)
        firsts = []
        for offset in (1, 0):
            record = store.create_conversation(make_record())
            firsts.append(
                make_pending(
                    record,
                    created_at=stamp + timedelta(microseconds=offset),
                    lease_expires_at=stamp,
                )
            )
            store.begin_turn(firsts[-1])
        assert store.list_pending(tenant=None, limit=2) == firsts[::-1]
        assert store.list_pending(tenant=None, expired_at=stamp, limit=2) == firsts[::-1]
        assert neighbour.id in [p.conversation_id for p in store.list_pending(tenant=other)]
        assert store.list_pending(tenant=new_id("t")) == []
        for bad_limit in (0, -1, 1001, "5"):
            with pytest.raises(ValidationError):
                store.list_pending(tenant=tenant, limit=bad_limit)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.list_pending(tenant=tenant, expired_at=datetime(2030, 1, 1))

    def test_pending_tenant_isolation(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        pending = make_pending(record)
        store.begin_turn(pending)
        other = new_id("t")
        assert store.get_pending(record.id, tenant=other) is None
        assert store.list_pending(tenant=other) == []
        assert (
            store.release_pending(record.id, tenant=other, idempotency_key=pending.idempotency_key)
            is False
        )
        now = pending.lease_expires_at + timedelta(hours=1)
        assert (
            store.claim_pending(record.id, tenant=other, owner="w9", now=now, lease_expires_at=now)
            is None
        )
        with pytest.raises(LeaseLost):
            store.update_pending(pending.model_copy(update={"tenant": other}), owner="worker-1")
        with pytest.raises(ConversationNotFound):
            store.begin_turn(make_pending(record, tenant=other))
        assert store.get_pending(record.id, tenant=record.tenant) == pending

    @pytest.mark.parametrize("bad", BAD_IDS, ids=_ids(BAD_IDS))
    def test_pending_bad_ids_are_rejected(self, store: Store, bad: Any) -> None:
        record = store.create_conversation(make_record())
        pending = make_pending(record)
        now = utcnow()
        with pytest.raises(ValidationError):
            store.get_pending(bad, tenant=record.tenant)
        with pytest.raises(ValidationError):
            store.get_pending(record.id, tenant=bad)
        with pytest.raises(ValidationError):
            store.claim_pending(record.id, tenant=bad, owner="w", now=now, lease_expires_at=now)
        with pytest.raises(ValidationError):
            store.claim_pending(
                record.id, tenant=record.tenant, owner=bad, now=now, lease_expires_at=now
            )
        with pytest.raises(ValidationError):
            store.release_pending(bad, tenant=record.tenant, idempotency_key="k")
        with pytest.raises(ValidationError):
            store.update_pending(pending, owner=bad)
        if bad is not None:
            with pytest.raises(ValidationError):
                store.list_pending(tenant=bad)
        for field in ("conversation_id", "tenant", "lease_owner"):
            forged = PendingTurnRecord.model_construct(**{**pending.model_dump(), field: bad})
            with pytest.raises(ValidationError):
                store.begin_turn(forged)
        assert store.get_pending(record.id, tenant=record.tenant) is None

    def test_pending_bad_values_are_rejected_before_writing(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        pending = make_pending(record)
        now = utcnow()
        for update in (
            {"input_steps": [{"type": "x", "v": float("nan")}]},
            {"input_steps": [{"type": "x", "v": "\ud800"}]},
            {"input_steps": ["not an object"]},
            {"config": {"v": object()}},
            {"seq": 0},
            {"seq": True},
            {"planned_version": -1},
            {"state": "done"},
            {"idempotency_key": ""},
            {"idempotency_key": "line\nbreak"},
            {"hop_ids": [1]},
            {"lease_expires_at": datetime(2030, 1, 1)},
            {"created_at": "yesterday"},
        ):
            forged = PendingTurnRecord.model_construct(**{**dict(pending), **update})
            with pytest.raises(ValidationError):
                store.begin_turn(forged)
        assert store.get_pending(record.id, tenant=record.tenant) is None
        with pytest.raises(ValidationError):
            store.begin_turn(record)  # type: ignore[arg-type]
        store.begin_turn(pending)
        # update_pending writes the progress fields: a bad one is refused ...
        for update in (
            {"hop_ids": [1]},
            {"state": "done"},
            {"interaction_id": 5},
            {"lease_expires_at": datetime(2030, 1, 1)},
        ):
            forged = PendingTurnRecord.model_construct(**{**dict(pending), **update})
            with pytest.raises(ValidationError):
                store.update_pending(forged, owner="worker-1")
        # ... and what it does not write (the input, the settings) is never taken from it
        unwritten = PendingTurnRecord.model_construct(
            **{**dict(pending), "input_steps": [{"type": "x", "v": float("inf")}], "config": {}}
        )
        store.update_pending(unwritten, owner=pending.lease_owner)
        with pytest.raises(ValidationError):
            store.claim_pending(
                record.id,
                tenant=record.tenant,
                owner="w",
                now=datetime(2030, 1, 1),
                lease_expires_at=now,
            )
        with pytest.raises(ValidationError):
            store.release_pending(record.id, tenant=record.tenant, idempotency_key="")
        assert store.get_pending(record.id, tenant=record.tenant) == pending

    # ------------------------------------------------------------- outbox

    def test_outbox_add_list_update_remove(self, store: Store) -> None:
        tenant, other = new_id("t"), new_id("t")
        base = utcnow() - timedelta(minutes=1)
        first = make_outbox_item(
            tenant,
            conversation_id=new_id(),
            created_at=base,
            next_attempt_at=base + timedelta(minutes=5),
        )
        second = make_outbox_item(
            tenant,
            created_at=base + timedelta(seconds=1),
            next_attempt_at=base,
            attempts=2,
            last_error="HTTP 503: unavailable ü",
        )
        third = make_outbox_item(
            tenant, created_at=base + timedelta(seconds=2), next_attempt_at=base
        )
        neighbour = make_outbox_item(other, created_at=base, next_attempt_at=base)
        store.add_outbox([third, first])
        store.add_outbox([second, neighbour])
        store.add_outbox([])
        assert store.list_outbox(tenant=tenant) == [first, second, third]
        assert store.list_outbox(tenant=tenant, limit=2) == [first, second]
        assert store.list_outbox(tenant=tenant, due_at=base) == [second, third]
        assert store.list_outbox(tenant=tenant, due_at=base - timedelta(seconds=1)) == []
        everyone = [item.id for item in store.list_outbox(tenant=None, limit=1000)]
        assert {first.id, second.id, third.id, neighbour.id} <= set(everyone)
        # an item added again is replaced
        replaced = first.model_copy(update={"target": "v1_other", "next_attempt_at": base})
        store.add_outbox([replaced])
        assert store.list_outbox(tenant=tenant) == [replaced, second, third]
        # a failed try: only attempts, last_error and next_attempt_at are written
        retry = third.model_copy(
            update={
                "attempts": 1,
                "last_error": "timeout",
                "next_attempt_at": base + timedelta(hours=1),
                "target": "v1_forged",
            }
        )
        store.update_outbox(retry)
        expected = third.model_copy(
            update={
                "attempts": 1,
                "last_error": "timeout",
                "next_attempt_at": base + timedelta(hours=1),
            }
        )
        assert store.list_outbox(tenant=tenant) == [replaced, second, expected]
        assert store.list_outbox(tenant=tenant, due_at=base) == [replaced, second]
        store.remove_outbox([replaced.id, second.id, "o-never-added"])
        store.remove_outbox([replaced.id])
        assert store.list_outbox(tenant=tenant) == [expected]
        store.update_outbox(replaced)  # removed meanwhile: a no-op
        assert store.list_outbox(tenant=tenant) == [expected]
        store.remove_outbox([expected.id, neighbour.id])
        assert store.list_outbox(tenant=tenant) == []
        assert store.list_outbox(tenant=other) == []

    def test_outbox_survives_deleting_the_conversation(self, store: Store) -> None:
        record = add_turn(store, store.create_conversation(make_record()))
        item = make_outbox_item(
            record.tenant, conversation_id=record.id, target=record.head_interaction_id
        )
        store.add_outbox([item])
        assert store.delete_conversation(record.id, tenant=record.tenant)
        assert store.list_outbox(tenant=record.tenant) == [item]
        store.update_outbox(item.model_copy(update={"tenant": new_id("t"), "attempts": 5}))
        assert store.list_outbox(tenant=record.tenant) == [item]  # another tenant's: no-op
        store.remove_outbox([item.id])
        assert store.list_outbox(tenant=record.tenant) == []

    def test_outbox_bad_input_is_rejected_before_writing(self, store: Store) -> None:
        tenant = new_id("t")
        good = make_outbox_item(tenant)
        for update in (
            {"id": "bad id"},
            {"tenant": "x'; DROP TABLE outbox; --"},
            {"conversation_id": "{brace}"},
            {"action": "explode"},
            {"target": ""},
            {"attempts": -1},
            {"next_attempt_at": datetime(2030, 1, 1)},
        ):
            forged = OutboxItem.model_construct(**{**dict(good), **update})
            with pytest.raises(ValidationError):
                store.add_outbox([good, forged])
            with pytest.raises(ValidationError):
                store.update_outbox(forged)
        with pytest.raises(ValidationError):
            store.add_outbox(good)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.remove_outbox(["bad id"])
        with pytest.raises(ValidationError):
            store.remove_outbox("o-1")
        with pytest.raises(ValidationError):
            store.list_outbox(tenant="bad id")
        with pytest.raises(ValidationError):
            store.list_outbox(tenant=tenant, limit=0)
        with pytest.raises(ValidationError):
            store.list_outbox(tenant=tenant, due_at=datetime(2030, 1, 1))
        assert store.list_outbox(tenant=tenant) == []

    # ------------------------------------------------------------- compactions

    def _compaction(
        self, record: ConversationRecord, *, last_turn: int, last_seq: int, **fields: Any
    ) -> tuple[ConversationRecord, CompactionRecord]:
        from ._core import context

        compaction = CompactionRecord(
            conversation_id=record.id,
            epoch=record.context_epoch + 1,
            last_seq=last_seq,
            last_turn=last_turn,
            steps=fields.pop("steps", [user_step("Summary: Grüße 🎉"), model_step("ok")]),
            summarizer=fields.pop("summarizer", "summarize"),
            policy=fields.pop("policy", "tokens"),
            model="m",
            interaction_id="int_sum",
            usage={"total_input_tokens": 12},
            audit_hash="abc",
            **fields,
        )
        return context.compacted_record(record, compaction, now=datetime.now(UTC)), compaction

    def test_compaction_appends_and_keeps_every_step(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        for _ in range(3):
            record = add_turn(store, record)
        steps = store.load_steps(record.id, tenant=record.tenant)
        new, compaction = self._compaction(record, last_turn=2, last_seq=4)
        written = store.append_compaction(new, compaction)
        assert written.version == record.version + 1
        assert written.context_epoch == 1 and written.head_interaction_id is None
        assert written == store.get_conversation(record.id, tenant=record.tenant)
        assert store.load_compactions(record.id, tenant=record.tenant) == [compaction]
        assert store.load_steps(record.id, tenant=record.tenant) == steps
        # a turn after it carries the epoch; a second compaction follows the first
        after = add_turn(store, written)
        assert store.load_turns(record.id, tenant=record.tenant)[-1].context_epoch == 1
        new2, second = self._compaction(after, last_turn=3, last_seq=6, summarizer="trim")
        store.append_compaction(new2, second)
        assert store.load_compactions(record.id, tenant=record.tenant) == [compaction, second]
        assert store.load_compactions(record.id, tenant=record.tenant, epoch=2) == [second]
        assert store.load_compactions(record.id, tenant=record.tenant, epoch=9) == []

    def test_compaction_is_version_checked_and_validated(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        record = add_turn(store, record)
        new, compaction = self._compaction(record, last_turn=1, last_seq=2)
        stale = new.model_copy(update={"version": record.version + 5})
        with pytest.raises(ConcurrentTurnError):
            store.append_compaction(stale, compaction)
        past, beyond = self._compaction(record, last_turn=1, last_seq=9)
        with pytest.raises(ValidationError):
            store.append_compaction(past, beyond)
        skipped = compaction.model_copy(update={"epoch": 2})
        with pytest.raises(ValidationError):
            store.append_compaction(new.model_copy(update={"context_epoch": 2}), skipped)
        other = new.model_copy(update={"tenant": "someone-else"})
        with pytest.raises(ConversationNotFound):
            store.append_compaction(other, compaction)
        with pytest.raises(ConversationNotFound):
            store.load_compactions(record.id, tenant="someone-else")
        assert store.load_compactions(record.id, tenant=record.tenant) == []
        assert store.get_conversation(record.id, tenant=record.tenant) == record

    def test_compaction_waits_for_the_turn_in_flight(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        record = add_turn(store, record)
        pending = make_pending(record)
        store.begin_turn(pending)
        with pytest.raises(TurnInFlight) as caught:
            store.append_compaction(*self._compaction(record, last_turn=1, last_seq=2))
        assert caught.value.pending == pending
        assert store.get_conversation(record.id, tenant=record.tenant) == record
        assert store.load_compactions(record.id, tenant=record.tenant) == []
        store.release_pending(
            record.id, tenant=record.tenant, idempotency_key=pending.idempotency_key
        )
        assert store.append_compaction(*self._compaction(record, last_turn=1, last_seq=2))

    def test_delete_removes_compactions(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        record = add_turn(store, record)
        store.append_compaction(*self._compaction(record, last_turn=1, last_seq=2))
        assert store.delete_conversation(record.id, tenant=record.tenant)
        again = store.create_conversation(make_record(id=record.id, tenant=record.tenant))
        assert store.load_compactions(again.id, tenant=again.tenant) == []

    def test_step_range_pages_through_the_record(self, store: Store) -> None:
        record = store.create_conversation(make_record())
        for i in range(5):
            record = add_turn(store, record, [user_step(f"q{i}"), model_step(f"a{i}")])
        every = store.load_steps(record.id, tenant=record.tenant)
        cid, tenant = record.id, record.tenant
        assert store.load_step_range(cid, tenant=tenant) == every
        assert store.load_step_range(cid, tenant=tenant, after_seq=3, limit=4) == every[3:7]
        assert store.load_step_range(cid, tenant=tenant, before_seq=9, limit=3) == every[5:8]
        assert store.load_step_range(cid, tenant=tenant, before_seq=3, limit=9) == every[:2]
        assert store.load_step_range(cid, tenant=tenant, after_seq=2, before_seq=6) == every[2:5]
        assert store.load_step_range(cid, tenant=tenant, after_seq=10) == []
        assert store.load_step_range(cid, tenant=tenant, before_seq=1, limit=5) == []
        # scrolling back page by page visits every step once
        pages: list[StoredStep] = []
        before = len(every) + 1
        while True:
            page = store.load_step_range(cid, tenant=tenant, before_seq=before, limit=3)
            if not page:
                break
            pages = page + pages
            before = page[0].seq
        assert pages == every
        with pytest.raises(ConversationNotFound):
            store.load_step_range(cid, tenant="someone-else")
        for bad in ({"after_seq": -1}, {"before_seq": 0}, {"limit": 0}, {"limit": True}):
            with pytest.raises(ValidationError):
                store.load_step_range(cid, tenant=tenant, **bad)

    # ------------------------------------------------------------- lifecycle

    def test_close_twice(self, store_factory: Callable[[], Store]) -> None:
        store = store_factory()
        record = store.create_conversation(make_record())
        store.close()
        store.close()
        reopened = store_factory()
        try:
            assert reopened.get_conversation(record.id, tenant=record.tenant) == record
        finally:
            reopened.close()


class AsyncStoreConformance(_Divergences):
    """The asyncio subset. Subclasses provide ``async_store_factory``."""

    @pytest.fixture
    def run(
        self, async_store_factory: Callable[[], AsyncStore]
    ) -> Callable[[Callable[[AsyncStore], Any]], Any]:
        def runner(body: Callable[[AsyncStore], Any]) -> Any:
            async def main() -> Any:
                store = async_store_factory()
                try:
                    return await body(store)
                finally:
                    await store.aclose()
                    await store.aclose()

            return asyncio.run(main())

        return runner

    def test_async_round_trip_and_conflict(self, run: Callable[..., Any]) -> None:
        async def body(store: AsyncStore) -> None:
            assert isinstance(store, AsyncStore)
            record = await store.create_conversation(make_record(user="u1"))
            commit = make_commit(record, VERBATIM_STEPS, idempotency_key="k")
            assert (await store.append_turn(commit)).created
            steps = await store.load_steps(record.id, tenant=record.tenant)
            assert [s.payload for s in steps] == VERBATIM_STEPS
            assert await store.get_conversation(record.id, tenant=record.tenant) == commit.record
            assert (await store.append_turn(commit)).created is False
            with pytest.raises(ConcurrentTurnError):
                await store.append_turn(make_commit(record, [user_step("late")]))
            found = await store.find_turn(record.id, tenant=record.tenant, idempotency_key="k")
            assert found == commit.turn
            assert await store.load_turns(record.id, tenant=record.tenant) == [commit.turn]
            page = await store.list_conversations(tenant=record.tenant, user="u1")
            assert [r.id for r in page.items] == [record.id]

        run(body)

    def test_async_concurrent_appends_one_wins(self, run: Callable[..., Any]) -> None:
        async def body(store: AsyncStore) -> None:
            record = await store.create_conversation(make_record())
            commits = [make_commit(record, [user_step(f"w{n}")]) for n in range(4)]
            outcomes = await asyncio.gather(
                *(store.append_turn(c) for c in commits), return_exceptions=True
            )
            wins = [o for o in outcomes if not isinstance(o, BaseException)]
            assert len(wins) == 1, outcomes
            assert all(
                isinstance(o, ConcurrentTurnError) for o in outcomes if isinstance(o, BaseException)
            )
            stored = await store.get_conversation(record.id, tenant=record.tenant)
            assert (stored.version, stored.turn_count, stored.step_count) == (1, 1, 1)

        run(body)

    def test_async_tenant_isolation_and_delete(self, run: Callable[..., Any]) -> None:
        async def body(store: AsyncStore) -> None:
            record = await store.create_conversation(make_record())
            other = new_id("t")
            with pytest.raises(ConversationNotFound):
                await store.get_conversation(record.id, tenant=other)
            with pytest.raises(ConversationNotFound):
                await store.load_steps(record.id, tenant=other, newest=2)
            assert await store.delete_conversation(record.id, tenant=other) is False
            assert await store.delete_conversation(record.id, tenant=record.tenant) is True
            assert await store.delete_conversation(record.id, tenant=record.tenant) is False
            with pytest.raises(ValidationError):
                await store.get_conversation("bad id", tenant=record.tenant)
            purged = await store.purge(tenant=other, older_than=utcnow())
            assert purged == []

        run(body)

    def test_async_turn_in_flight(self, run: Callable[..., Any]) -> None:
        async def body(store: AsyncStore) -> None:
            record = await store.create_conversation(make_record())
            now = utcnow()
            pending = make_pending(record, lease_expires_at=now - timedelta(seconds=1))
            await store.begin_turn(pending)
            with pytest.raises(TurnInFlight):
                await store.begin_turn(make_pending(record))
            assert await store.get_pending(record.id, tenant=record.tenant) == pending
            claims = await asyncio.gather(
                *(
                    store.claim_pending(
                        record.id,
                        tenant=record.tenant,
                        owner=f"w{n}",
                        now=now,
                        lease_expires_at=now + timedelta(minutes=1),
                    )
                    for n in range(4)
                )
            )
            winners = [c for c in claims if c is not None]
            assert len(winners) == 1, claims
            owner = winners[0].lease_owner
            sent = winners[0].model_copy(update={"state": "sent", "interaction_id": "v1_x"})
            await store.update_pending(sent, owner=owner)
            with pytest.raises(LeaseLost):
                await store.update_pending(sent, owner="someone-else")
            assert await store.list_pending(tenant=record.tenant) == [sent]
            commit = make_commit(record, [user_step("q")], idempotency_key=pending.idempotency_key)
            assert (await store.append_turn(commit)).created
            assert await store.get_pending(record.id, tenant=record.tenant) is None
            assert not await store.release_pending(
                record.id, tenant=record.tenant, idempotency_key=pending.idempotency_key
            )

        run(body)

    def test_async_outbox(self, run: Callable[..., Any]) -> None:
        async def body(store: AsyncStore) -> None:
            tenant = new_id("t")
            items = [
                make_outbox_item(tenant, created_at=utcnow() + timedelta(seconds=n))
                for n in range(3)
            ]
            await store.add_outbox(items)
            assert await store.list_outbox(tenant=tenant) == items
            retry = items[0].model_copy(update={"attempts": 1, "last_error": "x"})
            await store.update_outbox(retry)
            assert await store.list_outbox(tenant=tenant, limit=1) == [retry]
            await store.remove_outbox([item.id for item in items])
            assert await store.list_outbox(tenant=tenant) == []

        run(body)

    def test_async_compactions_and_pages(self, run: Callable[..., Any]) -> None:
        from ._core import context

        async def body(store: AsyncStore) -> None:
            record = await store.create_conversation(make_record())
            for i in range(3):
                commit = make_commit(record, [user_step(f"q{i}"), model_step(f"a{i}")])
                assert (await store.append_turn(commit)).created
                record = commit.record
            compaction = CompactionRecord(
                conversation_id=record.id,
                epoch=1,
                last_seq=4,
                last_turn=2,
                steps=[user_step("Summary 🎉"), model_step("ok")],
                summarizer="summarize",
                policy="tokens",
            )
            new = context.compacted_record(record, compaction, now=utcnow())
            written = await store.append_compaction(new, compaction)
            assert written.context_epoch == 1 and written.version == record.version + 1
            with pytest.raises(ConcurrentTurnError):
                await store.append_compaction(new, compaction)
            found = await store.load_compactions(record.id, tenant=record.tenant)
            assert found == [compaction]
            every = await store.load_steps(record.id, tenant=record.tenant)
            page = await store.load_step_range(
                record.id, tenant=record.tenant, before_seq=6, limit=2
            )
            assert page == every[3:5]
            with pytest.raises(ConversationNotFound):
                await store.load_compactions(record.id, tenant=new_id("t"))

        run(body)

"""Durable turns against the emulator over real HTTP, on every store: the pending record,
one turn in flight, background turns, recovery (adopt, lose, never interleave), the outbox,
webhooks, and the API's statuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import convostore as cs
from convostore._core import planner, webhooks
from convostore.emulator import Emulator, parse_answer
from convostore.models import LOST_STATUS, PendingTurnRecord, utcnow

KEY = "test-key-0123456789"
MODEL = "gemini-3-flash-preview"


@pytest.fixture(params=["memory", "sqlite", "postgresql", "mysql", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'chat.db'}"
    if kind == "memory":
        return "memory://"
    if kind in ("postgresql", "mysql"):
        url: str = request.getfixturevalue(f"{kind if kind == 'mysql' else 'postgres'}_url")
        from convostore import _migrate

        _migrate.upgrade(url)
        return url
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return f"{url}?key_prefix={prefix}"


@pytest.fixture
def tenant() -> str:
    """A tenant of the test's own: the server stores are shared by the session."""
    return f"t{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def opened(store: Any, emulator: Emulator, **options: Any) -> Iterator[cs.Conversations]:
    """A Conversations of its own (another worker, as far as leases go)."""
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as client,
        cs.Conversations(store, client, model=MODEL, poll_interval=0.02, **options) as convos,
    ):
        yield convos


@pytest.fixture
def store(store_url: str) -> Iterator[cs.Store]:
    s = cs.open_store(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def convos(store: cs.Store, emulator: Emulator) -> Iterator[cs.Conversations]:
    with opened(store, emulator) as c:
        yield c


def creates(emulator: Emulator) -> list[dict[str, Any]]:
    return [
        r.body
        for r in emulator.requests
        if r.method == "POST" and r.body is not None and not r.path.endswith("/cancel")
    ]


def in_background(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def wait_for_pending(store: cs.Store, conv: cs.Conversation) -> PendingTurnRecord:
    for _ in range(400):
        found = store.get_pending(conv.id, tenant=conv.tenant)
        if found is not None:
            return found
        time.sleep(0.005)
    raise AssertionError("no pending turn appeared")


# ------------------------------------------------------------------ the pending record


def test_a_turn_is_pending_while_its_request_is_in_flight(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant, mode="server")
    emulator.delay(0.4, times=1)
    thread, out = in_background(conv.send, "hello")
    pending = wait_for_pending(store, conv)
    assert pending.seq == 1 and pending.planned_version == 0
    assert pending.input_steps == [
        {"type": "user_input", "content": [{"type": "text", "text": "hello"}]}
    ]
    assert pending.mode_used == "server" and pending.reason == "first_turn" and pending.store
    assert pending.idempotency_key.startswith("t-")
    assert pending.lease_owner == convos.owner_id
    thread.join()
    turn = out[0]
    assert isinstance(turn, cs.Turn) and turn.record.idempotency_key == pending.idempotency_key
    assert store.get_pending(conv.id, tenant=tenant) is None


def test_one_turn_in_flight_rejects_a_second_without_sending_it(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant)
    emulator.delay(0.4, times=1)
    thread, out = in_background(conv.send, "first")
    wait_for_pending(store, conv)
    with opened(store, emulator) as other, pytest.raises(cs.TurnInFlight) as info:
        other.get(conv.id, tenant=tenant).send("second")
    assert info.value.pending.seq == 1
    thread.join()
    assert isinstance(out[0], cs.Turn)
    assert len(creates(emulator)) == 1  # the second request never reached the API


def test_wait_policy_queues_behind_the_turn_in_flight(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant)
    emulator.delay(0.3, times=1)
    thread, out = in_background(conv.send, "first")
    wait_for_pending(store, conv)
    with opened(store, emulator) as other:
        second = other.get(conv.id, tenant=tenant).send("second", in_flight="wait")
    thread.join()
    assert isinstance(out[0], cs.Turn)
    assert (out[0].seq, second.seq) == (1, 2)
    assert parse_answer(second.text)[0] == 2
    assert len(creates(emulator)) == 2


def test_bad_turn_options_are_refused_before_anything_is_written(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant, mode="stateless")
    with pytest.raises(cs.ValidationError, match="in_flight"):
        conv.send("x", in_flight="later")  # type: ignore[call-overload]
    with pytest.raises(cs.ValidationError, match="background"):
        conv.send("x", background="yes")  # type: ignore[call-overload]
    with pytest.raises(cs.ValidationError, match="stateless"):
        conv.send("x", background=True)
    assert creates(emulator) == []
    assert store.get_pending(conv.id, tenant=tenant) is None
    assert conv.refresh().version == 0


# ------------------------------------------------------------------ statuses


def test_failed_answer_raises_and_commits_nothing(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    if not hasattr(emulator, "next_status"):
        pytest.skip("the emulator cannot answer failed on demand")
    conv = convos.create(tenant=tenant, mode="server")
    first = conv.send("hello")
    emulator.next_status("failed", errors=[{"code": "internal", "message": "boom"}])
    with pytest.raises(cs.InteractionFailed) as info:
        conv.send("again")
    assert info.value.status == "failed"
    assert info.value.errors == [{"code": "internal", "message": "boom"}]
    record = conv.refresh()
    assert record.turn_count == 1 and record.head_interaction_id == first.interaction_id
    assert store.get_pending(conv.id, tenant=tenant) is None
    assert conv.send("third").seq == 2


# ------------------------------------------------------------------ background turns


def test_background_turn_returns_at_once_and_wait_commits_it(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    emulator.background_seconds = 0.3
    conv = convos.create(tenant=tenant, mode="server")
    started = time.monotonic()
    pending = conv.send("research this", background=True)
    assert isinstance(pending, cs.PendingTurn)
    assert time.monotonic() - started < 0.3
    assert pending.interaction_id is not None and pending.seq == 1
    assert creates(emulator)[0]["background"] is True
    turn = pending.wait(timeout=10)
    assert turn.seq == 1 and turn.interaction_id == pending.interaction_id
    assert "research this" in turn.text
    assert store.get_pending(conv.id, tenant=tenant) is None
    assert conv.refresh().head_interaction_id == pending.interaction_id


def test_background_turn_is_finished_by_another_process(
    tenant: str, store: cs.Store, emulator: Emulator, store_url: str
) -> None:
    if store_url == "memory://":
        pytest.skip("a memory store lives in one process")
    emulator.background_seconds = 0.2
    with opened(store, emulator) as first:
        conv = first.create(tenant=tenant, mode="server")
        conv.send("deep research", background=True)
    # the first worker is gone; another one lists and finishes it
    with opened(store_url, emulator) as second:
        found = second.pending(tenant=tenant)
        assert [p.seq for p in found if p.conversation.id == conv.id] == [1]
        turn = next(p for p in found if p.conversation.id == conv.id).wait(timeout=10)
        assert "deep research" in turn.text
        assert second.get(conv.id, tenant=tenant).pending() is None


def test_background_turn_cancelled(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    emulator.background_seconds = 30
    conv = convos.create(tenant=tenant, mode="server")
    pending = conv.send("long job", background=True)
    assert isinstance(pending, cs.PendingTurn)
    pending.cancel()
    assert store.get_pending(conv.id, tenant=tenant) is None
    assert conv.refresh().turn_count == 0
    with pytest.raises(cs.InteractionFailed):
        pending.wait(timeout=5)
    assert conv.send("next").seq == 1


def test_cancel_policy_cancels_the_background_turn_then_sends(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    emulator.background_seconds = 30
    conv = convos.create(tenant=tenant, mode="server")
    conv.send("long job", background=True)
    turn = conv.send("never mind", in_flight="cancel")
    assert turn.seq == 1 and "never mind" in turn.text
    assert [t.status for t in conv.turns()] == ["completed"]


def test_reject_while_a_background_turn_runs(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    emulator.background_seconds = 30
    conv = convos.create(tenant=tenant, mode="server")
    conv.send("long job", background=True)
    with pytest.raises(cs.TurnInFlight):
        conv.send("another")
    assert len(creates(emulator)) == 1


# ------------------------------------------------------------------ recovery


def dead_worker_turn(
    store: cs.Store,
    conv: cs.Conversation,
    client: cs.InteractionsClient | None,
    *,
    state: str = "sent",
    store_flag: bool = True,
) -> PendingTurnRecord:
    """What a worker killed after the response (before its commit) leaves behind: a pending
    record, its lease expired, naming the interaction the server completed."""
    record = conv.refresh()
    decision = planner.decide(record, policy=planner.Policy(), now=utcnow())
    step = {"type": "user_input", "content": [{"type": "text", "text": "lost in a crash"}]}
    body = planner.plan_request(record, decision, new_steps=[step])
    interaction_id = None
    if client is not None:
        interaction_id = client.create(**{**body, "store": store_flag}).id
    now = utcnow()
    pending = PendingTurnRecord(
        conversation_id=conv.id,
        tenant=conv.tenant,
        seq=record.turn_count + 1,
        planned_version=record.version,
        idempotency_key=f"t-{uuid.uuid4().hex}",
        state=state,  # type: ignore[arg-type]
        mode_used=decision.mode_used,
        reason=decision.reason,
        model=record.model,
        store=store_flag,
        previous_interaction_id=decision.previous_interaction_id,
        input_steps=[step],
        config=record.config,
        interaction_id=interaction_id,
        hop_ids=[interaction_id] if interaction_id else [],
        lease_owner="dead-worker",
        lease_expires_at=now - timedelta(seconds=1),
        created_at=now - timedelta(minutes=1),
        updated_at=now - timedelta(minutes=1),
    )
    store.begin_turn(pending)
    return pending


def test_recover_adopts_the_answer_the_server_completed(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant, mode="server")
    conv.send("first")
    pending = dead_worker_turn(store, conv, convos.client)
    report = convos.recover(tenant=tenant)
    assert report.adopted == [f"{conv.id}#2"]
    turns = conv.turns()
    assert [t.interaction_id for t in turns][-1] == pending.interaction_id
    assert turns[-1].idempotency_key == pending.idempotency_key
    assert "lost in a crash" in conv.history()[-1]["content"][0]["text"]
    assert conv.refresh().head_interaction_id == pending.interaction_id
    assert store.get_pending(conv.id, tenant=tenant) is None
    # exactly once: a second recoverer finds nothing to do
    assert convos.recover(tenant=tenant).adopted == []
    assert conv.send("third").seq == 3


def test_the_next_send_finishes_a_dead_workers_turn_first(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant, mode="server")
    dead_worker_turn(store, conv, convos.client)
    turn = conv.send("after the crash")
    assert turn.seq == 2
    assert [t.status for t in conv.turns()] == ["completed", "completed"]
    assert parse_answer(turn.text)[0] == 2


def test_recover_records_a_turn_with_nothing_to_adopt_as_lost(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant, mode="server")
    first = conv.send("first")
    dead_worker_turn(store, conv, None, state="pending")
    report = convos.recover(tenant=tenant)
    assert report.lost == [f"{conv.id}#2"]
    turns = conv.turns()
    assert [t.status for t in turns] == ["completed", LOST_STATUS]
    record = conv.refresh()
    assert record.head_interaction_id == first.interaction_id  # the chain did not move
    assert len(conv.history()) == 2
    from convostore._transfer import verify

    assert verify(store, record) == []
    assert conv.send("next").reason == "chained"


def test_recover_never_interleaves_when_the_conversation_moved(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant, mode="server")
    conv.send("first")
    pending = dead_worker_turn(store, conv, convos.client)
    conv.update(metadata={"moved": True})  # the version moves past the planned one
    report = convos.recover(tenant=tenant)
    assert report.lost == [f"{conv.id}#2"]
    assert [t.status for t in conv.turns()] == ["completed", LOST_STATUS]
    # the answer that could not be committed is deleted on the server, not orphaned
    assert pending.interaction_id not in emulator.interactions


def test_recover_leaves_a_running_turn_pending(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    emulator.background_seconds = 30
    conv = convos.create(tenant=tenant, mode="server")
    pending = conv.send("slow", background=True)
    assert isinstance(pending, cs.PendingTurn)
    report = convos.recover(tenant=tenant)
    assert report.running == [f"{conv.id}#1"]
    assert store.get_pending(conv.id, tenant=tenant) is not None


# ------------------------------------------------------------------ the outbox


def test_failed_remote_deletions_stay_in_the_outbox_until_recover(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    conv = convos.create(tenant=tenant, mode="server")
    ids = [conv.send(text).interaction_id for text in ("a", "b")]
    emulator.fail(500, times=2)
    report = convos.delete(conv.id, tenant=tenant, remote=True)
    assert report.deleted and sorted(report.remote_failed) == sorted(ids)
    outstanding = store.list_outbox(tenant=tenant)
    assert sorted(i.target for i in outstanding) == sorted(ids)
    assert all(i.attempts == 1 and i.last_error for i in outstanding)
    # not due yet: recover leaves them until their next attempt
    assert convos.recover(tenant=tenant).deleted == []
    for item in outstanding:
        store.update_outbox(item.model_copy(update={"next_attempt_at": utcnow()}))
    report2 = convos.recover(tenant=tenant)
    assert sorted(report2.deleted) == sorted(ids)
    assert store.list_outbox(tenant=tenant) == []
    for interaction_id in ids:
        assert interaction_id not in emulator.interactions


# ------------------------------------------------------------------ webhooks


def test_webhook_commits_a_background_turn_once(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    emulator.background_seconds = 0.1
    secret = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM="
    with opened(store, emulator, webhook_uris=["http://127.0.0.1:9/hook"]) as hooked:
        hooked.webhook_secret = secret
        conv = hooked.create(tenant=tenant, mode="server")
        pending = conv.send("notify me", background=True)
        assert isinstance(pending, cs.PendingTurn)
        config = creates(emulator)[0]["webhook_config"]
        assert config["user_metadata"]["convostore_conversation"] == conv.id
        event = {
            "type": "interaction.completed",
            "interaction_id": pending.interaction_id,
            "status": "completed",
            "user_metadata": config["user_metadata"],
        }
        body = json.dumps(event).encode()
        stamp = int(time.time())
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(stamp),
            "webhook-signature": webhooks.sign(secret, "msg_1", stamp, body),
        }
        with pytest.raises(cs.ValidationError, match="signature"):
            hooked.handle_webhook(body + b" ", headers)
        time.sleep(0.2)
        # the webhook and a poller race: one commit
        thread, out = in_background(pending.wait, timeout=10)
        turn = hooked.handle_webhook(body, headers)
        thread.join()
        assert isinstance(out[0], cs.Turn)
        committed = [t for t in (turn, out[0]) if t is not None]
        assert {t.seq for t in committed} == {1}
        assert conv.refresh().turn_count == 1
        assert hooked.handle_webhook(body, headers) is None  # already finished


# ------------------------------------------------------------------ asyncio


def test_async_background_and_recover(tenant: str, store_url: str, emulator: Emulator) -> None:
    emulator.background_seconds = 0.1

    async def main() -> None:
        async with (
            cs.AsyncInteractionsClient(api_key=KEY, base_url=emulator.url) as client,
            cs.AsyncConversations(store_url, client, poll_interval=0.02) as convos,
        ):
            conv = await convos.create(tenant=tenant, mode="server")
            pending = await conv.send("async job", background=True)
            assert isinstance(pending, cs.AsyncPendingTurn)
            turn = await pending.wait(timeout=10)
            assert "async job" in turn.text
            assert (await convos.recover(tenant=tenant)).adopted == []

    asyncio.run(main())

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


# ------------------------------------------------------------------ long and unfinished answers


def full_answer(convos: cs.Conversations, tenant: str, text: str, mode: str) -> str:
    """The answer a model without a decode limit gives to ``text`` as a first turn."""
    return convos.create(tenant=tenant, mode=mode).send(text).text


@pytest.mark.parametrize("mode", ["server", "stateless"])
@pytest.mark.parametrize("how", ["send", "stream"])
def test_a_continued_answer_is_one_turn(
    tenant: str, convos: cs.Conversations, emulator: Emulator, mode: str, how: str
) -> None:
    text = "tell me a story about the sea"
    whole = full_answer(convos, tenant, text, mode)
    words = len(whole.split())
    emulator.decode_limit(words // 3 + 1)
    conv = convos.create(tenant=tenant, mode=mode)
    before = len(creates(emulator))
    if how == "send":
        turn = conv.send(text)
    else:
        with conv.stream(text) as events:
            streamed = "".join(events.text_deltas())
        assert events.turn is not None
        turn = events.turn
        assert streamed == whole
    hops = creates(emulator)[before:]
    assert len(hops) == 3
    assert [("continuation_token" in b) for b in hops] == [False, True, True]
    assert turn.text == whole and turn.status == "completed"
    assert len(conv.turns()) == 1
    if mode == "server":
        assert "input" not in hops[1] and hops[1]["previous_interaction_id"]
        assert turn.interaction_id == conv.refresh().head_interaction_id
    else:
        assert hops[1]["input"] == hops[0]["input"]
    # the next turn builds on the whole answer
    assert parse_answer(conv.send("and then?").text)[0] == 2


def test_auto_continue_off_keeps_the_partial_answer(
    tenant: str, convos: cs.Conversations, emulator: Emulator
) -> None:
    emulator.decode_limit(4)
    conv = convos.create(tenant=tenant, mode="server")
    turn = conv.send("a long question with many words in it", auto_continue=False)
    assert turn.status == "requires_continuation"
    assert len(creates(emulator)) == 1


def test_async_continued_answer(tenant: str, store_url: str, emulator: Emulator) -> None:
    if store_url == "memory://":
        pytest.skip("one async check is enough")

    async def main() -> tuple[str, str]:
        async with (
            cs.AsyncInteractionsClient(api_key=KEY, base_url=emulator.url) as client,
            cs.AsyncConversations(store_url, client) as convos,
        ):
            whole = (await (await convos.create(tenant=tenant)).send("tell me a story")).text
            emulator.decode_limit(len(whole.split()) // 3 + 1)
            conv = await convos.create(tenant=tenant)
            async with conv.stream("tell me a story") as events:
                streamed = "".join([t async for t in events.text_deltas()])
            assert events.turn is not None and events.turn.text == whole
            return whole, streamed

    whole, streamed = asyncio.run(main())
    assert streamed == whole


def test_a_stream_cut_after_a_checkpoint_is_resumed(
    tenant: str, convos: cs.Conversations, emulator: Emulator
) -> None:
    text = "tell me a story about mountains"
    whole = full_answer(convos, tenant, text, "server")
    emulator.checkpoint_every(2)
    emulator.cut_stream_after_checkpoint(1)
    conv = convos.create(tenant=tenant, mode="server")
    with conv.stream(text) as events:
        streamed = "".join(events.text_deltas())
    assert events.turn is not None
    assert streamed == whole and events.turn.text == whole
    assert events.turn.status == "completed"


def test_a_unary_send_survives_a_cut_after_a_checkpoint(
    tenant: str, convos: cs.Conversations, emulator: Emulator
) -> None:
    text = "tell me a story about rivers"
    whole = full_answer(convos, tenant, text, "server")
    emulator.checkpoint_every(2)
    emulator.cut_stream_after_checkpoint(1)
    turn = convos.create(tenant=tenant, mode="server").send(text)
    assert turn.text == whole


@pytest.mark.parametrize("status", ["incomplete", "budget_exceeded"])
def test_partial_answers_are_kept_with_their_status(
    tenant: str, convos: cs.Conversations, emulator: Emulator, status: str
) -> None:
    conv = convos.create(tenant=tenant, mode="server")
    emulator.next_status(status)
    turn = conv.send("a question with a few words")
    assert turn.status == status and turn.text
    assert conv.refresh().head_interaction_id == turn.interaction_id


@pytest.mark.parametrize("status", ["in_progress", "queued", "idle"])
def test_unfinished_answers_are_polled_to_completion(
    tenant: str, convos: cs.Conversations, emulator: Emulator, status: str
) -> None:
    emulator.background_seconds = 0.2
    conv = convos.create(tenant=tenant, mode="server")
    emulator.next_status(status)
    turn = conv.send("are you done yet")
    assert turn.status == "completed" and "are you done yet" in turn.text
    assert [t.status for t in conv.turns()] == ["completed"]


@pytest.mark.parametrize("how", ["send", "stream"])
def test_failed_and_cancelled_answers_commit_nothing(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator, how: str
) -> None:
    conv = convos.create(tenant=tenant, mode="server")
    first = conv.send("hello")
    for status in ("failed", "cancelled"):
        emulator.next_status(status)
        with pytest.raises(cs.InteractionFailed) as info:
            if how == "send":
                conv.send("again")
            else:
                with conv.stream("again") as events:
                    for _ in events:
                        pass
        assert info.value.status == status
        assert conv.refresh().head_interaction_id == first.interaction_id
        assert store.get_pending(conv.id, tenant=tenant) is None
        assert info.value.interaction_id not in emulator.interactions  # not left on the server
    assert [t.seq for t in conv.turns()] == [1]


def test_webhook_delivered_by_the_api_commits_the_turn(
    tenant: str, store: cs.Store, emulator: Emulator
) -> None:
    """The emulator delivers a signed webhook over HTTP to a receiver that hands it to
    ``handle_webhook``; the turn is committed without anyone polling."""
    import http.server

    secret = "whsec_" + "dGVzdC13ZWJob29rLXNlY3JldA=="
    received: list[Any] = []
    with opened(store, emulator) as convos:

        class Receiver(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    received.append(convos.handle_webhook(body, dict(self.headers)))
                    self.send_response(204)
                except cs.ValidationError:
                    self.send_response(400)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            uri = f"http://127.0.0.1:{server.server_address[1]}/hook"
            convos.webhook_uris = [uri]
            convos.webhook_secret = secret
            emulator.webhook_secret = secret
            emulator.background_seconds = 0.1
            conv = convos.create(tenant=tenant, mode="server")
            pending = conv.send("call me back", background=True)
            assert isinstance(pending, cs.PendingTurn)
            emulator.wait_for_webhooks(1, timeout=10)
            for _ in range(200):
                if received:
                    break
                time.sleep(0.01)
        finally:
            server.shutdown()
            server.server_close()
        assert received and isinstance(received[0], cs.Turn)
        assert received[0].interaction_id == pending.interaction_id
        assert conv.refresh().turn_count == 1


def test_background_turn_streamed_to_the_end(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    emulator.background_seconds = 0.2
    conv = convos.create(tenant=tenant, mode="server")
    pending = conv.send("stream it when it is ready", background=True)
    assert isinstance(pending, cs.PendingTurn)
    texts = [
        e.delta.text
        for e in pending.stream()
        if isinstance(e, cs.models.StepDeltaEvent) and isinstance(e.delta, cs.models.TextDelta)
    ]
    assert "stream it when it is ready" in "".join(texts)
    assert [t.interaction_id for t in conv.turns()] == [pending.interaction_id]
    assert store.get_pending(conv.id, tenant=tenant) is None


def test_a_cut_unary_answer_is_fetched_not_lost(
    tenant: str, convos: cs.Conversations, store: cs.Store, emulator: Emulator
) -> None:
    """A send receives its answer as a stream; cut with no checkpoint, a stored answer is
    fetched from the server and committed; a stateless one (nothing kept) raises."""
    text = "a question that will be cut"
    whole = full_answer(convos, tenant, text, "server")
    emulator.cut_stream(3)
    conv = convos.create(tenant=tenant, mode="server")
    turn = conv.send(text)
    assert turn.text == whole and turn.status == "completed"
    assert [r.method for r in emulator.requests].count("GET") >= 1
    private = convos.create(tenant=tenant, mode="stateless")
    emulator.cut_stream(3)
    with pytest.raises(cs.StreamError):
        private.send(text)
    assert private.refresh().turn_count == 0
    assert store.get_pending(private.id, tenant=tenant) is None
    assert private.send(text).seq == 1

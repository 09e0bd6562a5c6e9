"""Conversations against the emulator over real HTTP, on real stores."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import convostore as cs
from convostore.emulator import Emulator, parse_answer
from convostore.models import Reason

KEY = "test-key-0123456789"
DOGS = "I have 2 dogs in my house."
PAWS = "How many paws are in my house?"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(params=["sqlite", "memory", "postgresql", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'chat.db'}"
    if kind == "memory":
        return "memory://"
    if kind == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        from convostore import _migrate

        _migrate.upgrade(url)
        return url
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return f"{url}?key_prefix={prefix}"


@pytest.fixture
def client(emulator: Emulator) -> Iterator[cs.InteractionsClient]:
    with cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as c:
        yield c


@pytest.fixture
def convos(store_url: str, client: cs.InteractionsClient) -> Iterator[cs.Conversations]:
    with cs.Conversations(store_url, client, model="gemini-3-flash-preview") as c:
        yield c


@contextlib.contextmanager
def opened(store_url: str, emulator: Emulator, **options: Any) -> Iterator[cs.Conversations]:
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as client,
        cs.Conversations(store_url, client, **options) as convos,
    ):
        yield convos


def creates(emulator: Emulator) -> list[dict[str, Any]]:
    return [r.body for r in emulator.requests if r.method == "POST" and r.body is not None]


def snapshot(conv: cs.Conversation) -> tuple[Any, ...]:
    record = conv.refresh()
    return (record.version, record.turn_count, record.step_count, conv.history(), conv.turns())


@pytest.mark.parametrize("mode", ["server", "stateless", "auto"])
def test_seed_exchange_carries_first_turn(
    convos: cs.Conversations, emulator: Emulator, mode: str
) -> None:
    conv = convos.create(tenant="acme", user="u42", mode=mode, system_instruction="Be a cat.")
    first = conv.send(DOGS)
    second = conv.send(PAWS)
    assert parse_answer(first.text)[0] == 1
    seen, _, latest = parse_answer(second.text)
    assert (seen, latest) == (2, PAWS)
    bodies = creates(emulator)
    if mode == "stateless":
        assert [b["store"] for b in bodies] == [False, False]
        assert len(bodies[1]["input"]) == 3  # dogs, answer, paws
        assert second.mode_used == "stateless" and second.reason == Reason.STATELESS_MODE
    else:
        assert bodies[1]["previous_interaction_id"] == first.interaction_id
        assert bodies[1]["input"] == [
            {"type": "user_input", "content": [{"type": "text", "text": PAWS}]}
        ]
        assert (first.reason, second.reason) == (Reason.FIRST_TURN, Reason.CHAINED)
    assert all(b["system_instruction"] == "Be a cat." for b in bodies)
    assert [s["type"] for s in conv.history()] == ["user_input", "model_output"] * 2


def test_server_and_stateless_give_identical_context(
    convos: cs.Conversations,
) -> None:
    texts = [DOGS, PAWS, "And cats?", "think about it"]
    digests = {}
    for mode in ("server", "stateless"):
        conv = convos.create(tenant="acme", mode=mode, system_instruction="Count paws.")
        digests[mode] = [parse_answer(conv.send(t).text)[:2] for t in texts]
    assert digests["server"] == digests["stateless"]
    assert [n for n, _ in digests["server"]] == [1, 2, 3, 4]


def test_settings_resent_on_every_turn(convos: cs.Conversations, emulator: Emulator) -> None:
    conv = convos.create(
        tenant="acme",
        system_instruction="Be terse.",
        generation_config={"temperature": 0.2, "thinking_level": "low"},
        tools=[WEATHER_TOOL],
    )
    for text in ("one", "two", "three"):
        conv.send(text)
    bodies = creates(emulator)
    assert len(bodies) == 3
    for body in bodies:
        assert body["system_instruction"] == "Be terse."
        assert body["generation_config"] == {"temperature": 0.2, "thinking_level": "low"}
        assert body["tools"] == [WEATHER_TOOL]


def test_server_mode_falls_back_when_chain_expired(
    convos: cs.Conversations, emulator: Emulator
) -> None:
    conv = convos.create(tenant="acme", mode="server")
    conv.send(DOGS)
    emulator.expire()
    turn = conv.send(PAWS)
    assert (turn.mode_used, turn.reason) == ("stateless", Reason.CHAIN_BROKEN)
    assert parse_answer(turn.text)[0] == 2
    bodies = creates(emulator)
    assert "previous_interaction_id" in bodies[1]  # the wasted try
    assert bodies[2]["store"] is True and len(bodies[2]["input"]) == 3  # the re-seed
    after = conv.send("and now?")
    assert (after.mode_used, after.reason) == ("server", Reason.CHAINED)
    assert creates(emulator)[3]["previous_interaction_id"] == turn.interaction_id
    assert parse_answer(after.text)[0] == 3


def test_auto_predicts_expiry_without_a_wasted_request(
    store_url: str, client: cs.InteractionsClient, emulator: Emulator
) -> None:
    with opened(store_url, emulator, retention=timedelta(seconds=0)) as convos:
        conv = convos.create(tenant="acme", mode="auto")
        conv.send(DOGS)
        turn = conv.send(PAWS)
    assert (turn.mode_used, turn.reason) == ("stateless", Reason.HEAD_EXPIRED)
    bodies = creates(emulator)
    assert len(bodies) == 2 and "previous_interaction_id" not in bodies[1]
    assert bodies[1]["store"] is True


def test_model_switch_replays(convos: cs.Conversations, emulator: Emulator) -> None:
    conv = convos.create(tenant="acme", mode="server")
    conv.send(DOGS)
    conv.update(model="gemini-3-pro-preview")
    turn = conv.send(PAWS)
    assert turn.reason == Reason.MODEL_CHANGED and turn.mode_used == "stateless"
    assert creates(emulator)[1]["model"] == "gemini-3-pro-preview"
    assert conv.send("next").reason == Reason.CHAINED


def test_fork_chains_from_turn_k(convos: cs.Conversations, emulator: Emulator) -> None:
    conv = convos.create(tenant="acme", mode="server")
    t1 = conv.send(DOGS)
    conv.send(PAWS)
    before = snapshot(conv)
    fork = conv.fork(at_turn=1)
    assert fork.id != conv.id and fork.record.turn_count == 1
    assert fork.history() == conv.history()[:2]
    turn = fork.send("What about cats?")
    assert turn.reason == Reason.CHAINED
    assert creates(emulator)[-1]["previous_interaction_id"] == t1.interaction_id
    assert parse_answer(turn.text)[0] == 2
    assert snapshot(conv) == before  # the original is untouched


def test_streaming_commits_when_complete(convos: cs.Conversations) -> None:
    conv = convos.create(tenant="acme")
    conv.send(DOGS)
    with conv.stream("tell me a long story") as events:
        pieces = list(events.text_deltas())
    assert len(pieces) > 3
    assert events.turn is not None
    assert "".join(pieces) == events.turn.text
    assert parse_answer(events.turn.text)[0] == 2
    assert conv.refresh().turn_count == 2


@pytest.mark.parametrize("fault", ["cut", "error"])
def test_cut_stream_commits_nothing(
    convos: cs.Conversations, emulator: Emulator, fault: str
) -> None:
    conv = convos.create(tenant="acme")
    conv.send(DOGS)
    before = snapshot(conv)
    if fault == "cut":
        emulator.cut_stream(after_events=4)
    else:
        emulator.fail_stream(after_events=4, code="resource_exhausted")
    with pytest.raises(cs.StreamError), conv.stream("tell me a long story") as events:
        for _ in events:
            pass
    assert events.turn is None
    assert snapshot(conv) == before
    turn = conv.send(PAWS)
    assert turn.seq == 2 and parse_answer(turn.text)[0] == 2


def test_leaving_a_stream_early_commits_nothing(convos: cs.Conversations) -> None:
    conv = convos.create(tenant="acme")
    before = snapshot(conv)
    with conv.stream("tell me a long story") as events:
        next(iter(events))
    assert events.turn is None and snapshot(conv) == before


@pytest.mark.parametrize("mode", ["server", "stateless"])
def test_function_calling(convos: cs.Conversations, emulator: Emulator, mode: str) -> None:
    conv = convos.create(tenant="acme", mode=mode, tools=[WEATHER_TOOL])
    asked = conv.send("call get_weather for Paris")
    assert asked.status == "requires_action"
    (call,) = asked.function_calls
    assert call.name == "get_weather"
    assert any(s["type"] == "thought" and s.get("signature") for s in asked.steps)
    answer = conv.send(
        [{"type": "function_result", "call_id": call.id, "name": call.name, "result": {"c": 21}}]
    )
    assert answer.status == "completed"
    assert 'Result of get_weather: {"c":21}' in answer.text
    thoughts = [s for s in conv.history() if s["type"] == "thought"]
    assert thoughts == [s for s in asked.steps if s["type"] == "thought"]  # verbatim


def test_function_result_without_call_is_rejected_before_sending(
    convos: cs.Conversations, emulator: Emulator
) -> None:
    conv = convos.create(tenant="acme")
    conv.send(DOGS)
    before, sent = snapshot(conv), len(emulator.requests)
    with pytest.raises(cs.ValidationError, match="call_7"):
        conv.send([{"type": "function_result", "call_id": "call_7", "result": {}}])
    assert snapshot(conv) == before and len(emulator.requests) == sent


def test_multimodal_input_recorded_verbatim(convos: cs.Conversations) -> None:
    parts = [
        {"type": "text", "text": "What is in this picture? 🐕"},
        {"type": "image", "uri": "gs://bucket/dogs.png", "mime_type": "image/png"},
        {"type": "document", "data": "JVBERi0xLjQ=", "mime_type": "application/pdf", "x": 1},
    ]
    conv = convos.create(tenant="acme")
    turn = conv.send(parts)
    assert turn.input_steps == [{"type": "user_input", "content": parts}]
    assert conv.history()[0] == {"type": "user_input", "content": parts}


def test_idempotent_retry_sends_nothing(convos: cs.Conversations, emulator: Emulator) -> None:
    conv = convos.create(tenant="acme")
    first = conv.send(DOGS, idempotency_key="msg-1")
    sent = len(emulator.requests)
    again = conv.send(DOGS, idempotency_key="msg-1")
    assert len(emulator.requests) == sent
    assert again.replayed and not first.replayed
    assert (again.seq, again.interaction_id, again.text) == (1, first.interaction_id, first.text)
    assert conv.refresh().turn_count == 1


def test_concurrent_senders_conflict_then_retry(store_url: str, emulator: Emulator) -> None:
    if store_url == "memory://":
        store_url = "memory://concurrent-senders"
    with opened(store_url, emulator) as setup:
        conv_id = setup.create(tenant="acme", mode="server").id
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    results: list[cs.Turn] = []

    def worker(policy: str, text: str) -> None:
        with opened(store_url, emulator) as convos:
            conv = convos.get(conv_id, tenant="acme")
            barrier.wait()
            try:
                results.append(conv.send(text, on_conflict=policy))  # type: ignore[arg-type]
            except BaseException as exc:
                errors.append(exc)

    emulator.delay(0.2, times=2)  # both plan against version 0 before either commits
    threads = [
        threading.Thread(target=worker, args=("raise", "first")),
        threading.Thread(target=worker, args=("raise", "second")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and len(errors) == 1
    assert isinstance(errors[0], cs.ConcurrentTurnError)

    threads = [threading.Thread(target=worker, args=("retry", f"r{i}")) for i in range(2)]
    emulator.delay(0.2, times=2)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(errors) == 1
    with opened(store_url, emulator) as convos:
        turns = convos.get(conv_id, tenant="acme").turns()
    assert [t.seq for t in turns] == [1, 2, 3]
    for before, after in itertools.pairwise(turns):
        assert after.previous_interaction_id == before.interaction_id  # one linear chain


RESUME_SCRIPT = """
import json, sys
import convostore as cs
store_url, base_url, conv_id, text = sys.argv[1:5]
client = cs.InteractionsClient(api_key="k", base_url=base_url, max_retries=0)
with cs.Conversations(store_url, client) as convos:
    if conv_id == "-":
        conv = convos.create(tenant="acme", mode="server")
    else:
        conv = convos.get(conv_id, tenant="acme")
    turn = conv.send(text)
    print(json.dumps({"id": conv.id, "interaction": turn.interaction_id,
                      "previous": turn.record.previous_interaction_id, "text": turn.text}))
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_resume_in_a_new_process(
    backend: str, request: pytest.FixtureRequest, tmp_path: Any, emulator: Emulator
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'resume.db'}"
    else:
        from convostore import _migrate

        url = request.getfixturevalue("postgres_url")
        _migrate.upgrade(url)

    def run(conv_id: str, text: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", RESUME_SCRIPT, url, emulator.url, conv_id, text],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    one = run("-", DOGS)
    two = run(one["id"], PAWS)
    assert two["previous"] == one["interaction"]
    assert parse_answer(two["text"])[:1] == (2,)
    with opened(url, emulator) as c:
        conv = c.get(one["id"], tenant="acme")
        assert len(conv.history()) == 4 and conv.record.head_interaction_id == two["interaction"]


def test_async_twin(store_url: str, emulator: Emulator) -> None:
    async def main() -> tuple[str, str, int]:
        client = cs.AsyncInteractionsClient(api_key=KEY, base_url=emulator.url)
        async with cs.AsyncConversations(store_url, client) as convos:
            conv = await convos.create(tenant="acme", mode="auto")
            await conv.send(DOGS)
            async with conv.stream(PAWS) as events:
                text = "".join([t async for t in events.text_deltas()])
            assert events.turn is not None
            again = await convos.get(conv.id, tenant="acme")
            turns = await again.turns()
        await client.aclose()
        return text, events.turn.text, len(turns)

    streamed, committed, count = asyncio.run(main())
    assert streamed == committed and count == 2


# ---------------------------------------------------------------------------- bad input


def test_bad_input_changes_nothing(convos: cs.Conversations, emulator: Emulator) -> None:
    conv = convos.create(tenant="acme", mode="server")
    conv.send(DOGS)
    before, sent = snapshot(conv), len(emulator.requests)
    bad_calls = [
        lambda: conv.send(""),
        lambda: conv.send([]),
        lambda: conv.send({"type": "hologram"}),
        lambda: conv.send(DOGS, idempotency_key="bad key with spaces"),
        lambda: conv.send(DOGS, on_conflict="maybe"),  # type: ignore[arg-type]
        lambda: conv.update(mode="sometimes"),
        lambda: conv.update(generation_config={"temperature": float("nan")}),
        lambda: conv.update(store=False),
        lambda: conv.fork(at_turn=5),
    ]
    for call in bad_calls:
        with pytest.raises(cs.ValidationError):
            call()
    assert snapshot(conv) == before and len(emulator.requests) == sent


def test_create_rejects_bad_settings(convos: cs.Conversations) -> None:
    tenant = f"t{uuid.uuid4().hex}"
    for kwargs in (
        {"tenant": tenant, "mode": "sometimes"},
        {"tenant": "a'b"},
        {"tenant": 42},
        {"tenant": tenant, "generation_config": {"x": object()}},
        {"tenant": tenant, "settings": {"previous_interaction_id": "x"}},
        {"tenant": tenant, "model": ""},
        {"tenant": tenant, "ttl": timedelta(seconds=-1)},
    ):
        with pytest.raises(cs.ValidationError):
            convos.create(**kwargs)  # type: ignore[arg-type]
    assert convos.list(tenant=tenant).items == []


def test_other_tenant_and_deleted_conversation(
    convos: cs.Conversations, emulator: Emulator
) -> None:
    conv = convos.create(tenant="acme")
    conv.send(DOGS)
    with pytest.raises(cs.ConversationNotFound):
        convos.get(conv.id, tenant="evil")
    assert convos.delete(conv.id, tenant="evil").deleted is False
    assert len(convos.get(conv.id, tenant="acme").history()) == 2
    assert convos.delete(conv.id, tenant="acme").deleted
    sent = len(emulator.requests)
    with pytest.raises(cs.ConversationNotFound):
        conv.send(PAWS)
    assert len(emulator.requests) == sent


def test_delete_remote_erases_server_copies(convos: cs.Conversations, emulator: Emulator) -> None:
    conv = convos.create(tenant="acme", mode="server")
    ids = [conv.send(t).interaction_id for t in (DOGS, PAWS)]
    report = convos.delete(conv.id, tenant="acme", remote=True)
    assert report.deleted and sorted(report.remote_deleted) == sorted(ids)
    assert report.remote_failed == {}
    for interaction_id in ids:
        assert interaction_id not in emulator.interactions
    assert convos.delete(conv.id, tenant="acme").deleted is False


def test_usage_totals(convos: cs.Conversations) -> None:
    conv = convos.create(tenant="acme")
    turns = [conv.send(t) for t in (DOGS, PAWS)]
    totals = conv.usage()
    assert totals["total_tokens"] == sum((t.usage or {})["total_tokens"] for t in turns)


def test_replayed_history_read_once_still_sees_other_writers(
    convos: cs.Conversations, emulator: Emulator
) -> None:
    """A conversation object reads only the new steps for its next replayed turn, and the
    turns another object (another worker) committed meanwhile are in the body all the same:
    its stale plan is refused before anything is sent, and planned again."""
    mine = convos.create(tenant="t", mode="stateless")
    mine.send("one")
    mine.send("two")
    other = convos.get(mine.id, tenant="t")
    other.send("three")
    posts = len(creates(emulator))
    mine.send("four")
    bodies = creates(emulator)
    assert len(bodies) == posts + 1  # the refused plan sent nothing
    texts = [
        part["text"]
        for step in bodies[-1]["input"]
        if step["type"] == "user_input"
        for part in step["content"]
    ]
    assert texts == ["one", "two", "three", "four"]
    assert [s["type"] for s in bodies[-1]["input"]] == ["user_input", "model_output"] * 3 + [
        "user_input"
    ]
    assert mine.history() == other.history() and len(mine.history()) == 8

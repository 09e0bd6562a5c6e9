"""The official ``google-genai`` SDK, unchanged, against the emulator over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

genai = pytest.importorskip("google.genai")

from google.genai import _interactions as sdk_errors  # noqa: E402
from google.genai import types  # noqa: E402

from convostore.emulator import Emulator, parse_answer  # noqa: E402
from convostore.models import parse_step, to_wire  # noqa: E402

MODEL = "gemini-3-flash-preview"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture
def client(emulator: Emulator) -> Iterator[Any]:
    sdk = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(
            base_url=emulator.url, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    yield sdk
    sdk.close()


def dump(steps: Any) -> list[dict[str, Any]]:
    return [step.model_dump(mode="json") for step in steps]


def test_unary_create(emulator: Emulator, client: Any) -> None:
    interaction = client.interactions.create(model=MODEL, input="Hello there")
    assert interaction.status == "completed"
    assert interaction.id.startswith("v1_")
    n, _, latest = parse_answer(interaction.output_text)
    assert (n, latest) == (1, "Hello there")
    assert interaction.usage.total_tokens > 0
    sent = emulator.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/interactions")
    assert sent.headers["x-goog-api-key"] == "test-key"
    assert sent.body == {"model": MODEL, "input": "Hello there"}


def test_streaming_create(client: Any) -> None:
    events = list(client.interactions.create(model=MODEL, input="think up a story", stream=True))
    kinds = [event.event_type for event in events]
    assert kinds[0] == "interaction.created" and kinds[-1] == "interaction.completed"
    assert kinds.count("step.start") == kinds.count("step.stop") == 2
    text = "".join(
        event.delta.text
        for event in events
        if event.event_type == "step.delta" and event.delta.type == "text"
    )
    final = events[-1].interaction
    assert final.status == "completed"
    assert dump(final.steps)[-1]["content"][0]["text"] == text
    assert parse_answer(text)[2] == "think up a story"
    assert events[3].event_id == "3"


def test_chain_get_delete_and_not_found(client: Any) -> None:
    first = client.interactions.create(model=MODEL, input="I have 2 dogs.")
    second = client.interactions.create(
        model=MODEL, input="How many paws?", previous_interaction_id=first.id, store=True
    )
    assert second.previous_interaction_id == first.id
    assert parse_answer(second.output_text)[0] == 2
    fetched = client.interactions.get(second.id)
    assert [s["type"] for s in dump(fetched.steps)] == ["user_input", "model_output"]
    assert fetched.status == "completed"
    assert client.interactions.delete(first.id) is None
    with pytest.raises(sdk_errors.NotFoundError) as caught:
        client.interactions.get(first.id)
    assert caught.value.status_code == 404
    assert caught.value.body["error"]["code"] == "not_found"
    with pytest.raises(sdk_errors.NotFoundError):
        client.interactions.create(model=MODEL, input="again", previous_interaction_id=second.id)


def test_stateless_replay_matches_the_chain(client: Any) -> None:
    first = client.interactions.create(model=MODEL, input="Hi, I'm Phil")
    chained = client.interactions.create(
        model=MODEL, input="What's my name?", previous_interaction_id=first.id
    )
    history = [
        {"type": "user_input", "content": [{"type": "text", "text": "Hi, I'm Phil"}]},
        *dump(first.steps),
        {"type": "user_input", "content": [{"type": "text", "text": "What's my name?"}]},
    ]
    replayed = client.interactions.create(model=MODEL, input=history, store=False)
    assert parse_answer(replayed.output_text) == parse_answer(chained.output_text)
    with pytest.raises(sdk_errors.NotFoundError):
        client.interactions.get(replayed.id)


def test_function_calling_round_trip(client: Any) -> None:
    asked = client.interactions.create(
        model=MODEL, input="Weather in Paris? call get_weather", tools=TOOLS
    )
    assert asked.status == "requires_action"
    call = dump(asked.steps)[-1]
    assert call["type"] == "function_call" and call["arguments"] == {"city": "Paris"}
    answered = client.interactions.create(
        model=MODEL,
        input=[{"type": "function_result", "call_id": call["id"], "result": {"temp_c": 21}}],
        previous_interaction_id=asked.id,
        tools=TOOLS,
    )
    assert answered.output_text.endswith('Result of get_weather: {"temp_c":21}')


def test_tool_search_steps_are_typed_by_the_sdk(client: Any) -> None:
    tools = [{"type": "tool_search"}, *TOOLS]
    asked = client.interactions.create(model=MODEL, input="call get_weather in Oslo", tools=tools)
    kinds = [type(step).__name__ for step in asked.steps]
    assert kinds == [
        "ToolSearchCallStep",
        "ToolSearchResultStep",
        "ThoughtStep",
        "FunctionCallStep",
    ]
    assert asked.steps[0].arguments.function_names == ["get_weather"]
    assert asked.steps[1].result[0].name == "get_weather"
    events = list(
        client.interactions.create(
            model=MODEL, input="call get_weather in Oslo", tools=tools, stream=True
        )
    )
    deltas = [type(e.delta).__name__ for e in events if e.event_type == "step.delta"]
    assert deltas[:2] == ["ToolSearchCallDelta", "ToolSearchResultDelta"]
    replay = [
        {"type": "user_input", "content": [{"type": "text", "text": "call get_weather in Oslo"}]},
        *dump(asked.steps),
        {"type": "function_result", "call_id": asked.steps[-1].id, "result": "cold"},
    ]
    done = client.interactions.create(model=MODEL, input=replay, tools=tools, store=False)
    assert done.output_text.endswith('Result of get_weather: "cold"')


def test_replayed_call_with_a_forged_signature_is_a_bad_request(client: Any) -> None:
    asked = client.interactions.create(
        model=MODEL, input="call get_weather in Oslo", tools=TOOLS, store=False
    )
    thought, call = dump(asked.steps)
    history = [
        {"type": "user_input", "content": [{"type": "text", "text": "call get_weather in Oslo"}]},
        {**thought, "signature": "Zm9yZ2Vk"},
        call,
        {"type": "function_result", "call_id": call["id"], "result": "cold"},
    ]
    with pytest.raises(sdk_errors.BadRequestError) as caught:
        client.interactions.create(model=MODEL, input=history, tools=TOOLS, store=False)
    assert caught.value.body["error"]["code"] == "invalid_request"


def test_rate_limit_surfaces_as_the_sdk_error(emulator: Emulator, client: Any) -> None:
    emulator.fail(429, retry_after_ms=1)
    with pytest.raises(sdk_errors.RateLimitError):
        client.interactions.create(model=MODEL, input="hi")


def test_convostore_models_are_accepted_as_input(client: Any) -> None:
    first = client.interactions.create(model=MODEL, input="think about cats", store=False)
    raw = [
        {"type": "user_input", "content": [{"type": "text", "text": "think about cats"}]},
        *dump(first.steps),
        {"type": "user_input", "content": [{"type": "text", "text": "and dogs?"}], "x_meta": 1},
    ]
    wire = [to_wire(parse_step(step)) for step in raw]
    assert wire == raw
    replayed = client.interactions.create(model=MODEL, input=wire, store=False)
    n, _, latest = parse_answer(replayed.output_text)
    assert (n, latest) == (2, "and dogs?")


def test_async_client(client: Any) -> None:
    async def scenario() -> tuple[str, list[str], str]:
        try:
            return await steps()
        finally:
            await client.aio.aclose()  # before the loop closes, or its sockets leak

    async def steps() -> tuple[str, list[str], str]:
        first = await client.aio.interactions.create(model=MODEL, input="async hello")
        events = [
            event.event_type
            async for event in await client.aio.interactions.create(
                model=MODEL, input="streamed", previous_interaction_id=first.id, stream=True
            )
        ]
        fetched = await client.aio.interactions.get(first.id)
        await client.aio.interactions.delete(first.id)
        try:
            await client.aio.interactions.get(first.id)
        except sdk_errors.NotFoundError:
            return fetched.output_text, events, "gone"
        return fetched.output_text, events, "still there"

    text, events, after_delete = asyncio.run(scenario())
    assert parse_answer(text)[2] == "async hello"
    assert events[0] == "interaction.created" and events[-1] == "interaction.completed"
    assert after_delete == "gone"


def test_background_cancel_and_get_stream_resume(emulator: Emulator, client: Any) -> None:
    emulator.background_seconds = 60
    running = client.interactions.create(model=MODEL, input="slow one", background=True)
    assert running.status == "in_progress"
    assert client.interactions.cancel(running.id).status == "cancelled"
    with pytest.raises(sdk_errors.BadRequestError):
        client.interactions.cancel(running.id)
    streamed = list(client.interactions.create(model=MODEL, input="a story", stream=True))
    iid = streamed[0].interaction.id
    replay = list(client.interactions.get(iid, stream=True))
    assert [e.event_id for e in replay] == [e.event_id for e in streamed]
    resumed = list(client.interactions.get(iid, stream=True, last_event_id="2"))
    assert [e.event_id for e in resumed] == [e.event_id for e in streamed[3:]]
    with_input = client.interactions.get(iid, include_input=True)
    assert with_input.input == "a story"


def test_path_prefix_version_and_revision_header(emulator: Emulator) -> None:
    sdk = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(
            base_url=f"{emulator.url}/proxy/",
            api_version="v1beta",
            headers={"Api-Revision": "2026-05-20"},
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    try:
        made = sdk.interactions.create(model=MODEL, input="through a proxy")
        assert sdk.interactions.get(made.id).id == made.id
    finally:
        sdk.close()
    create_request, get_request = emulator.requests
    assert create_request.path == "/proxy/v1beta/interactions"
    assert create_request.headers["api-revision"] == "2026-05-20"
    assert get_request.path == f"/proxy/v1beta/interactions/{made.id}"


# ----------------------------------------------------------------------------- durable turns

LONG = "think, then tell a long story"


def stream_text(events: list[Any]) -> str:
    return "".join(
        event.delta.text
        for event in events
        if event.event_type == "step.delta" and event.delta.type == "text"
    )


def hop_posts(emulator: Emulator) -> list[dict[str, Any]]:
    return [r.body for r in emulator.requests if r.method == "POST"]


@pytest.mark.parametrize("store", [True, False])
def test_automatic_continuation_unary(emulator: Emulator, client: Any, store: bool) -> None:
    whole = client.interactions.create(model=MODEL, input=LONG, store=False)
    emulator.reset()
    emulator.decode_limit(50)
    merged = client.interactions.create(model=MODEL, input=LONG, store=store)
    assert merged.status == "completed"
    assert merged.output_text == whole.output_text
    assert dump(merged.steps)[0] == dump(whole.steps)[0]  # the thought, once
    posts = hop_posts(emulator)
    assert len(posts) == len(merged.continuation_ids) == 7  # 314 words, 50 a hop
    assert merged.id == merged.continuation_ids[-1]
    assert merged.usage.total_output_tokens == whole.usage.total_output_tokens
    assert posts[0] == {"model": MODEL, "input": LONG, "store": store}
    for after in posts[1:]:
        assert after["continuation_token"].startswith("ct_")
        if store:
            assert "input" not in after and after["previous_interaction_id"]
        else:
            assert after["input"] == LONG and after["store"] is False
    if store:
        final = client.interactions.get(merged.id)
        assert final.status == "completed"
        assert final.previous_interaction_id == merged.continuation_ids[-2]
        chained = client.interactions.create(
            model=MODEL, input="and then?", previous_interaction_id=merged.id
        )
        assert parse_answer(chained.output_text)[0] == 2
    else:
        with pytest.raises(sdk_errors.NotFoundError):
            client.interactions.get(merged.id)


@pytest.mark.parametrize("store", [True, False])
def test_automatic_continuation_streaming(emulator: Emulator, client: Any, store: bool) -> None:
    whole = client.interactions.create(model=MODEL, input=LONG, store=False)
    emulator.reset()
    emulator.decode_limit(80)
    events = list(client.interactions.create(model=MODEL, input=LONG, store=store, stream=True))
    assert stream_text(events) == whole.output_text
    assert events[-1].event_type == "interaction.completed"
    assert events[-1].interaction.status == "completed"
    hops = [e.interaction.id for e in events if e.event_type == "interaction.created"]
    assert len(hops) == len(hop_posts(emulator)) == 4
    tokens = [
        e for e in events if e.event_type == "interaction.status_update" and e.continuation_token
    ]
    assert [t.status for t in tokens] == ["requires_continuation"] * 3


def test_sdk_resumes_a_stream_cut_after_a_checkpoint(emulator: Emulator, client: Any) -> None:
    whole = client.interactions.create(model=MODEL, input=LONG, store=False)
    emulator.reset()
    emulator.checkpoint_every(4)
    emulator.cut_stream_after_checkpoint(3)
    events = list(client.interactions.create(model=MODEL, input=LONG, stream=True))
    assert stream_text(events) == whole.output_text  # nothing repeated, nothing lost
    assert events[-1].interaction.status == "completed"
    first, resumed = hop_posts(emulator)
    assert first["input"] == LONG and "continuation_token" not in first
    cut_id = events[0].interaction.id
    assert resumed["previous_interaction_id"] == cut_id and "input" not in resumed
    assert client.interactions.get(cut_id).status == "requires_continuation"
    final = events[-1].interaction.id
    assert client.interactions.get(final).previous_interaction_id == cut_id


def test_sdk_gives_up_after_three_reconnects_without_progress(
    emulator: Emulator, client: Any
) -> None:
    emulator.decode_limit(40)
    # stream faults apply in the order given: the first hop drops right after its final
    # requires_continuation token; every later hop drops before any new token
    emulator.cut_stream_after_checkpoint(1)
    emulator.cut_stream(after_events=2, times=10)
    with pytest.raises(genai.errors.ContinuationInterruptedError) as caught:
        list(client.interactions.create(model=MODEL, input=LONG, stream=True))
    posts = hop_posts(emulator)
    assert len(posts) == 1 + 4  # the first hop, then the token tried 1 + 3 times
    assert {p["continuation_token"] for p in posts[1:]} == {caught.value.continuation_token}


@pytest.mark.parametrize("status", ["failed", "incomplete", "budget_exceeded", "idle"])
def test_sdk_parses_every_status(emulator: Emulator, client: Any, status: str) -> None:
    emulator.next_status(status, errors=[{"code": "internal", "message": "boom"}])
    answered = client.interactions.create(model=MODEL, input="tell a long story")
    assert answered.status == status
    if status == "idle":  # not finished: errors belong to final statuses
        assert answered.errors is None
    else:
        assert answered.errors[0].message == "boom"
    emulator.next_status(status)
    events = list(client.interactions.create(model=MODEL, input="hi", stream=True))
    statuses = [e.status for e in events if e.event_type == "interaction.status_update"]
    assert statuses[0] in ("in_progress", status)
    if status != "idle":
        assert statuses[-1] == events[-1].interaction.status == status


def test_sdk_background_poll_and_cancel(emulator: Emulator, client: Any) -> None:
    emulator.background_seconds = 0.05
    emulator.decode_limit(10)  # the service continues background work itself
    started = client.interactions.create(model=MODEL, input="tell a long story", background=True)
    assert started.status == "in_progress"
    polled = started
    for _ in range(500):
        polled = client.interactions.get(started.id)
        if polled.status != "in_progress":
            break
    assert polled.status == "completed"
    assert len(polled.output_text.split()) == 312
    streamed = list(client.interactions.get(started.id, stream=True))
    assert stream_text(streamed) == polled.output_text
    emulator.background_seconds = 60
    slow = client.interactions.create(model=MODEL, input="slow", background=True)
    live = client.interactions.get(slow.id, stream=True)
    assert next(iter(live)).event_type == "interaction.created"
    cancelled = client.interactions.cancel(slow.id)
    assert cancelled.status == "cancelled"
    assert [e.event_type for e in live][-1] == "interaction.completed"
    live.close()
    with pytest.raises(sdk_errors.BadRequestError) as caught:
        client.interactions.cancel(slow.id)
    assert caught.value.body["error"]["code"] == "failed_precondition"

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

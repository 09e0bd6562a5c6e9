"""The emulator over real HTTP (loopback), driven with plain httpx."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from convostore import ValidationError
from convostore.emulator import Emulator, parse_answer

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    }
]


@pytest.fixture
def http(emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=emulator.url, headers={"x-goog-api-key": "test-key"}, timeout=10
    ) as client:
        yield client


def create(http: httpx.Client, expect: int = 200, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "m")
    response = http.post("/v1/interactions", json=body)
    assert response.status_code == expect, response.text
    assert response.headers["content-type"] == "application/json"
    result: dict[str, Any] = response.json()
    return result


def error_code(http: httpx.Client, status: int, **body: Any) -> str:
    return str(create(http, status, **body)["error"]["code"])


def user(text: str) -> dict[str, Any]:
    return {"type": "user_input", "content": [{"type": "text", "text": text}]}


def answer(interaction: dict[str, Any]) -> tuple[int, str, str]:
    outputs = [s for s in interaction["steps"] if s["type"] == "model_output"]
    return parse_answer(outputs[-1]["content"][0]["text"])


def sse(text: str) -> list[dict[str, Any]]:
    """Parse an SSE body strictly: every frame has event:, id: and data: lines that agree."""
    assert text.endswith("\n\n")
    events = []
    for frame in text.strip("\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(fields) == {"event", "id", "data"}, frame
        data = json.loads(fields["data"])
        assert data["event_type"] == fields["event"]
        assert data["event_id"] == fields["id"]
        events.append(data)
    return events


def stream(http: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    body.setdefault("model", "m")
    with http.stream("POST", "/v1/interactions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        return sse(response.read().decode())


# ----------------------------------------------------------------------------- routes


@pytest.mark.parametrize("prefix", ["/v1", "/v1beta", "/some/prefix/v1alpha"])
def test_every_route_under_any_version_and_prefix(
    emulator: Emulator, http: httpx.Client, prefix: str
) -> None:
    emulator.background_seconds = 60
    created = http.post(f"{prefix}/interactions?alt=sse&foo=1", json={"model": "m", "input": "a"})
    assert created.status_code == 200
    assert created.headers["content-type"] == "application/json"
    iid = created.json()["id"]
    got = http.get(f"{prefix}/interactions/{iid}", params={"stream": "false", "alt": "json"})
    assert got.status_code == 200 and got.json()["id"] == iid
    background = http.post(
        f"{prefix}/interactions", json={"model": "m", "input": "b", "background": True}
    ).json()
    cancelled = http.post(f"{prefix}/interactions/{background['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    deleted = http.delete(f"{prefix}/interactions/{iid}")
    assert deleted.status_code == 200 and deleted.json() == {}
    assert deleted.headers["content-type"] == "application/json"
    gone = http.get(f"{prefix}/interactions/{iid}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/json"
    assert gone.json()["error"]["code"] == "not_found"


def test_unknown_route_and_method_answer_json_errors(http: httpx.Client) -> None:
    missing = http.get("/v1/models")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = http.put("/v1/interactions", json={})
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_response_shape_ids_and_timestamps(http: httpx.Client) -> None:
    body = create(http, input="hello", previous_interaction_id=None)
    assert re.fullmatch(r"v1_[A-Za-z0-9_-]{20,}", body["id"])
    assert body["object"] == "interaction" and body["status"] == "completed"
    assert body["model"] == "m"
    for key in ("created", "updated"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body[key])
    assert "previous_interaction_id" not in body
    assert [s["type"] for s in body["steps"]] == ["model_output"]
    assert answer(body) == (1, answer(body)[1], "hello")
    usage = body["usage"]
    assert usage["total_tokens"] == (
        usage["total_input_tokens"] + usage["total_output_tokens"] + usage["total_thought_tokens"]
    )


def test_api_key_required_in_any_accepted_form(emulator: Emulator) -> None:
    url = f"{emulator.url}/v1/interactions"
    body = {"model": "m", "input": "hi"}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "authentication"
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer t"}).status_code == 200
    assert httpx.post(url, json=body, params={"key": "k"}).status_code == 200
    with_revision = httpx.post(
        url, json=body, headers={"x-goog-api-key": "k", "Api-Revision": "2026-05-20"}
    )
    assert with_revision.status_code == 200
    emulator.require_api_key = False
    assert httpx.post(url, json=body).status_code == 200
    emulator.reset()
    assert httpx.post(url, json=body).status_code == 401


# ----------------------------------------------------------------------------- state


def test_chain_resolves_every_stored_turn_and_get_shows_the_timeline(http: httpx.Client) -> None:
    first = create(http, input="one")
    second = create(http, input="two", previous_interaction_id=first["id"])
    third = create(http, input="three", previous_interaction_id=second["id"])
    assert third["previous_interaction_id"] == second["id"]
    assert answer(third)[0] == 3 and answer(third)[2] == "three"
    timeline = http.get(f"/v1/interactions/{second['id']}").json()
    assert timeline["steps"] == [user("two"), *second["steps"]]
    assert "input" not in timeline
    with_input = http.get(f"/v1/interactions/{second['id']}", params={"include_input": "true"})
    assert with_input.json()["input"] == "two"


def test_same_history_by_chain_and_by_replay_gives_same_digest(http: httpx.Client) -> None:
    system = "You are a cat."
    first = create(http, input="I have 2 dogs.", system_instruction=system)
    second = create(
        http, input="think: paws?", previous_interaction_id=first["id"], system_instruction=system
    )
    chained = create(
        http, input="And cats?", previous_interaction_id=second["id"], system_instruction=system
    )
    history = [user("I have 2 dogs."), *first["steps"], user("think: paws?"), *second["steps"]]
    assert second["steps"][0]["type"] == "thought"
    assert second["usage"]["total_thought_tokens"] > 0
    assert first["usage"]["total_thought_tokens"] == 0
    replayed = create(
        http, input=[*history, user("And cats?")], store=False, system_instruction=system
    )
    assert answer(chained) == answer(replayed)
    assert answer(chained)[0] == 3
    other_system = create(http, input=[*history, user("And cats?")], store=False)
    assert answer(other_system)[1] != answer(chained)[1]
    assert chained["usage"]["total_cached_tokens"] > 0
    assert replayed["usage"]["total_cached_tokens"] == 0
    assert chained["usage"]["total_input_tokens"] == replayed["usage"]["total_input_tokens"]


def test_interaction_scoped_config_is_not_inherited(http: httpx.Client) -> None:
    first = create(http, input="hi", system_instruction="Be terse.", tools=TOOLS)
    chained = create(http, input="call get_weather for Rome", previous_interaction_id=first["id"])
    assert chained["status"] == "completed"  # no tools on this turn, so no call
    replayed = create(http, input=[user("hi"), *first["steps"], user("call get_weather for Rome")])
    assert answer(chained)[1] == answer(replayed)[1]  # system_instruction not inherited either


def test_store_false_persists_nothing(emulator: Emulator, http: httpx.Client) -> None:
    before = len(emulator.interactions)
    body = create(http, input="secret", store=False)
    assert len(emulator.interactions) == before
    assert http.get(f"/v1/interactions/{body['id']}").status_code == 404
    assert error_code(http, 404, input="x", previous_interaction_id=body["id"]) == "not_found"


def test_chain_with_store_false_reads_context_and_stores_nothing(
    emulator: Emulator, http: httpx.Client
) -> None:
    first = create(http, input="remember 7")
    before = len(emulator.interactions)
    body = create(http, input="which number?", previous_interaction_id=first["id"], store=False)
    assert answer(body)[0] == 2
    assert len(emulator.interactions) == before
    assert body["id"] not in emulator.interactions


def test_unknown_deleted_and_expired_ids_are_not_found(
    emulator: Emulator, http: httpx.Client
) -> None:
    assert error_code(http, 404, input="x", previous_interaction_id="v1_unknown") == "not_found"
    deleted = create(http, input="a")
    assert http.delete(f"/v1/interactions/{deleted['id']}").status_code == 200
    assert http.delete(f"/v1/interactions/{deleted['id']}").status_code == 404
    assert error_code(http, 404, input="x", previous_interaction_id=deleted["id"]) == "not_found"
    kept, expired = create(http, input="k"), create(http, input="e")
    child = create(http, input="c", previous_interaction_id=expired["id"])
    emulator.expire(expired["id"])
    assert http.get(f"/v1/interactions/{expired['id']}").status_code == 404
    assert http.get(f"/v1/interactions/{kept['id']}").status_code == 200
    assert expired["id"] not in emulator.interactions
    # a chain through an expired turn is broken too
    assert error_code(http, 404, input="x", previous_interaction_id=child["id"]) == "not_found"
    emulator.expire()
    assert http.get(f"/v1/interactions/{kept['id']}").status_code == 404


def test_retention_expires_old_interactions(emulator: Emulator, http: httpx.Client) -> None:
    body = create(http, input="old")
    assert http.get(f"/v1/interactions/{body['id']}").status_code == 200
    emulator.retention = timedelta(0)
    assert http.get(f"/v1/interactions/{body['id']}").status_code == 404
    assert error_code(http, 404, input="x", previous_interaction_id=body["id"]) == "not_found"


def test_retention_option_of_a_dedicated_emulator() -> None:
    with Emulator(retention=0.0, require_api_key=False) as emu:
        body = httpx.post(f"{emu.url}/v1/interactions", json={"model": "m", "input": "a"}).json()
        assert httpx.get(f"{emu.url}/v1/interactions/{body['id']}").status_code == 404
        assert dict(emu.interactions) == {}


def test_interactions_view_is_read_only_snapshot(emulator: Emulator, http: httpx.Client) -> None:
    body = create(http, input="view me", system_instruction="S", tools=TOOLS)
    stored = emulator.interactions[body["id"]]
    assert stored["input_steps"] == [user("view me")]
    assert stored["steps"] == [user("view me"), *body["steps"]]
    assert stored["config"] == {"system_instruction": "S", "tools": TOOLS}
    assert stored["created"] == body["created"] and stored["previous_interaction_id"] is None
    child = create(http, input="child", previous_interaction_id=body["id"])
    assert emulator.interactions[child["id"]]["previous_interaction_id"] == body["id"]
    assert child["id"] in emulator.interactions and "v1_nope" not in emulator.interactions
    with pytest.raises(TypeError):
        emulator.interactions[body["id"]] = {}  # type: ignore[index]
    stored["steps"].clear()
    assert emulator.interactions[body["id"]]["steps"]


def test_echo_user_input_switch(emulator: Emulator, http: httpx.Client) -> None:
    emulator.echo_user_input = True
    echoed = create(http, input="echo me")
    assert echoed["steps"][0] == user("echo me")
    assert echoed["steps"][1]["type"] == "model_output"
    events = stream(http, input="not in streams")
    completed = events[-1]["interaction"]
    assert [s["type"] for s in completed["steps"]] == ["model_output"]
    emulator.reset()
    assert [s["type"] for s in create(http, input="x")["steps"]] == ["model_output"]


# ----------------------------------------------------------------------------- input forms


def test_input_forms_normalise_to_user_input_steps(emulator: Emulator, http: httpx.Client) -> None:
    text = {"type": "text", "text": "one part"}
    image = {"type": "image", "uri": "gs://b/cat.png", "mime_type": "image/png"}
    single = create(http, input=text)
    assert emulator.interactions[single["id"]]["input_steps"] == [
        {"type": "user_input", "content": [text]}
    ]
    several = create(http, input=[text, image])
    assert emulator.interactions[several["id"]]["input_steps"] == [
        {"type": "user_input", "content": [text, image]}
    ]
    odd = [
        {"type": "user_input", "content": [text], "x_extra": {"kept": True}},
        {"type": "future_step", "payload": [1, 2]},
        {"type": "model_output", "content": [{"type": "hologram", "depth": 3}]},
        user("last"),
    ]
    verbatim = create(http, input=odd)
    assert emulator.interactions[verbatim["id"]]["input_steps"] == odd
    assert http.get(f"/v1/interactions/{verbatim['id']}").json()["steps"][:4] == odd
    assert answer(verbatim)[0] == 2


@pytest.mark.parametrize(
    "bad_input",
    [None, 123, [], [1, 2], {"text": "no type"}, [{"type": "text", "text": "a"}, user("b")]],
)
def test_input_of_wrong_shape_is_rejected_and_nothing_stored(
    emulator: Emulator, http: httpx.Client, bad_input: Any
) -> None:
    before = len(emulator.interactions)
    body: dict[str, Any] = {} if bad_input is None else {"input": bad_input}
    assert error_code(http, 400, **body) == "invalid_request"
    assert len(emulator.interactions) == before


# ----------------------------------------------------------------------------- validation


def test_missing_model_and_agent_is_invalid(emulator: Emulator, http: httpx.Client) -> None:
    before = len(emulator.interactions)
    response = http.post("/v1/interactions", json={"input": "hi"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert len(emulator.interactions) == before
    assert create(http, input="hi", model=None, agent="deep-research")["agent"] == "deep-research"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"temperature": 0.2}, "parameter_unknown"),
        ({"store": "yes"}, "invalid_request"),
        ({"system_instruction": ["a"]}, "invalid_request"),
        ({"tools": {"type": "function"}}, "invalid_request"),
        ({"background": True, "store": False}, "invalid_request"),
    ],
)
def test_bad_fields_are_rejected(
    emulator: Emulator, http: httpx.Client, body: dict[str, Any], code: str
) -> None:
    before = len(emulator.interactions)
    assert error_code(http, 400, input="hi", **body) == code
    assert len(emulator.interactions) == before


def test_unknown_fields_switch(emulator: Emulator, http: httpx.Client) -> None:
    emulator.reject_unknown_fields = False
    assert create(http, input="hi", temperature=0.2)["status"] == "completed"


def test_non_json_body_is_invalid(http: httpx.Client) -> None:
    response = http.post(
        "/v1/interactions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def function_call_turn(http: httpx.Client, **body: Any) -> dict[str, Any]:
    made = create(http, input="What's the weather in Paris? call get_weather", tools=TOOLS, **body)
    assert made["status"] == "requires_action"
    assert [s["type"] for s in made["steps"]] == ["thought", "function_call"]
    call = made["steps"][1]
    assert call["id"] == "call_1" and call["name"] == "get_weather"
    assert call["arguments"] == {"city": "Paris", "days": 1}
    assert made["steps"][0]["signature"] and made["steps"][0]["summary"]
    return made


def test_function_call_round_trip_by_chain(http: httpx.Client) -> None:
    made = function_call_turn(http)
    result = {"type": "function_result", "call_id": "call_1", "name": "get_weather"}
    done = create(
        http,
        input=[{**result, "result": {"temp_c": 21}}],
        previous_interaction_id=made["id"],
        tools=TOOLS,
    )
    text = done["steps"][-1]["content"][0]["text"]
    assert text.endswith('Result of get_weather: {"temp_c":21}')
    assert answer(done)[0] == 1


def test_function_call_round_trip_by_replay(http: httpx.Client) -> None:
    made = function_call_turn(http, store=False)
    history = [user("What's the weather in Paris? call get_weather"), *made["steps"]]
    result = {"type": "function_result", "call_id": "call_1", "result": "sunny"}
    done = create(http, input=[*history, result], tools=TOOLS, store=False)
    assert done["steps"][-1]["content"][0]["text"].endswith('Result of get_weather: "sunny"')


def test_a_declared_tool_search_finds_the_function_first(http: httpx.Client) -> None:
    tools = [{"type": "tool_search"}, *TOOLS]
    made = create(http, input="call get_weather in Oslo", tools=tools)
    search, found, thought, call = made["steps"]
    assert search == {
        "type": "tool_search_call",
        "id": "search_1",
        "arguments": {"function_names": ["get_weather"]},
        "signature": search["signature"],
    }
    assert found == {
        "type": "tool_search_result",
        "call_id": "search_1",
        "result": [TOOLS[0]],
        "signature": found["signature"],
    }
    assert (thought["type"], call["type"], made["status"]) == (
        "thought",
        "function_call",
        "requires_action",
    )
    result = {"type": "function_result", "call_id": call["id"], "result": "cold"}
    chained = create(http, input=[result], previous_interaction_id=made["id"], tools=tools)
    history = [user("call get_weather in Oslo"), *made["steps"], result]
    replayed = create(http, input=history, tools=tools, store=False)
    assert answer(chained) == answer(replayed)
    # client-side tool search is not emulated: no search steps
    client_side = [{"type": "tool_search", "execution": "client"}, *TOOLS]
    plain = create(http, input="call get_weather in Oslo", tools=client_side)
    assert [s["type"] for s in plain["steps"]] == ["thought", "function_call"]
    events = stream(http, input="call get_weather in Oslo", tools=tools)
    deltas = [e["delta"] for e in events if e["event_type"] == "step.delta"]
    assert deltas[0] == {
        "type": "tool_search_call",
        "arguments": {"function_names": ["get_weather"]},
        "signature": search["signature"],
    }
    assert deltas[1] == {
        "type": "tool_search_result",
        "result": [TOOLS[0]],
        "signature": found["signature"],
    }
    starts = [e["step"] for e in events if e["event_type"] == "step.start"]
    assert starts[:2] == [
        {"type": "tool_search_call", "id": "search_1", "arguments": {}},
        {"type": "tool_search_result", "call_id": "search_1"},
    ]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h: [h[0], h[2]], id="thought-missing"),
        pytest.param(lambda h: [h[0], {**h[1], "signature": "AAAA"}, h[2]], id="bad-signature"),
        pytest.param(
            lambda h: [h[0], {k: v for k, v in h[1].items() if k != "signature"}, h[2]],
            id="signature-removed",
        ),
        pytest.param(
            lambda h: [h[0], h[1], {**h[2], "arguments": {"city": "Rome", "days": 1}}],
            id="arguments-altered",
        ),
    ],
)
def test_replayed_call_without_its_signed_thought_is_rejected(
    http: httpx.Client, mutate: Any
) -> None:
    made = function_call_turn(http, store=False)
    history = mutate([user("What's the weather in Paris? call get_weather"), *made["steps"]])
    result = {"type": "function_result", "call_id": "call_1", "result": "sunny"}
    body = create(http, 400, input=[*history, result], tools=TOOLS, store=False)
    assert body["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("case", ["no-call", "wrong-id", "not-right-after"])
def test_function_result_must_follow_its_call(http: httpx.Client, case: str) -> None:
    made = function_call_turn(http, store=False)
    history = [user("What's the weather in Paris? call get_weather"), *made["steps"]]
    result = {"type": "function_result", "call_id": "call_1", "result": "sunny"}
    if case == "no-call":
        steps = [user("hi"), result]
    elif case == "wrong-id":
        steps = [*history, {**result, "call_id": "call_9"}]
    else:
        steps = [*history, user("well?"), result]
    body = create(http, 400, input=steps, tools=TOOLS, store=False)
    assert body["error"]["code"] == "invalid_request"
    assert "immediately after a function call turn" in body["error"]["message"]


def test_json_trigger_with_response_format(http: httpx.Client) -> None:
    body = create(
        http,
        input="answer in json",
        response_format={"type": "text", "mime_type": "application/json"},
    )
    text = body["steps"][-1]["content"][0]["text"]
    decoded = json.loads(text)
    assert parse_answer(text) == (decoded["seen"], decoded["digest"], "answer in json")
    plain = create(http, input="answer in json")["steps"][-1]["content"][0]["text"]
    assert plain.startswith("Seen 1 user turn(s)")


def test_parse_answer_rejects_other_text() -> None:
    with pytest.raises(ValueError):
        parse_answer("Hello there")


# ----------------------------------------------------------------------------- background


def test_background_completes_and_is_polled(http: httpx.Client) -> None:
    started = create(http, input="slowly", background=True)
    assert started["status"] == "in_progress" and "usage" not in started
    for _ in range(500):
        polled = http.get(f"/v1/interactions/{started['id']}").json()
        if polled["status"] != "in_progress":
            break
        time.sleep(0.01)
    assert polled["status"] == "completed"
    assert answer(polled)[2] == "slowly"
    not_running = http.post(f"/v1/interactions/{started['id']}/cancel")
    assert not_running.status_code == 400
    assert not_running.json()["error"]["code"] == "failed_precondition"


def test_background_cancel(emulator: Emulator, http: httpx.Client) -> None:
    emulator.background_seconds = 60
    started = create(http, input="forever", background=True)
    cancelled = http.post(f"/v1/interactions/{started['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert http.get(f"/v1/interactions/{started['id']}").json()["status"] == "cancelled"
    assert http.post("/v1/interactions/v1_missing/cancel").status_code == 404
    both = {"model": "m", "input": "bg", "background": True, "stream": True}
    response = http.post("/v1/interactions", json=both)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["status"] == "in_progress"


# ----------------------------------------------------------------------------- faults


def test_fail_429_with_retry_after_then_recovers(emulator: Emulator, http: httpx.Client) -> None:
    emulator.fail(429, times=2, retry_after=2, retry_after_ms=1500)
    for _ in range(2):
        response = http.post("/v1/interactions", json={"model": "m", "input": "hi"})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"
        assert response.headers["retry-after-ms"] == "1500"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert create(http, input="hi")["status"] == "completed"
    assert len(emulator.requests) == 3


@pytest.mark.parametrize(("status", "code"), [(500, "api_error"), (503, "unavailable")])
def test_fail_5xx(emulator: Emulator, http: httpx.Client, status: int, code: str) -> None:
    emulator.fail(status)
    assert error_code(http, status, input="hi") == code
    assert create(http, input="hi")["status"] == "completed"


def test_fail_only_one_method_and_custom_code(emulator: Emulator, http: httpx.Client) -> None:
    made = create(http, input="hi")
    emulator.fail(404, method="get", code="gone_fishing")
    assert create(http, input="still fine")["status"] == "completed"
    response = http.get(f"/v1/interactions/{made['id']}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "gone_fishing"
    assert http.get(f"/v1/interactions/{made['id']}").status_code == 200


def test_delay_applies_to_the_next_requests_only(emulator: Emulator, http: httpx.Client) -> None:
    emulator.delay(1.0, times=1)
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/interactions", json={"model": "m", "input": "hi"}, timeout=0.1)
    assert create(http, input="hi")["status"] == "completed"
    emulator.delay(1.0)
    for _ in range(2):
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/interactions", json={"model": "m", "input": "hi"}, timeout=0.1)
    emulator.reset()
    assert create(http, input="hi")["status"] == "completed"


def test_request_log_records_what_was_sent(emulator: Emulator, http: httpx.Client) -> None:
    create(http, input="logged")
    http.get("/v1/interactions/v1_x", params={"stream": "false"})
    first, second = emulator.requests
    assert (first.method, first.path, first.body) == (
        "POST",
        "/v1/interactions",
        {"model": "m", "input": "logged"},
    )
    assert first.headers["x-goog-api-key"] == "test-key"
    assert second.query == {"stream": "false"} and second.body is None
    emulator.reset()
    assert emulator.requests == []


# ----------------------------------------------------------------------------- streaming


def test_stream_framing_and_event_order(http: httpx.Client) -> None:
    events = stream(http, input="think, then tell a long story")
    kinds = [e["event_type"] for e in events]
    assert kinds[0] == "interaction.created" and kinds[-1] == "interaction.completed"
    assert [e["event_id"] for e in events] == [str(i) for i in range(len(events))]
    assert events[0]["interaction"]["status"] == "in_progress"
    update = events[1]
    assert update["event_type"] == "interaction.status_update"
    assert (update["interaction_id"], update["status"]) == (
        events[0]["interaction"]["id"],
        "in_progress",
    )
    body = [e for e in events[2:-1]]
    starts = [e["index"] for e in body if e["event_type"] == "step.start"]
    assert starts == [0, 1]
    # each step is start, deltas, stop, in order
    for index in starts:
        mine = [e["event_type"] for e in body if e["index"] == index]
        assert mine[0] == "step.start" and mine[-1] == "step.stop"
        assert set(mine[1:-1]) == {"step.delta"}
    final = events[-1]["interaction"]
    assert final["status"] == "completed" and final["usage"]["total_output_tokens"] > 250
    thought, output = final["steps"]
    thought_deltas = [e["delta"] for e in body if e["index"] == 0 and "delta" in e]
    assert {"type": "thought_signature", "signature": thought["signature"]} in thought_deltas
    assert {"type": "thought_summary", "content": thought["summary"][0]} in thought_deltas
    texts = [e["delta"]["text"] for e in body if e["index"] == 1 and "delta" in e]
    assert len(texts) > 10
    assert "".join(texts) == output["content"][0]["text"]
    assert "user_input" not in json.dumps(events)


def test_stream_of_a_function_call(http: httpx.Client) -> None:
    events = stream(http, input="call get_weather for Lyon", tools=TOOLS)
    call_start = next(
        e
        for e in events
        if e["event_type"] == "step.start" and e["step"]["type"] == "function_call"
    )
    assert call_start["step"] == {
        "type": "function_call",
        "id": "call_1",
        "name": "get_weather",
        "arguments": {},
    }
    pieces = [
        e["delta"]["arguments"]
        for e in events
        if e.get("index") == call_start["index"] and e["event_type"] == "step.delta"
    ]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == {"city": "Lyon", "days": 1}
    assert events[-1]["interaction"]["status"] == "requires_action"


def test_get_stream_replays_and_resumes_after_last_event_id(http: httpx.Client) -> None:
    events = stream(http, input="a long story please")
    iid = events[0]["interaction"]["id"]
    with http.stream("GET", f"/v1/interactions/{iid}", params={"stream": "true"}) as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert sse(response.read().decode()) == events
    resumed = http.get(f"/v1/interactions/{iid}", params={"stream": "true", "last_event_id": "4"})
    assert sse(resumed.text) == events[5:]
    bad = http.get(f"/v1/interactions/{iid}", params={"stream": "true", "last_event_id": "x"})
    assert bad.status_code == 400


def test_cut_stream_drops_the_connection(emulator: Emulator, http: httpx.Client) -> None:
    emulator.cut_stream(after_events=3)
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream(
            "POST", "/v1/interactions", json={"model": "m", "input": "hi", "stream": True}
        ) as response,
    ):
        for chunk in response.iter_bytes():
            received += chunk
    events = sse(received.decode())
    assert len(events) == 3
    assert "interaction.completed" not in received.decode()
    assert "error" not in [e["event_type"] for e in events]
    assert stream(http, input="next one is whole")[-1]["event_type"] == "interaction.completed"


def test_fail_stream_sends_an_error_event(emulator: Emulator, http: httpx.Client) -> None:
    emulator.fail_stream(after_events=3, code="resource_exhausted", message="boom")
    events = stream(http, input="hi")
    kinds = [e["event_type"] for e in events]
    assert kinds == ["interaction.created", "interaction.status_update", "step.start", "error"]
    assert events[-1]["error"] == {"code": "resource_exhausted", "message": "boom"}


def test_streamed_turn_is_stored_like_a_unary_one(emulator: Emulator, http: httpx.Client) -> None:
    events = stream(http, input="stream me")
    iid = events[0]["interaction"]["id"]
    got = http.get(f"/v1/interactions/{iid}").json()
    assert got["steps"] == [user("stream me"), *events[-1]["interaction"]["steps"]]
    assert answer(create(http, input="next", previous_interaction_id=iid))[0] == 2


# ----------------------------------------------------------------------------- lifecycle


def test_emulator_lifecycle_without_context_manager() -> None:
    emu = Emulator(require_api_key=False).start()
    url = emu.url
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert httpx.post(
            f"{emu.url}/v1/interactions", json={"model": "m", "input": "a"}
        ).is_success
        assert emu.start() is emu
    finally:
        emu.close()
    emu.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v1/interactions/x")


def test_create_app_in_process() -> None:
    import asyncio

    from convostore.emulator import create_app

    async def scenario() -> tuple[int, int]:
        app = create_app(require_api_key=False, echo_user_input=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emu") as client:
            first = (
                await client.post("/v1/interactions", json={"model": "m", "input": "a"})
            ).json()
            second = await client.post(
                "/v1/interactions",
                json={"model": "m", "input": "b", "previous_interaction_id": first["id"]},
            )
            body = second.json()
            return len(body["steps"]), answer(body)[0]

    assert asyncio.run(scenario()) == (2, 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_module_entry_point_serves_in_the_foreground() -> None:
    port = free_port()
    command = [sys.executable, "-m", "convostore.emulator", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--retention", "1d", "--no-api-key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        banner = proc.stdout.readline().decode() if proc.stdout else ""
        assert f"http://127.0.0.1:{port}" in banner
        for _ in range(500):
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/interactions", json={"model": "m", "input": "a"}
                )
                break
            except httpx.ConnectError:
                time.sleep(0.01)
        assert response.status_code == 200 and answer(response.json())[2] == "a"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("argv", [["--retention", "soon"], ["--port", "x"]])
def test_module_entry_point_rejects_bad_arguments(argv: list[str]) -> None:
    from convostore.emulator import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2


def test_missing_extra_names_the_install_command() -> None:
    code = "import sys; sys.modules['uvicorn'] = None; import convostore.emulator"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr
    assert "pip install 'convostore[emulator]'" in result.stderr


@pytest.mark.parametrize(
    "inject",
    [
        lambda emu: emu.fail(200),
        lambda emu: emu.fail(429, times=0),
        lambda emu: emu.delay(-1),
        lambda emu: emu.delay(1, times=0),
        lambda emu: emu.cut_stream(after_events=-1),
        lambda emu: emu.fail_stream(after_events=1, times=0),
    ],
)
def test_bad_fault_settings_are_rejected_and_change_nothing(
    emulator: Emulator, http: httpx.Client, inject: Any
) -> None:
    with pytest.raises(ValidationError):
        inject(emulator)
    assert create(http, input="unaffected")["status"] == "completed"
    assert stream(http, input="whole")[-1]["event_type"] == "interaction.completed"


def test_concurrent_clients_each_get_their_own_chain(emulator: Emulator) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def conversation(worker: int) -> tuple[int, str]:
        with httpx.Client(base_url=emulator.url, headers={"x-goog-api-key": "k"}) as client:
            head = None
            for turn in range(4):
                body: dict[str, Any] = {"model": "m", "input": f"w{worker} t{turn}"}
                if head:
                    body["previous_interaction_id"] = head
                head = client.post("/v1/interactions", json=body).json()["id"]
            final = client.get(f"/v1/interactions/{head}").json()
            n = answer(final)[0]
            return n, answer(final)[2]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(conversation, range(6)))
    assert results == [(4, f"w{w} t3") for w in range(6)]
    assert len(emulator.requests) == 6 * 5

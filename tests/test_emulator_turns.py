"""Long and unfinished turns in the emulator, over real HTTP with plain httpx: decode limits and
``continuation_token`` hops, checkpoints, statuses on demand, background and cancel."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from convostore import ValidationError
from convostore.emulator import Emulator, parse_answer

LONG = "tell a long story"


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
    result: dict[str, Any] = response.json()
    return result


def get(http: httpx.Client, iid: str, expect: int = 200) -> dict[str, Any]:
    response = http.get(f"/v1/interactions/{iid}")
    assert response.status_code == expect, response.text
    result: dict[str, Any] = response.json()
    return result


def rejected(http: httpx.Client, **body: Any) -> str:
    error = create(http, 400, **body)["error"]
    assert error["code"] == "invalid_request"
    return str(error["message"])


def events_of(response: httpx.Response) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]


def stream(http: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    body.setdefault("model", "m")
    with http.stream("POST", "/v1/interactions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        response.read()
        return events_of(response)


def text_of(interaction: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for step in interaction.get("steps", [])
        if step["type"] == "model_output"
        for part in step["content"]
    )


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        e["delta"]["text"]
        for e in events
        if e["event_type"] == "step.delta" and e["delta"]["type"] == "text"
    )


def full_answer(http: httpx.Client, text: str = LONG) -> dict[str, Any]:
    """The answer a model without a decode limit gives (``store: false``: nothing kept)."""
    return create(http, input=text, store=False)


def run_hops(http: httpx.Client, *, store: bool, text: str = LONG) -> list[dict[str, Any]]:
    hops = [create(http, input=text, store=store)]
    while hops[-1]["status"] == "requires_continuation":
        token = hops[-1]["continuation_token"]
        if store:
            body = {"continuation_token": token, "previous_interaction_id": hops[-1]["id"]}
        else:
            body = {"continuation_token": token, "input": text, "store": False}
        hops.append(create(http, **body))
        assert len(hops) < 50
    return hops


# ----------------------------------------------------------------------------- decode limit


def test_an_answer_over_the_decode_limit_comes_in_stored_hops(
    emulator: Emulator, http: httpx.Client
) -> None:
    whole = full_answer(http)
    emulator.decode_limit(40)
    hops = run_hops(http, store=True)
    assert len(text_of(whole).split()) == 312
    assert len(hops) == 8  # 312 words / 40
    assert [h["status"] for h in hops] == ["requires_continuation"] * 7 + ["completed"]
    assert (
        all("continuation_token" in h for h in hops[:-1]) and "continuation_token" not in hops[-1]
    )
    assert len({h["id"] for h in hops}) == len(hops)
    assert "".join(text_of(h) for h in hops) == text_of(whole)
    assert [len(text_of(h).split()) for h in hops] == [40] * 7 + [32]
    for before, hop in itertools.pairwise(hops):
        stored = get(http, hop["id"])
        assert stored["previous_interaction_id"] == before["id"]
        assert stored["steps"] == hop["steps"]  # a continuation hop has no input of its own
    first = get(http, hops[0]["id"])
    assert first["status"] == "requires_continuation"
    assert first["continuation_token"] == hops[0]["continuation_token"]
    assert first["steps"][0]["type"] == "user_input"
    # usage is per hop; every hop re-reads what came before it
    assert [h["usage"]["total_output_tokens"] for h in hops] == [40] * 7 + [32]
    inputs = [h["usage"]["total_input_tokens"] for h in hops]
    assert inputs == sorted(inputs) and inputs[0] == whole["usage"]["total_input_tokens"]
    assert (
        sum(h["usage"]["total_output_tokens"] for h in hops)
        == whole["usage"]["total_output_tokens"]
    )


def test_hops_with_store_false_resend_the_input_and_keep_nothing(
    emulator: Emulator, http: httpx.Client
) -> None:
    whole = full_answer(http)
    emulator.decode_limit(100)
    hops = run_hops(http, store=False)
    assert [h["status"] for h in hops] == ["requires_continuation"] * 3 + ["completed"]
    assert "".join(text_of(h) for h in hops) == text_of(whole)
    for hop in hops:
        get(http, hop["id"], expect=404)
    # re-prefill: the generated prefix counts as input on later hops
    assert hops[1]["usage"]["total_input_tokens"] == hops[0]["usage"]["total_input_tokens"] + 100


def test_a_later_turn_chains_from_the_final_hop_and_sees_the_whole_answer(
    emulator: Emulator, http: httpx.Client
) -> None:
    emulator.decode_limit(60)
    hops = run_hops(http, store=True, text="think, then tell a long story")
    assert hops[0]["steps"][0]["type"] == "thought"  # thoughts come with the first hop
    assert all(s["type"] == "model_output" for h in hops[1:] for s in h["steps"])
    emulator.decode_limit(None)
    chained = create(http, input="and then?", previous_interaction_id=hops[-1]["id"])
    history = [
        {
            "type": "user_input",
            "content": [{"type": "text", "text": "think, then tell a long story"}],
        },
        *[step for hop in hops for step in hop["steps"]],
        {"type": "user_input", "content": [{"type": "text", "text": "and then?"}]},
    ]
    replayed = create(http, input=history, store=False)
    assert parse_answer(text_of(chained)) == parse_answer(text_of(replayed))
    assert parse_answer(text_of(chained))[0] == 2


def test_decode_limit_per_model_and_reset(emulator: Emulator, http: httpx.Client) -> None:
    emulator.decode_limit(10, model="small")
    assert create(http, model="small", input=LONG)["status"] == "requires_continuation"
    assert create(http, model="big", input=LONG)["status"] == "completed"
    emulator.decode_limit(500)  # every other model
    emulator.decode_limit(5, model="big")
    assert len(text_of(create(http, model="big", input=LONG)).split()) == 5
    assert len(text_of(create(http, model="other", input=LONG)).split()) == 312
    emulator.reset()
    assert create(http, model="small", input=LONG)["status"] == "completed"
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValidationError):
            emulator.decode_limit(bad)  # type: ignore[arg-type]


def test_short_answers_and_function_calls_are_never_split(
    emulator: Emulator, http: httpx.Client
) -> None:
    emulator.decode_limit(1)
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    call = create(http, input="call get_weather", tools=tools)
    assert call["status"] == "requires_action"
    assert [s["type"] for s in call["steps"]] == ["thought", "function_call"]
    emulator.decode_limit(20)
    assert create(http, input="hi")["status"] == "completed"  # 20 words or fewer


def test_a_token_can_be_sent_again_and_gives_the_same_next_part(
    emulator: Emulator, http: httpx.Client
) -> None:
    emulator.decode_limit(50)
    first = create(http, input=LONG)
    body = {
        "continuation_token": first["continuation_token"],
        "previous_interaction_id": first["id"],
    }
    again, once_more = create(http, **body), create(http, **body)
    assert again["id"] != once_more["id"]
    assert text_of(again) == text_of(once_more)


def test_continuation_requests_the_service_refuses(emulator: Emulator, http: httpx.Client) -> None:
    emulator.decode_limit(30)
    first = create(http, input=LONG)
    token, owner = first["continuation_token"], first["id"]
    other = create(http, input="something else")["id"]
    assert "Invalid continuation_token" in rejected(
        http, continuation_token="ct_nope", previous_interaction_id=owner
    )
    assert "not issued by interaction" in rejected(
        http, continuation_token=token, previous_interaction_id=other
    )
    assert "not issued by interaction" in rejected(http, continuation_token=token)
    assert "'input' must be omitted" in rejected(
        http, continuation_token=token, previous_interaction_id=owner, input=LONG
    )
    assert "issued for model m" in rejected(
        http, model="other", continuation_token=token, previous_interaction_id=owner
    )
    rejected(http, continuation_token="", previous_interaction_id=owner)
    rejected(http, continuation_token=token, previous_interaction_id=owner, background=True)
    # with store: false the original input must come back with the token
    loose = create(http, input=LONG, store=False)
    loose_token = loose["continuation_token"]
    assert "re-send the original input" in rejected(
        http, continuation_token=loose_token, input="another input", store=False
    )
    assert "not issued by interaction" in rejected(
        http, continuation_token=loose_token, previous_interaction_id=loose["id"]
    )
    assert create(http, continuation_token=loose_token, input=LONG, store=False)["status"] == (
        "requires_continuation"
    )
    # an expired hop cannot be continued from
    emulator.expire(owner)
    assert create(http, 404, continuation_token=token, previous_interaction_id=owner)


# ----------------------------------------------------------------------------- streams


def test_a_streamed_hop_stops_at_the_limit_with_its_token(
    emulator: Emulator, http: httpx.Client
) -> None:
    whole = full_answer(http)
    emulator.decode_limit(40)
    events = stream(http, input=LONG)
    iid = events[0]["interaction"]["id"]
    update, completed = events[-2], events[-1]
    assert update == {
        "event_type": "interaction.status_update",
        "event_id": update["event_id"],
        "interaction_id": iid,
        "status": "requires_continuation",
        "continuation_token": update["continuation_token"],
        "usage": completed["interaction"]["usage"],
    }
    final = completed["interaction"]
    assert final["status"] == "requires_continuation"
    assert final["continuation_token"] == update["continuation_token"]
    assert len(streamed_text(events).split()) == 40
    texts = [streamed_text(events)]
    token, owner = final["continuation_token"], iid
    while token:
        hop = stream(http, continuation_token=token, previous_interaction_id=owner)
        texts.append(streamed_text(hop))
        owner = hop[0]["interaction"]["id"]
        token = hop[-1]["interaction"].get("continuation_token")
        assert hop[-1]["interaction"]["status"] == (
            "requires_continuation" if token else "completed"
        )
    assert "".join(texts) == text_of(whole)


def test_checkpoints_carry_tokens_that_resume_without_repeating(
    emulator: Emulator, http: httpx.Client
) -> None:
    whole = full_answer(http)
    emulator.checkpoint_every(5)
    events = stream(http, input=LONG)
    iid = events[0]["interaction"]["id"]
    checkpoints = [
        i
        for i, e in enumerate(events)
        if e["event_type"] == "interaction.status_update" and "continuation_token" in e
    ]
    deltas = [i for i, e in enumerate(events) if e["event_type"] == "step.delta"]
    assert len(deltas) == 104 and len(checkpoints) == 20  # 312 words, 3 a delta
    assert all(events[i - 1]["event_type"] == "step.delta" for i in checkpoints)
    assert {events[i]["status"] for i in checkpoints} == {"in_progress"}
    assert events[-1]["interaction"]["status"] == "completed"
    assert streamed_text(events) == text_of(whole)  # checkpoints change no output
    # a client cut right after the 3rd checkpoint resumes from it
    cut = checkpoints[2]
    seen = streamed_text(events[: cut + 1])
    emulator.checkpoint_every(None)
    resumed = stream(
        http, continuation_token=events[cut]["continuation_token"], previous_interaction_id=iid
    )
    assert seen + streamed_text(resumed) == text_of(whole)
    # the interaction that was streamed now ends at the checkpoint: each word is stored once
    owner = get(http, iid)
    assert owner["status"] == "requires_continuation" and text_of(owner) == seen
    final = resumed[-1]["interaction"]["id"]
    assert get(http, final)["previous_interaction_id"] == iid


def test_cut_after_a_checkpoint_then_resume_with_store_false(
    emulator: Emulator, http: httpx.Client
) -> None:
    whole = full_answer(http)
    emulator.checkpoint_every(4)
    body = {"model": "m", "input": LONG, "stream": True, "store": False}
    emulator.cut_stream_after_checkpoint(2)
    lines: list[str] = []
    with (
        http.stream("POST", "/v1/interactions", json=body) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        for line in response.iter_lines():
            lines.append(line)
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert events[-1]["event_type"] == "interaction.status_update"
    assert [e for e in events if "continuation_token" in e][-1] is events[-1]
    resumed = stream(
        http, continuation_token=events[-1]["continuation_token"], input=LONG, store=False
    )
    assert streamed_text(events) + streamed_text(resumed) == text_of(whole)
    for bad in (0, -2):
        with pytest.raises(ValidationError):
            emulator.cut_stream_after_checkpoint(bad)
        with pytest.raises(ValidationError):
            emulator.checkpoint_every(bad)


# ----------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("status", "errors"),
    [
        ("failed", None),
        ("failed", [{"code": "resource_exhausted", "message": "quota"}]),
        ("cancelled", None),
    ],
)
def test_failed_and_cancelled_on_demand(
    emulator: Emulator, http: httpx.Client, status: str, errors: list[dict[str, str]] | None
) -> None:
    emulator.next_status(status, errors=errors)
    ended = create(http, input="hello")
    assert ended["status"] == status and ended["steps"] == []
    if status == "failed":
        assert ended["errors"] == (errors or [{"code": "internal", "message": "injected failure"}])
    else:
        assert "errors" not in ended
    assert get(http, ended["id"])["status"] == status
    assert create(http, input="hello")["status"] == "completed"  # times=1


@pytest.mark.parametrize("status", ["incomplete", "budget_exceeded"])
def test_partial_answers_on_demand(emulator: Emulator, http: httpx.Client, status: str) -> None:
    whole = text_of(full_answer(http))
    emulator.next_status(status, times=2)
    for ended in (create(http, input=LONG), create(http, input=LONG, stream=False)):
        assert ended["status"] == status
        assert whole.startswith(text_of(ended)) and len(text_of(ended).split()) == 156
        assert ended["usage"]["total_output_tokens"] == 156
        assert "continuation_token" not in ended
    assert create(http, input=LONG)["status"] == "completed"


def test_a_stream_carries_an_imposed_final_status(emulator: Emulator, http: httpx.Client) -> None:
    emulator.next_status("failed", errors=[{"code": "internal", "message": "boom"}])
    events = stream(http, input="hi")
    kinds = [e["event_type"] for e in events]
    assert kinds == [
        "interaction.created",
        "interaction.status_update",
        "interaction.status_update",
        "interaction.completed",
    ]
    assert events[2]["status"] == "failed"
    final = events[-1]["interaction"]
    assert final["status"] == "failed"
    assert final["errors"] == [{"code": "internal", "message": "boom"}]
    emulator.next_status("budget_exceeded")
    events = stream(http, input=LONG)
    assert events[-2]["status"] == events[-1]["interaction"]["status"] == "budget_exceeded"
    assert len(streamed_text(events).split()) == 156


@pytest.mark.parametrize("status", ["in_progress", "queued", "idle"])
def test_an_unfinished_answer_finishes_later(
    emulator: Emulator, http: httpx.Client, status: str
) -> None:
    emulator.background_seconds = 60  # held running until released below
    emulator.next_status(status)
    answered = create(http, input="hello")
    assert answered["status"] == status and answered["steps"] == []
    assert "usage" not in answered
    assert get(http, answered["id"])["status"] == status
    emulator.background_seconds = 0
    deadline = time.monotonic() + 5
    while (now := get(http, answered["id"]))["status"] == status:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert now["status"] == "completed"
    assert parse_answer(text_of(now))[2] == "hello"
    assert now["usage"]["total_output_tokens"] > 0


def test_a_stream_of_an_unfinished_answer_waits_for_it(
    emulator: Emulator, http: httpx.Client
) -> None:
    emulator.background_seconds = 0.05
    emulator.next_status("queued")
    events = stream(http, input="hello")
    updates = [e["status"] for e in events if e["event_type"] == "interaction.status_update"]
    assert events[0]["interaction"]["status"] == "queued"
    assert updates == ["queued", "in_progress"]
    assert events[-1]["interaction"]["status"] == "completed"
    assert parse_answer(streamed_text(events))[2] == "hello"


def test_next_status_rejects_what_it_cannot_impose(emulator: Emulator) -> None:
    for status in ("completed", "requires_action", "requires_continuation", "nope"):
        with pytest.raises(ValidationError, match="next_status"):
            emulator.next_status(status)
    with pytest.raises(ValidationError):
        emulator.next_status("failed", errors=[{"code": 1}])  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        emulator.next_status("failed", times=0)


# ----------------------------------------------------------------------------- background


def test_background_finishes_later_and_streams_live(emulator: Emulator, http: httpx.Client) -> None:
    emulator.background_seconds = 60  # held running until released below
    started = create(http, input=LONG, background=True)
    assert started["status"] == "in_progress" and "usage" not in started
    iid = started["id"]
    with http.stream("GET", f"/v1/interactions/{iid}", params={"stream": "true"}) as response:
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert first["event_type"] == "interaction.created"
        assert emulator.interactions[iid]["status"] == "in_progress"  # sent while running
        emulator.background_seconds = 0
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    events = [first, *rest]
    assert events[-1]["interaction"]["status"] == "completed"
    assert [e["status"] for e in events if e["event_type"] == "interaction.status_update"] == [
        "in_progress"
    ]
    assert [e["event_id"] for e in events] == [str(i) for i in range(len(events))]
    resumed = http.get(
        f"/v1/interactions/{iid}",
        params={"stream": "true", "last_event_id": events[40]["event_id"]},
    )
    assert events_of(resumed) == events[41:]
    assert get(http, iid)["status"] == "completed"


def test_a_running_interaction_streams_from_last_event_id(
    emulator: Emulator, http: httpx.Client
) -> None:
    emulator.background_seconds = 60
    iid = create(http, input="hello", background=True)["id"]
    params = {"stream": "true", "last_event_id": "0"}
    with http.stream("GET", f"/v1/interactions/{iid}", params=params) as response:
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert emulator.interactions[iid]["status"] == "in_progress"  # sent while running
        emulator.background_seconds = 0
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert (first["event_type"], first["event_id"], first["status"]) == (
        "interaction.status_update",
        "1",
        "in_progress",
    )
    assert [e["event_id"] for e in rest] == [str(i) for i in range(2, len(rest) + 2)]
    assert rest[-1]["interaction"]["status"] == "completed"


def test_background_ignores_the_decode_limit(emulator: Emulator, http: httpx.Client) -> None:
    whole = full_answer(http)
    emulator.decode_limit(10)
    emulator.background_seconds = 0.01
    iid = create(http, input=LONG, background=True)["id"]
    deadline = time.monotonic() + 5
    while (done := get(http, iid))["status"] == "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert done["status"] == "completed" and "continuation_token" not in done
    assert text_of(done) == text_of(whole)


def test_cancel_a_running_interaction_and_not_a_finished_one(
    emulator: Emulator, http: httpx.Client
) -> None:
    emulator.background_seconds = 5
    running = create(http, input="hello", background=True)
    cancelled = http.post(f"/v1/interactions/{running['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert get(http, running["id"])["status"] == "cancelled"
    again = http.post(f"/v1/interactions/{running['id']}/cancel")
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "failed_precondition"
    assert "not running (status cancelled)" in again.json()["error"]["message"]
    done = create(http, input="hello")
    refused = http.post(f"/v1/interactions/{done['id']}/cancel")
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "failed_precondition")
    # an unfinished non-background answer can be cancelled too
    emulator.next_status("idle")
    idle = create(http, input="hello")
    assert http.post(f"/v1/interactions/{idle['id']}/cancel").json()["status"] == "cancelled"
    stream_of_cancelled = events_of(
        http.get(f"/v1/interactions/{idle['id']}", params={"stream": "true"})
    )
    assert stream_of_cancelled[-1]["interaction"]["status"] == "cancelled"

"""The stream accumulator: steps rebuilt from events as in interactions-api.md §8.4."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from convostore import StreamError
from convostore._core.streaming import StreamAccumulator
from convostore.models import parse_event


def created(iid: str = "int_1") -> dict[str, Any]:
    return {
        "event_type": "interaction.created",
        "interaction": {"id": iid, "status": "in_progress", "model": "m", "object": "interaction"},
    }


def completed(status: str = "completed", **extra: Any) -> dict[str, Any]:
    usage = {"total_input_tokens": 3, "total_output_tokens": 2, "total_tokens": 5}
    return {
        "event_type": "interaction.completed",
        "interaction": {"id": "int_1", "status": status, "usage": usage, **extra},
    }


def start(index: int, step: dict[str, Any]) -> dict[str, Any]:
    return {"event_type": "step.start", "index": index, "step": step}


def delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"event_type": "step.delta", "index": index, "delta": fields}


def stop(index: int) -> dict[str, Any]:
    return {"event_type": "step.stop", "index": index}


def run(*events: dict[str, Any]) -> StreamAccumulator:
    acc = StreamAccumulator()
    for event in events:
        acc.add(event)
    return acc


def test_text_stream_rebuilds_the_step_and_the_interaction() -> None:
    acc = run(
        created(),
        start(0, {"type": "model_output"}),
        delta(0, type="text", text="Hel"),
        delta(0, type="text", text="lo!"),
        stop(0),
    )
    assert not acc.completed
    assert acc.interaction_id == "int_1"
    assert acc.status == "in_progress"
    acc.add(completed())
    assert acc.completed
    interaction = acc.interaction()
    assert interaction.id == "int_1"
    assert interaction.status == "completed"
    assert interaction.model == "m"
    assert interaction.usage is not None and interaction.usage.total_tokens == 5
    assert interaction.steps == [
        {"type": "model_output", "content": [{"type": "text", "text": "Hello!"}]}
    ]
    assert interaction.output_text == "Hello!"
    assert interaction.raw["object"] == "interaction"


def test_function_call_arguments_are_joined_and_parsed_at_stop() -> None:
    acc = run(
        created(),
        start(0, {"type": "function_call", "id": "call_1", "name": "get_weather", "arguments": {}}),
        delta(0, type="arguments_delta", arguments='{"city": '),
        delta(0, type="arguments_delta", arguments='"Paris"}'),
    )
    assert acc.steps[0]["arguments"] == {}
    acc.add(stop(0))
    acc.add(completed("requires_action"))
    assert acc.steps == [
        {
            "type": "function_call",
            "id": "call_1",
            "name": "get_weather",
            "arguments": {"city": "Paris"},
        }
    ]
    assert acc.interaction().status == "requires_action"


def test_arguments_without_step_stop_are_parsed_at_completion() -> None:
    acc = run(
        start(2, {"type": "function_call", "id": "c", "name": "f", "arguments": {}}),
        delta(2, type="arguments_delta", arguments='{"a": [1, 2]}'),
        completed(),
    )
    assert acc.steps[0]["arguments"] == {"a": [1, 2]}


@pytest.mark.parametrize("text", ['{"city": ', "[1, 2]", "null"])
def test_bad_arguments_raise_stream_error(text: str) -> None:
    acc = run(
        start(0, {"type": "function_call", "id": "c", "name": "f", "arguments": {}}),
        delta(0, type="arguments_delta", arguments=text),
    )
    with pytest.raises(StreamError, match="arguments"):
        acc.add(stop(0))


def test_thought_summary_and_signature() -> None:
    acc = run(
        start(0, {"type": "thought"}),
        delta(0, type="thought_summary", content={"type": "text", "text": "Considering"}),
        delta(0, type="thought_summary", content={"type": "image", "data": "aGk="}),
        delta(0, type="thought_signature", signature="c2ln"),
        stop(0),
        start(1, {"type": "model_output"}),
        delta(1, type="text", text="Hi"),
        stop(1),
        completed(),
    )
    assert acc.steps == [
        {
            "type": "thought",
            "summary": [{"type": "text", "text": "Considering"}, {"type": "image", "data": "aGk="}],
            "signature": "c2ln",
        },
        {"type": "model_output", "content": [{"type": "text", "text": "Hi"}]},
    ]


def test_media_annotations_and_text_after_media() -> None:
    citation = {"type": "url_citation", "url": "https://example.org", "start_index": 0}
    acc = run(
        start(0, {"type": "model_output"}),
        delta(0, type="text", text="See "),
        delta(0, type="text_annotation_delta", annotations=[citation]),
        delta(0, type="image", mime_type="image/png", data="iVBO"),
        delta(0, type="text", text="that"),
        delta(0, type="text_annotation_delta", annotations=[]),
        stop(0),
        completed(),
    )
    assert acc.steps[0]["content"] == [
        {"type": "text", "text": "See ", "annotations": [citation]},
        {"type": "image", "mime_type": "image/png", "data": "iVBO"},
        {"type": "text", "text": "that", "annotations": []},
    ]


def test_function_result_and_tool_deltas() -> None:
    acc = run(
        start(0, {"type": "function_result", "call_id": "c1"}),
        delta(0, type="function_result", result={"temp_c": 21}, name="get_weather"),
        start(1, {"type": "code_execution_call", "id": "x1"}),
        delta(1, type="code_execution_call", arguments={"code": "print(1)"}, signature="s"),
        completed(),
    )
    assert acc.steps == [
        {
            "type": "function_result",
            "call_id": "c1",
            "result": {"temp_c": 21},
            "name": "get_weather",
        },
        {
            "type": "code_execution_call",
            "id": "x1",
            "arguments": {"code": "print(1)"},
            "signature": "s",
        },
    ]
    assert acc.unknown_deltas == []


def test_unknown_delta_is_an_unknown_content_part_kept_verbatim() -> None:
    acc = run(
        start(0, {"type": "model_output"}),
        delta(0, type="text", text="look: "),
        delta(0, type="sparkle", glitter=3, nested={"a": [1, None]}),
        delta(0, type="text", text="ok"),
        start(1, {"type": "thought", "signature": "s"}),
        delta(1, type="hologram", frames=2),
        completed(),
    )
    sparkle = {"type": "sparkle", "glitter": 3, "nested": {"a": [1, None]}}
    assert acc.steps == [
        {
            "type": "model_output",
            "content": [
                {"type": "text", "text": "look: "},
                sparkle,
                {"type": "text", "text": "ok"},
            ],
        },
        {"type": "thought", "signature": "s", "summary": [{"type": "hologram", "frames": 2}]},
    ]
    assert acc.unknown_deltas == [(0, sparkle), (1, {"type": "hologram", "frames": 2})]


def test_unknown_delta_on_a_step_without_content_is_listed_and_the_step_left_alone() -> None:
    call = {"type": "function_call", "id": "c", "name": "f", "arguments": {"a": 1}}
    acc = run(start(0, dict(call)), delta(0, type="sparkle", glitter=3), completed())
    assert acc.steps == [call]
    assert acc.unknown_deltas == [(0, {"type": "sparkle", "glitter": 3})]


def test_deltas_without_step_start_infer_the_step() -> None:
    acc = run(
        delta(0, type="thought_signature", signature="s"),
        delta(1, type="text", text="a"),
        delta(2, type="arguments_delta", arguments="{}"),
        stop(2),
        completed(),
    )
    assert acc.steps == [
        {"type": "thought", "signature": "s"},
        {"type": "model_output", "content": [{"type": "text", "text": "a"}]},
        {"type": "function_call", "arguments": {}},
    ]


def test_steps_are_ordered_by_index_not_arrival() -> None:
    acc = run(
        start(1, {"type": "model_output"}),
        start(0, {"type": "thought", "signature": "s"}),
        delta(1, type="text", text="b"),
        completed(),
    )
    assert [s["type"] for s in acc.steps] == ["thought", "model_output"]


def test_completed_steps_are_taken_verbatim() -> None:
    server_steps = [
        {"type": "model_output", "content": [{"type": "text", "text": "final"}], "extra": 1},
        {"type": "brand_new", "payload": {"x": [1]}},
    ]
    acc = run(
        start(0, {"type": "model_output"}),
        delta(0, type="text", text="partial"),
        completed(steps=copy.deepcopy(server_steps)),
    )
    assert acc.steps == server_steps
    assert acc.interaction().raw["steps"] == server_steps


def test_status_update_and_error_event() -> None:
    acc = run(
        created(),
        {
            "event_type": "interaction.status_update",
            "interaction_id": "int_1",
            "status": "requires_continuation",
            "continuation_token": "tok",
        },
        {"event_type": "error", "error": {"code": "resource_exhausted", "message": "boom"}},
    )
    assert acc.status == "requires_continuation"
    assert acc.raw_interaction()["continuation_token"] == "tok"
    assert acc.error == {"code": "resource_exhausted", "message": "boom"}
    assert not acc.completed


def test_parsed_events_are_accepted_and_inputs_not_mutated() -> None:
    events = [
        created(),
        start(0, {"type": "model_output", "content": [{"type": "text", "text": "a"}]}),
        delta(0, type="text", text="b"),
        completed(),
    ]
    snapshot = copy.deepcopy(events)
    from_dicts = run(*events)
    from_models = run(*[parse_event(e) for e in events])
    assert events == snapshot
    assert (
        from_dicts.steps
        == from_models.steps
        == [{"type": "model_output", "content": [{"type": "text", "text": "ab"}]}]
    )
    assert from_dicts.raw_interaction() == from_models.raw_interaction()


def status_update(status: str, token: str | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "interaction.status_update",
        "interaction_id": "int_1",
        "status": status,
        **extra,
    }
    if token is not None:
        event["continuation_token"] = token
    return event


def test_tool_search_steps_are_rebuilt_from_their_deltas() -> None:
    call = {
        "type": "tool_search_call",
        "id": "ts1",
        "arguments": {"function_names": ["get_weather"]},
        "signature": "c2ln",
    }
    result = {
        "type": "tool_search_result",
        "call_id": "ts1",
        "result": [{"type": "function", "name": "get_weather"}],
        "signature": "c2ln",
    }
    acc = run(
        created(),
        start(0, {"type": "tool_search_call", "id": "ts1"}),
        delta(0, type="tool_search_call", arguments=call["arguments"], signature="c2ln"),
        stop(0),
        start(1, {"type": "tool_search_result", "call_id": "ts1"}),
        delta(1, type="tool_search_result", result=result["result"], signature="c2ln"),
        stop(1),
        completed(),
    )
    assert acc.steps == [call, result]
    assert acc.unknown_deltas == []


def test_status_updates_record_status_token_usage_and_checkpoint() -> None:
    acc = run(created())
    assert (acc.status, acc.continuation_token, acc.checkpoint) == ("in_progress", None, None)
    assert not acc.can_resume  # nothing to resume from yet
    acc.add(status_update("in_progress", "tok1", usage={"total_tokens": 7}))
    assert acc.checkpoint is not None
    assert (acc.checkpoint.token, acc.checkpoint.owner_id) == ("tok1", "int_1")
    assert acc.usage == {"total_tokens": 7}
    assert acc.can_resume and not acc.content_since_checkpoint
    acc.add(start(0, {"type": "model_output"}))
    acc.add(delta(0, type="text", text="Hel"))
    assert acc.content_since_checkpoint and not acc.can_resume  # resuming would repeat "Hel"
    acc.add(status_update("in_progress"))  # no token: not a checkpoint
    assert acc.content_since_checkpoint
    acc.add(status_update("in_progress", "tok2"))
    assert acc.checkpoint is not None and acc.checkpoint.token == "tok2"
    assert acc.can_resume
    raw = acc.raw_interaction()
    assert raw["continuation_token"] == "tok2" and raw["status"] == "in_progress"
    assert raw["usage"] == {"total_tokens": 7}
    assert raw["steps"] == [{"type": "model_output", "content": [{"type": "text", "text": "Hel"}]}]


def test_the_completed_snapshot_is_authoritative_for_the_token() -> None:
    acc = run(created(), status_update("in_progress", "tok1"), completed())
    assert acc.continuation_token is None and acc.checkpoint is None
    assert "continuation_token" not in acc.interaction().raw
    acc = run(created(), status_update("in_progress", "tok1"))
    acc.add(completed("requires_continuation", continuation_token="tok9"))
    interaction = acc.interaction()
    assert (interaction.status, interaction.continuation_token) == ("requires_continuation", "tok9")
    assert acc.checkpoint is not None and acc.checkpoint.token == "tok9"
    assert acc.can_resume and not acc.content_since_checkpoint


def test_an_error_event_leaves_nothing_to_resume_from() -> None:
    acc = run(
        created(),
        status_update("in_progress", "tok1"),
        {"event_type": "error", "error": {"code": "internal", "message": "boom"}},
    )
    assert acc.continuation_token == "tok1"  # what the server said, kept on the interaction
    assert acc.checkpoint is None and not acc.can_resume


@pytest.mark.parametrize("claimed", ["completed", "requires_action"])
def test_a_stream_that_did_not_complete_is_never_reported_finished(claimed: str) -> None:
    acc = run(
        {"event_type": "interaction.created", "interaction": {"id": "int_1", "status": claimed}},
        start(0, {"type": "model_output"}),
        delta(0, type="text", text="partial"),
        status_update(claimed),
    )
    assert acc.status == claimed  # what the events said ...
    assert acc.interaction().status == "in_progress"  # ... is not an answer without completion
    acc.add(completed(claimed))
    assert acc.interaction().status == claimed


def test_a_request_that_resumes_seeds_the_checkpoint() -> None:
    from convostore._core.continuation import Checkpoint

    acc = StreamAccumulator(resume_from=Checkpoint("tok0", "int_0"))
    assert acc.checkpoint == Checkpoint("tok0", "int_0") and acc.can_resume
    acc.add(created("int_2"))
    assert acc.checkpoint == Checkpoint("tok0", "int_0")  # still owned by its issuer
    acc.add(status_update("in_progress", "tok1"))
    assert acc.checkpoint == Checkpoint("tok1", "int_1")

"""Wire models against the official SDK (google-genai 3.6.1) as the oracle: the answer helpers
(``output_text``/``output_image``/``output_audio``/``output_video``) on every step shape, the
step and delta types it knows, and the status classes and errors of a finished interaction."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

import convostore as cs
from convostore import models
from convostore._client_base import check_create_body
from convostore.models import (
    STEP_TYPES,
    ToolSearchCallStep,
    ToolSearchResultStep,
    output_audio,
    output_image,
    output_text,
    output_video,
    parse_step,
    status_class,
)

sdk_interaction = pytest.importorskip("google.genai._gaos.types.interactions.interaction")


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


IMAGE = {"type": "image", "data": "aW1n", "mime_type": "image/png"}
AUDIO = {"type": "audio", "data": "YXVk", "mime_type": "audio/wav"}
VIDEO = {"type": "video", "uri": "https://example.org/v.mp4", "mime_type": "video/mp4"}
UNKNOWN_PART = {"type": "hologram", "frames": 3}

# The 13 step shapes: every kind of barrier the SDK's rule treats differently.
SHAPES: dict[str, dict[str, Any]] = {
    "user_input": {"type": "user_input", "content": [text("question")]},
    "text": {"type": "model_output", "content": [text("a")]},
    "two_texts": {"type": "model_output", "content": [text("b"), text("c")]},
    "text_then_image": {"type": "model_output", "content": [text("d"), IMAGE]},
    "image_only": {"type": "model_output", "content": [IMAGE]},
    "text_then_unknown_part": {"type": "model_output", "content": [text("e"), UNKNOWN_PART]},
    "unknown_part_then_text": {"type": "model_output", "content": [UNKNOWN_PART, text("f")]},
    "no_content": {"type": "model_output"},
    "thought": {"type": "thought", "signature": "c2ln"},
    "function_call": {"type": "function_call", "id": "c1", "name": "f", "arguments": {}},
    "function_result": {"type": "function_result", "call_id": "c1", "result": {"ok": 1}},
    "unknown_step": {"type": "brand_new_step", "payload": {"x": 1}},
    "media_around_text": {"type": "model_output", "content": [AUDIO, text("g"), VIDEO]},
}


def sdk_outputs(steps: list[dict[str, Any]]) -> tuple[str, Any, Any, Any]:
    """What the SDK's own Interaction says about these steps (media as wire JSON)."""
    sdk = sdk_interaction.Interaction.model_validate(
        {"id": "i", "status": "completed", "steps": copy.deepcopy(steps)}
    )
    media = [
        None if part is None else part.model_dump(mode="json")
        for part in (sdk.output_image, sdk.output_audio, sdk.output_video)
    ]
    return (sdk.output_text or "", *media)


def ours(steps: list[dict[str, Any]]) -> tuple[str, Any, Any, Any]:
    return output_text(steps), output_image(steps), output_audio(steps), output_video(steps)


def turn_of(steps: list[dict[str, Any]]) -> cs.Turn:
    record = cs.TurnRecord(
        conversation_id="c", seq=1, mode_used="server", reason="chained", status="completed"
    )
    return cs.Turn(record=record, input_steps=[], steps=steps)


def test_every_step_list_of_up_to_four_shapes_matches_the_sdk() -> None:
    shapes = list(SHAPES.values())
    compared = with_text = 0
    for length in range(1, 5):
        for combo in itertools.product(shapes, repeat=length):
            steps = list(combo)
            expected = sdk_outputs(steps)
            assert ours(steps) == expected, [s["type"] for s in steps]
            compared += 1
            with_text += bool(expected[0])
    assert compared == 30_940
    assert with_text > 10_000  # the comparison is not vacuous


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["text_then_image"], "d"),
        (["text_then_unknown_part"], "e"),
        (["text", "function_call"], "a"),
        (["text", "function_result"], "a"),
        (["text", "unknown_step"], "a"),
        (["text", "image_only"], "a"),
        (["two_texts", "thought", "text"], "bca"),
        (["text", "text_then_image", "text"], "a"),
        (["text_then_image", "thought"], "d"),
        (["text", "unknown_part_then_text"], "f"),
        (["text", "function_call", "text"], "a"),
        (["text", "user_input"], ""),
        (["user_input", "image_only"], ""),
        (["media_around_text", "no_content"], "g"),
    ],
)
def test_output_text_table(names: list[str], expected: str) -> None:
    steps = [SHAPES[name] for name in names]
    assert output_text(steps) == expected == sdk_outputs(steps)[0]
    assert turn_of(steps).text == expected
    assert cs.Interaction.from_raw({"status": "completed", "steps": steps}).output_text == expected


def test_media_helpers_pick_the_last_part_after_the_last_user_input() -> None:
    later_image = {**IMAGE, "data": "bGF0ZXI=", "extra_key": {"kept": True}}
    steps = [
        {"type": "model_output", "content": [IMAGE, AUDIO]},
        SHAPES["user_input"],
        {"type": "model_output", "content": [IMAGE, text("x"), VIDEO]},
        SHAPES["function_call"],
        {"type": "thought", "summary": [{**IMAGE, "data": "dGhvdWdodA=="}]},
        {"type": "model_output", "content": [later_image, text("y")]},
    ]
    turn = turn_of(steps)
    assert turn.output_image == later_image  # unknown keys kept
    assert turn.output_audio is None  # the audio before the user input is another turn's
    assert turn.output_video == VIDEO
    assert turn.text == "y"
    sdk = sdk_outputs(steps)
    assert sdk[1] == {k: v for k, v in later_image.items()}
    assert (sdk[2], sdk[3]) == (None, VIDEO)
    returned = turn.output_image
    assert returned is not None
    returned["data"] = "changed"
    assert turn.output_image == later_image  # a copy: the stored step is untouched


def test_malformed_parts_count_like_the_sdk_counts_them() -> None:
    # Built unvalidated, as the SDK builds an answer it cannot validate.
    steps: list[Any] = [
        {"type": "model_output", "content": [{"type": "text", "text": 5}, "junk", text("z")]},
        {"type": "model_output", "content": "not a list"},
        "not a step",
    ]
    assert output_text(steps) == "z"
    assert output_text([{"type": "model_output", "content": [{"type": "text"}, text("a")]}]) == "a"
    assert output_text([{"type": "model_output", "content": [text("a"), {"type": "text"}]}]) == "a"


# --------------------------------------------------------------------------- step and delta types


def test_step_types_are_the_sdks() -> None:
    step = pytest.importorskip("google.genai._gaos.types.interactions.step")
    assert set(step._STEP_VARIANTS) == STEP_TYPES


def test_every_sdk_delta_type_has_a_rule() -> None:
    """A delta type is typed (text, media, thought, arguments, annotations, function_result) or
    is a tool delta named after its step type (merged into the step)."""
    data = pytest.importorskip("google.genai._gaos.types.interactions.stepdeltadata")
    variants = set(data._STEP_DELTA_DATA_VARIANTS)
    assert {"tool_search_call", "tool_search_result"} <= variants
    assert variants <= set(models._DELTA_TYPES) | STEP_TYPES


def test_content_types_are_the_sdks() -> None:
    content = pytest.importorskip("google.genai._gaos.types.interactions.content")
    assert set(content._CONTENT_VARIANTS) == set(models._CONTENT_TYPES)


TOOL_SEARCH_CALL = {
    "type": "tool_search_call",
    "id": "ts1",
    "arguments": {"function_names": ["get_weather"]},
    "signature": "c2ln",
    "future_key": [1, {"x": None}],
}
TOOL_SEARCH_RESULT = {
    "type": "tool_search_result",
    "call_id": "ts1",
    "result": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
    "signature": "c2ln",
}


def test_tool_search_steps_parse_and_round_trip() -> None:
    call = parse_step(TOOL_SEARCH_CALL)
    result = parse_step(TOOL_SEARCH_RESULT)
    assert isinstance(call, ToolSearchCallStep) and call.arguments == TOOL_SEARCH_CALL["arguments"]
    assert isinstance(result, ToolSearchResultStep) and result.result is not None
    assert models.to_wire(call) == TOOL_SEARCH_CALL
    assert models.to_wire(result) == TOOL_SEARCH_RESULT
    assert isinstance(
        parse_step({"type": "tool_search_result", "call_id": "x"}), ToolSearchResultStep
    )
    body = check_create_body({"model": "m", "input": [TOOL_SEARCH_CALL, TOOL_SEARCH_RESULT]})
    assert body["input"] == [TOOL_SEARCH_CALL, TOOL_SEARCH_RESULT]
    sdk = sdk_interaction.Interaction.model_validate(
        {"id": "i", "status": "completed", "steps": [TOOL_SEARCH_CALL, TOOL_SEARCH_RESULT]}
    )
    assert [s.model_dump(mode="json") for s in sdk.steps or []] == [
        TOOL_SEARCH_CALL,
        TOOL_SEARCH_RESULT,
    ]


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "tool_search_call", "arguments": {}},  # no id
        {"type": "tool_search_call", "id": "x"},  # no arguments
        {"type": "tool_search_result"},  # no call_id
    ],
)
def test_incomplete_tool_search_steps_are_refused_before_sending(payload: dict[str, Any]) -> None:
    with pytest.raises(cs.ValidationError):
        check_create_body({"model": "m", "input": [payload]})


# --------------------------------------------------------------------------- statuses and errors


@pytest.mark.parametrize(
    ("status", "klass"),
    [
        ("completed", "ok"),
        ("requires_action", "ok"),
        ("incomplete", "partial"),
        ("budget_exceeded", "partial"),
        ("failed", "failed"),
        ("cancelled", "failed"),
        ("requires_continuation", "continue"),
        ("in_progress", "unfinished"),
        ("queued", "unfinished"),
        ("idle", "unfinished"),
        ("some_future_status", "unfinished"),
        ("", "unfinished"),
        (None, "unfinished"),
    ],
)
def test_status_classes(status: Any, klass: str) -> None:
    assert status_class(status) == klass


def test_status_classes_cover_the_sdk_statuses_once() -> None:
    classes = [models.TERMINAL_OK, models.PARTIAL, models.FAILED, models.CONTINUE]
    classes.append(models.UNFINISHED)
    listed = [s for c in classes for s in c]
    assert len(listed) == len(set(listed))
    literal = sdk_interaction.InteractionStatus.__args__[0]
    assert set(literal.__args__) == set(listed)


def test_interaction_errors_and_usage_lists_are_parsed_and_kept() -> None:
    raw = {
        "id": "i1",
        "status": "failed",
        "errors": [{"code": "internal", "message": "boom"}],
        "usage": {
            "total_tokens": 3,
            "input_tokens_by_modality": [{"modality": "text", "tokens": 3}],
            "initial_input_tokens": 2,
        },
    }
    interaction = cs.Interaction.from_raw(raw)
    assert interaction.errors == raw["errors"]
    assert interaction.usage is not None and interaction.usage.initial_input_tokens == 2
    assert interaction.raw == raw
    assert interaction.hop_ids == ["i1"]


def test_interaction_failed_and_unfinished_carry_the_interaction() -> None:
    failed = cs.InteractionFailed(
        interaction_id="i1", status="failed", errors=[{"code": "internal", "message": "boom"}]
    )
    assert isinstance(failed, cs.APIError) and isinstance(failed, cs.ConvostoreError)
    assert (failed.interaction_id, failed.status) == ("i1", "failed")
    assert failed.errors == [{"code": "internal", "message": "boom"}]
    assert str(failed) == "interaction i1 ended failed: internal: boom"
    cancelled = cs.InteractionFailed(interaction_id="i2", status="cancelled")
    assert str(cancelled) == "interaction i2 ended cancelled" and cancelled.errors == []
    unfinished = cs.InteractionUnfinished(interaction_id=None, status="queued")
    assert isinstance(unfinished, cs.APIError) and not isinstance(unfinished, cs.InteractionFailed)
    assert str(unfinished) == "interaction (no id) ended queued"
    assert str(cs.InteractionUnfinished("still running", interaction_id="i", status=None)) == (
        "still running"
    )

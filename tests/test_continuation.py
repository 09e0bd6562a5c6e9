"""The continuation rules of ``convostore._core.continuation`` against the official SDK's own
functions (google-genai 3.6.1 ``_interactions_continuation``) on the same inputs: tables for
the documented cases, hypothesis for everything in between."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convostore as cs
from convostore._core import continuation as cont
from convostore._core.continuation import (
    Checkpoint,
    StreamResume,
    continuation_body,
    merge_hops,
    request_checkpoint,
)
from convostore._core.streaming import StreamAccumulator

sdk = pytest.importorskip("google.genai._interactions_continuation")
sdk_bridge = pytest.importorskip("google.genai._gaos.google_genai")
sdk_interaction = pytest.importorskip("google.genai._gaos.types.interactions.interaction")
sdk_errors = pytest.importorskip("google.genai.errors")

SETTINGS = settings(max_examples=300, deadline=None, database=None)

# --------------------------------------------------------------------------- continuation_body

BODIES = [
    {"model": "m", "input": "hi"},
    {"model": "m", "input": [{"type": "user_input", "content": []}], "store": True},
    {"model": "m", "input": "hi", "store": False, "tools": [{"type": "code_execution"}]},
    {"model": "m", "previous_interaction_id": "p0", "input": "hi", "system_instruction": "x"},
    {"model": "m"},
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("owner", [None, "h1"])
def test_continuation_body_is_the_sdks(body: dict[str, Any], owner: str | None) -> None:
    original = copy.deepcopy(body)
    ours = continuation_body(body, token="tok", owner_id=owner)
    assert ours == sdk._continuation_body(body, "tok", owner)
    assert body == original
    if owner and body.get("store") is not False:
        assert "input" not in ours and ours["previous_interaction_id"] == owner
    else:
        assert ours == {**body, "continuation_token": "tok"}


def test_continuation_body_store_argument_overrides_the_body() -> None:
    body = {"model": "m", "input": "hi"}
    assert continuation_body(body, token="t", owner_id="h1", store=False) == {
        "model": "m",
        "input": "hi",
        "continuation_token": "t",
    }
    assert continuation_body({**body, "store": False}, token="t", owner_id="h1", store=True) == {
        "model": "m",
        "store": False,
        "continuation_token": "t",
        "previous_interaction_id": "h1",
    }


@pytest.mark.parametrize(("token", "owner"), [("", None), (None, None), ("t", ""), ("t", 5)])
def test_continuation_body_refuses_bad_tokens(token: Any, owner: Any) -> None:
    with pytest.raises(cs.ValidationError):
        continuation_body({"model": "m"}, token=token, owner_id=owner)


def test_a_continuation_hop_body_rebuilds_itself_from_its_checkpoint() -> None:
    original = {"model": "m", "input": "hi"}
    hop = continuation_body(original, token="t1", owner_id="h1")
    checkpoint = request_checkpoint(hop)
    assert checkpoint == Checkpoint("t1", "h1")
    assert continuation_body(original, token=checkpoint.token, owner_id=checkpoint.owner_id) == hop
    stateless = continuation_body({**original, "store": False}, token="t1", owner_id="h1")
    assert request_checkpoint(stateless) == Checkpoint("t1")
    assert request_checkpoint({"model": "m", "input": "x", "continuation_token": "t"}) == (
        Checkpoint("t")
    )
    assert request_checkpoint(original) is None


# --------------------------------------------------------------------------- merge_hops


def sdk_merge(hops: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    merged = sdk.merge_unary_hops(
        [sdk_interaction.Interaction.model_validate(copy.deepcopy(h)) for h in hops],
        normalize_interaction=sdk_bridge._normalize_interaction_shape,
        finalize_interaction=sdk_bridge._add_output_properties_if_interaction,
    )
    dumped = merged.model_dump(mode="json")
    ids = dumped.pop("continuation_ids", None)
    for key in ("output_text", "output_image", "output_audio", "output_video"):
        dumped.pop(key, None)
    return dumped, ids


def text_step(kind: str, value: str) -> dict[str, Any]:
    return {"type": kind, "content": [{"type": "text", "text": value}]}


HOP1 = {
    "id": "h1",
    "status": "requires_continuation",
    "continuation_token": "t1",
    "created": "2026-01-01T00:00:00Z",
    "previous_interaction_id": "p0",
    "model": "m",
    "steps": [text_step("user_input", "q"), text_step("model_output", "Part 1 ")],
    "usage": {
        "total_input_tokens": 10,
        "total_output_tokens": 5,
        "total_tokens": 15,
        "input_tokens_by_modality": [{"modality": "text", "tokens": 10}],
        "grounding_tool_count": [{"type": "google_search", "count": 1}],
    },
}
HOP2 = {
    "id": "h2",
    "status": "requires_continuation",
    "continuation_token": "t2",
    "created": "2026-01-01T00:00:05Z",
    "previous_interaction_id": "h1",
    "steps": [text_step("user_input", "q"), {"type": "thought", "signature": "s"}],
    "usage": {
        "total_input_tokens": 12,
        "total_output_tokens": 3,
        "total_tokens": 15,
        "input_tokens_by_modality": [
            {"modality": "text", "tokens": 12},
            {"modality": "image", "tokens": 2},
        ],
    },
}
HOP3 = {
    "id": "h3",
    "status": "completed",
    "created": "2026-01-01T00:00:09Z",
    "previous_interaction_id": "h2",
    "steps": [text_step("model_output", "Part 2")],
    "usage": {"total_input_tokens": 14, "total_output_tokens": 2, "initial_input_tokens": 99},
}


@pytest.mark.parametrize(
    "hops",
    [
        [HOP1],
        [HOP1, HOP3],
        [HOP1, HOP2, HOP3],
        [HOP1, {**HOP3, "usage": None}],
        [{**HOP1, "usage": None}, HOP3],
        [HOP1, {**HOP3, "steps": None}],
        [{**HOP1, "created": None, "previous_interaction_id": None}, HOP2],
    ],
    ids=["one", "two", "three", "no-final-usage", "no-first-usage", "final-no-steps", "no-meta"],
)
def test_merge_hops_is_the_sdks(hops: list[dict[str, Any]]) -> None:
    hops = [{k: v for k, v in h.items() if v is not None} for h in hops]
    expected, ids = sdk_merge(hops)
    merged = merge_hops([cs.Interaction.from_raw(h) for h in hops])
    assert merged.raw == expected
    assert merged.hop_ids == (ids if ids is not None else [hops[-1]["id"]])


def test_merge_hops_result() -> None:
    merged = merge_hops([cs.Interaction.from_raw(h) for h in (HOP1, HOP2, HOP3)])
    assert (merged.id, merged.status, merged.continuation_token) == ("h3", "completed", None)
    assert merged.previous_interaction_id == "p0" and merged.created == HOP1["created"]
    assert merged.hop_ids == ["h1", "h2", "h3"]
    assert [s["type"] for s in merged.steps or []] == [
        "user_input",
        "model_output",
        "thought",
        "model_output",
    ]
    assert merged.output_text == "Part 1 Part 2"  # the thought between is skipped
    assert merged.raw["usage"] == {
        "total_input_tokens": 36,
        "total_output_tokens": 10,
        "total_tokens": 30,
        "input_tokens_by_modality": [
            {"modality": "text", "tokens": 22},
            {"modality": "image", "tokens": 2},
        ],
        "grounding_tool_count": [{"type": "google_search", "count": 1}],
        "initial_input_tokens": 10,
    }
    again = merge_hops([merge_hops([cs.Interaction.from_raw(HOP1)]), cs.Interaction.from_raw(HOP2)])
    assert again.hop_ids == ["h1", "h2"]
    assert HOP1["usage"]["total_input_tokens"] == 10  # inputs untouched
    with pytest.raises(cs.ValidationError):
        merge_hops([])


modalities = st.lists(
    st.fixed_dictionaries(
        {"modality": st.sampled_from(["text", "image", "audio"]), "tokens": st.integers(0, 50)}
    ),
    max_size=3,
)
usages = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "total_input_tokens": st.integers(0, 100),
            "total_output_tokens": st.integers(0, 100),
            "total_thought_tokens": st.integers(0, 100),
            "total_tokens": st.integers(0, 300),
            "initial_input_tokens": st.integers(0, 100),
            "input_tokens_by_modality": modalities,
            "cached_tokens_by_modality": modalities,
            "grounding_tool_count": st.lists(
                st.fixed_dictionaries(
                    {
                        "type": st.sampled_from(["google_search", "retrieval"]),
                        "count": st.integers(0, 5),
                    }
                ),
                max_size=2,
            ),
        },
    ),
)
hop_steps = st.lists(
    st.sampled_from(
        [
            text_step("user_input", "q"),
            text_step("model_output", "a"),
            text_step("model_output", "b"),
            {"type": "thought", "signature": "s"},
            {"type": "function_call", "id": "c", "name": "f", "arguments": {}},
            {"type": "brand_new", "x": 1},
        ]
    ),
    max_size=4,
)


@st.composite
def hop_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 4))
    hops = []
    for n in range(count):
        hop: dict[str, Any] = {"id": f"h{n}", "status": "requires_continuation"}
        steps = draw(st.one_of(st.none(), hop_steps))
        if steps is not None:
            hop["steps"] = steps
        usage = draw(usages)
        if usage is not None:
            hop["usage"] = usage
        for key, value in [("created", f"2026-01-0{n + 1}T00:00:00Z"), ("input", "q")]:
            if draw(st.booleans()):
                hop[key] = value
        hops.append(hop)
    hops[-1]["status"] = draw(st.sampled_from(["completed", "incomplete", "requires_action"]))
    return hops


@SETTINGS
@given(hops=hop_lists())
def test_merge_hops_matches_the_sdk_on_any_hops(hops: list[dict[str, Any]]) -> None:
    expected, ids = sdk_merge(hops)
    merged = merge_hops([cs.Interaction.from_raw(h) for h in hops])
    assert json.dumps(merged.raw, sort_keys=True) == json.dumps(expected, sort_keys=True)
    if ids is not None:
        assert merged.hop_ids == ids


# --------------------------------------------------------------------------- stream events

interaction_ids = st.sampled_from(["h1", "h2", ""])
tokens = st.one_of(st.none(), st.sampled_from(["t1", "t2", "t3", ""]))
statuses = st.one_of(
    st.none(),
    st.sampled_from(
        ["in_progress", "requires_continuation", "completed", "failed", "incomplete", ""]
    ),
)


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _snapshot(kind: str, iid: str, status: Any, token: Any) -> dict[str, Any]:
    interaction = _without_none({"id": iid, "status": status, "continuation_token": token})
    return {"event_type": kind, "interaction": interaction}


events = st.one_of(
    st.builds(_snapshot, st.just("interaction.created"), interaction_ids, statuses, tokens),
    st.builds(_snapshot, st.just("interaction.completed"), interaction_ids, statuses, tokens),
    st.builds(
        lambda iid, status, token: _without_none(
            {
                "event_type": "interaction.status_update",
                "interaction_id": iid,
                "status": status,
                "continuation_token": token,
            }
        ),
        interaction_ids,
        statuses,
        tokens,
    ),
    st.just({"event_type": "step.start", "index": 0, "step": {"type": "model_output"}}),
    st.just({"event_type": "step.delta", "index": 0, "delta": {"type": "text", "text": "x"}}),
    st.just({"event_type": "step.stop", "index": 0}),
    st.just({"event_type": "error", "error": {"code": "internal", "message": "boom"}}),
    st.just({"event_type": "something.new", "x": 1}),
)


@SETTINGS
@given(sequence=st.lists(events, max_size=10))
def test_event_rules_are_the_sdks(sequence: list[dict[str, Any]]) -> None:
    status: str | None = None
    token: str | None = None
    content = False
    for event in sequence:
        assert cont.event_interaction_id(event) == sdk._event_interaction_id(event)
        expected = sdk._extract_hop_continuation_state(event, status, token)
        assert cont.extract_hop_state(event, status, token) == expected
        status, token = expected
        expected_content = sdk._has_content_since_checkpoint(event, content)
        assert cont.has_content_since_checkpoint(event, content) == expected_content
        content = expected_content
        assert cont.can_resume_stream_hop(status, token) == sdk._can_resume_stream_hop(
            status, token
        )
    for count in range(5):
        for start in (None, "t1"):
            assert cont.next_no_progress_reconnects(
                count, status, start, token
            ) == sdk._next_no_progress_reconnects(count, status, start, token)


@SETTINGS
@given(sequence=st.lists(events, max_size=10), seed=st.sampled_from([None, "t0"]))
def test_the_accumulators_checkpoint_is_the_sdks_hop_state(
    sequence: list[dict[str, Any]], seed: str | None
) -> None:
    state = sdk.StreamContinuation(initial_continuation_token=seed)
    state.start_hop(stream_opened=True)
    accumulator = StreamAccumulator(resume_from=Checkpoint(seed) if seed else None)
    for event in sequence:
        state.observe(event)
        try:
            accumulator.add(event)
        except cs.StreamError:  # pragma: no cover - no arguments deltas here
            raise
        hop = state._hop
        checkpoint = accumulator.checkpoint
        assert (checkpoint.token if checkpoint else None) == hop.token
        assert (checkpoint.owner_id if checkpoint else None) == (
            hop.token_owner_id if hop.token else None
        )
        assert accumulator.content_since_checkpoint == hop.content_since_checkpoint
        assert accumulator.can_resume == state._can_resume_hop()


# --------------------------------------------------------------------------- StreamResume


class Dropped(Exception):
    """A transport failure (the SDK's connection_error_type here)."""


class Refused(Exception):
    """An HTTP status error before the stream opened."""


checkpoints = st.builds(
    lambda iid, token: {
        "event_type": "interaction.status_update",
        "interaction_id": iid,
        "status": "in_progress",
        "continuation_token": token,
    },
    st.sampled_from(["h1", "h2", "h3"]),
    st.sampled_from(["t1", "t2", "t3"]),
)
hops_of_a_stream = st.lists(
    st.tuples(
        st.booleans(),  # the hop's response opened (later hops)
        st.lists(st.one_of(checkpoints, events), max_size=6),
        st.sampled_from([None, "dropped", "refused"]),
    ),
    min_size=1,
    max_size=7,
)


@SETTINGS
@given(
    hops=hops_of_a_stream,
    initial=st.sampled_from([None, "t0", "t1"]),
    stateful=st.booleans(),
)
def test_stream_resume_decides_as_the_sdk(
    hops: list[tuple[bool, list[dict[str, Any]], str | None]],
    initial: str | None,
    stateful: bool,
) -> None:
    theirs = sdk.StreamContinuation(
        initial_continuation_token=initial, connection_error_type=Dropped, stateful=stateful
    )
    ours = StreamResume(initial_token=initial, stateful=stateful)
    for position, (opened, hop_events, ending) in enumerate(hops):
        first = position == 0
        assert ours.start_hop(stream_opened=first) == theirs.start_hop(stream_opened=first)
        if opened and not first:
            theirs.mark_stream_opened()
            ours.mark_stream_opened()
        for event in hop_events if (opened or first) else []:
            theirs.observe(event)
            ours.observe(event)
        assert (ours.status, ours.token, ours.can_resume) == (
            theirs._hop.status,
            theirs._hop.token,
            theirs._can_resume_hop(),
        )
        error: Exception | None = {"dropped": Dropped("cut"), "refused": Refused("400")}.get(
            ending or ""
        )
        end = ours.end_hop(error, connection_error=isinstance(error, Dropped))
        try:
            again = theirs.end_hop(error)
        except sdk_errors.ContinuationInterruptedError as raised:
            assert end.interrupted and not end.resume
            assert end.error is raised.__cause__
            assert (end.token, end.owner_id) == (raised.continuation_token, raised.interaction_id)
            assert list(end.hop_ids) == raised.continuation_ids
            return
        except (Dropped, Refused) as raised:
            assert end.error is raised and not end.interrupted and not end.resume
            return
        assert end.error is None and not end.interrupted
        assert end.resume == again
        assert ours.no_progress_reconnects == theirs._no_progress_reconnects
        if not again:
            return
        assert (end.token, end.owner_id) == (theirs._next_token, theirs._next_token_owner_id)
        assert list(end.hop_ids) == theirs._hop_ids


def test_stream_resume_gives_up_after_three_reconnects_without_progress() -> None:
    state = StreamResume()
    state.start_hop(stream_opened=True)
    state.observe(
        {"event_type": "interaction.created", "interaction": {"id": "h1", "status": "in_progress"}}
    )
    state.observe(
        {
            "event_type": "interaction.status_update",
            "interaction_id": "h1",
            "status": "in_progress",
            "continuation_token": "t1",
        }
    )
    end = state.end_hop(ConnectionError("cut"))
    assert (end.resume, end.token, end.owner_id) == (True, "t1", "h1")  # progress: a new token
    for attempt in range(1, cont.MAX_STREAM_RECONNECTS_WITHOUT_PROGRESS + 1):
        assert state.start_hop() == ("t1", "h1")
        end = state.end_hop(ConnectionError("cut again"))
        assert end.resume and state.no_progress_reconnects == attempt
    state.start_hop()
    last = ConnectionError("still cut")
    end = state.end_hop(last)
    assert not end.resume and end.error is last
    assert end.interrupted and (end.token, end.owner_id) == ("t1", "h1")
    assert end.hop_ids == ("h1",)


def test_stream_resume_never_resumes_over_output_or_after_an_http_error() -> None:
    state = StreamResume()
    state.start_hop(stream_opened=True)
    state.observe(
        {
            "event_type": "interaction.status_update",
            "interaction_id": "h1",
            "status": "in_progress",
            "continuation_token": "t1",
        }
    )
    state.observe({"event_type": "step.delta", "index": 0, "delta": {"type": "text", "text": "x"}})
    assert state.content_since_checkpoint and not state.can_resume
    cut = ConnectionError("cut")
    end = state.end_hop(cut)
    assert (end.resume, end.error, end.interrupted, end.token) == (False, cut, True, "t1")
    fresh = StreamResume(initial_token="t0")
    assert fresh.start_hop() == ("t0", None)
    refused = ValueError("400")
    end = fresh.end_hop(refused, connection_error=False)
    assert (end.resume, end.error, end.interrupted) == (False, refused, False)
    assert fresh.end_hop() == cont.HopEnd(resume=True, token="t0", owner_id=None, hop_ids=())

"""Create: validation, the first hop of an answer or the resumption of one, the response.

A create either starts a turn (input normalised, ``previous_interaction_id`` chain resolved,
the service's rules checked, the answer generated and cut into a decode plan) or continues one
with ``continuation_token`` (see ``_decode``). Either way it produces one hop, finished at
once or later (see ``_lifecycle``), answered as JSON or as a stream.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from ._decode import (
    ContinuationPoint,
    Hop,
    hop_end,
    hop_steps,
    partial_end,
    plan_answer,
)
from ._lifecycle import Outcome, finish, start_later, truncate_owner
from ._model import InputError, count_words, generate, normalize_input, validate_context
from ._responses import EventStream, append_events, interaction_body, opening_events
from ._state import (
    UNFINISHED_STATUSES,
    EmulatorSettings,
    EmulatorState,
    StatusFault,
    StoredInteraction,
    new_interaction_id,
)

__all__ = ["Reject", "create", "resolve_chain"]

_CREATE_FIELDS = frozenset(
    {
        "model",
        "agent",
        "input",
        "system_instruction",
        "generation_config",
        "tools",
        "previous_interaction_id",
        "store",
        "stream",
        "background",
        "response_format",
        "response_mime_type",
        "response_modalities",
        "safety_settings",
        "service_tier",
        "continuation_token",
        "labels",
        "webhook_config",
        "environment",
        "cached_content",
        "agent_config",
    }
)
# Interaction-scoped: kept on the stored interaction, never inherited through a chain.
_CONFIG_FIELDS = _CREATE_FIELDS - {
    "model",
    "agent",
    "input",
    "previous_interaction_id",
    "store",
    "stream",
    "background",
}


class Reject(Exception):
    """A request the service would refuse: answered ``{"error": {code, message}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _check_create_body(body: Any, settings: EmulatorSettings) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Reject(400, "invalid_request", "request body must be a JSON object")
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown and settings.reject_unknown_fields:
        raise Reject(400, "parameter_unknown", f"Unknown name(s): {', '.join(unknown)}")
    if not isinstance(body.get("model"), str) and not isinstance(body.get("agent"), str):
        raise Reject(400, "invalid_request", "one of 'model' or 'agent' is required")
    if body.get("model") is not None and body.get("agent") is not None:
        raise Reject(400, "invalid_request", "'model' and 'agent' cannot both be set")
    for key in ("store", "stream", "background"):
        if key in body and not isinstance(body[key], bool):
            raise Reject(400, "invalid_request", f"'{key}' must be a boolean")
    for key in ("previous_interaction_id", "system_instruction"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise Reject(400, "invalid_request", f"'{key}' must be a string")
    if "tools" in body and not isinstance(body["tools"], list):
        raise Reject(400, "invalid_request", "'tools' must be a list")
    if body.get("background") and body.get("store") is False:
        raise Reject(400, "invalid_request", "'background' requires 'store' (store=false given)")
    config = body.get("webhook_config")
    if config is not None and not (
        isinstance(config, dict)
        and isinstance(config.get("uris", []), list)
        and isinstance(config.get("user_metadata", {}), dict)
    ):
        raise Reject(
            400,
            "invalid_request",
            "'webhook_config' must be an object with 'uris' (a list) and "
            "'user_metadata' (an object)",
        )
    return body


def resolve_chain(state: EmulatorState, previous: str | None) -> list[dict[str, Any]]:
    chain: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    current = previous
    while current and current not in seen:
        seen.add(current)
        rec = state.live(current)
        if rec is None:
            raise Reject(404, "not_found", f"Interaction {current} not found")
        chain.append([*rec.input_steps, *rec.output_steps])
        current = rec.previous_interaction_id
    return copy.deepcopy([step for turn in reversed(chain) for step in turn])


def _outcome(hop: Hop, limit: int | None, fault: StatusFault | None) -> Outcome:
    """Where the hop ends and with which status: the decode limit, or an imposed status."""
    plan, start = hop.plan, hop.start
    if fault is not None and fault.status in ("failed", "cancelled"):
        end, status = start, fault.status
    elif fault is not None and fault.status in ("incomplete", "budget_exceeded"):
        end, status = partial_end(plan, start), fault.status
    else:
        end = hop_end(plan, start, limit)
        status = plan.status if end >= plan.size else "requires_continuation"
    errors = fault.errors if fault is not None and fault.status not in UNFINISHED_STATUSES else None
    if status == "failed" and not errors:
        errors = [{"code": "internal", "message": "injected failure"}]
    return Outcome(Hop(plan, start, end, hop.context), status, errors)


def _resume(
    state: EmulatorState, body: dict[str, Any], stored: bool
) -> tuple[Hop, ContinuationPoint, list[dict[str, Any]]]:
    """Validate a create that carries ``continuation_token``; the hop it starts and its input."""
    token = body["continuation_token"]
    if not isinstance(token, str) or not token:
        raise Reject(400, "invalid_request", "'continuation_token' must be a non-empty string")
    if body.get("background"):
        raise Reject(400, "invalid_request", "'continuation_token' cannot be used with background")
    with state.lock:
        point = state.tokens.get(token)
    if point is None:
        raise Reject(400, "invalid_request", "Invalid continuation_token.")
    plan, previous = point.plan, body.get("previous_interaction_id")
    if body.get("model") != plan.model or body.get("agent") is not None:
        raise Reject(
            400, "invalid_request", f"continuation_token was issued for model {plan.model}"
        )
    context: dict[str, Any] = {"system_instruction": body.get("system_instruction")}
    if stored:
        if body.get("input") is not None:
            raise Reject(
                400,
                "invalid_request",
                "'input' must be omitted when continuing a stored interaction "
                "(send previous_interaction_id and continuation_token only)",
            )
        if point.owner_id is None or previous != point.owner_id:
            raise Reject(
                400,
                "invalid_request",
                f"continuation_token was not issued by interaction {previous}; send the id of "
                "the interaction that returned it as previous_interaction_id",
            )
        steps: list[dict[str, Any]] = []
    else:
        try:
            steps = normalize_input(body.get("input"))
        except InputError as exc:
            raise Reject(400, "invalid_request", str(exc)) from exc
        if steps != plan.turn_input or previous != plan.turn_previous_id:
            raise Reject(
                400,
                "invalid_request",
                "continuation_token does not match this request: with store=false, re-send the "
                "original input (and previous_interaction_id) with the token",
            )
        context["input"] = steps
        context["prefix"] = hop_steps(plan, 0, point.position)
    with state.lock:
        context["chain"] = resolve_chain(state, previous)
    return Hop(plan, point.position, point.position, context), point, steps


def _first_hop(body: dict[str, Any], state: EmulatorState) -> tuple[Hop, list[dict[str, Any]]]:
    try:
        steps = normalize_input(body.get("input"))
    except InputError as exc:
        raise Reject(400, "invalid_request", str(exc)) from exc
    with state.lock:
        chain = resolve_chain(state, body.get("previous_interaction_id"))
    try:
        validate_context(chain, steps)
    except InputError as exc:
        raise Reject(400, "invalid_request", str(exc)) from exc
    window = state.settings.context_window(body.get("model"))
    if window is not None:
        size = count_words(body.get("system_instruction")) + count_words(chain)
        size += count_words(steps)
        if size > window:
            raise Reject(
                400,
                "invalid_request",
                f"The input token count ({size}) exceeds the maximum number of tokens "
                f"allowed ({window}).",
            )
    generation = generate(
        chain,
        steps,
        system_instruction=body.get("system_instruction"),
        tools=body.get("tools"),
        response_format=body.get("response_format"),
    )
    plan = plan_answer(
        generation,
        model=body.get("model"),
        turn_input=steps,
        turn_previous_id=body.get("previous_interaction_id"),
    )
    context = {"system_instruction": body.get("system_instruction"), "chain": chain, "input": steps}
    return Hop(plan, 0, 0, context), steps


async def create(state: EmulatorState, raw: Any) -> Response:
    with state.lock:
        settings = state.settings.copy()
    body = _check_create_body(raw, settings)
    stored = body.get("store", True) is not False
    background = bool(body.get("background"))
    point: ContinuationPoint | None = None
    if body.get("continuation_token") is not None:
        hop, point, steps = _resume(state, body, stored)
    else:
        hop, steps = _first_hop(body, state)
    # A background interaction is continued by the server itself: no decode limit applies.
    limit = None if background else settings.decode_limit(body.get("model"))
    with state.lock:
        fault = state.take_status_fault()
    outcome = _outcome(hop, limit, fault)
    running = "in_progress" if background else None
    if fault is not None and fault.status in UNFINISHED_STATUSES:
        running = fault.status
    now = time.time()
    webhook_config = body.get("webhook_config")
    rec = StoredInteraction(
        id=new_interaction_id(),
        model=body.get("model"),
        agent=body.get("agent"),
        created=now,
        updated=now,
        status=running or "in_progress",
        raw_input=copy.deepcopy(body.get("input")),
        input_steps=[] if point is not None and stored else copy.deepcopy(steps),
        output_steps=[],
        config={k: copy.deepcopy(v) for k, v in body.items() if k in _CONFIG_FIELDS},
        previous_interaction_id=body.get("previous_interaction_id"),
        usage={},
        background=background,
        webhook_config=copy.deepcopy(webhook_config) if isinstance(webhook_config, dict) else None,
    )
    with state.lock:
        if point is not None and stored:
            truncate_owner(state, point)
        if stored:
            state.interactions[rec.id] = rec
        append_events(rec, opening_events(rec, rec.status))
        if running is None:
            finish(state, rec, outcome, stored=stored)
        else:
            start_later(state, rec, outcome, stored=stored)
        streams = bool(body.get("stream")) and not background
        stream_fault = state.take_stream_fault() if streams else None
        response_steps = copy.deepcopy(rec.output_steps)
        if settings.echo_user_input:
            response_steps = [s for s in rec.input_steps if s.get("type") == "user_input"] + (
                response_steps
            )
        payload = interaction_body(rec, response_steps)
    if streams:
        return EventStream(state, rec, stream_fault)
    return JSONResponse(payload)

"""The ASGI app: routes, validation, unary and SSE responses, faults.

Routes (any version segment, any path prefix before it; unknown query params ignored):
``POST /{ver}/interactions``, ``GET|DELETE /{ver}/interactions/{id}``,
``POST /{ver}/interactions/{id}/cancel``.

``cancel`` on a background interaction still running answers it with status ``cancelled``;
on any other interaction it answers ``400 failed_precondition``. A background create that also
asks for ``stream`` answers the ``in_progress`` interaction as JSON (stream it with
``GET ?stream=true``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._decode import (
    ContinuationPoint,
    DecodePlan,
    Hop,
    hop_end,
    hop_steps,
    partial_end,
    plan_answer,
)
from ._lifecycle import Outcome, cancel, finish, start_later, truncate_owner
from ._model import InputError, generate, normalize_input, validate_context
from ._responses import EventStream, append_events, interaction_body, opening_events
from ._state import (
    UNFINISHED_STATUSES,
    EmulatorSettings,
    EmulatorState,
    RecordedRequest,
    StatusFault,
    StoredInteraction,
    new_interaction_id,
)

__all__ = ["create_app"]

_ROUTE = re.compile(r"^(?:/.*)?/[^/]+/interactions(?:/(?P<id>[^/]+)(?P<cancel>/cancel)?)?/?$")
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
_STATUS_CODES = {
    400: "invalid_request",
    401: "authentication",
    403: "permission_denied",
    404: "not_found",
    409: "aborted",
    429: "rate_limit_exceeded",
    500: "api_error",
    503: "unavailable",
    504: "deadline_exceeded",
}


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _DroppedResponseFilter(logging.Filter):
    """``cut_stream`` drops connections on purpose; uvicorn would log each as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_DroppedResponseFilter())


def default_code(status: int) -> str:
    """The Interactions API string code for an HTTP status."""
    return _STATUS_CODES.get(status, "api_error" if status >= 500 else "invalid_request")


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _check_create_body(body: Any, settings: EmulatorSettings) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Reject(400, "invalid_request", "request body must be a JSON object")
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown and settings.reject_unknown_fields:
        raise _Reject(400, "parameter_unknown", f"Unknown name(s): {', '.join(unknown)}")
    if not isinstance(body.get("model"), str) and not isinstance(body.get("agent"), str):
        raise _Reject(400, "invalid_request", "one of 'model' or 'agent' is required")
    if body.get("model") is not None and body.get("agent") is not None:
        raise _Reject(400, "invalid_request", "'model' and 'agent' cannot both be set")
    for key in ("store", "stream", "background"):
        if key in body and not isinstance(body[key], bool):
            raise _Reject(400, "invalid_request", f"'{key}' must be a boolean")
    for key in ("previous_interaction_id", "system_instruction"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _Reject(400, "invalid_request", f"'{key}' must be a string")
    if "tools" in body and not isinstance(body["tools"], list):
        raise _Reject(400, "invalid_request", "'tools' must be a list")
    if body.get("background") and body.get("store") is False:
        raise _Reject(400, "invalid_request", "'background' requires 'store' (store=false given)")
    config = body.get("webhook_config")
    if config is not None and not (
        isinstance(config, dict)
        and isinstance(config.get("uris", []), list)
        and isinstance(config.get("user_metadata", {}), dict)
    ):
        raise _Reject(
            400,
            "invalid_request",
            "'webhook_config' must be an object with 'uris' (a list) and "
            "'user_metadata' (an object)",
        )
    return body


def _resolve_chain(state: EmulatorState, previous: str | None) -> list[dict[str, Any]]:
    chain: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    current = previous
    while current and current not in seen:
        seen.add(current)
        rec = state.live(current)
        if rec is None:
            raise _Reject(404, "not_found", f"Interaction {current} not found")
        chain.append([*rec.input_steps, *rec.output_steps])
        current = rec.previous_interaction_id
    return copy.deepcopy([step for turn in reversed(chain) for step in turn])


def _outcome(plan: DecodePlan, hop: Hop, limit: int | None, fault: StatusFault | None) -> Outcome:
    start = hop.start
    if fault is not None and fault.status in ("failed", "cancelled"):
        end, status = start, fault.status
    elif fault is not None and fault.status in ("incomplete", "budget_exceeded"):
        end, status = partial_end(plan, start), fault.status
    else:
        end = hop_end(plan, start, limit)
        status = plan.status if end >= plan.size else "requires_continuation"
    errors = fault.errors if fault is not None else None
    if status == "failed" and not errors:
        errors = [{"code": "internal", "message": "injected failure"}]
    return Outcome(Hop(plan, start, end, hop.context), status, errors)


def _resume(
    state: EmulatorState, body: dict[str, Any], stored: bool
) -> tuple[Hop, ContinuationPoint, list[dict[str, Any]]]:
    """Validate a create that carries ``continuation_token``; the hop it starts and its input."""
    token = body["continuation_token"]
    if not isinstance(token, str) or not token:
        raise _Reject(400, "invalid_request", "'continuation_token' must be a non-empty string")
    if body.get("background"):
        raise _Reject(400, "invalid_request", "'continuation_token' cannot be used with background")
    with state.lock:
        point = state.tokens.get(token)
    if point is None:
        raise _Reject(400, "invalid_request", "Invalid continuation_token.")
    plan, previous = point.plan, body.get("previous_interaction_id")
    if body.get("model") != plan.model or body.get("agent") is not None:
        raise _Reject(
            400, "invalid_request", f"continuation_token was issued for model {plan.model}"
        )
    context: dict[str, Any] = {"system_instruction": body.get("system_instruction")}
    if stored:
        if body.get("input") is not None:
            raise _Reject(
                400,
                "invalid_request",
                "'input' must be omitted when continuing a stored interaction "
                "(send previous_interaction_id and continuation_token only)",
            )
        if point.owner_id is None or previous != point.owner_id:
            raise _Reject(
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
            raise _Reject(400, "invalid_request", str(exc)) from exc
        if steps != plan.turn_input or previous != plan.turn_previous_id:
            raise _Reject(
                400,
                "invalid_request",
                "continuation_token does not match this request: with store=false, re-send the "
                "original input (and previous_interaction_id) with the token",
            )
        context["input"] = steps
        context["prefix"] = hop_steps(plan, 0, point.position)
    with state.lock:
        context["chain"] = _resolve_chain(state, previous)
    return Hop(plan, point.position, point.position, context), point, steps


def _first_hop(body: dict[str, Any], state: EmulatorState) -> tuple[Hop, list[dict[str, Any]]]:
    try:
        steps = normalize_input(body.get("input"))
    except InputError as exc:
        raise _Reject(400, "invalid_request", str(exc)) from exc
    with state.lock:
        chain = _resolve_chain(state, body.get("previous_interaction_id"))
    try:
        validate_context(chain, steps)
    except InputError as exc:
        raise _Reject(400, "invalid_request", str(exc)) from exc
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


async def _create(state: EmulatorState, raw: Any) -> Response:
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
    outcome = _outcome(hop.plan, hop, limit, fault)
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


async def _get(state: EmulatorState, interaction_id: str, query: dict[str, str]) -> Response:
    with state.lock:
        found = state.live(interaction_id)
        if found is None:
            raise _Reject(404, "not_found", f"Interaction {interaction_id} not found")
        if query.get("stream", "").lower() != "true":
            include = query.get("include_input", "").lower() == "true"
            steps = [*found.input_steps, *found.output_steps]
            return JSONResponse(interaction_body(found, steps, include_input=include))
        after = query.get("last_event_id")
        if after is not None and not after.lstrip("-").isdigit():
            raise _Reject(400, "invalid_request", "last_event_id must be an event id")
        fault = state.take_stream_fault()
    return EventStream(state, found, fault, after=int(after) if after is not None else -1)


def _delete(state: EmulatorState, interaction_id: str) -> Response:
    with state.lock:
        if state.live(interaction_id) is None:
            raise _Reject(404, "not_found", f"Interaction {interaction_id} not found")
        del state.interactions[interaction_id]
    return JSONResponse({})


def _cancel(state: EmulatorState, interaction_id: str) -> Response:
    with state.lock:
        rec = state.live(interaction_id)
        if rec is None:
            raise _Reject(404, "not_found", f"Interaction {interaction_id} not found")
        if rec.finished:
            raise _Reject(
                400,
                "failed_precondition",
                f"Interaction {interaction_id} is not running (status {rec.status}); "
                "only a running interaction can be cancelled",
            )
        cancel(state, rec)
        return JSONResponse(interaction_body(rec, []))


def _has_key(request: Request) -> bool:
    auth = request.headers.get("authorization", "")
    return bool(
        request.headers.get("x-goog-api-key")
        or (auth.lower().startswith("bearer ") and auth[7:].strip())
        or request.query_params.get("key")
    )


async def _dispatch(state: EmulatorState, request: Request, body: Any) -> Response:
    match = _ROUTE.match(request.scope["path"])
    if match is None:
        raise _Reject(404, "not_found", f"No route for {request.scope['path']}")
    method, interaction_id = request.method, match.group("id")
    query = dict(request.query_params)
    if interaction_id is None:
        if method == "POST":
            return await _create(state, body)
    elif match.group("cancel"):
        if method == "POST":
            return _cancel(state, interaction_id)
    elif method == "GET":
        return await _get(state, interaction_id, query)
    elif method == "DELETE":
        return _delete(state, interaction_id)
    raise _Reject(405, "invalid_request", f"{method} is not allowed on {request.scope['path']}")


def _handler(state: EmulatorState) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        raw = await request.body()
        body: Any = None
        bad_json = False
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                body, bad_json = raw.decode("utf-8", "replace"), True
        recorded = RecordedRequest(
            method=request.method,
            path=request.scope["path"],
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        with state.lock:
            state.requests.append(recorded)
            pause = state.take_delay()
            fault = state.take_fault(request.method)
            require_key = state.settings.require_api_key
        if pause:
            await asyncio.sleep(pause)
        if fault is not None:
            headers: dict[str, str] = {}
            if fault.retry_after is not None:
                headers["retry-after"] = f"{fault.retry_after:g}"
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fault.retry_after_ms)
            return _error(fault.status, fault.code, "injected fault", headers)
        if require_key and not _has_key(request):
            return _error(401, "authentication", "API key missing: send x-goog-api-key")
        try:
            if bad_json:
                raise _Reject(400, "invalid_request", "request body is not valid JSON")
            return await _dispatch(state, request, body)
        except _Reject as exc:
            return _error(exc.status, exc.code, exc.message)

    return handle


def create_app(
    state: EmulatorState | None = None,
    **options: Any,
) -> Starlette:
    """The emulator as a Starlette app, for in-process use (e.g. ``httpx.ASGITransport``).

    Args:
        state: shared state (a new one when omitted).
        **options: ``retention``, ``require_api_key``, ``echo_user_input``,
            ``reject_unknown_fields`` as for :class:`~convostore.emulator.Emulator`; only used
            when ``state`` is omitted.
    """
    if state is None:
        from ._server import settings_from_options

        state = EmulatorState(settings_from_options(**options))
    elif options:
        raise TypeError("pass options either through state or as keywords, not both")
    handle = _handler(state)
    methods = ["GET", "POST", "DELETE", "PUT", "PATCH"]
    app = Starlette(routes=[Route("/{path:path}", handle, methods=methods)])
    app.state.emulator = state
    return app

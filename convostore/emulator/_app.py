"""The ASGI app: routes, get / delete / cancel, API key check, injected faults.

Routes (any version segment, any path prefix before it; unknown query params ignored):
``POST /{ver}/interactions``, ``GET|DELETE /{ver}/interactions/{id}``,
``POST /{ver}/interactions/{id}/cancel``.

``cancel`` on an interaction still running (``background``, or left ``in_progress`` /
``queued`` / ``idle`` by ``Emulator.next_status``) answers it with status ``cancelled``; on
one that has finished it answers ``400 failed_precondition``. A background create that also
asks for ``stream`` answers the ``in_progress`` interaction as JSON (stream it with
``GET ?stream=true``, which sends its events live until it finishes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._create import Reject, create
from ._lifecycle import cancel
from ._responses import EventStream, interaction_body
from ._state import EmulatorState, RecordedRequest

__all__ = ["create_app"]

_ROUTE = re.compile(r"^(?:/.*)?/[^/]+/interactions(?:/(?P<id>[^/]+)(?P<cancel>/cancel)?)?/?$")
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


async def _get(state: EmulatorState, interaction_id: str, query: dict[str, str]) -> Response:
    with state.lock:
        found = state.live(interaction_id)
        if found is None:
            raise Reject(404, "not_found", f"Interaction {interaction_id} not found")
        if query.get("stream", "").lower() != "true":
            include = query.get("include_input", "").lower() == "true"
            steps = [*found.input_steps, *found.output_steps]
            return JSONResponse(interaction_body(found, steps, include_input=include))
        after = query.get("last_event_id")
        if after is not None and not after.lstrip("-").isdigit():
            raise Reject(400, "invalid_request", "last_event_id must be an event id")
        fault = state.take_stream_fault()
    return EventStream(state, found, fault, after=int(after) if after is not None else -1)


def _delete(state: EmulatorState, interaction_id: str) -> Response:
    with state.lock:
        if state.live(interaction_id) is None:
            raise Reject(404, "not_found", f"Interaction {interaction_id} not found")
        del state.interactions[interaction_id]
    return JSONResponse({})


def _cancel(state: EmulatorState, interaction_id: str) -> Response:
    with state.lock:
        rec = state.live(interaction_id)
        if rec is None:
            raise Reject(404, "not_found", f"Interaction {interaction_id} not found")
        if rec.finished:
            raise Reject(
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
        raise Reject(404, "not_found", f"No route for {request.scope['path']}")
    method, interaction_id = request.method, match.group("id")
    query = dict(request.query_params)
    if interaction_id is None:
        if method == "POST":
            return await create(state, body)
    elif match.group("cancel"):
        if method == "POST":
            return _cancel(state, interaction_id)
    elif method == "GET":
        return await _get(state, interaction_id, query)
    elif method == "DELETE":
        return _delete(state, interaction_id)
    raise Reject(405, "invalid_request", f"{method} is not allowed on {request.scope['path']}")


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
                raise Reject(400, "invalid_request", "request body is not valid JSON")
            return await _dispatch(state, request, body)
        except Reject as exc:
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

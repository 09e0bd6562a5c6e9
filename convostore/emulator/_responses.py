"""What the emulator sends back: interaction bodies and server-sent event streams.

Events follow the order the service documents: ``interaction.created``, then per generated
step ``step.start`` / ``step.delta``* / ``step.stop`` (0-based ``index``), then
``interaction.completed`` carrying status, usage and the full ``steps``. Every frame has
``event:``, ``id:`` and a ``data:`` line whose JSON repeats ``event_type`` and ``event_id``.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ._state import StoredInteraction, StreamFault, isoformat

__all__ = ["EventStream", "build_events", "interaction_body"]


def _frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False)
    return f"event: {event['event_type']}\nid: {event['event_id']}\ndata: {data}\n\n".encode()


class EventStream(Response):
    """``text/event-stream`` of prepared events, optionally cut or ended by an error event."""

    def __init__(self, events: list[dict[str, Any]], fault: StreamFault | None) -> None:
        self.status_code = 200
        self.background = None
        self.body = b""
        self.events = events
        self.fault = fault
        self.raw_headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        fault = self.fault
        for position, event in enumerate(self.events):
            if fault is not None and position == fault.after_events:
                if fault.code is None:
                    return  # leave the response incomplete: the server drops the connection
                error = {
                    "event_type": "error",
                    "event_id": str(event["event_id"]),
                    "error": {"code": fault.code, "message": fault.message},
                }
                await send({"type": "http.response.body", "body": _frame(error), "more_body": True})
                break
            await send({"type": "http.response.body", "body": _frame(event), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def interaction_body(
    rec: StoredInteraction, steps: list[dict[str, Any]] | None, *, include_input: bool = False
) -> dict[str, Any]:
    """The Interaction JSON of ``rec`` with the given ``steps`` (omitted when None)."""
    body: dict[str, Any] = {"id": rec.id, "object": "interaction", "status": rec.status}
    for key, value in (("model", rec.model), ("agent", rec.agent)):
        if value is not None:
            body[key] = value
    body["created"], body["updated"] = isoformat(rec.created), isoformat(rec.updated)
    if rec.previous_interaction_id:
        body["previous_interaction_id"] = rec.previous_interaction_id
    if steps is not None:
        body["steps"] = copy.deepcopy(steps)
    if rec.status != "in_progress":
        body["usage"] = dict(rec.usage)
    if include_input:
        body["input"] = copy.deepcopy(rec.raw_input)
    return body


def _chunks(text: str, words: int = 3) -> list[str]:
    pieces = re.findall(r"\s*\S+", text)
    return ["".join(pieces[i : i + words]) for i in range(0, len(pieces), words)] or [text]


def _step_events(index: int, step: dict[str, Any]) -> list[dict[str, Any]]:
    kind = step.get("type")
    deltas: list[dict[str, Any]] = []
    if kind == "model_output":
        start: dict[str, Any] = {"type": "model_output"}
        for part in step.get("content", []):
            if part.get("type") == "text":
                deltas += [{"type": "text", "text": t} for t in _chunks(part["text"])]
    elif kind == "thought":
        start = {"type": "thought"}
        deltas += [{"type": "thought_summary", "content": c} for c in step.get("summary", [])]
        deltas.append({"type": "thought_signature", "signature": step.get("signature")})
    elif kind == "function_call":
        start = {**step, "arguments": {}}
        encoded = json.dumps(step.get("arguments", {}))
        deltas += [
            {"type": "arguments_delta", "arguments": encoded[i : i + 16]}
            for i in range(0, len(encoded), 16)
        ]
    else:
        start = step
    return [
        {"event_type": "step.start", "index": index, "step": start},
        *({"event_type": "step.delta", "index": index, "delta": d} for d in deltas),
        {"event_type": "step.stop", "index": index},
    ]


def build_events(rec: StoredInteraction) -> list[dict[str, Any]]:
    """Every event of the stream of ``rec``, numbered from ``"0"`` (kept for resumption)."""
    head = interaction_body(rec, None)
    head["status"] = "in_progress"
    head.pop("usage", None)
    events: list[dict[str, Any]] = [{"event_type": "interaction.created", "interaction": head}]
    for index, step in enumerate(rec.output_steps):
        events += _step_events(index, step)
    events.append(
        {
            "event_type": "interaction.completed",
            "interaction": interaction_body(rec, rec.output_steps),
        }
    )
    for number, event in enumerate(events):
        event["event_id"] = str(number)
    return events

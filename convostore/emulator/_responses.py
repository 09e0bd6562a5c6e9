"""What the emulator sends back: interaction bodies and server-sent event streams.

Events follow the order the service documents: ``interaction.created``, an
``interaction.status_update`` with the running status, then per generated step ``step.start``
/ ``step.delta``* / ``step.stop`` (0-based ``index``), then ``interaction.completed`` carrying
status, usage and the full ``steps``. A hop that ends ``requires_continuation`` (or
``failed``, ``cancelled``, ``incomplete``, ``budget_exceeded``) sends one more
``interaction.status_update`` with that status (and the ``continuation_token``) right before
``interaction.completed``. With checkpoints on, an ``interaction.status_update`` (status
``in_progress``, a ``continuation_token``) follows every K-th text delta. Every frame has
``event:``, ``id:`` and a ``data:`` line whose JSON repeats ``event_type`` and ``event_id``.

An interaction's events are kept on it (for ``GET ?stream=true`` and ``last_event_id``); a
stream sends them as they are appended, until the interaction has finished.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ._decode import Hop, text_groups
from ._state import EmulatorState, StoredInteraction, StreamFault, isoformat

__all__ = [
    "EventStream",
    "append_events",
    "closing_events",
    "interaction_body",
    "opening_events",
    "output_events",
]

_POLL_SECONDS = 0.01
_QUIET_FINAL_STATUSES = frozenset({"completed", "requires_action"})


def _frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False)
    return f"event: {event['event_type']}\nid: {event['event_id']}\ndata: {data}\n\n".encode()


def _is_checkpoint(event: dict[str, Any]) -> bool:
    return event.get("event_type") == "interaction.status_update" and bool(
        event.get("continuation_token")
    )


class EventStream(Response):
    """``text/event-stream`` of an interaction's events after ``after`` (an event id), sent as
    they are appended until it finishes; optionally cut or ended by an error event."""

    def __init__(
        self,
        state: EmulatorState,
        rec: StoredInteraction,
        fault: StreamFault | None,
        *,
        after: int = -1,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.body = b""
        self.state, self.rec, self.fault, self.after = state, rec, fault, after
        self.raw_headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:  # a client that left stops a stream that is waiting
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self._send_events(send, gone)
        finally:
            watcher.cancel()

    async def _send_events(self, send: Send, gone: asyncio.Event) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        fault = self.fault
        position = checkpoints = 0
        next_index = 0
        while True:
            with self.state.lock:
                events = copy.deepcopy(self.rec.events[next_index:])
                finished = self.rec.finished
            next_index += len(events)
            for event in events:
                if int(event["event_id"]) <= self.after:
                    continue
                if fault is not None and position == fault.after_events:
                    if fault.code is None:
                        return  # leave the response incomplete: the server drops the connection
                    error = {
                        "event_type": "error",
                        "event_id": str(event["event_id"]),
                        "error": {"code": fault.code, "message": fault.message},
                    }
                    await send(
                        {"type": "http.response.body", "body": _frame(error), "more_body": True}
                    )
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                await send({"type": "http.response.body", "body": _frame(event), "more_body": True})
                position += 1
                if fault is not None and fault.after_checkpoint and _is_checkpoint(event):
                    checkpoints += 1
                    if checkpoints == fault.after_checkpoint:
                        return  # dropped right after a resumable checkpoint
            if finished or gone.is_set():
                break
            await asyncio.sleep(_POLL_SECONDS)
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
    if rec.finished:
        body["usage"] = dict(rec.usage)
    if rec.continuation_token:
        body["continuation_token"] = rec.continuation_token
    if rec.errors:
        body["errors"] = copy.deepcopy(rec.errors)
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
    elif kind == "tool_search_call":
        start = {"type": kind, "id": step.get("id"), "arguments": {}}
        deltas.append(
            {"type": kind, "arguments": step.get("arguments"), "signature": step.get("signature")}
        )
    elif kind == "tool_search_result":
        start = {"type": kind, "call_id": step.get("call_id")}
        deltas.append(
            {"type": kind, "result": step.get("result"), "signature": step.get("signature")}
        )
    else:
        start = step
    return [
        {"event_type": "step.start", "index": index, "step": start},
        *({"event_type": "step.delta", "index": index, "delta": d} for d in deltas),
        {"event_type": "step.stop", "index": index},
    ]


def _text_events(
    index: int,
    step: dict[str, Any],
    positions: list[int],
    hop: Hop,
    checkpoint: Callable[[int], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"event_type": "step.start", "index": index, "step": {"type": step["type"]}}
    ]
    atoms = hop.plan.atoms
    for first in range(0, len(positions), 3):
        chunk = positions[first : first + 3]
        text = "".join(str(atoms[p].text) for p in chunk)
        events.append(
            {"event_type": "step.delta", "index": index, "delta": {"type": "text", "text": text}}
        )
        marker = checkpoint(chunk[-1] + 1)
        if marker is not None:
            events.append(marker)
    events.append({"event_type": "step.stop", "index": index})
    return events


def opening_events(rec: StoredInteraction, status: str) -> list[dict[str, Any]]:
    """``interaction.created`` and the first ``interaction.status_update`` (``status``)."""
    head = interaction_body(rec, None)
    head["status"] = status
    for key in ("usage", "continuation_token", "errors"):
        head.pop(key, None)
    return [
        {"event_type": "interaction.created", "interaction": head},
        {"event_type": "interaction.status_update", "interaction_id": rec.id, "status": status},
    ]


def output_events(
    rec: StoredInteraction,
    hop: Hop,
    *,
    checkpoint_every: int | None,
    mint: Callable[[int], str],
) -> list[dict[str, Any]]:
    """The step events of ``hop``; with ``checkpoint_every`` a resumable checkpoint after
    every that many text deltas (never after the hop's last one)."""
    deltas = 0

    def checkpoint(position: int) -> dict[str, Any] | None:
        nonlocal deltas
        deltas += 1
        if not checkpoint_every or deltas % checkpoint_every or position >= hop.end:
            return None
        return {
            "event_type": "interaction.status_update",
            "interaction_id": rec.id,
            "status": "in_progress",
            "continuation_token": mint(position),
        }

    events: list[dict[str, Any]] = []
    for index, (step, positions) in enumerate(text_groups(hop.plan, hop.start, hop.end)):
        if hop.plan.atoms[positions[0]].text is not None:
            events += _text_events(index, step, positions, hop, checkpoint)
        else:
            events += _step_events(index, step)
    return events


def closing_events(rec: StoredInteraction) -> list[dict[str, Any]]:
    """The final status update (unless ``completed``/``requires_action``) and
    ``interaction.completed``."""
    events: list[dict[str, Any]] = []
    if rec.status not in _QUIET_FINAL_STATUSES:
        update: dict[str, Any] = {
            "event_type": "interaction.status_update",
            "interaction_id": rec.id,
            "status": rec.status,
        }
        if rec.continuation_token:
            update["continuation_token"] = rec.continuation_token
        if rec.usage:
            update["usage"] = dict(rec.usage)
        events.append(update)
    events.append(
        {
            "event_type": "interaction.completed",
            "interaction": interaction_body(rec, rec.output_steps),
        }
    )
    return events


def append_events(rec: StoredInteraction, events: list[dict[str, Any]]) -> None:
    """Number ``events`` after the ones ``rec`` has and keep them (caller holds the lock)."""
    for event in events:
        event["event_id"] = str(len(rec.events))
        rec.events.append(event)

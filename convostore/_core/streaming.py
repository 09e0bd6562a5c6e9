"""Rebuild complete steps and the final interaction from stream events (no I/O), and the
event handling both stream flavours share (:class:`BaseInteractionStream`).

The rules are those of ``interactions-api.md`` §8.4:

- ``step.start`` copies the step skeleton at its ``index``;
- ``step.delta``: ``text`` appends to the last text part of ``content`` (a new part when the last
  part is not text); ``thought_summary`` appends its ``content`` to ``summary``;
  ``thought_signature`` sets ``signature``; ``arguments_delta`` strings are concatenated and
  parsed as JSON into ``arguments`` at ``step.stop`` (or at completion); media deltas
  (``image``/``audio``/``video``/``document``) append a content part (to ``summary`` on a
  ``thought`` step); ``text_annotation_delta`` extends the ``annotations`` of the last text part;
  ``function_result`` sets ``result`` (and ``name``/``is_error`` when given);
- a delta of any other type whose ``type`` names the step's own type (the tool-call and
  tool-result deltas, ``tool_search_call``/``tool_search_result`` included) has its keys merged
  into the step;
- a delta of a type this version does not know is a content part of a type it does not know:
  it is appended verbatim, like a media delta, to ``content`` (``summary`` on a ``thought``
  step), so a streamed answer stores the same steps as the same answer sent unary. On a step
  that holds no content (a tool call or result, a step type this version does not know) it
  leaves the step as it is. Either way it is also listed, in arrival order, on
  :attr:`StreamAccumulator.unknown_deltas` as ``(index, delta)``;
- ``interaction.created`` / ``interaction.status_update`` / ``interaction.completed`` give the
  id, status, usage, ``continuation_token`` and the other interaction fields. The
  ``interaction.completed`` snapshot is authoritative: a token it does not carry is cleared.

When ``interaction.completed`` carries ``interaction.steps``, those steps are taken verbatim and
the rebuilt ones are discarded: the server's own final record is authoritative, the deltas are
only a reconstruction of it.

Resuming (``convostore._core.continuation``): every event also updates the stream's latest
checkpoint (a ``continuation_token`` and the interaction that issued it) and whether output
arrived since it, by the SDK's rules, so a driver can tell whether a cut stream can be resumed
without duplicating output. A stream that ended without ``interaction.completed`` is never
reported ``completed`` (nor ``requires_action``): its interaction says ``in_progress``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .._exceptions import StreamError
from .._sse import ServerSentEvent, SSEDecoder
from ..models import TERMINAL_OK, Interaction, JSONObject, parse_event, to_wire
from .continuation import (
    Checkpoint,
    can_resume_stream_hop,
    event_interaction_id,
    extract_hop_state,
    has_content_since_checkpoint,
)

__all__ = ["BaseInteractionStream", "StreamAccumulator"]

_MEDIA_DELTAS = frozenset({"image", "audio", "video", "document"})
_THOUGHT_DELTAS = frozenset({"thought_summary", "thought_signature"})
# Steps whose deltas of an unknown type are content parts.
_CONTENT_STEPS = {"model_output": "content", "user_input": "content", "thought": "summary"}


class StreamAccumulator:
    """Feed it every event of one stream with :meth:`add`; read the result at the end.

    Events may be given as parsed models (``convostore.models.parse_event``) or as the raw
    ``data`` dicts. Payloads are copied, never mutated, unless ``owned``.

    Args:
        resume_from: the checkpoint the request itself resumes from (its
            ``continuation_token``), so a cut before the stream's first checkpoint can retry it.
        owned: the event dicts given to :meth:`add` belong to the accumulator (nobody else
            holds them: freshly decoded and never shown), so it keeps and extends them
            instead of copying; what it returns is still its own copy.
    """

    def __init__(self, *, resume_from: Checkpoint | None = None, owned: bool = False) -> None:
        self._owned = owned
        self._assembled: Interaction | None = None
        self._interaction: JSONObject = {}
        self._steps: dict[int, JSONObject] = {}
        self._arguments: dict[int, str] = {}
        self._final_steps: list[JSONObject] | None = None
        self.unknown_deltas: list[tuple[int, JSONObject]] = []
        self.error: JSONObject | None = None
        self.completed = False
        # The hop state of the SDK's StreamContinuation for this one stream.
        self._hop_id: str | None = None
        self._hop_status: str | None = None
        self._token = resume_from.token if resume_from else None
        self._token_owner = resume_from.owner_id if resume_from else None
        self._content_since_checkpoint = False

    # ------------------------------------------------------------------ input

    def add(self, event: BaseModel | Mapping[str, Any]) -> None:
        """Apply one event.

        Raises:
            StreamError: an ``arguments_delta`` stream that does not parse as a JSON object.
        """
        data = to_wire(event) if isinstance(event, BaseModel) else event
        kind = data.get("event_type")
        if kind in _STEP_EVENTS and _PLAIN_STEP_EVENT.isdisjoint(data):
            # the bulk of a stream: output, and nothing that names a hop, a status or a token
            self._content_since_checkpoint = True
        else:
            self._observe(data)
        copy_ = _keep if self._owned else copy.deepcopy
        if kind in ("interaction.created", "interaction.completed"):
            snapshot = data.get("interaction")
            self._merge_interaction(snapshot)
            if kind == "interaction.completed":
                if not isinstance(snapshot, Mapping) or not snapshot.get("continuation_token"):
                    # The final snapshot is authoritative: no token there, no token.
                    self._interaction.pop("continuation_token", None)
                self._finish_all()
                self.completed = True
        elif kind == "interaction.status_update":
            update: dict[str, Any] = {
                k: data[k] for k in ("status", "usage", "continuation_token") if k in data
            }
            if "interaction_id" in data:
                update["id"] = data["interaction_id"]
            self._merge_interaction(update)
        elif kind == "step.start":
            index = _index(data)
            step = data.get("step")
            self._steps[index] = copy_(dict(step)) if isinstance(step, Mapping) else {}
        elif kind == "step.delta":
            delta = data.get("delta")
            if isinstance(delta, Mapping):
                self._apply_delta(_index(data), copy_(dict(delta)))
        elif kind == "step.stop":
            self._finish(_index(data))
        elif kind == "error":
            error = data.get("error")
            self.error = dict(error) if isinstance(error, Mapping) else {}

    def _observe(self, data: Mapping[str, Any]) -> None:
        hop_id = event_interaction_id(data)
        if hop_id:
            self._hop_id = hop_id
        previous = self._token
        self._hop_status, self._token = extract_hop_state(data, self._hop_status, self._token)
        if self._token and self._token != previous:
            self._token_owner = self._hop_id
        self._content_since_checkpoint = has_content_since_checkpoint(
            data, self._content_since_checkpoint
        )

    # ------------------------------------------------------------------ output

    @property
    def interaction_id(self) -> str | None:
        value = self._interaction.get("id")
        return value if isinstance(value, str) and value else None

    @property
    def status(self) -> str | None:
        """The latest status the interaction events gave (``interaction.created``,
        ``interaction.status_update``, ``interaction.completed``), None before any."""
        value = self._interaction.get("status")
        return value if isinstance(value, str) else None

    @property
    def usage(self) -> JSONObject | None:
        """The latest usage the interaction events gave (wire JSON)."""
        value = self._interaction.get("usage")
        return copy.deepcopy(value) if isinstance(value, dict) else None

    @property
    def continuation_token(self) -> str | None:
        """The latest continuation token the interaction events carried (cleared by an
        ``interaction.completed`` without one): the assembled interaction's token."""
        value = self._interaction.get("continuation_token")
        return value if isinstance(value, str) and value else None

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The latest point the stream could be resumed from, by the SDK's rules: the latest
        token and the interaction that issued it (before any, the request's own
        ``resume_from``); None without a token, or after an ``error`` event (the SDK does not
        resume from an error the server reported)."""
        return Checkpoint(self._token, self._token_owner) if self._token else None

    @property
    def content_since_checkpoint(self) -> bool:
        """Whether output (a step event, an error, an unknown event) arrived since the latest
        checkpoint; resuming then would generate that output again."""
        return self._content_since_checkpoint

    @property
    def can_resume(self) -> bool:
        """Whether a cut now can be resumed from :attr:`checkpoint` without duplicating output:
        a token, a resumable status (none yet, ``in_progress``, ``requires_continuation``) and
        no output since the token."""
        return not self._content_since_checkpoint and can_resume_stream_hop(
            self._hop_status, self._token
        )

    @property
    def steps(self) -> list[JSONObject]:
        """The steps so far, in index order (the server's own list once it has sent one)."""
        if self._final_steps is not None:
            return copy.deepcopy(self._final_steps)
        return [copy.deepcopy(self._steps[i]) for i in sorted(self._steps)]

    def raw_interaction(self) -> JSONObject:
        """The interaction as a wire dict: the fields of the interaction events plus ``steps``."""
        if self.completed and self._owned and self._final_steps is not None:
            # nothing changes it any more: the completed snapshot, as it arrived
            return {**self._interaction, "steps": list(self._final_steps)}
        raw = copy.deepcopy(self._interaction)
        raw.setdefault("status", "in_progress")
        if not self.completed and raw["status"] in TERMINAL_OK:
            # Only interaction.completed says the answer is whole.
            raw["status"] = "in_progress"
        raw["steps"] = self.steps
        return raw

    def interaction(self) -> Interaction:
        """The assembled :class:`~convostore.models.Interaction` (raw steps); once complete,
        built once."""
        if self._assembled is not None:
            return self._assembled
        interaction = Interaction.from_raw(self.raw_interaction())
        if self.completed:
            self._assembled = interaction
        return interaction

    # ------------------------------------------------------------------ rules

    def _merge_interaction(self, payload: object) -> None:
        if not isinstance(payload, Mapping):
            return
        copy_ = _keep if self._owned else copy.deepcopy
        for key, value in payload.items():
            if key == "steps":
                if isinstance(value, list):
                    self._final_steps = copy_(value)
            elif value is not None:
                self._interaction[key] = copy_(value)

    def _step(self, index: int, delta_type: str) -> JSONObject:
        step = self._steps.get(index)
        if step is None:
            # A delta without its step.start: infer the skeleton from the delta rather than drop it.
            if delta_type in _THOUGHT_DELTAS:
                kind = "thought"
            elif delta_type == "arguments_delta":
                kind = "function_call"
            elif delta_type == "function_result":
                kind = "function_result"
            else:
                kind = "model_output"
            step = self._steps[index] = {"type": kind}
        return step

    def _apply_delta(self, index: int, delta: JSONObject) -> None:
        delta_type = str(delta.get("type", ""))
        step = self._step(index, delta_type)
        if delta_type == "text":
            part = _last_text_part(step)
            part["text"] = str(part.get("text", "")) + str(delta.get("text", ""))
        elif delta_type == "thought_summary":
            content = delta.get("content")
            if content is not None:
                step.setdefault("summary", []).append(content)
        elif delta_type == "thought_signature":
            step["signature"] = delta.get("signature")
        elif delta_type == "arguments_delta":
            self._arguments[index] = self._arguments.get(index, "") + str(
                delta.get("arguments", "")
            )
        elif delta_type == "text_annotation_delta":
            part = _last_text_part(step)
            part.setdefault("annotations", []).extend(delta.get("annotations") or [])
        elif delta_type in _MEDIA_DELTAS:
            key = "summary" if step.get("type") == "thought" else "content"
            step.setdefault(key, []).append(delta)
        elif delta_type == "function_result":
            for key in ("result", "name", "is_error"):
                if key in delta:
                    step[key] = delta[key]
        elif delta_type and delta_type == step.get("type"):
            step.update({k: v for k, v in delta.items() if k != "type"})
        else:
            self.unknown_deltas.append((index, copy.deepcopy(delta)))
            parts_key = _CONTENT_STEPS.get(str(step.get("type")))
            if parts_key is not None:
                step.setdefault(parts_key, []).append(delta)

    def _finish(self, index: int) -> None:
        text = self._arguments.pop(index, None)
        if text is None:
            return
        try:
            arguments = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise StreamError(f"function call arguments at step {index} are not JSON") from exc
        if not isinstance(arguments, dict):
            raise StreamError(f"function call arguments at step {index} are not a JSON object")
        self._steps.setdefault(index, {"type": "function_call"})["arguments"] = arguments

    def _finish_all(self) -> None:
        for index in list(self._arguments):
            self._finish(index)


_STEP_EVENTS = frozenset({"step.start", "step.delta", "step.stop"})
# keys that would make a step event more than output (see ``_observe``)
_PLAIN_STEP_EVENT = frozenset({"interaction_id", "interaction", "status", "continuation_token"})


def _keep(value: Any) -> Any:
    return value


def _index(data: Mapping[str, Any]) -> int:
    index = data.get("index", 0)
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def _last_text_part(step: JSONObject) -> JSONObject:
    content = step.setdefault("content", [])
    if content and isinstance(content[-1], dict) and content[-1].get("type") == "text":
        part: JSONObject = content[-1]
        return part
    part = {"type": "text", "text": ""}
    content.append(part)
    return part


class BaseInteractionStream:
    """Event handling shared by both stream flavours: SSE decoding, parsing, accumulation.

    What a driver needs to resume a cut stream (``convostore._core.continuation``) is read
    here: :attr:`checkpoint` (token and owner interaction id), :attr:`content_since_checkpoint`
    and :attr:`can_resume`, plus :attr:`partial_interaction` for what arrived so far.
    """

    def __init__(self, *, resume_from: Checkpoint | None = None, raw: bool = False) -> None:
        self._raw = raw
        self._decoder = SSEDecoder()
        self._accumulator = StreamAccumulator(resume_from=resume_from, owned=raw)
        self._pending: list[ServerSentEvent] = []
        self._eof = False
        self._finished = False
        self.last_event_id: str | None = None
        """The id of the last event received: pass it as ``last_event_id`` to resume."""

    @property
    def interaction(self) -> Interaction | None:
        """The assembled interaction once ``interaction.completed`` arrived, else None."""
        return self._accumulator.interaction() if self._accumulator.completed else None

    @property
    def interaction_id(self) -> str | None:
        """The interaction's id, known from the first event on."""
        return self._accumulator.interaction_id

    @property
    def unknown_deltas(self) -> list[tuple[int, dict[str, Any]]]:
        """Deltas of a type this version does not know, as ``(step index, delta)``; see
        ``StreamAccumulator``."""
        return self._accumulator.unknown_deltas

    @property
    def partial_interaction(self) -> Interaction:
        """What arrived so far, assembled; its status is never ``completed`` (nor
        ``requires_action``) unless ``interaction.completed`` arrived."""
        return self._accumulator.interaction()

    @property
    def status(self) -> str | None:
        """The latest status the stream reported (None before any)."""
        return self._accumulator.status

    @property
    def continuation_token(self) -> str | None:
        """The latest continuation token the stream carried (see ``StreamAccumulator``)."""
        return self._accumulator.continuation_token

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The latest resume point: the token and the id of the interaction that issued it
        (for a request that itself resumes, its own token until a newer one arrives)."""
        return self._accumulator.checkpoint

    @property
    def content_since_checkpoint(self) -> bool:
        """Whether output arrived after :attr:`checkpoint` (resuming would repeat it)."""
        return self._accumulator.content_since_checkpoint

    @property
    def can_resume(self) -> bool:
        """Whether a cut now can be resumed from :attr:`checkpoint` without repeating output."""
        return self._accumulator.can_resume

    def _feed(self, chunk: bytes | None) -> None:
        if chunk is None:
            self._pending.extend(self._decoder.close())
            self._eof = True
        else:
            self._pending.extend(self._decoder.feed(chunk))
            self._eof = self._decoder.done

    def _feed_interaction(self, interaction: Interaction) -> None:
        """A streaming request answered with plain JSON: replay it as one completion event."""
        data = {"event_type": "interaction.completed", "interaction": interaction.raw}
        self._pending.append(ServerSentEvent(data=json.dumps(data)))
        self._eof = True

    def _next_event(self) -> Any:
        """Parse the next pending event (raises StreamError on an ``error`` event); a ``raw``
        stream (a driver's own, whose events nobody sees) returns the ``data`` dict."""
        sse = self._pending.pop(0)
        try:
            data = json.loads(sse.data)
        except ValueError as exc:
            raise StreamError("malformed event: data is not JSON") from exc
        if not isinstance(data, dict):
            raise StreamError("malformed event: data is not a JSON object")
        event = data if self._raw else parse_event(data)
        event_id = data.get("event_id")
        self.last_event_id = event_id if isinstance(event_id, str) else sse.id or self.last_event_id
        self._accumulator.add(data)
        if data.get("event_type") == "error":
            error = self._accumulator.error or {}
            code = error.get("code")
            raise StreamError(
                str(error.get("message") or "the stream reported an error"),
                code=None if code is None else str(code),
            )
        return event

    def _check_complete(self) -> None:
        if not self._accumulator.completed:
            raise StreamError("stream ended before interaction.completed")

"""Pydantic models: the wire protocol (steps, content, interactions, stream events) and the
records convostore stores (conversations, turns, steps).

Wire models are lenient: every model keeps unknown keys (``extra="allow"``), and an unknown
step, content, event or delta ``type`` parses into an ``Unknown*`` model that keeps the whole
payload. :func:`to_wire` gives back exactly the keys that came in, so a payload survives a
parse/serialise round trip unchanged. convostore stores the raw JSON, never a re-serialised
model, so the stored copy is verbatim regardless.

Records are strict: they are what convostore owns.
"""

from __future__ import annotations

import copy
import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)

from ._exceptions import ValidationError

JSONObject: TypeAlias = dict[str, Any]

# --------------------------------------------------------------------------- wire: base


class WireModel(BaseModel):
    """Base of every wire model: unknown keys are kept, the ``type`` key is always emitted."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def model_post_init(self, context: Any, /) -> None:
        for key in ("type", "event_type"):
            if key in type(self).model_fields:
                self.model_fields_set.add(key)


def to_wire(model: BaseModel) -> JSONObject:
    """The wire JSON of a model: exactly the keys that were set, extras included."""
    return model.model_dump(mode="json", exclude_unset=True, by_alias=True)


def _open_union_tag(known: frozenset[str]) -> Any:
    def tag(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return kind if isinstance(kind, str) and kind in known else "unknown"

    return tag


# --------------------------------------------------------------------------- content


class TextContent(WireModel):
    type: Literal["text"] = "text"
    text: str
    annotations: list[JSONObject] | None = None


class _MediaContent(WireModel):
    data: str | None = None
    uri: str | None = None
    mime_type: str | None = None


class ImageContent(_MediaContent):
    type: Literal["image"] = "image"
    resolution: str | None = None


class AudioContent(_MediaContent):
    type: Literal["audio"] = "audio"
    sample_rate: int | None = None
    channels: int | None = None


class VideoContent(_MediaContent):
    type: Literal["video"] = "video"
    resolution: str | None = None


class DocumentContent(_MediaContent):
    type: Literal["document"] = "document"


class UnknownContent(WireModel):
    """A content part of a type this version does not know; kept verbatim."""

    type: str


_CONTENT_TYPES = frozenset({"text", "image", "audio", "video", "document"})

Content = Annotated[
    Annotated[TextContent, Tag("text")]
    | Annotated[ImageContent, Tag("image")]
    | Annotated[AudioContent, Tag("audio")]
    | Annotated[VideoContent, Tag("video")]
    | Annotated[DocumentContent, Tag("document")]
    | Annotated[UnknownContent, Tag("unknown")],
    Discriminator(_open_union_tag(_CONTENT_TYPES)),
]

# --------------------------------------------------------------------------- steps


class UserInputStep(WireModel):
    type: Literal["user_input"] = "user_input"
    content: list[Content] | None = None


class ModelOutputStep(WireModel):
    type: Literal["model_output"] = "model_output"
    content: list[Content] | None = None
    error: JSONObject | None = None


class ThoughtStep(WireModel):
    type: Literal["thought"] = "thought"
    signature: str | None = None
    summary: list[Content] | None = None


class FunctionCallStep(WireModel):
    type: Literal["function_call"] = "function_call"
    id: str
    name: str
    arguments: JSONObject


class FunctionResultStep(WireModel):
    type: Literal["function_result"] = "function_result"
    call_id: str
    result: Any
    name: str | None = None
    is_error: bool | None = None


class _ToolCall(WireModel):
    id: str
    signature: str | None = None


class _ToolResult(WireModel):
    call_id: str
    signature: str | None = None


class CodeExecutionCallStep(_ToolCall):
    type: Literal["code_execution_call"] = "code_execution_call"
    arguments: Any


class CodeExecutionResultStep(_ToolResult):
    type: Literal["code_execution_result"] = "code_execution_result"
    result: Any
    is_error: bool | None = None


class UrlContextCallStep(_ToolCall):
    type: Literal["url_context_call"] = "url_context_call"
    arguments: Any


class UrlContextResultStep(_ToolResult):
    type: Literal["url_context_result"] = "url_context_result"
    result: list[Any]
    is_error: bool | None = None


class GoogleSearchCallStep(_ToolCall):
    type: Literal["google_search_call"] = "google_search_call"
    arguments: Any
    search_type: str | None = None


class GoogleSearchResultStep(_ToolResult):
    type: Literal["google_search_result"] = "google_search_result"
    result: list[Any]
    is_error: bool | None = None


class GoogleMapsCallStep(_ToolCall):
    type: Literal["google_maps_call"] = "google_maps_call"
    arguments: Any = None


class GoogleMapsResultStep(_ToolResult):
    type: Literal["google_maps_result"] = "google_maps_result"
    result: list[Any]


class FileSearchCallStep(_ToolCall):
    type: Literal["file_search_call"] = "file_search_call"


class FileSearchResultStep(_ToolResult):
    type: Literal["file_search_result"] = "file_search_result"


class McpServerToolCallStep(WireModel):
    type: Literal["mcp_server_tool_call"] = "mcp_server_tool_call"
    id: str
    name: str
    server_name: str
    arguments: Any


class McpServerToolResultStep(WireModel):
    type: Literal["mcp_server_tool_result"] = "mcp_server_tool_result"
    call_id: str
    result: Any
    name: str | None = None
    server_name: str | None = None


class RetrievalCallStep(_ToolCall):
    type: Literal["retrieval_call"] = "retrieval_call"
    arguments: Any
    retrieval_type: str | None = None


class RetrievalResultStep(_ToolResult):
    type: Literal["retrieval_result"] = "retrieval_result"
    is_error: bool | None = None


class ProcessingCallStep(_ToolCall):
    type: Literal["processing_call"] = "processing_call"


class ProcessingResultStep(_ToolResult):
    type: Literal["processing_result"] = "processing_result"


class ToolSearchCallStep(_ToolCall):
    type: Literal["tool_search_call"] = "tool_search_call"
    arguments: JSONObject


class ToolSearchResultStep(_ToolResult):
    type: Literal["tool_search_result"] = "tool_search_result"
    result: list[Any] | None = None


class UnknownStep(WireModel):
    """A step of a type this version does not know; kept verbatim."""

    type: str


_STEP_CLASSES: tuple[type[WireModel], ...] = (
    UserInputStep,
    ModelOutputStep,
    ThoughtStep,
    FunctionCallStep,
    FunctionResultStep,
    CodeExecutionCallStep,
    CodeExecutionResultStep,
    UrlContextCallStep,
    UrlContextResultStep,
    GoogleSearchCallStep,
    GoogleSearchResultStep,
    GoogleMapsCallStep,
    GoogleMapsResultStep,
    FileSearchCallStep,
    FileSearchResultStep,
    McpServerToolCallStep,
    McpServerToolResultStep,
    RetrievalCallStep,
    RetrievalResultStep,
    ProcessingCallStep,
    ProcessingResultStep,
    ToolSearchCallStep,
    ToolSearchResultStep,
)
STEP_TYPES: frozenset[str] = frozenset(c.model_fields["type"].default for c in _STEP_CLASSES)

Step = Annotated[
    Annotated[UserInputStep, Tag("user_input")]
    | Annotated[ModelOutputStep, Tag("model_output")]
    | Annotated[ThoughtStep, Tag("thought")]
    | Annotated[FunctionCallStep, Tag("function_call")]
    | Annotated[FunctionResultStep, Tag("function_result")]
    | Annotated[CodeExecutionCallStep, Tag("code_execution_call")]
    | Annotated[CodeExecutionResultStep, Tag("code_execution_result")]
    | Annotated[UrlContextCallStep, Tag("url_context_call")]
    | Annotated[UrlContextResultStep, Tag("url_context_result")]
    | Annotated[GoogleSearchCallStep, Tag("google_search_call")]
    | Annotated[GoogleSearchResultStep, Tag("google_search_result")]
    | Annotated[GoogleMapsCallStep, Tag("google_maps_call")]
    | Annotated[GoogleMapsResultStep, Tag("google_maps_result")]
    | Annotated[FileSearchCallStep, Tag("file_search_call")]
    | Annotated[FileSearchResultStep, Tag("file_search_result")]
    | Annotated[McpServerToolCallStep, Tag("mcp_server_tool_call")]
    | Annotated[McpServerToolResultStep, Tag("mcp_server_tool_result")]
    | Annotated[RetrievalCallStep, Tag("retrieval_call")]
    | Annotated[RetrievalResultStep, Tag("retrieval_result")]
    | Annotated[ProcessingCallStep, Tag("processing_call")]
    | Annotated[ProcessingResultStep, Tag("processing_result")]
    | Annotated[ToolSearchCallStep, Tag("tool_search_call")]
    | Annotated[ToolSearchResultStep, Tag("tool_search_result")]
    | Annotated[UnknownStep, Tag("unknown")],
    Discriminator(_open_union_tag(STEP_TYPES)),
]

_STEP_ADAPTER: TypeAdapter[Any] = TypeAdapter(Step)


def parse_step(payload: Mapping[str, Any]) -> Any:
    """Parse one wire step (strict for known types; unknown types kept verbatim).

    Raises:
        ValidationError: a known step type with missing or malformed fields.
    """
    try:
        return _STEP_ADAPTER.validate_python(payload)
    except Exception as exc:  # pydantic.ValidationError
        raise ValidationError(f"invalid step: {exc}") from exc


# --------------------------------------------------------------------------- usage, interaction


class Usage(WireModel):
    total_input_tokens: int | None = None
    total_output_tokens: int | None = None
    total_thought_tokens: int | None = None
    total_cached_tokens: int | None = None
    total_tool_use_tokens: int | None = None
    total_tokens: int | None = None
    initial_input_tokens: int | None = None
    """Set when continuation hops are merged: the first hop's input tokens."""
    input_tokens_by_modality: list[Any] | None = None
    output_tokens_by_modality: list[Any] | None = None
    cached_tokens_by_modality: list[Any] | None = None
    tool_use_tokens_by_modality: list[Any] | None = None
    grounding_tool_count: list[Any] | None = None


class APIErrorBody(WireModel):
    code: str | int | None = None
    message: str | None = None


# --------------------------------------------------------------------------- statuses

# What convostore does with each status an interaction can end a request in. The API's own
# list (SDK 3.6.1 ``InteractionStatus``) is open: a status this table does not know is treated
# as unfinished, never as success.
#
# | class       | statuses                       | what a turn does                           |
# |-------------|--------------------------------|--------------------------------------------|
# | TERMINAL_OK | completed, requires_action     | committed                                  |
# | PARTIAL     | incomplete, budget_exceeded    | committed with what was produced, status   |
# |             |                                | kept visible on the turn                   |
# | FAILED      | failed, cancelled              | nothing committed: ``InteractionFailed``   |
# | CONTINUE    | requires_continuation          | continued with its ``continuation_token``  |
# | UNFINISHED  | in_progress, queued, idle, and | polled (``GET``) until it leaves this      |
# |             | any status not listed here     | class; ``InteractionUnfinished`` if not    |

TERMINAL_OK: frozenset[str] = frozenset({"completed", "requires_action"})
"""The interaction finished as asked (``requires_action``: the model waits for tool results)."""
PARTIAL: frozenset[str] = frozenset({"incomplete", "budget_exceeded"})
"""The interaction stopped early (a limit or budget); what it produced is kept, status visible."""
FAILED: frozenset[str] = frozenset({"failed", "cancelled"})
"""The interaction failed or was cancelled: see ``Interaction.errors``."""
CONTINUE: frozenset[str] = frozenset({"requires_continuation"})
"""The per-request decode limit was reached: resume with the ``continuation_token``."""
UNFINISHED: frozenset[str] = frozenset({"in_progress", "queued", "idle"})
"""Still running (or waiting); every status not in another class counts as unfinished too."""

StatusClass: TypeAlias = Literal["ok", "partial", "failed", "continue", "unfinished"]


def status_class(status: object) -> StatusClass:
    """The class of an API status (see the table above); unknown or missing: ``"unfinished"``."""
    if status in TERMINAL_OK:
        return "ok"
    if status in PARTIAL:
        return "partial"
    if status in FAILED:
        return "failed"
    if status in CONTINUE:
        return "continue"
    return "unfinished"


class Interaction(WireModel):
    id: str = ""
    status: str
    steps: list[JSONObject] | None = None
    model: str | None = None
    agent: str | None = None
    created: str | None = None
    updated: str | None = None
    usage: Usage | None = None
    previous_interaction_id: str | None = None
    continuation_token: str | None = None
    errors: list[Any] | None = None

    _raw: JSONObject | None = PrivateAttr(default=None)
    _hop_ids: list[str] | None = PrivateAttr(default=None)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Interaction:
        """Parse an interaction the API sent, keeping the JSON object as :attr:`raw`."""
        interaction = cls.model_validate(raw)
        interaction._raw = dict(raw)
        return interaction

    @property
    def raw(self) -> JSONObject:
        """The JSON object this interaction was parsed from (its wire form if built otherwise)."""
        return self._raw if self._raw is not None else to_wire(self)

    @property
    def hop_ids(self) -> list[str]:
        """The id of every request (continuation hop) this interaction was merged from, in
        order (the SDK's ``continuation_ids``); just ``[id]`` when it was not merged."""
        if self._hop_ids is not None:
            return list(self._hop_ids)
        return [self.id] if self.id else []

    @property
    def output_text(self) -> str:
        """See :func:`output_text`."""
        return output_text(self.steps or [])

    @property
    def output_image(self) -> JSONObject | None:
        """See :func:`output_image`."""
        return output_image(self.steps or [])

    @property
    def output_audio(self) -> JSONObject | None:
        """See :func:`output_audio`."""
        return output_audio(self.steps or [])

    @property
    def output_video(self) -> JSONObject | None:
        """See :func:`output_video`."""
        return output_video(self.steps or [])


def _get(value: object, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else None


def output_text(steps: Sequence[Any]) -> str:
    """The answer's text, exactly as SDK 3.6.1 computes ``Interaction.output_text``.

    Walks the steps backwards and stops at a ``user_input`` step. ``thought`` steps are
    skipped. Text parts of ``model_output`` steps are collected from the end; before the first
    text part is found, every other step (a tool call or result, an unknown step) and every
    other content part (an image, an unknown type) is skipped; once text was found, the first
    such step or part ends the text. A text part whose ``text`` is not a string counts as "".
    """
    text_parts: list[str] = []
    collecting = False
    for step in reversed(steps):
        kind = _get(step, "type")
        if kind == "user_input":
            break
        if kind == "thought":
            continue
        if kind != "model_output":
            if collecting:
                break
            continue
        content = _get(step, "content")
        if not isinstance(content, list):
            continue
        should_stop = False
        for item in reversed(content):
            if _get(item, "type") != "text":
                if collecting:
                    should_stop = True
                    break
                continue
            collecting = True
            text = _get(item, "text")
            text_parts.append(text if isinstance(text, str) else "")
        if should_stop:
            break
    return "".join(reversed(text_parts))


def _last_part(steps: Sequence[Any], kind: str) -> JSONObject | None:
    # SDK 3.6.1: the last part of that type in any model_output step after the last user_input.
    for step in reversed(steps):
        if _get(step, "type") == "user_input":
            break
        if _get(step, "type") != "model_output":
            continue
        content = _get(step, "content")
        if not isinstance(content, list):
            continue
        for item in reversed(content):
            if _get(item, "type") == kind:
                return copy.deepcopy(dict(item))
    return None


def output_image(steps: Sequence[Any]) -> JSONObject | None:
    """The answer's last ``image`` part, as SDK 3.6.1's ``Interaction.output_image`` picks it:
    the last image part of any ``model_output`` step after the last ``user_input`` step (tool
    steps, thoughts and other parts in between do not matter), or None.

    The SDK returns an ``ImageContent`` model; this returns the part's wire JSON (a copy, with
    any keys the SDK does not know), which is what ``model_dump(mode="json")`` of the SDK's
    value gives for a well-formed part.
    """
    return _last_part(steps, "image")


def output_audio(steps: Sequence[Any]) -> JSONObject | None:
    """The answer's last ``audio`` part; the rule of :func:`output_image`."""
    return _last_part(steps, "audio")


def output_video(steps: Sequence[Any]) -> JSONObject | None:
    """The answer's last ``video`` part; the rule of :func:`output_image`."""
    return _last_part(steps, "video")


# --------------------------------------------------------------------------- stream events


class TextDelta(WireModel):
    type: Literal["text"] = "text"
    text: str


class ThoughtSummaryDelta(WireModel):
    type: Literal["thought_summary"] = "thought_summary"
    content: JSONObject | None = None


class ThoughtSignatureDelta(WireModel):
    type: Literal["thought_signature"] = "thought_signature"
    signature: str


class ArgumentsDelta(WireModel):
    type: Literal["arguments_delta"] = "arguments_delta"
    arguments: str


class TextAnnotationDelta(WireModel):
    type: Literal["text_annotation_delta"] = "text_annotation_delta"
    annotations: list[JSONObject] = Field(default_factory=list)


class ImageDelta(_MediaContent):
    type: Literal["image"] = "image"


class AudioDelta(_MediaContent):
    type: Literal["audio"] = "audio"


class VideoDelta(_MediaContent):
    type: Literal["video"] = "video"


class DocumentDelta(_MediaContent):
    type: Literal["document"] = "document"


class FunctionResultDelta(WireModel):
    type: Literal["function_result"] = "function_result"
    result: Any = None
    name: str | None = None
    is_error: bool | None = None


class UnknownDelta(WireModel):
    type: str


_DELTA_CLASSES: tuple[type[WireModel], ...] = (
    TextDelta,
    ThoughtSummaryDelta,
    ThoughtSignatureDelta,
    ArgumentsDelta,
    TextAnnotationDelta,
    ImageDelta,
    AudioDelta,
    VideoDelta,
    DocumentDelta,
    FunctionResultDelta,
)
_DELTA_TYPES = frozenset(c.model_fields["type"].default for c in _DELTA_CLASSES)

Delta = Annotated[
    Annotated[TextDelta, Tag("text")]
    | Annotated[ThoughtSummaryDelta, Tag("thought_summary")]
    | Annotated[ThoughtSignatureDelta, Tag("thought_signature")]
    | Annotated[ArgumentsDelta, Tag("arguments_delta")]
    | Annotated[TextAnnotationDelta, Tag("text_annotation_delta")]
    | Annotated[ImageDelta, Tag("image")]
    | Annotated[AudioDelta, Tag("audio")]
    | Annotated[VideoDelta, Tag("video")]
    | Annotated[DocumentDelta, Tag("document")]
    | Annotated[FunctionResultDelta, Tag("function_result")]
    | Annotated[UnknownDelta, Tag("unknown")],
    Discriminator(_open_union_tag(_DELTA_TYPES)),
]


class _Event(WireModel):
    event_id: str | None = None


class InteractionCreatedEvent(_Event):
    event_type: Literal["interaction.created"] = "interaction.created"
    interaction: Interaction


class InteractionStatusUpdateEvent(_Event):
    event_type: Literal["interaction.status_update"] = "interaction.status_update"
    interaction_id: str
    status: str
    usage: Usage | None = None
    continuation_token: str | None = None


class StepStartEvent(_Event):
    event_type: Literal["step.start"] = "step.start"
    index: int
    step: JSONObject


class StepDeltaEvent(_Event):
    event_type: Literal["step.delta"] = "step.delta"
    index: int
    delta: Delta
    metadata: JSONObject | None = None


class StepStopEvent(_Event):
    event_type: Literal["step.stop"] = "step.stop"
    index: int
    usage: Usage | None = None
    step_usage: JSONObject | None = None


class InteractionCompletedEvent(_Event):
    event_type: Literal["interaction.completed"] = "interaction.completed"
    interaction: Interaction


class ErrorEvent(_Event):
    event_type: Literal["error"] = "error"
    error: APIErrorBody | None = None


class UnknownEvent(_Event):
    event_type: str


_EVENT_CLASSES: tuple[type[_Event], ...] = (
    InteractionCreatedEvent,
    InteractionStatusUpdateEvent,
    StepStartEvent,
    StepDeltaEvent,
    StepStopEvent,
    InteractionCompletedEvent,
    ErrorEvent,
)
_EVENT_TYPES = frozenset(c.model_fields["event_type"].default for c in _EVENT_CLASSES)


def _event_tag(value: Any) -> str:
    kind = (
        value.get("event_type") if isinstance(value, dict) else getattr(value, "event_type", None)
    )
    return kind if isinstance(kind, str) and kind in _EVENT_TYPES else "unknown"


Event = Annotated[
    Annotated[InteractionCreatedEvent, Tag("interaction.created")]
    | Annotated[InteractionStatusUpdateEvent, Tag("interaction.status_update")]
    | Annotated[StepStartEvent, Tag("step.start")]
    | Annotated[StepDeltaEvent, Tag("step.delta")]
    | Annotated[StepStopEvent, Tag("step.stop")]
    | Annotated[InteractionCompletedEvent, Tag("interaction.completed")]
    | Annotated[ErrorEvent, Tag("error")]
    | Annotated[UnknownEvent, Tag("unknown")],
    Discriminator(_event_tag),
]
_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


def parse_event(payload: Mapping[str, Any]) -> Any:
    """Parse one SSE ``data`` object; a malformed known event becomes an UnknownEvent."""
    try:
        return _EVENT_ADAPTER.validate_python(payload)
    except Exception:
        data = dict(payload)
        data.setdefault("event_type", "unknown")
        return UnknownEvent.model_validate(data)


# --------------------------------------------------------------------------- JSON checks

MAX_ID_LENGTH = 200
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]*")


def check_id(value: object, what: str = "id") -> str:
    """Validate an identifier convostore stores or puts in a key (conversation, tenant, user).

    Allowed: 1-200 characters of letters, digits and ``_ . : @ + -``, not starting with a
    punctuation mark. Quotes, ``%``, ``*``, ``?``, braces, spaces and control characters are
    rejected, so an id is safe in any backend's keys and in log lines.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise ValidationError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{what} is longer than {MAX_ID_LENGTH} characters")
    if not _ID_RE.fullmatch(value):
        raise ValidationError(
            f"{what} {value[:40]!r} may only contain letters, digits and _ . : @ + -"
        )
    return value


MAX_JSON_DEPTH = 100
"""How deeply objects and arrays may nest in a stored value (MySQL's own limit; pydantic
serialises no deeper than about 250 levels). MariaDB accepts 31 levels at most."""


def check_json(value: object, what: str = "value") -> Any:
    """Check that ``value`` is plain JSON (dict/list/str/int/float/bool/None, finite floats,
    string keys, no lone surrogates, nested at most ``MAX_JSON_DEPTH`` levels) and return it
    unchanged."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from exc
    _check_keys(value, what)
    return value


def _check_keys(value: object, what: str) -> None:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple) and depth >= MAX_JSON_DEPTH:
            raise ValidationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise ValidationError(f"{what} has a non-string key {key!r}")
                stack.append((sub, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValidationError(f"{what} contains a non-finite number")


def check_step_payload(value: object, what: str = "step") -> JSONObject:
    """A step must be a JSON object with a string ``type``."""
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object, not {type(value).__name__}")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValidationError(f"{what} must have a string 'type'")
    check_json(value, what)
    return dict(value)


# --------------------------------------------------------------------------- records

Mode: TypeAlias = Literal["server", "stateless", "auto"]
ModeUsed: TypeAlias = Literal["server", "stateless"]
MODES: tuple[str, ...] = ("server", "stateless", "auto")


class Reason(enum.StrEnum):
    """Why a turn travelled the way it did (``TurnRecord.reason``)."""

    FIRST_TURN = "first_turn"
    """No history yet: a new chain starts (server/auto) with ``store: true``."""
    CHAINED = "chained"
    """Only the new input was sent, chained to the known-good head."""
    STATELESS_MODE = "stateless_mode"
    """The conversation is stateless: full history replayed with ``store: false``."""
    HEAD_EXPIRED = "head_expired"
    """auto: the head is older than the retention; history replayed to seed a new chain."""
    MODEL_CHANGED = "model_changed"
    """The model changed since the head; history replayed to seed a new chain."""
    NO_SERVER_HEAD = "no_server_head"
    """History exists but has no stored interaction to chain from (e.g. a fork or import)."""
    CHAIN_BROKEN = "chain_broken"
    """The server said the head is gone; the local mirror was replayed to seed a new chain."""
    COMPACTED = "compacted"
    """A compaction is in force and no chain holds its view yet: the compacted view (summary
    plus the turns after it) was sent to seed a new chain."""
    TOO_LARGE = "too_large"
    """The API refused the request as too large; the conversation was compacted and the
    compacted view sent once more."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConversationRecord(_Record):
    """One conversation: identity, settings re-sent on every turn, and the chain head."""

    id: str
    tenant: str
    user: str | None = None
    mode: Mode = "auto"
    model: str
    config: JSONObject = Field(default_factory=dict)
    head_interaction_id: str | None = None
    head_created_at: AwareDatetime | None = None
    head_model: str | None = None
    version: int = 0
    turn_count: int = 0
    step_count: int = 0
    last_turn_hash: str | None = None
    metadata: JSONObject = Field(default_factory=dict)
    created_at: AwareDatetime = Field(default_factory=utcnow)
    updated_at: AwareDatetime = Field(default_factory=utcnow)
    expires_at: AwareDatetime | None = None
    context_epoch: int = 0
    """The compaction in force (its ``epoch``; 0: none): what the next request's view uses."""

    @field_validator("id", "tenant")
    @classmethod
    def _ids(cls, value: str) -> str:
        return check_id(value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "user")

    @field_validator("config", "metadata")
    @classmethod
    def _json(cls, value: JSONObject, info: ValidationInfo) -> JSONObject:
        # a row a store wrote was checked on the way in, and its JSON column holds only JSON
        if not (info.context and info.context.get("stored")):
            check_json(value, "config/metadata")
        return value


class TurnRecord(_Record):
    """One committed turn: its interaction, how it travelled, and what it cost."""

    conversation_id: str
    seq: int
    interaction_id: str | None = None
    previous_interaction_id: str | None = None
    model: str | None = None
    mode_used: ModeUsed
    reason: Reason
    status: str
    usage: JSONObject | None = None
    idempotency_key: str | None = None
    created_at: AwareDatetime = Field(default_factory=utcnow)
    audit_hash: str | None = None
    context_epoch: int = 0
    """The compaction in force when this turn was sent (0: none): with it, what the model saw
    at this turn can be rebuilt (``conversation.context(at_turn=...)``)."""


class CompactionRecord(_Record):
    """A compaction: what replaces a covered range of the record in the requests' view.

    Appended, never a rewrite: the covered steps stay in the record. The view of a request
    under this compaction is the replacement ``steps`` followed by every step after
    ``last_seq``. ``first_seq`` is 1: a later compaction covers the earlier one's range too
    (its replacement carries the earlier summary forward).
    """

    conversation_id: str
    epoch: int
    """1, 2, …: the conversation's ``context_epoch`` once this compaction is written."""
    first_seq: int = 1
    last_seq: int
    """The last covered step (the last step of turn ``last_turn``)."""
    last_turn: int
    steps: list[JSONObject]
    """The replacement: Interactions input steps (e.g. a ``user_input`` with the summary)."""
    summarizer: str
    """``trim``, ``summarize`` or ``callable``."""
    policy: str
    """What fired: ``tokens``, ``too_large``, ``manual``."""
    model: str | None = None
    interaction_id: str | None = None
    usage: JSONObject | None = None
    audit_hash: str | None = None
    """The covered range's audit hash: the last covered turn's ``audit_hash``."""
    created_at: AwareDatetime = Field(default_factory=utcnow)

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[JSONObject]) -> list[JSONObject]:
        check_json(value, "compaction steps")
        for step in value:
            if not isinstance(step, dict) or not isinstance(step.get("type"), str):
                raise ValueError("a compaction's steps must be step objects with a type")
        return value


class StoredStep(_Record):
    """One step as stored: its place in the conversation and its wire JSON, verbatim."""

    conversation_id: str
    seq: int
    turn_seq: int
    type: str
    payload: JSONObject


class Page(_Record):
    """One page of a listing; pass ``next_cursor`` back to get the next page."""

    items: list[ConversationRecord]
    next_cursor: str | None = None


class TurnCommit(_Record):
    """Everything one turn writes, committed atomically by ``append_turn``.

    ``record`` is the conversation as it stands *after* the turn: its ``version`` is the
    expected version plus one, its counts, head and ``last_turn_hash`` already advanced.
    ``turn.seq == record.turn_count``; ``steps`` continue the conversation's step sequence.
    """

    record: ConversationRecord
    turn: TurnRecord
    steps: list[StoredStep]

    @property
    def expected_version(self) -> int:
        return self.record.version - 1


class AppendResult(_Record):
    """What ``append_turn`` did: ``created`` is False when the idempotency key was already
    used and ``turn`` is the turn stored back then (nothing was written)."""

    turn: TurnRecord
    created: bool


class Turn(_Record):
    """One turn as the caller sees it: the stored turn record plus its steps.

    ``steps`` are the model's steps and ``input_steps`` the user's, both as wire JSON exactly
    as stored. ``replayed`` is True when an idempotency key matched a turn stored earlier and
    nothing was sent.
    """

    record: TurnRecord
    input_steps: list[JSONObject]
    steps: list[JSONObject]
    replayed: bool = False

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def interaction_id(self) -> str | None:
        return self.record.interaction_id

    @property
    def usage(self) -> JSONObject | None:
        return self.record.usage

    @property
    def mode_used(self) -> ModeUsed:
        return self.record.mode_used

    @property
    def reason(self) -> Reason:
        return self.record.reason

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def text(self) -> str:
        """The answer's text, as the SDK's ``Interaction.output_text``: see
        :func:`convostore.models.output_text` (not ``steps[-1]``: a thought or call may come
        last, an image may follow the text)."""
        return output_text(self.steps)

    @property
    def output_image(self) -> JSONObject | None:
        """The answer's last image part (wire JSON) or None, as the SDK's
        ``Interaction.output_image``: see :func:`convostore.models.output_image`."""
        return output_image(self.steps)

    @property
    def output_audio(self) -> JSONObject | None:
        """The answer's last audio part (wire JSON) or None, as the SDK's ``output_audio``."""
        return output_audio(self.steps)

    @property
    def output_video(self) -> JSONObject | None:
        """The answer's last video part (wire JSON) or None, as the SDK's ``output_video``."""
        return output_video(self.steps)

    @property
    def function_calls(self) -> list[FunctionCallStep]:
        """The function calls the model made in this turn (answer them with ``send``)."""
        return [
            FunctionCallStep.model_validate(s)
            for s in self.steps
            if s.get("type") == "function_call"
        ]


class DeleteReport(_Record):
    """What ``delete`` did: whether the local conversation existed, and for ``remote=True``
    which server-side interactions were deleted and which could not be (id -> error)."""

    deleted: bool
    remote_deleted: list[str] = Field(default_factory=list)
    remote_failed: dict[str, str] = Field(default_factory=dict)


TurnState: TypeAlias = Literal["pending", "sent", "continuing"]

LOST_STATUS = "lost"
"""The status of a turn recorded as lost: its answer could not be had (nothing on the server
to adopt, or its conversation moved on meanwhile). It has no steps and moves no head."""


class PendingTurnRecord(_Record):
    """A turn in flight, written before its request is sent (``Store.begin_turn``).

    It says everything a worker needs to finish the turn after the one that started it died:
    what was sent and how (input, settings, mode, reason, ``store``), what the server answered
    so far (the interaction id of every hop, the latest ``continuation_token``), and who holds
    it (a lease: ``lease_owner`` until ``lease_expires_at``). The commit of the turn replaces it
    atomically (``append_turn`` deletes the record carrying the turn's idempotency key).
    At most one turn is in flight per conversation. The lifecycle is in
    ``convostore._core.lifecycle``.
    """

    conversation_id: str
    tenant: str
    seq: int
    """The seq the turn will take: the conversation's ``turn_count + 1`` when planned."""
    planned_version: int
    """The conversation version the turn was planned against (its commit expects it)."""
    idempotency_key: str
    """The caller's key, or one generated for the turn: the commit is deduplicated by it."""
    state: TurnState = "pending"
    mode_used: ModeUsed
    reason: Reason
    model: str
    store: bool
    """Whether the request was sent with ``store: true`` (the server keeps the answer)."""
    background: bool = False
    previous_interaction_id: str | None = None
    input_steps: list[JSONObject]
    config: JSONObject = Field(default_factory=dict)
    """The interaction-scoped settings sent with the request."""
    interaction_id: str | None = None
    """The id of the latest hop, once the server has answered."""
    hop_ids: list[str] = Field(default_factory=list)
    """Every hop's interaction id, in order (more than one when the answer was continued)."""
    continuation_token: str | None = None
    """The token to continue from (``requires_continuation``, or a stream checkpoint)."""
    lease_owner: str
    lease_expires_at: AwareDatetime
    created_at: AwareDatetime = Field(default_factory=utcnow)
    updated_at: AwareDatetime = Field(default_factory=utcnow)

    @field_validator("conversation_id", "tenant", "lease_owner")
    @classmethod
    def _ids(cls, value: str) -> str:
        return check_id(value)

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str) -> str:
        # a caller's key, as a turn takes it: any 1-200 printable characters, not just an id
        if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
            raise ValueError("idempotency key must be 1-200 printable characters")
        return value


OutboxAction: TypeAlias = Literal["delete_interaction"]


class OutboxItem(_Record):
    """A server-side effect that must happen eventually (today: deleting an interaction).

    Written before the effect is tried, removed once it succeeded, retried by ``recover``
    until then; it outlives the conversation it came from, so erasure stays provable.
    """

    id: str
    tenant: str
    conversation_id: str | None = None
    action: OutboxAction = "delete_interaction"
    target: str
    """The interaction id the action applies to."""
    attempts: int = 0
    last_error: str | None = None
    created_at: AwareDatetime = Field(default_factory=utcnow)
    next_attempt_at: AwareDatetime = Field(default_factory=utcnow)

    @field_validator("id", "tenant")
    @classmethod
    def _ids(cls, value: str) -> str:
        return check_id(value)


class RecoveryReport(_Record):
    """What ``recover`` did. Turns are named ``"<conversation id>#<seq>"``."""

    adopted: list[str] = Field(default_factory=list)
    """Turns whose answer the server had: committed."""
    lost: list[str] = Field(default_factory=list)
    """Turns recorded as lost (nothing to adopt, or the conversation had moved on)."""
    failed: list[str] = Field(default_factory=list)
    """Turns the server ended failed or cancelled: released, nothing committed."""
    running: list[str] = Field(default_factory=list)
    """Turns still running on the server: left pending (a later ``recover`` finishes them)."""
    busy: list[str] = Field(default_factory=list)
    """Turns another worker claimed first."""
    deleted: list[str] = Field(default_factory=list)
    """Outbox: server deletions done now."""
    outstanding: dict[str, str] = Field(default_factory=dict)
    """Outbox: server deletions still failing (interaction id -> last error), retried later."""

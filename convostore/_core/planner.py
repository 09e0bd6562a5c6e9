"""The pure core of a turn: how state travels, the exact request body, what gets committed.

No I/O here. The drivers (``_async/conversation.py`` and its generated sync twin) call, in
order: :func:`normalize_input` -> :func:`decide` -> :func:`plan_request` -> (HTTP) ->
:func:`commit_turn` -> (store). Every mode rule of DESIGN.md §1 lives in :func:`decide`.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .._exceptions import ValidationError
from ..models import (
    MODES,
    STEP_TYPES,
    ConversationRecord,
    JSONObject,
    Mode,
    ModeUsed,
    Reason,
    StoredStep,
    Turn,
    TurnCommit,
    TurnRecord,
    check_id,
    check_json,
    parse_step,
)
from . import audit as _audit

DEFAULT_RETENTION = timedelta(days=55)
"""How long the service keeps a stored interaction (paid tier; the free tier keeps 1 day)."""

CONFIG_KEYS = frozenset(
    {
        "system_instruction",
        "tools",
        "generation_config",
        "response_format",
        "response_mime_type",
        "response_modalities",
        "safety_settings",
        "service_tier",
        "labels",
        "webhook_config",
        "environment",
    }
)
"""Interaction-scoped settings: stored on the conversation and re-sent on every turn, because
``previous_interaction_id`` carries only the history (interactions-api.md §10.2)."""

MAX_MODEL_LENGTH = 200
CONFLICT_DELAY = 0.05
MAX_CONFLICT_DELAY = 1.0
CONFLICT_QUEUE_SECONDS = 60.0
"""How long send(on_conflict="retry") re-plans after conflicts that cost no request."""

_CONTENT_TYPES = frozenset({"text", "image", "audio", "video", "document"})
_INPUT_STEP_TYPES = frozenset({"user_input", "function_result"})

Retention = timedelta | Mapping[str, timedelta] | Callable[[str], timedelta]


@dataclass(frozen=True)
class Policy:
    """How ``auto`` judges a head.

    Attributes:
        retention: how long the server keeps interactions: one value, a per-tenant mapping
            (missing tenants get the default), or a function of the tenant.
        margin: a head this close to its predicted expiry is treated as expired already, so a
            turn does not race the server's clock.
    """

    retention: Retention = DEFAULT_RETENTION
    margin: timedelta = timedelta(minutes=10)

    def retention_for(self, tenant: str) -> timedelta:
        if isinstance(self.retention, timedelta):
            return self.retention
        if isinstance(self.retention, Mapping):
            return self.retention.get(tenant, DEFAULT_RETENTION)
        return self.retention(tenant)


@dataclass(frozen=True)
class Decision:
    """How one turn travels."""

    mode_used: ModeUsed
    reason: Reason
    store: bool
    previous_interaction_id: str | None

    @property
    def needs_history(self) -> bool:
        return self.mode_used == "stateless"


def check_model(model: object) -> str:
    # the model is stored in a text column and sent in every body: no control characters or
    # lone surrogates, which drivers and JSON encoders refuse only after the fact
    if not isinstance(model, str) or not model.strip():
        raise ValidationError("model must be a non-empty string")
    if len(model) > MAX_MODEL_LENGTH or not model.isprintable():
        raise ValidationError(
            f"model must be at most {MAX_MODEL_LENGTH} printable characters; got {model[:40]!r}"
        )
    return model


def new_conversation_id() -> str:
    return uuid.uuid4().hex


def check_mode(mode: object) -> Mode:
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode  # type: ignore[return-value]


def check_config(config: Mapping[str, Any]) -> JSONObject:
    """Validate interaction-scoped settings; drop keys set to None."""
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValidationError(
            f"unknown conversation setting(s) {unknown}; allowed: {sorted(CONFIG_KEYS)}"
        )
    cleaned = {k: v for k, v in config.items() if v is not None}
    if "system_instruction" in cleaned and not isinstance(cleaned["system_instruction"], str):
        raise ValidationError("system_instruction must be a string")
    if "tools" in cleaned and not isinstance(cleaned["tools"], list):
        raise ValidationError("tools must be a list of tool objects")
    if "generation_config" in cleaned and not isinstance(cleaned["generation_config"], dict):
        raise ValidationError("generation_config must be an object")
    check_json(cleaned, "conversation settings")
    return cleaned


# --------------------------------------------------------------------------- input


def _as_json(item: Any) -> Any:
    if hasattr(item, "model_dump"):
        return item.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return item


def normalize_input(value: Any) -> list[JSONObject]:
    """Turn what ``send`` accepts into the wire steps of one user turn.

    A string becomes one ``user_input`` step with a text part; a content part (or a list of
    them, strings allowed) becomes one ``user_input`` step; a step or a list of steps
    (``user_input``, ``function_result``) is taken as given. The emulator and the service
    normalise a bare string the same way, so chained and replayed histories are identical.

    Raises:
        ValidationError: empty input, an unknown type, a malformed step, or non-JSON values.
    """
    if isinstance(value, str):
        if not value.strip():
            raise ValidationError("input must not be empty")
        # the one path that skips the loop below; it must refuse what no JSON encoder sends
        step = {"type": "user_input", "content": [{"type": "text", "text": value}]}
        return [check_json(step, "input")]
    items = [_as_json(v) for v in value] if isinstance(value, list | tuple) else [_as_json(value)]
    if not items:
        raise ValidationError("input must not be empty")
    kinds = set()
    for item in items:
        if isinstance(item, str):
            kinds.add("content")
        elif isinstance(item, dict) and isinstance(item.get("type"), str):
            if item["type"] in _CONTENT_TYPES:
                kinds.add("content")
            elif item["type"] in _INPUT_STEP_TYPES:
                kinds.add("step")
            elif item["type"] in STEP_TYPES:
                raise ValidationError(
                    f"a {item['type']!r} step cannot be sent as input; "
                    "send user_input or function_result steps"
                )
            else:
                raise ValidationError(f"unknown input type {item['type']!r}")
        else:
            raise ValidationError(
                "input must be a string, content parts or steps (JSON objects with a 'type'); "
                f"got {type(item).__name__}"
            )
    if len(kinds) > 1:
        raise ValidationError("input mixes content parts and steps; send one or the other")
    if kinds == {"content"}:
        parts = [{"type": "text", "text": i} if isinstance(i, str) else i for i in items]
        steps: list[JSONObject] = [{"type": "user_input", "content": parts}]
    else:
        steps = items
    for step in steps:
        check_json(step, "input")
        parse_step(step)
        if step["type"] == "user_input" and not step.get("content"):
            raise ValidationError("a user_input step needs content")
    return steps


def check_send_args(input: Any, key: str | None, on_conflict: str) -> list[JSONObject]:
    """Validate ``send``'s arguments; the input's wire steps."""
    if key is not None:
        check_id(key, "idempotency_key")
    if on_conflict not in ("raise", "retry"):
        raise ValidationError(f"on_conflict must be 'raise' or 'retry'; got {on_conflict!r}")
    return normalize_input(input)


IN_FLIGHT_POLICIES = ("reject", "wait", "cancel")


def check_turn_options(*, in_flight: object, background: object) -> None:
    if in_flight not in IN_FLIGHT_POLICIES:
        raise ValidationError(f"in_flight must be one of {IN_FLIGHT_POLICIES}; got {in_flight!r}")
    if not isinstance(background, bool):
        raise ValidationError(f"background must be True or False; got {background!r}")


def new_turn_key() -> str:
    """The idempotency key of a turn whose caller gave none: its commit is deduplicated too."""
    return "t-" + uuid.uuid4().hex


def webhook_config(uris: Sequence[str], record: ConversationRecord) -> JSONObject:
    """The ``webhook_config`` of a background turn: the webhook names its conversation back."""
    return {
        "uris": list(uris),
        "user_metadata": {"convostore_conversation": record.id, "convostore_tenant": record.tenant},
    }


def conflict_delay(attempt: int) -> float:
    """Seconds to wait before re-planning after the ``attempt``-th conflict: exponential with
    full jitter, so writers racing on one conversation spread out instead of colliding again
    (every lost race costs a billed request)."""
    return random.uniform(0.0, min(MAX_CONFLICT_DELAY, CONFLICT_DELAY * 2 ** (attempt - 1)))


def answered_call_ids(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    return [s["call_id"] for s in steps if s.get("type") == "function_result"]


def check_function_results(
    new_steps: Sequence[Mapping[str, Any]], last_turn_steps: Sequence[Mapping[str, Any]]
) -> None:
    """Every ``function_result`` must answer a ``function_call`` of the previous turn."""
    answered = answered_call_ids(new_steps)
    if not answered:
        return
    pending = {s.get("id") for s in last_turn_steps if s.get("type") == "function_call"}
    missing = [c for c in answered if c not in pending]
    if missing:
        raise ValidationError(
            f"function_result for call id(s) {missing} that the previous turn did not make"
        )


# --------------------------------------------------------------------------- decision


def decide(
    record: ConversationRecord,
    *,
    policy: Policy,
    now: datetime,
    chain_broken: bool = False,
) -> Decision:
    """Choose how this turn travels (DESIGN.md §1).

    ``chain_broken`` is set by the driver after the server answered a chained create with
    "not found": the local mirror is then replayed once with ``store: true``.
    """
    if record.mode == "stateless":
        return Decision("stateless", Reason.STATELESS_MODE, False, None)
    if chain_broken:
        return Decision("stateless", Reason.CHAIN_BROKEN, True, None)
    if record.step_count == 0:
        return Decision("server", Reason.FIRST_TURN, True, None)
    head = record.head_interaction_id
    if head is None and record.context_epoch:
        return Decision("stateless", Reason.COMPACTED, True, None)
    if head is None:
        return Decision("stateless", Reason.NO_SERVER_HEAD, True, None)
    if record.head_model is not None and record.head_model != record.model:
        return Decision("stateless", Reason.MODEL_CHANGED, True, None)
    if record.mode == "auto" and record.head_created_at is not None:
        deadline = record.head_created_at + policy.retention_for(record.tenant) - policy.margin
        if now >= deadline:
            return Decision("stateless", Reason.HEAD_EXPIRED, True, None)
    return Decision("server", Reason.CHAINED, True, head)


def plan_request(
    record: ConversationRecord,
    decision: Decision,
    *,
    new_steps: Sequence[JSONObject],
    history: Sequence[JSONObject] = (),
) -> JSONObject:
    """The exact create body for this turn (the client adds ``stream: true`` for a stream).

    Settings are re-sent on every turn in both modes. Chaining sends only the new input;
    replay sends the stored history (as stored, not re-validated) plus the new input.
    """
    body: JSONObject = {"model": record.model, **record.config}
    if decision.needs_history:
        body["input"] = [*history, *new_steps]
    else:
        body["input"] = list(new_steps)
        if decision.previous_interaction_id is not None:
            body["previous_interaction_id"] = decision.previous_interaction_id
    body["store"] = decision.store
    return body


# --------------------------------------------------------------------------- commit


def model_steps(response_steps: Sequence[JSONObject] | None) -> list[JSONObject]:
    """The steps the model produced: ``user_input`` echoes dropped (the input is already
    recorded once), everything else kept verbatim."""
    return [s for s in response_steps or () if s.get("type") != "user_input"]


def commit_turn(
    record: ConversationRecord,
    decision: Decision,
    *,
    new_steps: Sequence[JSONObject],
    interaction_id: str | None,
    status: str,
    response_steps: Sequence[JSONObject] | None,
    usage: JSONObject | None,
    now: datetime,
    idempotency_key: str | None = None,
) -> TurnCommit:
    """What one completed turn writes: its steps, the turn row and the advanced conversation."""
    seq = record.turn_count + 1
    payloads = [*new_steps, *model_steps(response_steps)]
    steps = [
        StoredStep.model_construct(
            conversation_id=record.id,
            seq=record.step_count + i,
            turn_seq=seq,
            type=str(p["type"]),
            payload=p,
        )
        for i, p in enumerate(payloads, start=1)
    ]
    turn = TurnRecord(
        conversation_id=record.id,
        seq=seq,
        interaction_id=interaction_id or None,
        previous_interaction_id=decision.previous_interaction_id,
        model=record.model,
        mode_used=decision.mode_used,
        reason=decision.reason,
        status=status,
        usage=usage,
        idempotency_key=idempotency_key,
        created_at=now,
        context_epoch=record.context_epoch,
    )
    turn = turn.model_copy(
        update={"audit_hash": _audit.turn_hash(record.last_turn_hash, turn, steps)}
    )
    stored = decision.store and bool(interaction_id)
    new_record = record.model_copy(
        update={
            "version": record.version + 1,
            "turn_count": seq,
            "step_count": record.step_count + len(steps),
            "head_interaction_id": interaction_id if stored else None,
            "head_created_at": now if stored else None,
            "head_model": record.model if stored else None,
            "last_turn_hash": turn.audit_hash,
            "updated_at": now,
        }
    )
    return TurnCommit.model_construct(record=new_record, turn=turn, steps=steps)


def turn_result(turn: TurnRecord, payloads: Sequence[JSONObject], *, replayed: bool) -> Turn:
    """The caller's view of a stored turn: its leading input steps, then the model's."""
    n = 0
    while n < len(payloads) and payloads[n].get("type") in _INPUT_STEP_TYPES:
        n += 1
    return Turn(
        record=turn, input_steps=list(payloads[:n]), steps=list(payloads[n:]), replayed=replayed
    )


def stored_on_server(turn: TurnRecord) -> bool:
    """Whether the service kept this turn's interaction (everything but ``store: false``)."""
    return turn.interaction_id is not None and turn.reason != Reason.STATELESS_MODE


def fork_record(
    record: ConversationRecord,
    turns: Sequence[TurnRecord],
    step_count: int,
    *,
    new_id: str,
    now: datetime,
) -> ConversationRecord:
    """The record of a fork holding ``turns`` (a prefix of ``record``'s turns).

    Its head is the last copied turn's interaction when the server stored it, so the fork's
    first request chains from there; otherwise the fork replays (``no_server_head``).
    """
    head = turns[-1] if turns else None
    stored = head is not None and stored_on_server(head)
    return ConversationRecord(
        id=new_id,
        tenant=record.tenant,
        user=record.user,
        mode=record.mode,
        model=record.model,
        config=record.config,
        head_interaction_id=head.interaction_id if stored and head else None,
        head_created_at=head.created_at if stored and head else None,
        head_model=head.model if stored and head else None,
        version=0,
        turn_count=len(turns),
        step_count=step_count,
        last_turn_hash=head.audit_hash if head else None,
        metadata={
            **record.metadata,
            "forked_from": {"conversation_id": record.id, "turn": len(turns)},
        },
        created_at=now,
        updated_at=now,
        expires_at=record.expires_at,
    )

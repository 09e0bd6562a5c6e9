"""Rules every store backend applies, free of I/O: input checks, listing cursors, the
newest-N boundary, and the JSON encoding of stored payloads.

Backends call the ``check_*`` functions before touching storage, so bad input raises
:class:`~convostore.ValidationError` with nothing written and existing data untouched.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

from pydantic import ValidationError as PydanticValidationError

from .._exceptions import ConcurrentTurnError, CorruptRecordError, ValidationError
from ..models import (
    MAX_ID_LENGTH,
    MAX_JSON_DEPTH,
    ConversationRecord,
    OutboxItem,
    PendingTurnRecord,
    StoredStep,
    TurnCommit,
    TurnRecord,
    check_id,
    check_step_payload,
)

__all__ = [
    "APPEND_FIELDS",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_LIST_LIMIT",
    "OUTBOX_RETRY_FIELDS",
    "PENDING_DATA_FIELDS",
    "PENDING_PROGRESS_FIELDS",
    "REQUIRES_ACTION",
    "UPDATE_FIELDS",
    "TurnSpan",
    "check_begin",
    "check_claim",
    "check_commit",
    "check_commit_encoded",
    "check_continues",
    "check_idempotency_key",
    "check_list",
    "check_list_outbox",
    "check_list_pending",
    "check_load",
    "check_new_conversation",
    "check_outbox_ids",
    "check_outbox_items",
    "check_owner",
    "check_pending",
    "check_pending_key",
    "check_purge",
    "check_record",
    "check_scope",
    "check_update",
    "claimable",
    "decode_cursor",
    "decode_outbox",
    "decode_pending",
    "dumps",
    "encode_cursor",
    "epoch_us",
    "is_purgeable",
    "loads",
    "merge_progress",
    "newest_start",
    "pending_data",
    "select_outbox",
    "select_pending",
    "stored_step",
]

APPEND_FIELDS = (
    "version",
    "turn_count",
    "step_count",
    "head_interaction_id",
    "head_created_at",
    "head_model",
    "last_turn_hash",
    "updated_at",
)
"""The conversation fields ``append_turn`` writes (from ``commit.record``)."""
UPDATE_FIELDS = (
    "mode",
    "model",
    "config",
    "metadata",
    "expires_at",
    "head_interaction_id",
    "head_created_at",
    "head_model",
    "updated_at",
    "version",
)
"""The conversation fields ``update_conversation`` writes; never counts, hash or identity."""
MAX_IDEMPOTENCY_KEY_LENGTH = MAX_ID_LENGTH
MAX_LIST_LIMIT = 1000
REQUIRES_ACTION = "requires_action"
"""A turn with this status awaits a client-side result; the next turn answers it."""


# --------------------------------------------------------------------------- JSON text


# One encoder for every call: json.dumps with options builds a new JSONEncoder each time,
# which costs as much as encoding a short value.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    """Compact JSON text of an already-checked value (non-ASCII kept as is)."""
    return _ENCODE(value)


def _check_json(value: object, what: str) -> bytes:
    """``models.check_json`` with one shared encoder and a walk of the containers only;
    returns the compact UTF-8 JSON text (the encoding is the serialisability check)."""
    data = _encode_checked(value, what)
    if isinstance(value, _CONTAINERS):
        _check_shape(value, what, 0)
    return data


def _encode_checked(value: object, what: str) -> bytes:
    try:
        # encoding to UTF-8 is what rejects lone surrogates
        return _ENCODE(value).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from exc


def _check_shape(
    value: dict[Any, Any] | list[Any] | tuple[Any, ...], what: str, depth: int
) -> None:
    # The encoder accepted the value, so its floats are finite and every container in it is
    # a dict, list or tuple; left to check: string keys (it would have converted others)
    # and the nesting limit (it allows far deeper).
    if depth >= MAX_JSON_DEPTH:
        raise ValidationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for key, sub in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{what} has a non-string key {key!r}")
            if isinstance(sub, _CONTAINERS):
                _check_shape(sub, what, depth + 1)
    else:
        for sub in value:
            if isinstance(sub, _CONTAINERS):
                _check_shape(sub, what, depth + 1)


_CONTAINERS = (dict, list, tuple)


def loads(text: str | bytes, what: str = "stored record") -> Any:
    """Decode stored JSON text.

    Raises:
        CorruptRecordError: the text is not JSON.
    """
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        raise CorruptRecordError(f"{what} is not valid JSON: {exc}") from exc


# Shared by every step built here, as model_construct(_fields_set=...) would share it;
# pydantic copies it before changing it (model_copy), and nothing else writes it.
_STEP_FIELDS = set(StoredStep.model_fields)
_new = object.__new__
_set = object.__setattr__


def stored_step(conversation_id: str, seq: int, turn_seq: int, payload: Any) -> StoredStep:
    """A StoredStep for the read path, built without validation (the write path validated
    it). Several times faster than ``model_construct``, which matters at 10,000 steps.

    Raises:
        CorruptRecordError: the payload is not a step object.
    """
    if type(payload) is not dict or type(payload.get("type")) is not str:
        raise CorruptRecordError(f"stored step {seq} of {conversation_id!r} is not a step object")
    step = _new(StoredStep)
    _set(
        step,
        "__dict__",
        {
            "conversation_id": conversation_id,
            "seq": seq,
            "turn_seq": turn_seq,
            "type": payload["type"],
            "payload": payload,
        },
    )
    _set(step, "__pydantic_fields_set__", _STEP_FIELDS)
    _set(step, "__pydantic_extra__", None)
    _set(step, "__pydantic_private__", None)
    return step


# --------------------------------------------------------------------------- checks


# Seqs, counts, versions and limits live in (or are compared with) 64-bit integer columns; a
# larger Python int would reach the driver and fail there with an untranslated OverflowError.
MAX_INT = 2**63 - 1


def _check_int(value: object, what: str, *, minimum: int) -> int:
    # bool is an int subclass; True as a seq or limit is always a caller bug
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{what} must be an integer, not {type(value).__name__}")
    if value < minimum:
        raise ValidationError(f"{what} must be >= {minimum}, not {value}")
    if value > MAX_INT:
        raise ValidationError(f"{what} must be < 2**63, not {value}")
    return value


def _check_aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{what} must be timezone-aware")
    return value


def check_scope(conversation_id: object, tenant: object) -> None:
    """Check the (conversation id, tenant) pair every scoped operation takes."""
    check_id(conversation_id, "conversation id")
    check_id(tenant, "tenant")


def check_record(record: object, *, settings: bool = True) -> ConversationRecord:
    """Check a conversation record, including what ``model_construct`` could have skipped.

    ``settings=False`` skips the JSON walk of ``config`` and ``metadata``, for writes that
    store neither (an append writes only ``APPEND_FIELDS``).
    """
    if not isinstance(record, ConversationRecord):
        raise ValidationError(f"expected a ConversationRecord, not {type(record).__name__}")
    check_scope(record.id, record.tenant)
    if record.user is not None:
        check_id(record.user, "user")
    if not isinstance(record.model, str):
        raise ValidationError("model must be a string")
    if settings:
        _check_json(record.config, "config")
        _check_json(record.metadata, "metadata")
    for name in ("version", "turn_count", "step_count"):
        _check_int(getattr(record, name), name, minimum=0)
    for name in ("created_at", "updated_at"):
        _check_aware(getattr(record, name), name)
    for name in ("expires_at", "head_created_at"):
        if getattr(record, name) is not None:
            _check_aware(getattr(record, name), name)
    return record


def check_idempotency_key(key: object) -> str:
    """1-200 printable characters."""
    if not isinstance(key, str) or not key:
        raise ValidationError("idempotency key must be a non-empty string")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ValidationError(
            f"idempotency key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    if not key.isprintable():
        raise ValidationError("idempotency key must not contain control characters")
    _check_json(key, "idempotency key")
    return key


def _check_turn(turn: object, conversation_id: str, seq: int) -> TurnRecord:
    if not isinstance(turn, TurnRecord):
        raise ValidationError(f"expected a TurnRecord, not {type(turn).__name__}")
    if turn.conversation_id != conversation_id:
        raise ValidationError(
            f"turn {turn.seq} belongs to {turn.conversation_id!r}, not {conversation_id!r}"
        )
    if turn.seq != seq:
        raise ValidationError(f"turn seq {turn.seq!r} out of order; expected {seq}")
    if not isinstance(turn.status, str) or not turn.status:
        raise ValidationError("turn status must be a non-empty string")
    if turn.usage is not None:
        _check_json(turn.usage, "turn usage")
    if turn.idempotency_key is not None:
        check_idempotency_key(turn.idempotency_key)
    _check_aware(turn.created_at, "turn created_at")
    return turn


def _check_step(step: object, conversation_id: str, seq: int, turn_seq: int | None) -> StoredStep:
    if not isinstance(step, StoredStep):
        raise ValidationError(f"expected a StoredStep, not {type(step).__name__}")
    if step.conversation_id != conversation_id:
        raise ValidationError(
            f"step {step.seq} belongs to {step.conversation_id!r}, not {conversation_id!r}"
        )
    if step.seq != seq:
        raise ValidationError(f"step seq {step.seq!r} out of order; expected {seq}")
    if turn_seq is not None and step.turn_seq != turn_seq:
        raise ValidationError(f"step {seq} has turn_seq {step.turn_seq!r}; expected {turn_seq}")
    payload = check_step_payload(step.payload, f"step {seq}")
    if step.type != payload["type"]:
        raise ValidationError(
            f"step {seq} type {step.type!r} differs from its payload type {payload['type']!r}"
        )
    return step


def check_new_conversation(
    record: object, turns: Sequence[object], steps: Sequence[object]
) -> ConversationRecord:
    """Check a conversation about to be created with (optional) existing history.

    Counts match, turn and step seqs run 1..n, every step belongs to one of the given turns
    (turn seqs never decrease along the steps), idempotency keys are unique.
    """
    rec = check_record(record)
    turns = list(turns)
    steps = list(steps)
    if rec.turn_count != len(turns):
        raise ValidationError(f"turn_count is {rec.turn_count} but {len(turns)} turns given")
    if rec.step_count != len(steps):
        raise ValidationError(f"step_count is {rec.step_count} but {len(steps)} steps given")
    keys: set[str] = set()
    for seq, turn in enumerate(turns, start=1):
        checked = _check_turn(turn, rec.id, seq)
        if checked.idempotency_key is not None:
            if checked.idempotency_key in keys:
                raise ValidationError(f"idempotency key used twice: {checked.idempotency_key!r}")
            keys.add(checked.idempotency_key)
    last_turn = 1
    for seq, step in enumerate(steps, start=1):
        checked_step = _check_step(step, rec.id, seq, None)
        turn_seq = checked_step.turn_seq
        if not isinstance(turn_seq, int) or not last_turn <= turn_seq <= len(turns):
            raise ValidationError(
                f"step {seq} has turn_seq {turn_seq!r}; expected {last_turn}..{len(turns)}"
            )
        last_turn = turn_seq
    return rec


def check_commit(commit: object) -> TurnCommit:
    """Check one turn's commit: the turn is the record's last, the steps continue the
    conversation's step sequence and belong to the turn, the version advanced."""
    _check_commit(commit)
    return cast(TurnCommit, commit)  # _check_commit raised unless it is one


def check_commit_encoded(commit: object) -> list[bytes]:
    """:func:`check_commit`, returning each step as the UTF-8 JSON text of
    ``[turn_seq, payload]``: the one encoding is both the payload's JSON check and what a
    backend that stores that pair sends, instead of a check walk plus a second encoding."""
    return _check_commit(commit)


def _check_commit(commit: object) -> list[bytes]:
    if not isinstance(commit, TurnCommit):
        raise ValidationError(f"expected a TurnCommit, not {type(commit).__name__}")
    rec = check_record(commit.record, settings=False)
    _check_int(rec.version, "version", minimum=1)
    _check_int(rec.turn_count, "turn_count", minimum=1)
    _check_turn(commit.turn, rec.id, rec.turn_count)
    steps = list(commit.steps)
    first = rec.step_count - len(steps) + 1
    if first < 1:
        raise ValidationError(f"step_count {rec.step_count} is less than the {len(steps)} steps")
    return [
        _encode_step(step, rec.id, first + offset, rec.turn_count)
        for offset, step in enumerate(steps)
    ]


def _encode_step(step: object, conversation_id: str, seq: int, turn_seq: int) -> bytes:
    """``_check_step`` for one turn's step, whose JSON check is the encoding it returns."""
    if not isinstance(step, StoredStep):
        raise ValidationError(f"expected a StoredStep, not {type(step).__name__}")
    if step.conversation_id != conversation_id:
        raise ValidationError(
            f"step {step.seq} belongs to {step.conversation_id!r}, not {conversation_id!r}"
        )
    if step.seq != seq:
        raise ValidationError(f"step seq {step.seq!r} out of order; expected {seq}")
    if step.turn_seq != turn_seq:
        raise ValidationError(f"step {seq} has turn_seq {step.turn_seq!r}; expected {turn_seq}")
    payload: object = step.payload
    what = f"step {seq}"
    if not isinstance(payload, dict):
        raise ValidationError(f"{what} must be a JSON object, not {type(payload).__name__}")
    kind = payload.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValidationError(f"{what} must have a string 'type'")
    data = _encode_checked([turn_seq, payload], what)
    _check_shape(payload, what, 0)
    if step.type != kind:
        raise ValidationError(
            f"step {seq} type {step.type!r} differs from its payload type {kind!r}"
        )
    return data


def check_continues(stored: ConversationRecord, commit: TurnCommit) -> None:
    """Check, once the stored version matched, that the commit continues the stored counts."""
    record = commit.record
    if record.turn_count != stored.turn_count + 1 or record.step_count != stored.step_count + len(
        commit.steps
    ):
        raise ValidationError(
            f"commit for {record.id!r} does not continue the stored conversation "
            f"(stored {stored.turn_count} turns / {stored.step_count} steps)"
        )


def check_update(record: object) -> ConversationRecord:
    """Check a record passed to ``update_conversation``."""
    rec = check_record(record)
    _check_int(rec.version, "version", minimum=1)
    return rec


def check_load(
    conversation_id: object,
    tenant: object,
    *,
    after_seq: object = 0,
    newest: object = None,
    turn: object = None,
    limit: object = None,
) -> None:
    """Check the arguments of ``load_steps`` / ``load_turns``."""
    check_scope(conversation_id, tenant)
    _check_int(after_seq, "after_seq", minimum=0)
    if newest is not None:
        _check_int(newest, "newest", minimum=0)
    if turn is not None:
        _check_int(turn, "turn", minimum=1)
    if limit is not None:
        _check_int(limit, "limit", minimum=0)


def check_list(tenant: object, user: object, limit: object, cursor: object) -> None:
    """Check the arguments of ``list_conversations`` (the cursor is decoded separately)."""
    if tenant is not None:
        check_id(tenant, "tenant")
    if user is not None:
        check_id(user, "user")
    _check_int(limit, "limit", minimum=1)
    if isinstance(limit, int) and limit > MAX_LIST_LIMIT:
        raise ValidationError(f"limit must be <= {MAX_LIST_LIMIT}, not {limit}")
    if cursor is not None and not isinstance(cursor, str):
        raise ValidationError(f"cursor must be a string, not {type(cursor).__name__}")


def check_purge(now: object, older_than: object, tenant: object) -> datetime:
    """Check the arguments of ``purge``; returns ``now`` (default: the current time)."""
    if tenant is not None:
        check_id(tenant, "tenant")
    if older_than is not None:
        _check_aware(older_than, "older_than")
    if now is None:
        return datetime.now(UTC)
    return _check_aware(now, "now")


def is_purgeable(record: ConversationRecord, *, now: datetime, older_than: datetime | None) -> bool:
    """Whether ``purge`` deletes a conversation: expired at or before ``now``, or (when
    ``older_than`` is given) last updated before it."""
    if record.expires_at is not None and record.expires_at <= now:
        return True
    return older_than is not None and record.updated_at < older_than


# --------------------------------------------------------------------------- cursors


def epoch_us(value: datetime) -> int:
    """Microseconds since the Unix epoch: an exact, sortable form of a timestamp."""
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_cursor(created_at: datetime, conversation_id: str) -> str:
    """An opaque, URL-safe cursor naming the last item of a page: ``(created_at, id)``."""
    raw = f"{epoch_us(created_at)}|{conversation_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, id)`` a cursor names.

    Raises:
        ValidationError: not a cursor this module made.
    """
    if not isinstance(cursor, str) or not cursor or len(cursor) > 400:
        raise ValidationError("invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
        stamp, conversation_id = raw.split("|", 1)
        micros = int(stamp)
        created_at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
        check_id(conversation_id, "cursor")
    except (ValueError, binascii.Error, OverflowError, ValidationError) as exc:
        raise ValidationError(f"invalid cursor {cursor[:40]!r}") from exc
    return created_at, conversation_id


# --------------------------------------------------------------------------- newest-N


class TurnSpan(NamedTuple):
    """What the newest-N rule needs to know of one turn."""

    first_step: int
    """The seq of the turn's first step (for a turn without steps: the seq it would have)."""
    status: str


def newest_start(
    spans: Sequence[TurnSpan], *, step_count: int, newest: int, complete: bool
) -> int | None:
    """The seq of the first step ``load_steps(newest=N)`` returns.

    The suffix starts at the latest clean boundary that still leaves at least
    ``min(newest, step_count)`` steps: the first step of a turn whose preceding turn did not
    end in ``requires_action`` (a ``function_call`` stays with its ``function_result``).

    Args:
        spans: the last ``len(spans)`` turns of the conversation, in seq order.
        step_count: the conversation's step count.
        newest: N.
        complete: ``spans`` starts at the conversation's first turn.

    Returns:
        The first seq to load (``step_count + 1`` when nothing is wanted), or None when
        ``spans`` does not reach back far enough: fetch more turns and call again.
    """
    want = min(newest, step_count)
    if want <= 0:
        return step_count + 1
    for index in range(len(spans) - 1, -1, -1):
        start = spans[index].first_step
        if step_count - start + 1 < want:
            continue
        if index == 0:
            return 1 if complete else None
        if spans[index - 1].status != REQUIRES_ACTION:
            return start
    return 1 if complete else None


# --------------------------------------------------------------------------- turns in flight

PENDING_PROGRESS_FIELDS = (
    "state",
    "interaction_id",
    "hop_ids",
    "continuation_token",
    "lease_owner",
    "lease_expires_at",
    "updated_at",
)
"""The fields of a pending turn ``update_pending`` writes; the others never change."""
PENDING_DATA_FIELDS = (
    "mode_used",
    "reason",
    "model",
    "store",
    "background",
    "previous_interaction_id",
    "input_steps",
    "config",
)
"""The fields no backend filters on: stored together as one JSON document."""
OUTBOX_RETRY_FIELDS = ("attempts", "last_error", "next_attempt_at")
"""The fields of an outbox item ``update_outbox`` writes."""
_PENDING_STATES = ("pending", "sent", "continuing")


def _check_optional_str(value: object, what: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{what} must be a string or None, not {type(value).__name__}")


def check_progress(pending: object) -> PendingTurnRecord:
    """``check_pending`` for ``update_pending``, which writes only the progress fields
    (``PENDING_PROGRESS_FIELDS``): those, and the ids that scope the write, are checked; the
    input and settings it does not write are not walked again on every progress write."""
    if not isinstance(pending, PendingTurnRecord):
        raise ValidationError(f"expected a PendingTurnRecord, not {type(pending).__name__}")
    check_scope(pending.conversation_id, pending.tenant)
    check_idempotency_key(pending.idempotency_key)
    check_id(pending.lease_owner, "lease owner")
    if pending.state not in _PENDING_STATES:
        raise ValidationError(f"state must be one of {_PENDING_STATES}, not {pending.state!r}")
    for name in ("interaction_id", "continuation_token"):
        _check_optional_str(getattr(pending, name), name)
    if not isinstance(pending.hop_ids, list) or not all(
        isinstance(hop, str) for hop in pending.hop_ids
    ):
        raise ValidationError("hop_ids must be a list of strings")
    for name in ("lease_expires_at", "updated_at"):
        _check_aware(getattr(pending, name), name)
    return pending


def check_pending(pending: object) -> PendingTurnRecord:
    """Check a pending turn before it is written, including what ``model_construct`` could
    have skipped: ids, the key, counters, timestamps, the JSON of its input and settings."""
    if not isinstance(pending, PendingTurnRecord):
        raise ValidationError(f"expected a PendingTurnRecord, not {type(pending).__name__}")
    check_scope(pending.conversation_id, pending.tenant)
    check_idempotency_key(pending.idempotency_key)
    check_id(pending.lease_owner, "lease owner")
    _check_int(pending.seq, "seq", minimum=1)
    _check_int(pending.planned_version, "planned_version", minimum=0)
    if pending.state not in _PENDING_STATES:
        raise ValidationError(f"state must be one of {_PENDING_STATES}, not {pending.state!r}")
    if not isinstance(pending.input_steps, list) or not all(
        isinstance(step, dict) for step in pending.input_steps
    ):
        raise ValidationError("input_steps must be a list of JSON objects")
    _check_json(pending.input_steps, "input_steps")
    if not isinstance(pending.config, dict):
        raise ValidationError("config must be a JSON object")
    _check_json(pending.config, "config")
    if not isinstance(pending.model, str):
        raise ValidationError("model must be a string")
    for name in ("interaction_id", "continuation_token", "previous_interaction_id"):
        _check_optional_str(getattr(pending, name), name)
    if not isinstance(pending.hop_ids, list) or not all(
        isinstance(hop, str) for hop in pending.hop_ids
    ):
        raise ValidationError("hop_ids must be a list of strings")
    for name in ("lease_expires_at", "created_at", "updated_at"):
        _check_aware(getattr(pending, name), name)
    return pending


def check_owner(owner: object) -> str:
    """Check a lease owner (an id)."""
    return check_id(owner, "lease owner")


def check_pending_key(conversation_id: object, tenant: object, idempotency_key: object) -> None:
    """Check the arguments of ``release_pending``."""
    check_scope(conversation_id, tenant)
    check_idempotency_key(idempotency_key)


def check_begin(stored: ConversationRecord, pending: PendingTurnRecord) -> None:
    """Once no turn is in flight: the stored version must be the planned one (else
    ConcurrentTurnError), and the pending turn must take the next seq (else ValidationError)."""
    if stored.version != pending.planned_version:
        raise ConcurrentTurnError(
            pending.conversation_id,
            expected_version=pending.planned_version,
            actual_version=stored.version,
        )
    if pending.seq != stored.turn_count + 1:
        raise ValidationError(
            f"pending turn seq {pending.seq} of {pending.conversation_id!r} is not the next "
            f"seq ({stored.turn_count + 1})"
        )


def check_claim(
    conversation_id: object, tenant: object, owner: object, now: object, lease_expires_at: object
) -> None:
    """Check the arguments of ``claim_pending``."""
    check_scope(conversation_id, tenant)
    check_id(owner, "lease owner")
    _check_aware(now, "now")
    _check_aware(lease_expires_at, "lease_expires_at")


def claimable(pending: PendingTurnRecord, *, owner: str, now: datetime) -> bool:
    """Whether ``owner`` may claim ``pending`` at ``now``: its lease expired, or it holds it."""
    return pending.lease_owner == owner or pending.lease_expires_at <= now


def merge_progress(stored: PendingTurnRecord, new: PendingTurnRecord) -> PendingTurnRecord:
    """``stored`` with the progress fields of ``new`` (what ``update_pending`` writes)."""
    return stored.model_copy(update={name: getattr(new, name) for name in PENDING_PROGRESS_FIELDS})


def check_list_pending(tenant: object, expired_at: object, limit: object) -> None:
    """Check the arguments of ``list_pending``."""
    check_list(tenant, None, limit, None)
    if expired_at is not None:
        _check_aware(expired_at, "expired_at")


def select_pending(
    found: Sequence[PendingTurnRecord],
    *,
    tenant: str | None,
    expired_at: datetime | None,
    limit: int,
) -> list[PendingTurnRecord]:
    """``list_pending`` over records in hand: filtered, oldest first, at most ``limit``."""
    kept = [
        p
        for p in found
        if (tenant is None or p.tenant == tenant)
        and (expired_at is None or p.lease_expires_at <= expired_at)
    ]
    kept.sort(key=lambda p: (epoch_us(p.created_at), p.conversation_id))
    return kept[:limit]


def pending_data(pending: PendingTurnRecord) -> str:
    """The JSON text of a pending turn's ``PENDING_DATA_FIELDS`` (stored as one document)."""
    return dumps(pending.model_dump(mode="json", include=set(PENDING_DATA_FIELDS)))


def decode_pending(data: Any) -> PendingTurnRecord:
    """A pending turn from stored fields.

    Raises:
        CorruptRecordError: they do not make a valid record.
    """
    try:
        return PendingTurnRecord.model_validate(data)
    except (PydanticValidationError, ValidationError, TypeError) as exc:
        raise CorruptRecordError(f"stored pending turn does not parse: {exc}") from exc


# --------------------------------------------------------------------------- outbox


def check_outbox_items(items: object) -> list[OutboxItem]:
    """Check the items of ``add_outbox`` / the item of ``update_outbox`` (as a list)."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise ValidationError(f"expected a sequence of OutboxItem, not {type(items).__name__}")
    checked = []
    for item in items:
        if not isinstance(item, OutboxItem):
            raise ValidationError(f"expected an OutboxItem, not {type(item).__name__}")
        check_id(item.id, "outbox item id")
        check_id(item.tenant, "tenant")
        if item.conversation_id is not None:
            check_id(item.conversation_id, "conversation id")
        if item.action != "delete_interaction":
            raise ValidationError(f"unknown outbox action {item.action!r}")
        if not isinstance(item.target, str) or not item.target:
            raise ValidationError("outbox target must be a non-empty string")
        _check_json(item.target, "outbox target")
        _check_int(item.attempts, "attempts", minimum=0)
        _check_optional_str(item.last_error, "last_error")
        if item.last_error is not None:
            _check_json(item.last_error, "last_error")
        _check_aware(item.created_at, "created_at")
        _check_aware(item.next_attempt_at, "next_attempt_at")
        checked.append(item)
    return checked


def check_outbox_ids(ids: object) -> list[str]:
    """Check the ids of ``remove_outbox``."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        raise ValidationError(f"expected a sequence of outbox ids, not {type(ids).__name__}")
    return [check_id(item_id, "outbox item id") for item_id in ids]


def check_list_outbox(tenant: object, due_at: object, limit: object) -> None:
    """Check the arguments of ``list_outbox``."""
    check_list(tenant, None, limit, None)
    if due_at is not None:
        _check_aware(due_at, "due_at")


def select_outbox(
    found: Sequence[OutboxItem], *, tenant: str | None, due_at: datetime | None, limit: int
) -> list[OutboxItem]:
    """``list_outbox`` over items in hand: filtered, oldest first (``created_at``, then id),
    at most ``limit``."""
    kept = [
        item
        for item in found
        if (tenant is None or item.tenant == tenant)
        and (due_at is None or item.next_attempt_at <= due_at)
    ]
    kept.sort(key=lambda item: (epoch_us(item.created_at), item.id))
    return kept[:limit]


def decode_outbox(data: Any) -> OutboxItem:
    """An outbox item from stored fields.

    Raises:
        CorruptRecordError: they do not make a valid item.
    """
    try:
        return OutboxItem.model_validate(data)
    except (PydanticValidationError, ValidationError, TypeError) as exc:
        raise CorruptRecordError(f"stored outbox item does not parse: {exc}") from exc

"""Continuation rules of the Interactions API, as pure functions (no I/O).

An interaction that reaches the per-request decode limit ends a request with
``status: "requires_continuation"`` and a ``continuation_token``; a stream may also carry
mid-way checkpoints (``interaction.status_update`` events with a ``continuation_token``) from
which a cut stream can resume. Each request is a *hop*: its own interaction on the server.

These are the rules of the official SDK (google-genai 3.6.1, ``_interactions_continuation``),
ported so a driver can follow them step by step:

- :func:`continuation_body` — the create body of the next hop;
- :func:`merge_hops` — the hops of one turn as one interaction (steps concatenated, usage
  summed, the final hop's id and status);
- :func:`extract_hop_state`, :func:`has_content_since_checkpoint`,
  :func:`can_resume_stream_hop`, :func:`next_no_progress_reconnects` — what one stream event
  says about resuming;
- :class:`StreamResume` — the resume decision across the hops of one streamed turn (the SDK's
  ``StreamContinuation`` without its I/O): the driver feeds it every event and, when a hop
  ends, asks it whether to start another hop and with which token.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .._exceptions import ValidationError
from ..models import Interaction, JSONObject, Usage, to_wire

__all__ = [
    "MAX_STREAM_RECONNECTS_WITHOUT_PROGRESS",
    "RESUMABLE_STREAM_STATUSES",
    "USAGE_LIST_KEYS",
    "Checkpoint",
    "HopEnd",
    "StreamResume",
    "can_resume_stream_hop",
    "continuation_body",
    "event_interaction_id",
    "extract_hop_state",
    "has_content_since_checkpoint",
    "merge_hops",
    "merge_usages",
    "next_no_progress_reconnects",
    "request_checkpoint",
]

MAX_STREAM_RECONNECTS_WITHOUT_PROGRESS = 3
"""Consecutive reconnects after a cut that made no progress (no new checkpoint) before giving
up."""

RESUMABLE_STREAM_STATUSES: frozenset[str | None] = frozenset(
    {None, "in_progress", "requires_continuation"}
)
"""A hop whose last status is one of these (None: no status seen yet) may be resumed."""

# Events that carry no model output: a stream cut after only these since the last checkpoint
# can be resumed without duplicating output.
_NON_CONTENT_EVENTS = frozenset({"interaction.created", "interaction.status_update"})

USAGE_LIST_KEYS: dict[str, tuple[str, str]] = {
    "cached_tokens_by_modality": ("modality", "tokens"),
    "input_tokens_by_modality": ("modality", "tokens"),
    "output_tokens_by_modality": ("modality", "tokens"),
    "tool_use_tokens_by_modality": ("modality", "tokens"),
    "grounding_tool_count": ("type", "count"),
}
"""Usage lists merged per key (``modality`` / ``type``) by summing their value."""


def _get(value: object, name: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _non_empty_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _data(event: object) -> Any:
    return to_wire(event) if isinstance(event, BaseModel) else event


# --------------------------------------------------------------------------- the next hop


def continuation_body(
    original_body: Mapping[str, Any],
    *,
    token: str,
    owner_id: str | None,
    store: bool | None = None,
) -> JSONObject:
    """The create body of a continuation hop resuming from ``token``.

    With ``store`` on (the default, as in the body) the server rebuilds the context from the
    stored interaction that issued the token: the hop sends the original body without
    ``input``, plus ``continuation_token`` and ``previous_interaction_id: owner_id`` (the server
    checks that the token belongs to it). With ``store`` off nothing was stored, so the original
    body, ``input`` included, is re-sent with the token. Without ``owner_id`` (a token that did
    not come from an earlier hop, e.g. the caller's own) the original body is re-sent as is,
    plus the token.

    Args:
        original_body: the turn's first request body (not modified).
        token: the continuation token.
        owner_id: the id of the interaction that issued ``token``.
        store: whether the request stores its interactions; None reads the body's ``store``
            (absent means on).

    Raises:
        ValidationError: ``token`` (or a given ``owner_id``) is not a non-empty string.
    """
    if not _non_empty_str(token):
        raise ValidationError("continuation token must be a non-empty string")
    if owner_id is not None and not _non_empty_str(owner_id):
        raise ValidationError("owner_id must be a non-empty string or None")
    stored = original_body.get("store") is not False if store is None else store
    body: JSONObject = {**copy.deepcopy(dict(original_body)), "continuation_token": token}
    if owner_id and stored:
        body["previous_interaction_id"] = owner_id
        body.pop("input", None)
    return body


# --------------------------------------------------------------------------- merging hops


def _hop_raw(hop: Interaction | Mapping[str, Any]) -> JSONObject:
    return copy.deepcopy(hop.raw if isinstance(hop, Interaction) else dict(hop))


def _hop_continuation_ids(hop: Interaction | Mapping[str, Any]) -> list[Any]:
    # A hop that is itself a merge result lists its own hops (the SDK's continuation_ids).
    if isinstance(hop, Interaction):
        if hop._hop_ids is not None:
            return list(hop._hop_ids)
        ids = hop.raw.get("continuation_ids")
    else:
        ids = hop.get("continuation_ids")
    return list(ids) if isinstance(ids, list) else []


def _merge_ids(hops: Sequence[Interaction | Mapping[str, Any]]) -> list[str]:
    ids: list[str] = []
    for hop in hops:
        ids.extend(cid for cid in _hop_continuation_ids(hop) if isinstance(cid, str) and cid)
        hop_id = _get(hop, "id")
        if isinstance(hop_id, str) and hop_id:
            ids.append(hop_id)
    return list(dict.fromkeys(ids))


def merge_hops(hops: Sequence[Interaction | Mapping[str, Any]]) -> Interaction:
    """The hops of one turn merged into one interaction, as the SDK's ``merge_unary_hops``.

    - ``steps``: every hop's steps in order; the ``user_input`` steps that open a later hop are
      dropped (a later hop continues the same turn: a repeated input would be stored twice and
      would cut ``output_text`` short);
    - ``usage``: summed with :func:`merge_usages`;
    - ``id``, ``status``, ``continuation_token`` and every other field: the final hop's, except
      ``previous_interaction_id``, ``created`` and ``input``, which describe the turn's request
      and so come from the first hop (a later hop points back at the hop before it);
    - :attr:`Interaction.hop_ids`: every hop's id in order (the SDK's ``continuation_ids``).

    A final hop without a ``steps`` list is returned as it is (the SDK does the same).

    Raises:
        ValidationError: no hops.
    """
    if not hops:
        raise ValidationError("merge_hops needs at least one hop")
    final = hops[-1]
    if len(hops) == 1 and isinstance(final, Interaction):
        single = _single_hop(final)
        if single is not None:
            return single
    final_raw = _hop_raw(final)
    if not isinstance(final_raw.get("steps"), list):
        return final if isinstance(final, Interaction) else Interaction.from_raw(final_raw)

    steps: list[Any] = []
    for position, hop in enumerate(hops):
        hop_steps = _get(hop, "steps")
        if not isinstance(hop_steps, list):
            continue
        start = 0
        if position > 0:
            while start < len(hop_steps) and _get(hop_steps[start], "type") == "user_input":
                start += 1
        steps.extend(copy.deepcopy(hop_steps[start:]))

    merged = final_raw
    merged["steps"] = steps
    if len(hops) > 1:
        first_raw = _hop_raw(hops[0])
        for name in ("previous_interaction_id", "created", "input"):
            if first_raw.get(name) is None:
                merged.pop(name, None)
            else:
                merged[name] = first_raw[name]
    usages = [u for u in (_hop_raw(hop).get("usage") for hop in hops) if isinstance(u, Mapping)]
    first_usage = _hop_raw(hops[0]).get("usage")
    usage = merge_usages(
        usages, first_hop_usage=first_usage if isinstance(first_usage, Mapping) else None
    )
    if usage is not None:
        merged["usage"] = usage
    merged.pop("continuation_ids", None)  # SDK-only; kept on hop_ids instead
    result = Interaction.from_raw(merged)
    result._hop_ids = _merge_ids(hops)
    return result


def _single_hop(hop: Interaction) -> Interaction | None:
    """What merging this one hop alone builds, without copying its steps: the hop itself, or
    a copy with its usage as merging leaves it (``initial_input_tokens`` set, nulls left
    out); None when merging must run (SDK-only ``continuation_ids``, no ``steps`` list)."""
    raw = hop.raw
    if "continuation_ids" in raw or hop._hop_ids is not None:
        return None
    if not isinstance(raw.get("steps"), list):
        return None
    usage = raw.get("usage")
    if not isinstance(usage, Mapping):
        return hop if usage is None else None
    merged = merge_usages([usage], first_hop_usage=usage)
    if merged == usage:
        return hop
    result = hop.model_copy(update={"usage": Usage.model_validate(merged)})
    result._raw = {**raw, "usage": merged}
    return result


def _merge_usage_list(lists: list[list[Any]], key_name: str, value_name: str) -> list[Any]:
    merged: dict[Any, Any] = {}
    for items in lists:
        for item in items:
            key = _get(item, key_name)
            value = _get(item, value_name)
            if key not in merged:
                merged[key] = copy.deepcopy(item)
                continue
            previous = _get(merged[key], value_name)
            if _is_int(previous) and _is_int(value) and isinstance(merged[key], dict):
                merged[key] = {**merged[key], value_name: previous + value}
    return list(merged.values())


_UNSET: Any = object()


def merge_usages(
    usages: Sequence[Mapping[str, Any]], *, first_hop_usage: Any = _UNSET
) -> JSONObject | None:
    """Usage summed across hops (wire dicts), as the SDK's ``_merge_usages``.

    Every integer field is summed; the lists of :data:`USAGE_LIST_KEYS` are merged per key by
    summing their value; any other field is the last hop's. ``initial_input_tokens`` is the
    first hop's ``initial_input_tokens``, else its ``total_input_tokens`` (the prompt the turn
    started from; ``first_hop_usage`` is the first hop's usage, None when it had none). Fields
    that come out null are left out, as the SDK's serialiser leaves them out.
    """
    if not usages:
        return None
    first = usages[0] if first_hop_usage is _UNSET else first_hop_usage
    names: list[str] = []
    for usage in usages:
        names.extend(name for name in usage if name not in names)
    updates: JSONObject = {}
    for name in names:
        if name == "initial_input_tokens":
            continue
        present = [v for v in (usage.get(name) for usage in usages) if v is not None]
        if not present:
            continue
        if all(_is_int(v) for v in present):
            updates[name] = sum(present)
        elif name in USAGE_LIST_KEYS and all(isinstance(v, list) for v in present):
            updates[name] = _merge_usage_list(present, *USAGE_LIST_KEYS[name])
    initial = _get(first, "initial_input_tokens") if first is not None else None
    if initial is None and first is not None:
        initial = _get(first, "total_input_tokens")
    if initial is not None or usages[-1].get("initial_input_tokens") is not None:
        updates["initial_input_tokens"] = initial
    merged = {**copy.deepcopy(dict(usages[-1])), **updates}
    return {key: value for key, value in merged.items() if value is not None}


# --------------------------------------------------------------------------- stream events


@dataclass(frozen=True)
class Checkpoint:
    """A point a cut stream can resume from: send ``token`` with :func:`continuation_body`.

    Attributes:
        token: the continuation token.
        owner_id: the interaction that issued it (sent as ``previous_interaction_id`` when
            the request stores its interactions); None when unknown.
    """

    token: str
    owner_id: str | None = None


def request_checkpoint(body: Mapping[str, Any]) -> Checkpoint | None:
    """The checkpoint a create body itself resumes from, if it carries a continuation token.

    A body that chains the token to its issuer (``previous_interaction_id``, no ``input``,
    ``store`` on) is a continuation hop: its checkpoint names that owner, so
    :func:`continuation_body` rebuilds the same request. Any other body with a token (the
    caller's own token, or ``store`` off) is re-sent as it is: no owner.
    """
    token = _non_empty_str(body.get("continuation_token"))
    if token is None:
        return None
    owner = _non_empty_str(body.get("previous_interaction_id"))
    if owner is None or "input" in body or body.get("store") is False:
        return Checkpoint(token)
    return Checkpoint(token, owner)


def event_interaction_id(event: object) -> str | None:
    """The id of the interaction (hop) an event belongs to, if it names one."""
    data = _data(event)
    found = _non_empty_str(_get(data, "interaction_id"))
    return found or _non_empty_str(_get(_get(data, "interaction"), "id"))


def extract_hop_state(
    event: object, status: str | None, token: str | None
) -> tuple[str | None, str | None]:
    """``(status, continuation_token)`` of a hop after one more event.

    An ``error`` event gives ``("error", None)``: nothing to resume from. An interaction
    snapshot (``interaction.created`` / ``interaction.completed``) sets the status; its
    non-empty token becomes the checkpoint, and the ``interaction.completed`` snapshot is
    authoritative: without a token it clears any earlier one. A ``status_update`` sets the
    status and, when it carries one, the token.
    """
    data = _data(event)
    kind = _get(data, "event_type")
    if kind == "error":
        return "error", None
    interaction = _get(data, "interaction")
    if interaction is not None:
        new_status = _get(interaction, "status")
        if isinstance(new_status, str) and new_status:
            status = new_status
        new_token = _non_empty_str(_get(interaction, "continuation_token"))
        if kind == "interaction.completed" or new_token:
            token = new_token
    direct_status = _get(data, "status")
    if isinstance(direct_status, str) and direct_status:
        status = direct_status
    direct_token = _non_empty_str(_get(data, "continuation_token"))
    if direct_token:
        token = direct_token
    return status, token


def has_content_since_checkpoint(event: object, content_since_checkpoint: bool) -> bool:
    """Whether output arrived since the latest resume point, after one more event.

    A ``status_update`` with a token is a fresh checkpoint (False); ``interaction.completed``
    too; ``interaction.created`` and a ``status_update`` without a token change nothing; any
    other event (a step event, an error, an unknown event) is output.
    """
    data = _data(event)
    kind = _get(data, "event_type")
    if kind == "interaction.status_update":
        if _non_empty_str(_get(data, "continuation_token")):
            return False
        return content_since_checkpoint
    if kind == "interaction.completed":
        return False
    if kind in _NON_CONTENT_EVENTS:
        return content_since_checkpoint
    return True


def can_resume_stream_hop(status: str | None, token: str | None) -> bool:
    """A hop can be resumed when it has a token and its status is resumable."""
    return bool(token) and status in RESUMABLE_STREAM_STATUSES


def next_no_progress_reconnects(
    count: int, status: str | None, start_token: str | None, token: str | None
) -> int:
    """The no-progress reconnect counter after a resumable hop ended.

    A clean hop boundary (``requires_continuation``) or a cut after a new checkpoint resets it
    to 0; a cut before any new checkpoint (the hop would be retried from its own start token)
    adds one.
    """
    if status == "requires_continuation":
        return 0
    if token != start_token:
        return 0
    return count + 1


# --------------------------------------------------------------------------- stream resume


@dataclass
class _Hop:
    start_token: str | None = None
    start_owner_id: str | None = None
    token: str | None = None
    owner_id: str | None = None
    interaction_id: str | None = None
    status: str | None = None
    stream_opened: bool = False
    content_since_checkpoint: bool = False


@dataclass(frozen=True)
class HopEnd:
    """What to do after a hop ended (see :meth:`StreamResume.end_hop`).

    Attributes:
        resume: start another hop, sending ``token`` (and ``owner_id``) with
            :func:`continuation_body`.
        error: the hop's error to raise (None: resume, or stop cleanly).
        interrupted: the raised error comes after progress: the work so far can be resumed
            later from ``token`` (the SDK wraps it in ``ContinuationInterruptedError``).
        token: the next hop's token (``resume``), or the token to hand the caller with the
            error (``interrupted``).
        owner_id: the interaction that issued ``token`` (None with ``store`` off).
        hop_ids: every hop's interaction id so far, in order.
    """

    resume: bool
    error: BaseException | None = None
    interrupted: bool = False
    token: str | None = None
    owner_id: str | None = None
    hop_ids: tuple[str, ...] = ()


@dataclass
class StreamResume:
    """The resume decision across the hops of one streamed request (the SDK's
    ``StreamContinuation`` without I/O).

    Use: ``token, owner = state.start_hop()``; send the request (``continuation_body`` when a
    token is given); ``state.mark_stream_opened()`` once the response headers arrived;
    ``state.observe(event)`` for every event; then ``end = state.end_hop(error)`` and
    either raise ``end.error``, start another hop (``end.resume``), or stop.

    Args:
        initial_token: the caller's own continuation token, if the request carries one.
        stateful: whether the request stores its interactions (``store`` not False).
    """

    initial_token: str | None = None
    stateful: bool = True
    _next_token: str | None = field(default=None, init=False)
    _next_owner_id: str | None = field(default=None, init=False)
    _hop_ids: list[str] = field(default_factory=list, init=False)
    _no_progress: int = field(default=0, init=False)
    _last_error: BaseException | None = field(default=None, init=False)
    _hop: _Hop = field(default_factory=_Hop, init=False)

    def __post_init__(self) -> None:
        self._next_token = self.initial_token
        self._hop = _Hop(start_token=self.initial_token, token=self.initial_token)

    # ------------------------------------------------------------------ what the driver reads

    @property
    def hop_ids(self) -> list[str]:
        """Every hop's interaction id seen so far, in order."""
        return list(self._hop_ids)

    @property
    def no_progress_reconnects(self) -> int:
        """Consecutive reconnects that made no progress."""
        return self._no_progress

    @property
    def status(self) -> str | None:
        """The current hop's latest status (``"error"`` after an error event)."""
        return self._hop.status

    @property
    def token(self) -> str | None:
        """The current hop's latest checkpoint token."""
        return self._hop.token

    @property
    def owner_id(self) -> str | None:
        """The interaction that issued :attr:`token`."""
        return self._hop.owner_id

    @property
    def content_since_checkpoint(self) -> bool:
        """Whether output arrived since :attr:`token` was issued."""
        return self._hop.content_since_checkpoint

    @property
    def can_resume(self) -> bool:
        """Whether a cut now could be resumed without duplicating output."""
        hop = self._hop
        return not hop.content_since_checkpoint and can_resume_stream_hop(hop.status, hop.token)

    # ------------------------------------------------------------------ transitions

    def start_hop(self, *, stream_opened: bool = False) -> tuple[str | None, str | None]:
        """Start a hop; returns ``(token, owner_id)`` to request it with (None: the original
        request)."""
        self._hop = _Hop(
            start_token=self._next_token,
            start_owner_id=self._next_owner_id,
            token=self._next_token,
            owner_id=self._next_owner_id,
            stream_opened=stream_opened,
        )
        return self._next_token, self._next_owner_id

    def mark_stream_opened(self) -> None:
        """The current hop's response started (its headers arrived)."""
        self._hop.stream_opened = True

    def observe(self, event: object) -> None:
        """Record one event of the current hop (a parsed event or its ``data`` dict)."""
        hop = self._hop
        hop.stream_opened = True
        interaction_id = event_interaction_id(event)
        if interaction_id:
            hop.interaction_id = interaction_id
            if interaction_id not in self._hop_ids:
                self._hop_ids.append(interaction_id)
        previous = hop.token
        hop.status, hop.token = extract_hop_state(event, hop.status, hop.token)
        if hop.token and hop.token != previous:
            hop.owner_id = hop.interaction_id
        hop.content_since_checkpoint = has_content_since_checkpoint(
            event, hop.content_since_checkpoint
        )

    def end_hop(
        self, error: BaseException | None = None, *, connection_error: bool = True
    ) -> HopEnd:
        """The current hop ended, cleanly (``error`` None) or with ``error``.

        Args:
            error: what ended the hop, if it failed.
            connection_error: whether ``error`` is a transport failure; an error before the
                stream opened that is not one (an HTTP status, a bad request) is never resumed.
        """
        hop = self._hop
        if error is not None and not hop.stream_opened and not connection_error:
            return self._fail(error)
        if not self.can_resume:
            return self._fail(error) if error is not None else HopEnd(resume=False)
        if hop.status == "requires_continuation" and hop.token == hop.start_token:
            # The hop handed back the token it started with: resuming would loop forever.
            return self._fail(error) if error is not None else HopEnd(resume=False)
        self._no_progress = next_no_progress_reconnects(
            self._no_progress, hop.status, hop.start_token, hop.token
        )
        if self._no_progress == 0:
            self._last_error = None
        if error is not None:
            self._last_error = error
        if self._no_progress > MAX_STREAM_RECONNECTS_WITHOUT_PROGRESS:
            if self._last_error is not None:
                return self._fail(self._last_error)
            return HopEnd(resume=False)
        self._next_token = hop.token
        self._next_owner_id = hop.owner_id
        return HopEnd(
            resume=True,
            token=hop.token,
            owner_id=hop.owner_id,
            hop_ids=tuple(self._hop_ids),
        )

    def _fail(self, error: BaseException) -> HopEnd:
        hop = self._hop
        token = hop.token if can_resume_stream_hop(hop.status, hop.token) else None
        if not token or token == self.initial_token:
            return HopEnd(resume=False, error=error, hop_ids=tuple(self._hop_ids))
        return HopEnd(
            resume=False,
            error=error,
            interrupted=True,
            token=token,
            owner_id=hop.owner_id if self.stateful else None,
            hop_ids=tuple(self._hop_ids),
        )

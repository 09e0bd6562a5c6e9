"""Context lifecycle: the record stays whole, what is sent is a compacted view (pure).

A compaction (:class:`~convostore.models.CompactionRecord`) covers the steps ``1..last_seq``
(whole turns, cut at a clean boundary) and holds the steps that replace them in requests. The
view of the next request is: the replacement, then every step after ``last_seq``, then the
new input. Nothing here does I/O; the drivers load, call and write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .._exceptions import APIError, BadRequestError, ConcurrentTurnError, ValidationError
from ..models import (
    CompactionRecord,
    ConversationRecord,
    JSONObject,
    StoredStep,
    TurnRecord,
    check_id,
)
from .store_rules import REQUIRES_ACTION, check_record

COMPACT_FIELDS = (
    "version",
    "context_epoch",
    "head_interaction_id",
    "head_created_at",
    "head_model",
    "updated_at",
)
"""What ``append_compaction`` writes to the conversation: a new epoch, and no head (the next
request seeds a new chain from the view)."""

SUMMARIZERS = ("trim", "summarize")
POLICIES = ("tokens", "too_large", "manual")

SUMMARY_PROMPT = (
    "Summarize the conversation so far for your own later reference: keep every fact, "
    "decision, name, number and open question; drop pleasantries. Reply with the summary only."
)
SUMMARY_LEAD = "Summary of our conversation so far:\n"
SUMMARY_ACK = "Understood; I will continue from this summary."

DEFAULT_LIMITS: Mapping[str, int] = {
    "gemini-3-pro-preview": 1_048_576,
    "gemini-3-flash-preview": 1_048_576,
    "gemini-2.5-pro": 1_048_576,
    "gemini-2.5-flash": 1_048_576,
    "gemini-2.5-flash-lite": 1_048_576,
}
"""Input token limits per model (``CompactionPolicy.limits`` adds or overrides)."""

Summarizer = Callable[[Sequence[JSONObject], Sequence[JSONObject]], Sequence[JSONObject]]
"""A user summarizer: ``(previous replacement, newly covered steps) -> replacement steps``."""


@dataclass(frozen=True)
class CompactionPolicy:
    """When and how a conversation is compacted.

    Attributes:
        max_input_tokens: compact before a turn when the previous turn's measured input
            (``usage.total_input_tokens``) reached this many tokens.
        fraction: … or this fraction of the model's input limit (``limits``).
        limits: input token limits per model, over :data:`DEFAULT_LIMITS`.
        keep_turns: the newest turns always sent raw (never covered).
        summarizer: ``"trim"`` (drop the covered turns; free), ``"summarize"`` (an
            Interactions call with ``store: false``, billed and recorded) or a callable
            ``(previous replacement, newly covered steps) -> replacement steps``.
        summary_model: the model that summarizes (default: the conversation's).
        reactive: compact and retry once when the API refuses a request as too large.
    """

    max_input_tokens: int | None = None
    fraction: float | None = None
    limits: Mapping[str, int] = field(default_factory=dict)
    keep_turns: int = 4
    summarizer: str | Summarizer = "summarize"
    summary_model: str | None = None
    reactive: bool = True

    def __post_init__(self) -> None:
        if self.max_input_tokens is not None and (
            isinstance(self.max_input_tokens, bool)
            or not isinstance(self.max_input_tokens, int)
            or self.max_input_tokens < 1
        ):
            raise ValidationError("max_input_tokens must be a positive integer")
        if self.fraction is not None and not (
            isinstance(self.fraction, int | float) and 0 < self.fraction <= 1
        ):
            raise ValidationError("fraction must be in (0, 1]")
        if isinstance(self.keep_turns, bool) or not isinstance(self.keep_turns, int):
            raise ValidationError("keep_turns must be an integer")
        if self.keep_turns < 0:
            raise ValidationError("keep_turns must be 0 or more")
        check_summarizer(self.summarizer)

    def budget(self, model: str) -> int | None:
        """The input tokens at which this policy compacts ``model``'s conversation."""
        budgets = []
        if self.max_input_tokens is not None:
            budgets.append(self.max_input_tokens)
        if self.fraction is not None:
            limit = {**DEFAULT_LIMITS, **self.limits}.get(model)
            if limit is not None:
                budgets.append(int(limit * self.fraction))
        return min(budgets) if budgets else None


def check_summarizer(summarizer: object) -> str | Summarizer:
    if callable(summarizer) or summarizer in SUMMARIZERS:
        return summarizer
    raise ValidationError(f"summarizer must be one of {SUMMARIZERS} or a callable")


REACTIVE_ONLY = CompactionPolicy(summarizer="trim")
"""The default: no budget, but a request refused as too large is trimmed (the oldest turns
leave the view; the record keeps them) and sent once more."""


def summarizer_kind(summarizer: str | Summarizer) -> str:
    return summarizer if isinstance(summarizer, str) else "callable"


def should_compact(
    policy: CompactionPolicy | None, record: ConversationRecord, last: TurnRecord | None
) -> bool:
    """Whether the measured input of the previous turn reached the policy's budget."""
    if policy is None or last is None or not last.usage:
        return False
    budget = policy.budget(record.model)
    measured = last.usage.get("total_input_tokens")
    if budget is None or not isinstance(measured, int) or isinstance(measured, bool):
        return False
    return measured >= budget


def too_large(exc: APIError) -> bool:
    """Whether the API refused a request for its size (a 400 naming the token limit)."""
    if not isinstance(exc, BadRequestError):
        return False
    text = str(exc).lower()
    return "token" in text and ("exceed" in text or "too long" in text or "too large" in text)


# --------------------------------------------------------------------------- the cut


def cut(
    turns: Sequence[TurnRecord],
    steps: Sequence[StoredStep],
    *,
    after_turn: int,
    keep_turns: int,
) -> tuple[int, int] | None:
    """``(last_turn, last_seq)`` of the next compaction: the newest clean boundary that keeps
    at least ``keep_turns`` turns raw, past ``after_turn`` (the previous compaction's).

    A clean boundary follows a turn that did not end in ``requires_action`` (the store's
    newest-N rule): a ``function_call`` is never covered while its ``function_result`` is
    sent, and a turn is covered whole, with the signed thought of any call it made.
    ``steps`` must hold every step of the turns after ``after_turn``. None: nothing to cover.
    """
    last_step: dict[int, int] = {}
    for step in steps:
        last_step[step.turn_seq] = step.seq
    stop = len(turns) - keep_turns if turns else 0
    for turn in reversed(turns[:stop] if stop > 0 else ()):
        if turn.seq <= after_turn:
            break
        if turn.status == REQUIRES_ACTION or turn.seq not in last_step:
            continue
        return turn.seq, last_step[turn.seq]
    return None


# --------------------------------------------------------------------------- the view


def view(
    compaction: CompactionRecord | None,
    steps_after: Sequence[JSONObject],
) -> list[JSONObject]:
    """The history a request sends: the replacement, then the steps after the covered range."""
    if compaction is None:
        return list(steps_after)
    return [*compaction.steps, *steps_after]


def summary_steps(text: str) -> list[JSONObject]:
    """The replacement for a summary: a user/model pair, so turns keep alternating."""
    return [
        {"type": "user_input", "content": [{"type": "text", "text": SUMMARY_LEAD + text}]},
        {"type": "model_output", "content": [{"type": "text", "text": SUMMARY_ACK}]},
    ]


def summary_request(
    model: str,
    previous: Sequence[JSONObject],
    covered: Sequence[JSONObject],
    config: Mapping[str, Any],
) -> JSONObject:
    """The body of an incremental summary: the previous summary, the newly covered steps,
    and the instruction. ``store: false``: the service keeps nothing."""
    body: JSONObject = {"model": model}
    if "system_instruction" in config:
        body["system_instruction"] = config["system_instruction"]
    prompt = {"type": "user_input", "content": [{"type": "text", "text": SUMMARY_PROMPT}]}
    body["input"] = [*previous, *covered, prompt]
    body["store"] = False
    return body


# --------------------------------------------------------------------------- store rules


def compacted_record(
    record: ConversationRecord, compaction: CompactionRecord, *, now: datetime
) -> ConversationRecord:
    """The conversation once ``compaction`` is written: a new epoch, the version bumped and
    no head (a chain built on the old view must not be continued)."""
    return record.model_copy(
        update={
            "version": record.version + 1,
            "context_epoch": compaction.epoch,
            "head_interaction_id": None,
            "head_created_at": None,
            "head_model": None,
            "updated_at": now,
        }
    )


def check_compaction(record: object, compaction: object) -> tuple[ConversationRecord, Any]:
    """Check ``append_compaction``'s arguments before anything is read."""
    rec = check_record(record, settings=False)
    if not isinstance(compaction, CompactionRecord):
        raise ValidationError("compaction must be a CompactionRecord")
    check_id(compaction.conversation_id, "conversation id")
    if compaction.conversation_id != rec.id:
        raise ValidationError("the compaction names another conversation")
    if compaction.epoch != rec.context_epoch or compaction.epoch < 1:
        raise ValidationError("the record's context_epoch must be the compaction's epoch (>= 1)")
    if rec.version < 1:
        raise ValidationError("version must be at least 1")
    if not 1 <= compaction.first_seq <= compaction.last_seq or compaction.last_turn < 1:
        raise ValidationError("a compaction covers steps first_seq..last_seq of whole turns")
    return rec, compaction


def check_compacts(stored: ConversationRecord, record: ConversationRecord, c: Any) -> None:
    """Check a compaction against the stored conversation (under the store's lock)."""
    if stored.version != record.version - 1:
        raise ConcurrentTurnError(
            record.id, expected_version=record.version - 1, actual_version=stored.version
        )
    if c.epoch != stored.context_epoch + 1:
        raise ValidationError(
            f"compaction epoch {c.epoch} does not follow the stored {stored.context_epoch}"
        )
    if c.last_seq > stored.step_count or c.last_turn > stored.turn_count:
        raise ValidationError("a compaction cannot cover steps or turns not yet stored")


def check_load_compactions(conversation_id: object, tenant: object, epoch: object) -> None:
    check_id(conversation_id, "conversation id")
    check_id(tenant, "tenant")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ValidationError(f"epoch must be a non-negative integer; got {epoch!r}")


def select(found: Sequence[CompactionRecord], epoch: int | None) -> list[CompactionRecord]:
    ordered = sorted(found, key=lambda c: c.epoch)
    return ordered if epoch is None else [c for c in ordered if c.epoch == epoch]


def check_step_range(
    conversation_id: object, tenant: object, after_seq: object, before_seq: object, limit: object
) -> None:
    """Check ``load_step_range``'s arguments."""
    check_id(conversation_id, "conversation id")
    check_id(tenant, "tenant")
    for name, value, minimum in (("after_seq", after_seq, 0), ("before_seq", before_seq, 1)):
        if value is None and name == "before_seq":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValidationError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValidationError(f"limit must be a positive integer; got {limit!r}")


def step_window(
    step_count: int, after_seq: int, before_seq: int | None, limit: int | None
) -> tuple[int, int]:
    """The seqs ``[first, last]`` a ``load_step_range`` returns (empty when first > last):
    with ``before_seq`` and ``limit``, the last ``limit`` before it; else the first after."""
    first = after_seq + 1
    last = step_count if before_seq is None else min(step_count, before_seq - 1)
    if limit is not None:
        if before_seq is not None:
            first = max(first, last - limit + 1)
        else:
            last = min(last, first + limit - 1)
    return first, last

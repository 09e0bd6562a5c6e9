"""Moving and checking stored conversations: export, import, copy, verify and reconcile.

The library side of ``convostore export|import|copy|verify|reconcile``; usable from Python on
any sync :class:`~convostore._sync.store.Store`.

The export format is JSON Lines, one record per line, each conversation's lines together::

    {"kind": "conversation", "id": ..., "tenant": ..., ...}   # a ConversationRecord
    {"kind": "turn", "conversation_id": ..., "seq": 1, ...}   # its TurnRecords, in seq order
    {"kind": "step", "conversation_id": ..., "seq": 1, ...}   # its StoredSteps, in seq order
    {"kind": "pending", "conversation_id": ..., ...}          # its turn in flight, if any
    {"kind": "compaction", "conversation_id": ..., "epoch": 1, ...}  # its compactions, in order

Importing validates the whole file before writing anything, then creates each conversation
atomically; a conversation already present with the same content is skipped, so an import (or
a copy) that was interrupted can simply be run again. A turn in flight is written back after
its conversation (``begin_turn``), so a worker of the destination can finish or release it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

import pydantic

from ._core import audit as _audit
from ._core import planner
from ._core import store_rules as rules
from ._exceptions import (
    APIError,
    ConversationExists,
    ConversationNotFound,
    ConvostoreError,
    NotFoundError,
    StoreError,
    TurnInFlight,
    ValidationError,
)
from ._sync.store import Store
from .models import (
    LOST_STATUS,
    CompactionRecord,
    ConversationRecord,
    PendingTurnRecord,
    StoredStep,
    TurnRecord,
    parse_step,
)

if TYPE_CHECKING:
    from ._sync.client import InteractionsClient

__all__ = [
    "Bundle",
    "ExportFormatError",
    "ReconcileItem",
    "TransferReport",
    "compare",
    "copy",
    "export",
    "import_bundles",
    "iter_records",
    "load",
    "outbox_outstanding",
    "read_export",
    "reconcile",
    "verify",
    "warnings",
]

Progress = Callable[[ConversationRecord], None]
"""Called once per conversation handled (for progress bars)."""

_PAGE = 200


class ExportFormatError(ConvostoreError):
    """An export file that cannot be imported; nothing was written.

    Attributes:
        line: the 1-based line number of the first problem (0 when it concerns the whole file).
    """

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


@dataclass
class Bundle:
    """One conversation with all of its history, as exported, imported or copied."""

    record: ConversationRecord
    turns: list[TurnRecord] = field(default_factory=list)
    steps: list[StoredStep] = field(default_factory=list)
    pending: PendingTurnRecord | None = None
    """Its turn in flight, if any (not part of :meth:`fingerprint`: it is transient)."""
    compactions: list[CompactionRecord] = field(default_factory=list)

    def lines(self) -> Iterator[dict[str, Any]]:
        """The export lines of this conversation."""
        yield {"kind": "conversation", **self.record.model_dump(mode="json")}
        for turn in self.turns:
            yield {"kind": "turn", **turn.model_dump(mode="json")}
        for step in self.steps:
            yield {"kind": "step", **step.model_dump(mode="json")}
        if self.pending is not None:
            yield {"kind": "pending", **self.pending.model_dump(mode="json")}
        for compaction in self.compactions:
            yield {"kind": "compaction", **compaction.model_dump(mode="json")}

    def fingerprint(self) -> str:
        """What makes two copies "the same content": identity, settings, counts, the audit
        chain, every turn and every step (timestamps normalised to UTC microseconds)."""
        rec = self.record.model_dump(mode="json", exclude={"created_at", "updated_at"})
        rec["created_at"] = rules.epoch_us(self.record.created_at)
        rec["updated_at"] = rules.epoch_us(self.record.updated_at)
        for name in ("head_created_at", "expires_at"):
            value = getattr(self.record, name)
            rec[name] = None if value is None else rules.epoch_us(value)
        turns = []
        for turn in self.turns:
            data = turn.model_dump(mode="json", exclude={"created_at"})
            data["created_at"] = rules.epoch_us(turn.created_at)
            turns.append(data)
        steps = [[s.seq, s.turn_seq, s.payload] for s in self.steps]
        content: dict[str, Any] = {"record": rec, "turns": turns, "steps": steps}
        if self.compactions:
            compactions = []
            for c in self.compactions:
                data = c.model_dump(mode="json", exclude={"created_at"})
                data["created_at"] = rules.epoch_us(c.created_at)
                compactions.append(data)
            content["compactions"] = compactions
        return _audit.canonical_json(content).decode()


@dataclass
class TransferReport:
    """What an import or a copy did, by conversation id."""

    created: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    conflicts: dict[str, str] = field(default_factory=dict)
    """id -> why it was not written (present with other content, or taken by another tenant)."""

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "skipped": self.skipped, "conflicts": self.conflicts}


# --------------------------------------------------------------------------- reading a store


def iter_records(
    store: Store, *, tenant: str | None, conversation_id: str | None = None
) -> Iterator[ConversationRecord]:
    """One conversation (``conversation_id``, in ``tenant``), a tenant's conversations, or,
    with ``tenant=None``, every conversation of the store; newest first.

    Raises:
        ConversationNotFound: ``conversation_id`` is missing or another tenant's.
    """
    if conversation_id is not None:
        if tenant is None:
            raise ValidationError("a conversation id needs its tenant")
        yield store.get_conversation(conversation_id, tenant=tenant)
        return
    cursor: str | None = None
    while True:
        page = store.list_conversations(tenant=tenant, limit=_PAGE, cursor=cursor)
        yield from page.items
        if page.next_cursor is None or not page.items:
            return
        cursor = page.next_cursor


def load(store: Store, record: ConversationRecord) -> Bundle:
    """Read a conversation's turns, steps and turn in flight.

    The record is re-read after the history, so a turn appended meanwhile is either fully in
    the bundle or not at all (counts are taken from what was read); a turn in flight is kept
    only if it continues what was read.
    """
    turns = store.load_turns(record.id, tenant=record.tenant)
    steps = store.load_steps(record.id, tenant=record.tenant)
    fresh = store.get_conversation(record.id, tenant=record.tenant)
    if fresh.turn_count != len(turns) or fresh.step_count != len(steps):
        # a writer appended between the reads: read again, this time without racing it
        turns = store.load_turns(record.id, tenant=record.tenant, limit=fresh.turn_count)
        steps = [
            s
            for s in store.load_steps(record.id, tenant=record.tenant)
            if s.seq <= fresh.step_count
        ]
    pending = store.get_pending(record.id, tenant=record.tenant)
    if pending is not None and not _continues(fresh, pending):
        pending = None
    found = store.load_compactions(record.id, tenant=record.tenant)
    compactions = [c for c in found if c.epoch <= fresh.context_epoch]
    return Bundle(fresh, turns, steps, pending, compactions)


def _continues(record: ConversationRecord, pending: PendingTurnRecord) -> bool:
    return pending.planned_version == record.version and pending.seq == record.turn_count + 1


def export(
    store: Store,
    out: TextIO,
    records: Iterable[ConversationRecord],
    *,
    progress: Progress | None = None,
) -> int:
    """Write conversations (e.g. from :func:`iter_records`) as JSON Lines to ``out``.

    Returns:
        The number of conversations written.
    """
    count = 0
    for record in records:
        for line in load(store, record).lines():
            out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
        if progress is not None:
            progress(record)
    return count


# --------------------------------------------------------------------------- importing


def _parse_line(number: int, text: str) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ExportFormatError(number, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ExportFormatError(number, "expected a JSON object")
    kind = data.pop("kind", None)
    if kind not in ("conversation", "turn", "step", "pending", "compaction"):
        raise ExportFormatError(
            number, f"'kind' must be conversation, turn, step or pending; got {kind!r}"
        )
    return kind, data


def _first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "record"
    return f"{where}: {error['msg']}"


def read_export(lines: Iterable[str]) -> list[Bundle]:
    """Parse and validate a whole export; raise on the first problem.

    Every record is validated, each conversation's history is checked for complete, ordered
    seqs and matching counts, and ids appear once.

    Raises:
        ExportFormatError: the first problem found, with its line number.
    """
    bundles: list[Bundle] = []
    by_id: dict[str, Bundle] = {}
    started: dict[str, int] = {}
    current: Bundle | None = None
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        kind, data = _parse_line(number, text)
        try:
            if kind == "conversation":
                record = ConversationRecord.model_validate(data)
                if record.id in by_id:
                    raise ExportFormatError(number, f"conversation {record.id!r} appears twice")
                current = Bundle(record)
                by_id[record.id] = current
                started[record.id] = number
                bundles.append(current)
                continue
            owner = data.get("conversation_id")
            if current is None or owner != current.record.id:
                raise ExportFormatError(
                    number, f"{kind} of conversation {owner!r} is not after that conversation"
                )
            if kind == "turn":
                current.turns.append(TurnRecord.model_validate(data))
            elif kind == "step":
                current.steps.append(StoredStep.model_validate(data))
            elif kind == "compaction":
                current.compactions.append(CompactionRecord.model_validate(data))
            else:
                if current.pending is not None:
                    raise ExportFormatError(number, f"a second turn in flight of {owner!r}")
                current.pending = PendingTurnRecord.model_validate(data)
                started[f"pending:{owner}"] = number
        except pydantic.ValidationError as exc:
            raise ExportFormatError(number, f"invalid {kind}: {_first_error(exc)}") from None
    for bundle in bundles:
        try:
            rules.check_new_conversation(bundle.record, bundle.turns, bundle.steps)
        except ValidationError as exc:
            raise ExportFormatError(
                started[bundle.record.id], f"conversation {bundle.record.id!r}: {exc}"
            ) from None
        epochs = [c.epoch for c in bundle.compactions]
        record = bundle.record
        if (
            epochs != list(range(1, len(epochs) + 1))
            or len(epochs) != record.context_epoch
            or record.version < len(epochs)
            or any(
                c.last_turn > record.turn_count or c.last_seq > record.step_count
                for c in bundle.compactions
            )
        ):
            raise ExportFormatError(
                started[record.id], f"conversation {record.id!r}: its compactions do not fit it"
            )
        if bundle.pending is not None:
            number = started[f"pending:{bundle.record.id}"]
            try:
                rules.check_pending(bundle.pending)
            except ValidationError as exc:
                raise ExportFormatError(number, f"invalid pending: {exc}") from None
            if bundle.pending.tenant != bundle.record.tenant or not _continues(
                bundle.record, bundle.pending
            ):
                raise ExportFormatError(
                    number, "the turn in flight does not continue its conversation"
                )
    return bundles


def _place(store: Store, bundle: Bundle, report: TransferReport) -> None:
    record = bundle.record
    try:
        present = store.get_conversation(record.id, tenant=record.tenant)
    except ConversationNotFound:
        present = None
    if present is not None:
        if load(store, present).fingerprint() != bundle.fingerprint():
            report.conflicts[record.id] = "already present with other content"
            return
        report.skipped.append(record.id)
    else:
        n = len(bundle.compactions)
        base = record.model_copy(update={"version": record.version - n, "context_epoch": 0})
        try:
            store.create_conversation(base, turns=bundle.turns, steps=bundle.steps)
        except ConversationExists:
            report.conflicts[record.id] = "id already taken (by another tenant?)"
            return
        for compaction in bundle.compactions:
            # each append moves the version and the epoch on by one; the rest is the record's
            epoch = compaction.epoch
            step = record.model_copy(
                update={"version": record.version - n + epoch, "context_epoch": epoch}
            )
            store.append_compaction(step, compaction)
        report.created.append(record.id)
    if bundle.pending is not None:
        try:
            store.begin_turn(bundle.pending)
        except TurnInFlight as exc:
            if exc.pending != bundle.pending:
                report.conflicts[record.id] = "another turn is in flight there"


def import_bundles(
    store: Store, bundles: Iterable[Bundle], *, progress: Progress | None = None
) -> TransferReport:
    """Create each conversation atomically; skip those already present with the same content.

    A conversation present with different content is left alone and reported as a conflict.
    """
    report = TransferReport()
    for bundle in bundles:
        _place(store, bundle, report)
        if progress is not None:
            progress(bundle.record)
    return report


def copy(
    source: Store,
    destination: Store,
    *,
    tenant: str | None,
    conversation_id: str | None = None,
    progress: Progress | None = None,
) -> TransferReport:
    """Copy conversations between stores (any backends). Resumable: conversations already in
    ``destination`` with the same content are skipped."""
    report = TransferReport()
    for record in iter_records(source, tenant=tenant, conversation_id=conversation_id):
        _place(destination, load(source, record), report)
        if progress is not None:
            progress(record)
    return report


def compare(
    source: Store,
    destination: Store,
    *,
    tenant: str | None,
    conversation_id: str | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Differences between the conversations of ``source`` and their copies in
    ``destination`` (empty: every one is present with the same content)."""
    problems: list[str] = []
    for record in iter_records(source, tenant=tenant, conversation_id=conversation_id):
        if progress is not None:
            progress(record)
        try:
            copied = destination.get_conversation(record.id, tenant=record.tenant)
        except ConversationNotFound:
            problems.append(f"{record.id}: missing from the destination")
            continue
        theirs, ours = load(source, record), load(destination, copied)
        if theirs.fingerprint() != ours.fingerprint():
            problems.append(f"{record.id}: differs between source and destination")
        elif theirs.pending != ours.pending:
            problems.append(f"{record.id}: its turn in flight differs")
    return problems


# --------------------------------------------------------------------------- checking


def verify(store: Store, record: ConversationRecord) -> list[str]:
    """Check one stored conversation; return its problems (empty: all good).

    Checks: turn and step seqs contiguous from 1, ``turn_count``/``step_count`` equal to what
    is stored, a version not behind the turns appended, the chain linear, the head and
    ``last_turn_hash`` matching the last turn, every payload a step that parses, and the audit
    hash chain (:func:`convostore._core.audit.verify`).
    """
    try:
        turns = store.load_turns(record.id, tenant=record.tenant)
        steps = store.load_steps(record.id, tenant=record.tenant)
    except StoreError as exc:
        if isinstance(exc, ConversationNotFound):
            raise
        return [f"cannot be read: {exc}"]
    problems: list[str] = []
    if record.turn_count != len(turns):
        problems.append(f"turn_count is {record.turn_count} but {len(turns)} turns are stored")
    if record.step_count != len(steps):
        problems.append(f"step_count is {record.step_count} but {len(steps)} steps are stored")
    forked = record.metadata.get("forked_from")
    inherited = forked.get("turn", 0) if isinstance(forked, dict) else 0
    appended = len(turns) - (inherited if isinstance(inherited, int) else 0)
    if record.version < appended:
        # every append advances the version; a fork starts at 0 with its inherited turns
        problems.append(f"version {record.version} is behind its {appended} appended turn(s)")
    problems.extend(_audit.verify(turns, steps))
    for step in steps:
        if step.payload.get("type") != step.type:
            problems.append(f"step {step.seq}: type {step.type!r} differs from its payload")
            break
        try:
            parse_step(step.payload)
        except ValidationError as exc:
            problems.append(f"step {step.seq}: payload does not parse ({exc})")
            break
    problems.extend(_compaction_problems(store, record, turns))
    if turns:
        last = turns[-1]
        if last.audit_hash is not None and record.last_turn_hash != last.audit_hash:
            problems.append("last_turn_hash does not match the last turn's audit hash")
        head = record.head_interaction_id
        answered = [t for t in turns if t.status != LOST_STATUS]
        last = answered[-1] if answered else last
        if head is not None and head != last.interaction_id:
            problems.append(f"head {head!r} is not the last turn's interaction")
    return problems


def _compaction_problems(
    store: Store, record: ConversationRecord, turns: list[TurnRecord]
) -> list[str]:
    """Compactions: epochs 1..n ending at the record's, each covering stored turns and
    naming the audit hash of its last covered turn."""
    found = store.load_compactions(record.id, tenant=record.tenant)
    problems = []
    if [c.epoch for c in found] != list(range(1, len(found) + 1)) or (
        len(found) != record.context_epoch
    ):
        problems.append(f"compaction epochs do not run 1..{record.context_epoch}")
    for c in found:
        if c.last_turn > len(turns):
            problems.append(f"compaction {c.epoch} covers turn {c.last_turn}, not stored")
        elif c.audit_hash is not None and turns[c.last_turn - 1].audit_hash != c.audit_hash:
            problems.append(f"compaction {c.epoch}: audit hash differs from turn {c.last_turn}")
    return problems


def warnings(store: Store, record: ConversationRecord, *, now: datetime | None = None) -> list[str]:
    """What deserves attention without being a problem: a turn in flight whose lease
    expired (its worker died; ``convostore recover`` finishes or releases it)."""
    pending = store.get_pending(record.id, tenant=record.tenant)
    moment = now or datetime.now(UTC)
    if pending is None or pending.lease_expires_at > moment:
        return []
    return [
        f"turn {pending.seq} in flight ({pending.state}) since "
        f"{pending.created_at.isoformat(timespec='seconds')}; its lease "
        f"({pending.lease_owner}) expired {pending.lease_expires_at.isoformat(timespec='seconds')}"
    ]


def outbox_outstanding(store: Store, *, tenant: str | None, limit: int = 1000) -> int:
    """How many server-side effects (deletions) are still to be done, up to ``limit``."""
    return len(store.list_outbox(tenant=tenant, limit=limit))


@dataclass
class ReconcileItem:
    """One stored turn compared with the server's copy of its interaction."""

    seq: int
    interaction_id: str | None
    state: Literal["present", "missing", "differs", "not_stored", "error"]
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "interaction_id": self.interaction_id,
            "state": self.state,
            "detail": self.detail,
        }


def _answer_steps(steps: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in steps if s.get("type") not in ("user_input", "function_result")]


def reconcile(
    store: Store, client: InteractionsClient, record: ConversationRecord
) -> list[ReconcileItem]:
    """Compare the local mirror with what the server still holds, turn by turn.

    Each turn whose interaction the server stored is fetched: ``present`` (the model's steps
    match), ``differs`` (they do not), ``missing`` (404: expired or deleted), ``error``
    (another API failure). Turns sent with ``store: false`` are ``not_stored``.
    """
    turns = store.load_turns(record.id, tenant=record.tenant)
    steps = store.load_steps(record.id, tenant=record.tenant)
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for step in steps:
        by_turn.setdefault(step.turn_seq, []).append(step.payload)
    items: list[ReconcileItem] = []
    for turn in turns:
        if not planner.stored_on_server(turn) or turn.interaction_id is None:
            items.append(ReconcileItem(turn.seq, turn.interaction_id, "not_stored"))
            continue
        try:
            remote = client.get(turn.interaction_id)
        except NotFoundError:
            items.append(ReconcileItem(turn.seq, turn.interaction_id, "missing"))
            continue
        except APIError as exc:
            items.append(ReconcileItem(turn.seq, turn.interaction_id, "error", str(exc)))
            continue
        local = _answer_steps(by_turn.get(turn.seq, []))
        theirs = _answer_steps(remote.steps or [])
        if _audit.canonical_json(local) == _audit.canonical_json(theirs):
            items.append(ReconcileItem(turn.seq, turn.interaction_id, "present"))
        else:
            detail = f"{len(local)} local model step(s), {len(theirs)} on the server"
            if len(local) == len(theirs):
                detail = "model steps differ in content"
            items.append(ReconcileItem(turn.seq, turn.interaction_id, "differs", detail))
    return items

"""What the auditor's pages ask of a store, each answer bounded in work.

The store contract lists conversations newest first by ``(created_at, id)``, per tenant and
optionally per user, with a keyset cursor. Everything else a page filters on (a date range,
mode, model, the status of turns) is applied here while walking that listing, and every walk
stops after a fixed number of conversations examined: a page then says how far it got and
offers to go on from there, so no request reads a whole large store.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .. import _transfer as transfer
from .._core import store_rules as rules
from .._exceptions import ConversationNotFound, StoreError
from ..models import ConversationRecord, TurnRecord
from ._auth import Principal
from ._reader import ReadOnlyStore

__all__ = [
    "FLAGS",
    "Filters",
    "ForkNode",
    "ForkTree",
    "Row",
    "ScanPage",
    "Verification",
    "Verifications",
    "VerifyRun",
    "VerifyRuns",
    "fork_tree",
    "forked_from",
    "retention",
    "scan",
    "turn_flags",
    "verify",
]

FLAGS: dict[str, str] = {
    "chain_break": "chain breaks",
    "failed": "failed or pending turns",
    "compaction": "compactions",
}
"""Status flags a list can filter on, with their labels."""

_SETTLED = frozenset({"completed", "requires_action"})


def turn_flags(turns: list[TurnRecord]) -> set[str]:
    """The :data:`FLAGS` a conversation's turns raise: a turn replayed because the server chain
    broke, a turn whose status is neither completed nor requires_action, a turn whose reason
    names a compaction (matched on the reason's text, so a future reason lights it up)."""
    found: set[str] = set()
    for turn in turns:
        reason = str(turn.reason)
        if reason == "chain_broken":
            found.add("chain_break")
        if turn.status not in _SETTLED:
            found.add("failed")
        if "compact" in reason:
            found.add("compaction")
    return found


@dataclass(frozen=True)
class Filters:
    """A list's filters; ``created_to`` is exclusive."""

    user: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    mode: str | None = None
    model: str | None = None
    flags: frozenset[str] = frozenset()

    @property
    def scanning(self) -> bool:
        """Whether the store's own listing cannot answer alone (a walk with a budget is
        needed)."""
        return bool(self.created_from or self.created_to or self.mode or self.model or self.flags)

    def matches(self, record: ConversationRecord) -> bool:
        if self.created_to is not None and record.created_at >= self.created_to:
            return False
        if self.mode is not None and record.mode != self.mode:
            return False
        return self.model is None or record.model == self.model


@dataclass
class Row:
    record: ConversationRecord
    key_problem: str | None = None
    flags: set[str] | None = None
    """The flags found (when the list filters on flags), else None: not looked at."""


@dataclass
class ScanPage:
    rows: list[Row]
    next_cursor: str | None
    examined: int
    budget_spent: bool = False
    """The walk stopped at its budget before filling the page: ``next_cursor`` goes on."""


def _start_cursor(cursor: str | None, filters: Filters) -> str | None:
    if cursor is not None or filters.created_to is None:
        return cursor
    # a cursor naming (created_to, "0") lists what was created before created_to: "0" sorts
    # below every id that can be stored. The cursor rule is shared by every backend.
    return rules.encode_cursor(filters.created_to, "0")


def scan(
    reader: ReadOnlyStore,
    *,
    tenant: str | None,
    filters: Filters,
    cursor: str | None = None,
    page_size: int = 50,
    budget: int = 1000,
) -> ScanPage:
    """One page of a tenant's (``None``: every tenant's) conversations matching ``filters``,
    newest first, examining at most ``budget`` conversations.

    Raises:
        ValidationError: a cursor that is not one.
    """
    if not filters.scanning:
        page, problems = reader.list_checked(
            tenant=tenant, user=filters.user, limit=page_size, cursor=cursor
        )
        listed = [Row(r, problems.get(r.id)) for r in page.items]
        return ScanPage(listed, page.next_cursor, len(listed))
    rows: list[Row] = []
    examined = 0
    at = _start_cursor(cursor, filters)
    while True:
        batch = min(200, budget - examined)
        page, problems = reader.list_checked(
            tenant=tenant, user=filters.user, limit=batch, cursor=at
        )
        for record in page.items:
            examined += 1
            at = rules.encode_cursor(record.created_at, record.id)
            if filters.created_from is not None and record.created_at < filters.created_from:
                return ScanPage(rows, None, examined)
            if not filters.matches(record):
                continue
            row = Row(record, problems.get(record.id))
            if filters.flags:
                turns = reader.load_turns(record.id, tenant=record.tenant)
                row.flags = turn_flags(turns)
                if not filters.flags <= row.flags:
                    continue
            rows.append(row)
            if len(rows) == page_size:
                more = page.next_cursor is not None or record is not page.items[-1]
                return ScanPage(rows, at if more else None, examined)
        if page.next_cursor is None:
            return ScanPage(rows, None, examined)
        if examined >= budget:
            return ScanPage(rows, at, examined, budget_spent=True)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    """The result of :func:`convostore._transfer.verify` on one conversation."""

    problems: list[str]
    checked_at: datetime

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        """The seq the first problem names, when it names one."""
        if not self.problems:
            return None
        match = re.search(r"\b(?:turn|step)(?: seq)? (\d+)", self.problems[0])
        return int(match.group(1)) if match else None


def verify(reader: ReadOnlyStore, record: ConversationRecord) -> Verification:
    """Verify one conversation (seqs, counts, chain, payloads, audit hashes). A store error
    (e.g. a key that does not open it) is a problem of this conversation, not an exception."""
    try:
        problems = transfer.verify(reader.as_store(), record)
    except ConversationNotFound:
        problems = ["deleted while being verified"]
    except StoreError as exc:
        problems = [f"cannot be read: {exc}"]
    return Verification(problems, datetime.now(UTC))


@dataclass
class _Cached:
    state: tuple[object, ...]
    result: Verification | None = None
    at: float = 0.0
    running: Future[Verification] | None = None


class Verifications:
    """Per-conversation verification for the transcript page.

    A conversation of up to ``inline_steps`` steps is verified on every request. A longer one
    costs more than a page may take (10,000 steps take about 1.5 s), so it is verified in a
    worker thread: the page shows the result once it is there (and while it is at most
    ``max_age`` seconds old and the conversation has not changed), else the previous result,
    if any, marked as being checked again.
    """

    def __init__(
        self,
        reader: ReadOnlyStore,
        *,
        inline_steps: int = 2000,
        max_age: float = 60.0,
        keep: int = 1000,
    ) -> None:
        self._reader = reader
        self.keep = keep
        self.inline_steps = inline_steps
        self.max_age = max_age
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="convostore-verify")

    @staticmethod
    def _state(record: ConversationRecord) -> tuple[object, ...]:
        return (
            record.version,
            record.turn_count,
            record.step_count,
            record.last_turn_hash,
            record.updated_at,
        )

    def _entry(self, record: ConversationRecord) -> _Cached:
        """The cache entry of ``record`` (a fresh one if it changed); call under the lock."""
        key = (record.tenant, record.id)
        entry = self._cache.pop(key, None)
        if entry is None or entry.state != self._state(record):
            entry = _Cached(self._state(record))
        self._cache[key] = entry  # most recently used last
        while len(self._cache) > self.keep:
            del self._cache[next(iter(self._cache))]
        return entry

    def check(self, record: ConversationRecord) -> tuple[Verification | None, bool]:
        """``(result to show, whether it is pending)``. When pending, call :meth:`start`
        (the page does once it has been sent, so the two do not compete)."""
        if record.step_count <= self.inline_steps:
            return verify(self._reader, record), False
        with self._lock:
            entry = self._entry(record)
            if entry.result is not None and time.monotonic() - entry.at <= self.max_age:
                return entry.result, False
            return entry.result, True

    def start(self, record: ConversationRecord) -> None:
        """Verify ``record`` in a worker thread, unless that is under way or not needed."""
        with self._lock:
            entry = self._entry(record)
            fresh = entry.result is not None and time.monotonic() - entry.at <= self.max_age
            if entry.running is None and not fresh:
                entry.running = self._pool.submit(self._verify, entry, record)

    def _verify(self, entry: _Cached, record: ConversationRecord) -> Verification:
        result = verify(self._reader, record)
        with self._lock:
            entry.result, entry.at, entry.running = result, time.monotonic(), None
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class VerifyRun:
    """A store-wide verification: ``intact`` of ``checked`` verified at ``finished``."""

    started: datetime
    finished: datetime | None = None
    checked: int = 0
    intact: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    """(tenant, conversation id, first problem) of the first 1,000 conversations that did not
    verify (``checked - intact`` counts them all)."""
    error: str | None = None


class VerifyRuns:
    """Store-wide verifications run on demand, one at a time per reading scope, in a thread
    of their own; the latest result of each scope is kept in memory."""

    def __init__(self, reader: ReadOnlyStore) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self._runs: dict[tuple[bool, frozenset[str]], VerifyRun] = {}

    @staticmethod
    def _scope(principal: Principal) -> tuple[bool, frozenset[str]]:
        return (True, frozenset()) if principal.all_tenants else (False, principal.tenants)

    def latest(self, principal: Principal) -> VerifyRun | None:
        with self._lock:
            return self._runs.get(self._scope(principal))

    def start(self, principal: Principal) -> tuple[VerifyRun, bool]:
        """Start a run for the principal's scope unless one is running; returns the run and
        whether it was started now."""
        scope = self._scope(principal)
        with self._lock:
            current = self._runs.get(scope)
            if current is not None and current.finished is None:
                return current, False
            run = VerifyRun(started=datetime.now(UTC))
            self._runs[scope] = run
        tenants: list[str | None] = [None] if scope[0] else [*sorted(scope[1])]
        thread = threading.Thread(
            target=self._run, args=(run, tenants), name="convostore-verify", daemon=True
        )
        thread.start()
        return run, True

    def _records(self, tenants: list[str | None]) -> Iterator[ConversationRecord]:
        for tenant in tenants:
            cursor: str | None = None
            while True:
                page = self._reader.list_conversations(tenant=tenant, limit=200, cursor=cursor)
                yield from page.items
                cursor = page.next_cursor
                if cursor is None or not page.items:
                    break

    def _run(self, run: VerifyRun, tenants: list[str | None]) -> None:
        try:
            for record in self._records(tenants):
                result = verify(self._reader, record)
                with self._lock:
                    run.checked += 1
                    if result.intact:
                        run.intact += 1
                    elif len(run.failures) < 1000:
                        run.failures.append((record.tenant, record.id, result.problems[0]))
        except StoreError as exc:
            run.error = str(exc)
        finally:
            run.finished = datetime.now(UTC)


# --------------------------------------------------------------------------- forks


@dataclass
class ForkNode:
    conversation_id: str
    record: ConversationRecord | None
    """None: the conversation is gone (deleted or purged)."""
    at_turn: int | None = None
    """The turn of its parent it was forked at (None for the root)."""
    children: list[ForkNode] = field(default_factory=list)


@dataclass
class ForkTree:
    root: ForkNode
    examined: int
    complete: bool
    """False: the walk for forks stopped at its budget; newer forks may be missing."""


def forked_from(record: ConversationRecord) -> tuple[str, int | None] | None:
    """``(parent id, turn)`` from the metadata a fork records, or None."""
    origin = record.metadata.get("forked_from")
    if not isinstance(origin, dict) or not isinstance(origin.get("conversation_id"), str):
        return None
    turn = origin.get("turn")
    return origin["conversation_id"], turn if isinstance(turn, int) else None


def fork_tree(reader: ReadOnlyStore, record: ConversationRecord, *, budget: int = 5000) -> ForkTree:
    """The fork tree around ``record``: up through ``forked_from`` to the oldest ancestor
    still present, then down to every fork of it.

    A fork keeps its parent's tenant and user and is created after it, so the forks of the
    tree are found by walking that user's conversations newest first, down to the root's
    creation (at most ``budget`` of them).
    """
    node = ForkNode(record.id, record, None)
    top = record
    hops = 0
    origin = forked_from(record)
    node.at_turn = origin[1] if origin else None
    while origin is not None and hops < 100:
        hops += 1
        parent_id, _turn = origin
        try:
            parent = reader.get_conversation(parent_id, tenant=top.tenant)
        except ConversationNotFound:
            gone = ForkNode(parent_id, None)
            gone.children.append(node)
            node = gone
            break
        parent_node = ForkNode(parent.id, parent)
        origin = forked_from(parent)
        parent_node.at_turn = origin[1] if origin else None
        parent_node.children.append(node)
        node, top = parent_node, parent
    root = node
    children: dict[str, list[ConversationRecord]] = {}
    examined = 0
    complete = True
    cursor: str | None = None
    walking = True
    while walking:
        page = reader.list_conversations(
            tenant=top.tenant, user=top.user, limit=min(200, budget - examined), cursor=cursor
        )
        for item in page.items:
            examined += 1
            if item.created_at < top.created_at:
                walking = False
                break
            origin = forked_from(item)
            if origin is not None:
                children.setdefault(origin[0], []).append(item)
        cursor = page.next_cursor
        if walking and cursor is None:
            walking = False
        elif walking and examined >= budget:
            walking, complete = False, False
    _attach(root, children, depth=0)
    return ForkTree(root, examined, complete)


def _attach(node: ForkNode, children: dict[str, list[ConversationRecord]], depth: int) -> None:
    known = {child.conversation_id for child in node.children}
    for item in sorted(children.get(node.conversation_id, []), key=lambda r: r.created_at):
        if item.id not in known:
            origin = forked_from(item)
            node.children.append(ForkNode(item.id, item, origin[1] if origin else None))
    if depth < 100:
        for child in node.children:
            _attach(child, children, depth + 1)


# --------------------------------------------------------------------------- retention


def retention(record: ConversationRecord, *, now: datetime | None = None) -> tuple[str, bool]:
    """A sentence on when the conversation leaves the store, and whether ``purge`` would
    delete it now (without ``--older-than``)."""
    now = now or datetime.now(UTC)
    eligible = rules.is_purgeable(record, now=now, older_than=None)
    if record.expires_at is None:
        idle = now - record.updated_at
        return (
            f"no expiry set; idle {_span(idle)} (removed only by purge --older-than)",
            eligible,
        )
    stamp = record.expires_at.strftime("%Y-%m-%d %H:%M UTC")
    if eligible:
        return f"expired at {stamp}: eligible for purge now", eligible
    return f"expires at {stamp} (in {_span(record.expires_at - now)})", eligible


def _span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400} d"
    if seconds >= 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"

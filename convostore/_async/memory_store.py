"""The in-process store: the reference implementation of the contract, for docs and tests.

``memory://`` opens a new private store. ``memory://NAME`` opens the process-wide store named
NAME: every store opened with that URL (in this flavour) sees the same conversations, so two
``Conversations`` objects in one process can share history. Nothing survives the process.

Everything is kept as JSON text, encoded on write and decoded on read, so a caller can never
alias (and so mutate) stored data.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .._core import context as _context
from .._core import store_rules as rules
from .._exceptions import (
    ConcurrentTurnError,
    ConfigurationError,
    ConversationExists,
    ConversationNotFound,
    LeaseLost,
    TurnInFlight,
)
from ..models import (
    AppendResult,
    CompactionRecord,
    ConversationRecord,
    JSONObject,
    OutboxItem,
    Page,
    PendingTurnRecord,
    StoredStep,
    TurnCommit,
    TurnRecord,
)


@dataclass
class _Conversation:
    record: str
    tenant: str
    user: str | None
    sort_key: tuple[int, str]
    turns: list[str] = field(default_factory=list)
    spans: list[rules.TurnSpan] = field(default_factory=list)
    steps: list[tuple[int, str]] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)
    pending: str | None = None
    compactions: list[str] = field(default_factory=list)


class _State:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # the sync twin gets a threading.Lock
        self.conversations: dict[str, _Conversation] = {}
        self.outbox: dict[str, str] = {}


_NAMED: dict[str, _State] = {}


def _record(conv: _Conversation) -> ConversationRecord:
    return ConversationRecord.model_validate_json(conv.record)


def _step_text(payload: JSONObject) -> str:
    # ASCII with \u escapes: a load joins and parses thousands of these, and one emoji in
    # a history would otherwise make the joined text 4 bytes per character (3.6x slower)
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def _pending(
    conv: _Conversation | None, tenant: str, key: str | None = None
) -> PendingTurnRecord | None:
    if conv is None or conv.tenant != tenant or conv.pending is None:
        return None
    pending = PendingTurnRecord.model_validate_json(conv.pending)
    return None if key is not None and pending.idempotency_key != key else pending


def _turn(text: str) -> TurnRecord:
    return TurnRecord.model_validate_json(text)


def _merge(stored: ConversationRecord, new: ConversationRecord, names: Sequence[str]) -> str:
    merged = stored.model_dump(mode="json")
    merged.update(new.model_dump(mode="json", include=set(names)))
    return rules.dumps(merged)


class AsyncMemoryStore:
    """An in-process store (see the module docstring for ``memory://NAME`` sharing)."""

    def __init__(self, *, name: str | None = None, _state: _State | None = None) -> None:
        self.url = f"memory://{name or ''}"
        self._state = _state or _State()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncMemoryStore:
        """``memory://`` (private) or ``memory://NAME`` (shared by name in this process)."""
        if options:
            raise ConfigurationError(f"memory store takes no options, got {sorted(options)}")
        if not url.startswith("memory://"):
            raise ConfigurationError(f"not a memory URL: {url!r}")
        name = url[len("memory://") :].strip("/")
        if not name:
            return cls()
        # Dict operations are atomic under the GIL; setdefault keeps one state per name.
        state = _NAMED.setdefault(name, _State())
        return cls(name=name, _state=state)

    # ----------------------------------------------------------------- helpers

    def _get(self, conversation_id: str, tenant: str) -> _Conversation:
        conv = self._state.conversations.get(conversation_id)
        if conv is None or conv.tenant != tenant:
            raise ConversationNotFound(conversation_id)
        return conv

    # ----------------------------------------------------------------- contract

    async def create_conversation(
        self,
        record: ConversationRecord,
        *,
        turns: Sequence[TurnRecord] = (),
        steps: Sequence[StoredStep] = (),
    ) -> ConversationRecord:
        rules.check_new_conversation(record, turns, steps)
        conv = _Conversation(
            record=record.model_dump_json(),
            tenant=record.tenant,
            user=record.user,
            sort_key=(rules.epoch_us(record.created_at), record.id),
        )
        conv.turns = [turn.model_dump_json() for turn in turns]
        conv.steps = [(step.turn_seq, _step_text(step.payload)) for step in steps]
        next_step = 1
        for turn in turns:
            while next_step <= len(steps) and steps[next_step - 1].turn_seq < turn.seq:
                next_step += 1
            conv.spans.append(rules.TurnSpan(next_step, turn.status))
            if turn.idempotency_key is not None:
                conv.keys[turn.idempotency_key] = turn.seq
        async with self._state.lock:
            if record.id in self._state.conversations:
                raise ConversationExists(record.id)
            self._state.conversations[record.id] = conv
        return _record(conv)

    async def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        rules.check_scope(conversation_id, tenant)
        async with self._state.lock:
            return _record(self._get(conversation_id, tenant))

    async def append_turn(self, commit: TurnCommit) -> AppendResult:
        rules.check_commit(commit)
        new = commit.record
        turn = commit.turn
        turn_text = turn.model_dump_json()
        step_rows = [(step.turn_seq, _step_text(step.payload)) for step in commit.steps]
        async with self._state.lock:
            conv = self._get(new.id, new.tenant)
            key = turn.idempotency_key
            if key is not None and key in conv.keys:
                if _pending(conv, new.tenant, key) is not None:
                    conv.pending = None
                return AppendResult(turn=_turn(conv.turns[conv.keys[key] - 1]), created=False)
            stored = _record(conv)
            if stored.version != commit.expected_version:
                raise ConcurrentTurnError(
                    new.id, expected_version=commit.expected_version, actual_version=stored.version
                )
            rules.check_continues(stored, commit)
            conv.record = _merge(stored, new, rules.APPEND_FIELDS)
            conv.turns.append(turn_text)
            conv.spans.append(rules.TurnSpan(stored.step_count + 1, turn.status))
            conv.steps.extend(step_rows)
            if key is not None:
                conv.keys[key] = turn.seq
                if _pending(conv, new.tenant, key) is not None:
                    conv.pending = None
        return AppendResult(turn=_turn(turn_text), created=True)

    async def find_turn(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> TurnRecord | None:
        rules.check_scope(conversation_id, tenant)
        rules.check_idempotency_key(idempotency_key)
        async with self._state.lock:
            conv = self._get(conversation_id, tenant)
            seq = conv.keys.get(idempotency_key)
            return None if seq is None else _turn(conv.turns[seq - 1])

    async def load_steps(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        newest: int | None = None,
        turn: int | None = None,
    ) -> list[StoredStep]:
        rules.check_load(conversation_id, tenant, after_seq=after_seq, newest=newest, turn=turn)
        async with self._state.lock:
            conv = self._get(conversation_id, tenant)
            count = len(conv.steps)
            start = after_seq + 1
            stop = count + 1
            if newest is not None:
                first = rules.newest_start(
                    conv.spans, step_count=count, newest=newest, complete=True
                )
                start = max(start, first or 1)
            if turn is not None:
                if turn > len(conv.spans):
                    return []
                start = max(start, conv.spans[turn - 1].first_step)
                if turn < len(conv.spans):
                    stop = conv.spans[turn].first_step
            rows = conv.steps[start - 1 : stop - 1]
        payloads = rules.loads("[" + ",".join(text for _, text in rows) + "]", "stored steps")
        return [
            rules.stored_step(conversation_id, seq, turn_seq, payload)
            for seq, ((turn_seq, _), payload) in enumerate(
                zip(rows, payloads, strict=True), start=start
            )
        ]

    async def load_turns(
        self, conversation_id: str, *, tenant: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TurnRecord]:
        rules.check_load(conversation_id, tenant, after_seq=after_seq, limit=limit)
        async with self._state.lock:
            conv = self._get(conversation_id, tenant)
            stop = None if limit is None else after_seq + limit
            texts = conv.turns[after_seq:stop]
        return [_turn(text) for text in texts]

    async def list_conversations(
        self,
        *,
        tenant: str | None,
        user: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        rules.check_list(tenant, user, limit, cursor)
        after: tuple[int, str] | None = None
        if cursor is not None:
            created_at, last_id = rules.decode_cursor(cursor)
            after = (rules.epoch_us(created_at), last_id)
        async with self._state.lock:
            found = [
                conv
                for conv in self._state.conversations.values()
                if (tenant is None or conv.tenant == tenant)
                and (user is None or conv.user == user)
                and (after is None or conv.sort_key < after)
            ]
            found.sort(key=lambda conv: conv.sort_key, reverse=True)
            items = [_record(conv) for conv in found[: limit + 1]]
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = rules.encode_cursor(items[-1].created_at, items[-1].id)
        return Page(items=items, next_cursor=next_cursor)

    async def update_conversation(self, record: ConversationRecord) -> ConversationRecord:
        rules.check_update(record)
        async with self._state.lock:
            conv = self._get(record.id, record.tenant)
            stored = _record(conv)
            if stored.version != record.version - 1:
                raise ConcurrentTurnError(
                    record.id, expected_version=record.version - 1, actual_version=stored.version
                )
            conv.record = _merge(stored, record, rules.UPDATE_FIELDS)
            return _record(conv)

    async def delete_conversation(self, conversation_id: str, *, tenant: str) -> bool:
        rules.check_scope(conversation_id, tenant)
        async with self._state.lock:
            conv = self._state.conversations.get(conversation_id)
            if conv is None or conv.tenant != tenant:
                return False
            del self._state.conversations[conversation_id]
            return True

    async def purge(
        self,
        *,
        now: datetime | None = None,
        older_than: datetime | None = None,
        tenant: str | None = None,
        dry_run: bool = False,
    ) -> list[ConversationRecord]:
        moment = rules.check_purge(now, older_than, tenant)
        async with self._state.lock:
            doomed = []
            for conv in self._state.conversations.values():
                if tenant is not None and conv.tenant != tenant:
                    continue
                record = _record(conv)
                if rules.is_purgeable(record, now=moment, older_than=older_than):
                    doomed.append(record)
            if not dry_run:
                for record in doomed:
                    del self._state.conversations[record.id]
        return doomed

    # ----------------------------------------------------------------- compactions

    async def append_compaction(
        self, record: ConversationRecord, compaction: CompactionRecord
    ) -> ConversationRecord:
        record, compaction = _context.check_compaction(record, compaction)
        text = compaction.model_dump_json()
        async with self._state.lock:
            conv = self._get(record.id, record.tenant)
            stored = _record(conv)
            _context.check_compacts(stored, record, compaction)
            in_flight = _pending(conv, record.tenant)
            if in_flight is not None:
                raise TurnInFlight(record.id, pending=in_flight)
            conv.record = _merge(stored, record, _context.COMPACT_FIELDS)
            conv.compactions.append(text)
            return _record(conv)

    async def load_compactions(
        self, conversation_id: str, *, tenant: str, epoch: int | None = None
    ) -> list[CompactionRecord]:
        _context.check_load_compactions(conversation_id, tenant, epoch)
        async with self._state.lock:
            texts = list(self._get(conversation_id, tenant).compactions)
        found = [CompactionRecord.model_validate_json(text) for text in texts]
        return _context.select(found, epoch)

    async def load_step_range(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int | None = None,
    ) -> list[StoredStep]:
        _context.check_step_range(conversation_id, tenant, after_seq, before_seq, limit)
        async with self._state.lock:
            conv = self._get(conversation_id, tenant)
            first, last = _context.step_window(len(conv.steps), after_seq, before_seq, limit)
            rows = conv.steps[first - 1 : last] if first <= last else []
        payloads = rules.loads("[" + ",".join(text for _, text in rows) + "]", "stored steps")
        return [
            rules.stored_step(conversation_id, seq, turn_seq, payload)
            for seq, ((turn_seq, _), payload) in enumerate(
                zip(rows, payloads, strict=True), start=first
            )
        ]

    # ----------------------------------------------------------------- turns in flight

    async def begin_turn(self, pending: PendingTurnRecord) -> None:
        rules.check_pending(pending)
        text = pending.model_dump_json()
        async with self._state.lock:
            conv = self._get(pending.conversation_id, pending.tenant)
            stored = _pending(conv, pending.tenant)
            if stored is not None:
                raise TurnInFlight(pending.conversation_id, pending=stored)
            rules.check_begin(_record(conv), pending)
            conv.pending = text

    async def get_pending(self, conversation_id: str, *, tenant: str) -> PendingTurnRecord | None:
        rules.check_scope(conversation_id, tenant)
        async with self._state.lock:
            return _pending(self._state.conversations.get(conversation_id), tenant)

    async def update_pending(self, pending: PendingTurnRecord, *, owner: str) -> None:
        rules.check_progress(pending)
        rules.check_owner(owner)
        key = pending.idempotency_key
        async with self._state.lock:
            conv = self._state.conversations.get(pending.conversation_id)
            stored = _pending(conv, pending.tenant, key)
            if conv is None or stored is None or stored.lease_owner != owner:
                raise LeaseLost(pending.conversation_id, idempotency_key=key)
            conv.pending = rules.merge_progress(stored, pending).model_dump_json()

    async def claim_pending(
        self,
        conversation_id: str,
        *,
        tenant: str,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
    ) -> PendingTurnRecord | None:
        rules.check_claim(conversation_id, tenant, owner, now, lease_expires_at)
        async with self._state.lock:
            conv = self._state.conversations.get(conversation_id)
            stored = _pending(conv, tenant)
            if conv is None or stored is None or not rules.claimable(stored, owner=owner, now=now):
                return None
            claimed = stored.model_copy(
                update={"lease_owner": owner, "lease_expires_at": lease_expires_at}
            )
            conv.pending = claimed.model_dump_json()
            return PendingTurnRecord.model_validate_json(conv.pending)

    async def release_pending(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> bool:
        rules.check_pending_key(conversation_id, tenant, idempotency_key)
        async with self._state.lock:
            conv = self._state.conversations.get(conversation_id)
            if conv is None or _pending(conv, tenant, idempotency_key) is None:
                return False
            conv.pending = None
            return True

    async def list_pending(
        self,
        *,
        tenant: str | None,
        expired_at: datetime | None = None,
        limit: int = 100,
    ) -> list[PendingTurnRecord]:
        rules.check_list_pending(tenant, expired_at, limit)
        async with self._state.lock:
            texts = [c.pending for c in self._state.conversations.values() if c.pending]
        found = [PendingTurnRecord.model_validate_json(text) for text in texts]
        return rules.select_pending(found, tenant=tenant, expired_at=expired_at, limit=limit)

    # ----------------------------------------------------------------- outbox

    async def add_outbox(self, items: Sequence[OutboxItem]) -> None:
        texts = {item.id: item.model_dump_json() for item in rules.check_outbox_items(items)}
        async with self._state.lock:
            self._state.outbox.update(texts)

    async def list_outbox(
        self, *, tenant: str | None, due_at: datetime | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        rules.check_list_outbox(tenant, due_at, limit)
        async with self._state.lock:
            texts = list(self._state.outbox.values())
        found = [OutboxItem.model_validate_json(text) for text in texts]
        return rules.select_outbox(found, tenant=tenant, due_at=due_at, limit=limit)

    async def update_outbox(self, item: OutboxItem) -> None:
        rules.check_outbox_items([item])
        async with self._state.lock:
            text = self._state.outbox.get(item.id)
            if text is None:
                return
            stored = OutboxItem.model_validate_json(text)
            if stored.tenant == item.tenant:
                fields = {name: getattr(item, name) for name in rules.OUTBOX_RETRY_FIELDS}
                self._state.outbox[item.id] = stored.model_copy(update=fields).model_dump_json()

    async def remove_outbox(self, ids: Sequence[str]) -> None:
        checked = rules.check_outbox_ids(ids)
        async with self._state.lock:
            for item_id in checked:
                self._state.outbox.pop(item_id, None)

    async def aclose(self) -> None:
        """Nothing to release; a named store keeps its data for the next opener."""

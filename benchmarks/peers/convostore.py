"""convostore: its asyncio store API (``open_async_store``), on SQLite, PostgreSQL and Redis.

Driven at the store level, the way ``AsyncConversation.send`` drives it minus the API call:

  create   ``create_conversation(ConversationRecord(id, tenant, model, mode="server"))``
  append   build the turn's ``TurnCommit`` against the conversation record this adapter
           holds (the record after its last commit, or as read when the conversation was
           opened), then ``append_turn(commit)``: one version-checked transaction (SQL) or
           one Lua script (Redis). Built from the public models, as ``convostore.testing
           .make_commit`` and ``_planner.commit_turn`` build it: the steps with
           ``StoredStep.model_construct``, a validated ``TurnRecord`` (a server-mode chained
           turn with an interaction id, no usage, no audit hash), the record advanced with
           ``model_copy``. That construction is inside the timing, as item conversion is for
           the other peers.
  conflict ``ConcurrentTurnError`` (another writer appended first): wait
           ``_planner.conflict_delay(attempt)`` (exponential, full jitter: what
           ``send(on_conflict="retry")`` waits), re-read the record (``get_conversation``),
           rebuild the commit and append again, at most ``max_conflict_retries`` times
           (default 5, ``send``'s default); after that the error propagates and the turn
           counts as failed.
  load     ``load_steps(id, tenant=...)`` / ``load_steps(..., newest=n)`` -> the payloads
           (stored verbatim: they are the canonical items already, no conversion back).
           A conversation not held (after ``release``, or in a fresh process) is opened by
           id first, as ``AsyncConversations.get`` does (``get_conversation``), so "resume"
           is open + newest 20, the same two calls the project's own benchmark times.

The ``send`` variant drives a turn's store calls exactly as ``send()`` does with durable
turns (minus the API call): plan from the record held (as read when the conversation was
opened, or after this adapter's last commit), ``begin_turn`` (the pending record,
version-checked), ``update_pending`` (the interaction id, as the answer stream names it),
then ``append_turn`` with the turn's key (which deletes the pending record). With
``send(on_conflict="retry")``'s policy: a turn in flight is queued behind (``TurnInFlight``:
wait, re-read, begin again) and a version conflict at ``begin_turn`` (the record held was
stale) costs no request, so it re-reads (``get_conversation``) and re-plans without counting
against the retries (for up to a minute). It shows
the store work of a real turn (A) and whether racing writers all get stored (D).
The ``raise`` variant (D) does not retry: the raw rate of lost version races.

(This copy lives in convostore's ``benchmarks/peers/``; the shared harness is pointed at it
by copying the harness and replacing its ``adapters/convostore.py``.)
"""
from __future__ import annotations

import asyncio
import random
import uuid

import convostore as cs
import time
from datetime import timedelta

from convostore import ConcurrentTurnError, ConversationRecord, Reason, StoredStep, TurnRecord
from convostore.models import PendingTurnRecord, TurnCommit, utcnow

try:  # the rule send(on_conflict="retry") uses; private, so keep a copy of it as a fallback
    from convostore._planner import conflict_delay
except ImportError:  # pragma: no cover
    def conflict_delay(attempt: int) -> float:
        return random.uniform(0.0, min(1.0, 0.05 * 2 ** (attempt - 1)))

from ..adapter import Adapter

TENANT = "bench"
MODEL = "gemini-3-flash-preview"
_new_steps = StoredStep.model_construct


def make_commit(record: ConversationRecord, items: list[dict], *, key: str | None = None,
                interaction_id: str | None = None) -> TurnCommit:
    """The TurnCommit of one chained server-mode turn planned against ``record``."""
    seq = record.turn_count + 1
    first = record.step_count + 1
    now = utcnow()
    interaction_id = interaction_id or f"v1_{uuid.uuid4().hex}"
    rid = record.id
    steps = [_new_steps(conversation_id=rid, seq=first + i, turn_seq=seq, type=it["type"],
                        payload=it)
             for i, it in enumerate(items)]
    turn = TurnRecord(
        conversation_id=rid, seq=seq, interaction_id=interaction_id,
        previous_interaction_id=record.head_interaction_id, model=record.model,
        mode_used="server", reason=Reason.FIRST_TURN if seq == 1 else Reason.CHAINED,
        status="completed", created_at=now, idempotency_key=key,
    )
    after = record.model_copy(update={
        "version": record.version + 1, "turn_count": seq,
        "step_count": record.step_count + len(items),
        "head_interaction_id": interaction_id, "head_created_at": now, "head_model": record.model,
        "updated_at": now,
    })
    return TurnCommit.model_construct(record=after, turn=turn, steps=steps)


def make_pending(record: ConversationRecord, items: list[dict], key: str,
                 owner: str) -> PendingTurnRecord:
    """The pending record ``send`` writes with ``begin_turn`` before its request."""
    now = utcnow()
    return PendingTurnRecord(
        conversation_id=record.id, tenant=record.tenant, seq=record.turn_count + 1,
        planned_version=record.version, idempotency_key=key, mode_used="server",
        reason=Reason.FIRST_TURN if record.turn_count == 0 else Reason.CHAINED,
        model=record.model, store=True, previous_interaction_id=record.head_interaction_id,
        input_steps=[items[0]], lease_owner=owner, lease_expires_at=now + timedelta(minutes=2),
        created_at=now, updated_at=now,
    )


QUEUE_SECONDS = 60.0  # send's budget for conflicts that cost no request


class ConvostoreAdapter(Adapter):
    peer = "convostore"
    venv = "convostore"
    order = 5
    backends = {"sqlite": "sqlite", "pg": "pg", "redis": "redis"}
    labels = {"sqlite": "AsyncSQLiteStore: the sync store, one worker-thread hop per call (WAL, synchronous=NORMAL)",
              "pg": "AsyncSQLStore, postgresql+psycopg (async; one-statement append)",
              "redis": "AsyncRedisStore (Lua script per append)"}
    variants = {"send": {"options": {"refresh_each_turn": True}, "workloads": ["A", "D"]},
                "raise": {"options": {"on_conflict": "raise"}, "workloads": ["D"]}}
    atomic_turn = True   # one transaction / one script per turn, version-checked
    native_tail = True   # load_steps(newest=n) reads only the suffix

    async def setup(self) -> None:
        self.records: dict[str, ConversationRecord] = {}
        self.refresh = bool(self.options.get("refresh_each_turn"))
        self.owner = f"bench-{uuid.uuid4().hex[:12]}"
        self.waits = 0       # TurnInFlight met at begin_turn (queued behind the turn in flight)
        self.retry = self.options.get("on_conflict", "retry") == "retry"
        self.max_retries = int(self.options.get("max_conflict_retries", 5))
        self.conflicts = 0   # ConcurrentTurnError caught (each one is a re-read and a retry)
        self.gave_up = 0     # turns that still conflicted after max_conflict_retries
        self.max_attempt = 0
        b = self.backend
        if b == "sqlite":
            self.url = f"sqlite:///{self.env.sqlite_path}"  # migrates itself on first use
            self.store = cs.open_async_store(self.url)
        elif b == "pg":
            self.url = self.env.pg_dsn()
            # a PostgreSQL database is migrated explicitly (convostore db upgrade URL); the
            # harness gives every run a fresh database. In D, each child finds it migrated.
            if not await asyncio.to_thread(_migrated, self.url):
                await asyncio.to_thread(cs.migrate, self.url)
            self.store = cs.open_async_store(self.url)
        else:
            self.store = cs.open_async_store(self.env.redis_url,
                                             key_prefix=f"{self.env.redis_prefix}:")
        # first connection, schema check / SQLite migration, outside the timings
        try:
            await self.store.get_conversation("setup-probe", tenant=TENANT)
        except cs.ConversationNotFound:
            pass

    async def teardown(self) -> None:
        await self.store.aclose()

    async def create(self, conv_id: str) -> None:
        now = utcnow()
        rec = ConversationRecord(id=conv_id, tenant=TENANT, mode="server", model=MODEL,
                                 created_at=now, updated_at=now)
        self.records[conv_id] = await self.store.create_conversation(rec)

    async def _open(self, conv_id: str) -> ConversationRecord:
        rec = self.records[conv_id] = await self.store.get_conversation(conv_id, tenant=TENANT)
        return rec

    async def _append_as_send(self, conv_id: str, items: list[dict]) -> None:
        key = f"k-{uuid.uuid4().hex}"
        queued_until = time.monotonic() + QUEUE_SECONDS
        rec = self.records.get(conv_id)
        fresh = False
        while True:
            if rec is None:
                rec, fresh = await self._open(conv_id), True
            pending = make_pending(rec, items, key, self.owner)
            try:
                await self.store.begin_turn(pending)
            except cs.TurnInFlight:
                self.waits += 1
                await asyncio.sleep(random.uniform(0.0, 0.002))
                rec = None
                continue
            except ConcurrentTurnError:
                rec = None
                if not fresh:  # the record held was stale: read it and plan again
                    continue
                self.conflicts += 1
                if time.monotonic() > queued_until:
                    self.gave_up += 1
                    raise
                await asyncio.sleep(conflict_delay(0))
                continue
            interaction_id = f"v1_{uuid.uuid4().hex}"  # as interaction.created names it
            await self.store.update_pending(
                pending.model_copy(update={"interaction_id": interaction_id}), owner=self.owner)
            commit = make_commit(rec, items, key=key, interaction_id=interaction_id)
            await self.store.append_turn(commit)
            self.records[conv_id] = commit.record
            return

    async def append(self, conv_id: str, items: list[dict]) -> None:
        if self.refresh:
            return await self._append_as_send(conv_id, items)
        rec = self.records.get(conv_id)
        if rec is None or self.refresh:
            rec = await self._open(conv_id)
        attempt = 0
        while True:
            commit = make_commit(rec, items)
            try:
                await self.store.append_turn(commit)
            except ConcurrentTurnError:
                self.conflicts += 1
                attempt += 1
                if not self.retry or attempt > self.max_retries:
                    self.gave_up += 1
                    self.records.pop(conv_id, None)  # the next turn starts from a fresh read
                    raise
                await asyncio.sleep(conflict_delay(attempt))
                rec = await self._open(conv_id)
                continue
            self.records[conv_id] = commit.record
            self.max_attempt = max(self.max_attempt, attempt)
            return

    def bench_stats(self) -> dict:
        """Collected by workload D from each writer process (summed over the writers)."""
        return {"conflicts": self.conflicts, "gave_up_turns": self.gave_up,
                "max_retries_one_turn": self.max_attempt, "in_flight_waits": self.waits}

    async def load(self, conv_id: str, last_n: int | None = None) -> list[dict]:
        if conv_id not in self.records:
            await self._open(conv_id)  # open by id, as AsyncConversations.get does
        steps = await self.store.load_steps(conv_id, tenant=TENANT, newest=last_n)
        return [s.payload for s in steps]

    async def release(self, conv_id: str) -> None:
        self.records.pop(conv_id, None)


def _migrated(url: str) -> bool:
    from convostore._migrate import check
    try:
        return check(url)
    except Exception:  # noqa: BLE001 - not migrated yet / no alembic_version table
        return False

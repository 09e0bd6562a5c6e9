"""The backend floor: the thinnest code that writes and reads the same rows at driver level.

Each floor writes what convostore's append writes — a version-checked update of the
conversation, one turn row, the step rows — in one transaction (one pipeline on Redis), and
reads the same columns convostore reads, decoding the JSON with ``json.loads``. It holds one
connection open and uses plain SQL text: no pool, no statement building, no models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from convostore._redis_keys import conversation_keys
from convostore.models import ConversationRecord, TurnCommit, TurnRecord

_CONVERSATION_COLUMNS = (
    "id, tenant, user, mode, model, config, head_interaction_id, head_created_at, head_model, "
    "version, turn_count, step_count, last_turn_hash, metadata, created_at, updated_at, "
    "expires_at"
)
Rows = list[tuple[int, int, Any]]


class Floor(Protocol):
    def append(self, commit: TurnCommit) -> None: ...

    def load(self, conversation_id: str) -> Rows: ...

    def newest(self, conversation_id: str, step_count: int, n: int) -> Rows: ...

    def resume(self, conversation_id: str, tenant: str, n: int) -> tuple[dict[str, Any], Rows]:
        """The conversation row, then the newest ``n`` steps (by the row's step count)."""
        ...

    def close(self) -> None: ...


def _turn_json(turn: TurnRecord) -> str:
    return json.dumps(
        {
            "seq": turn.seq,
            "interaction_id": turn.interaction_id,
            "previous_interaction_id": turn.previous_interaction_id,
            "model": turn.model,
            "mode_used": turn.mode_used,
            "reason": str(turn.reason),
            "status": turn.status,
            "usage": turn.usage,
            "idempotency_key": turn.idempotency_key,
            "created_at": turn.created_at.isoformat(),
            "audit_hash": turn.audit_hash,
        },
        ensure_ascii=False,
    )


class SQLFloor:
    """stdlib ``sqlite3`` (WAL, synchronous=NORMAL like the store), psycopg or pymysql."""

    def __init__(self, dialect: str, connection: Any) -> None:
        self.dialect = dialect
        self.conn = connection
        m = "?" if dialect == "sqlite" else "%s"
        jsonb = "::jsonb" if dialect == "postgresql" else ""
        q = '"' if dialect != "mysql" else "`"  # user and usage are reserved words
        self._columns = _CONVERSATION_COLUMNS.replace("user", f"{q}user{q}", 1)
        payload = "payload::text" if dialect == "postgresql" else "payload"
        self._update = (
            f"UPDATE conversations SET version = {m}, turn_count = {m}, step_count = {m}, "
            f"head_interaction_id = {m}, head_created_at = {m}, head_model = {m}, "
            f"last_turn_hash = {m}, updated_at = {m} "
            f"WHERE id = {m} AND tenant = {m} AND version = {m}"
        )
        self._turn = (
            "INSERT INTO turns (conversation_id, seq, interaction_id, previous_interaction_id, "
            f"model, mode_used, reason, status, {q}usage{q}, idempotency_key, created_at, "
            "audit_hash) "
            f"VALUES ({m}, {m}, {m}, {m}, {m}, {m}, {m}, {m}, {m}{jsonb}, {m}, {m}, {m})"
        )
        self._steps = (
            "INSERT INTO steps (conversation_id, seq, turn_seq, type, payload) "
            f"VALUES ({m}, {m}, {m}, {m}, {m}{jsonb})"
        )
        self._select = f"SELECT seq, turn_seq, {payload} FROM steps WHERE conversation_id = {m}"
        self._select_after = self._select + f" AND seq > {m}"
        self._record = f"SELECT {self._columns} FROM conversations WHERE id = {m} AND tenant = {m}"

    def _time(self, value: datetime | None) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        if self.dialect == "postgresql":
            return value
        if self.dialect == "sqlite":
            return value.replace(tzinfo=None).isoformat(" ")
        return value.replace(tzinfo=None)

    def append(self, commit: TurnCommit) -> None:
        record, turn, t = commit.record, commit.turn, self._time
        cursor = self.conn.cursor()
        if self.dialect == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(
            self._update,
            (
                record.version,
                record.turn_count,
                record.step_count,
                record.head_interaction_id,
                t(record.head_created_at),
                record.head_model,
                record.last_turn_hash,
                t(record.updated_at),
                record.id,
                record.tenant,
                commit.expected_version,
            ),
        )
        if cursor.rowcount != 1:
            raise RuntimeError("floor: stale version")
        usage = None if turn.usage is None else json.dumps(turn.usage)
        cursor.execute(
            self._turn,
            (
                turn.conversation_id,
                turn.seq,
                turn.interaction_id,
                turn.previous_interaction_id,
                turn.model,
                turn.mode_used,
                str(turn.reason),
                turn.status,
                usage,
                turn.idempotency_key,
                t(turn.created_at),
                turn.audit_hash,
            ),
        )
        cursor.executemany(
            self._steps,
            [
                (s.conversation_id, s.seq, s.turn_seq, s.type, json.dumps(s.payload))
                for s in commit.steps
            ],
        )
        self.conn.commit()

    def _rows(self, sql: str, params: Sequence[Any]) -> Rows:
        cursor = self.conn.cursor()
        cursor.execute(sql + " ORDER BY seq", params)
        rows = [(seq, turn_seq, json.loads(text)) for seq, turn_seq, text in cursor.fetchall()]
        self.conn.commit()  # end the read transaction, as a pooled connection would
        return rows

    def load(self, conversation_id: str) -> Rows:
        return self._rows(self._select, (conversation_id,))

    def newest(self, conversation_id: str, step_count: int, n: int) -> Rows:
        return self._rows(self._select_after, (conversation_id, step_count - n))

    def resume(self, conversation_id: str, tenant: str, n: int) -> tuple[dict[str, Any], Rows]:
        cursor = self.conn.cursor()
        cursor.execute(self._record, (conversation_id, tenant))
        names = [d[0] for d in cursor.description]
        row = dict(zip(names, cursor.fetchone(), strict=True))
        for name in ("config", "metadata"):
            if isinstance(row[name], str):
                row[name] = json.loads(row[name])
        return row, self.newest(conversation_id, row["step_count"], n)

    def close(self) -> None:
        self.conn.close()


class RedisFloor:
    """One redis-py pipeline per append (MULTI/EXEC; no version check: it cannot be done in a
    pipeline without WATCH's extra round trip, so this floor is cheaper than the real thing)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def append(self, commit: TurnCommit) -> None:
        record, keys = commit.record, conversation_keys(self.prefix, commit.record.id)
        fields = {
            "version": record.version,
            "turn_count": record.turn_count,
            "step_count": record.step_count,
            "head_interaction_id": record.head_interaction_id,
            "head_created_at": None
            if record.head_created_at is None
            else record.head_created_at.isoformat(),
            "head_model": record.head_model,
            "last_turn_hash": record.last_turn_hash,
            "updated_at": record.updated_at.isoformat(),
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys[0], mapping={k: json.dumps(v) for k, v in fields.items()})
        pipe.rpush(keys[1], _turn_json(commit.turn))
        pipe.rpush(keys[2], *[json.dumps([s.turn_seq, s.payload]) for s in commit.steps])
        pipe.execute()

    def _decode(self, items: list[bytes], first: int) -> Rows:
        rows = []
        for seq, item in enumerate(items, start=first):
            turn_seq, payload = json.loads(item)
            rows.append((seq, turn_seq, payload))
        return rows

    def load(self, conversation_id: str) -> Rows:
        key = conversation_keys(self.prefix, conversation_id)[2]
        return self._decode(self.client.lrange(key, 0, -1), 1)

    def newest(self, conversation_id: str, step_count: int, n: int) -> Rows:
        key = conversation_keys(self.prefix, conversation_id)[2]
        return self._decode(self.client.lrange(key, -n, -1), step_count - n + 1)

    def resume(self, conversation_id: str, tenant: str, n: int) -> tuple[dict[str, Any], Rows]:
        keys = conversation_keys(self.prefix, conversation_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys[0])
        pipe.lrange(keys[2], -n, -1)
        fields, items = pipe.execute()
        row = {k.decode(): json.loads(v) for k, v in fields.items() if not k.startswith(b"_")}
        return row, self._decode(items, row["step_count"] - len(items) + 1)

    def close(self) -> None:
        self.client.close()


class MemoryFloor:
    """A dict of JSON texts guarded by a version check: the least a process-local store that
    hands out independent copies can do."""

    def __init__(self) -> None:
        self.conversations: dict[str, dict[str, Any]] = {}

    def add(self, record: ConversationRecord, payloads: Sequence[tuple[int, Any]] = ()) -> None:
        self.conversations[record.id] = {
            "record": record.model_dump_json(),
            "version": record.version,
            "turns": [],
            "steps": [json.dumps([turn_seq, p]) for turn_seq, p in payloads],
        }

    def append(self, commit: TurnCommit) -> None:
        conv = self.conversations[commit.record.id]
        if conv["version"] != commit.expected_version:
            raise RuntimeError("floor: stale version")
        conv["version"] = commit.record.version
        conv["turns"].append(_turn_json(commit.turn))
        conv["steps"].extend(json.dumps([s.turn_seq, s.payload]) for s in commit.steps)

    def _decode(self, items: list[str], first: int) -> Rows:
        rows = []
        for seq, item in enumerate(items, start=first):
            turn_seq, payload = json.loads(item)
            rows.append((seq, turn_seq, payload))
        return rows

    def load(self, conversation_id: str) -> Rows:
        return self._decode(self.conversations[conversation_id]["steps"], 1)

    def newest(self, conversation_id: str, step_count: int, n: int) -> Rows:
        return self._decode(self.conversations[conversation_id]["steps"][-n:], step_count - n + 1)

    def resume(self, conversation_id: str, tenant: str, n: int) -> tuple[dict[str, Any], Rows]:
        conv = self.conversations[conversation_id]
        row: dict[str, Any] = json.loads(conv["record"])
        return row, self._decode(conv["steps"][-n:], len(conv["steps"]) - n + 1)

    def close(self) -> None:
        self.conversations.clear()

# Generated from convostore/_async by scripts/unasync.py. Do not edit.
"""The Redis store (plain Redis or Valkey, no modules); key schema in ``convostore._redis_keys``.

Every write of a conversation is one Lua script over keys sharing the hash tag
``{<conversation id>}``, so it is atomic and runs on Redis Cluster. The listing indexes live
in other slots and are written after the conversation (and removed after it on delete): a
crash in between leaves an index entry without a conversation. Listing and purge tolerate
such dangling entries: they skip them and remove them. The trade-off: a conversation whose
process died between its create script and its index write is loadable but not listed.

With ``expires_at`` set, every key of the conversation gets that time as its Redis expiry
(re-applied on every append and update), so Redis drops expired conversations by itself;
``purge`` returns only what is still there to delete.

Turns in flight and the outbox are in ``redis_pending`` (a base class of this store).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis
import redis.cluster
import redis.exceptions
from redis.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from .. import _redis_keys as keys
from .._core import store_rules as rules
from .._exceptions import (
    ConcurrentTurnError,
    ConfigurationError,
    ConversationExists,
    ConversationNotFound,
    CorruptRecordError,
    ValidationError,
)
from .._urls import redact
from ..models import (
    AppendResult,
    ConversationRecord,
    Page,
    StoredStep,
    TurnCommit,
    TurnRecord,
)
from .redis_compaction import RedisCompaction, compaction_key
from .redis_pending import BATCH, RedisPending, translate_errors

# steps read beyond N by load_steps(newest=N), so that the turn boundary before the N-th
# newest step is usually within what the first round trip brought back
_NEWEST_SLACK = 16


class RedisStore(RedisPending, RedisCompaction):
    """A store on plain Redis (see the module docstring for the layout and its trade-offs)."""

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster,
        *,
        url: str,
        key_prefix: str,
        owns_client: bool = True,
    ) -> None:
        self.url = redact(url)
        self._client: Any = client
        self._owns_client = owns_client
        self._prefix = keys.check_prefix(key_prefix)
        self._stale: dict[str, tuple[str, Any]] = {}
        # a cluster pipeline refuses scripts: their index updates go in a round trip first
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        self._closed = False
        self._create = client.register_script(keys.CREATE)
        self._append = client.register_script(keys.APPEND)
        self._update = client.register_script(keys.UPDATE)
        self._delete = client.register_script(keys.DELETE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str | None = None,
        client: redis.Redis | redis.cluster.RedisCluster | None = None,
        **redis_options: Any,
    ) -> RedisStore:
        """Open (lazily: no I/O here, except that the sync cluster client reads the slot map
        at once) a store on ``redis://`` / ``rediss://``, or on a Redis Cluster:
        ``redis+cluster://h1:p1,h2:p2/`` / ``rediss+cluster://…`` (any one reachable seed is
        enough; the client finds the other nodes and follows MOVED/ASK).

        Args:
            url: the Redis URL; ``?key_prefix=app:`` in it sets the key prefix too.
            key_prefix: prepended to every key, so applications can share a server
                (default ``convostore:``).
            client: a client of your own (``redis.Redis`` or
                ``redis.cluster.RedisCluster``, created with
                ``decode_responses=False``) instead of one made from the URL, which then
                only gives the key prefix (``redis+cluster://?key_prefix=app:``); the store
                does not close it.
            **redis_options: passed to ``redis.Redis.from_url`` or ``RedisCluster`` (e.g.
                ``socket_timeout``, ``max_connections``, ``retry``; by default 3 retries with
                jittered backoff on connection errors, 6 on a cluster, enough to ride out
                a failover that completes within about 3 s).
        """
        if redis_options.get("decode_responses"):
            raise ConfigurationError("the Redis store needs decode_responses=False")
        driver_url, in_url = keys.split_prefix(url)
        if key_prefix is not None and in_url is not None and key_prefix != in_url:
            raise ConfigurationError("key_prefix given both in the URL and as an option")
        prefix = keys.check_prefix(key_prefix or in_url or keys.DEFAULT_PREFIX)
        cluster = keys.is_cluster_url(url)
        if client is not None:
            kinds = (redis.Redis, redis.cluster.RedisCluster)
            if redis_options or not isinstance(client, kinds):
                raise ConfigurationError(
                    "client= takes a redis.Redis or redis.cluster.RedisCluster "
                    "client, and no other driver option"
                )
            return cls(client, url=url, key_prefix=prefix, owns_client=False)
        factory = redis.cluster.RedisCluster if cluster else redis.Redis
        keys.check_driver_options(factory, redis_options)
        # from_url gives no retry by default; with one, a connection broken by a server
        # restart is re-opened on the next command. Re-sending a write is safe: the version
        # check (or the idempotency key) makes a second run of an applied script a no-op.
        redis_options.setdefault(
            "retry",
            Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=6 if cluster else 3),
        )
        if cluster:
            seeds, settings = keys.cluster_settings(driver_url)
            node: Any = redis.cluster.ClusterNode  # the sync one has no annotations
            nodes = [node(host, port) for host, port in seeds]
            with translate_errors():  # the sync client reads the slot map here already
                made: Any = redis.cluster.RedisCluster(
                    startup_nodes=nodes, **{**settings, **redis_options}
                )
        else:
            made = redis.Redis.from_url(driver_url, **redis_options)
        return cls(made, url=url, key_prefix=prefix)

    def _run(self, script: Any, script_keys: list[str], args: list[Any]) -> Any:
        """EVALSHA straight on the client: a registered script's own call does more work per
        call. On NOSCRIPT (a restarted or flushed server) the script's call loads it."""
        try:
            return self._client.evalsha(script.sha, len(script_keys), *script_keys, *args)
        except redis.exceptions.NoScriptError:
            return script(keys=script_keys, args=args)

    def _keys(self, conversation_id: str) -> list[str]:
        return keys.conversation_keys(self._prefix, conversation_id)

    def _scoped(self, conversation_id: str, tenant: str, *commands: Any) -> list[Any]:
        """Run read commands (callables taking a pipeline) in one MULTI with the tenant check."""
        record_key = self._keys(conversation_id)[0]
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(record_key, ["tenant", "step_count", "turn_count"])
            for command in commands:
                command(pipe)
            found: list[Any] = pipe.execute()
        stored_tenant = found[0][0]
        if stored_tenant is None or stored_tenant != rules.dumps(tenant).encode():
            raise ConversationNotFound(conversation_id)
        try:
            counts = [int(found[0][1]), int(found[0][2])]
        except (TypeError, ValueError) as exc:
            raise CorruptRecordError(f"conversation {conversation_id!r} has bad counts") from exc
        return [*counts, *found[1:]]

    # ----------------------------------------------------------------- contract

    def create_conversation(
        self,
        record: ConversationRecord,
        *,
        turns: Sequence[TurnRecord] = (),
        steps: Sequence[StoredStep] = (),
    ) -> ConversationRecord:
        rules.check_new_conversation(record, turns, steps)
        fields = keys.record_fields(record)
        firsts = [len(steps) + 1] * len(turns)
        for step in reversed(steps):
            firsts[step.turn_seq - 1] = step.seq
        for index in range(len(turns) - 2, -1, -1):  # a turn without steps: its would-be seq
            firsts[index] = min(firsts[index], firsts[index + 1])
        used = [(t.idempotency_key, str(t.seq)) for t in turns if t.idempotency_key is not None]
        args: list[Any] = [keys.expire_ms(record), len(fields) // 2, *fields, len(turns)]
        args += [keys.turn_element(t, f) for t, f in zip(turns, firsts, strict=True)]
        args += [len(used), *(item for pair in used for item in pair)]
        args += [rules.dumps([s.turn_seq, s.payload]) for s in steps]
        with translate_errors():
            if not self._run(self._create, self._keys(record.id), args):
                raise ConversationExists(record.id)
            member = keys.index_member(record.created_at, record.id)
            with self._client.pipeline(transaction=False) as pipe:
                for index_key in keys.index_keys(self._prefix, record.tenant, record.user):
                    pipe.zadd(index_key, {member: 0})
                pipe.execute()
        return record

    def get_conversation(self, conversation_id: str, *, tenant: str) -> ConversationRecord:
        rules.check_scope(conversation_id, tenant)
        with translate_errors():
            raw = self._client.hgetall(self._keys(conversation_id)[0])
        if not raw or raw.get(b"tenant") != rules.dumps(tenant).encode():
            raise ConversationNotFound(conversation_id)
        return keys.decode_record(raw)

    def append_turn(self, commit: TurnCommit) -> AppendResult:
        encoded_steps = rules.check_commit_encoded(commit)
        new, turn = commit.record, commit.turn
        first = new.step_count - len(commit.steps) + 1
        args: list[Any] = [
            rules.dumps(new.tenant),
            str(commit.expected_version),
            turn.idempotency_key or "",
            keys.turn_element(turn, first),
            str(turn.seq),
            str(new.turn_count - 1),
            str(first - 1),
            *keys.append_values(new),
            *encoded_steps,
        ]
        with translate_errors():
            status = self._run(self._append, [*self._keys(new.id), self._pkey(new.id)], args)
        if status[0] == 0:
            raise ConversationNotFound(new.id)
        if status[0] == 1:
            return AppendResult(turn=keys.decode_turn(status[1]), created=False)
        if status[0] == 2:
            raise ConcurrentTurnError(
                new.id, expected_version=commit.expected_version, actual_version=int(status[1])
            )
        if status[0] == 4:
            raise ValidationError(f"commit for {new.id!r} does not continue the stored counts")
        return AppendResult(turn=turn, created=True)

    def find_turn(
        self, conversation_id: str, *, tenant: str, idempotency_key: str
    ) -> TurnRecord | None:
        rules.check_scope(conversation_id, tenant)
        rules.check_idempotency_key(idempotency_key)
        turns_key, _, idem_key = self._keys(conversation_id)[1:]
        with translate_errors():
            found = self._scoped(
                conversation_id, tenant, lambda p: p.hget(idem_key, idempotency_key)
            )
            if found[2] is None:
                return None
            raw: Any = self._client.lindex(turns_key, int(found[2]) - 1)
        return None if raw is None else keys.decode_turn(raw)

    def load_steps(
        self,
        conversation_id: str,
        *,
        tenant: str,
        after_seq: int = 0,
        newest: int | None = None,
        turn: int | None = None,
    ) -> list[StoredStep]:
        rules.check_load(conversation_id, tenant, after_seq=after_seq, newest=newest, turn=turn)
        _, turns_key, steps_key, _ = self._keys(conversation_id)
        with translate_errors():
            if newest is None and turn is None:
                found = self._scoped(
                    conversation_id, tenant, lambda p: p.lrange(steps_key, after_seq, -1)
                )
                return keys.decode_steps(conversation_id, after_seq + 1, found[2])
            if newest is not None and turn is None:
                quick = self._newest_at_once(conversation_id, tenant, newest, after_seq)
                if quick is not None:
                    return quick
            start, stop = after_seq + 1, None
            if turn is not None:
                found = self._scoped(
                    conversation_id, tenant, lambda p: p.lrange(turns_key, turn - 1, turn)
                )
                count, spans = found[0], keys.decode_spans(found[2])
                if not spans:
                    return []
                start = max(start, spans[0].first_step)
                stop = spans[1].first_step if len(spans) > 1 else count + 1
            if newest is not None:
                begin = self._newest_start(conversation_id, tenant, newest)
                start = max(start, begin[0])
                stop = begin[1] + 1 if stop is None else min(stop, begin[1] + 1)
            if stop is None or start >= stop:
                return []
            rows: Any = self._client.lrange(steps_key, start - 1, stop - 2)
        return keys.decode_steps(conversation_id, start, rows)

    def _newest_at_once(
        self, conversation_id: str, tenant: str, newest: int, after_seq: int
    ) -> list[StoredStep] | None:
        """``load_steps(newest=N)`` in one round trip: the turns tail and a steps tail long
        enough for a suffix of plain turns, read in one MULTI. None when the suffix starts
        before what was read (a long run of ``requires_action`` turns): then read again."""
        _, turns_key, steps_key, _ = self._keys(conversation_id)
        found = self._scoped(
            conversation_id,
            tenant,
            # enough turns when each has two steps or more (an input and an output);
            # shorter turns only cost the second, exact read
            lambda p: p.lrange(turns_key, -(newest // 2 + 2), -1),
            lambda p: p.lrange(steps_key, -(newest + _NEWEST_SLACK), -1),
        )
        count, turn_count, spans, rows = found[0], found[1], keys.decode_spans(found[2]), found[3]
        start = rules.newest_start(
            spans, step_count=count, newest=newest, complete=len(spans) >= turn_count
        )
        first_read = count - len(rows) + 1
        if start is None or start < first_read:
            return None
        start = max(start, after_seq + 1)
        return keys.decode_steps(conversation_id, start, rows[start - first_read :])

    def _newest_start(self, conversation_id: str, tenant: str, newest: int) -> list[int]:
        """[first seq to load, step count] for ``newest``, reading only the turns tail."""
        turns_key = self._keys(conversation_id)[1]
        fetch = 8
        while True:
            found = self._scoped(
                conversation_id, tenant, lambda p, tail=-fetch: p.lrange(turns_key, tail, -1)
            )
            count, turn_count, spans = found[0], found[1], keys.decode_spans(found[2])
            complete = len(spans) >= turn_count
            start = rules.newest_start(spans, step_count=count, newest=newest, complete=complete)
            if start is not None:
                return [start, count]
            fetch *= 4

    def load_turns(
        self, conversation_id: str, *, tenant: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TurnRecord]:
        rules.check_load(conversation_id, tenant, after_seq=after_seq, limit=limit)
        if limit == 0:
            self.get_conversation(conversation_id, tenant=tenant)
            return []
        stop = -1 if limit is None else after_seq + limit - 1
        turns_key = self._keys(conversation_id)[1]
        with translate_errors():
            found = self._scoped(
                conversation_id, tenant, lambda p: p.lrange(turns_key, after_seq, stop)
            )
        return [keys.decode_turn(raw) for raw in found[2]]

    def _scan(
        self, index: str, tenant: str | None, user: str | None, bound: bytes, want: int
    ) -> list[ConversationRecord]:
        """Up to ``want`` live records below ``bound`` in ``index``, newest first; dangling
        entries met on the way are removed from the index."""
        out: list[ConversationRecord] = []
        while len(out) < want:
            members: Any = self._client.zrange(
                # only as many as are still wanted: a page of 50 reads 51 records, not 200
                index,
                bound,
                "-",
                desc=True,
                bylex=True,
                offset=0,
                num=min(BATCH, want - len(out)),
            )
            if not members:
                break
            with self._client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(self._keys(keys.member_id(member))[0])
                raws: list[Any] = pipe.execute()
            dangling = []
            for member, raw in zip(members, raws, strict=True):
                record = keys.decode_record(raw) if raw else None
                if (
                    record is None
                    or (tenant is not None and record.tenant != tenant)
                    or keys.index_member(record.created_at, record.id).encode() != member
                ):
                    dangling.append(member)
                elif user is None or record.user == user:
                    out.append(record)
            if dangling:
                self._client.zrem(index, *dangling)
            bound = b"(" + members[-1]
        return out[:want]

    def list_conversations(
        self,
        *,
        tenant: str | None,
        user: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        rules.check_list(tenant, user, limit, cursor)
        bound = b"+"
        if cursor is not None:
            bound = b"(" + keys.index_member(*rules.decode_cursor(cursor)).encode()
        if tenant is None:
            index = f"{self._prefix}idx:all"
        else:
            index = keys.index_keys(self._prefix, tenant, user)[-1]
        with translate_errors():
            items = self._scan(index, tenant, user, bound, limit + 1)
        next_cursor = None
        if len(items) > limit:
            items = items[:limit]
            next_cursor = rules.encode_cursor(items[-1].created_at, items[-1].id)
        return Page(items=items, next_cursor=next_cursor)

    def update_conversation(self, record: ConversationRecord) -> ConversationRecord:
        rules.check_update(record)
        fields = keys.record_fields(record, rules.UPDATE_FIELDS)
        args: list[Any] = [rules.dumps(record.tenant), str(record.version - 1), len(fields) // 2]
        args += fields
        with translate_errors():
            status = self._run(
                self._update, [*self._keys(record.id), self._pkey(record.id)], args
            )
        if status[0] == 0:
            raise ConversationNotFound(record.id)
        if status[0] == 2:
            raise ConcurrentTurnError(
                record.id, expected_version=record.version - 1, actual_version=int(status[1])
            )
        self._expire_compactions(record)
        return keys.decode_record(status[1])

    def delete_conversation(self, conversation_id: str, *, tenant: str) -> bool:
        rules.check_scope(conversation_id, tenant)
        with translate_errors():
            return self._remove(conversation_id, tenant)

    def _remove(self, conversation_id: str, tenant: str) -> bool:
        doomed = [*self._keys(conversation_id), keys.tombstone_key(self._prefix, conversation_id)]
        doomed.append(self._pkey(conversation_id))
        raw = self._run(self._delete, doomed, [rules.dumps(tenant), uuid.uuid4().hex])
        if not raw:
            return False
        fields = dict(zip(raw[::2], raw[1::2], strict=True))
        try:
            user = rules.loads(fields.get(b"user", b"null"))
            created_at = datetime.fromisoformat(rules.loads(fields[b"created_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecordError(f"deleted conversation had a bad record: {exc}") from exc
        member = keys.index_member(created_at, conversation_id)
        with self._client.pipeline(transaction=False) as pipe:
            for index in keys.index_keys(self._prefix, tenant, user):
                pipe.zrem(index, member)
            pipe.delete(compaction_key(self._prefix, conversation_id))
            in_flight = [fields[name] for name in (b"_pm", b"_ps") if fields.get(name)]
            for index in keys.pending_index_keys(self._prefix, tenant) if in_flight else ():
                pipe.zrem(index, *in_flight)
            pipe.execute()
        return True

    def purge(
        self,
        *,
        now: datetime | None = None,
        older_than: datetime | None = None,
        tenant: str | None = None,
        dry_run: bool = False,
    ) -> list[ConversationRecord]:
        moment = rules.check_purge(now, older_than, tenant)
        index = f"{self._prefix}idx:all" if tenant is None else f"{self._prefix}idx:t:{tenant}"
        doomed: list[ConversationRecord] = []
        bound = b"+"
        with translate_errors():
            # Every listed conversation is read (purge is an operations sweep, not a hot
            # path), a batch at a time: memory grows with what is purged, not with the store.
            while True:
                records = self._scan(index, tenant, None, bound, BATCH)
                for record in records:
                    if rules.is_purgeable(record, now=moment, older_than=older_than) and (
                        dry_run or self._remove(record.id, record.tenant)
                    ):
                        doomed.append(record)
                if len(records) < BATCH:
                    return doomed
                last = records[-1]
                bound = b"(" + keys.index_member(last.created_at, last.id).encode()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._owns_client:
                self._client.close()

"""Redis specifics: key layout, prefixes, TTL, script cache loss, dangling index entries,
reconnection after a server restart."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

import convostore as cs
from convostore._async.redis_store import AsyncRedisStore
from convostore._redis_keys import index_member
from convostore._sync.redis_store import RedisStore
from convostore.models import utcnow
from convostore.testing import (
    add_turn,
    make_commit,
    make_outbox_item,
    make_pending,
    make_record,
    model_step,
    user_step,
)


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    opened = cs.open_store(redis_url, key_prefix=redis_prefix)
    assert isinstance(opened, RedisStore)
    yield opened
    opened.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _conversation_keys(raw: redis.Redis, prefix: str, conversation_id: str) -> list[bytes]:
    return sorted(raw.scan_iter(match=f"{prefix}{{{conversation_id}}}*", count=1000))


def test_keys_of_a_conversation_share_one_slot(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    record = store.create_conversation(make_record(user="u1"))
    add_turn(store, record, idempotency_key="k")
    found = _conversation_keys(raw, redis_prefix, record.id)
    assert len(found) == 4  # record, turns, steps, idempotency keys
    assert len({key_slot(key) for key in found}) == 1
    assert all(f"{{{record.id}}}".encode() in key for key in found)


def test_key_prefixes_isolate_applications(
    redis_url: str, redis_prefix: str, raw: redis.Redis
) -> None:
    first = cs.open_store(redis_url, key_prefix=redis_prefix + "a:")
    second = cs.open_store(redis_url, key_prefix=redis_prefix + "b:")
    try:
        record = make_record(user="u1")
        first.create_conversation(record)
        second.create_conversation(record.model_copy(update={"model": "other"}))
        add_turn(first, record)
        assert second.get_conversation(record.id, tenant=record.tenant).model == "other"
        assert second.load_steps(record.id, tenant=record.tenant) == []
        assert second.delete_conversation(record.id, tenant=record.tenant)
        assert first.get_conversation(record.id, tenant=record.tenant).turn_count == 1
        listed = first.list_conversations(tenant=record.tenant, user="u1").items
        assert [r.id for r in listed] == [record.id]
        assert second.list_conversations(tenant=record.tenant).items == []
    finally:
        first.close()
        second.close()


def test_ttl_applies_to_every_key(store: RedisStore, raw: redis.Redis, redis_prefix: str) -> None:
    expires = utcnow().replace(microsecond=0) + timedelta(hours=1)
    record = store.create_conversation(make_record(expires_at=expires))
    record = add_turn(store, record, idempotency_key="k")
    found = _conversation_keys(raw, redis_prefix, record.id)
    assert len(found) == 4
    wanted = int(expires.timestamp() * 1000)
    assert [raw.pexpiretime(key) for key in found] == [wanted] * 4

    later = expires + timedelta(days=1)
    record = store.update_conversation(
        record.model_copy(update={"version": record.version + 1, "expires_at": later})
    )
    add_turn(store, record)
    assert [raw.pexpiretime(key) for key in found] == [int(later.timestamp() * 1000)] * 4

    current = store.get_conversation(record.id, tenant=record.tenant)
    store.update_conversation(
        current.model_copy(update={"version": current.version + 1, "expires_at": None})
    )
    assert [raw.ttl(key) for key in found] == [-1] * 4


def test_pending_turn_shares_the_slot_and_the_ttl(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    expires = utcnow().replace(microsecond=0) + timedelta(hours=1)
    record = store.create_conversation(make_record(expires_at=expires))
    pending = make_pending(record)
    store.begin_turn(pending)
    key = f"{redis_prefix}{{{record.id}}}:p".encode()
    found = _conversation_keys(raw, redis_prefix, record.id)
    assert key in found and len({key_slot(k) for k in found}) == 1
    assert raw.pexpiretime(key) == int(expires.timestamp() * 1000)
    record = store.update_conversation(
        record.model_copy(update={"version": record.version + 1, "expires_at": None})
    )
    assert raw.ttl(key) == -1
    index = f"{redis_prefix}pidx:t:{record.tenant}"
    assert raw.zcard(index) == 1
    record = add_turn(store, record, idempotency_key=pending.idempotency_key)
    assert not raw.exists(key)
    # the commit leaves its index entry to the next begin, which hands it back; the same
    # worker's next write on the conversation removes it in passing (no round trip of its own)
    assert raw.zcard(index) == 1
    following = make_pending(record)
    store.begin_turn(following)
    assert raw.zcard(index) == 2  # listed before the pending record was written
    named = following.model_copy(update={"interaction_id": "v1_named"})
    store.update_pending(named, owner=following.lease_owner)
    assert raw.zrange(index, 0, -1) == [index_member(following.created_at, record.id).encode()]
    add_turn(store, record, idempotency_key=following.idempotency_key)
    assert raw.zcard(index) == 1
    assert store.list_pending(tenant=record.tenant) == []
    assert raw.zcard(index) == 0  # listing removed it
    store.begin_turn(make_pending(store.get_conversation(record.id, tenant=record.tenant)))
    assert store.delete_conversation(record.id, tenant=record.tenant)
    assert raw.zcard(index) == 0  # and a delete removes the entry of its turn in flight


def test_dangling_pending_index_entries_are_skipped_and_removed(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    tenant = make_record().tenant
    made = []
    for _ in range(3):
        record = store.create_conversation(make_record(tenant=tenant))
        made.append(make_pending(record))
        store.begin_turn(made[-1])
    # as if the conversation's keys expired, or a process died before cleaning the index
    raw.delete(f"{redis_prefix}{{{made[1].conversation_id}}}:p")
    index = f"{redis_prefix}pidx:t:{tenant}"
    assert raw.zcard(index) == 3
    assert store.list_pending(tenant=tenant) == [made[0], made[2]]
    assert raw.zcard(index) == 2
    # a later turn in flight on that conversation is listed once, under its own entry
    again = make_pending(store.get_conversation(made[1].conversation_id, tenant=tenant))
    store.begin_turn(again)
    raw.zadd(index, {f"0000000000000000001|{again.conversation_id}": 0})  # a stale entry
    assert store.list_pending(tenant=tenant) == [made[0], made[2], again]
    assert raw.zcard(index) == 3
    assert store.release_pending(
        made[0].conversation_id, tenant=tenant, idempotency_key=made[0].idempotency_key
    )
    assert store.release_pending(
        again.conversation_id, tenant=tenant, idempotency_key=again.idempotency_key
    )
    assert store.delete_conversation(made[2].conversation_id, tenant=tenant)
    assert raw.zcard(index) == 0
    everywhere = raw.zrange(f"{redis_prefix}pidx:all", 0, -1)
    assert not [
        m for m in everywhere if m.split(b"|")[1].decode() in {p.conversation_id for p in made[::2]}
    ]


def test_outbox_keys_share_one_slot(store: RedisStore, raw: redis.Redis, redis_prefix: str) -> None:
    item = make_outbox_item()
    store.add_outbox([item])
    found = sorted(raw.scan_iter(match=f"{redis_prefix}{{outbox}}*", count=1000))
    assert len(found) == 2 and len({key_slot(key) for key in found}) == 1
    raw.script_flush()
    store.update_outbox(item.model_copy(update={"attempts": 3}))
    assert store.list_outbox(tenant=item.tenant)[0].attempts == 3
    # an id left in the due set without its item (removed by another tool) is dropped
    raw.hdel(found[0] if found[0].endswith(b"items") else found[1], item.id)
    assert store.list_outbox(tenant=item.tenant) == []
    assert raw.zcard(f"{redis_prefix}{{outbox}}:due") == 0


def test_pending_scripts_recover_from_a_flushed_script_cache(
    store: RedisStore, raw: redis.Redis
) -> None:
    record = store.create_conversation(make_record())
    pending = make_pending(record, lease_expires_at=utcnow() - timedelta(seconds=1))
    raw.script_flush()
    store.begin_turn(pending)
    raw.script_flush()
    now = utcnow()
    claimed = store.claim_pending(
        record.id, tenant=record.tenant, owner="w2", now=now, lease_expires_at=now
    )
    assert claimed is not None and claimed.lease_owner == "w2"


def test_append_recovers_from_a_flushed_script_cache(store: RedisStore, raw: redis.Redis) -> None:
    record = add_turn(store, store.create_conversation(make_record()))
    raw.script_flush()
    record = add_turn(store, record)
    raw.script_flush()
    store.update_conversation(record.model_copy(update={"version": record.version + 1}))
    assert store.get_conversation(record.id, tenant=record.tenant).turn_count == 2


def test_dangling_index_entries_are_skipped_and_removed(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    tenant = make_record().tenant
    base = utcnow()
    made = [
        store.create_conversation(
            make_record(tenant=tenant, created_at=base + timedelta(seconds=n))
        )
        for n in range(4)
    ]
    # as if a process died after removing a conversation but before its index entries
    for record in made[1:3]:
        raw.delete(*_conversation_keys(raw, redis_prefix, record.id))
    index = f"{redis_prefix}idx:t:{tenant}"
    assert raw.zcard(index) == 4
    first = store.list_conversations(tenant=tenant, limit=1)
    assert [r.id for r in first.items] == [made[3].id]
    assert first.next_cursor is not None
    rest = store.list_conversations(tenant=tenant, limit=1, cursor=first.next_cursor)
    assert [r.id for r in rest.items] == [made[0].id]
    assert rest.next_cursor is None
    assert raw.zcard(index) == 2
    everywhere = store.purge(tenant=None, older_than=base - timedelta(days=1), dry_run=True)
    assert not {r.id for r in everywhere} & {r.id for r in made}


def test_corrupt_data_raises(store: RedisStore, raw: redis.Redis, redis_prefix: str) -> None:
    record = add_turn(store, store.create_conversation(make_record()))
    steps_key = f"{redis_prefix}{{{record.id}}}:s"
    raw.rpush(steps_key, b"{not json")
    with pytest.raises(cs.CorruptRecordError):
        store.load_steps(record.id, tenant=record.tenant)
    raw.hset(f"{redis_prefix}{{{record.id}}}:c", "model", b"[unterminated")
    with pytest.raises(cs.CorruptRecordError):
        store.get_conversation(record.id, tenant=record.tenant)


def test_options_are_checked_without_io() -> None:
    store = cs.open_store("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in store.url and "***" in store.url
    store.close()
    with pytest.raises(cs.ConfigurationError):
        cs.open_store("redis://127.0.0.1:1/0", key_prefix="{app}:")
    with pytest.raises(cs.ConfigurationError):
        cs.open_store("redis://127.0.0.1:1/0", decode_responses=True)
    with pytest.raises(cs.ConfigurationError):
        cs.open_store("redis://127.0.0.1:1/0?key_prefix=a:", key_prefix="b:")


def test_key_prefix_in_the_url(redis_url: str, redis_prefix: str) -> None:
    separator = "&" if "?" in redis_url else "?"
    in_url = cs.open_store(f"{redis_url}{separator}key_prefix={redis_prefix}")
    by_option = cs.open_store(redis_url, key_prefix=redis_prefix)
    try:
        record = in_url.create_conversation(make_record())
        assert by_option.get_conversation(record.id, tenant=record.tenant) == record
    finally:
        in_url.close()
        by_option.close()


def test_newest_reads_only_the_tail(store: RedisStore) -> None:
    record = store.create_conversation(make_record())
    for n in range(40):
        record = add_turn(store, record, [user_step(f"q{n}"), model_step(f"a{n}")])
    steps = store.load_steps(record.id, tenant=record.tenant, newest=3)
    assert [s.seq for s in steps] == [77, 78, 79, 80]
    steps = store.load_steps(record.id, tenant=record.tenant, newest=61)
    assert steps[0].seq == 19 and len(steps) == 62


# --------------------------------------------------------------------------- a private server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.02)
            raise RuntimeError("private redis-server did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[_PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = _PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.reliability
def test_store_reconnects_after_a_server_restart(private_redis: _PrivateRedis) -> None:
    store = cs.open_store(f"redis://127.0.0.1:{private_redis.port}/0")
    try:
        first = store.create_conversation(make_record())
        private_redis.stop()
        private_redis.start()  # an empty server: nothing was saved
        with pytest.raises(cs.ConversationNotFound):
            store.get_conversation(first.id, tenant=first.tenant)
        private_redis.stop()
        with pytest.raises(cs.StoreUnavailable) as info:
            store.get_conversation(first.id, tenant=first.tenant)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
        private_redis.start()
        record = add_turn(store, store.create_conversation(make_record()))
        assert store.get_conversation(record.id, tenant=record.tenant) == record
    finally:
        store.close()


@pytest.mark.reliability
def test_async_store_reconnects_after_a_server_restart(private_redis: _PrivateRedis) -> None:
    async def main() -> None:
        store = cs.open_async_store(f"redis://127.0.0.1:{private_redis.port}/0")
        assert isinstance(store, AsyncRedisStore)
        try:
            record = await store.create_conversation(make_record())
            private_redis.stop()
            private_redis.start()
            with pytest.raises(cs.ConversationNotFound):
                await store.get_conversation(record.id, tenant=record.tenant)
            record = await store.create_conversation(make_record())
            commit = make_commit(record, [user_step("back")])
            assert (await store.append_turn(commit)).created
            private_redis.stop()
            private_redis.start()
            # a pipelined read first after the restart
            with pytest.raises(cs.ConversationNotFound):
                await store.load_steps(record.id, tenant=record.tenant)
            page = await store.list_conversations(tenant=record.tenant)
            assert page.items == []
        finally:
            await store.aclose()

    asyncio.run(main())


# --------------------------------------------------------------------------- lost replies


class _ReplyDroppingProxy:
    """Forwards to Redis; once armed, lets the next EVALSHA through but closes the client's
    connection instead of delivering the reply (the script ran, the client never heard)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.armed = threading.Event()
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                swallow = threading.Event()
                for args in ((client, server, swallow, True), (server, client, swallow, False)):
                    threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, swallow: threading.Event, up: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if up and self.armed.is_set() and b"EVALSHA" in data.upper():
                    self.armed.clear()
                    swallow.set()
                elif not up and swallow.is_set():
                    self.dropped += 1
                    break
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_writes_whose_reply_was_lost_are_not_reported_as_failures(
    redis_url: str, redis_prefix: str
) -> None:
    kwargs = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    host, port = kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379))
    proxy = _ReplyDroppingProxy((host, port))
    db = kwargs.get("db", 0)
    store = cs.open_store(f"redis://127.0.0.1:{proxy.port}/{db}", key_prefix=redis_prefix)
    try:
        store.list_conversations(tenant="warm-up")  # load nothing, open the connection
        record = make_record()
        proxy.armed.set()
        store.create_conversation(record)  # re-sent by redis-py: not ConversationExists
        commit = make_commit(record, [user_step("q"), model_step("a")])
        proxy.armed.set()
        assert store.append_turn(commit).created  # re-sent: not ConcurrentTurnError
        changed = commit.record.model_copy(update={"version": 2, "model": "other"})
        proxy.armed.set()
        assert store.update_conversation(changed).model == "other"  # re-sent: no conflict
        assert proxy.dropped == 3
        assert store.get_conversation(record.id, tenant=record.tenant) == changed
        assert len(store.load_steps(record.id, tenant=record.tenant)) == 2
        # a second call by the caller is not a re-send: the usual errors
        with pytest.raises(cs.ConversationExists):
            store.create_conversation(record)
        with pytest.raises(cs.ConcurrentTurnError):
            store.append_turn(commit)
        with pytest.raises(cs.ConcurrentTurnError):
            store.update_conversation(changed)
        proxy.armed.set()
        assert store.delete_conversation(record.id, tenant=record.tenant) is True
        assert proxy.dropped == 4
        assert store.list_conversations(tenant=record.tenant).items == []
        assert store.delete_conversation(record.id, tenant=record.tenant) is False
    finally:
        store.close()
        proxy.close()

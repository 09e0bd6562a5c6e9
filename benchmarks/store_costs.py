"""What one append and one 10,000-step load cost on each store, against the driver's floor.

    python benchmarks/store_costs.py [memory] [redis] ...

Redis URL from CONVOSTORE_BENCH_REDIS (default redis://127.0.0.1:6379/0); keys live under a
prefix of their own and are deleted afterwards. SQL servers from CONVOSTORE_BENCH_POSTGRES /
CONVOSTORE_BENCH_MYSQL (an admin URL; a scratch database is created and dropped). Add a
``bench_<backend>`` function for a new backend and list it in ``BENCHES``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import convostore as cs
from convostore._redis_keys import conversation_keys
from convostore.models import ConversationRecord, StoredStep, TurnRecord
from convostore.testing import make_commit, make_record, model_step, user_step

STEPS = 10_000
APPENDS = 300


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Best (minimum) seconds of ``repeat`` calls: on a shared machine the minimum is the
    stable estimate of what the code costs; the rest is other processes' noise."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def history(record: ConversationRecord) -> tuple[list[TurnRecord], list[StoredStep]]:
    """STEPS steps in STEPS // 2 turns, about 300 bytes of JSON each."""
    turns: list[TurnRecord] = []
    steps: list[StoredStep] = []
    text = "The quick brown fox jumps over the lazy dog; é 🐈. " * 5
    current = record
    for n in range(STEPS // 2):
        commit = make_commit(current, [user_step(f"{n} {text}"), model_step(f"{n} {text}")])
        turns.append(commit.turn)
        steps.extend(commit.steps)
        current = commit.record
    return turns, steps


def measure_store(store: Any) -> tuple[dict[str, float], ConversationRecord]:
    """The store's costs, and the 10,000-step conversation it measured them on."""
    base = make_record()
    turns, steps = history(base)
    record = base.model_copy(update={"turn_count": len(turns), "step_count": len(steps)})
    store.create_conversation(record, turns=turns, steps=steps)
    del turns, steps  # a large live heap makes every measurement below pay for GC passes
    gc.collect()
    assert len(store.load_steps(record.id, tenant=record.tenant)) == STEPS
    load = timed(lambda: store.load_steps(record.id, tenant=record.tenant), 15)
    newest = timed(lambda: store.load_steps(record.id, tenant=record.tenant, newest=20), 50)

    current = store.create_conversation(make_record())
    commits = []
    for _ in range(APPENDS):
        commit = make_commit(current, [user_step("hello"), model_step("hi there")])
        commits.append(commit)
        current = commit.record
    samples = []
    for commit in commits:
        start = time.perf_counter()
        store.append_turn(commit)
        samples.append(time.perf_counter() - start)
    costs = {"load_10k": load, "newest_20": newest, "append": statistics.median(samples)}
    return costs, record


def bench_memory() -> dict[str, float]:
    store = cs.open_store("memory://")
    return measure_store(store)[0]


def bench_redis() -> dict[str, float]:
    import redis

    url = os.environ.get("CONVOSTORE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    prefix = f"csbench{uuid.uuid4().hex[:8]}:"
    raw = redis.Redis.from_url(url)
    store = cs.open_store(url, key_prefix=prefix)
    try:
        results, record = measure_store(store)
        # the floor reads the very list the store keeps the conversation's steps in
        key = conversation_keys(prefix, record.id)[2]
        results["floor_lrange_10k"] = timed(lambda: raw.lrange(key, 0, -1), 15)
        results["floor_lrange_loads_10k"] = timed(
            lambda: [json.loads(item) for item in raw.lrange(key, 0, -1)], 15
        )
        key = f"{prefix}floor"
        pair = [json.dumps(user_step("hello")), json.dumps(model_step("hi there"))]
        results["floor_rpush_2"] = timed(lambda: raw.rpush(key, *pair), APPENDS)
        return results
    finally:
        store.close()
        for key in raw.scan_iter(match=f"{prefix}*", count=1000):
            raw.delete(key)
        raw.close()


def _sql_floor(url: str, record: ConversationRecord) -> dict[str, float]:
    """The bare driver: one range SELECT of the payload text, and one two-row INSERT."""
    import sqlalchemy as sa

    from convostore._sql import normalize_url

    engine = sa.create_engine(normalize_url(url, is_async=False))
    payload = "payload::text" if engine.dialect.name == "postgresql" else "payload"
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    select = f"SELECT {payload} FROM steps WHERE conversation_id = {mark} ORDER BY seq"
    raw: Any = engine.raw_connection()
    try:
        cursor = raw.cursor()

        def read() -> list[Any]:
            cursor.execute(select, (record.id,))
            return list(cursor.fetchall())

        def read_loads() -> list[Any]:
            return [json.loads(row[0]) for row in read()]

        fake = f"floor-{uuid.uuid4().hex}"
        seq = iter(range(1, 10**9))
        insert = (
            f"INSERT INTO steps (conversation_id, seq, turn_seq, type, payload) "
            f"VALUES ({mark}, {mark}, 1, 'user_input', {mark})"
        )
        pair = [json.dumps(user_step("hello")), json.dumps(model_step("hi there"))]
        cursor.execute(
            "INSERT INTO conversations (id, tenant, mode, model, config, version, turn_count, "
            "step_count, metadata, created_at, updated_at) VALUES "
            f"({mark}, 'floor', 'auto', 'm', '{{}}', 0, 0, 0, '{{}}', {mark}, {mark})",
            (fake, record.created_at.replace(tzinfo=None), record.created_at.replace(tzinfo=None)),
        )
        raw.commit()

        def write() -> None:
            cursor.executemany(insert, [(fake, next(seq), text) for text in pair])
            raw.commit()

        results = {
            "floor_select_10k": timed(read, 15),
            "floor_select_loads_10k": timed(read_loads, 15),
            "floor_insert_2": timed(write, APPENDS),
        }
        cursor.execute(f"DELETE FROM steps WHERE conversation_id = {mark}", (fake,))
        cursor.execute(f"DELETE FROM conversations WHERE id = {mark}", (fake,))
        raw.commit()
        return results
    finally:
        raw.close()
        engine.dispose()


def _bench_sql(url: str) -> dict[str, float]:
    from convostore._migrate import upgrade

    upgrade(url)
    store = cs.open_store(url)
    try:
        results, record = measure_store(store)
        results.update(_sql_floor(url, record))
        return results
    finally:
        store.close()


def bench_sqlite() -> dict[str, float]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return _bench_sql(f"sqlite:///{folder}/bench.db")


def _scratch_database(server: str, create: str, drop: str) -> Callable[[], dict[str, float]]:
    def bench() -> dict[str, float]:
        import sqlalchemy as sa

        from convostore._sql import normalize_url

        name = f"convostore_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(
            normalize_url(server, is_async=False), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text(create.format(name)))
        try:
            return _bench_sql(sa.make_url(server).set(database=name).render_as_string(False))
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(drop.format(name)))
            admin.dispose()

    return bench


bench_postgresql = _scratch_database(
    os.environ.get("CONVOSTORE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"),
    'CREATE DATABASE "{}"',
    'DROP DATABASE IF EXISTS "{}" WITH (FORCE)',
)
bench_mariadb = _scratch_database(
    os.environ.get("CONVOSTORE_BENCH_MYSQL", "mysql://root@127.0.0.1:3306/mysql"),
    "CREATE DATABASE `{}` CHARACTER SET utf8mb4",
    "DROP DATABASE IF EXISTS `{}`",
)


BENCHES: dict[str, Callable[[], dict[str, float]]] = {
    "memory": bench_memory,
    "redis": bench_redis,
    "sqlite": bench_sqlite,
    "postgresql": bench_postgresql,
    "mariadb": bench_mariadb,
}


def main(argv: list[str]) -> int:
    for name in argv or list(BENCHES):
        for metric, seconds in BENCHES[name]().items():
            print(f"{name:10} {metric:24} {seconds * 1000:9.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The SQL store's dialect traps on real SQLite, PostgreSQL and MariaDB.

The whole contract is checked by tests/test_store_conformance.py; this module covers what is
specific to SQL: JSONB's refusals, MySQL ids, SQLite locking across processes, connections
killed by the server, error translation and the asyncio flavour.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import convostore as cs
from convostore._migrate import upgrade
from convostore._sql import normalize_url
from convostore.testing import add_turn, make_commit, make_record, model_step, new_id, user_step

DIALECTS = ["sqlite", "postgresql", "mariadb"]

# Payloads JSONB cannot keep as they are, plus ones it can, to check both paths.
TRAPS: list[dict[str, Any]] = [
    {"type": "function_call", "id": "c1", "name": "f", "arguments": {"q": "a\u0000b"}},
    {"type": "user_input", "content": [{"type": "text", "text": "\u0000"}], "k\u0000": 1},
    {"type": "model_output", "floats": [1e16, 1.5e-07, -0.0, 1e300, 5e-324, 2.0, 0.1]},
    {"type": "model_output", "ints": [10**16, -(10**18), 0], "sig": "1e5e7"},
    {"type": "x_unknown", "text": "Grüße 🐈‍⬛ \u2028", "nested": {"a": [None, True, {}]}},
]


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sql') / 'store.db'}"


@pytest.fixture(scope="module")
def migrated_postgres(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="module")
def migrated_mysql(mysql_url: str) -> str:
    upgrade(mysql_url)
    return mysql_url


@pytest.fixture(params=DIALECTS)
def url(request: pytest.FixtureRequest) -> str:
    name = {"sqlite": "sqlite_url", "postgresql": "migrated_postgres"}.get(
        request.param, "migrated_mysql"
    )
    return str(request.getfixturevalue(name))


@pytest.fixture
def store(url: str) -> Iterator[Any]:
    opened = cs.open_store(url)
    yield opened
    opened.close()


def _raw(url: str) -> sa.Engine:
    return sa.create_engine(normalize_url(url, is_async=False), poolclass=sa.NullPool)


# --------------------------------------------------------------------------- JSON traps


def test_trap_payloads_round_trip(store: Any) -> None:
    record = store.create_conversation(make_record())
    after = add_turn(store, record, TRAPS)
    loaded = store.load_steps(record.id, tenant=record.tenant)
    assert [s.payload for s in loaded] == TRAPS
    floats = loaded[2].payload["floats"]
    assert all(type(v) is float for v in floats)
    assert str(floats[2]) == "-0.0"
    assert all(type(v) is int for v in loaded[3].payload["ints"])
    # and through create_conversation (fork/import path) too
    copy = make_record(tenant=record.tenant, turn_count=1, step_count=len(TRAPS))
    turns = store.load_turns(record.id, tenant=record.tenant)
    store.create_conversation(
        copy,
        turns=[t.model_copy(update={"conversation_id": copy.id}) for t in turns],
        steps=[s.model_copy(update={"conversation_id": copy.id}) for s in loaded],
    )
    assert [s.payload for s in store.load_steps(copy.id, tenant=copy.tenant)] == TRAPS
    assert after.step_count == len(TRAPS)


def test_postgresql_keeps_safe_payloads_in_jsonb(migrated_postgres: str) -> None:
    store = cs.open_store(migrated_postgres)
    record = store.create_conversation(make_record())
    add_turn(store, record, [*TRAPS, user_step("plain")])
    store.close()
    engine = _raw(migrated_postgres)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT seq, payload IS NOT NULL, payload_text IS NOT NULL, "
                "jsonb_typeof(payload) FROM steps WHERE conversation_id = :c ORDER BY seq"
            ),
            {"c": record.id},
        ).all()
    engine.dispose()
    # NUL strings and exponent floats go to text; the rest stays queryable JSONB
    assert [(r[1], r[2]) for r in rows] == [
        (False, True),
        (False, True),
        (False, True),
        (True, False),
        (True, False),
        (True, False),
    ]
    assert rows[-1][3] == "object"


def test_metadata_nul_on_postgresql_is_refused_cleanly(migrated_postgres: str) -> None:
    store = cs.open_store(migrated_postgres)
    record = make_record(metadata={"note": "a\u0000b"})
    with pytest.raises(cs.ValidationError) as info:
        store.create_conversation(record)
    assert isinstance(info.value.__cause__, sa.exc.DataError)
    with pytest.raises(cs.ConversationNotFound):
        store.get_conversation(record.id, tenant=record.tenant)
    store.close()


def test_corrupt_step_row_raises(sqlite_url: str) -> None:
    store = cs.open_store(sqlite_url)
    record = store.create_conversation(make_record())
    add_turn(store, record)
    engine = _raw(sqlite_url)
    for garbage in ("{not json", "[1, 2]", None, '{"type": "x"} trailing', '{"type": 3}'):
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE steps SET payload = :p WHERE conversation_id = :c AND seq = 2"),
                {"c": record.id, "p": garbage},
            )
        # never skipped: the whole read fails, naming the row
        with pytest.raises(cs.CorruptRecordError, match="step 2"):
            store.load_steps(record.id, tenant=record.tenant)
    assert [s.seq for s in store.load_steps(record.id, tenant=record.tenant, newest=0)] == []
    engine.dispose()
    store.close()


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def test_mariadb_keeps_deep_steps_as_text(migrated_mysql: str) -> None:
    store = cs.open_store(migrated_mysql)
    record = store.create_conversation(make_record())
    payloads = [{"type": "deep", "v": _nested(60)}, {"type": "shallow", "v": _nested(20)}]
    add_turn(store, record, payloads)
    assert [s.payload for s in store.load_steps(record.id, tenant=record.tenant)] == payloads
    engine = _raw(migrated_mysql)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT payload IS NULL, payload_text IS NULL FROM steps "
                "WHERE conversation_id = :c ORDER BY seq"
            ),
            {"c": record.id},
        ).all()
    engine.dispose()
    # past MariaDB's json_valid() depth the step is kept as text; the rest stays JSON
    assert [tuple(r) for r in rows] == [(1, 0), (0, 1)]
    # settings live in JSON columns only: too deep is refused, nothing written
    deep = make_record(metadata={"v": _nested(60)})
    with pytest.raises(cs.ValidationError):
        store.create_conversation(deep)
    with pytest.raises(cs.ConversationNotFound):
        store.get_conversation(deep.id, tenant=deep.tenant)
    store.close()


# --------------------------------------------------------------------------- MySQL ids


def test_mysql_long_ids_and_case_sensitive(migrated_mysql: str) -> None:
    store = cs.open_store(migrated_mysql)
    tenant = "T" + "x" * 199
    user = "U" + "y" * 199
    upper = store.create_conversation(make_record(id="A" * 200, tenant=tenant, user=user))
    lower = store.create_conversation(make_record(id="a" * 200, tenant=tenant, user=user))
    add_turn(store, upper, idempotency_key="Key-1")
    add_turn(store, lower, idempotency_key="key-1")
    page = store.list_conversations(tenant=tenant, user=user)
    assert {r.id for r in page.items} == {upper.id, lower.id}
    with pytest.raises(cs.ConversationNotFound):
        store.get_conversation(upper.id, tenant=tenant.lower())
    assert store.find_turn(upper.id, tenant=tenant, idempotency_key="key-1") is None
    assert store.delete_conversation(upper.id, tenant=tenant)
    assert store.get_conversation(lower.id, tenant=tenant).turn_count == 1
    store.delete_conversation(lower.id, tenant=tenant)
    store.close()


# --------------------------------------------------------------------------- SQLite processes


def _race(url: str, conversation_id: str, tenant: str, rounds: int, barrier: Any, out: Any) -> None:
    import convostore as cs
    from convostore.testing import make_commit, make_record, model_step, user_step

    store = cs.open_store(url)
    results: list[str] = []
    barrier.wait()
    try:
        store.create_conversation(make_record(id=conversation_id, tenant=tenant))
        results.append("created")
    except cs.ConversationExists:
        results.append("exists")
    for _ in range(rounds):
        barrier.wait()
        record = store.get_conversation(conversation_id, tenant=tenant)
        barrier.wait()
        try:
            store.append_turn(make_commit(record, [user_step("u"), model_step("m")]))
            results.append("won")
        except cs.ConcurrentTurnError:
            results.append("conflict")
        except Exception as exc:
            results.append(f"{type(exc).__name__}: {exc}")
    store.close()
    out.put(results)


@pytest.mark.reliability
def test_two_processes_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"  # a new file: both processes also migrate it
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2, timeout=60), ctx.Queue()
    cid, tenant, rounds = new_id("c"), new_id("t"), 8
    procs = [
        ctx.Process(target=_race, args=(url, cid, tenant, rounds, barrier, out)) for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert sorted(r[0] for r in results) == ["created", "exists"]
    for index in range(1, rounds + 1):
        assert sorted(r[index] for r in results) == ["conflict", "won"], results
    store = cs.open_store(url)
    record = store.get_conversation(cid, tenant=tenant)
    assert (record.version, record.turn_count, record.step_count) == (rounds, rounds, 2 * rounds)
    assert [s.seq for s in store.load_steps(cid, tenant=tenant)] == list(range(1, 2 * rounds + 1))
    store.close()


def test_sqlite_memory_url_works() -> None:
    store = cs.open_store("sqlite:///:memory:")
    record = store.create_conversation(make_record())
    add_turn(store, record)
    assert len(store.load_steps(record.id, tenant=record.tenant)) == 2
    store.close()

    async def async_flavour() -> None:
        astore = cs.open_async_store("sqlite:///:memory:")
        await astore.create_conversation(record)
        assert await astore.get_conversation(record.id, tenant=record.tenant) == record
        await astore.aclose()

    asyncio.run(async_flavour())


def test_unknown_option_is_configuration_error(sqlite_url: str) -> None:
    with pytest.raises(cs.ConfigurationError, match="pool_sise"):
        cs.open_store(sqlite_url, pool_sise=3)
    store = cs.open_store(sqlite_url, engine_options={"pool_size": 2}, echo=False)
    assert store.list_conversations(tenant=new_id("t")).items == []
    store.close()


# --------------------------------------------------------------------------- server restarts


def _kill_connections(url: str) -> int:
    engine = sa.create_engine(
        normalize_url(url, is_async=False), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            killed = conn.execute(
                sa.text(
                    # the timeout waits until the backend is gone (a connection killed
                    # while it sat in the pool, not one killed under the next statement)
                    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        else:
            ids = conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                )
            ).scalars()
            killed = 0
            for ident in list(ids):
                conn.execute(sa.text(f"KILL {int(ident)}"))
                killed += 1
    engine.dispose()
    return int(killed)


@pytest.mark.reliability
@pytest.mark.parametrize("server", ["migrated_postgres", "migrated_mysql"])
def test_connection_survives_server_killing_it(server: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(server)
    store = cs.open_store(url)
    record = store.create_conversation(make_record())
    assert _kill_connections(url) >= 1
    record = add_turn(store, record)
    assert _kill_connections(url) >= 1
    assert store.get_conversation(record.id, tenant=record.tenant).version == 1

    async def async_flavour() -> None:
        astore = cs.open_async_store(url)
        await astore.get_conversation(record.id, tenant=record.tenant)
        _kill_connections(url)
        assert len(await astore.load_steps(record.id, tenant=record.tenant)) == 2
        await astore.aclose()

    asyncio.run(async_flavour())
    store.close()


# --------------------------------------------------------------------------- errors, URLs


def test_unreachable_server_is_store_unavailable() -> None:
    store = cs.open_store("postgresql://postgres:hunter2@127.0.0.1:1/nothing")
    assert "hunter2" not in store.url and "hunter2" not in repr(store)
    with pytest.raises(cs.StoreUnavailable) as info:
        store.get_conversation("c1", tenant="t1")
    assert isinstance(info.value.__cause__, sa.exc.SQLAlchemyError)
    assert "hunter2" not in str(info.value)
    store.close()


@pytest.mark.parametrize(
    ("given", "sync_driver", "async_driver"),
    [
        ("postgres://u@h/db", "postgresql+psycopg", "postgresql+psycopg"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg", "postgresql+psycopg"),
        ("mysql://u@h/db", "mysql+pymysql", "mysql+aiomysql"),
        ("mariadb://u@h/db", "mysql+pymysql", "mysql+aiomysql"),
        ("sqlite:///x.db", "sqlite+pysqlite", "sqlite+aiosqlite"),
    ],
)
def test_url_normalisation(given: str, sync_driver: str, async_driver: str) -> None:
    assert normalize_url(given, is_async=False).drivername == sync_driver
    assert normalize_url(given, is_async=True).drivername == async_driver


def test_bad_sql_url_is_configuration_error() -> None:
    with pytest.raises(cs.ConfigurationError):
        cs.open_store("sqlite+nope://weird:::")
    with pytest.raises(cs.ConfigurationError):
        normalize_url("oracle://u@h/db", is_async=False)


def test_closed_store_refuses(sqlite_url: str) -> None:
    store = cs.open_store(sqlite_url)
    store.close()
    with pytest.raises(cs.StoreError):
        store.get_conversation("c1", tenant="t1")


# --------------------------------------------------------------------------- asyncio


def test_async_flavour_smoke(url: str) -> None:
    async def scenario() -> None:
        store = cs.open_async_store(url)
        record = await store.create_conversation(make_record(user="u1"))
        commit = make_commit(record, TRAPS[:3], idempotency_key="k1")
        assert (await store.append_turn(commit)).created
        again = await store.append_turn(commit)
        assert not again.created and again.turn == commit.turn
        with pytest.raises(cs.ConcurrentTurnError):
            await store.append_turn(make_commit(record, [user_step("stale")]))
        steps = await store.load_steps(record.id, tenant=record.tenant)
        assert [s.payload for s in steps] == TRAPS[:3]
        second = make_commit(commit.record, [user_step("b"), model_step("c")])
        await store.append_turn(second)
        newest = await store.load_steps(record.id, tenant=record.tenant, newest=1)
        assert [s.seq for s in newest] == [4, 5]
        page = await store.list_conversations(tenant=record.tenant, user="u1")
        assert [r.id for r in page.items] == [record.id]
        assert await store.delete_conversation(record.id, tenant=record.tenant)
        with pytest.raises(cs.ConversationNotFound):
            await store.get_conversation(record.id, tenant=record.tenant)
        await store.aclose()
        await store.aclose()

    asyncio.run(scenario())


def test_generated_sync_twin_is_current() -> None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "sql_store" not in done.stdout


def test_async_sqlite_write_waits_for_another_writer_off_the_event_loop(tmp_path: Path) -> None:
    """The asyncio SQLite store writes a turn in the event loop's thread only when the write
    lock is free at once; while another connection holds it, the write waits on a thread
    (the loop keeps running) and lands once the lock is released, exactly once."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'locked.db'}"

    async def scenario() -> tuple[int, int]:
        store = cs.open_async_store(url)
        record = await store.create_conversation(make_record())
        commit = make_commit(record, [user_step("hi"), model_step("hello")], idempotency_key="k-1")
        holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        append = asyncio.create_task(store.append_turn(commit))
        ticks = 0
        for _ in range(20):  # the loop is not blocked while the append waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not append.done()
        holder.execute("ROLLBACK")
        holder.close()
        result = await asyncio.wait_for(append, 30)
        assert result.created
        again = await store.append_turn(commit)  # inline now; the key finds the turn
        assert not again.created
        found = await store.get_conversation(record.id, tenant=record.tenant)
        await store.aclose()
        return ticks, found.turn_count

    assert asyncio.run(scenario()) == (20, 1)

"""Alembic migrations: up, down and up again on every SQL dialect; the table definitions
match the revisions; outdated server databases are refused with the fix named; the revisions
ship inside the wheel."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import convostore as cs
from convostore import _migrate
from convostore._sql import metadata, normalize_url
from convostore.testing import add_turn, make_outbox_item, make_pending, make_record

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"conversations", "turns", "steps", "pending_turns", "outbox", "compactions"}


def _engine(url: str, **options: object) -> sa.Engine:
    return sa.create_engine(normalize_url(url, is_async=False), poolclass=sa.NullPool, **options)


def _fresh_database(session_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``session_url``, dropped afterwards."""
    parsed = sa.make_url(session_url)
    name = f"{parsed.database}_m{uuid.uuid4().hex[:8]}"
    admin = _engine(session_url, isolation_level="AUTOCOMMIT")
    postgres = admin.dialect.name == "postgresql"
    with admin.connect() as conn:
        conn.execute(
            sa.text(f'CREATE DATABASE "{name}"' if postgres else f"CREATE DATABASE `{name}`")
        )
    yield parsed.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                if postgres
                else f"DROP DATABASE IF EXISTS `{name}`"
            )
        )
    admin.dispose()


@pytest.fixture
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    yield from _fresh_database(postgres_url)


@pytest.fixture
def fresh_mysql(mysql_url: str) -> Iterator[str]:
    yield from _fresh_database(mysql_url)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    name = "fresh_postgres" if request.param == "postgresql" else "fresh_mysql"
    return str(request.getfixturevalue(name))


def _tables(url: str) -> set[str]:
    engine = _engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) & TABLES
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(fresh_url: str) -> None:
    assert _migrate.current(fresh_url) is None
    assert not _migrate.check(fresh_url)
    _migrate.upgrade(fresh_url)
    assert _migrate.current(fresh_url) == _migrate.head()
    assert _migrate.check(fresh_url)
    assert _tables(fresh_url) == TABLES
    _migrate.downgrade(fresh_url, "base")
    assert _migrate.current(fresh_url) is None
    assert _tables(fresh_url) == set()
    cs.migrate(fresh_url)  # the public name
    assert _migrate.check(fresh_url)
    store = cs.open_store(fresh_url)
    record = store.create_conversation(make_record())
    add_turn(store, record)
    assert len(store.load_steps(record.id, tenant=record.tenant)) == 2
    store.close()


def test_0002_upgrade_and_downgrade_keep_0001_data(fresh_url: str) -> None:
    _migrate.upgrade(fresh_url, "0001")
    assert _tables(fresh_url) == {"conversations", "turns", "steps"}
    # a database holding data written at 0001, through the tables as they were then
    record = make_record()
    engine = _engine(fresh_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO conversations (id, tenant, mode, model, config, version, turn_count,"
                " step_count, metadata, created_at, updated_at) VALUES (:id, :tenant, 'auto',"
                " 'm', '{}', 0, 0, 0, '{}', :now, :now)"
            ),
            {"id": record.id, "tenant": record.tenant, "now": record.created_at},
        )
    engine.dispose()
    _migrate.upgrade(fresh_url)
    assert _migrate.current(fresh_url) == _migrate.head()
    assert _tables(fresh_url) == TABLES
    store = cs.open_store(fresh_url)
    stored = store.get_conversation(record.id, tenant=record.tenant)
    stored = add_turn(store, stored)
    pending = make_pending(stored)
    store.begin_turn(pending)
    store.add_outbox([make_outbox_item(record.tenant)])
    assert store.get_pending(record.id, tenant=record.tenant) == pending
    store.close()
    _migrate.downgrade(fresh_url, "0001")
    assert _migrate.current(fresh_url) == "0001"
    assert _tables(fresh_url) == {"conversations", "turns", "steps"}
    _migrate.upgrade(fresh_url)
    store = cs.open_store(fresh_url)
    assert store.get_conversation(record.id, tenant=record.tenant) == stored
    assert len(store.load_steps(record.id, tenant=record.tenant)) == 2
    assert store.get_pending(record.id, tenant=record.tenant) is None
    assert store.list_outbox(tenant=record.tenant) == []
    store.close()


def test_table_definitions_match_the_migrations(fresh_url: str) -> None:
    _migrate.upgrade(fresh_url)
    engine = _engine(fresh_url)
    options = {"compare_type": True, "compare_server_default": True}
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=options)
        assert compare_metadata(context, metadata) == []
        # the comparison does see a difference when there is one
        changed = sa.MetaData()
        for table in metadata.tables.values():
            table.to_metadata(changed)
        changed.tables["steps"].append_column(sa.Column("extra", sa.Integer()))
        diff = compare_metadata(context, changed)
        assert [entry[0] for entry in diff] == ["add_column"]
    engine.dispose()


def test_sqlite_file_migrates_itself(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    store = cs.open_store(url)
    assert not (tmp_path / "auto.db").exists()  # from_url does no I/O
    store.create_conversation(make_record())
    store.close()
    assert _migrate.current(url) == _migrate.head()


def test_sqlite_file_at_0001_migrates_itself_on_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _migrate.upgrade(url, "0001")
    store = cs.open_store(url)
    record = store.create_conversation(make_record())
    store.begin_turn(make_pending(record))
    store.close()
    assert _migrate.current(url) == _migrate.head() == "0003"


def test_unmigrated_server_database_names_the_command(fresh_postgres: str) -> None:
    # trust authentication ignores the password, which must never be printed
    url = sa.make_url(fresh_postgres).set(password="s3cret").render_as_string(False)
    store = cs.open_store(url)
    with pytest.raises(cs.SchemaError) as info:
        store.create_conversation(make_record())
    message = str(info.value)
    assert f"convostore db upgrade {store.url}" in message
    assert "***" in message and "s3cret" not in message
    assert _tables(fresh_postgres) == set()  # nothing created behind the operator's back
    store.close()


@pytest.mark.parametrize("server", ["fresh_postgres", "fresh_mysql"])
def test_outdated_server_database_is_refused(server: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(server)
    _migrate.upgrade(url)
    _migrate.downgrade(url, "base")  # behind: the version table exists, the schema does not
    store = cs.open_store(url)
    with pytest.raises(cs.SchemaError, match="convostore db upgrade"):
        store.get_conversation("c1", tenant="t1")
    store.close()

    async def async_flavour() -> None:
        astore = cs.open_async_store(url)
        with pytest.raises(cs.SchemaError, match="convostore db upgrade"):
            await astore.list_conversations(tenant=None)
        await astore.aclose()

    asyncio.run(async_flavour())
    _migrate.upgrade(url)  # the named fix works
    store = cs.open_store(url)
    assert store.list_conversations(tenant=None).items == []
    store.close()


def test_unknown_revision_is_a_schema_error(fresh_mysql: str) -> None:
    # e.g. a database migrated by a newer convostore
    _migrate.upgrade(fresh_mysql)
    engine = _engine(fresh_mysql)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    store = cs.open_store(fresh_mysql)
    with pytest.raises(cs.SchemaError, match="9999"):
        store.get_conversation("c1", tenant="t1")
    store.close()
    with pytest.raises(cs.SchemaError, match="9999"):
        _migrate.upgrade(fresh_mysql)
    assert not _migrate.check(fresh_mysql)


def test_wheel_ships_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("convostore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert "convostore/_migrations/env.py" in names
    assert any(n.startswith("convostore/_migrations/versions/0001_") for n in names)
    assert any(n.startswith("convostore/_migrations/versions/0002_") for n in names)
    # the installed package finds its own copy, away from any source checkout
    db = tmp_path / "wheel.db"
    code = (
        "import convostore, convostore._migrate as m; "
        f"m.upgrade('sqlite:///{db}'); "
        f"print(convostore.__file__, m.script_location(), m.current('sqlite:///{db}'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
    )
    package_file, location, revision = done.stdout.split()
    assert package_file.startswith(str(tmp_path / "site"))
    assert location == str(tmp_path / "site" / "convostore" / "_migrations")
    assert revision == _migrate.head()


def test_0003_upgrade_and_downgrade_keep_0002_data(fresh_url: str) -> None:
    from convostore._core import context
    from convostore.models import CompactionRecord

    _migrate.upgrade(fresh_url, "0002")
    assert "compactions" not in _tables(fresh_url)
    record = make_record()
    engine = _engine(fresh_url)
    with engine.begin() as conn:  # written through the tables as they were at 0002
        conn.execute(
            sa.text(
                "INSERT INTO conversations (id, tenant, mode, model, config, version, turn_count,"
                " step_count, metadata, created_at, updated_at) VALUES (:id, :tenant, 'auto',"
                " 'm', '{}', 0, 0, 0, '{}', :now, :now)"
            ),
            {"id": record.id, "tenant": record.tenant, "now": record.created_at},
        )
    engine.dispose()
    _migrate.upgrade(fresh_url)
    assert _migrate.current(fresh_url) == "0003" == _migrate.head()
    store = cs.open_store(fresh_url)
    assert store.get_conversation(record.id, tenant=record.tenant).context_epoch == 0
    stored = add_turn(store, store.get_conversation(record.id, tenant=record.tenant))
    assert store.load_turns(record.id, tenant=record.tenant)[0].context_epoch == 0
    compaction = CompactionRecord(
        conversation_id=record.id,
        epoch=1,
        last_seq=2,
        last_turn=1,
        steps=[],
        summarizer="trim",
        policy="manual",
    )
    store.append_compaction(
        context.compacted_record(stored, compaction, now=stored.created_at), compaction
    )
    assert store.load_compactions(record.id, tenant=record.tenant) == [compaction]
    store.close()
    _migrate.downgrade(fresh_url, "0002")
    assert "compactions" not in _tables(fresh_url)
    _migrate.upgrade(fresh_url)
    store = cs.open_store(fresh_url)
    assert store.get_conversation(record.id, tenant=record.tenant).context_epoch == 0
    assert len(store.load_steps(record.id, tenant=record.tenant)) == 2
    assert store.load_compactions(record.id, tenant=record.tenant) == []
    store.close()

"""PostgreSQL and MariaDB connections killed from the server side, between turns and inside an
append: the next operation reconnects by itself, no partial turn is ever visible, and the
send whose append was killed still returns its turn (looked up by its idempotency key, then
appended again)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import convostore as cs
from convostore import _transfer
from convostore._sql import normalize_url
from convostore.emulator import Emulator

pytestmark = pytest.mark.reliability

KEY = "kill-key-0123456789"


@pytest.fixture(params=["postgresql", "mysql"])
def store_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> str:
    return make_store_url(request.param)


@pytest.fixture
def admin(store_url: str) -> Iterator[sa.Engine]:
    """A second connection to the same database, to kill the store's connections from."""
    engine = sa.create_engine(
        normalize_url(store_url, is_async=False),
        poolclass=sa.NullPool,
        isolation_level="AUTOCOMMIT",
    )
    yield engine
    engine.dispose()


def kill(admin: sa.Engine, backend_id: int | None = None) -> int:
    """Kill ``backend_id`` (or every other connection to the database); returns how many."""
    with admin.connect() as conn:
        if admin.dialect.name == "postgresql":
            where = "pid = :id" if backend_id is not None else "pid <> pg_backend_pid()"
            # the timeout makes pg_terminate_backend wait until the backend is gone
            sql = (
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                f"WHERE datname = current_database() AND {where}"
            )
            return int(conn.execute(sa.text(sql), {"id": backend_id}).scalar_one())
        ids = (
            [backend_id]
            if backend_id is not None
            else list(
                conn.execute(
                    sa.text(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                    )
                ).scalars()
            )
        )
        for ident in ids:
            conn.execute(sa.text(f"KILL {int(ident)}"))
        return len(ids)


def backend_id(dbapi_connection: Any) -> int:
    info = getattr(dbapi_connection, "info", None)
    if info is not None and hasattr(info, "backend_pid"):
        return int(info.backend_pid)  # psycopg
    return int(dbapi_connection.thread_id())  # pymysql


@contextlib.contextmanager
def conversations(store_url: str, emulator: Emulator) -> Iterator[cs.Conversations]:
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        yield convos


def state(conv: cs.Conversation) -> tuple[Any, ...]:
    record = conv.refresh()
    return (record.version, record.turn_count, record.step_count, conv.history(), conv.turns())


def assert_verified(conv: cs.Conversation, turns: int) -> None:
    record = conv.refresh()
    assert _transfer.verify(conv._store, record) == []
    assert record.turn_count == turns == record.version


@pytest.mark.parametrize("mode", ["server", "stateless"])
def test_killed_between_turns_reconnects(
    store_url: str, admin: sa.Engine, emulator: Emulator, mode: str
) -> None:
    with conversations(store_url, emulator) as convos:
        conv = convos.create(tenant="kills", mode=mode)  # type: ignore[arg-type]
        for i in range(3):
            assert kill(admin) >= 1
            conv.send(f"turn {i}")
        assert kill(admin) >= 1
        assert len(conv.history()) == 6
        assert_verified(conv, 3)


@pytest.mark.parametrize(
    "statement",
    [r"^UPDATE conversations", r"^INSERT INTO turns", r"^INSERT INTO steps"],
    ids=["update", "turns-insert", "steps-insert"],
)
def test_killed_inside_an_append_leaves_no_partial_turn(
    store_url: str, admin: sa.Engine, emulator: Emulator, statement: str
) -> None:
    pattern = re.compile(statement, re.IGNORECASE)
    with conversations(store_url, emulator) as convos:
        conv = convos.create(tenant="kills", mode="server")
        conv.send("I have 2 dogs in my house.")
        before = state(conv)
        engine = conv._store._engines()[0]  # type: ignore[attr-defined]
        fired: list[int] = []

        def kill_own_backend(conn: sa.Connection, cursor: Any, sql: str, *args: Any) -> None:
            if not fired and pattern.search(sql.replace('"', "").replace("`", "")):
                fired.append(kill(admin, backend_id(conn.connection.dbapi_connection)))

        seen: list[Any] = []  # what the store holds right after the failed append
        store: Any = conv._store
        real_append = store.append_turn

        def append_turn(commit: Any) -> Any:
            try:
                return real_append(commit)
            except cs.StoreUnavailable:
                seen.append(state(conv))
                raise

        store.append_turn = append_turn
        sa.event.listen(engine, "before_cursor_execute", kill_own_backend)
        try:
            # the append fails (StoreUnavailable inside the store); the driver looks the turn
            # up by its idempotency key, does not find it, and appends it again
            turn = conv.send("How many paws are in my house?")
        finally:
            sa.event.remove(engine, "before_cursor_execute", kill_own_backend)
            store.append_turn = real_append
        assert fired == [1]
        # reconnected, and nothing of the failed append was visible
        assert seen == [before]
        assert turn.seq == 2
        assert turn.record.previous_interaction_id == before[4][0].interaction_id
        assert [t.seq for t in conv.turns()] == [1, 2]
        assert conv.pending() is None
        assert_verified(conv, 2)

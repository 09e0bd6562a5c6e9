"""Security: tenant isolation, secrets kept out of storage/logs/output, tamper evidence, erasure.

Every test runs against real stores and the emulator over HTTP; the CLI is driven through the
real ``convostore`` console script.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

import convostore as cs
from convostore import _migrate, _transfer
from convostore import _redis_keys as redis_keys
from convostore._sql import normalize_url
from convostore.emulator import Emulator
from convostore.models import utcnow
from convostore.testing import make_commit, model_step, user_step

CONVOSTORE = str(Path(sys.executable).with_name("convostore"))
SECRET = "AIzaSECRET" + uuid.uuid4().hex  # never to be seen outside the HTTP header


@pytest.fixture(params=["memory", "sqlite", "postgresql", "mysql", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind: str = request.param
    if kind == "memory":
        return f"memory://security-{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'security.db'}"
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return f"{url}?key_prefix={request.getfixturevalue('redis_prefix')}"
    url = str(request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url"))
    _migrate.upgrade(url)
    return url


@contextlib.contextmanager
def opened(url: str, emulator: Emulator, **client_options: Any) -> Iterator[cs.Conversations]:
    options: dict[str, Any] = {"api_key": SECRET, "max_retries": 0, **client_options}
    with (
        cs.InteractionsClient(base_url=emulator.url, **options) as client,
        cs.Conversations(url, client) as convos,
    ):
        yield convos


def run_cli(*args: str, base_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GEMINI_API_KEY": SECRET, "NO_COLOR": "1", "COLUMNS": "200"}
    if base_url is not None:
        env["GOOGLE_GEMINI_BASE_URL"] = base_url
    return subprocess.run(
        [CONVOSTORE, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def snapshot(store: cs.Store, conv_id: str, tenant: str) -> tuple[Any, ...]:
    return (
        store.get_conversation(conv_id, tenant=tenant),
        store.load_turns(conv_id, tenant=tenant),
        store.load_steps(conv_id, tenant=tenant),
    )


def sends(emulator: Emulator) -> int:
    return sum(1 for r in emulator.requests if r.method in ("POST", "DELETE"))


# --------------------------------------------------------------------------- tenant isolation


def test_a_foreign_tenant_sees_nothing_and_changes_nothing(
    store_url: str, emulator: Emulator
) -> None:
    with opened(store_url, emulator) as convos:
        store = convos.store
        owner = "acme-" + uuid.uuid4().hex[:6]
        intruder = "evil-" + uuid.uuid4().hex[:6]
        conv = convos.create(tenant=owner, user="u1", mode="server")
        conv.send("I have 2 dogs in my house.")
        convos.create(tenant=intruder, user="u1")  # the intruder has data of its own
        before = snapshot(store, conv.id, owner)
        missing = "no-such-" + uuid.uuid4().hex[:6]
        calls_before = sends(emulator)

        def as_missing(operation: Callable[[str, str], object]) -> None:
            """The operation on the foreign conversation fails exactly as on a missing one."""
            outcomes: list[tuple[object, str]] = []
            for target in (conv.id, missing):
                try:
                    result = operation(target, intruder)
                except cs.ConvostoreError as exc:
                    outcomes.append((type(exc), str(exc).replace(target, "<id>")))
                else:
                    outcomes.append(("returned", repr(result).replace(target, "<id>")))
            assert outcomes[0] == outcomes[1]

        forged = {"tenant": intruder}
        as_missing(lambda cid, t: convos.get(cid, tenant=t))
        as_missing(lambda cid, t: forge(convos, conv, cid, forged).send("hi"))
        as_missing(lambda cid, t: consume(forge(convos, conv, cid, forged).stream("hi")))
        as_missing(lambda cid, t: forge(convos, conv, cid, forged).fork(at_turn=1))
        as_missing(lambda cid, t: forge(convos, conv, cid, forged).history())
        as_missing(lambda cid, t: forge(convos, conv, cid, forged).turns())
        as_missing(lambda cid, t: forge(convos, conv, cid, forged).update(metadata={"x": 1}))
        as_missing(lambda cid, t: convos.delete(cid, tenant=t, remote=True))
        as_missing(lambda cid, t: store.get_conversation(cid, tenant=t))
        as_missing(lambda cid, t: store.load_steps(cid, tenant=t))
        as_missing(lambda cid, t: store.load_turns(cid, tenant=t))
        as_missing(lambda cid, t: store.find_turn(cid, tenant=t, idempotency_key="k"))
        as_missing(lambda cid, t: store.delete_conversation(cid, tenant=t))
        as_missing(lambda cid, t: store.append_turn(foreign_commit(before[0], cid, t)))
        as_missing(
            lambda cid, t: store.update_conversation(
                before[0].model_copy(update={"id": cid, "tenant": t, "version": 2})
            )
        )
        as_missing(
            lambda cid, t: list(_transfer.iter_records(store, tenant=t, conversation_id=cid))
        )
        listed = [r.id for r in convos.list(tenant=intruder).items]
        assert conv.id not in listed and len(listed) == 1
        assert conv.id not in [r.id for r in store.purge(tenant=intruder, dry_run=True)]

        assert sends(emulator) == calls_before  # nothing sent, nothing deleted remotely
        assert snapshot(store, conv.id, owner) == before
        assert conv.history() and conv.send("still mine").seq == 2


def forge(
    convos: cs.Conversations, conv: cs.Conversation, cid: str, changes: dict[str, Any]
) -> cs.Conversation:
    """A Conversation object pointing at ``cid`` under another tenant (as a caller holding a
    stale or forged record would have)."""
    return cs.Conversation(convos, conv.record.model_copy(update={"id": cid, **changes}))


def consume(stream: cs.TurnStream) -> None:
    with stream as events:
        for _ in events:
            pass


def foreign_commit(record: cs.ConversationRecord, cid: str, tenant: str) -> Any:
    fake = record.model_copy(update={"id": cid, "tenant": tenant})
    return make_commit(fake, [user_step("x"), model_step("y")])


@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
def test_cli_with_a_foreign_tenant_finds_nothing(store_url: str, emulator: Emulator) -> None:
    with opened(store_url, emulator) as convos:
        conv = convos.create(tenant="acme", mode="server")
        conv.send("I have 2 dogs in my house.")
        before = snapshot(convos.store, conv.id, "acme")
        calls_before = sends(emulator)
    for args in (
        ["show", conv.id],
        ["export", conv.id],
        ["verify", conv.id, "--json"],
        ["delete", conv.id, "--remote"],
        ["ls", "--json"],
    ):
        result = run_cli(*args, "--store", store_url, "--tenant", "evil", base_url=emulator.url)
        assert "dogs" not in result.stdout + result.stderr, args
        if args[0] in ("show", "delete"):
            assert result.returncode != 0, args
    with opened(store_url, emulator) as convos:
        assert snapshot(convos.store, conv.id, "acme") == before
    assert sends(emulator) == calls_before


# --------------------------------------------------------------------------- secrets


def stored_text(store_url: str) -> str:
    """Everything the store holds, as text."""
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as db:
            return "\n".join(db.iterdump())
    if store_url.startswith("redis"):
        base, _, prefix = store_url.partition("?key_prefix=")
        client = redis.Redis.from_url(base)
        dumped = []
        for key in client.scan_iter(match=f"{prefix}*"):
            kind = client.type(key)
            if kind == b"hash":
                dumped.append(repr(client.hgetall(key)))
            elif kind == b"list":
                dumped.append(repr(client.lrange(key, 0, -1)))
            elif kind == b"zset":
                dumped.append(repr(client.zrange(key, 0, -1, withscores=True)))
            else:
                dumped.append(repr(client.get(key)))
        client.close()
        return "\n".join(dumped)
    engine = sa.create_engine(normalize_url(store_url, is_async=False), poolclass=sa.NullPool)
    dumped = []
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            dumped.extend(repr(row) for row in conn.execute(sa.text(f"SELECT * FROM {table}")))
    engine.dispose()
    return "\n".join(dumped)


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql", "mysql", "redis"], indirect=True)
def test_the_api_key_never_leaves_the_request_header(
    store_url: str, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: convostore, httpx, httpcore
    seen: list[str] = []
    with opened(store_url, emulator, max_retries=1) as convos:
        conv = convos.create(tenant="acme", mode="server")
        seen += [repr(convos), repr(convos.client), repr(convos.store), repr(conv)]
        turn = conv.send("I have 2 dogs in my house.")
        seen += [repr(turn), turn.model_dump_json()]
        consume(conv.stream("How many paws are in my house?"))
        emulator.expire(turn.interaction_id)  # a chain fallback, logged at WARNING
        conv.send("And cats?")
        faults: list[tuple[Callable[[], None], Callable[[], object]]] = [
            (lambda: emulator.fail(503, times=2, retry_after_ms=1), lambda: conv.send("x")),
            (lambda: emulator.fail(403), lambda: conv.send("x")),
            (lambda: emulator.fail(401), lambda: conv.send("x")),
            (lambda: emulator.cut_stream(2), lambda: consume(conv.stream("x"))),
        ]
        for inject, action in faults:
            inject()
            with pytest.raises(cs.APIError) as info:
                action()
            seen += [str(info.value), repr(info.value), repr(info.value.__cause__)]
            seen += [repr(vars(info.value))]
            emulator.reset()
        with pytest.raises(cs.APITimeoutError) as timeout:
            emulator.delay(0.5, times=1)
            with cs.InteractionsClient(
                api_key=SECRET, base_url=emulator.url, timeout=0.1, max_retries=0
            ) as slow:
                slow.create(model="gemini-3-flash-preview", input="slow")
        seen += [str(timeout.value), repr(timeout.value.__cause__)]
        assert any(r.headers.get("x-goog-api-key") == SECRET for r in emulator.requests)
    records = [f"{r.name} {r.levelname} {r.getMessage()} {r.args!r}" for r in caplog.records]
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    cli_output = []
    for args in (["show", conv.id, "--json"], ["export", conv.id]):
        result = run_cli("-v", *args, "--store", store_url, "--tenant", "acme")
        cli_output += [result.stdout, result.stderr]
    result = run_cli(
        "-v", "delete", conv.id, "--remote", "--store", store_url, "--tenant", "acme",
        base_url=emulator.url,
    )  # fmt: skip
    cli_output += [result.stdout, result.stderr]
    assert result.returncode == 0, result.stderr
    everything = "\n".join([*seen, *records, *cli_output, stored_text(store_url)])
    assert SECRET not in everything
    assert SECRET[10:30] not in everything  # not even a part of it


def test_store_passwords_are_hidden(postgres_url: str) -> None:
    with_password = postgres_url.replace("postgres@", "postgres:hunter2secret@", 1)
    store = cs.open_store(with_password)
    try:
        assert "hunter2secret" not in store.url + repr(store)
        bad = cs.open_store(with_password.rsplit("/", 1)[0] + "/no_such_database_here")
        with pytest.raises(cs.StoreError) as info:
            bad.get_conversation("c1", tenant="t1")
        assert "hunter2secret" not in str(info.value) + repr(info.value)
        bad.close()
    finally:
        store.close()


# --------------------------------------------------------------------------- tamper evidence


def build(convos: cs.Conversations) -> str:
    conv = convos.create(tenant="audit", mode="server")
    for text in ("one", "two", "three"):
        conv.send(text)
    assert _transfer.verify(convos.store, conv.refresh()) == []
    return conv.id


def verify_cli(store_url: str) -> tuple[int, dict[str, list[str]]]:
    result = run_cli("verify", "--store", store_url, "--tenant", "audit", "--json")
    assert result.stdout, result.stderr
    problems: dict[str, list[str]] = json.loads(result.stdout)["problems"]
    return result.returncode, problems


def sql_tamper(store_url: str, statements: list[str], conv_id: str) -> None:
    if store_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as db:
            for sql in statements:
                db.execute(sql.replace(":cid", "?"), (conv_id,))
            db.commit()
        return
    engine = sa.create_engine(normalize_url(store_url, is_async=False), poolclass=sa.NullPool)
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(sa.text(sql), {"cid": conv_id})
    engine.dispose()


TAMPERED = json.dumps({"type": "model_output", "content": [{"type": "text", "text": "forged"}]})
SQL_TAMPERING = {
    "changed step": [
        f"UPDATE steps SET payload = '{TAMPERED}' WHERE conversation_id = :cid AND seq = 4"
    ],
    "deleted turn": [
        "DELETE FROM steps WHERE conversation_id = :cid AND turn_seq = 2",
        "DELETE FROM turns WHERE conversation_id = :cid AND seq = 2",
    ],
    "reordered seq": [
        "UPDATE steps SET seq = 100 WHERE conversation_id = :cid AND seq = 3",
        "UPDATE steps SET seq = 3 WHERE conversation_id = :cid AND seq = 4",
        "UPDATE steps SET seq = 4 WHERE conversation_id = :cid AND seq = 100",
    ],
}


def redis_tamper(store_url: str, tampering: str, conv_id: str) -> None:
    base, _, prefix = store_url.partition("?key_prefix=")
    _, turns_key, steps_key, _ = redis_keys.conversation_keys(prefix, conv_id)
    client = redis.Redis.from_url(base)
    try:
        if tampering == "changed step":
            client.lset(steps_key, 3, json.dumps([2, json.loads(TAMPERED)]))
        elif tampering == "deleted turn":
            second: Any = client.lindex(turns_key, 1)
            assert client.lrem(turns_key, 1, second) == 1
        else:
            third: Any = client.lindex(steps_key, 2)
            fourth: Any = client.lindex(steps_key, 3)
            client.lset(steps_key, 2, fourth)
            client.lset(steps_key, 3, third)
    finally:
        client.close()


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql", "redis"], indirect=True)
def test_verify_reports_tampering(store_url: str, emulator: Emulator) -> None:
    """SQL UPDATE/DELETE (SQLite, PostgreSQL) or LSET/LREM (Redis) straight on the database:
    ``convostore verify`` names every tampered conversation and leaves the intact one be."""
    with opened(store_url, emulator) as convos:
        intact = build(convos)
        victims = {tampering: build(convos) for tampering in SQL_TAMPERING}
    assert verify_cli(store_url) == (0, {})
    for tampering, conv_id in victims.items():
        if store_url.startswith("redis"):
            redis_tamper(store_url, tampering, conv_id)
        else:
            sql_tamper(store_url, SQL_TAMPERING[tampering], conv_id)
    status, problems = verify_cli(store_url)
    assert status == 1
    assert intact not in problems
    assert sorted(problems) == sorted(victims.values())
    assert any("audit hash mismatch" in p for p in problems[victims["changed step"]])
    print({t: problems[c] for t, c in victims.items()})


# --------------------------------------------------------------------------- erasure


@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
def test_delete_remote_erases_every_server_copy_and_reports_failures(
    store_url: str, emulator: Emulator
) -> None:
    with opened(store_url, emulator) as convos:
        conv = convos.create(tenant="erase", mode="server")
        ids = [str(conv.send(text).interaction_id) for text in ("one", "two", "three")]
        assert all(i in emulator.interactions for i in ids)
        emulator.fail(500, method="DELETE", times=1)  # the first delete fails
        report = convos.delete(conv.id, tenant="erase", remote=True)
        assert report.deleted
        assert list(report.remote_failed) == [ids[0]]
        assert report.remote_deleted == ids[1:]
        for iid in ids[1:]:
            with pytest.raises(cs.NotFoundError):
                convos.client.get(iid)
        with pytest.raises(cs.ConversationNotFound):
            convos.get(conv.id, tenant="erase")


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_cli_delete_and_purge_remote(store_url: str, emulator: Emulator) -> None:
    tenant = "erase-" + uuid.uuid4().hex[:6]
    with opened(store_url, emulator) as convos:
        kept = convos.create(tenant=tenant, mode="server")
        kept_id = kept.send("keep me").interaction_id
        doomed = convos.create(tenant=tenant, mode="server")
        doomed_ids = [doomed.send(t).interaction_id for t in ("a", "b")]
        expiring = convos.create(tenant=tenant, mode="server", ttl=timedelta(seconds=2))
        expiring_ids = [str(expiring.send(t).interaction_id) for t in ("c", "d")]
        assert expiring.record.expires_at is not None
        wait = (expiring.record.expires_at - utcnow()).total_seconds()

    result = run_cli(
        "delete", doomed.id, "--remote", "--json", "--store", store_url, "--tenant", tenant,
        base_url=emulator.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["remote_deleted"] == doomed_ids
    assert not any(i in emulator.interactions for i in doomed_ids)

    time.sleep(max(0.0, wait) + 0.05)
    emulator.fail(503, method="DELETE", times=20, retry_after_ms=1)  # outlasts every retry
    result = run_cli(
        "purge", "--remote", "--json", "--store", store_url, "--tenant", tenant,
        base_url=emulator.url,
    )  # fmt: skip
    assert result.returncode == 1  # a failure to erase is not success
    out = json.loads(result.stdout)
    assert [c["id"] for c in out["conversations"]] == [expiring.id]
    assert sorted(out["remote_failed"]) == sorted(expiring_ids)
    emulator.reset()
    assert all(i in emulator.interactions for i in expiring_ids)  # reported, not hidden
    assert kept_id in emulator.interactions  # the live conversation is untouched
    with opened(store_url, emulator) as convos:
        assert [r.id for r in convos.list(tenant=tenant).items] == [kept.id]


@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
def test_erasing_during_an_inflight_send_leaves_nothing_on_the_server(
    store_url: str, emulator: Emulator
) -> None:
    """delete(remote=True) while another worker's turn is in flight: that turn's interaction,
    created after the erasure read the turns, is deleted by the sender when its commit finds
    the conversation gone."""
    with opened(store_url, emulator) as convos, opened(store_url, emulator) as other:
        conv = convos.create(tenant="erase", mode="server")
        first = conv.send("I have 2 dogs in my house.")
        server_before = set(emulator.interactions)
        in_flight = other.get(conv.id, tenant="erase")
        outcome: list[BaseException] = []

        def send() -> None:
            try:
                in_flight.send("sent while being erased")
            except BaseException as exc:
                outcome.append(exc)

        posts = sum(1 for r in emulator.requests if r.method == "POST")
        emulator.delay(0.5, times=1)
        thread = threading.Thread(target=send)
        thread.start()
        while sum(1 for r in emulator.requests if r.method == "POST") == posts:
            time.sleep(0.005)  # the create has reached the server and waits there
        report = convos.delete(conv.id, tenant="erase", remote=True)
        thread.join(timeout=30)
        assert report.deleted and report.remote_deleted == [first.interaction_id]
        assert len(outcome) == 1 and isinstance(outcome[0], cs.ConversationNotFound)
        assert set(emulator.interactions) == server_before - {first.interaction_id}

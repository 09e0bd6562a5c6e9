"""The ``convostore`` command, run as a person runs it: the installed console script in a
subprocess (and in a real terminal for ``chat``), against real SQLite, PostgreSQL, MariaDB and
Redis, with the emulator served over HTTP."""

from __future__ import annotations

import itertools
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import click
import pexpect
import pytest
from click.testing import CliRunner

from convostore import _migrate
from convostore import _transfer as transfer
from convostore._sync.client import InteractionsClient
from convostore._sync.conversations import Conversations
from convostore.cli import bundle_json, cli, open_existing
from convostore.cli import run as run_in_process

SCRIPT = str(Path(sys.executable).with_name("convostore"))
_ENV_DROP = ("GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL", "CONVOSTORE_URL", "CONVOSTORE_TENANT")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env.update({"COLUMNS": "200", "NO_COLOR": "1"}, **extra)
    return env


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, status: int | None = 0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [SCRIPT, *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if status is not None:
        assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def run_json(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    return json.loads(run(*args, "--json", cwd=cwd, env=env).stdout)


@pytest.fixture
def invoke(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Any:
    """The same command line run in this process (cheaper than a subprocess): returns
    ``(status, stdout, stderr)``."""
    for name in _ENV_DROP:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = run_in_process(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return status, out, err

    return call


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# --------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo, run once offline in a directory of its own: (directory, its output)."""
    where = tmp_path_factory.mktemp("demo")
    proc = run("demo", cwd=where)
    return where, proc.stdout


DEMO_STORE = ("--store", "sqlite:///convostore-demo.db", "--tenant", "demo")


def test_demo_runs_offline_and_shows_the_product(demo: tuple[Path, str]) -> None:
    where, out = demo
    assert (where / "convostore-demo.db").exists()
    assert "identical" in out and "different" not in out
    assert "Seen 2 user turn(s)" in out
    assert "Chained from the same head: yes" in out
    assert "chain_broken" in out
    assert "convostore ls --store sqlite:///convostore-demo.db" in out


def test_demo_data_passes_verify_and_lists(demo: tuple[Path, str], invoke: Any) -> None:
    where, _ = demo
    report = run_json("verify", *DEMO_STORE, cwd=where)
    assert report == {"checked": 4, "problems": {}, "warnings": {}, "outbox_outstanding": 0}
    store = ("--store", sqlite_url(where / "convostore-demo.db"), "--tenant", "demo")
    status, out, _ = invoke("ls", *store, "--json")
    items = json.loads(out)["items"]
    assert status == 0 and len(items) == 4
    assert {c["mode"] for c in items} == {"server", "stateless", "auto"}


def test_ls_paginates_newest_first(demo: tuple[Path, str], invoke: Any) -> None:
    where, _ = demo
    store = ("--store", sqlite_url(where / "convostore-demo.db"), "--tenant", "demo")
    everything = [c["id"] for c in json.loads(invoke("ls", *store, "--json")[1])["items"]]
    first = json.loads(invoke("ls", *store, "--limit", "3", "--json")[1])
    second = json.loads(
        invoke("ls", *store, "--limit", "3", "--cursor", first["next_cursor"], "--json")[1]
    )
    assert [c["id"] for c in first["items"] + second["items"]] == everything
    assert second["next_cursor"] is None
    text = invoke("ls", *store, "--limit", "3")[1]
    assert f"--cursor {first['next_cursor']}" in text
    assert all(cid in text for cid in everything[:3])


def test_show_prints_a_readable_transcript(demo: tuple[Path, str], invoke: Any) -> None:
    where, _ = demo
    store = ("--store", sqlite_url(where / "convostore-demo.db"), "--tenant", "demo")
    items = json.loads(invoke("ls", *store, "--json")[1])["items"]
    auto = next(c for c in items if c["mode"] == "auto")
    text = run("show", auto["id"], *DEMO_STORE, cwd=where).stdout
    assert "you: I have 2 dogs in my house." in text
    assert "model: Seen 2 user turn(s)" in text
    assert "turn 3 · stateless · chain_broken · completed" in text
    data = json.loads(invoke("show", auto["id"], *store, "--json")[1])
    assert [t["reason"] for t in data["turns"]] == [
        "first_turn",
        "chained",
        "chain_broken",
        "chained",
    ]


def test_verify_finds_a_tampered_step(tmp_path: Path, demo: tuple[Path, str], invoke: Any) -> None:
    where, _ = demo
    copy = tmp_path / "tampered.db"
    copy.write_bytes((where / "convostore-demo.db").read_bytes())
    with sqlite3.connect(copy) as db:
        (cid,) = db.execute("SELECT conversation_id FROM steps LIMIT 1").fetchone()
        db.execute(
            "UPDATE steps SET payload = json_set(payload, '$.content[0].text', 'I have 3 cats.') "
            "WHERE conversation_id = ? AND seq = 1",
            (cid,),
        )
    status, out, _ = invoke("verify", "--store", sqlite_url(copy), "--tenant", "demo")
    assert status == 1
    assert f"{cid}: turn 1: audit hash mismatch" in out
    assert "1 with problems" in out


# --------------------------------------------------------------------------- moving data


@contextmanager
def own_database(server_url: str) -> Iterator[str]:
    """A migrated database of this module's own next to the session's (so what these tests
    write never shows up in other modules' listings), dropped afterwards."""
    import sqlalchemy as sa

    base, _, rest = server_url.rpartition("/")
    name, _, query = rest.partition("?")
    own = f"{name}_cli"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote(own)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    url = f"{base}/{own}" + (f"?{query}" if query else "")
    try:
        _migrate.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
        admin.dispose()


@pytest.fixture(scope="module")
def migrated_postgres(postgres_url: str) -> Iterator[str]:
    with own_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="module")
def migrated_mysql(mysql_url: str) -> Iterator[str]:
    with own_database(mysql_url) as url:
        yield url


def test_export_import_into_postgresql_gives_identical_transcripts(
    demo: tuple[Path, str], migrated_postgres: str, tmp_path: Path, invoke: Any
) -> None:
    where, _ = demo
    source = sqlite_url(where / "convostore-demo.db")
    dump = tmp_path / "demo.jsonl"
    run("export", "--store", source, "--tenant", "demo", "-o", str(dump), cwd=tmp_path)
    kinds = [json.loads(line)["kind"] for line in dump.read_text().splitlines()]
    assert kinds.count("conversation") == 4 and kinds[0] == "conversation"
    created = run_json("import", str(dump), "--store", migrated_postgres, cwd=tmp_path)
    assert len(created["created"]) == 4
    _, out, _ = invoke("import", str(dump), "--store", migrated_postgres, "--json")
    again = json.loads(out)
    assert again["created"] == [] and len(again["skipped"]) == 4 and again["conflicts"] == {}
    assert invoke("verify", "--store", migrated_postgres, "--tenant", "demo")[0] == 0
    assert snapshot(migrated_postgres, "demo") == snapshot(source, "demo")
    one = created["created"][0]
    shown = [
        run("show", one, "--store", url, "--tenant", "demo", "--json", cwd=tmp_path).stdout
        for url in (source, migrated_postgres)
    ]
    assert shown[0] == shown[1]
    # the same id with other content is a conflict, reported and left alone
    original = [json.loads(line) for line in dump.read_text().splitlines()]
    edited = [dict(line) for line in original]
    edited[0]["metadata"] = {"edited": True}
    dump.write_text("".join(json.dumps(line) + "\n" for line in edited))
    status, out, _ = invoke("import", str(dump), "--store", migrated_postgres, "--json")
    assert status == 1 and list(json.loads(out)["conflicts"]) == [edited[0]["id"]]
    assert snapshot(migrated_postgres, "demo") == snapshot(source, "demo")
    # an export of one conversation to stdout holds the same lines as the file
    lines = invoke("export", one, "--store", source, "--tenant", "demo")[1]
    assert 0 < len(lines.splitlines()) < len(kinds)
    exported = {json.dumps(json.loads(x), sort_keys=True) for x in lines.splitlines()}
    assert exported <= {json.dumps(line, sort_keys=True) for line in original}


FAMILIES = ("sqlite", "postgresql", "mysql", "redis")


@pytest.fixture
def backends(
    tmp_path: Path,
    migrated_postgres: str,
    migrated_mysql: str,
    redis_url: str,
    redis_prefix: str,
) -> dict[str, str]:
    return {
        "sqlite": sqlite_url(tmp_path / "copy.db"),
        "postgresql": migrated_postgres,
        "mysql": migrated_mysql,
        "redis": f"{redis_url}?key_prefix={redis_prefix}",
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, emulator_server: Any) -> str:
    """A SQLite store with two conversations (one a fork) per ordered pair of backend
    families, each pair in a tenant of its own (``a-b``), made through the emulator."""
    url = sqlite_url(tmp_path_factory.mktemp("seed") / "seed.db")
    with (
        InteractionsClient(api_key="k", base_url=emulator_server.url, max_retries=0) as client,
        Conversations(url, client) as convos,
    ):
        for a, b in itertools.combinations(FAMILIES, 2):
            conv = convos.create(tenant=f"{a}-{b}", user="u1", mode="auto")
            conv.send("I have 2 dogs in my house.")
            conv.send("How many paws are in my house?")
            conv.fork(at_turn=1)
    return url


def snapshot(url: str, tenant: str) -> dict[str, Any]:
    """Every conversation of a tenant as ``show --json`` prints it, checked by ``verify``."""
    with closing(open_existing(url)) as store:
        out = {}
        for record in transfer.iter_records(store, tenant=tenant):
            assert transfer.verify(store, record) == []
            out[record.id] = bundle_json(transfer.load(store, record))
        return out


@pytest.mark.parametrize(("src", "dst"), list(itertools.combinations(FAMILIES, 2)))
def test_copy_between_backend_families(
    src: str, dst: str, seeded: str, backends: dict[str, str], tmp_path: Path
) -> None:
    tenant = f"{src}-{dst}"
    with (
        closing(open_existing(seeded)) as seed,
        closing(open_existing(backends[src], create=True)) as source,
    ):
        transfer.copy(seed, source, tenant=tenant)
    out = run_json(
        "copy", backends[src], backends[dst], "--tenant", tenant, "--verify", cwd=tmp_path
    )
    assert len(out["created"]) == 2
    assert out["skipped"] == [] and out["conflicts"] == {} and out["verify_problems"] == []
    expected = snapshot(seeded, tenant)
    assert len(expected) == 2
    assert snapshot(backends[dst], tenant) == expected


def test_copy_resumes_where_it_stopped(
    seeded: str, backends: dict[str, str], tmp_path: Path, invoke: Any
) -> None:
    destination = backends["redis"]
    with (
        closing(open_existing(seeded)) as seed,
        closing(open_existing(destination, create=True)) as dst,
    ):
        done = transfer.copy(seed, dst, tenant="sqlite-redis")
    proc = run("copy", seeded, destination, "--verify", cwd=tmp_path)
    assert "copied 10, skipped 2 (already there), conflicts 0" in proc.stdout
    assert "verified: 12 conversation(s) identical" in proc.stdout
    status, out, _ = invoke("copy", seeded, destination, "--json")
    again = json.loads(out)
    assert status == 0 and again["created"] == [] and len(again["skipped"]) == 12
    assert sorted(done.created) == sorted(snapshot(destination, "sqlite-redis"))


def test_copy_into_an_unreachable_store_fails_with_one_line(
    seeded: str, tmp_path: Path, invoke: Any
) -> None:
    unreachable = sqlite_url(tmp_path / "no" / "such" / "dir.db")
    status, _, err = invoke("copy", seeded, unreachable)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no").exists()


# --------------------------------------------------------------------------- errors


def test_bad_input_gives_one_line_and_writes_nothing(
    demo: tuple[Path, str], tmp_path: Path, invoke: Any
) -> None:
    where, _ = demo
    store = sqlite_url(where / "convostore-demo.db")
    other_tenants_id = run_json("ls", *DEMO_STORE, cwd=where)["items"][0]["id"]
    before = (where / "convostore-demo.db").read_bytes()
    bad = tmp_path / "bad.jsonl"
    good = invoke("export", "--store", store, "--tenant", "demo")[1].splitlines()
    bad.write_text("\n".join([*good[:3], '{"kind": "step", "conversation_id": 7}', *good[3:]]))
    cases: list[tuple[list[str], int, str]] = [
        (["ls", "--store", "foo://x"], 2, "unsupported store URL scheme 'foo'"),
        (["show", other_tenants_id, "--store", store, "--tenant", "acme"], 1, "not found"),
        (["import", str(bad), "--store", sqlite_url(tmp_path / "new.db")], 1, "line 4:"),
        # the same checks in-process from here on (a subprocess costs about a second)
        (["ls", "--store", "not a url"], 2, "not a store URL"),
        (["ls", "--store", sqlite_url(tmp_path / "missing.db")], 1, "no such database file"),
        (["show", "nope", "--store", store, "--tenant", "demo"], 1, "'nope' not found"),
        (["purge", "--older-than", "soon", "--store", store], 2, "not a duration"),
        (["ls", "--store", store, "--limit", "0"], 2, "--limit"),
        (["show", "a b", "--store", store], 2, "may only contain"),
        (["export", "x", "--all", "--store", store], 2, "not both"),
        (["delete", "nope", "--store", store, "--tenant", "demo"], 1, "not found"),
        (["reconcile", other_tenants_id, "--store", store], 1, "not found"),
        (["nosuchcommand"], 2, "No such command"),
        (["demo", "--live"], 2, "--live needs GEMINI_API_KEY"),
        (["ls", "--store", "postgresql+psycopg://u:secret@127.0.0.1:1/x"], 1, "u:***@"),
    ]
    for number, (args, status, message) in enumerate(cases):
        if number < 3:
            proc = run(*args, cwd=tmp_path, status=status)
            got, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            got, out, err = invoke(*args)
        assert got == status, (args, err)
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
        assert out == "", (args, out)
        assert "secret" not in err
    assert not (tmp_path / "missing.db").exists()
    assert not (tmp_path / "new.db").exists()
    assert (where / "convostore-demo.db").read_bytes() == before


def test_import_of_a_malformed_file_writes_nothing_to_an_existing_store(
    demo: tuple[Path, str], tmp_path: Path, invoke: Any
) -> None:
    where, _ = demo
    source = sqlite_url(where / "convostore-demo.db")
    lines = invoke("export", "--store", source, "--tenant", "demo")[1]
    target = sqlite_url(tmp_path / "target.db")
    assert invoke("db", "upgrade", target)[0] == 0
    broken = lines.splitlines()
    broken[-1] = broken[-1][:-5]  # the last line is cut short, e.g. by a full disk
    path = tmp_path / "cut.jsonl"
    path.write_text("\n".join(broken) + "\n")
    status, _, err = invoke("import", str(path), "--store", target)
    assert status == 1 and f"line {len(broken)}: not JSON" in err
    status, out, _ = invoke("ls", "--store", target, "--all-tenants", "--json")
    assert json.loads(out)["items"] == []


# --------------------------------------------------------------------------- chat


def test_chat_in_a_terminal_then_resume(tmp_path: Path) -> None:
    store = sqlite_url(tmp_path / "chat.db")
    args = ["chat", "--emulator", "--store", store, "--tenant", "acme", "--mode", "server"]
    child = pexpect.spawn(SCRIPT, args, cwd=str(tmp_path), env=clean_env(), encoding="utf-8")
    child.timeout = 30
    child.expect("you> ")
    child.sendline("I have 2 dogs in my house.")
    child.expect("Seen 1 user turn")
    child.expect("you> ")
    child.sendline("How many paws are in my house?")
    child.expect(r"Seen 2 user turn\(s\)")
    child.expect("you> ")
    child.sendline("/id")
    child.expect(r"([0-9a-f]{32})")
    conversation_id = child.match.group(1)
    child.expect("you> ")
    child.sendline("/usage")
    child.expect("total_tokens=")
    child.expect("you> ")
    child.sendline("/quit")
    child.expect(f"resume with: convostore chat --resume {conversation_id}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    # a fresh emulator has no chain to continue: the conversation replays by itself
    args = ["chat", "--emulator", "--store", store, "--tenant", "acme", "--resume"]
    child = pexpect.spawn(
        SCRIPT, [*args, conversation_id], cwd=str(tmp_path), env=clean_env(), encoding="utf-8"
    )
    child.timeout = 30
    child.expect("resumed conversation")
    child.expect("you> ")
    child.sendline("And a cat.")
    child.expect(r"Seen 3 user turn\(s\)")
    child.expect("chain_broken")
    child.expect("you> ")
    child.sendline("/fork 1")
    child.expect(r"forked at turn 1: now in (?:\x1b\[[0-9;]*m)?([0-9a-f]{32})")
    fork_id = child.match.group(1)
    child.expect("you> ")
    child.sendline("/mode stateless")
    child.expect("mode is now stateless")
    child.expect("you> ")
    child.sendline("/mode sideways")
    child.expect("error:")
    child.expect("you> ")
    child.sendline("How many paws now?")
    child.expect(r"Seen 2 user turn\(s\)")
    child.expect("stateless_mode")
    child.expect("you> ")
    child.sendline("/history")
    child.expect("turn 2 · stateless · stateless_mode")
    child.expect("you> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    data = run_json("show", conversation_id, "--store", store, "--tenant", "acme", cwd=tmp_path)
    said = [t["steps"][0]["content"][0]["text"] for t in data["turns"] if t["steps"]]
    assert said == ["I have 2 dogs in my house.", "How many paws are in my house?", "And a cat."]
    fork = run_json("show", fork_id, "--store", store, "--tenant", "acme", cwd=tmp_path)
    assert fork["conversation"]["mode"] == "stateless" and len(fork["turns"]) == 2


# --------------------------------------------------------------------------- server side


def test_reconcile_delete_and_purge_against_a_server(
    emulator: Any, tmp_path: Path, invoke: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sqlite_url(tmp_path / "remote.db")
    with (
        InteractionsClient(api_key="k", base_url=emulator.url, max_retries=0) as client,
        Conversations(store, client) as convos,
    ):
        conv = convos.create(tenant="acme", mode="server")
        for text in ("one", "two", "three"):
            conv.send(text)
        private = convos.create(tenant="acme", mode="stateless")
        private.send("secret")
        ids = [t.interaction_id for t in conv.turns()]
    env = clean_env(GEMINI_API_KEY="k", GOOGLE_GEMINI_BASE_URL=emulator.url)
    scope = ("--store", store, "--tenant", "acme")

    emulator.expire(ids[0])
    items = run_json("reconcile", conv.id, *scope, cwd=tmp_path, env=env)
    assert [i["state"] for i in items] == ["missing", "present", "present"]
    report = run_json("delete", conv.id, *scope, "--remote", cwd=tmp_path, env=env)
    assert report["remote_deleted"] == ids and report["remote_failed"] == {}
    assert all(i not in emulator.interactions for i in ids)

    status, out, _ = invoke("reconcile", private.id, *scope, "--base-url", emulator.url, "--json")
    assert [i["state"] for i in json.loads(out)] == ["not_stored"]
    assert invoke("show", conv.id, *scope)[0] == 1
    status, out, _ = invoke("purge", *scope, "--older-than", "0m", "--dry-run", "--json")
    assert status == 0
    assert [c["id"] for c in json.loads(out)["conversations"]] == [private.id]
    assert invoke("show", private.id, *scope)[0] == 0
    _, out, _ = invoke("purge", *scope, "--older-than", "0m", "--json")
    assert [c["id"] for c in json.loads(out)["conversations"]] == [private.id]
    assert json.loads(invoke("ls", *scope, "--json")[1])["items"] == []

    with (
        InteractionsClient(api_key="k", base_url=emulator.url, max_retries=0) as client,
        Conversations(store, client) as convos,
    ):
        old = convos.create(tenant="acme", mode="server")
        kept_on_server = old.send("forget me").interaction_id
    assert kept_on_server in emulator.interactions
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    remote = ("--remote", "--base-url", emulator.url, "--json")
    status, out, _ = invoke("purge", *scope, "--older-than", "0m", *remote)
    assert status == 0 and json.loads(out)["remote_deleted"] == [kept_on_server]
    assert kept_on_server not in emulator.interactions


def test_recover_adopts_a_dead_workers_turn_and_retries_the_outbox(
    emulator: Any, tmp_path: Path
) -> None:
    from datetime import timedelta

    from convostore._core import planner
    from convostore.models import PendingTurnRecord, utcnow

    store = sqlite_url(tmp_path / "recover.db")
    with (
        InteractionsClient(api_key="k", base_url=emulator.url, max_retries=0) as client,
        Conversations(store, client) as convos,
    ):
        conv = convos.create(tenant="acme", mode="server")
        conv.send("one")
        # a worker that got its answer and died before committing it
        record = conv.refresh()
        decision = planner.decide(record, policy=planner.Policy(), now=utcnow())
        step = {"type": "user_input", "content": [{"type": "text", "text": "two"}]}
        body = planner.plan_request(record, decision, new_steps=[step])
        answered = client.create(**body).id
        now = utcnow()
        convos.store.begin_turn(
            PendingTurnRecord(
                conversation_id=conv.id,
                tenant="acme",
                seq=2,
                planned_version=record.version,
                idempotency_key="dead-worker-key",
                state="sent",
                mode_used=decision.mode_used,
                reason=decision.reason,
                model=record.model,
                store=True,
                previous_interaction_id=decision.previous_interaction_id,
                input_steps=[step],
                interaction_id=answered,
                hop_ids=[answered],
                lease_owner="dead",
                lease_expires_at=now - timedelta(seconds=5),
                created_at=now - timedelta(minutes=1),
                updated_at=now - timedelta(minutes=1),
            )
        )
        other = convos.create(tenant="acme", mode="server")
        other_ids = [other.send("erase me").interaction_id]
        emulator.fail(500, times=1)
        assert convos.delete(other.id, tenant="acme", remote=True).remote_failed
    env = clean_env(GEMINI_API_KEY="k", GOOGLE_GEMINI_BASE_URL=emulator.url)
    scope = ("--store", store, "--tenant", "acme")
    # not due yet: the failed deletion waits for its next attempt
    report = run_json("recover", *scope, cwd=tmp_path, env=env)
    assert report["adopted"] == [f"{conv.id}#2"] and report["lost"] == []
    shown = run_json("show", conv.id, *scope, cwd=tmp_path, env=env)
    assert [t["interaction_id"] for t in shown["turns"]][-1] == answered
    assert run_json("recover", *scope, cwd=tmp_path, env=env)["adopted"] == []
    with sqlite3.connect(tmp_path / "recover.db") as db:
        db.execute("UPDATE outbox SET next_attempt_at = '2000-01-01 00:00:00.000000'")
    text = run("recover", *scope, cwd=tmp_path, env=env).stdout
    assert "1 server deletion(s) done, 0 outstanding" in text
    assert other_ids[0] not in emulator.interactions
    status = run("recover", "--older-than", "soon", *scope, cwd=tmp_path, env=env, status=2)
    assert "not a duration" in status.stderr


def test_db_commands(tmp_path: Path, invoke: Any) -> None:
    url = sqlite_url(tmp_path / "schema.db")
    behind = run("db", "check", url, cwd=tmp_path, status=1)
    assert "run: convostore db upgrade" in behind.stderr
    assert "not migrated" in invoke("db", "current", url)[1]
    assert invoke("db", "upgrade", url)[0] == 0
    status, out, _ = invoke("db", "check", url)
    assert status == 0 and "up to date" in out
    status, _, err = invoke("db", "upgrade", "redis://127.0.0.1:6379/0")
    assert status == 2 and "not a SQL database URL" in err


def test_emulator_command_serves_over_http(tmp_path: Path) -> None:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    child = pexpect.spawn(
        SCRIPT,
        ["emulator", "--port", str(port), "--retention", "1d"],
        cwd=str(tmp_path),
        env=clean_env(),
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect(f"http://127.0.0.1:{port}")
        transport = httpx.HTTPTransport(retries=20)  # retries connecting while it starts
        with httpx.Client(transport=transport, timeout=10) as http:
            answer = http.post(
                f"http://127.0.0.1:{port}/v1beta/interactions",
                headers={"x-goog-api-key": "k"},
                json={"model": "m", "input": "hello"},
            )
        assert answer.status_code == 200
        assert answer.json()["status"] == "completed"
    finally:
        child.terminate(force=True)


# --------------------------------------------------------------------------- help


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    commands = list(all_commands(cli))
    assert {"demo", "chat", "ls", "show", "export", "import", "copy", "verify"} <= {
        c[0] for c in commands
    }
    for command in commands:
        result = runner.invoke(cli, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Example" in result.output, command

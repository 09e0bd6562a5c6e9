"""Commands that walk many conversations show a progress bar on a terminal and nothing on a
pipe or with --json; ``copy`` and ``import`` killed half way resume where they stopped."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pexpect
import pytest

import convostore as cs
from convostore._core.audit import turn_hash
from convostore.testing import make_commit, make_record, model_step, user_step

MANY = 300


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


CONVOSTORE = str(Path(sys.executable).parent / "convostore")


def command(*args: str) -> list[str]:
    return [CONVOSTORE, *args]


def env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("CONVOSTORE_")}
    return {**keep, "COLUMNS": "100", "TERM": "xterm"}


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with MANY conversations of one turn each, in two tenants."""
    path = tmp_path_factory.mktemp("many") / "many.db"
    with closing(cs.open_store(sqlite_url(path))) as store:
        for n in range(MANY):
            record = make_record(tenant=f"t{n % 2}")
            commit = make_commit(record, [user_step(f"hi {n}"), model_step("hello")])
            audited = turn_hash(None, commit.turn, commit.steps)
            turn = commit.turn.model_copy(update={"audit_hash": audited})
            after = commit.record.model_copy(update={"last_turn_hash": audited})
            store.create_conversation(after, turns=[turn], steps=commit.steps)
    return path


def count(path: Path) -> int:
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path, timeout=30)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM conversations").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


@pytest.mark.parametrize(
    ("args", "bar"),
    [
        (["verify", "--all-tenants"], "verifying"),
        (["export", "--all", "-o", "{tmp}/all.jsonl"], "exporting"),
        (["copy", "{src}", "sqlite:///{tmp}/copy.db"], "copying"),
    ],
)
def test_a_bar_on_a_terminal_nothing_on_a_pipe_or_with_json(
    args: list[str], bar: str, many: Path, tmp_path: Path
) -> None:
    def filled(extra: list[str]) -> list[str]:
        out = [a.format(tmp=tmp_path, src=sqlite_url(many)) for a in args + extra]
        return out if args[0] == "copy" else [*out, "--store", sqlite_url(many)]

    # a terminal: the bar is drawn on it (and erased at the end)
    child = pexpect.spawn(CONVOSTORE, filled([]), env=env(), timeout=120)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert bar.encode() in child.before
    (tmp_path / "copy.db").unlink(missing_ok=True)
    # a pipe: no bar
    done = subprocess.run(command(*filled([])), capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr
    assert bar not in done.stderr + done.stdout
    if args[0] != "export":  # --json on a terminal: no bar either
        (tmp_path / "copy.db").unlink(missing_ok=True)
        child = pexpect.spawn(CONVOSTORE, filled(["--json"]), env=env(), timeout=120)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert bar.encode() not in child.before
        json.loads(child.before.decode())  # the JSON alone


def _kill_when(proc: subprocess.Popen[bytes], destination: Path, at_least: int) -> int:
    deadline = time.monotonic() + 120
    while count(destination) < at_least:
        assert proc.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return count(destination)


def test_copy_killed_half_way_resumes(many: Path, tmp_path: Path) -> None:
    destination = tmp_path / "dst.db"
    args = ["copy", sqlite_url(many), sqlite_url(destination)]
    proc = subprocess.Popen(command(*args), env=env(), stdout=subprocess.DEVNULL)
    copied = _kill_when(proc, destination, 30)
    assert 30 <= copied < MANY
    done = subprocess.run(
        command(*args, "--verify", "--json"), capture_output=True, text=True, env=env()
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["skipped"]) == copied  # already copied: skipped, not copied twice
    assert len(report["created"]) == MANY - copied
    assert report["conflicts"] == {} and report["verify_problems"] == []


def test_import_killed_half_way_resumes(many: Path, tmp_path: Path) -> None:
    export = tmp_path / "all.jsonl"
    done = subprocess.run(
        command("export", "--all", "--store", sqlite_url(many), "-o", str(export)),
        capture_output=True,
        env=env(),
    )
    assert done.returncode == 0
    destination = tmp_path / "imported.db"
    args = ["import", str(export), "--store", sqlite_url(destination)]
    proc = subprocess.Popen(command(*args), env=env(), stdout=subprocess.DEVNULL)
    imported = _kill_when(proc, destination, 30)
    assert 30 <= imported < MANY
    done = subprocess.run(command(*args, "--json"), capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["skipped"]) == imported and len(report["created"]) == MANY - imported
    verify = subprocess.run(
        command("verify", "--all-tenants", "--json", "--store", sqlite_url(destination)),
        capture_output=True,
        text=True,
        env=env(),
    )
    report = json.loads(verify.stdout)
    assert (report["checked"], report["problems"], report["warnings"]) == (MANY, {}, {})

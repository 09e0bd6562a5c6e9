"""The command line on an encrypted store: every command reads through the key ring named by
CONVOSTORE_KEYS, and ``rotate-key`` moves every conversation to a new primary key."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import convostore as cs
from convostore.emulator import Emulator

SCRIPT = str(Path(sys.executable).with_name("convostore"))


def convostore(*args: str, keys: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1"}
    if keys is not None:
        env["CONVOSTORE_KEYS"] = keys
    return subprocess.run(
        [SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_encrypted_store_through_the_command_line(tmp_path: Path, emulator: Emulator) -> None:
    old, new = cs.KeyRing.generate("k1"), cs.KeyRing.generate("k2")
    url = f"sqlite:///{tmp_path / 'secret.db'}"
    store = cs.open_store(url, encryption=cs.KeyRing.from_string(old))
    with (
        cs.InteractionsClient(api_key="k", base_url=emulator.url) as client,
        cs.Conversations(store, client) as convos,
    ):
        conv = convos.create(tenant="acme", system_instruction="The secret word is PLUM.")
        conv.send("Remember the word MARMALADE.")
    store.close()
    with sqlite3.connect(tmp_path / "secret.db") as db:
        dumped = "\n".join(db.iterdump())
    assert "MARMALADE" not in dumped and "PLUM" not in dumped

    shown = convostore("show", conv.id, "--store", url, "--tenant", "acme", keys=old, cwd=tmp_path)
    assert shown.returncode == 0 and "MARMALADE" in shown.stdout

    refused = convostore("rotate-key", "--store", url, keys=None, cwd=tmp_path)
    assert refused.returncode == 2 and "CONVOSTORE_KEYS" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    rotated = convostore("rotate-key", "--store", url, keys=f"{new},{old}", cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "rotated 1 of 1" in rotated.stdout and "k2" in rotated.stdout

    for args in (("show", conv.id, "--tenant", "acme"), ("verify", "--tenant", "acme")):
        after = convostore(*args, "--store", url, keys=new, cwd=tmp_path)
        assert after.returncode == 0, after.stderr
    assert (
        "MARMALADE"
        in convostore(
            "show", conv.id, "--store", url, "--tenant", "acme", keys=new, cwd=tmp_path
        ).stdout
    )
    stale = convostore("show", conv.id, "--store", url, "--tenant", "acme", keys=old, cwd=tmp_path)
    assert stale.returncode == 1 and "k2" in stale.stderr
    assert "Traceback" not in stale.stderr

"""Turns in flight and the outbox in export, import, copy and verify (library and CLI)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import convostore as cs
from convostore import _transfer as transfer
from convostore.cli import run as run_in_process
from convostore.models import utcnow
from convostore.testing import (
    add_turn,
    make_outbox_item,
    make_pending,
    make_record,
    user_step,
)

TENANT = "acme"


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Any]:
    with closing(cs.open_store(f"sqlite:///{tmp_path / 'source.db'}")) as store:
        yield store


def _in_flight(store: Any, *, expired: bool = False) -> cs.PendingTurnRecord:
    # no turn yet: verify checks the audit chain of real turns, which these are not
    record = store.create_conversation(make_record(tenant=TENANT))
    now = utcnow()
    lease = now - timedelta(minutes=1) if expired else now + timedelta(minutes=5)
    pending = make_pending(
        record,
        input_steps=[user_step("Grüße 🐈 — still in flight")],
        state="sent",
        interaction_id="v1_hop",
        hop_ids=["v1_hop"],
        lease_expires_at=lease,
    )
    store.begin_turn(pending)
    return pending


def _export(store: Any) -> str:
    out = io.StringIO()
    transfer.export(store, out, transfer.iter_records(store, tenant=TENANT))
    return out.getvalue()


def test_export_import_carry_the_turn_in_flight(source: Any, tmp_path: Path) -> None:
    pending = _in_flight(source)
    add_turn(source, source.create_conversation(make_record(tenant=TENANT)))  # none in flight
    text = _export(source)
    kinds = [json.loads(line)["kind"] for line in text.splitlines()]
    assert kinds.count("pending") == 1 and kinds[-1] in ("pending", "step")
    bundles = transfer.read_export(text.splitlines())
    assert [b.pending for b in bundles if b.pending is not None] == [pending]
    with closing(cs.open_store(f"sqlite:///{tmp_path / 'dest.db'}")) as dest:
        report = transfer.import_bundles(dest, bundles)
        assert len(report.created) == 2 and report.conflicts == {}
        assert dest.get_pending(pending.conversation_id, tenant=TENANT) == pending
        # run again: nothing changes, nothing conflicts
        again = transfer.import_bundles(dest, transfer.read_export(text.splitlines()))
        assert again.created == [] and len(again.skipped) == 2 and again.conflicts == {}
        # interrupted before the turn in flight was written: a re-run writes it
        dest.release_pending(
            pending.conversation_id, tenant=TENANT, idempotency_key=pending.idempotency_key
        )
        transfer.import_bundles(dest, transfer.read_export(text.splitlines()))
        assert dest.get_pending(pending.conversation_id, tenant=TENANT) == pending
        # another turn in flight there is a conflict, left alone
        dest.release_pending(
            pending.conversation_id, tenant=TENANT, idempotency_key=pending.idempotency_key
        )
        record = dest.get_conversation(pending.conversation_id, tenant=TENANT)
        other = make_pending(record)
        dest.begin_turn(other)
        clash = transfer.import_bundles(dest, transfer.read_export(text.splitlines()))
        assert list(clash.conflicts) == [pending.conversation_id]
        assert dest.get_pending(pending.conversation_id, tenant=TENANT) == other


def test_copy_and_compare_carry_the_turn_in_flight(
    source: Any, redis_url: str, redis_prefix: str
) -> None:
    pending = _in_flight(source)
    with closing(cs.open_store(redis_url, key_prefix=redis_prefix)) as dest:
        report = transfer.copy(source, dest, tenant=TENANT)
        assert report.created == [pending.conversation_id]
        assert dest.get_pending(pending.conversation_id, tenant=TENANT) == pending
        assert transfer.compare(source, dest, tenant=TENANT) == []
        dest.release_pending(
            pending.conversation_id, tenant=TENANT, idempotency_key=pending.idempotency_key
        )
        assert transfer.compare(source, dest, tenant=TENANT) == [
            f"{pending.conversation_id}: its turn in flight differs"
        ]


def test_a_turn_committed_meanwhile_is_not_exported_as_in_flight(source: Any) -> None:
    pending = _in_flight(source)
    record = source.get_conversation(pending.conversation_id, tenant=TENANT)
    add_turn(source, record)  # another turn landed: the record in flight no longer continues
    assert source.get_pending(record.id, tenant=TENANT) == pending
    assert transfer.load(source, record).pending is None
    assert '"kind":"pending"' not in _export(source)


def test_a_bad_turn_in_flight_in_an_export_names_its_line(source: Any) -> None:
    pending = _in_flight(source)
    lines = _export(source).splitlines()
    pending_line = json.loads(lines[-1])
    assert pending_line["kind"] == "pending"
    cases = {
        "does not continue": [*lines[:-1], json.dumps({**pending_line, "seq": 7})],
        "second turn in flight": [*lines, lines[-1]],
        "invalid pending": [*lines[:-1], json.dumps({**pending_line, "idempotency_key": ""})],
        "is not after that conversation": [
            *lines[:-1],
            json.dumps({**pending_line, "conversation_id": "c-other"}),
        ],
    }
    for message, broken in cases.items():
        with pytest.raises(transfer.ExportFormatError, match=message) as info:
            transfer.read_export(broken)
        assert info.value.line == len(broken)
    assert transfer.read_export(lines)[0].pending == pending


@pytest.fixture
def invoke(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("CONVOSTORE_URL", "CONVOSTORE_TENANT", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = run_in_process(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return status, out, err

    return call


def test_verify_warns_of_expired_leases_and_outstanding_deletions(
    tmp_path: Path, invoke: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'verify.db'}"
    with closing(cs.open_store(url)) as store:
        stuck = _in_flight(store, expired=True)
        live = _in_flight(store)
        store.add_outbox([make_outbox_item(TENANT), make_outbox_item(TENANT)])
        store.add_outbox([make_outbox_item("elsewhere")])
    status, out, _ = invoke("verify", "--store", url, "--tenant", TENANT)
    assert status == 0, out  # warnings are not problems
    assert f"warning {stuck.conversation_id}: turn 1 in flight (sent)" in out
    assert "its lease (worker-1) expired" in out
    assert live.conversation_id not in out
    assert "2 server deletions outstanding" in out
    assert "checked 2 conversation(s): 0 with problems" in out
    status, out, _ = invoke("verify", "--store", url, "--all-tenants", "--json")
    report = json.loads(out)
    assert status == 0 and report["problems"] == {}
    assert list(report["warnings"]) == [stuck.conversation_id]
    assert report["outbox_outstanding"] == 3


def test_cli_export_and_import_carry_the_turn_in_flight(tmp_path: Path, invoke: Any) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with closing(cs.open_store(url)) as store:
        pending = _in_flight(store)
    dump = tmp_path / "dump.jsonl"
    status, _, _ = invoke("export", "--store", url, "--tenant", TENANT, "--all", "-o", str(dump))
    assert status == 0 and '"kind":"pending"' in dump.read_text(encoding="utf-8")
    target = f"sqlite:///{tmp_path / 'b.db'}"
    status, out, _ = invoke("import", str(dump), "--store", target, "--json")
    assert status == 0 and json.loads(out)["created"] == [pending.conversation_id]
    with closing(cs.open_store(target)) as store:
        assert store.get_pending(pending.conversation_id, tenant=TENANT) == pending

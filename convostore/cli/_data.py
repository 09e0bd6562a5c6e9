"""``ls``, ``show``, ``export``, ``import``, ``copy``, ``verify``, ``reconcile``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click
from rich.markup import escape
from rich.table import Table

from .. import _transfer as transfer
from .._exceptions import (
    ConvostoreError,
)

if TYPE_CHECKING:
    pass

from ._common import (
    _client,
    _emit_json,
    _err,
    _out,
    _store,
    base_url_option,
    bundle_json,
    cli,
    json_option,
    print_transcript,
    progress_bar,
    store_option,
    tenant_option,
)

# --------------------------------------------------------------------------- browsing


@cli.command("ls", epilog="Example: convostore ls --tenant acme --user u42 --limit 10")
@store_option
@tenant_option
@click.option("--all-tenants", is_flag=True, help="List every tenant's conversations.")
@click.option("--user", default=None, help="Only this user's conversations.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--cursor", default=None, help="Continue after a previous page.")
@json_option
def ls_command(
    store_url: str,
    tenant: str,
    all_tenants: bool,
    user: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> int:
    """List conversations, newest first (paginated: prints the next cursor)."""
    with _store(store_url) as store:
        page = store.list_conversations(
            tenant=None if all_tenants else tenant, user=user, limit=limit, cursor=cursor
        )
    if as_json:
        _emit_json(
            {
                "items": [r.model_dump(mode="json") for r in page.items],
                "next_cursor": page.next_cursor,
            }
        )
        return 0
    table = Table(box=None, header_style="bold")
    width = max((len(r.id) for r in page.items), default=2)
    table.add_column("id", no_wrap=True, min_width=width)
    columns = ["tenant"] if all_tenants else []
    for column in [*columns, "user", "mode", "turns", "updated"]:
        table.add_column(column, no_wrap=True)
    for r in page.items:
        tenant_cell = [r.tenant] if all_tenants else []
        table.add_row(
            r.id,
            *tenant_cell,
            r.user or "-",
            r.mode,
            str(r.turn_count),
            r.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    console = _out()
    if page.items:
        console.print(table)
    else:
        console.print("no conversations")
    if page.next_cursor:
        console.print(f"next page: --cursor {page.next_cursor}")
    return 0


@cli.command("show", epilog="Example: convostore show 3f2a… --tenant acme --json")
@click.argument("conversation_id")
@store_option
@tenant_option
@json_option
@click.option(
    "--context-at",
    type=click.IntRange(1, None),
    default=None,
    metavar="K",
    help="Print what the model saw at turn K (the compacted view in force, then its input).",
)
def show_command(
    conversation_id: str, store_url: str, tenant: str, as_json: bool, context_at: int | None
) -> int:
    """Print a conversation's transcript with each turn's mode, reason, status and usage;
    a compaction is drawn as a marker after the turns it covers."""
    with _store(store_url) as store:
        record = store.get_conversation(conversation_id, tenant=tenant)
        bundle = transfer.load(store, record)
    if context_at is not None:
        from ._context import context_at as seen
        from ._context import print_context

        if context_at > len(bundle.turns):
            raise click.BadParameter(f"the conversation has {len(bundle.turns)} turns")
        steps = seen(bundle, context_at)
        if as_json:
            _emit_json(steps)
        else:
            print_context(_out(), steps)
        return 0
    if as_json:
        _emit_json(bundle_json(bundle))
    else:
        print_transcript(_out(), bundle)
    return 0


# --------------------------------------------------------------------------- moving data


@contextmanager
def _output(path: str) -> Iterator[TextIO]:
    """stdout for ``-``; otherwise a file written in full before it replaces ``path``."""
    if path == "-":
        yield sys.stdout
        return
    target = Path(path)
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            yield handle
        partial.replace(target)
    except OSError as exc:
        raise ConvostoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


@cli.command(
    "export",
    epilog="Examples: convostore export ID > one.jsonl;  convostore export --all -o all.jsonl",
)
@click.argument("conversation_id", required=False)
@store_option
@tenant_option
@click.option("--all", "all_tenants", is_flag=True, help="Every conversation of every tenant.")
@click.option("-o", "--output", default="-", metavar="FILE", help="Write here (default stdout).")
def export_command(
    conversation_id: str | None, store_url: str, tenant: str, all_tenants: bool, output: str
) -> int:
    """Export conversations as JSON Lines: one conversation (ID), the tenant's, or --all.

    Each line is one record: {"kind": "conversation"|"turn"|"step", ...}.
    """
    if conversation_id is not None and all_tenants:
        raise click.UsageError("give either a conversation ID or --all, not both")
    with _store(store_url) as store:
        # streamed: one page of records and one conversation's history in memory at a time
        records = transfer.iter_records(
            store, tenant=None if all_tenants else tenant, conversation_id=conversation_id
        )
        with _output(output) as handle, progress_bar("exporting") as advance:
            count = transfer.export(store, handle, records, progress=advance)
    if output != "-":
        _err().print(f"exported {count} conversation(s) to {output}")
    return 0


def _report(report: transfer.TransferReport, as_json: bool, verb: str) -> int:
    if as_json:
        _emit_json(report.as_dict())
    else:
        console = _out()
        console.print(
            f"{verb} {len(report.created)}, skipped {len(report.skipped)} (already there), "
            f"conflicts {len(report.conflicts)}"
        )
        for cid, why in report.conflicts.items():
            console.print(f"conflict {cid}: {why}")
    return 1 if report.conflicts else 0


@cli.command("import", epilog="Example: convostore import all.jsonl --store postgresql://…")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@store_option
@json_option
def import_command(file: str, store_url: str, as_json: bool) -> int:
    """Import a JSON Lines export. The whole file is validated first (nothing is written if any
    line is bad); conversations already present with the same content are skipped."""
    try:
        handle = sys.stdin if file == "-" else open(file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ConvostoreError(f"cannot read {file}: {exc.strerror or exc}") from exc
    try:
        bundles = transfer.read_export(handle)
    except transfer.ExportFormatError as exc:
        raise transfer.ExportFormatError(0, f"{file}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConvostoreError(f"{file}: not UTF-8 text") from exc
    finally:
        if handle is not sys.stdin:
            handle.close()
    with (
        _store(store_url, create=True) as store,
        progress_bar("importing", len(bundles), quiet=as_json) as advance,
    ):
        report = transfer.import_bundles(store, bundles, progress=advance)
    return _report(report, as_json, "imported")


@cli.command(
    "copy",
    epilog="Example: convostore copy sqlite:///chat.db postgresql://db/chat --verify",
)
@click.argument("source_url", metavar="SRC_URL")
@click.argument("destination_url", metavar="DST_URL")
@click.option("--tenant", default=None, help="Only this tenant (default: every tenant).")
@click.option("--id", "conversation_id", default=None, help="Only this conversation.")
@click.option("--verify", "check", is_flag=True, help="Compare source and destination after.")
@json_option
def copy_command(
    source_url: str,
    destination_url: str,
    tenant: str | None,
    conversation_id: str | None,
    check: bool,
    as_json: bool,
) -> int:
    """Copy conversations from one store to another (any backends). Resumable: conversations
    already copied are skipped. Migrate a server database first (convostore db upgrade)."""
    if conversation_id is not None and tenant is None:
        raise click.UsageError("--id needs --tenant")
    with _store(source_url) as source, _store(destination_url, create=True) as destination:
        with progress_bar("copying", quiet=as_json) as advance:
            report = transfer.copy(
                source,
                destination,
                tenant=tenant,
                conversation_id=conversation_id,
                progress=advance,
            )
        if check:
            with progress_bar("comparing", quiet=as_json) as advance:
                problems = transfer.compare(
                    source,
                    destination,
                    tenant=tenant,
                    conversation_id=conversation_id,
                    progress=advance,
                )
        else:
            problems = []
        copied = len(report.created) + len(report.skipped) + len(report.conflicts)
    if as_json:
        _emit_json({**report.as_dict(), "verify_problems": problems if check else None})
        status = 1 if report.conflicts else 0
    else:
        status = _report(report, False, "copied")
    if check and not as_json:
        console = _out()
        for problem in problems:
            console.print(f"differs: {problem}")
        if not problems:
            console.print(f"verified: {copied} conversation(s) identical in both stores")
    return 1 if problems else status


# --------------------------------------------------------------------------- checking


@cli.command("verify", epilog="Example: convostore verify            (every conversation)")
@click.argument("conversation_id", required=False)
@store_option
@tenant_option
@click.option("--all-tenants", is_flag=True, help="Check every tenant's conversations.")
@json_option
def verify_command(
    conversation_id: str | None, store_url: str, tenant: str, all_tenants: bool, as_json: bool
) -> int:
    """Check stored conversations: contiguous seqs, counts, a linear chain, payloads that
    parse, audit hashes. Exits 1 and lists the problems if any are found. Warns (without
    failing) of turns in flight whose lease expired and of server deletions outstanding."""
    bad: dict[str, list[str]] = {}
    warned: dict[str, list[str]] = {}
    checked = 0
    scope = None if all_tenants else tenant
    with _store(store_url) as store, progress_bar("verifying", quiet=as_json) as advance:
        for record in transfer.iter_records(store, tenant=scope, conversation_id=conversation_id):
            problems = transfer.verify(store, record)
            notes = transfer.warnings(store, record)
            checked += 1
            if problems:
                bad[record.id] = problems
            if notes:
                warned[record.id] = notes
            advance()
        outstanding = transfer.outbox_outstanding(store, tenant=scope)
    if as_json:
        _emit_json(
            {
                "checked": checked,
                "problems": bad,
                "warnings": warned,
                "outbox_outstanding": outstanding,
            }
        )
    else:
        console = _out()
        for cid, problems in bad.items():
            for problem in problems:
                console.print(f"[red]problem[/] {cid}: {escape(problem)}")
        for cid, found in warned.items():
            for note in found:
                console.print(f"[yellow]warning[/] {cid}: {escape(note)}")
        if outstanding:
            console.print(f"[yellow]warning[/] {outstanding} server deletions outstanding")
        console.print(f"checked {checked} conversation(s): {len(bad)} with problems")
    return 1 if bad else 0


@cli.command(
    "reconcile", epilog="Example: convostore reconcile ID --base-url http://127.0.0.1:8765"
)
@click.argument("conversation_id")
@store_option
@tenant_option
@base_url_option
@json_option
def reconcile_command(
    conversation_id: str, store_url: str, tenant: str, base_url: str | None, as_json: bool
) -> int:
    """Compare the local mirror with the server: GET each stored interaction and report it
    present, missing (expired or deleted) or differs. Exits 1 if any differs or fails."""
    with _store(store_url) as store:
        record = store.get_conversation(conversation_id, tenant=tenant)
        with _client(base_url) as client:
            items = transfer.reconcile(store, client, record)
    if as_json:
        _emit_json([item.as_dict() for item in items])
    else:
        table = Table(box=None, header_style="bold")
        for column in ("turn", "interaction", "state", "detail"):
            table.add_column(column)
        for item in items:
            table.add_row(str(item.seq), item.interaction_id or "-", item.state, item.detail)
        _out().print(table)
    return 1 if any(i.state in ("differs", "error") for i in items) else 0

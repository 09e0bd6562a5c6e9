"""The ``convostore`` command: inspect, move, check and clean up stored conversations; chat;
run the demo; serve the emulator; migrate databases.

Exit status: 0 on success, 1 when the command ran and failed (a missing conversation, a store
that cannot be reached, problems found by ``verify``, a malformed export file), 2 for usage
errors (a bad option, a store URL convostore cannot use, an invalid value).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from . import _transfer as transfer
from ._exceptions import (
    APIError,
    ConfigurationError,
    ConversationNotFound,
    ConvostoreError,
    StoreError,
    StoreUnavailable,
    ValidationError,
)
from ._sync.store import Store
from ._urls import family, redact
from .models import MODES, utcnow

if TYPE_CHECKING:
    from ._sync.client import InteractionsClient
    from ._sync.conversation import Conversation

__all__ = ["DEFAULT_STORE", "cli", "main", "parse_duration"]

DEFAULT_STORE = "sqlite:///convostore.db"
"""The store used when neither ``--store`` nor ``CONVOSTORE_URL`` is given."""

_F = TypeVar("_F", bound=Callable[..., Any])

# --------------------------------------------------------------------------- helpers


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s`` (or ``2w``) -> timedelta.

    Raises:
        ValidationError: not a duration.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text.lower())
    if match is None:
        raise ValidationError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m)")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return timedelta(seconds=int(match.group(1)) * seconds)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True, default=str))


def _sqlite_file(url: str) -> Path | None:
    if not url.lower().startswith("sqlite"):
        return None
    path = url.split("://", 1)[1].split("?", 1)[0]
    if not path.startswith("/") or path in ("/", "/:memory:"):
        return None
    return Path(path[1:])


def open_existing(url: str, *, create: bool = False) -> Store:
    """Open the store at ``url``. Unless ``create``, a SQLite file must already exist (so a
    mistyped path is reported instead of silently creating an empty database)."""
    from ._registry import open_store

    family(url)
    path = _sqlite_file(url)
    if not create and path is not None and not path.exists():
        raise StoreUnavailable(f"{redact(url)}: no such database file ({path})")
    options: dict[str, Any] = {}
    if family(url) == "redis":
        url, options = _redis_options(url)
    store: Store = open_store(url, **options)
    return store


def _redis_options(url: str) -> tuple[str, dict[str, Any]]:
    """Take ``key_prefix`` out of a Redis URL's query (``redis://h/0?key_prefix=app:``): it is
    a store option, not a connection setting."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "key_prefix"]
    if not prefixes:
        return url, {}
    rest = urlencode([(name, value) for name, value in query if name != "key_prefix"])
    return urlunsplit(parts._replace(query=rest)), {"key_prefix": prefixes[-1]}


@contextmanager
def _store(url: str, *, create: bool = False) -> Iterator[Store]:
    store = open_existing(url, create=create)
    try:
        yield store
    finally:
        store.close()


def _client(base_url: str | None) -> InteractionsClient:
    from ._sync.client import InteractionsClient

    return InteractionsClient(base_url=base_url or None)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=_err(),
        transient=True,
    )


# --------------------------------------------------------------------------- options


def store_option(func: _F) -> _F:
    return click.option(
        "--store",
        "store_url",
        envvar="CONVOSTORE_URL",
        default=DEFAULT_STORE,
        show_default=True,
        metavar="URL",
        help="Store URL (env CONVOSTORE_URL): sqlite:///file.db, postgresql://…, "
        "mysql+pymysql://…, redis://host:6379/0[?key_prefix=app:]",
    )(func)


def tenant_option(func: _F) -> _F:
    return click.option(
        "--tenant",
        envvar="CONVOSTORE_TENANT",
        default="default",
        show_default=True,
        help="Tenant the conversation belongs to (env CONVOSTORE_TENANT).",
    )(func)


def json_option(func: _F) -> _F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def base_url_option(func: _F) -> _F:
    return click.option(
        "--base-url",
        envvar="GOOGLE_GEMINI_BASE_URL",
        default=None,
        metavar="URL",
        help="API base URL (env GOOGLE_GEMINI_BASE_URL), e.g. a `convostore emulator`. "
        "The key comes from GEMINI_API_KEY.",
    )(func)


# --------------------------------------------------------------------------- rendering


def _text_of(parts: Any) -> str:
    out: list[str] = []
    for part in parts or []:
        if isinstance(part, dict) and part.get("type") == "text":
            out.append(str(part.get("text", "")))
        elif isinstance(part, dict):
            out.append(f"[{part.get('type')}]")
    return " ".join(out)


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_step(payload: dict[str, Any]) -> tuple[str, str]:
    """A step as ``(label, one readable line)`` for transcripts."""
    kind = str(payload.get("type"))
    if kind == "user_input":
        return "you", _text_of(payload.get("content"))
    if kind == "model_output":
        return "model", _text_of(payload.get("content"))
    if kind == "thought":
        signed = " (signed)" if payload.get("signature") else ""
        return "thought", _short(_text_of(payload.get("summary")) or "…", 80) + signed
    if kind == "function_call":
        args = _short(payload.get("arguments"), 80)
        return "call", f"{payload.get('name')}({args}) id={payload.get('id')}"
    if kind == "function_result":
        name = payload.get("name") or payload.get("call_id")
        return "result", f"{name}: {_short(payload.get('result'), 80)}"
    rest = {k: v for k, v in payload.items() if k != "type"}
    return kind, _short(rest, 100)


def _tokens(usage: dict[str, Any] | None) -> str:
    value = (usage or {}).get("total_tokens")
    return str(value) if isinstance(value, int) else "-"


def print_transcript(console: Console, bundle: transfer.Bundle) -> None:
    """A readable transcript: each turn's header, then its steps."""
    rec = bundle.record
    console.print(
        f"[bold]{rec.id}[/] tenant={escape(rec.tenant)} user={escape(str(rec.user))} "
        f"mode={rec.mode} model={escape(rec.model)} turns={rec.turn_count}"
    )
    settings = dict(rec.config)
    if isinstance(settings.get("tools"), list):
        settings["tools"] = [
            (t.get("name") or t.get("type")) if isinstance(t, dict) else t
            for t in settings["tools"]
        ]
    if settings:
        console.print(f"[dim]settings: {escape(_short(settings, 200))}[/]")
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for step in bundle.steps:
        by_turn.setdefault(step.turn_seq, []).append(step.payload)
    styles = {"you": "bold cyan", "model": "bold green", "thought": "dim", "call": "yellow"}
    for turn in bundle.turns:
        console.print(
            f"[dim]── turn {turn.seq} · {turn.mode_used} · {turn.reason} · {turn.status} · "
            f"{_tokens(turn.usage)} tokens · {turn.interaction_id or 'no interaction id'}[/]"
        )
        for payload in by_turn.get(turn.seq, []):
            label, line = describe_step(payload)
            style = styles.get(label, "magenta")
            console.print(f"[{style}]{escape(label)}:[/] {escape(line)}")


def bundle_json(bundle: transfer.Bundle) -> dict[str, Any]:
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for step in bundle.steps:
        by_turn.setdefault(step.turn_seq, []).append(step.payload)
    return {
        "conversation": bundle.record.model_dump(mode="json"),
        "turns": [
            {**t.model_dump(mode="json"), "steps": by_turn.get(t.seq, [])} for t in bundle.turns
        ],
    }


# --------------------------------------------------------------------------- the group


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: convostore demo   (then: convostore ls --store sqlite:///convostore-demo.db "
    "--tenant demo)",
)
@click.version_option(package_name="convostore")
@click.option("-v", "--verbose", is_flag=True, help="Log what convostore does to stderr.")
def cli(verbose: bool) -> None:
    """Keep Gemini Interactions API conversations alive: inspect, move, check and clean up
    stored conversations; chat; run the demo.

    The store comes from --store URL, else env CONVOSTORE_URL, else ./convostore.db (SQLite).
    Exit status: 0 ok, 1 the command failed, 2 usage error.
    """
    logger = logging.getLogger("convostore")
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    elif not logger.handlers:
        # without any handler Python prints warnings (e.g. a chain fallback) to stderr;
        # the commands report what matters themselves
        logger.addHandler(logging.NullHandler())


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
def show_command(conversation_id: str, store_url: str, tenant: str, as_json: bool) -> int:
    """Print a conversation's transcript with each turn's mode, reason, status and usage."""
    with _store(store_url) as store:
        record = store.get_conversation(conversation_id, tenant=tenant)
        bundle = transfer.load(store, record)
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
        records = list(
            transfer.iter_records(
                store, tenant=None if all_tenants else tenant, conversation_id=conversation_id
            )
        )
        with _output(output) as handle:
            if output == "-":
                transfer.export(store, handle, records)
            else:
                with _progress() as progress:
                    task = progress.add_task("exporting", total=len(records))
                    transfer.export(
                        store, handle, records, progress=lambda _: progress.advance(task)
                    )
    if output != "-":
        _err().print(f"exported {len(records)} conversation(s) to {output}")
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
    with _store(store_url, create=True) as store:
        report = transfer.import_bundles(store, bundles)
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
        records = list(
            transfer.iter_records(source, tenant=tenant, conversation_id=conversation_id)
        )
        with _progress() as progress:
            task = progress.add_task("copying", total=len(records))
            report = transfer.TransferReport()
            for record in records:
                part = transfer.copy(
                    source, destination, tenant=record.tenant, conversation_id=record.id
                )
                report.created += part.created
                report.skipped += part.skipped
                report.conflicts.update(part.conflicts)
                progress.advance(task)
        problems = (
            transfer.compare(source, destination, tenant=tenant, conversation_id=conversation_id)
            if check
            else []
        )
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
            console.print(f"verified: {len(records)} conversation(s) identical in both stores")
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
    parse, audit hashes. Exits 1 and lists the problems if any are found."""
    results: dict[str, list[str]] = {}
    with _store(store_url) as store:
        for record in transfer.iter_records(
            store, tenant=None if all_tenants else tenant, conversation_id=conversation_id
        ):
            results[record.id] = transfer.verify(store, record)
    bad = {cid: problems for cid, problems in results.items() if problems}
    if as_json:
        _emit_json({"checked": len(results), "problems": bad})
    else:
        console = _out()
        for cid, problems in bad.items():
            for problem in problems:
                console.print(f"[red]problem[/] {cid}: {escape(problem)}")
        console.print(f"checked {len(results)} conversation(s): {len(bad)} with problems")
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


# --------------------------------------------------------------------------- removing


@cli.command("delete", epilog="Example: convostore delete ID --tenant acme --remote")
@click.argument("conversation_id")
@store_option
@tenant_option
@click.option("--remote", is_flag=True, help="Also delete the interactions the server stored.")
@base_url_option
@json_option
def delete_command(
    conversation_id: str,
    store_url: str,
    tenant: str,
    remote: bool,
    base_url: str | None,
    as_json: bool,
) -> int:
    """Delete a conversation (and, with --remote, its server-side interactions)."""
    with _store(store_url) as store:
        store.get_conversation(conversation_id, tenant=tenant)
        if remote:
            from ._sync.conversations import Conversations

            with _client(base_url) as client:
                report = Conversations(store, client).delete(
                    conversation_id, tenant=tenant, remote=True
                )
            deleted, remote_deleted = report.deleted, report.remote_deleted
            remote_failed = report.remote_failed
        else:
            deleted = store.delete_conversation(conversation_id, tenant=tenant)
            remote_deleted, remote_failed = [], {}
    if not deleted:
        raise ConversationNotFound(conversation_id)
    if as_json:
        _emit_json(
            {
                "deleted": conversation_id,
                "remote_deleted": remote_deleted,
                "remote_failed": remote_failed,
            }
        )
    else:
        console = _out()
        console.print(f"deleted {conversation_id}")
        if remote:
            console.print(f"remote: {len(remote_deleted)} interaction(s) deleted")
        for iid, why in remote_failed.items():
            console.print(f"[red]remote failure[/] {iid}: {escape(why)}")
    return 1 if remote_failed else 0


@cli.command(
    "purge",
    epilog="Example: convostore purge --older-than 30d --all-tenants --dry-run",
)
@store_option
@tenant_option
@click.option("--all-tenants", is_flag=True, help="Purge in every tenant.")
@click.option(
    "--older-than",
    "older_than",
    default=None,
    metavar="AGE",
    help="Not updated for AGE: 30d, 12h, 90m.",
)
@click.option("--remote", is_flag=True, help="Also delete their server-side interactions.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@base_url_option
@json_option
def purge_command(
    store_url: str,
    tenant: str,
    all_tenants: bool,
    older_than: str | None,
    remote: bool,
    dry_run: bool,
    base_url: str | None,
    as_json: bool,
) -> int:
    """Delete expired conversations and, with --older-than, those not updated for that long."""
    cutoff = utcnow() - parse_duration(older_than) if older_than else None
    scope = None if all_tenants else tenant
    failed: dict[str, str] = {}
    remote_deleted: list[str] = []
    with _store(store_url) as store:
        if remote and not dry_run:
            doomed = store.purge(older_than=cutoff, tenant=scope, dry_run=True)
            from ._sync.conversations import Conversations

            with _client(base_url) as client:
                convos = Conversations(store, client)
                for record in doomed:
                    report = convos.delete(record.id, tenant=record.tenant, remote=True)
                    remote_deleted += report.remote_deleted
                    failed.update(report.remote_failed)
        else:
            doomed = store.purge(older_than=cutoff, tenant=scope, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    if as_json:
        _emit_json(
            {
                "dry_run": dry_run,
                "conversations": [{"id": r.id, "tenant": r.tenant} for r in doomed],
                "remote_deleted": remote_deleted,
                "remote_failed": failed,
            }
        )
    else:
        console = _out()
        for record in doomed:
            console.print(f"{verb} {record.id} (tenant {record.tenant})")
        console.print(f"{verb} {len(doomed)} conversation(s)")
        if remote and not dry_run:
            console.print(f"remote: {len(remote_deleted)} interaction(s) deleted")
        for iid, why in failed.items():
            console.print(f"[red]remote failure[/] {iid}: {escape(why)}")
    return 1 if failed else 0


# --------------------------------------------------------------------------- chat & demo


@cli.command(
    "chat",
    epilog="Examples: convostore chat --emulator;  convostore chat --resume ID --emulator;  "
    "GEMINI_API_KEY=… convostore chat --mode auto",
)
@store_option
@tenant_option
@click.option("--user", default=None, help="User id recorded on a new conversation.")
@click.option("--resume", "resume_id", default=None, metavar="ID", help="Continue a conversation.")
@click.option("--mode", type=click.Choice(MODES), default=None, help="server, stateless or auto.")
@click.option("--model", default=None, help="Model of a new conversation (or switch to it).")
@click.option("--system", "system_instruction", default=None, help="System instruction.")
@click.option("--emulator", "use_emulator", is_flag=True, help="Start a local emulator.")
@base_url_option
def chat_command(
    store_url: str,
    tenant: str,
    user: str | None,
    resume_id: str | None,
    mode: str | None,
    model: str | None,
    system_instruction: str | None,
    use_emulator: bool,
    base_url: str | None,
) -> int:
    """Chat in the terminal; answers stream as they arrive. Commands: /history, /fork N,
    /mode M, /usage, /id, /quit (or Ctrl-D). Resume later with --resume ID."""
    from ._sync.client import InteractionsClient
    from ._sync.conversations import DEFAULT_MODEL, Conversations

    with ExitStack() as stack:
        if use_emulator:
            from .emulator import Emulator

            emu = stack.enter_context(Emulator())
            client = InteractionsClient(api_key="emulator", base_url=emu.url)
        else:
            client = _client(base_url)
        stack.callback(client.close)
        store = open_existing(store_url, create=True)
        stack.callback(store.close)
        convos = Conversations(store, client, model=model or DEFAULT_MODEL)
        if resume_id is not None:
            conv = convos.get(resume_id, tenant=tenant)
            if mode is not None or model is not None:
                conv.update(mode=mode, model=model)
        else:
            conv = convos.create(
                tenant=tenant,
                user=user,
                mode=mode or "auto",  # type: ignore[arg-type]
                system_instruction=system_instruction,
            )
        return _chat_loop(_out(), conv, store)
    raise AssertionError("unreachable")  # pragma: no cover


_CHAT_HELP = "commands: /history, /fork N, /mode server|stateless|auto, /usage, /id, /quit"


def _chat_loop(console: Console, conv: Conversation, store: Store) -> int:
    with suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (line editing and history for input())
    verb = "resumed" if conv.record.turn_count else "new"
    console.print(
        f"{verb} conversation [bold]{conv.id}[/] (mode {conv.record.mode}, "
        f"{conv.record.turn_count} turn(s)); {_CHAT_HELP}"
    )
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            click.echo()
            break
        if not line:
            continue
        if line.startswith("/"):
            next_conv = _chat_command(console, conv, store, line)
            if next_conv is None:
                break
            conv = next_conv
            continue
        try:
            click.echo("model> ", nl=False)
            with conv.stream(line) as events:
                for delta in events.text_deltas():
                    click.echo(delta, nl=False)
            click.echo()
            turn = events.turn
            if turn is not None:
                console.print(
                    f"[dim]turn {turn.seq} · {turn.mode_used} · {turn.reason} · "
                    f"{_tokens(turn.usage)} tokens[/]"
                )
        except (APIError, StoreError) as exc:
            click.echo()
            console.print(f"[red]error:[/] {escape(str(exc))} (nothing was stored)")
        except KeyboardInterrupt:
            click.echo()
            console.print("[yellow]cancelled[/] (nothing was stored)")
    console.print(f"bye; resume with: convostore chat --resume {conv.id}")
    return 0


def _chat_command(
    console: Console, conv: Conversation, store: Store, line: str
) -> Conversation | None:
    """Run a /command; the conversation to continue with, or None to quit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if name in ("/quit", "/exit", "/q"):
            return None
        if name == "/id":
            console.print(conv.id)
        elif name == "/history":
            print_transcript(console, transfer.load(store, conv.refresh()))
        elif name == "/usage":
            usage = conv.usage()
            console.print(", ".join(f"{k}={v}" for k, v in sorted(usage.items())) or "no usage")
        elif name == "/mode":
            conv.update(mode=arg)
            console.print(f"mode is now {conv.record.mode}")
        elif name == "/fork":
            fork = conv.fork(at_turn=int(arg) if arg else None)
            console.print(f"forked at turn {fork.record.turn_count}: now in [bold]{fork.id}[/]")
            return fork
        else:
            console.print(_CHAT_HELP)
    except ValueError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
    return conv


@cli.command(
    "demo", epilog="Example: convostore demo   (or: GEMINI_API_KEY=… convostore demo --live)"
)
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="Store URL (default: a fresh sqlite:///convostore-demo.db).",
)
@click.option("--live", is_flag=True, help="Use the real API (needs GEMINI_API_KEY).")
@click.option("--model", default=None, help="Model to use (default: convostore's default).")
def demo_command(store_url: str | None, live: bool, model: str | None) -> int:
    """Show what convostore does, in a few screens: the three modes, restart and resume,
    expiry and fallback, a fork, a streamed answer, and what is stored. Offline by default
    (a local emulator and a SQLite file)."""
    from ._demo import run_demo

    return run_demo(Console(highlight=False), store_url=store_url, live=live, model=model)


# --------------------------------------------------------------------------- services


@cli.command(
    "emulator",
    epilog="Example: convostore emulator --port 8765   (then GOOGLE_GEMINI_BASE_URL="
    "http://127.0.0.1:8765)",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--retention", default="55d", show_default=True, help="How long interactions live.")
@click.option("--no-require-key", is_flag=True, help="Accept requests without an API key.")
def emulator_command(host: str, port: int, retention: str, no_require_key: bool) -> int:
    """Serve the local Interactions API emulator in the foreground (Ctrl-C to stop)."""
    seconds = int(parse_duration(retention).total_seconds())
    from .emulator import main as serve

    argv = ["--host", host, "--port", str(port), "--retention", f"{seconds}s"]
    if no_require_key:
        argv.append("--no-api-key")
    return serve(argv)


@cli.group("db", epilog="Example: convostore db upgrade postgresql://postgres@127.0.0.1/chat")
def db_group() -> None:
    """Database schema migrations (Alembic, shipped with the package)."""


def _url_argument(func: _F) -> _F:
    return click.argument("url", envvar="CONVOSTORE_URL")(func)


def _sql_url(url: str) -> str:
    if family(url) != "sql":
        raise ConfigurationError(f"{redact(url)} is not a SQL database URL; nothing to migrate")
    return url


@db_group.command("upgrade", epilog="Example: convostore db upgrade mysql+pymysql://root@db/chat")
@_url_argument
def db_upgrade(url: str) -> int:
    """Bring the database up to the newest schema."""
    from . import _migrate

    _migrate.upgrade(_sql_url(url))
    click.echo(f"{redact(url)}: at {_migrate.current(url)} (newest {_migrate.head()})")
    return 0


def _revision_report(url: str, as_json: bool) -> bool:
    """Print where the database is; whether it is at the newest revision."""
    from . import _migrate

    revision, newest = _migrate.current(_sql_url(url)), _migrate.head()
    if as_json:
        _emit_json({"url": redact(url), "current": revision, "head": newest})
    elif revision == newest:
        click.echo(f"{redact(url)}: up to date ({revision})")
    else:
        where = f"at {revision}" if revision else "not migrated"
        click.echo(f"{redact(url)}: {where}, newest is {newest}")
    return revision == newest


@db_group.command("current", epilog="Example: convostore db current postgresql://…/chat")
@_url_argument
@json_option
def db_current(url: str, as_json: bool) -> int:
    """Print the schema revision of the database (and the newest one)."""
    _revision_report(url, as_json)
    return 0


@db_group.command("check", epilog="Example: convostore db check postgresql://…/chat || exit 1")
@_url_argument
@json_option
def db_check(url: str, as_json: bool) -> int:
    """Exit 1 if the database is behind the newest schema."""
    if _revision_report(url, as_json):
        return 0
    if not as_json:
        click.echo("run: convostore db upgrade URL", err=True)
    return 1


# --------------------------------------------------------------------------- entry point


def _fail(message: str, status: int) -> int:
    click.echo(f"convostore: {message}", err=True)
    return status


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (never raises for expected conditions)."""
    try:
        result = cli.main(args=argv, prog_name="convostore", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message())
        return 0
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "convostore"
        return _fail(f"{exc.format_message()} (see: {where} --help)", exc.exit_code)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        return _fail("aborted", 1)
    except (ConfigurationError, ValidationError) as exc:
        return _fail(str(exc), 2)
    except ConvostoreError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # the reader went away (e.g. `convostore export --all | head`): stop quietly, and keep
        # Python from reporting the pipe again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """The ``convostore`` console script."""
    sys.exit(run(argv))


if __name__ == "__main__":  # pragma: no cover
    main()

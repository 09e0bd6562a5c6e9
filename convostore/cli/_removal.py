"""``delete``, ``purge`` and ``rotate-key``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.markup import escape

from .._exceptions import (
    ConfigurationError,
    ConversationNotFound,
)
from ..models import utcnow

if TYPE_CHECKING:
    pass

from ._common import (
    KEYS_ENV,
    KEYS_FILE_ENV,
    _client,
    _emit_json,
    _out,
    _store,
    base_url_option,
    cli,
    json_option,
    keyring_from_env,
    parse_duration,
    progress_bar,
    store_option,
    tenant_option,
)

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
            from .._sync.conversations import Conversations

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
        if remote_failed:
            console.print("kept in the outbox: `convostore recover` retries them")
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
            with progress_bar("finding expired", quiet=as_json):
                doomed = store.purge(older_than=cutoff, tenant=scope, dry_run=True)
            from .._sync.conversations import Conversations

            with (
                _client(base_url) as client,
                progress_bar("deleting", len(doomed), quiet=as_json) as advance,
            ):
                convos = Conversations(store, client)
                for record in doomed:
                    report = convos.delete(record.id, tenant=record.tenant, remote=True)
                    remote_deleted += report.remote_deleted
                    failed.update(report.remote_failed)
                    advance()
        else:
            # one store call: the bar pulses while the store sweeps
            with progress_bar("purging", quiet=as_json):
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
        if failed:
            console.print("kept in the outbox: `convostore recover` retries them")
    return 1 if failed else 0


@cli.command(
    "rotate-key",
    epilog="Example: CONVOSTORE_KEYS=k2:<new base64>,k1:<old base64> convostore rotate-key "
    "--store postgresql://…/chat",
)
@store_option
@click.option("--tenant", default=None, help="Only this tenant (default: every tenant).")
@json_option
def rotate_key_command(store_url: str, tenant: str | None, as_json: bool) -> int:
    """Re-wrap every conversation's data key under the primary key of the key ring
    (CONVOSTORE_KEYS="new:base64,old:base64", primary first, or CONVOSTORE_KEYS_FILE).
    Safe to re-run: conversations already under the primary key are left as they are."""
    from .._sync.encrypted_store import rotate_keys

    ring = keyring_from_env()
    if ring is None:
        raise ConfigurationError(
            f"set {KEYS_ENV} (or {KEYS_FILE_ENV}) to the key ring to rotate to"
        )
    with _store(store_url, encrypted=False) as store:
        report = rotate_keys(store, ring, tenant=tenant)
    if as_json:
        _emit_json(report.model_dump(mode="json"))
    else:
        click.echo(
            f"rotated {report.rewrapped} of {report.conversations} conversation(s) "
            f"(already current {report.current}, vanished {report.vanished}, "
            f"retries {report.retries}) under primary key {report.primary}"
        )
    return 0

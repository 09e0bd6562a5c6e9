"""``recover``: finish the turns whose worker died, and retry outstanding server deletions."""

from __future__ import annotations

import click
from rich.markup import escape

from ._common import (
    _client,
    _emit_json,
    _out,
    _store,
    base_url_option,
    cli,
    json_option,
    parse_duration,
    store_option,
)


@cli.command(
    "recover",
    epilog="Example: convostore recover --older-than 30s   (run it from cron or a supervisor)",
)
@store_option
@click.option("--tenant", default=None, help="Only this tenant (default: every tenant).")
@click.option(
    "--older-than",
    "older_than",
    default="0s",
    metavar="AGE",
    help="Only turns started at least AGE ago (30s, 5m); leases are honoured either way.",
)
@base_url_option
@json_option
def recover_command(
    store_url: str,
    tenant: str | None,
    older_than: str,
    base_url: str | None,
    as_json: bool,
) -> int:
    """Finish turns left in flight by dead workers (adopt the answer the server kept, or
    record the turn as lost), and retry server deletions still in the outbox.

    Exit status 1 when deletions are still outstanding (they are retried next time)."""
    from .._sync.conversations import Conversations

    age = parse_duration(older_than)
    with _store(store_url) as store, _client(base_url) as client:
        report = Conversations(store, client).recover(tenant=tenant, older_than=age)
    if as_json:
        _emit_json(report.model_dump(mode="json"))
    else:
        console = _out()
        for label, names in (
            ("adopted", report.adopted),
            ("lost", report.lost),
            ("failed", report.failed),
            ("still running", report.running),
            ("held by another worker", report.busy),
        ):
            for name in names:
                console.print(f"{label}: turn {name}")
        console.print(
            f"{len(report.adopted)} adopted, {len(report.lost)} lost, "
            f"{len(report.failed)} failed, {len(report.running)} running; "
            f"{len(report.deleted)} server deletion(s) done, "
            f"{len(report.outstanding)} outstanding"
        )
        for iid, why in report.outstanding.items():
            console.print(f"[red]outstanding[/] {iid}: {escape(why)}")
    return 1 if report.outstanding else 0

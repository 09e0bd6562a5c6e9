"""HTML of the auditor's pages: plain functions over records, every value escaped with
:func:`html.escape`. The page frame, sign-in, lists, fork trees and the store-wide pages live
here; transcripts and case files in ``_transcript``.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from urllib.parse import quote, urlencode

from ..models import ConversationRecord
from ._access_log import Entry
from ._auth import Principal
from ._queries import (
    FLAGS,
    Filters,
    ForkNode,
    ForkTree,
    Row,
    ScanPage,
    VerifyRun,
)

__all__ = [
    "access_log_page",
    "conversation_url",
    "e",
    "fork_page",
    "layout",
    "list_page",
    "login_page",
    "message_page",
    "verify_page",
    "when",
]


def e(value: object) -> str:
    return escape(str(value), quote=True)


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def conversation_url(tenant: str, conversation_id: str, suffix: str = "") -> str:
    return f"/t/{quote(tenant, safe='')}/c/{quote(conversation_id, safe='')}{suffix}"


# --------------------------------------------------------------------------- page frame


def layout(
    title: str,
    body: str,
    *,
    principal: Principal | None,
    store_url: str | None = None,
    wide: bool = False,
    refresh: int | None = None,
) -> str:
    nav = ""
    who = ""
    if principal is not None:
        links = [("/conversations", "Conversations"), ("/verify", "Verify store")]
        if principal.all_tenants:
            links.append(("/access-log", "Access log"))
        nav = "".join(f'<a href="{href}">{label}</a>' for href, label in links)
        scope = "all tenants" if principal.all_tenants else ", ".join(sorted(principal.tenants))
        who = (
            f'<div class="who"><span title="reads {e(scope)}">{e(principal.name)}</span>'
            '<form method="post" action="/logout"><button type="submit">Sign out</button>'
            "</form></div>"
        )
    footer = (
        f"<footer>Read-only view of <code>{e(store_url)}</code> · every read is logged</footer>"
        if store_url and principal is not None
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        + (f'<meta http-equiv="refresh" content="{refresh}">' if refresh else "")
        + f"<title>{e(title)} · convostore audit</title>"
        '<link rel="stylesheet" href="/static/style.css"></head><body>'
        '<header class="bar"><a class="brand" href="/">convostore <span>audit</span></a>'
        f"<nav>{nav}</nav>{who}</header>"
        f'<main class="{"wide" if wide else ""}">{body}{footer}</main></body></html>'
    )


def login_page(error: str | None = None) -> str:
    problem = f'<p class="alert bad">{e(error)}</p>' if error else ""
    body = (
        '<section class="login card"><h1>Sign in</h1>'
        "<p>This read-only view of stored conversations is for auditors. Sign in with the "
        "access token you were given; every conversation you open is logged.</p>"
        f'{problem}<form method="post" action="/login">'
        '<label for="token">Access token</label>'
        '<input id="token" name="token" type="password" autocomplete="off" required autofocus>'
        '<button type="submit">Sign in</button></form></section>'
    )
    return layout("Sign in", body, principal=None)


def message_page(
    title: str, text: str, *, principal: Principal | None, store_url: str | None = None
) -> str:
    body = f'<section class="card"><h1>{e(title)}</h1><p>{e(text)}</p></section>'
    return layout(title, body, principal=principal, store_url=store_url)


# --------------------------------------------------------------------------- list


def _option(value: str, label: str, selected: str | None) -> str:
    chosen = " selected" if value == (selected or "") else ""
    return f'<option value="{e(value)}"{chosen}>{e(label)}</option>'


def _filter_form(principal: Principal, tenant: str | None, filters: Filters) -> str:
    if principal.all_tenants:
        tenant_field = f'<input name="tenant" value="{e(tenant or "")}" placeholder="all tenants">'
    else:
        tenant_field = (
            '<select name="tenant">'
            + "".join(_option(t, t, tenant) for t in sorted(principal.tenants))
            + "</select>"
        )
    modes = "".join(
        _option(m, m or "any", filters.mode) for m in ("", "auto", "server", "stateless")
    )
    day_from = filters.created_from.strftime("%Y-%m-%d") if filters.created_from else ""
    day_to = ""
    if filters.created_to is not None:
        from datetime import timedelta

        day_to = (filters.created_to - timedelta(days=1)).strftime("%Y-%m-%d")
    flags = "".join(
        f'<label class="check"><input type="checkbox" name="flag" value="{key}"'
        f"{' checked' if key in filters.flags else ''}> {e(label)}</label>"
        for key, label in FLAGS.items()
    )
    return (
        '<form class="filters" method="get" action="/conversations">'
        f"<label>Tenant {tenant_field}</label>"
        f'<label>User <input name="user" value="{e(filters.user or "")}"></label>'
        f'<label>Created from <input type="date" name="from" value="{day_from}"></label>'
        f'<label>to <input type="date" name="to" value="{day_to}"></label>'
        f'<label>Mode <select name="mode">{modes}</select></label>'
        f'<label>Model <input name="model" value="{e(filters.model or "")}"></label>'
        f'<div class="flags">{flags}</div>'
        '<button type="submit">Apply</button> <a href="/conversations">Reset</a></form>'
    )


def _flag_cell(row: Row) -> str:
    if row.key_problem:
        return f'<span class="badge warn" title="{e(row.key_problem)}">key problem</span>'
    if row.flags is None:
        return ""
    return " ".join(f'<span class="badge bad">{e(FLAGS[f])}</span>' for f in sorted(row.flags))


def list_page(
    principal: Principal,
    *,
    tenant: str | None,
    filters: Filters,
    page: ScanPage,
    next_query: str | None,
    store_url: str,
) -> str:
    rows = []
    for row in page.rows:
        r = row.record
        rows.append(
            "<tr>"
            f'<td><a class="mono" href="{e(conversation_url(r.tenant, r.id))}">{e(r.id)}</a></td>'
            f"<td>{e(r.tenant)}</td><td>{e(r.user or '—')}</td><td>{e(r.mode)}</td>"
            f"<td>{e(r.model)}</td><td class='num'>{r.turn_count}</td>"
            f"<td>{e(when(r.created_at))}</td><td>{e(when(r.updated_at))}</td>"
            f"<td>{_flag_cell(row)}</td></tr>"
        )
    table = (
        '<table class="list conversations"><thead><tr><th>Conversation</th><th>Tenant</th>'
        "<th>User</th><th>Mode</th><th>Model</th><th>Turns</th><th>Created</th><th>Updated</th><th></th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No conversation matches.</p>'
    )
    notice = ""
    if page.budget_spent:
        notice = (
            f'<p class="alert">Examined {page.examined:,} conversations for this page without '
            "filling it; continue to search older ones.</p>"
        )
    more = (
        f'<a class="button" href="/conversations?{e(next_query)}">Older conversations →</a>'
        if next_query
        else ""
    )
    scope = f"tenant {tenant}" if tenant else "all tenants"
    body = (
        f"<h1>Conversations <small>{e(scope)}, newest first</small></h1>"
        f"{_filter_form(principal, tenant, filters)}{notice}{table}"
        f'<div class="pager">{more}</div>'
    )
    return layout("Conversations", body, principal=principal, store_url=store_url, wide=True)


# --------------------------------------------------------------------------- forks


def _fork_node(node: ForkNode, current: str) -> str:
    here = " current" if node.conversation_id == current else ""
    if node.record is None:
        label = f'<span class="mono gone">{e(node.conversation_id)}</span> <em>(deleted)</em>'
    else:
        r = node.record
        href = conversation_url(r.tenant, r.id)
        label = (
            f'<a class="mono" href="{e(href)}">{e(r.id)}</a> '
            f'<span class="muted">{r.turn_count} turns · created {e(when(r.created_at))}</span>'
        )
    at = (
        f'<span class="badge">forked at turn {node.at_turn}</span> '
        if node.at_turn is not None
        else ""
    )
    kids = "".join(_fork_node(child, current) for child in node.children)
    return f'<li class="fork{here}">{at}{label}{f"<ul>{kids}</ul>" if kids else ""}</li>'


def fork_page(
    principal: Principal, record: ConversationRecord, tree: ForkTree, *, store_url: str
) -> str:
    note = (
        ""
        if tree.complete
        else f'<p class="alert">Searched the {tree.examined:,} newest conversations of this user; '
        "older forks may be missing.</p>"
    )
    back = conversation_url(record.tenant, record.id)
    body = (
        f'<h1>Fork tree <small><a class="mono" href="{e(back)}">{e(record.id)}</a></small></h1>'
        f'{note}<ul class="tree">{_fork_node(tree.root, record.id)}</ul>'
    )
    return layout("Fork tree", body, principal=principal, store_url=store_url)


# --------------------------------------------------------------------------- store-wide


def verify_page(principal: Principal, run: VerifyRun | None, *, store_url: str) -> str:
    scope = "every tenant" if principal.all_tenants else ", ".join(sorted(principal.tenants))
    if run is None:
        status = '<p class="empty">No verification has run since the server started.</p>'
    elif run.finished is None:
        status = (
            f'<p class="alert">Running since {e(when(run.started))}: {run.checked:,} checked so '
            "far. Reload to follow.</p>"
        )
    else:
        css = "ok" if run.intact == run.checked and run.error is None else "bad"
        status = (
            f'<div class="verdict {css}"><strong>{run.intact:,} of {run.checked:,} verified'
            f"</strong><span>at {e(when(run.finished))} (started {e(when(run.started))})"
            "</span></div>"
        )
        if run.error:
            status += f'<p class="alert bad">Stopped: {e(run.error)}</p>'
    failures = ""
    if run is not None and run.failures:
        items = "".join(
            f'<tr><td>{e(t)}</td><td><a class="mono" href="{e(conversation_url(t, c))}">'
            f"{e(c)}</a></td><td>{e(p)}</td></tr>"
            for t, c, p in run.failures
        )
        bad = run.checked - run.intact
        shown = f" (the first {len(run.failures):,} listed)" if bad > len(run.failures) else ""
        failures = (
            f"<h2>{bad:,} did not verify{shown}</h2>"
            '<table class="list"><thead><tr><th>Tenant</th><th>Conversation</th>'
            f"<th>First problem</th></tr></thead><tbody>{items}</tbody></table>"
        )
    body = (
        f"<h1>Verify store <small>{e(scope)}</small></h1>"
        "<p>Checks every conversation you may read: contiguous seqs, counts, a linear chain, "
        "payloads that parse, and the audit hash chain.</p>"
        f'{status}<p><a class="button" href="/verify?run=1">Run verification now</a></p>'
        f"{failures}"
    )
    return layout("Verify store", body, principal=principal, store_url=store_url)


def access_log_page(
    principal: Principal, entries: list[Entry], *, next_before: int | None, store_url: str
) -> str:
    rows = []
    for entry in entries:
        d = entry.data
        target = ""
        if d.get("tenant") and d.get("conversation_id"):
            href = conversation_url(str(d["tenant"]), str(d["conversation_id"]))
            target = f'<a class="mono" href="{e(href)}">{e(d["conversation_id"])}</a>'
        rows.append(
            f"<tr><td>{e(d.get('time', ''))}</td><td>{e(d.get('principal') or '—')}</td>"
            f"<td>{e(d.get('action', ''))}</td><td>{e(d.get('outcome', ''))}</td>"
            f"<td>{e(d.get('tenant') or '')}</td><td>{target}</td>"
            f"<td>{e(d.get('detail') or '')}</td><td>{e(d.get('client') or '')}</td></tr>"
        )
    table = (
        '<table class="list"><thead><tr><th>Time</th><th>Who</th><th>Action</th>'
        "<th>Outcome</th><th>Tenant</th><th>Conversation</th><th>Detail</th><th>Client</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    more = (
        f'<a class="button" href="/access-log?{urlencode({"before": next_before})}">Older →</a>'
        if next_before is not None
        else ""
    )
    body = f'<h1>Access log <small>newest first</small></h1>{table}<div class="pager">{more}</div>'
    return layout("Access log", body, principal=principal, store_url=store_url, wide=True)

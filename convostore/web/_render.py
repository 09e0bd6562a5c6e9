"""HTML of the auditor's pages: plain functions over records, every value escaped.

Steps are described as ``convostore show`` describes them (the CLI's ``describe_step``); media
is shown by reference (type, MIME type, URI, size), never inline: base64 data and thought
signatures are replaced by their length wherever a step's JSON is shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from ..cli._common import describe_step
from ..models import ConversationRecord, StoredStep, TurnRecord
from ._access_log import Entry
from ._auth import Principal
from ._queries import (
    FLAGS,
    Filters,
    ForkNode,
    ForkTree,
    Row,
    ScanPage,
    Verification,
    VerifyRun,
    forked_from,
)

__all__ = [
    "access_log_page",
    "case_file_page",
    "conversation_url",
    "fork_page",
    "layout",
    "list_page",
    "login_page",
    "message_page",
    "transcript_page",
    "verify_page",
]

_MEDIA = frozenset({"image", "audio", "video", "document"})


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
        '<table class="list"><thead><tr><th>Conversation</th><th>Tenant</th><th>User</th>'
        "<th>Mode</th><th>Model</th><th>Turns</th><th>Created</th><th>Updated</th><th></th>"
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


# --------------------------------------------------------------------------- transcript


def _scrub(value: Any) -> Any:
    """A step's JSON for display: base64 media data and signatures replaced by their size."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "data" and isinstance(item, str) and value.get("type") in _MEDIA:
                out[key] = f"<{len(item):,} base64 characters, not shown>"
            elif key == "signature" and isinstance(item, str):
                out[key] = f"<signature, {len(item):,} characters>"
            else:
                out[key] = _scrub(item)
        return out
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


def _media(part: dict[str, Any]) -> str:
    bits = [str(part.get("type"))]
    if part.get("mime_type"):
        bits.append(str(part["mime_type"]))
    if isinstance(part.get("uri"), str):
        bits.append(part["uri"])
    if isinstance(part.get("data"), str):
        size = len(part["data"]) * 3 // 4
        bits.append(f"{size:,} bytes inline (not shown)")
    return f'<span class="media">{e(" · ".join(bits))}</span>'


def _parts(parts: Any) -> str:
    out = []
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict) and part.get("type") == "text":
            out.append(f'<div class="text">{e(part.get("text", ""))}</div>')
        elif isinstance(part, dict):
            out.append(_media(part))
    return "".join(out)


def _json_block(payload: dict[str, Any]) -> str:
    text = json.dumps(_scrub(payload), indent=2, ensure_ascii=False, sort_keys=True)
    return f"<pre>{e(text)}</pre>"


def step_html(step: StoredStep, *, expanded: bool = False) -> str:
    payload = step.payload
    label, line = describe_step(payload)
    kind = str(payload.get("type"))
    seq = f'<span class="seq" title="step seq">#{step.seq}</span>'
    if kind in ("user_input", "model_output"):
        who = "user" if kind == "user_input" else "model"
        extra = ""
        if kind == "model_output" and payload.get("error"):
            extra = f'<div class="alert bad">{e(json.dumps(payload["error"]))}</div>'
        return (
            f'<div class="step {who}">{seq}<span class="who">{e(label)}</span>'
            f"{_parts(payload.get('content'))}{extra}</div>"
        )
    css = {"thought": "thought", "call": "call", "result": "result"}.get(label, "other")
    return (
        f'<details class="step {css}"{" open" if expanded else ""}><summary>{seq}'
        f'<span class="who">{e(label)}</span>'
        f"{e(line)}</summary>{_json_block(payload)}</details>"
    )


def _usage(usage: dict[str, Any] | None) -> str:
    if not usage:
        return "no usage"
    total = usage.get("total_tokens")
    head = f"{total:,} tokens" if isinstance(total, int) else "usage"
    detail = " · ".join(
        f"{k.removesuffix('_tokens').replace('total_', '')} {v:,}"
        for k, v in sorted(usage.items())
        if isinstance(v, int) and k != "total_tokens"
    )
    return f"<span>{e(head)}{f' ({e(detail)})' if detail else ''}</span>"


def turn_html(
    turn: TurnRecord,
    steps: Sequence[StoredStep],
    *,
    bad_seq: int | None,
    expanded: bool = False,
) -> str:
    status_css = "ok" if turn.status in ("completed", "requires_action") else "bad"
    interaction = turn.interaction_id or "no interaction id"
    flagged = " flagged" if bad_seq is not None and turn.seq == bad_seq else ""
    meta = [
        f'<span class="badge">{e(turn.mode_used)}</span>',
        f'<span class="badge">{e(str(turn.reason))}</span>',
        f'<span class="badge {status_css}">{e(turn.status)}</span>',
        _usage(turn.usage),
        f'<span class="mono" title="interaction id">{e(interaction)}</span>',
        f"<span>{e(when(turn.created_at))}</span>",
    ]
    if turn.model:
        meta.insert(3, f"<span>{e(turn.model)}</span>")
    return (
        f'<section class="turn{flagged}" id="turn-{turn.seq}"><div class="turnhead">'
        f"<strong>Turn {turn.seq}</strong>{''.join(meta)}</div>"
        f"{''.join(step_html(s, expanded=expanded) for s in steps)}</section>"
    )


def verification_badge(
    result: Verification | None, *, verifying: int | None = None, base: str | None = None
) -> str:
    """The verdict; ``verifying``: the step count of a verification still running (the page
    then reloads itself, with ``result`` the previous verdict, if any); ``base``: the
    transcript's URL, to link the first bad turn."""
    if verifying is not None:
        before = ""
        if result is not None:
            verdict = "intact" if result.intact else "failed"
            before = f" (last check, {e(when(result.checked_at))}: {verdict})"
        return (
            '<div class="verdict pending" id="verification"><strong>Verifying…</strong>'
            f"<span>{verifying:,} steps are being checked; this page reloads until the "
            f"verdict is in{before}</span></div>"
        )
    assert result is not None
    if result.intact:
        return (
            '<div class="verdict ok" id="verification"><strong>✓ Verified intact</strong>'
            f"<span>seqs, counts, chain and audit hashes checked {e(when(result.checked_at))}"
            "</span></div>"
        )
    where = f" at turn {result.first_bad_seq}" if result.first_bad_seq else ""
    if "step" in result.problems[0].split(":")[0] and result.first_bad_seq:
        where = f" at step {result.first_bad_seq}"
    items = "".join(f"<li>{e(p)}</li>" for p in result.problems)
    link = ""
    if base is not None and where.startswith(" at turn"):
        seq = result.first_bad_seq or 1
        link = f' <a href="{e(base)}?after={seq - 1}#turn-{seq}">show turn {seq}</a>'
    return (
        f'<div class="verdict bad" id="verification"><strong>✗ Verification failed{e(where)}'
        f"</strong><span>checked {e(when(result.checked_at))}{link}</span><ul>{items}</ul>"
        "</div>"
    )


def _facts(
    record: ConversationRecord, retention: tuple[str, bool], *, expanded: bool = False
) -> str:
    rows = [
        ("Tenant", record.tenant),
        ("User", record.user or "—"),
        ("Mode", record.mode),
        ("Model", record.model),
        ("Turns / steps", f"{record.turn_count} / {record.step_count}"),
        ("Version", str(record.version)),
        ("Head interaction", record.head_interaction_id or "—"),
        ("Created", when(record.created_at)),
        ("Updated", when(record.updated_at)),
        ("Retention", retention[0]),
    ]
    cells = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows)
    settings = ""
    if record.config:
        settings = (
            f"<details class='settings'{' open' if expanded else ''}>"
            "<summary>Settings re-sent on every turn</summary>"
            f"{_json_block(record.config)}</details>"
        )
    return f'<dl class="facts">{cells}</dl>{settings}'


def _origin(record: ConversationRecord, parent: tuple[str, int | None] | None) -> str:
    links = [f'<a href="{e(conversation_url(record.tenant, record.id, "/forks"))}">Fork tree</a>']
    if parent is not None:
        at = f" at turn {parent[1]}" if parent[1] is not None else ""
        href = conversation_url(record.tenant, parent[0])
        links.insert(
            0,
            f'Forked from <a class="mono" href="{e(href)}">{e(parent[0])}</a>{e(at)}',
        )
    return f'<p class="origin">{" · ".join(links)}</p>'


def transcript_page(
    principal: Principal,
    record: ConversationRecord,
    *,
    verification: Verification | None,
    verifying: bool = False,
    retention: tuple[str, bool],
    parent: tuple[str, int | None] | None,
    turns: Iterable[tuple[TurnRecord, list[StoredStep]]],
    error: str | None,
    prev_after: int | None,
    next_after: int | None,
    store_url: str,
) -> str:
    base = conversation_url(record.tenant, record.id)
    actions = (
        f'<div class="actions"><a class="button" href="{e(base)}/export">Export JSON Lines</a>'
        f'<a class="button" href="{e(base)}/case">Case file</a></div>'
    )
    shown = None if verifying else verification
    bad = shown.first_bad_seq if shown is not None and not shown.intact else None
    step_bad = shown is not None and bool(shown.problems) and shown.problems[0].startswith("step")
    body_turns = (
        f'<div class="alert bad">{e(error)}</div>'
        if error
        else "".join(turn_html(t, s, bad_seq=None if step_bad else bad) for t, s in turns)
    )
    pager = []
    if prev_after is not None:
        pager.append(f'<a class="button" href="{e(base)}?after={prev_after}">← Earlier turns</a>')
    if next_after is not None:
        pager.append(f'<a class="button" href="{e(base)}?after={next_after}">Later turns →</a>')
    body = (
        f'<div class="pagehead"><h1 class="mono">{e(record.id)}</h1>{actions}</div>'
        + verification_badge(
            verification, verifying=record.step_count if verifying else None, base=base
        )
        + f"{_origin(record, parent)}"
        f'<div class="card">{_facts(record, retention)}</div>'
        f'<div class="transcript">{body_turns}</div><div class="pager">{"".join(pager)}</div>'
    )
    return layout(
        record.id, body, principal=principal, store_url=store_url, refresh=2 if verifying else None
    )


def case_file_page(
    principal: Principal,
    record: ConversationRecord,
    *,
    verification: Verification,
    retention: tuple[str, bool],
    turns: Iterable[tuple[TurnRecord, list[StoredStep]]],
    error: str | None,
    exported_at: datetime,
    store_url: str,
) -> str:
    bad = verification.first_bad_seq if not verification.intact else None
    transcript = (
        f'<div class="alert bad">{e(error)}</div>'
        if error
        else "".join(turn_html(t, s, bad_seq=bad, expanded=True) for t, s in turns)
    )
    parent = forked_from(record)
    origin = (
        f"<p>Forked from <span class='mono'>{e(parent[0])}</span>"
        + (f" at turn {parent[1]}" if parent[1] is not None else "")
        + "</p>"
        if parent
        else ""
    )
    body = (
        '<article class="casefile"><header><h1>Case file</h1>'
        f'<p class="mono">{e(record.id)}</p>'
        f"<p>Exported {e(when(exported_at))} by {e(principal.name)} from "
        f"<code>{e(store_url)}</code></p>{origin}</header>"
        f"{verification_badge(verification)}"
        f'<div class="card">{_facts(record, retention, expanded=True)}</div>'
        f'<div class="transcript">{transcript}</div>'
        '<p class="print-hint">Print this page (Ctrl+P) to file it.</p></article>'
    )
    return layout(f"Case file {record.id}", body, principal=principal, store_url=store_url)


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

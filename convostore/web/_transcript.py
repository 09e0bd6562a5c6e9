"""HTML of a conversation's transcript and case file.

Steps are described as ``convostore show`` describes them (the CLI's ``describe_step``); media
is shown by reference (type, MIME type, URI, size), never inline: base64 data and thought
signatures are replaced by their length wherever a step's JSON is shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ..cli._common import describe_step
from ..models import ConversationRecord, StoredStep, TurnRecord
from ._auth import Principal
from ._queries import Verification, forked_from
from ._queries import turn_flags as q_flags
from ._render import conversation_url, e, layout, when

__all__ = ["case_file_page", "step_html", "transcript_page", "turn_html", "verification_badge"]

_MEDIA = frozenset({"image", "audio", "video", "document"})


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
    flags = q_flags([turn])
    reason_css = " warn" if flags & {"chain_break", "compaction"} else ""
    flagged = " flagged" if bad_seq is not None and turn.seq == bad_seq else ""
    meta = [
        f'<span class="badge">{e(turn.mode_used)}</span>',
        f'<span class="badge{reason_css}">{e(str(turn.reason))}</span>',
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

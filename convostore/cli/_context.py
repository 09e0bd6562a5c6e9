"""``compact``, and what ``show`` draws of compactions (``--context-at``)."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from .. import _transfer as transfer
from .._core import context as _context
from .._core import planner
from ._common import (
    _client,
    _emit_json,
    _out,
    _store,
    base_url_option,
    cli,
    describe_step,
    json_option,
    store_option,
    tenant_option,
)


def compaction_marker(compaction: Any) -> str:
    """``── turns 1-40 compacted: summary, 1,234 tokens ──``"""
    kind = "summary" if compaction.summarizer == "summarize" else compaction.summarizer
    usage = compaction.usage or {}
    tokens = usage.get("total_tokens")
    cost = f", {tokens:,} tokens" if isinstance(tokens, int) else ""
    span = f"1\u2013{compaction.last_turn}"
    return f"── turns {span} compacted: {kind}{cost} ({compaction.policy}) ──"


def context_at(bundle: transfer.Bundle, k: int) -> list[dict[str, Any]]:
    """What the model saw at turn ``k``: the view in force then, and that turn's input."""
    turn = bundle.turns[k - 1]
    compaction = next((c for c in bundle.compactions if c.epoch == turn.context_epoch), None)
    after = compaction.last_seq if compaction is not None else 0
    history = [s.payload for s in bundle.steps if s.seq > after and s.turn_seq < k]
    own = [s.payload for s in bundle.steps if s.turn_seq == k]
    shown = planner.turn_result(turn, own, replayed=False)
    return [*_context.view(compaction, history), *shown.input_steps]


def print_context(console: Console, steps: list[dict[str, Any]]) -> None:
    for payload in steps:
        label, line = describe_step(payload)
        console.print(f"[bold]{escape(label)}:[/] {escape(line)}")


@cli.command("compact", epilog="Example: convostore compact 3f2a… --tenant acme --keep-turns 10")
@click.argument("conversation_id")
@store_option
@tenant_option
@base_url_option
@click.option(
    "--summarizer",
    type=click.Choice(["trim", "summarize"]),
    default="trim",
    show_default=True,
    help="trim: the covered turns leave the view (free); summarize: a billed summary call.",
)
@click.option("--keep-turns", default=4, show_default=True, type=click.IntRange(0, None))
@json_option
def compact_command(
    conversation_id: str,
    store_url: str,
    tenant: str,
    base_url: str | None,
    summarizer: str,
    keep_turns: int,
    as_json: bool,
) -> int:
    """Compact a conversation now: its oldest turns leave the requests' view (the record
    keeps every step); the next turn seeds a new chain from the compacted view."""
    from .._sync.client import InteractionsClient
    from .._sync.conversations import Conversations

    with _store(store_url) as store:
        client = (
            _client(base_url)
            if summarizer == "summarize"
            else InteractionsClient(api_key="unused", base_url=base_url or None)
        )
        with client, Conversations(store, client) as convos:
            conv = convos.get(conversation_id, tenant=tenant)
            done = conv.compact(summarizer=summarizer, keep_turns=keep_turns)
    if as_json:
        _emit_json(None if done is None else done.model_dump(mode="json"))
    elif done is None:
        _out().print("nothing to compact (every turn is within --keep-turns or covered)")
    else:
        _out().print(escape(compaction_marker(done)))
    return 0

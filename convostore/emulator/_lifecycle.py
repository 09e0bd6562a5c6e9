"""How an interaction moves from running to a final status.

::

    create ──> queued / idle / in_progress ──(background_seconds)──> final status
       │                 │
       │                 └──(cancel)──> cancelled
       └──> final status at once (a unary or streamed create that is not background
            and was not told otherwise by ``Emulator.next_status``)

Final statuses: ``completed``, ``requires_action``, ``requires_continuation`` (the decode limit
cut the answer; a ``continuation_token`` resumes it), ``failed`` (with ``errors``),
``cancelled``, ``incomplete`` and ``budget_exceeded`` (with the partial answer). Only an
interaction that finishes after its create answered (background, or left unfinished by
``next_status``) notifies webhooks. Every function here runs on the server's event loop;
those without ``async`` expect the caller to hold the state lock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ._decode import ContinuationPoint, Hop, hop_steps, hop_usage, mint_token
from ._responses import append_events, closing_events, opening_events, output_events
from ._state import UNFINISHED_STATUSES, EmulatorState, StoredInteraction
from ._webhooks import schedule_webhooks

__all__ = ["Outcome", "cancel", "finish", "finish_later", "start_later", "truncate_owner"]

_TASKS: set[asyncio.Task[None]] = set()
_POLL_SECONDS = 0.02


@dataclass
class Outcome:
    """How a create ends: the hop it produces, its final status and any errors."""

    hop: Hop
    status: str
    errors: list[dict[str, str]] | None = None


def finish(state: EmulatorState, rec: StoredInteraction, outcome: Outcome, *, stored: bool) -> None:
    """Give ``rec`` its output and final status, and append the rest of its events."""
    hop = outcome.hop
    rec.hop = hop
    rec.output_steps = hop_steps(hop.plan, hop.start, hop.end)
    rec.status, rec.errors, rec.updated = outcome.status, outcome.errors, time.time()
    rec.usage = hop_usage(hop, rec.output_steps)
    owner = rec.id if stored else None

    def mint(position: int) -> str:
        return mint_token(state.tokens, hop.plan, position, owner)

    if outcome.status == "requires_continuation":
        rec.continuation_token = mint(hop.end)
    events = output_events(rec, hop, checkpoint_every=state.settings.checkpoint_every, mint=mint)
    append_events(rec, [*events, *closing_events(rec)])


async def finish_later(
    state: EmulatorState, rec: StoredInteraction, outcome: Outcome, *, stored: bool
) -> None:
    """Finish ``rec`` once it has run ``background_seconds``, unless it was cancelled.

    The setting is read while waiting, so lowering it finishes running interactions sooner."""
    while True:
        with state.lock:
            if rec.status not in UNFINISHED_STATUSES:
                return
            left = rec.created + state.settings.background_seconds - time.time()
        if left <= 0:
            break
        await asyncio.sleep(min(left, _POLL_SECONDS))
    with state.lock:
        if rec.status not in UNFINISHED_STATUSES:
            return
        if rec.status != "in_progress":
            update = {
                "event_type": "interaction.status_update",
                "interaction_id": rec.id,
                "status": "in_progress",
            }
            append_events(rec, [update])
        finish(state, rec, outcome, stored=stored)
        schedule_webhooks(state, rec)


def start_later(
    state: EmulatorState, rec: StoredInteraction, outcome: Outcome, *, stored: bool
) -> None:
    """Schedule :func:`finish_later` on the running loop."""
    task = asyncio.get_running_loop().create_task(finish_later(state, rec, outcome, stored=stored))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


def cancel(state: EmulatorState, rec: StoredInteraction) -> None:
    """Cancel a running interaction: status ``cancelled``, no output."""
    rec.status, rec.updated, rec.output_steps, rec.usage = "cancelled", time.time(), [], {}
    append_events(rec, closing_events(rec))
    schedule_webhooks(state, rec)


def truncate_owner(state: EmulatorState, point: ContinuationPoint) -> None:
    """Resuming from a mid-hop checkpoint: the hop that issued it keeps only what it produced
    up to the checkpoint, so the stored chain holds each word once."""
    owner = state.interactions.get(point.owner_id) if point.owner_id else None
    hop: Any = owner.hop if owner is not None else None
    if owner is None or hop is None or hop.plan is not point.plan:
        return
    if not hop.start <= point.position < hop.end:
        return
    truncated = Hop(plan=hop.plan, start=hop.start, end=point.position, context=hop.context)
    owner.events, owner.continuation_token = [], None
    append_events(owner, opening_events(owner, "in_progress"))
    finish(state, owner, Outcome(truncated, "requires_continuation"), stored=True)

"""Tamper evidence: each turn's hash covers the previous turn's hash, the turn and its steps.

The hash leaves out the conversation id so that a fork (which copies turns into a new
conversation) keeps a valid chain. Any change to a stored step, a deleted turn or a reordered
seq breaks the chain from that turn on; :func:`verify` reports the first break of each kind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..models import LOST_STATUS, StoredStep, TurnRecord


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 (lone surrogates escaped)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def turn_hash(
    previous_hash: str | None, turn: TurnRecord, steps: Iterable[Mapping[str, Any] | StoredStep]
) -> str:
    """The audit hash of ``turn`` given the hash of the turn before it (None for the first)."""
    body: dict[str, Any] = {
        "previous": previous_hash,
        "turn": {
            "seq": turn.seq,
            "interaction_id": turn.interaction_id,
            "previous_interaction_id": turn.previous_interaction_id,
            "model": turn.model,
            "mode_used": turn.mode_used,
            "reason": str(turn.reason),
            "status": turn.status,
            "usage": turn.usage,
            "idempotency_key": turn.idempotency_key,
            "created_at": turn.created_at.isoformat(),
        },
        "steps": [
            [s.seq, s.turn_seq, s.payload] if isinstance(s, StoredStep) else s for s in steps
        ],
    }
    if turn.context_epoch:  # absent when 0, so hashes written before compaction still hold
        body["turn"]["context_epoch"] = turn.context_epoch
    return hashlib.sha256(canonical_json(body)).hexdigest()


def verify(turns: Sequence[TurnRecord], steps: Sequence[StoredStep]) -> list[str]:
    """Check a conversation's stored turns and steps; return the problems found (empty = ok).

    Checks: turn seqs run 1..n, step seqs run 1..m, every step belongs to an existing turn and
    steps of a turn are contiguous, the chain is linear (a chained turn continues from the
    interaction of the turn before it), each turn's audit hash matches the recomputed chain.
    """
    problems: list[str] = []
    for expected, turn in enumerate(turns, start=1):
        if turn.seq != expected:
            problems.append(f"turn seq {turn.seq} where {expected} was expected (deleted turn?)")
            break
    for expected, step in enumerate(steps, start=1):
        if step.seq != expected:
            problems.append(f"step seq {step.seq} where {expected} was expected")
            break
    by_turn: dict[int, list[StoredStep]] = {}
    last_turn = 0
    for step in steps:
        if step.turn_seq < last_turn:
            problems.append(f"step {step.seq} of turn {step.turn_seq} follows turn {last_turn}")
            break
        last_turn = step.turn_seq
        by_turn.setdefault(step.turn_seq, []).append(step)
    known = {t.seq for t in turns}
    orphans = sorted(set(by_turn) - known)
    if orphans:
        problems.append(f"steps belong to missing turn(s) {orphans[:5]}")
    # a lost turn moved no head: the chain runs past it
    answered = [t for t in turns if t.status != LOST_STATUS]
    for before, turn in itertools.pairwise(answered):
        if turn.mode_used == "server" and turn.previous_interaction_id != before.interaction_id:
            problems.append(
                f"turn {turn.seq} chains from {turn.previous_interaction_id!r}, "
                f"not from turn {before.seq}'s interaction {before.interaction_id!r}"
            )
            break
    previous: str | None = None
    for turn in turns:
        if turn.audit_hash is None:
            previous = None
            continue
        expected_hash = turn_hash(previous, turn, by_turn.get(turn.seq, []))
        if turn.audit_hash != expected_hash:
            problems.append(f"turn {turn.seq}: audit hash mismatch (changed turn or steps)")
            break
        previous = turn.audit_hash
    return problems

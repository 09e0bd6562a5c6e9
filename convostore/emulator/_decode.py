"""Decoding an answer in hops: the per-request decode limit and ``continuation_token``.

The whole answer of a turn (what a model without a decode limit would say) is a
:class:`DecodePlan`: its steps cut into *atoms*. Each word of a plain ``model_output`` text is
one atom (its leading whitespace included, so joining the atoms gives the text back exactly);
any other step (``thought``, ``function_call``, a model output that is not one text part) is
one atom worth no words. A create produces the atoms ``[start, end)`` of a plan — a *hop* —
where ``end`` is reached after the decode limit's number of words. A hop that stops before the
plan's end has status ``requires_continuation`` and a ``continuation_token`` naming the
position to resume from; so do the mid-stream checkpoints of ``interaction.status_update``
events. Tokens are opaque (``ct_<random>``), kept in the emulator's state and reusable: a
stream that was cut is resumed by re-sending the same token.
"""

from __future__ import annotations

import base64
import copy
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from ._model import Generation, count_words

__all__ = [
    "Atom",
    "ContinuationPoint",
    "DecodePlan",
    "Hop",
    "hop_end",
    "hop_steps",
    "hop_usage",
    "mint_token",
    "partial_end",
    "plan_answer",
    "text_groups",
]

_PIECES = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class Atom:
    """One indivisible piece of output: a word of text (``step`` is its model output) or a
    whole step."""

    step: int
    text: str | None = None

    @property
    def words(self) -> int:
        return 1 if self.text is not None else 0


@dataclass
class DecodePlan:
    """The whole answer of one turn and what a continuation must match to resume it."""

    steps: list[dict[str, Any]]
    atoms: list[Atom]
    status: str
    model: str | None
    turn_input: list[dict[str, Any]]
    turn_previous_id: str | None

    @property
    def size(self) -> int:
        return len(self.atoms)


@dataclass
class ContinuationPoint:
    """What a ``continuation_token`` stands for."""

    plan: DecodePlan
    position: int
    owner_id: str | None  # the stored hop that issued it; None when that hop was not stored


@dataclass
class Hop:
    """The atoms ``[start, end)`` of ``plan`` that one interaction produced."""

    plan: DecodePlan
    start: int
    end: int
    context: dict[str, Any] = field(default_factory=dict)  # what usage counts as input


def _split_text(text: str) -> list[str]:
    pieces = _PIECES.findall(text)
    if not pieces:
        return [text]
    consumed = sum(len(p) for p in pieces)
    pieces[-1] += text[consumed:]  # trailing whitespace stays with the last word
    return pieces


def _splittable(step: dict[str, Any]) -> bool:
    content = step.get("content")
    return (
        step.get("type") == "model_output"
        and isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], dict)
        and content[0].get("type") == "text"
        and isinstance(content[0].get("text"), str)
        and set(content[0]) == {"type", "text"}
    )


def plan_answer(
    generation: Generation,
    *,
    model: str | None,
    turn_input: list[dict[str, Any]],
    turn_previous_id: str | None,
) -> DecodePlan:
    """Cut a generated answer into atoms."""
    atoms: list[Atom] = []
    for index, step in enumerate(generation.steps):
        if _splittable(step):
            atoms += [Atom(index, piece) for piece in _split_text(step["content"][0]["text"])]
        else:
            atoms.append(Atom(index))
    return DecodePlan(
        steps=copy.deepcopy(generation.steps),
        atoms=atoms,
        status=generation.status,
        model=model,
        turn_input=copy.deepcopy(turn_input),
        turn_previous_id=turn_previous_id,
    )


def hop_end(plan: DecodePlan, start: int, limit: int | None) -> int:
    """Where a hop starting at ``start`` stops with a decode limit of ``limit`` words."""
    if limit is None:
        return plan.size
    words, end = 0, start
    while end < plan.size:
        atom = plan.atoms[end]
        if atom.words and words >= limit:
            break
        words += atom.words
        end += 1
    return end


def partial_end(plan: DecodePlan, start: int) -> int:
    """The end of a partial answer (``incomplete``, ``budget_exceeded``): half the words left."""
    left = sum(atom.words for atom in plan.atoms[start:])
    if not left:
        return start
    return hop_end(plan, start, max(1, left // 2))


def text_groups(plan: DecodePlan, start: int, end: int) -> list[tuple[dict[str, Any], list[int]]]:
    """The steps of a hop, each with the atom positions it covers, in order."""
    groups: list[tuple[dict[str, Any], list[int]]] = []
    current: int | None = None
    for position in range(start, end):
        atom = plan.atoms[position]
        if atom.text is not None and current == atom.step and groups:
            groups[-1][1].append(position)
            continue
        current = atom.step if atom.text is not None else None
        source = plan.steps[atom.step]
        if atom.text is not None:
            step = {k: copy.deepcopy(v) for k, v in source.items() if k != "content"}
            step["content"] = [{"type": "text", "text": ""}]
        else:
            step = copy.deepcopy(source)
        groups.append((step, [position]))
    for step, positions in groups:
        if "content" in step and plan.atoms[positions[0]].text is not None:
            # A later hop's text keeps its leading space: the hops join to the whole answer.
            step["content"][0]["text"] = "".join(str(plan.atoms[p].text) for p in positions)
    return groups


def hop_steps(plan: DecodePlan, start: int, end: int) -> list[dict[str, Any]]:
    """The output steps of the atoms ``[start, end)``."""
    return [step for step, _ in text_groups(plan, start, end)]


def hop_usage(hop: Hop, steps: list[dict[str, Any]]) -> dict[str, int]:
    """Usage of one hop, counted in words: everything the hop re-reads is input."""
    context = hop.context
    total_in = sum(
        count_words(context.get(key)) for key in ("system_instruction", "chain", "input", "prefix")
    )
    thought = sum(count_words(s.get("summary")) for s in steps if s.get("type") == "thought")
    output = sum(count_words(s) for s in steps if s.get("type") != "thought")
    return {
        "total_input_tokens": total_in,
        "total_cached_tokens": count_words(context.get("chain")),
        "total_output_tokens": output,
        "total_thought_tokens": thought,
        "total_tokens": total_in + output + thought,
    }


def mint_token(
    tokens: dict[str, Any], plan: DecodePlan, position: int, owner_id: str | None
) -> str:
    """Register a resume point and return its opaque token (caller holds the state lock)."""
    token = "ct_" + base64.urlsafe_b64encode(secrets.token_bytes(18)).decode().rstrip("=")
    tokens[token] = ContinuationPoint(plan=plan, position=position, owner_id=owner_id)
    return token

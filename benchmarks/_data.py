"""The conversations measured: a ~200-byte user step and a ~1.5 KB model step per turn."""

from __future__ import annotations

from convostore.models import ConversationRecord, JSONObject, StoredStep, TurnCommit, TurnRecord
from convostore.testing import make_commit, make_record, model_step, user_step

_USER = "Please summarise what we said about the quarterly figures, and keep it short. é 🐈 "
_MODEL = "Here is the summary you asked for: revenue grew, costs held, margins widened. " * 19


def user_text(n: int) -> str:
    return f"{n}: {_USER}{_USER}"[:200]


def turn_payloads(n: int) -> list[JSONObject]:
    """Turn ``n``'s two steps: ~200 bytes of user input and ~1.5 KB of model output."""
    return [user_step(user_text(n)), model_step(f"{n}: {_MODEL}"[:1500])]


def commits(record: ConversationRecord, count: int) -> list[TurnCommit]:
    """``count`` consecutive turns planned from ``record``."""
    out = []
    for n in range(count):
        commit = make_commit(record, turn_payloads(n))
        out.append(commit)
        record = commit.record
    return out


def history(
    steps: int, *, tenant: str = "bench"
) -> tuple[ConversationRecord, list[TurnRecord], list[StoredStep]]:
    """A conversation of ``steps`` steps (``steps // 2`` turns), ready for create_conversation."""
    base = make_record(tenant=tenant)
    chain = commits(base, steps // 2)
    turns = [c.turn for c in chain]
    stored = [s for c in chain for s in c.steps]
    record = base.model_copy(update={"turn_count": len(turns), "step_count": len(stored)})
    return record, turns, stored


def fresh(tenant: str = "bench") -> ConversationRecord:
    return make_record(tenant=tenant)

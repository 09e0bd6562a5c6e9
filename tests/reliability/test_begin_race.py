"""Two workers begin a turn on the same conversation at once, on the SQL stores: the loser's
``begin_turn`` must say why it lost — ``TurnInFlight`` while the winner's turn is in flight,
``ConcurrentTurnError`` once the winner committed — so that ``send(on_conflict="retry")``
queues or re-plans. Pinned here deterministically: the winner commits in the instant between
the loser's refused ``INSERT`` and its re-read of the turn in flight (the race
``scripts/soak.py``'s concurrency run meets by chance: a worker then died of a bare
``StoreError``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import convostore as cs
from convostore.testing import make_commit, make_pending, make_record, user_step

pytestmark = pytest.mark.reliability


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> str:
    return make_store_url(request.param)


def test_begin_lost_to_a_turn_committed_meanwhile_is_a_conflict(store_url: str) -> None:
    with (
        contextlib.closing(cs.open_store(store_url)) as winner,
        contextlib.closing(cs.open_store(store_url)) as loser,
    ):
        record = winner.create_conversation(make_record(tenant="race"))
        first = make_pending(record)
        winner.begin_turn(first)
        second = make_pending(record)  # planned from the same version, another worker
        engine: Any = loser._engines()[1]  # type: ignore[attr-defined]
        checkouts: list[int] = []

        def commit_first(*args: Any) -> None:
            # the loser's first checkout runs its INSERT (refused); its second re-reads the
            # turn in flight: the winner commits in between
            checkouts.append(1)
            if len(checkouts) == 2:
                commit = make_commit(
                    record, [user_step("first")], idempotency_key=first.idempotency_key
                )
                winner.append_turn(commit)  # drops the first worker's pending record

        sa.event.listen(engine.pool, "checkout", commit_first)
        try:
            with pytest.raises(cs.ConcurrentTurnError):
                loser.begin_turn(second)
        finally:
            sa.event.remove(engine.pool, "checkout", commit_first)
        fired = checkouts[1:]
        assert fired, "the re-read of the turn in flight never ran"
        assert winner.get_pending(record.id, tenant="race") is None
        assert winner.get_conversation(record.id, tenant="race").turn_count == 1

"""Several processes send to ONE server-mode conversation with ``on_conflict="retry"``:
every turn is stored exactly once and the chain is linear, in the store and on the emulator.

CI size: 4 processes x 15 turns per store. Full size (8 x 50):
``python scripts/soak.py --full``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType

import pytest

import convostore as cs
from convostore.emulator import Emulator

pytestmark = pytest.mark.reliability

PROCESSES, TURNS = 4, 15


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql", "redis"])
def test_processes_racing_on_one_conversation(
    kind: str, make_store_url: Callable[[str], str], emulator: Emulator, soak: ModuleType
) -> None:
    figures = soak.run_concurrency(
        make_store_url(kind), emulator, processes=PROCESSES, turns=TURNS, label=kind
    )
    print(f"concurrency {PROCESSES}x{TURNS}: {figures.line()}")
    assert figures.problems == []
    assert figures.turns_sent == PROCESSES * TURNS
    assert figures.lost == figures.corrupted == 0
    # the racing was real: some writer lost at least once and re-planned
    assert figures.conflicts > 0
    # every lost race left one interaction on the server, deleted again by the loser
    deletes = sum(1 for r in emulator.requests if r.method == "DELETE")
    assert deletes == figures.retries


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_stream_that_loses_the_race_leaves_nothing_behind(
    kind: str, make_store_url: Callable[[str], str], emulator: Emulator
) -> None:
    """A streamed turn whose conversation moved on meanwhile raises ConcurrentTurnError,
    commits nothing, and deletes its interaction: the server keeps one chain."""
    with (
        cs.InteractionsClient(api_key="race-key-0123456789", base_url=emulator.url) as client,
        cs.Conversations(make_store_url(kind), client) as convos,
    ):
        slow = convos.create(tenant="race", mode="server")
        slow.send("I have 2 dogs in my house.")
        fast = convos.get(slow.id, tenant="race")
        server_before = set(emulator.interactions)
        with pytest.raises(cs.ConcurrentTurnError), slow.stream("streamed loser") as events:
            iterator = iter(events)
            next(iterator)  # the request is made; the answer is streaming
            winner = fast.send("the winner")
            for _ in iterator:
                pass
        assert set(emulator.interactions) - server_before == {winner.interaction_id}
        turns = fast.turns()
        assert [t.seq for t in turns] == [1, 2] and turns[1].interaction_id == winner.interaction_id
        assert "streamed loser" not in json.dumps(fast.history())

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
    # the racing was real: writers queued behind each other's turns in flight
    assert figures.conflicts > 0
    # and no lost race cost a request: one create per turn, nothing to delete
    creates = [r for r in emulator.requests if r.method == "POST"]
    assert len(creates) == PROCESSES * TURNS
    assert not [r for r in emulator.requests if r.method == "DELETE"]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_send_during_a_streamed_turn_is_refused_before_any_request(
    kind: str, make_store_url: Callable[[str], str], emulator: Emulator
) -> None:
    """One turn in flight per conversation: a second send while a stream is in flight raises
    TurnInFlight (a ConcurrentTurnError) and sends nothing; the stream then commits."""
    with (
        cs.InteractionsClient(api_key="race-key-0123456789", base_url=emulator.url) as client,
        cs.Conversations(make_store_url(kind), client) as convos,
    ):
        slow = convos.create(tenant="race", mode="server")
        slow.send("I have 2 dogs in my house.")
        fast = convos.get(slow.id, tenant="race")
        posts_before = sum(1 for r in emulator.requests if r.method == "POST")
        with slow.stream("streamed first") as events:
            iterator = iter(events)
            next(iterator)  # the request is made; the answer is streaming
            with pytest.raises(cs.TurnInFlight) as info:
                fast.send("too early")
            assert isinstance(info.value, cs.ConcurrentTurnError)
            for _ in iterator:
                pass
        assert sum(1 for r in emulator.requests if r.method == "POST") == posts_before + 1
        turns = fast.turns()
        assert [t.seq for t in turns] == [1, 2]
        assert "too early" not in json.dumps(fast.history())


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_stream_whose_conversation_moved_on_leaves_nothing_behind(
    kind: str, make_store_url: Callable[[str], str], emulator: Emulator
) -> None:
    """A streamed turn whose conversation changed meanwhile raises ConcurrentTurnError,
    commits nothing, and deletes its interaction: the server keeps one chain."""
    with (
        cs.InteractionsClient(api_key="race-key-0123456789", base_url=emulator.url) as client,
        cs.Conversations(make_store_url(kind), client) as convos,
    ):
        slow = convos.create(tenant="race", mode="server")
        first = slow.send("I have 2 dogs in my house.")
        other = convos.get(slow.id, tenant="race")
        server_before = set(emulator.interactions)
        with pytest.raises(cs.ConcurrentTurnError), slow.stream("streamed loser") as events:
            iterator = iter(events)
            next(iterator)
            other.update(metadata={"changed": "meanwhile"})
            for _ in iterator:
                pass
        assert set(emulator.interactions) - server_before == set()
        assert [t.interaction_id for t in other.turns()] == [first.interaction_id]
        assert other.pending() is None
        assert "streamed loser" not in json.dumps(other.history())

"""Several processes send to ONE server-mode conversation with ``on_conflict="retry"``:
every turn is stored exactly once and the chain is linear, in the store and on the emulator;
with one turn in flight at a time, no request is wasted on a turn that would lose.

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


@pytest.mark.parametrize(
    "kind",
    ["sqlite", "postgresql", "mysql", "redis"],
)
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
    # the racing was real: some writer found a turn in flight (or just committed) and waited
    assert figures.conflicts > 0
    # one turn in flight at a time: a writer that must wait sends nothing until it may, so
    # there is exactly one request per turn and nothing to delete
    creates = [r for r in emulator.requests if r.method == "POST" and r.body is not None]
    assert len(creates) == PROCESSES * TURNS
    assert [r for r in emulator.requests if r.method == "DELETE"] == []


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_send_while_a_stream_is_in_flight_is_refused_before_it_sends(
    kind: str, make_store_url: Callable[[str], str], emulator: Emulator
) -> None:
    """A second writer meets the streamed turn in flight: ``TurnInFlight``, nothing sent;
    the stream commits, and the server keeps one chain."""
    with (
        cs.InteractionsClient(api_key="race-key-0123456789", base_url=emulator.url) as client,
        cs.Conversations(make_store_url(kind), client) as convos,
    ):
        slow = convos.create(tenant="race", mode="server")
        slow.send("I have 2 dogs in my house.")
        fast = convos.get(slow.id, tenant="race")
        server_before = set(emulator.interactions)
        with slow.stream("streamed first") as events:
            iterator = iter(events)
            next(iterator)  # the request is made; the answer is streaming
            requests = len(emulator.requests)
            with pytest.raises(cs.TurnInFlight):
                fast.send("the second writer")
            assert len(emulator.requests) == requests  # refused before anything was sent
            for _ in iterator:
                pass
        assert events.turn is not None
        assert set(emulator.interactions) - server_before == {events.turn.interaction_id}
        turns = fast.turns()
        assert [t.seq for t in turns] == [1, 2]
        assert turns[1].interaction_id == events.turn.interaction_id
        assert "the second writer" not in json.dumps(fast.history())

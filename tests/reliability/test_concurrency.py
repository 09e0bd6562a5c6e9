"""Several processes send to ONE server-mode conversation with ``on_conflict="retry"``:
every turn is stored exactly once and the chain is linear, in the store and on the emulator.

CI size: 4 processes x 8 turns per store. Full size (8 x 50):
``python scripts/soak.py --full``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from convostore.emulator import Emulator

pytestmark = pytest.mark.reliability

PROCESSES, TURNS = 4, 8


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

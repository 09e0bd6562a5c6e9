"""A worker process sending turns (unary and streamed) is killed with SIGKILL at seeded random
moments: afterwards the store verifies and every acknowledged turn is there.

CI size: 3 kills per store (12 in all). Full size (50 per store):
``python scripts/soak.py --full``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from convostore.emulator import Emulator

pytestmark = pytest.mark.reliability

KILLS = 3
SEED = 20261125


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql", "redis"])
def test_sigkilled_worker_leaves_a_verifiable_store(
    kind: str, make_store_url: Callable[[str], str], emulator: Emulator, soak: ModuleType
) -> None:
    figures = soak.run_kills(make_store_url(kind), emulator, runs=KILLS, seed=SEED, label=kind)
    print(f"kill x{KILLS}: {figures.line()}")
    assert figures.problems == []
    assert figures.faults == KILLS
    assert figures.turns_sent > 0
    assert figures.lost == figures.corrupted == 0

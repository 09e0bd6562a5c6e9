"""Workers killed with SIGKILL at every point of a turn's lifecycle — before the request, in
flight, after the answer, before / in / after the commit, mid-stream, after a background turn
was handed back — through ``send``, ``stream`` and ``send(background=True)``, plus workers
that stall there and come back after their turn was taken over. Then recovery: the next
``send`` of some conversations, ``recover()`` twice, racing the late originals.

Afterwards: no acknowledged turn lost, no input stored twice, idempotency keys unique, every
answer whose id was recorded adopted, every store verifies, and every interaction the emulator
created is accounted for (a committed turn's, deleted, or one of the counted buckets: created
for a request whose worker died before the id reached it, id received but not yet recorded).

CI size: 23 kills per store (every lifecycle point at least once, 5 of them late originals).
Full size (120 per store): ``python scripts/soak.py --full --runs durable``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from convostore.emulator import Emulator

pytestmark = pytest.mark.reliability

KILLS = 23
SEED = 20261203


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql", "redis"])
def test_killed_turns_are_recovered_exactly_once(
    kind: str, make_store_url: Callable[[str], str], emulator: Emulator, soak: ModuleType
) -> None:
    figures = soak.run_durable_kills(
        make_store_url(kind), emulator, kills=KILLS, seed=SEED, label=kind
    )
    print(f"\ndurable x{KILLS}: {figures.line()}  ({figures.seconds:.1f} s)")
    assert figures.problems == []
    # every planned kill happened, every (way, point) of the lifecycle at least once
    assert figures.kills + figures.late == KILLS and figures.late == len(soak.STALLS)
    assert len(figures.by_point) == sum(len(points) for points in soak.POINTS.values())
    assert figures.acked > 0
    assert figures.acked_lost == 0
    assert figures.duplicated == 0
    assert figures.recorded_not_adopted == 0
    assert figures.unaccounted == 0
    # both outcomes of a recovery happened: answers adopted, turns with nothing to adopt lost
    assert figures.adopted > 0 and figures.lost_turns > 0
    assert figures.taken_over_by_send > 0
    # a request in flight when its worker died was still answered by the server: counted
    assert figures.never_reached_worker > 0

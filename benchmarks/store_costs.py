"""Store costs on one backend, beside the driver floor (issue items 1, 2, 3 and footprint).

- append vs history length: one conversation, N turns; median append over the first and the
  last window of turns (target: last/first <= 1.1), each append paired with the floor's
  append of the same turn to a conversation of its own (target: <= 2x);
- load of the whole history at each size and the newest-20 read, beside a bare range read
  (target: <= 1.5x); resume (open by id + newest 20) beside the bare pair (target: <= 2x);
- storage footprint per 1,000 steps;
- the append that replaces a turn in flight (its idempotency key's pending record is deleted in
  the same write) beside a keyed append with nothing in flight (target: +0.1 ms at most).
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from typing import Any

import convostore as cs

from . import _data
from ._backends import Env
from ._sizes import Sizes
from ._timing import Row, Stat, once, paired


def measure(env: Env, sizes: Sizes) -> list[Row]:
    store = cs.open_store(env.url, **env.options)
    try:
        rows = _appends(env, store, sizes)
        rows += _pending_appends(env, store, sizes)
        rows += _loads(env, store, sizes)
        return rows
    finally:
        store.close()


def _appends(env: Env, store: Any, sizes: Sizes) -> list[Row]:
    ours = store.create_conversation(_data.fresh())
    floors = store.create_conversation(_data.fresh())
    if env.name == "memory":
        env.floor.add(floors)  # type: ignore[attr-defined]
    pairs = list(
        zip(
            _data.commits(ours, sizes.append_turns),
            _data.commits(floors, sizes.append_turns),
            strict=True,
        )
    )
    store_times: list[float] = []
    floor_times: list[float] = []
    gc.collect()
    for n, (mine, theirs) in enumerate(pairs):
        if n % 2:
            floor_times.append(once(lambda: env.floor.append(theirs)))  # noqa: B023
            store_times.append(once(lambda: store.append_turn(mine)))  # noqa: B023
        else:
            store_times.append(once(lambda: store.append_turn(mine)))  # noqa: B023
            floor_times.append(once(lambda: env.floor.append(theirs)))  # noqa: B023
    w = sizes.append_window
    first, last = Stat.of(store_times[:w]), Stat.of(store_times[-w:])
    floor_first, floor_last = Stat.of(floor_times[:w]), Stat.of(floor_times[-w:])
    total = sizes.append_turns
    # the windows are minutes apart; the floor's appends ran interleaved with ours, so its
    # own growth shows how much of ours is the machine drifting
    drift = floor_last.median / floor_first.median
    return [
        Row(
            env.name,
            f"append, turns {total - w + 1}-{total} vs 1-{w}",
            last,
            reference=first,
            reference_name=f"turns 1-{w}",
            target=1.1,
            note=f"{last.median / first.median / drift:.2f} after the floor's own growth",
        ),
        Row(
            env.name,
            f"floor append, turns {total - w + 1}-{total} vs 1-{w}",
            floor_last,
            reference=floor_first,
            reference_name=f"turns 1-{w}",
            note="for comparison: the floor's own growth",
        ),
        Row(
            env.name,
            "append one turn (2 steps)",
            Stat.of(store_times),
            reference=Stat.of(floor_times),
            reference_name="floor",
            target=2.0,
        ),
    ]


def _pending_appends(env: Env, store: Any, sizes: Sizes) -> list[Row]:
    """Keyed appends, interleaved: each replacing its turn in flight (begun beforehand,
    untimed), or with nothing in flight."""
    from convostore.testing import make_commit, make_pending

    records = {flag: store.create_conversation(_data.fresh()) for flag in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    gc.collect()
    for n in range(sizes.append_turns):
        for in_flight in (True, False) if n % 2 else (False, True):
            record = records[in_flight]
            key = uuid.uuid4().hex
            commit = make_commit(record, _data.turn_payloads(n), idempotency_key=key)
            if in_flight:
                store.begin_turn(make_pending(record, idempotency_key=key))
            times[in_flight].append(once(lambda: store.append_turn(commit)))  # noqa: B023
            records[in_flight] = commit.record
    ours, plain = Stat.of(times[True]), Stat.of(times[False])
    extra = (ours.median - plain.median) * 1000
    return [
        Row(
            env.name,
            "append replacing its turn in flight",
            ours,
            reference=plain,
            reference_name="keyed append, none in flight",
            note=f"{extra:+.3f} ms (target <= +0.1 ms: {'ok' if extra <= 0.1 else 'MISS'})",
        )
    ]


def _loads(env: Env, store: Any, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    footprint: Row | None = None
    largest: Any = None
    for count in sizes.load_steps:
        record, turns, steps = _data.history(count)
        before = env.size() if env.size is not None else 0
        if env.size is None:
            tracemalloc.start()
            traced = tracemalloc.get_traced_memory()[0]
        store.create_conversation(record, turns=turns, steps=steps)
        if env.size is None:
            used = tracemalloc.get_traced_memory()[0] - traced
            tracemalloc.stop()
            env.floor.add(record, [(s.turn_seq, s.payload) for s in steps])  # type: ignore[attr-defined]
        else:
            used = env.size() - before
        del turns, steps
        gc.collect()
        if count == max(sizes.load_steps):
            largest = record
            per_k = used * 1000 / count
            footprint = Row(
                env.name,
                "storage per 1,000 steps (KiB)",
                Stat(per_k / 1024, per_k / 1024, per_k / 1024, 1),
                unit="KiB",
                note=f"from a {count}-step conversation; steps, turns and indexes",
            )
        cid, tenant = record.id, record.tenant
        assert len(store.load_steps(cid, tenant=tenant)) == count
        mine, floor = paired(
            lambda: store.load_steps(cid, tenant=tenant),  # noqa: B023
            lambda: env.floor.load(cid),  # noqa: B023
            sizes.load_repeat if count >= 10_000 else max(sizes.load_repeat, 15),
        )
        rows.append(
            Row(
                env.name,
                f"load {count} steps",
                mine,
                reference=floor,
                reference_name="bare range read",
                target=1.5,
            )
        )
    assert largest is not None
    cid, tenant, count = largest.id, largest.tenant, largest.step_count
    newest = store.load_steps(cid, tenant=tenant, newest=20)
    assert len(newest) == 20 and newest[-1].seq == count, "newest-20 read the wrong steps"
    mine, floor = paired(
        lambda: store.load_steps(cid, tenant=tenant, newest=20),
        lambda: env.floor.newest(cid, count, 20),
        sizes.read_repeat,
    )
    rows.append(
        Row(
            env.name,
            f"newest 20 of {count} steps",
            mine,
            reference=floor,
            reference_name="bare range read",
            target=1.5,
        )
    )

    def resume() -> None:
        record = store.get_conversation(cid, tenant=tenant)
        store.load_steps(record.id, tenant=tenant, newest=20)

    mine, floor = paired(resume, lambda: env.floor.resume(cid, tenant, 20), sizes.read_repeat)
    rows.append(
        Row(
            env.name,
            f"resume: open + newest 20 of {count}",
            mine,
            reference=floor,
            reference_name="bare row + range read",
            target=2.0,
        )
    )
    if footprint is not None:
        rows.append(footprint)
    return rows

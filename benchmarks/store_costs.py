"""Store costs on one backend, beside the driver floor (issue items 1, 2, 3 and footprint).

- append vs history length: one conversation, N turns; median append over the first and the
  last window of turns (target: last/first <= 1.1), each append paired with the floor's
  append of the same turn to a conversation of its own (target: <= 2x);
- load of the whole history at each size and the newest-20 read, beside a bare range read
  (target: <= 1.5x); resume (open by id + newest 20) beside the bare pair (target: <= 2x);
- storage footprint per 1,000 steps;
- the append that replaces a turn in flight (its idempotency key's pending record is deleted in
  the same write) beside a keyed append with nothing in flight (target: +0.1 ms at most).
- the durable turn: a send's store work is now ``begin_turn`` (the pending record, before the
  request) + ``update_pending`` (the answer's id, before the commit) + ``append_turn`` with
  the turn's idempotency key (which also deletes the pending record), against the
  ``append_turn`` alone without a key that a send did before; the difference of the medians
  is what the pending record adds per turn (targets: <= 0.3 ms on SQLite and Redis,
  <= 0.6 ms on PostgreSQL).
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from datetime import timedelta
from typing import Any

import convostore as cs
from convostore.models import utcnow
from convostore.testing import make_commit, make_pending

from . import _data
from ._backends import Env
from ._sizes import Sizes
from ._timing import Row, Stat, once, paired


def measure(env: Env, sizes: Sizes) -> list[Row]:
    store = cs.open_store(env.url, **env.options)
    try:
        rows = _appends(env, store, sizes)
        rows += _pending_appends(env, store, sizes)
        rows += _durable(env, store, sizes)
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


DURABLE_TARGET_US = {"sqlite": 300.0, "redis": 300.0, "postgresql": 600.0}
"""The most the pending record may add to a turn's store work, in µs."""


def _durable(env: Env, store: Any, sizes: Sizes) -> list[Row]:
    new = store.create_conversation(_data.fresh())
    old = store.create_conversation(_data.fresh())
    begins: list[float] = []
    updates: list[float] = []
    appends: list[float] = []
    totals: list[float] = []
    olds: list[float] = []

    def durable_turn(n: int) -> None:
        nonlocal new
        payloads = _data.turn_payloads(n)
        key = f"t-{uuid.uuid4().hex}"
        commit = make_commit(new, payloads, idempotency_key=key)
        now = utcnow()
        pending = make_pending(
            new,
            idempotency_key=key,
            input_steps=payloads[:1],
            config={},
            lease_owner="bench",
            lease_expires_at=now + timedelta(minutes=5),
        )
        answered = pending.model_copy(
            update={
                "state": "sent",
                "interaction_id": commit.turn.interaction_id,
                "hop_ids": [commit.turn.interaction_id],
                "lease_expires_at": now + timedelta(minutes=5),
            }
        )
        begins.append(once(lambda: store.begin_turn(pending)))
        updates.append(once(lambda: store.update_pending(answered, owner="bench")))
        appends.append(once(lambda: store.append_turn(commit)))
        totals.append(begins[-1] + updates[-1] + appends[-1])
        new = commit.record

    def old_turn(n: int) -> None:
        nonlocal old
        commit = make_commit(old, _data.turn_payloads(n))
        olds.append(once(lambda: store.append_turn(commit)))
        old = commit.record

    durable_turn(0)  # warm-up: the statements of the pending record are built once
    old_turn(0)
    for samples in (begins, updates, appends, totals, olds):
        samples.clear()
    gc.collect()
    for n in range(1, sizes.durable_turns + 1):
        if n % 2:
            old_turn(n)
            durable_turn(n)
        else:
            durable_turn(n)
            old_turn(n)
    total, before = Stat.of(totals), Stat.of(olds)
    parts = [Stat.of(begins), Stat.of(updates), Stat.of(appends)]
    # a send pays each of the three once: the sum of their medians is the typical turn (the
    # median of the sums is pulled up whenever one of three calls is preempted)
    added_us = (sum(p.median for p in parts) - before.median) * 1e6
    rows = [
        Row(
            env.name,
            "durable turn: begin + update + append (key, pending)",
            total,
            reference=before,
            reference_name="append alone, no key (before)",
        ),
        Row(env.name, "  begin_turn (the pending record)", parts[0]),
        Row(env.name, "  update_pending (the answer's id)", parts[1]),
        Row(env.name, "  append_turn with key (drops the pending)", parts[2]),
    ]
    target = DURABLE_TARGET_US.get(env.name)
    added = Stat(added_us, added_us, added_us, 1)
    if target is not None:
        rows.append(
            Row(
                env.name,
                "pending record added per turn (µs)",
                added,
                unit="µs",
                reference=Stat(target, target, target, 1),
                reference_name="target",
                target=1.0,
                note="sum of the three medians - the append's",
            )
        )
    else:
        rows.append(
            Row(
                env.name,
                "pending record added per turn (µs)",
                added,
                unit="µs",
                note="sum of the three medians - the append's; no target",
            )
        )
    return rows


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

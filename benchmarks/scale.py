"""Figures at scale: a store filled to many conversations vs the same store almost empty.

    python -m benchmarks.scale                 # modest: 5,000 conversations (~2 min)
    python -m benchmarks.scale --full          # 100,000 conversations, 1,000,000 steps
    python -m benchmarks.scale --conversations 20000 --only postgresql --only cluster

Backends: ``postgresql`` and ``redis`` (the scratch places of ``benchmarks._backends``) and
``cluster`` (a private 3-master + 3-replica Redis Cluster, ``scripts/redis_cluster.py``).

Each store gets 100 tenants (10 users each) whose conversations have 5 turns of 2 steps, with
valid audit hashes; one in five was last updated 60 days ago. The fill writes in bulk (SQL
``executemany`` of the store's own rows; on Redis the store's create script, 20 in flight),
not one append at a time. Measured, first on the almost empty store (220 conversations), then
on the full one, as the ratio of the medians (target <= 1.3). The almost empty store has
220 conversations in two tenants, so that its pages are full pages too:

- append one turn to a random conversation; resume (open by id + newest 20 steps); list a
  tenant's first page (50) and a deep keyset page (after 90 % of the tenant's conversations);
- ``purge(older_than=30 days)`` of the idle fifth, with the p99 of appends sent meanwhile by
  another process vs its p99 just before;
- ``convostore export --all`` and ``convostore verify --all-tenants`` as child processes: time
  and peak RSS (memory must not grow with the number of conversations);
- PostgreSQL's EXPLAIN of the list and resume queries, as the store sends them.

Printed, not asserted (timing claims live in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import convostore as cs
from convostore._core.audit import turn_hash
from convostore._core.store_rules import encode_cursor
from convostore.models import ConversationRecord, Reason, StoredStep, TurnCommit, TurnRecord

from ._backends import Unavailable, open_backend

TENANTS, USERS, TURNS = 100, 10, 5
BASE = 220  # the almost empty store: two tenants of 110, so every page listed is full
SAMPLES = 200
IDLE_EVERY = 5  # one conversation in five was last updated 60 days ago
START = datetime(2026, 1, 1, tzinfo=UTC)
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
CONVOSTORE = str(Path(sys.executable).parent / "convostore")


# --------------------------------------------------------------------------- data


def _steps(conversation_id: str, first: int, turn_seq: int, n: int) -> list[StoredStep]:
    user = {"type": "user_input", "content": [{"type": "text", "text": f"question {n} é 🐈"}]}
    model = {"type": "model_output", "content": [{"type": "text", "text": "answer " * 40}]}
    return [
        StoredStep(conversation_id=conversation_id, seq=first, turn_seq=turn_seq, type="user_input",
                   payload=user),
        StoredStep(conversation_id=conversation_id, seq=first + 1, turn_seq=turn_seq,
                   type="model_output", payload=model),
    ]  # fmt: skip


def tenant_of(n: int) -> str:
    """The first BASE conversations are the almost empty store's two tenants; the rest
    spread over all TENANTS."""
    return f"t{n % (2 if n < BASE else TENANTS):03d}"


def conversation(n: int) -> tuple[ConversationRecord, list[TurnRecord], list[StoredStep]]:
    """Conversation number ``n``: its record, 5 audited turns and their 10 steps."""
    created = START + timedelta(seconds=n * 60)
    cid = f"scale-{n:07d}"
    turns: list[TurnRecord] = []
    steps: list[StoredStep] = []
    previous_hash: str | None = None
    previous_iid: str | None = None
    for seq in range(1, TURNS + 1):
        iid = f"v1_{cid}_{seq}"
        mine = _steps(cid, len(steps) + 1, seq, seq)
        turn = TurnRecord(
            conversation_id=cid, seq=seq, interaction_id=iid,
            previous_interaction_id=previous_iid, model="gemini-3-flash-preview",
            mode_used="server", reason=Reason.FIRST_TURN if seq == 1 else Reason.CHAINED,
            status="completed", usage={"total_tokens": 10 * seq}, created_at=created,
        )  # fmt: skip
        previous_hash = turn_hash(previous_hash, turn, mine)
        turns.append(turn.model_copy(update={"audit_hash": previous_hash}))
        steps += mine
        previous_iid = iid
    updated = created - timedelta(days=60) if n % IDLE_EVERY == 0 else datetime.now(UTC)
    record = ConversationRecord(
        id=cid, tenant=tenant_of(n), user=f"u{n % (TENANTS * USERS) // TENANTS}",
        model="gemini-3-flash-preview", config={"system_instruction": "You are a cat."},
        version=TURNS, turn_count=TURNS, step_count=len(steps), head_interaction_id=previous_iid,
        head_created_at=created, head_model="gemini-3-flash-preview",
        last_turn_hash=previous_hash, created_at=created, updated_at=max(updated, created),
    )  # fmt: skip
    return record, turns, steps


def next_commit(record: ConversationRecord) -> TurnCommit:
    """A valid (audited) next turn of ``record``."""
    now = datetime.now(UTC)
    seq = record.turn_count + 1
    iid = f"v1_{record.id}_{seq}_{random.getrandbits(32):x}"
    steps = _steps(record.id, record.step_count + 1, seq, seq)
    turn = TurnRecord(
        conversation_id=record.id, seq=seq, interaction_id=iid,
        previous_interaction_id=record.head_interaction_id, model=record.model,
        mode_used="server", reason=Reason.CHAINED, status="completed", usage={},
        created_at=now,
    )  # fmt: skip
    audited = turn_hash(record.last_turn_hash, turn, steps)
    after = record.model_copy(
        update={
            "version": record.version + 1, "turn_count": seq,
            "step_count": record.step_count + 2, "head_interaction_id": iid,
            "head_created_at": now, "last_turn_hash": audited, "updated_at": now,
        }
    )  # fmt: skip
    return TurnCommit(record=after, turn=turn.model_copy(update={"audit_hash": audited}),
                      steps=steps)  # fmt: skip


def fill_sql(url: str, start: int, stop: int) -> None:
    """Conversations ``start..stop-1`` by ``executemany`` of the store's own rows."""
    import sqlalchemy as sa

    from convostore import _sql

    engine = sa.create_engine(_sql.normalize_url(url, is_async=False))
    dialect = engine.dialect.name
    insert_steps = _sql.step_insert(dialect)
    try:
        for low in range(start, stop, 1000):
            batch = [conversation(n) for n in range(low, min(low + 1000, stop))]
            with engine.begin() as conn:
                conn.execute(
                    _sql.conversations.insert(), [_sql.conversation_row(r) for r, _, _ in batch]
                )
                conn.execute(
                    _sql.turns.insert(), [_sql.turn_row(t) for _, ts, _ in batch for t in ts]
                )
                conn.execute(insert_steps, [row for _, _, ss in batch for row in _sql.step_rows(ss, dialect_name=dialect)])  # fmt: skip  # noqa: E501
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


def fill_redis(url: str, start: int, stop: int) -> None:
    """Conversations ``start..stop-1`` by the store's create script, 20 in flight
    (a cluster client's pool holds 100 connections per node and refuses more)."""

    async def create(store: Any, n: int) -> None:
        record, turns, steps = conversation(n)
        for attempt in range(5):
            try:
                await store.create_conversation(record, turns=turns, steps=steps)
                return
            except cs.ConversationExists:
                return  # an earlier attempt's write went through
            except cs.StoreError as exc:
                print(f"fill: {type(exc).__name__}: {exc}", file=sys.stderr)
                if attempt == 4:
                    raise
                await asyncio.sleep(0.1)

    async def run() -> None:
        store = cs.open_async_store(url)
        try:
            # a first command alone: a cluster client's first concurrent commands race its
            # slot-map initialisation (a conversation whose create went through but whose
            # index write failed would stay unlisted)
            await store.list_conversations(tenant="t000", limit=1)
            for low in range(start, stop, 20):
                await asyncio.gather(*(create(store, n) for n in range(low, min(low + 20, stop))))
        finally:
            await store.aclose()

    asyncio.run(run())


# --------------------------------------------------------------------------- measuring


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Ops:
    """Medians (and p99) of the per-operation samples, in seconds."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def active_ids(size: int) -> list[int]:
    return [n for n in range(size) if n % IDLE_EVERY != 0]


class Workload:
    """One store's random operations; ``round`` samples each operation once."""

    def __init__(self, store: Any, size: int, seed: int) -> None:
        self.store, self.rng = store, random.Random(seed)
        self.ids = active_ids(size)
        self.by_tenant: dict[str, list[int]] = {}
        for n in range(size - 1, -1, -1):
            self.by_tenant.setdefault(tenant_of(n), []).append(n)
        # tenants with two full pages (all of them at full size; below, the first two)
        self.listable = sorted(t for t, found in self.by_tenant.items() if len(found) > 100)

    def round(self, ops: Ops) -> None:
        n = self.rng.choice(self.ids)
        cid, tenant = f"scale-{n:07d}", tenant_of(n)
        record = self.store.get_conversation(cid, tenant=tenant)
        commit = next_commit(record)
        started = time.perf_counter()
        self.store.append_turn(commit)
        ops.add("append", time.perf_counter() - started)

        n = self.rng.choice(self.ids)
        cid, tenant = f"scale-{n:07d}", tenant_of(n)
        started = time.perf_counter()
        self.store.get_conversation(cid, tenant=tenant)
        self.store.load_steps(cid, tenant=tenant, newest=20)
        ops.add("resume", time.perf_counter() - started)

        tenant = self.rng.choice(self.listable)
        started = time.perf_counter()
        page = self.store.list_conversations(tenant=tenant, limit=50)
        ops.add("list first page", time.perf_counter() - started)
        assert len(page.items) == 50

        # newest first; the deep page starts after 90 % of the tenant's conversations (after
        # all but 50 of them on the almost empty store)
        newest_first = self.by_tenant[tenant]
        at = min(int(len(newest_first) * 0.9), len(newest_first) - 51)
        record = conversation(newest_first[at])[0]
        cursor = encode_cursor(record.created_at, record.id)
        started = time.perf_counter()
        page = self.store.list_conversations(tenant=tenant, limit=50, cursor=cursor)
        ops.add("list deep page", time.perf_counter() - started)
        assert len(page.items) == 50


def measure_pair(empty_store: Any, full_store: Any, size: int, samples: int) -> tuple[Ops, Ops]:
    """The operations on the almost empty store and on the full one, alternating round by
    round, so that a shared machine's load drifts onto both alike."""
    empty, full = Workload(empty_store, BASE, 1), Workload(full_store, size, 2)
    on_empty, on_full = Ops(), Ops()
    for _ in range(samples):
        empty.round(on_empty)
        full.round(on_full)
    return on_empty, on_full


def _append_loop(url: str, size: int, stop: str, out: str) -> None:
    """Child process: appends to random active conversations until ``stop`` exists."""
    rng = random.Random()
    ids = active_ids(size)
    latencies = []
    with contextlib.closing(cs.open_store(url)) as store:
        Path(out + ".ready").touch()
        while not os.path.exists(stop):
            n = rng.choice(ids)
            cid, tenant = f"scale-{n:07d}", tenant_of(n)
            record = store.get_conversation(cid, tenant=tenant)
            commit = next_commit(record)
            started = time.perf_counter()
            try:
                store.append_turn(commit)
            except cs.ConcurrentTurnError:
                continue
            latencies.append(time.perf_counter() - started)
    Path(out).write_text(json.dumps(latencies))


@contextlib.contextmanager
def appender(url: str, size: int) -> Iterator[Callable[[], list[float]]]:
    """Appends from another process while the block runs; yields the latencies' getter."""
    with tempfile.TemporaryDirectory() as tmp:
        stop, out = os.path.join(tmp, "stop"), os.path.join(tmp, "out.json")
        proc = multiprocessing.get_context("spawn").Process(
            target=_append_loop, args=(url, size, stop, out)
        )
        proc.start()
        while not os.path.exists(out + ".ready"):
            time.sleep(0.01)
        result: list[float] = []
        try:
            yield lambda: result
        finally:
            Path(stop).touch()
            proc.join(timeout=60)
            result.extend(json.loads(Path(out).read_text()) if os.path.exists(out) else [])


def measure_purge(url: str, size: int) -> dict[str, float]:
    with appender(url, size) as before:
        time.sleep(3)
    cutoff = datetime.now(UTC) - timedelta(days=30)
    with appender(url, size) as during, contextlib.closing(cs.open_store(url)) as store:
        started = time.perf_counter()
        purged = store.purge(older_than=cutoff)
        took = time.perf_counter() - started
    return {
        "purged": len(purged),
        "seconds": took,
        "append p99 before (ms)": p(before(), 0.99) * 1000,
        "append p99 during (ms)": p(during(), 0.99) * 1000,
        "appends during": len(during()),
    }


def run_cli(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one ``convostore`` child process, by GNU time (a forked
    child's own rusage would count the parent's pages it held before exec)."""
    with tempfile.NamedTemporaryFile("r") as report:
        started = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, CONVOSTORE, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"convostore {args[0]} exited {done.returncode}")
        peak_kib = int(report.read().split()[-1])
    return took, peak_kib / 1024


def measure_cli(url: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "all.jsonl")
        export_s, export_mb = run_cli("export", "--all", "-o", out, "--store", url)
        verify_s, verify_mb = run_cli("verify", "--all-tenants", "--json", "--store", url)
    return {
        "export s": export_s,
        "export MiB": export_mb,
        "verify s": verify_s,
        "verify MiB": verify_mb,
    }


def explain(url: str) -> list[str]:
    """EXPLAIN of the statements a list (first and deep page) and a resume send."""
    import sqlalchemy as sa

    store = cs.open_store(url)
    seen: list[tuple[str, Any]] = []
    lines: list[str] = []
    try:
        store.list_conversations(tenant="t001")  # connects
        engine = store._engine  # type: ignore[attr-defined]

        @sa.event.listens_for(engine, "before_cursor_execute")
        def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            seen.append((statement, params))

        record_0 = conversation(1001)[0]
        store.list_conversations(tenant="t001", limit=50)
        store.list_conversations(
            tenant="t001", limit=50, cursor=encode_cursor(record_0.created_at, record_0.id)
        )
        store.get_conversation("scale-0000001", tenant="t001")
        store.load_steps("scale-0000001", tenant="t001", newest=20)
        sa.event.remove(engine, "before_cursor_execute", record)
        with engine.connect() as conn:
            for statement, params in seen:
                if not statement.lstrip().upper().startswith("SELECT"):
                    continue
                plan = conn.exec_driver_sql("EXPLAIN " + statement, params).scalars().all()
                lines.append(" ".join(statement.split())[:160])
                lines += [f"    {row}" for row in plan]
    finally:
        store.close()
    return lines


def index_sizes(url: str) -> dict[str, float]:
    """Members and MEMORY USAGE (KiB) of the all-tenants index and of one tenant's."""
    store = cs.open_store(url)
    client, prefix = store._client, store._prefix  # type: ignore[attr-defined]
    try:
        found = {}
        for label, key in (("all", f"{prefix}idx:all"), ("tenant", f"{prefix}idx:t:t001")):
            found[f"{label} members"] = float(client.zcard(key))
            found[f"{label} KiB"] = float(client.memory_usage(key, samples=0) or 0) / 1024
        return found
    finally:
        store.close()


# --------------------------------------------------------------------------- backends


@contextlib.contextmanager
def target(name: str) -> Iterator[tuple[str, str, Callable[[str, int, int], None]]]:
    """(almost empty store URL, full store URL, fill function) on backend ``name``."""
    if name in ("postgresql", "redis"):
        with open_backend(name) as empty, open_backend(name) as full:
            if name == "postgresql":
                yield empty.url, full.url, fill_sql
            else:
                yield (f"{empty.url}?key_prefix={empty.options['key_prefix']}",
                       f"{full.url}?key_prefix={full.options['key_prefix']}", fill_redis)  # fmt: skip  # noqa: E501
    elif name == "cluster":
        if str(SCRIPTS) not in sys.path:
            sys.path.insert(0, str(SCRIPTS))
        launcher = importlib.import_module("redis_cluster")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cluster = launcher.LocalRedisCluster(Path(tmp)).start()
            except FileNotFoundError as exc:
                raise Unavailable(str(exc)) from exc
            try:
                yield (
                    cluster.url + "?key_prefix=empty:",
                    cluster.url + "?key_prefix=full:",
                    fill_redis,
                )
            finally:
                cluster.stop()
    else:
        raise ValueError(f"unknown backend {name!r}")


def run(name: str, size: int, samples: int, *, ops_only: bool = False) -> dict[str, Any]:
    report: dict[str, Any] = {"backend": name, "conversations": size}
    with target(name) as (empty_url, url, fill):
        started = time.perf_counter()
        fill(empty_url, 0, BASE)
        fill(url, 0, size)
        report["fill s"] = time.perf_counter() - started
        with (
            contextlib.closing(cs.open_store(empty_url)) as empty_store,
            contextlib.closing(cs.open_store(url)) as full_store,
        ):
            empty, full = measure_pair(empty_store, full_store, size, samples)
        report["ops"] = {
            op: {
                "empty ms": empty.median(op) * 1000,
                "full ms": full.median(op) * 1000,
                "ratio": full.median(op) / empty.median(op),
                "full p99 ms": p(full.samples[op], 0.99) * 1000,
            }
            for op in empty.samples
        }
        if name == "postgresql":
            report["explain"] = explain(url)
        else:
            report["indexes"] = index_sizes(url)
        if not ops_only:
            report["cli empty"] = measure_cli(empty_url)
            report["cli full"] = measure_cli(url)
            report["purge"] = measure_purge(url, size)
    return report


def show(report: dict[str, Any]) -> None:
    print(f"\n== {report['backend']}: {report['conversations']:,} conversations, "
          f"{report['conversations'] * TURNS * 2:,} steps (fill {report['fill s']:.0f} s)")  # fmt: skip  # noqa: E501
    print(f"{'operation':<18}{'empty ms':>10}{'full ms':>10}{'ratio':>8}{'full p99':>10}")
    for op, row in report["ops"].items():
        verdict = "ok" if row["ratio"] <= 1.3 else "MISS"
        print(f"{op:<18}{row['empty ms']:>10.2f}{row['full ms']:>10.2f}"
              f"{row['ratio']:>7.2f}x{row['full p99 ms']:>10.2f}  {verdict}")  # fmt: skip
    e, f = report.get("cli empty"), report.get("cli full")
    for what in ("export", "verify") if e and f else ():
        print(f"{what} --all: {f[what + ' s']:.1f} s, peak RSS {f[what + ' MiB']:.0f} MiB "
              f"(at {BASE} conversations: {e[what + ' s']:.1f} s, {e[what + ' MiB']:.0f} MiB)")  # fmt: skip  # noqa: E501
    purge = report.get("purge")
    if purge:
        print(f"purge of {purge['purged']:,} idle conversations: {purge['seconds']:.1f} s; "
              f"append p99 {purge['append p99 before (ms)']:.2f} ms before, "
              f"{purge['append p99 during (ms)']:.2f} ms during ({purge['appends during']} appends)")  # fmt: skip  # noqa: E501
    if "indexes" in report:
        ix = report["indexes"]
        print(f"indexes: idx:all {ix['all members']:,.0f} members, {ix['all KiB']:,.0f} KiB; "
              f"one tenant's {ix['tenant members']:,.0f} members, {ix['tenant KiB']:,.0f} KiB")  # fmt: skip  # noqa: E501
    for line in report.get("explain", []):
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--full", action="store_true", help="100,000 conversations")
    parser.add_argument("--conversations", type=int, default=None)
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--only", action="append", choices=["postgresql", "redis", "cluster"])
    parser.add_argument(
        "--ops-only", action="store_true", help="only the operations (no CLI runs, no purge)"
    )
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    size = args.conversations or (100_000 if args.full else 5_000)
    if size < 2 * BASE:
        parser.error(f"--conversations must be at least {2 * BASE}")
    reports = []
    for name in args.only or ["postgresql", "redis", "cluster"]:
        try:
            report = run(name, size, args.samples, ops_only=args.ops_only)
        except Unavailable as exc:
            print(f"\n== {name}: skipped ({exc})")
            continue
        show(report)
        reports.append(report)
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

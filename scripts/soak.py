"""Randomized reliability runs against real stores and the emulator over HTTP.

Two runs, each on SQLite, PostgreSQL, MariaDB and Redis:

- ``concurrency``: N worker processes send M turns each to ONE server-mode conversation with
  ``on_conflict="retry"``. Afterwards exactly N*M turns are stored, no step is lost or
  duplicated, the chain is linear, and the emulator's own stored chain agrees.
- ``kill``: a worker process sending turns (unary and streamed, in random order) is killed
  with SIGKILL at a random moment, R times in a row on one conversation. Afterwards the store
  verifies (contiguous seqs, counts and versions consistent, every turn complete, a linear
  chain, audit hashes) and every turn acknowledged before a kill is stored.

Usage::

    python scripts/soak.py                 # the test suite's size: 4 x 15 turns, 3 kills per store
    python scripts/soak.py --full          # 8 processes x 50 turns, 50 kills per store
    python scripts/soak.py --full --stores sqlite,redis --seed 7

Server URLs come from the same variables as the test suite (``CONVOSTORE_TEST_POSTGRES``,
``CONVOSTORE_TEST_MYSQL``, ``CONVOSTORE_TEST_REDIS``); each run works in a database (or key
prefix) of its own and drops it afterwards. The test suite imports this module for its
sized-down runs (``tests/reliability``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import convostore as cs
from convostore import _migrate, _transfer
from convostore.models import LOST_STATUS

ROOT = Path(__file__).resolve().parent.parent
KEY = "soak-key-0123456789"
TENANT = "soak"
POSTGRES_ADMIN = os.environ.get(
    "CONVOSTORE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN = os.environ.get("CONVOSTORE_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/mysql")
REDIS_URL = os.environ.get("CONVOSTORE_TEST_REDIS", "redis://127.0.0.1:6379/0")
STORES = ("sqlite", "postgresql", "mysql", "redis")


# --------------------------------------------------------------------------- workers


class _ConflictCounter(logging.Handler):
    """Counts the driver's "conflict, re-planning" records (one per retry)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "conflict" in record.getMessage():
            self.count += 1


def _worker_concurrent(
    store_url: str, base_url: str, conv_id: str, turns: int, tag: str, result_path: str
) -> None:
    counter = _ConflictCounter()
    log = logging.getLogger("convostore.conversation")
    log.setLevel(logging.INFO)
    log.addHandler(counter)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=base_url) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        conv = convos.get(conv_id, tenant=TENANT)
        for i in range(turns):
            conv.send(f"{tag} turn {i}", on_conflict="retry", max_conflict_retries=10_000)
    Path(result_path).write_text(json.dumps({"sent": turns, "retries": counter.count}))


def _worker_kill(store_url: str, base_url: str, conv_id: str, seed: int, ack_path: str) -> None:
    rng = random.Random(seed)
    fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=base_url) as client,
        # a short lease: the next worker finishes a killed one's turn instead of waiting
        cs.Conversations(store_url, client, lease=timedelta(seconds=1)) as convos,
    ):
        conv = convos.get(conv_id, tenant=TENANT)
        os.write(fd, b"READY\n")
        for i in itertools.count():
            text = f"run {seed} turn {i}"
            if rng.random() < 0.3:
                with conv.stream(text, in_flight="wait") as events:
                    for _ in events:
                        pass
                turn = events.turn
                assert turn is not None
            else:
                turn = conv.send(text, in_flight="wait")
            # Written only once send/stream returned: the turn is acknowledged. One write()
            # per line on an O_APPEND file, so a kill never leaves half a line.
            os.write(fd, f"ACK {turn.record.seq} {turn.interaction_id}\n".encode())


_CONTEXT: Any = None


def _processes() -> Any:
    """A forkserver context that has imported convostore and the drivers once, so a worker
    starts in milliseconds instead of re-importing everything."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(
            ["convostore", "convostore._sync.conversations", "sqlalchemy", "redis", "httpx"]
        )
    return _CONTEXT


# --------------------------------------------------------------------------- stores


@contextlib.contextmanager
def scratch_store(kind: str) -> Iterator[str]:
    """A migrated, empty store of ``kind`` for one run, dropped afterwards."""
    name = f"convostore_soak_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/soak.db"
        return
    if kind == "redis":
        import redis

        prefix = f"{name}:"
        yield f"{REDIS_URL}?key_prefix={prefix}"
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
        return
    import sqlalchemy as sa

    admin_url = POSTGRES_ADMIN if kind == "postgresql" else MYSQL_ADMIN
    quote = '"' if kind == "postgresql" else "`"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quote}{name}{quote}"))
    url = admin_url.rpartition("/")[0] + f"/{name}"
    if kind == "mysql":
        url += "?charset=utf8mb4"
    try:
        _migrate.upgrade(url)
        yield url
    finally:
        force = " WITH (FORCE)" if kind == "postgresql" else ""
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{force}"))
        admin.dispose()


def check_conversation(store_url: str, conv_id: str) -> tuple[list[str], list[cs.TurnRecord]]:
    """Everything wrong with a stored conversation (empty: all good), and its turns.

    On top of ``convostore verify`` (seqs, counts, linear chain, audit hashes, payloads): the
    version equals the turn count (nothing else changed the record), and every turn is
    complete — a user input step first, then at least one model step.
    """
    with contextlib.closing(cs.open_store(store_url)) as store:
        record = store.get_conversation(conv_id, tenant=TENANT)
        problems = _transfer.verify(store, record)
        turns = store.load_turns(conv_id, tenant=TENANT)
        steps = store.load_steps(conv_id, tenant=TENANT)
    if record.version != record.turn_count:
        problems.append(f"version {record.version} != turn_count {record.turn_count}")
    by_turn: dict[int, list[str]] = {}
    for step in steps:
        by_turn.setdefault(step.turn_seq, []).append(step.type)
    for turn in turns:
        types = by_turn.get(turn.seq, [])
        if turn.status == LOST_STATUS and not types:
            continue  # a killed worker's turn with nothing to adopt: recorded, no steps
        if len(types) < 2 or types[0] != "user_input" or "model_output" not in types[1:]:
            problems.append(f"turn {turn.seq} is incomplete: {types}")
    return problems, turns


# --------------------------------------------------------------------------- runs


@dataclass
class Figures:
    """What a run did and found."""

    store: str
    turns_sent: int = 0
    faults: int = 0
    conflicts: int = 0
    retries: int = 0
    lost: int = 0
    corrupted: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.store:<10} turns={self.turns_sent:<4} faults={self.faults:<3} "
            f"conflicts={self.conflicts:<4} retries={self.retries:<4} lost={self.lost} "
            f"corrupted={self.corrupted}"
        )


def run_concurrency(
    store_url: str, emulator: Any, *, processes: int, turns: int, label: str = ""
) -> Figures:
    """N processes x M turns on one server-mode conversation; checks store and emulator."""
    figures = Figures(store=label or store_url.split(":", 1)[0])
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        conv_id = convos.create(tenant=TENANT, mode="server").id
    with tempfile.TemporaryDirectory() as tmp:
        results = [Path(tmp) / f"p{n}.json" for n in range(processes)]
        workers = [
            _processes().Process(
                target=_worker_concurrent,
                args=(store_url, emulator.url, conv_id, turns, f"p{n}", str(results[n])),
            )
            for n in range(processes)
        ]
        for proc in workers:
            proc.start()
        for proc in workers:
            proc.join(timeout=600)
            if proc.exitcode != 0:
                raise RuntimeError(f"worker failed with exit code {proc.exitcode}")
        for path in results:
            report = json.loads(path.read_text())
            figures.turns_sent += report["sent"]
            figures.retries += report["retries"]
    figures.conflicts = figures.retries
    problems, stored = check_conversation(store_url, conv_id)
    expected = processes * turns
    if len(stored) != expected:
        problems.append(f"{len(stored)} turns stored, {expected} expected")
        figures.lost = max(0, expected - len(stored))
    with contextlib.closing(cs.open_store(store_url)) as store:
        texts = [
            s.payload["content"][0]["text"]
            for s in store.load_steps(conv_id, tenant=TENANT)
            if s.type == "user_input"
        ]
    wanted = sorted(f"p{n} turn {i}" for n in range(processes) for i in range(turns))
    if sorted(texts) != wanted:
        problems.append("user inputs stored differ from those sent (lost or duplicated)")
    problems.extend(_emulator_chain_problems(emulator, stored))
    figures.problems = problems
    figures.corrupted = len(problems) if figures.lost == 0 else 0
    return figures


def _emulator_chain_problems(emulator: Any, turns: list[cs.TurnRecord]) -> list[str]:
    """The emulator's stored interactions must form the same single chain as the turns."""
    problems: list[str] = []
    previous: str | None = None
    for turn in turns:
        iid = turn.interaction_id
        if iid is None or iid not in emulator.interactions:
            problems.append(f"turn {turn.seq}: interaction {iid!r} not stored by the emulator")
            break
        if emulator.interactions[iid]["previous_interaction_id"] != previous:
            problems.append(f"turn {turn.seq}: the emulator chains it from another interaction")
            break
        previous = iid
    return problems


def run_kills(store_url: str, emulator: Any, *, runs: int, seed: int, label: str = "") -> Figures:
    """Kill a sending worker ``runs`` times at seeded random moments; check after each."""
    figures = Figures(store=label or store_url.split(":", 1)[0])
    rng = random.Random(seed)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        conv_id = convos.create(tenant=TENANT, mode=rng.choice(["server", "auto"])).id
    acked: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            ack_path = Path(tmp) / f"run{run}.log"
            ack_path.touch()
            args = (store_url, emulator.url, conv_id, rng.randrange(1 << 30), str(ack_path))
            proc = _processes().Process(target=_worker_kill, args=args)
            proc.start()
            deadline = time.monotonic() + 60
            # kill after a random number of acknowledged turns (0-4), then a random moment
            # into the next one(s): before, during or after its request or its append
            wait_acks = rng.randrange(5)
            while ack_path.read_bytes().count(b"\n") < 1 + wait_acks:
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"kill worker stopped early ({proc.exitcode})")
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=60)
            if proc.exitcode != -signal.SIGKILL:
                raise RuntimeError(f"kill worker ended on its own ({proc.exitcode})")
            for line in ack_path.read_text().splitlines():
                if line.startswith("ACK "):
                    _, seq, iid = line.split()
                    acked[int(seq)] = iid
                    figures.turns_sent += 1
            _check_after_kill(store_url, conv_id, run, acked, figures)
    return figures


def _check_after_kill(
    store_url: str, conv_id: str, run: int, acked: dict[int, str], figures: Figures
) -> None:
    figures.faults += 1
    problems, stored = check_conversation(store_url, conv_id)
    by_seq = {t.seq: t.interaction_id for t in stored}
    lost = [seq for seq, iid in acked.items() if by_seq.get(seq) != iid]
    figures.lost += len(lost)
    figures.corrupted += len(problems)
    figures.problems.extend(f"run {run}: {p}" for p in problems)
    figures.problems.extend(f"run {run}: acknowledged turn {s} missing" for s in lost)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="8 processes x 50 turns, 50 kills")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--turns", type=int, default=None)
    parser.add_argument("--kills", type=int, default=None)
    args = parser.parse_args(argv)
    processes = args.processes or (8 if args.full else 4)
    turns = args.turns or (50 if args.full else 15)
    kills = args.kills or (50 if args.full else 3)
    from convostore.emulator import Emulator

    # a killed worker's half-sent request is expected here, not worth a traceback
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    failed = False
    with Emulator() as emulator:
        for kind in args.stores.split(","):
            with scratch_store(kind) as url:
                started = time.monotonic()
                figures = run_concurrency(url, emulator, processes=processes, turns=turns)
                figures.store = kind
                print(f"concurrency {processes}x{turns}: {figures.line()}", end="")
                print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
            with scratch_store(kind) as url:
                started = time.monotonic()
                figures_k = run_kills(url, emulator, runs=kills, seed=args.seed)
                figures_k.store = kind
                print(f"kill x{kills}:       {figures_k.line()}", end="")
                print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
            for problem in figures.problems + figures_k.problems:
                failed = True
                print(f"  PROBLEM {kind}: {problem}", flush=True)
    print("FAILED" if failed else "OK: nothing lost, nothing corrupted")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

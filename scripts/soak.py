"""Randomized reliability runs against real stores and the emulator over HTTP.

Three runs (``--runs`` picks some), each on SQLite, PostgreSQL, MariaDB and Redis:

- ``concurrency``: N worker processes send M turns each to ONE server-mode conversation with
  ``on_conflict="retry"``. Afterwards exactly N*M turns are stored, no step is lost or
  duplicated, the chain is linear, and the emulator's own stored chain agrees. A turn begins
  only when none is in flight, so a worker that finds one waits (``conflicts`` counts those
  refused begins) and no request is wasted.
- ``kill``: a worker process sending turns (unary and streamed, in random order) is killed
  with SIGKILL at a random moment, R times in a row on one conversation. Afterwards the store
  verifies (contiguous seqs, counts and versions consistent, every turn complete, a linear
  chain, audit hashes) and every turn acknowledged before a kill is stored.
- ``durable``: K workers, one conversation each, are killed with SIGKILL at a chosen point of
  a turn's lifecycle (before the request, in flight, after the answer, before / in / after the
  commit, mid-stream, after a background turn was handed back), through ``send``, ``stream``
  and ``send(background=True)``; a few instead stall there and come back late. Then the
  turns are recovered (``recover()`` twice, racing the late originals, and the next ``send``
  of some conversations). Afterwards: no acknowledged turn lost, no input stored twice, every
  answer whose id was recorded adopted, and every interaction the emulator created accounted
  for (committed, deleted, or created for a request whose worker died before it learnt the id).

Usage::

    python scripts/soak.py                 # the test suite's size: 4 x 15 turns, 3 kills,
                                           # 23 durable kills per store
    python scripts/soak.py --full          # 8 processes x 50 turns, 50 kills, 120 durable kills
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
import threading
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
RUNS = ("concurrency", "kill", "durable")


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
    refused = [0]
    with (
        cs.InteractionsClient(api_key=KEY, base_url=base_url) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        store: Any = convos.store
        real_begin = store.begin_turn

        def begin_turn(pending: Any) -> None:
            try:
                real_begin(pending)
            except cs.ConcurrentTurnError:  # another turn in flight, or one just committed
                refused[0] += 1
                raise

        store.begin_turn = begin_turn
        conv = convos.get(conv_id, tenant=TENANT)
        for i in range(turns):
            conv.send(f"{tag} turn {i}", on_conflict="retry", max_conflict_retries=10_000)
    Path(result_path).write_text(
        json.dumps({"sent": turns, "retries": counter.count, "refused": refused[0]})
    )


KILL_LEASE = 0.5
"""The kill run's lease (seconds): the next worker waits this long for the turn its killed
predecessor left in flight, then finishes it (adopted, or recorded lost) before its own."""


def _worker_kill(store_url: str, base_url: str, conv_id: str, seed: int, ack_path: str) -> None:

    rng = random.Random(seed)
    fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=base_url) as client,
        cs.Conversations(
            store_url, client, lease=timedelta(seconds=KILL_LEASE), poll_interval=0.02
        ) as convos,
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
            [
                "convostore",
                "convostore._sync.conversations",
                "convostore._sync.sql_store",
                "convostore._sync.redis_store",
                "convostore._migrate",
                "alembic.runtime.migration",
                "alembic.operations",
                "sqlalchemy",
                "redis",
                "httpx",
                "psycopg",
                "pymysql",
            ]
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
    complete — a user input step first, then at least one model step — but a turn recorded
    ``lost`` (a killed worker's turn with nothing to adopt), which has no steps.
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
        if turn.status == LOST_STATUS:
            if turn.seq in by_turn:
                problems.append(f"turn {turn.seq} is recorded lost but has steps")
            continue
        types = by_turn.get(turn.seq, [])
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
        try:
            for proc in workers:
                proc.join(timeout=600)
                if proc.exitcode != 0:
                    raise RuntimeError(f"worker failed with exit code {proc.exitcode}")
        finally:
            for proc in workers:  # none outlives the run (its requests would land elsewhere)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=60)
        for path in results:
            report = json.loads(path.read_text())
            figures.turns_sent += report["sent"]
            figures.retries += report["retries"]
            figures.conflicts += report["refused"]
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


# --------------------------------------------------------------------------- durable turns

POINTS: dict[str, tuple[str, ...]] = {
    # where a worker can be killed, for each way of sending a turn
    "send": (
        "before_post",  # the pending record is written, the request not yet sent
        "in_flight",  # the request is at the server (held there by a delay)
        "mid_answer",  # the server named the answer (its id recorded), the rest still arriving
        "before_commit",  # the whole answer received, the commit not started
        "in_commit",  # at a random moment inside append_turn
        "after_commit",  # committed, the caller not yet told
    ),
    "stream": (
        "before_post",
        "in_flight",
        "mid_stream",  # some events received (the interaction's id is recorded at the first)
        "before_commit",
        "in_commit",
        "after_commit",
    ),
    "background": (
        "before_post",
        "in_flight",
        "after_response",
        "after_ack",  # send() handed the running turn back; nobody waits for it
        "before_commit",  # wait() saw the answer finished
        "in_commit",
    ),
}
STALLS: tuple[tuple[str, str], ...] = (
    ("send", "before_post"),
    ("send", "before_commit"),
    ("stream", "mid_stream"),
    ("background", "after_ack"),
    ("background", "before_commit"),
)
"""Plans whose worker stalls at the point instead of dying, and comes back once its turn was
taken over (a late original racing a recoverer)."""
IN_FLIGHT_DELAY = 0.5
PARALLEL = 4
DURABLE_LEASE = 1.0


def _wait_for_file(path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.002)


def _worker_durable(
    store_url: str, base_url: str, conv_id: str, plan: dict[str, Any], log_path: str
) -> None:
    """Send turns until the armed one, and die (SIGKILL, by its own hand, at an exact point)
    or stall there. Everything it learns is logged, one ``write()`` per line: ``BEGIN seq
    key``, ``ANSWER id`` (a create returned), ``RECORDED id`` (``update_pending`` wrote it),
    ``ACK seq id key`` (send returned the turn), ``ACKP seq id key`` (a background turn
    handed back running)."""

    import httpx

    rng = random.Random(plan["seed"])
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    point, stall, how = plan["point"], plan["stall"], plan["how"]
    state: dict[str, Any] = {"armed": False, "appends": [0.002]}

    def log(*parts: object) -> None:
        os.write(fd, (" ".join(str(p) for p in parts) + "\n").encode())

    def hit(where: str) -> None:
        if state["armed"] and point == where:
            if stall:
                log("STALLED", where)
                _wait_for_file(log_path + ".resume")
                log("RESUMED")
                state["armed"] = False
            else:
                log("KILL", where)
                os.kill(os.getpid(), signal.SIGKILL)

    # plain HTTP to the emulator: no CA bundle to load (a third of a worker's start-up)
    http = httpx.Client(verify=False, trust_env=False, timeout=60)
    with (
        http,
        cs.InteractionsClient(
            api_key=KEY, base_url=base_url, max_retries=0, http_client=http
        ) as client,
        cs.Conversations(
            store_url,
            client,
            lease=timedelta(seconds=plan["lease"]),
            poll_interval=0.02,
        ) as convos,
    ):
        store: Any = convos.store
        api: Any = client
        real_begin, real_update = store.begin_turn, store.update_pending
        real_append, real_create = store.append_turn, api._create_checked

        def begin_turn(pending: Any) -> None:
            real_begin(pending)
            log("BEGIN", pending.seq, pending.idempotency_key)
            if state["armed"] and point == "in_flight":
                log("WAIT")  # the parent slows the server down, then lets the request go
                _wait_for_file(log_path + ".go")
                log("POST")
                # the parent kills at a random moment of the server's delay; should it be
                # late (a loaded machine), this one lands before the delay is over
                watchdog = threading.Timer(
                    plan["in_flight_delay"] * 0.9, os.kill, (os.getpid(), signal.SIGKILL)
                )
                watchdog.daemon = True
                watchdog.start()
            hit("before_post")

        def create_checked(body: Any) -> Any:
            interaction = real_create(body)
            log("ANSWER", interaction.id)
            hit("after_response")
            return interaction

        def update_pending(pending: Any, *, owner: str) -> None:
            real_update(pending, owner=owner)
            if pending.interaction_id:
                log("RECORDED", pending.interaction_id)
                hit("mid_answer")

        def append_turn(commit: Any) -> Any:
            hit("before_commit")
            timer = None
            if state["armed"] and point == "in_commit":
                typical = sorted(state["appends"])[len(state["appends"]) // 2]
                timer = threading.Timer(
                    rng.uniform(0.0, 1.5 * typical), os.kill, (os.getpid(), signal.SIGKILL)
                )
                log("KILL", "in_commit")
                timer.start()
            started = time.perf_counter()
            result = real_append(commit)
            state["appends"].append(time.perf_counter() - started)
            if timer is not None:
                timer.join()
                time.sleep(5)  # the timer's SIGKILL lands at once
            hit("after_commit")
            return result

        store.begin_turn, store.update_pending = begin_turn, update_pending
        store.append_turn, api._create_checked = append_turn, create_checked
        conv = convos.get(conv_id, tenant=plan["tenant"])
        log("READY")
        for j in itertools.count():
            text = f"{plan['tag']} t{j}"
            armed = state["armed"] = j == plan["warm"]
            way = how if armed else rng.choice(["send", "send", "stream", "background"])
            try:
                if way == "send":
                    turn = conv.send(text)
                elif way == "stream":
                    stop = rng.randrange(1, 4)
                    with conv.stream(text) as events:
                        for k, _ in enumerate(events):
                            if k + 1 == stop:
                                hit("mid_stream")
                    assert events.turn is not None
                    turn = events.turn
                else:
                    handle = conv.send(text, background=True)
                    if isinstance(handle, cs.PendingTurn):
                        record = handle.record
                        log("ACKP", record.seq, record.interaction_id, record.idempotency_key)
                        hit("after_ack")
                        turn = handle.wait(timeout=60)
                    else:
                        turn = handle
            except cs.ConvostoreError as exc:
                if not stall:
                    raise
                log("RAISED", type(exc).__name__)
                return
            log("ACK", turn.seq, turn.interaction_id, turn.record.idempotency_key)
            if armed:
                if not stall:
                    log("MISSED", point)  # the plan's point was never reached: a harness bug
                    os._exit(3)
                return


@dataclass
class DurableFigures:
    """What a durable-turns kill run did and found."""

    store: str
    kills: int = 0
    late: int = 0
    acked: int = 0
    acked_lost: int = 0
    duplicated: int = 0
    adopted: int = 0
    lost_turns: int = 0
    taken_over_by_send: int = 0
    recorded_not_adopted: int = 0
    created: int = 0
    committed: int = 0
    deleted: int = 0
    never_reached_worker: int = 0
    reached_worker_unrecorded: int = 0
    late_original_orphans: int = 0
    unaccounted: int = 0
    late_outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    by_point: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.store:<10} kills={self.kills} late={self.late} acked={self.acked} "
            f"acked_lost={self.acked_lost} duplicated={self.duplicated} "
            f"adopted={self.adopted} lost={self.lost_turns} "
            f"by_send={self.taken_over_by_send} recorded_not_adopted={self.recorded_not_adopted}"
            f" | server: created={self.created} committed={self.committed} "
            f"deleted={self.deleted} id_never_reached_worker={self.never_reached_worker} "
            f"id_reached_worker_unrecorded={self.reached_worker_unrecorded} "
            f"late_original_orphans={self.late_original_orphans} "
            f"unaccounted={self.unaccounted} | late originals: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.late_outcomes.items())) or "none")
        )


def durable_plans(kills: int, seed: int) -> list[dict[str, Any]]:
    """``kills`` plans covering every (way, point) in turn, plus the stalls (late originals)
    when there is room, in a seeded order."""
    rng = random.Random(seed)
    combos = [(how, point, False) for how, points in POINTS.items() for point in points]
    # the late originals: each stall once from one full round of the combos on, more in
    # longer runs (one in every ~8 plans)
    stalls = [(how, point, True) for how, point in STALLS]
    chosen: list[tuple[str, str, bool]] = []
    if kills >= len(combos) + len(stalls):
        chosen += stalls * max(1, kills // (8 * len(stalls)))
    while len(chosen) < kills:
        chosen += rng.sample(combos, min(len(combos), kills - len(chosen)))
    rng.shuffle(chosen)
    return [
        {
            "how": how,
            "point": point,
            "stall": stall,
            "warm": rng.randrange(3),
            "seed": rng.randrange(1 << 30),
            "lease": DURABLE_LEASE,
            "in_flight_delay": IN_FLIGHT_DELAY,
        }
        for how, point, stall in chosen
    ]


def _last_text(steps: Any, tag: str) -> str | None:
    """The tagged user text of a request's or an interaction's input steps."""
    if not isinstance(steps, list):
        return None
    for step in reversed(steps):
        if isinstance(step, dict) and step.get("type") == "user_input":
            for part in step.get("content") or ():
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str) and text.startswith(tag):
                    return text
    return None


@dataclass
class _Run:
    conv_id: str
    plan: dict[str, Any]
    log: Path
    proc: Any = None
    lines: list[list[str]] = field(default_factory=list)

    def read(self) -> None:
        self.lines = [line.split() for line in self.log.read_text().splitlines() if line]

    def values(self, kind: str) -> list[list[str]]:
        return [line[1:] for line in self.lines if line[0] == kind]


def run_durable_kills(
    store_url: str, emulator: Any, *, kills: int, seed: int, label: str = ""
) -> DurableFigures:
    """``kills`` workers, one conversation each, killed (or stalled) at planned points of a
    turn's lifecycle; then recovery, and every check (see the module's docstring)."""
    started = time.monotonic()
    figures = DurableFigures(store=label or store_url.split(":", 1)[0])
    rng = random.Random(seed)
    tag = f"d{uuid.uuid4().hex[:8]}"
    tenant = f"dk{uuid.uuid4().hex[:10]}"
    emulator.background_seconds = 0.05
    requests_before = len(emulator.requests)
    plans = durable_plans(kills, seed)
    runs: list[_Run] = []
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        for n, plan in enumerate(plans):
            conv = convos.create(tenant=tenant, mode=rng.choice(["server", "auto"]))
            plan.update(tenant=tenant, tag=f"{tag} c{n}")
            runs.append(_Run(conv.id, plan, Path(tempfile.mkdtemp()) / f"w{n}.log"))
    for run in runs:
        run.log.touch()
        run.proc = _processes().Process(
            target=_worker_durable,
            args=(store_url, emulator.url, run.conv_id, run.plan, str(run.log)),
        )
    # in-flight kills one at a time (the emulator's delay catches the next request), the
    # others a few at a time
    flights = [run for run in runs if run.plan["point"] == "in_flight"]
    others = [run for run in runs if run.plan["point"] != "in_flight"]
    for run in flights:
        run.proc.start()
        deadline = time.monotonic() + 60
        while b"WAIT" not in run.log.read_bytes():
            _check_alive(run, deadline)
        text = f"{run.plan['tag']} t{run.plan['warm']}"
        seen = len(emulator.requests)
        emulator.delay(IN_FLIGHT_DELAY, times=1)
        (Path(str(run.log) + ".go")).touch()
        while not any(
            r.method == "POST" and _last_text(r.body.get("input"), text) == text
            for r in emulator.requests[seen:]
            if isinstance(r.body, dict)
        ):
            if not run.proc.is_alive() and b"POST" in run.log.read_bytes():
                break  # its watchdog killed it before this loop saw the request
            _check_alive(run, deadline)
        time.sleep(rng.uniform(0.0, IN_FLIGHT_DELAY * 0.6))
        with contextlib.suppress(ProcessLookupError):  # its own watchdog was first
            os.kill(run.proc.pid, signal.SIGKILL)
        _join_killed(run, figures)
    for start in range(0, len(others), PARALLEL):
        batch = others[start : start + PARALLEL]
        for run in batch:
            run.proc.start()
        for run in batch:
            if run.plan["stall"]:
                deadline = time.monotonic() + 60
                while b"STALLED" not in run.log.read_bytes():
                    _check_alive(run, deadline)
                figures.late += 1
            else:
                _join_killed(run, figures)
    # every lease runs out, and every request held at the server is answered
    time.sleep(max(DURABLE_LEASE, IN_FLIGHT_DELAY) + 0.2)
    _recover_all(store_url, emulator, runs, tenant, rng, figures)
    for run in runs:
        run.read()
    _check_durable(store_url, emulator, runs, tenant, tag, requests_before, figures)
    figures.seconds = time.monotonic() - started
    return figures


def _join_killed(run: _Run, figures: DurableFigures) -> None:
    run.proc.join(timeout=60)
    if run.proc.exitcode != -signal.SIGKILL:
        run.read()
        raise RuntimeError(f"durable worker ended with {run.proc.exitcode}: {run.lines}")
    figures.kills += 1
    key = f"{run.plan['how']}/{run.plan['point']}"
    figures.by_point[key] = figures.by_point.get(key, 0) + 1


def _check_alive(run: _Run, deadline: float) -> None:
    if not run.proc.is_alive() or time.monotonic() > deadline:
        run.read()
        raise RuntimeError(f"durable worker stopped early ({run.proc.exitcode}): {run.lines}")
    time.sleep(0.002)


def _recover_all(
    store_url: str,
    emulator: Any,
    runs: list[_Run],
    tenant: str,
    rng: random.Random,
    figures: DurableFigures,
) -> None:
    """The next send of some conversations, then ``recover()``, then the late originals come
    back while a second recoverer runs, then ``recover()`` until nothing is left running."""

    short = timedelta(seconds=5)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as client,
        cs.Conversations(store_url, client, lease=short, poll_interval=0.02) as first,
        cs.Conversations(store_url, client, lease=short, poll_interval=0.02) as second,
    ):
        killed = [run for run in runs if not run.plan["stall"]]
        for run in rng.sample(killed, len(killed) // 4):
            # the next send finishes the dead worker's turn first
            conv = first.get(run.conv_id, tenant=tenant)
            before = conv.refresh().turn_count + (conv.pending() is not None)
            turn = conv.send(f"{run.plan['tag']} next")
            with run.log.open("a") as out:
                out.write(f"ACK {turn.seq} {turn.interaction_id} {turn.record.idempotency_key}\n")
            figures.taken_over_by_send += 1
            if turn.seq != before + 1:
                figures.problems.append(
                    f"{run.conv_id}: the next send did not finish the dead turn"
                )
        reports = [first.recover(tenant=tenant)]
        for run in runs:
            if run.plan["stall"]:
                Path(str(run.log) + ".resume").touch()
        reports.append(second.recover(tenant=tenant))  # racing the late originals
        for run in runs:
            if run.plan["stall"]:
                run.proc.join(timeout=60)
                if run.proc.exitcode != 0:
                    figures.problems.append(f"late original exited {run.proc.exitcode}")
        for _ in range(50):  # until a pass finds nothing left to do
            last = first.recover(tenant=tenant)
            reports.append(last)
            if not (last.adopted or last.lost or last.failed or last.running or last.busy):
                break
            time.sleep(0.1)
        figures.adopted = sum(len(r.adopted) for r in reports)
        if reports[-1].running or reports[-1].busy:
            figures.problems.append(f"turns still running after recovery: {reports[-1]}")
        if first.store.list_pending(tenant=tenant):
            figures.problems.append("turns still pending after recovery")


def _check_durable(
    store_url: str,
    emulator: Any,
    runs: list[_Run],
    tenant: str,
    tag: str,
    requests_before: int,
    figures: DurableFigures,
) -> None:
    problems = figures.problems
    committed: set[str] = set()
    keys: list[str] = []
    with contextlib.closing(cs.open_store(store_url)) as store:
        for run in runs:
            record = store.get_conversation(run.conv_id, tenant=tenant)
            problems.extend(f"{run.conv_id}: {p}" for p in _transfer.verify(store, record))
            turns = store.load_turns(run.conv_id, tenant=tenant)
            steps = store.load_steps(run.conv_id, tenant=tenant)
            texts = [s.payload["content"][0]["text"] for s in steps if s.type == "user_input"]
            figures.duplicated += len(texts) - len(set(texts))
            keys.extend(t.idempotency_key or "" for t in turns)
            by_seq = {t.seq: t for t in turns}
            for t in turns:
                if t.status == LOST_STATUS:
                    figures.lost_turns += 1
                elif t.interaction_id:
                    committed.add(t.interaction_id)
            for seq, iid, key in run.values("ACK"):
                figures.acked += 1
                stored = by_seq.get(int(seq))
                if stored is None or stored.interaction_id != iid or stored.idempotency_key != key:
                    figures.acked_lost += 1
                    problems.append(f"{run.conv_id}: acknowledged turn {seq} ({iid}) not stored")
            for seq, iid, key in run.values("ACKP"):
                stored = by_seq.get(int(seq))
                if stored is None or stored.idempotency_key != key or stored.interaction_id != iid:
                    figures.acked_lost += 1
                    problems.append(f"{run.conv_id}: background turn {seq} ({iid}) not adopted")
    figures.duplicated += len(keys) - len(set(keys))
    recorded = {iid for run in runs for (iid,) in run.values("RECORDED")}
    answered = {iid for run in runs for (iid,) in run.values("ANSWER")}
    # what a late original learnt after it came back (its turn taken over meanwhile)
    late_answers: set[str] = set()
    for run in runs:
        if run.plan["stall"]:
            outcome = "acked" if run.values("RESUMED") and run.lines[-1][0] == "ACK" else ""
            raised = run.values("RAISED")
            outcome = f"raised {raised[0][0]}" if raised else outcome or "other"
            figures.late_outcomes[outcome] = figures.late_outcomes.get(outcome, 0) + 1
            after = run.lines[[line[0] for line in run.lines].index("RESUMED") :]
            late_answers.update(line[1] for line in after if line[0] == "ANSWER")
    for iid in sorted(recorded - committed):
        if iid in emulator.interactions:
            figures.recorded_not_adopted += 1
            problems.append(f"answer {iid} was recorded, is kept by the server, not adopted")
    # the server's side: every create either became a held interaction or was deleted
    requests = emulator.requests[requests_before:]
    created = [
        r
        for r in requests
        if r.method == "POST"
        and r.path.endswith("/interactions")
        and isinstance(r.body, dict)
        and r.body.get("store", True) is not False
        and _last_text(r.body.get("input"), tag)
    ]
    held = {
        iid: view
        for iid, view in emulator.interactions.items()
        if _last_text(view["input_steps"], tag)
    }
    deleted = {r.path.rsplit("/", 1)[1] for r in requests if r.method == "DELETE"} - set(held)
    figures.created = len(created)
    figures.deleted = len(deleted)
    for iid in held:
        if iid in committed:
            figures.committed += 1
        elif iid in recorded:
            pass  # counted above as a problem
        elif iid in late_answers:
            figures.late_original_orphans += 1
        elif iid in answered:
            figures.reached_worker_unrecorded += 1
        else:
            figures.never_reached_worker += 1
    if figures.created != len(held) + figures.deleted:
        figures.unaccounted = figures.created - len(held) - figures.deleted
        problems.append(
            f"{figures.created} interactions created, {len(held)} held + {figures.deleted} deleted"
        )
    missing = committed - set(held)
    if missing:
        problems.append(f"committed interactions the server no longer holds: {sorted(missing)}")


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full", action="store_true", help="8 processes x 50 turns, 50 kills, 120 durable kills"
    )
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated subset")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--turns", type=int, default=None)
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--durable-kills", type=int, default=None)
    args = parser.parse_args(argv)
    processes = args.processes or (8 if args.full else 4)
    turns = args.turns or (50 if args.full else 15)
    kills = args.kills or (50 if args.full else 3)
    durable_kills = args.durable_kills or (120 if args.full else 23)
    runs = args.runs.split(",")
    from convostore.emulator import Emulator

    # a killed worker's half-sent request is expected here, not worth a traceback
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    problems: list[str] = []
    with Emulator() as emulator:
        for kind in args.stores.split(","):
            if "concurrency" in runs:
                with scratch_store(kind) as url:
                    started = time.monotonic()
                    figures = run_concurrency(url, emulator, processes=processes, turns=turns)
                    figures.store = kind
                    print(f"concurrency {processes}x{turns}: {figures.line()}", end="")
                    print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
                    problems.extend(f"{kind} concurrency: {p}" for p in figures.problems)
            if "kill" in runs:
                with scratch_store(kind) as url:
                    started = time.monotonic()
                    figures = run_kills(url, emulator, runs=kills, seed=args.seed)
                    figures.store = kind
                    print(f"kill x{kills}:       {figures.line()}", end="")
                    print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
                    problems.extend(f"{kind} kill: {p}" for p in figures.problems)
            if "durable" in runs:
                with scratch_store(kind) as url:
                    durable = run_durable_kills(
                        url, emulator, kills=durable_kills, seed=args.seed, label=kind
                    )
                    print(f"durable x{durable_kills}: {durable.line()}", end="")
                    print(f"  ({durable.seconds:.1f} s)", flush=True)
                    problems.extend(f"{kind} durable: {p}" for p in durable.problems)
    for problem in problems:
        print(f"  PROBLEM {problem}", flush=True)
    print("FAILED" if problems else "OK: nothing lost, nothing duplicated, nothing corrupted")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

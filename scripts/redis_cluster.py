"""A private Redis Cluster on loopback: 3 masters + 3 replicas from ``redis-server``.

Used by the test suite (tests/test_redis_cluster.py) and by ``benchmarks/scale.py``; run it
alone to get a cluster to try things on (Ctrl-C stops it)::

    python scripts/redis_cluster.py              # prints the redis+cluster:// URL
    python scripts/redis_cluster.py --failover   # the failover run below, printed

``run_failover`` is the cluster's crash test: N processes send turns (each to a conversation
of its own, spread over the masters) while a master is killed with SIGKILL, its replica takes
over, and the killed node is restarted (it rejoins as a replica). Every conversation must then
pass ``convostore verify`` with every turn complete (no half turns) and hold each sent input at
most once (no duplicates); acknowledged turns that an asynchronous replica had not received
when its master died are counted as lost (see the README's durability table).

Each node runs in a directory of its own under a temporary directory, on a free port whose
cluster bus port (port + 10000) is free too; no persistence (``--save ""``, no AOF), so a
restarted node comes back empty and re-syncs from its master.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_ports(count: int) -> list[int]:
    """``count`` ports, each free with its cluster bus port (+10000) free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 30000)
        if port not in ports and _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


def command(port: int, *args: str) -> str:
    """A redis-cli command against one node; its output ("" if the node does not answer)."""
    assert REDIS_CLI is not None
    done = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout


class LocalRedisCluster:
    """``masters`` masters with ``replicas`` replicas each, on loopback."""

    def __init__(self, directory: Path, *, masters: int = 3, replicas: int = 1) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise FileNotFoundError("redis-server and redis-cli are needed for a local cluster")
        self.directory = directory
        self.masters, self.replicas = masters, replicas
        self.ports = free_cluster_ports(masters * (1 + replicas))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    def start_node(self, port: int) -> None:
        assert REDIS_SERVER is not None
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", str(node_dir),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
                "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0",
                "--appendonly", "no",
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while command(port, "ping").strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.02)

    def start(self) -> LocalRedisCluster:
        assert REDIS_CLI is not None
        for port in self.ports:
            self.start_node(port)
        done = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node reports ``cluster_state:ok``, the expected masters serve
        the slots, and every replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while True:
            states = [command(p, "cluster", "info") for p in self.running()]
            roles = [command(p, "info", "replication") for p in self.running()]
            synced = all(
                "role:master" in r or "master_link_status:up" in r for r in roles
            ) and not any("master_sync_in_progress:1" in r for r in roles)
            if (
                all("cluster_state:ok" in s for s in states)
                and synced
                and len(self.master_ports()) == self.masters
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def running(self) -> list[int]:
        return [p for p, proc in self.processes.items() if proc.poll() is None]

    def master_ports(self) -> list[int]:
        """The ports of the running masters that serve slots, as the first node sees them."""
        found = []
        for port in self.running():
            for line in command(port, "cluster", "nodes").splitlines():
                fields = line.split()
                if len(fields) > 8 and "myself" in fields[2] and "master" in fields[2]:
                    found.append(port)
        return found

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown, no save)."""
        proc = self.processes[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for port in list(self.processes):
            proc = self.processes[port]
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- failover run

KEY = "failover-key-0123456789"
TENANT = "failover"


def _sender(store_url: str, base_url: str, conv_id: str, tag: str, log: str, stop: str) -> None:
    """Send turns until the ``stop`` file exists; one ACK line per acknowledged turn. A send
    that fails (the cluster is failing over) is retried with the same idempotency key, so a
    turn whose outcome was unknown is stored once."""
    import convostore as cs

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=base_url) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        conv = convos.get(conv_id, tenant=TENANT)
        i = 0
        while not os.path.exists(stop):
            text = f"{tag} turn {i}"
            try:
                turn = conv.send(
                    text,
                    idempotency_key=f"{tag}-{i}",
                    on_conflict="retry",
                    max_conflict_retries=100,
                )
            except cs.StoreError as exc:
                os.write(fd, f"FAIL {type(exc).__name__}\n".encode())
                time.sleep(0.05)
                continue
            line = {"seq": turn.record.seq, "iid": turn.interaction_id, "text": text}
            os.write(fd, (json.dumps(line) + "\n").encode())
            i += 1


@dataclass
class FailoverFigures:
    acknowledged: int = 0
    refused: int = 0
    lost: int = 0
    stored: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.acknowledged} turns acknowledged, {self.refused} sends refused during the "
            f"failover, {self.lost} acknowledged turns lost, {self.stored} stored, "
            f"{len(self.problems)} problems"
        )


def _acks(path: Path) -> tuple[list[dict[str, Any]], int]:
    acks, refused = [], 0
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("FAIL"):
            refused += 1
        elif line:
            acks.append(json.loads(line))
    return acks, refused


def _wait_acks(logs: list[Path], more: int, timeout: float = 60.0) -> None:
    target = sum(len(_acks(p)[0]) for p in logs) + more
    deadline = time.monotonic() + timeout
    while sum(len(_acks(p)[0]) for p in logs) < target:
        if time.monotonic() > deadline:
            raise RuntimeError("the senders stopped making progress")
        time.sleep(0.05)


def run_failover(
    cluster: LocalRedisCluster, store_url: str, emulator: Any, *, processes: int = 8
) -> FailoverFigures:
    """Kill a master while ``processes`` processes send; restart it; check every turn."""
    import convostore as cs
    from convostore import _transfer

    context = multiprocessing.get_context("spawn")
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        ids = [convos.create(tenant=TENANT, mode="server").id for _ in range(processes)]
    figures = FailoverFigures()
    with tempfile.TemporaryDirectory() as tmp:
        stop = Path(tmp) / "stop"
        logs = [Path(tmp) / f"p{n}.log" for n in range(processes)]
        workers = [
            context.Process(
                target=_sender,
                args=(store_url, emulator.url, ids[n], f"p{n}", str(logs[n]), str(stop)),
            )
            for n in range(processes)
        ]
        for proc in workers:
            proc.start()
        try:
            _wait_acks(logs, 5 * processes)
            victim = cluster.master_ports()[0]
            cluster.kill(victim)
            cluster.wait_ok()  # a replica took over the victim's slots
            _wait_acks(logs, 5 * processes)
            cluster.start_node(victim)  # restarted, it rejoins as a replica
            cluster.wait_ok()
            _wait_acks(logs, 5 * processes)
        finally:
            stop.touch()
            for proc in workers:
                proc.join(timeout=120)
                if proc.is_alive():
                    proc.kill()
        if any(proc.exitcode != 0 for proc in workers):
            figures.problems.append(f"sender exit codes {[p.exitcode for p in workers]}")
        with contextlib.closing(cs.open_store(store_url)) as store:
            for conv_id, log in zip(ids, logs, strict=True):
                acks, refused = _acks(log)
                figures.acknowledged += len(acks)
                figures.refused += refused
                figures.problems += _check(store, conv_id, acks, figures, _transfer)
    return figures


def _check(store: Any, conv_id: str, acks: list[dict[str, Any]], figures: Any, transfer: Any
) -> list[str]:  # fmt: skip
    record = store.get_conversation(conv_id, tenant=TENANT)
    problems = [f"{conv_id}: {p}" for p in transfer.verify(store, record)]
    turns = {t.seq: t.interaction_id for t in store.load_turns(conv_id, tenant=TENANT)}
    steps = store.load_steps(conv_id, tenant=TENANT)
    figures.stored += len(turns)
    by_turn: dict[int, list[str]] = {}
    for step in steps:
        by_turn.setdefault(step.turn_seq, []).append(step.type)
    for seq in turns:
        types = by_turn.get(seq, [])
        if len(types) < 2 or types[0] != "user_input" or "model_output" not in types[1:]:
            problems.append(f"{conv_id}: turn {seq} is incomplete: {types}")
    texts = [s.payload["content"][0]["text"] for s in steps if s.type == "user_input"]
    if len(texts) != len(set(texts)):
        problems.append(f"{conv_id}: an input is stored twice")
    stored_texts = set(texts)
    for ack in acks:
        if turns.get(ack["seq"]) != ack["iid"] or ack["text"] not in stored_texts:
            figures.lost += 1
    return problems


def main() -> int:
    failover = "--failover" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="convostore-cluster-") as tmp:
        cluster = LocalRedisCluster(Path(tmp)).start()
        print(cluster.url, flush=True)
        try:
            if failover:
                from convostore.emulator import Emulator

                with Emulator() as emulator:
                    print(run_failover(cluster, cluster.url, emulator).line())
            else:
                signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

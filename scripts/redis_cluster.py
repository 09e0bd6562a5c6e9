"""A private Redis Cluster on loopback: 3 masters + 3 replicas from ``redis-server``.

Used by the test suite (tests/test_redis_cluster.py) and by ``benchmarks/scale.py``; run it
alone to get a cluster to try things on (Ctrl-C stops it)::

    python scripts/redis_cluster.py          # prints the redis+cluster:// URL

Each node runs in a directory of its own under a temporary directory, on a free port whose
cluster bus port (port + 10000) is free too; no persistence (``--save ""``, no AOF), so a
restarted node comes back empty and re-syncs from its master.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
            + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node reports ``cluster_state:ok`` and the expected masters."""
        deadline = time.monotonic() + timeout
        while True:
            states = [command(p, "cluster", "info") for p in self.running()]
            if all("cluster_state:ok" in s for s in states) and len(self.master_ports()) == (
                self.masters
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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="convostore-cluster-") as tmp:
        cluster = LocalRedisCluster(Path(tmp)).start()
        print(cluster.url, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

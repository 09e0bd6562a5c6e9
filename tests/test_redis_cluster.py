"""The Redis store on a real Redis Cluster: 3 masters + 3 replicas started from ``redis-server``
on free loopback ports for this session (scripts/redis_cluster.py).

The whole store conformance suite and the racing-writers test run on it; the last test kills
a master while 8 processes send, and restarts it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import convostore as cs
from convostore.testing import AsyncStoreConformance, StoreConformance, add_turn, make_record

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str) -> ModuleType:
    """A module of scripts/, imported by name so that its worker processes can import it."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    launcher = _script("redis_cluster")
    if launcher.REDIS_SERVER is None or launcher.REDIS_CLI is None:
        message = "redis-server and redis-cli are not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI requires them", pytrace=False)
        pytest.skip(message)
    cluster = launcher.LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def cluster_url(cluster: Any, *, seeds: int = 2) -> str:
    """A cluster URL naming ``seeds`` of its nodes, with a key prefix of its own."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in cluster.ports[:seeds])
    return f"redis+cluster://{hosts}/?key_prefix=cs{uuid.uuid4().hex[:8]}:"


class TestClusterConformance(StoreConformance):
    @pytest.fixture
    def store_factory(self, redis_cluster: Any) -> Callable[[], Any]:
        url = cluster_url(redis_cluster)
        return lambda: cs.open_store(url)


class TestAsyncClusterConformance(AsyncStoreConformance):
    @pytest.fixture
    def async_store_factory(self, redis_cluster: Any) -> Callable[[], Any]:
        url = cluster_url(redis_cluster)
        return lambda: cs.open_async_store(url)


def test_one_seed_is_enough_and_keys_spread_over_every_master(redis_cluster: Any) -> None:
    import redis

    url = cluster_url(redis_cluster, seeds=1)
    prefix = url.rpartition("key_prefix=")[2]
    with contextlib.closing(cs.open_store(url)) as store:
        records = [add_turn(store, store.create_conversation(make_record())) for _ in range(30)]
        for record in records:
            assert len(store.load_steps(record.id, tenant=record.tenant)) == 2
    holders = set()
    for port in redis_cluster.master_ports():
        node = redis.Redis(port=port)
        if any(True for _ in node.scan_iter(match=f"{prefix}{{*", count=1000)):
            holders.add(port)
        node.close()
    assert len(holders) == 3


def test_a_client_of_your_own_is_used_and_left_open(redis_cluster: Any) -> None:
    from redis.cluster import ClusterNode, RedisCluster

    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", redis_cluster.ports[0])])
    store = cs.open_store("redis+cluster://?key_prefix=own:", client=client)
    record = store.create_conversation(make_record())
    assert store.get_conversation(record.id, tenant=record.tenant) == record
    store.close()
    assert client.exists(f"own:{{{record.id}}}:c") == 1  # still usable: not closed by the store
    client.close()
    with pytest.raises(cs.ConfigurationError, match="client="):
        cs.open_store("redis+cluster://", client="not a client")


def test_commands_that_walk_the_store_work_on_the_cluster(
    redis_cluster: Any, emulator: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export, verify, copy (both ways), import and purge, on conversations sent through the
    emulator into the cluster."""
    from convostore.cli import run

    url = cluster_url(redis_cluster)
    with (
        cs.InteractionsClient(api_key="cluster-key-0123456789", base_url=emulator.url) as client,
        cs.Conversations(url, client) as convos,
    ):
        for n in range(6):
            conv = convos.create(tenant=f"walk{n % 2}", user="u1", mode="auto")
            conv.send("I have 2 dogs in my house.")
            conv.send("How many paws are in my house?")
    export, sqlite = tmp_path / "all.jsonl", f"sqlite:///{tmp_path / 'copy.db'}"
    assert run(["verify", "--all-tenants", "--store", url]) == 0
    assert "checked 6 conversation(s): 0 with problems" in capsys.readouterr().out
    assert run(["export", "--all", "-o", str(export), "--store", url]) == 0
    assert export.read_text().count('"kind":"conversation"') == 6
    assert run(["copy", url, sqlite, "--verify"]) == 0
    assert "verified: 6 conversation(s) identical" in capsys.readouterr().out
    other = cluster_url(redis_cluster)
    assert run(["copy", sqlite, other, "--verify"]) == 0
    assert run(["import", str(export), "--store", other]) == 0
    assert "imported 0, skipped 6" in capsys.readouterr().out
    assert run(["purge", "--all-tenants", "--older-than", "1m", "--store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["conversations"] == []
    assert run(["ls", "--tenant", "walk1", "--store", other, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+cluster://127.0.0.1:1/?db=1", "unknown option 'db'"),
        ("redis+cluster://127.0.0.1:1/3", "only database 0"),
        ("redis+cluster://127.0.0.1/", "needs host:port"),
        ("redis+cluster:///", "at least one host:port"),
        ("redis+sentinel://127.0.0.1:1/", "unsupported Redis URL scheme"),
    ],
)
def test_malformed_cluster_urls_are_refused_at_open(url: str, match: str) -> None:
    with pytest.raises(cs.ConfigurationError, match=match):
        cs.open_store(url)


@pytest.mark.reliability
def test_processes_racing_on_one_conversation_on_the_cluster(
    redis_cluster: Any, emulator: Any
) -> None:
    soak = _script("soak")
    figures = soak.run_concurrency(
        cluster_url(redis_cluster), emulator, processes=4, turns=15, label="cluster"
    )
    print(f"cluster concurrency 4x15: {figures.line()}")
    assert figures.problems == []
    assert figures.turns_sent == 60 and figures.lost == figures.corrupted == 0
    assert figures.conflicts > 0


# Last in this module: it kills a master of the session's cluster (and restarts it).
@pytest.mark.reliability
def test_a_master_killed_during_eight_processes_sends(redis_cluster: Any, emulator: Any) -> None:
    """No half turn, no duplicate; acknowledged turns that the replica had not received when
    its master died would be lost (asynchronous replication, as the README says): counted."""
    launcher = _script("redis_cluster")
    masters_before = set(redis_cluster.master_ports())
    figures = launcher.run_failover(redis_cluster, cluster_url(redis_cluster), emulator)
    print(f"cluster failover, 8 processes: {figures.line()}")
    assert figures.problems == []
    assert figures.acknowledged >= 120
    # a replica took over: the set of masters changed, and the cluster is whole again
    assert set(redis_cluster.master_ports()) != masters_before
    assert len(redis_cluster.running()) == 6
    # what asynchronous replication may lose is bounded by what was in flight at the kill
    assert figures.lost <= 8
    assert figures.stored >= figures.acknowledged - figures.lost

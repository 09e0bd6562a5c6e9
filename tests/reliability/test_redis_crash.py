"""A private redis-server (AOF, ``appendfsync always``) killed with SIGKILL and restarted while
turns are being sent: every acknowledged turn survives and the store reconnects by itself."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import convostore as cs
from convostore import _transfer
from convostore.emulator import Emulator

pytestmark = pytest.mark.reliability

KEY = "crash-key-0123456789"
DOWNTIMES = (0.05, 0.5, 1.5)
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """redis-server on its own loopback port and directory, durable on every write."""

    def __init__(self, directory: Path, *, appendfsync: str = "always") -> None:
        self.directory = directory
        self.port = free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_acknowledged_turns_survive_sigkill_and_restart(
    private_redis: PrivateRedis, emulator: Emulator
) -> None:
    acked: dict[int, str | None] = {}
    failures: list[BaseException] = []
    stop = threading.Event()
    # a turn whose store writes failed while the server was down stays in flight until its
    # lease runs out; the next send waits for it, then finishes it (adopted or lost) first
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as client,
        cs.Conversations(
            private_redis.url, client, lease=timedelta(seconds=1), poll_interval=0.05
        ) as convos,
    ):
        conv = convos.create(tenant="crash", mode="server")

        def sender() -> None:
            i = 0
            while not stop.is_set():
                try:
                    turn = conv.send(f"turn {i}", in_flight="wait")
                except cs.StoreError as exc:  # the server is down: not acknowledged
                    failures.append(exc)
                    time.sleep(0.01)
                    continue
                acked[turn.seq] = turn.interaction_id
                i += 1

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            # down for less than the client's retries, then for longer than them
            for downtime in DOWNTIMES:
                wait_for_more(acked, 5)
                private_redis.kill()
                time.sleep(downtime)
                private_redis.start()
            wait_for_more(acked, 5)
        finally:
            stop.set()
            thread.join(timeout=60)
        assert not thread.is_alive()

        # a new process view: reopen the store from its URL
        with contextlib.closing(cs.open_store(private_redis.url)) as store:
            record = store.get_conversation(conv.id, tenant="crash")
            turns = {t.seq: t.interaction_id for t in store.load_turns(conv.id, tenant="crash")}
            assert _transfer.verify(store, record) == []
        lost = {seq: iid for seq, iid in acked.items() if turns.get(seq) != iid}
        assert lost == {}
        assert record.turn_count >= len(acked) >= 20
        assert failures, "no send was refused while the server was down"
        print(f"redis crash: {len(acked)} turns acknowledged, {len(DOWNTIMES)} SIGKILLs, "
              f"{len(failures)} sends refused while down, 0 lost")  # fmt: skip


def wait_for_more(acked: dict[int, str | None], more: int, timeout: float = 30.0) -> None:
    target = len(acked) + more
    deadline = time.monotonic() + timeout
    while len(acked) < target:
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for acknowledged turns")
        time.sleep(0.005)


class ReplyDroppingProxy:
    """A loopback TCP proxy to Redis that, once armed, forwards the next ``EVALSHA`` but drops
    the connection instead of delivering its reply: the script ran, the client never heard."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.armed = threading.Event()
        self.dropped = 0
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            pending = threading.Event()
            threading.Thread(target=self._up, args=(client, server, pending), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, pending), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, pending: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.armed.is_set() and b"EVALSHA" in data.upper():
                    self.armed.clear()
                    pending.set()
                server.sendall(data)
        _close(client, server)

    def _down(self, server: socket.socket, client: socket.socket, pending: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if pending.is_set():
                    self.dropped += 1
                    break
                client.sendall(data)
        _close(client, server)

    def close(self) -> None:
        self._stopping = True
        self.listener.close()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@pytest.mark.parametrize("on_conflict", ["raise", "retry"])
def test_append_whose_reply_was_lost_is_not_reported_as_a_conflict(
    private_redis: PrivateRedis, emulator: Emulator, on_conflict: str
) -> None:
    """The client re-sends a write after a dropped connection; the store must recognise its own
    applied turn: no ConcurrentTurnError, no duplicate turn, the server copy kept."""
    proxy = ReplyDroppingProxy(private_redis.port)
    try:
        with (
            cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as client,
            cs.Conversations(proxy.url, client) as convos,
        ):
            conv = convos.create(tenant="crash", mode="server")
            conv.send("I have 2 dogs in my house.")
            proxy.armed.set()
            turn = conv.send("How many paws are in my house?", on_conflict=on_conflict)  # type: ignore[arg-type]
            assert proxy.dropped == 1
            turns = conv.turns()
            assert [t.seq for t in turns] == [1, 2]
            assert turns[1].interaction_id == turn.interaction_id
            assert turn.interaction_id in emulator.interactions  # not discarded as a loser
            record = conv.refresh()
            assert _transfer.verify(conv._store, record) == []
            assert conv.send("And cats?").record.previous_interaction_id == turn.interaction_id
    finally:
        proxy.close()

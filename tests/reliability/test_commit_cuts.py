"""The connection to PostgreSQL / MariaDB cut during COMMIT, through a TCP proxy between the
store and the database: right after the COMMIT reached the server (it committed, the driver
never learns it) or right before (nothing committed). Either way ``send`` returns the turn —
convostore resolves the commit by its idempotency key (``AsyncTurnDriver.append``) — nothing
is stored twice and the history verifies.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

import convostore as cs
from convostore import _transfer
from convostore.emulator import Emulator

pytestmark = pytest.mark.reliability

KEY = "cut-key-0123456789"
TURNS = 6


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


def is_commit(packet: bytes) -> bool:
    """A client packet that is the statement ``COMMIT``: a PostgreSQL simple query
    (``Q``, length, ``COMMIT\\0``) or a MySQL ``COM_QUERY`` (0x03 then ``COMMIT``). Not
    ``… READ COMMITTED``."""
    if packet.endswith(b"Q\x00\x00\x00\x0bCOMMIT\x00") or (packet[4:] == b"\x03COMMIT"):
        return True
    # PostgreSQL runs the append and the begin as one statement in autocommit: that
    # statement's Parse message (psycopg's extended protocol; prepared statements are off
    # through this proxy, so its text is always sent) is where the commit happens
    return packet[:1] == b"P" and (
        (b"UPDATE conversations" in packet and b"INSERT INTO turns" in packet)
        or b"INSERT INTO pending_turns" in packet
    )


class CommitCutter:
    """A TCP proxy on 127.0.0.1 that forwards both ways and, when armed, cuts a connection
    at its next client packet that is a ``COMMIT``: ``"after"`` forwards the packet, waits
    for the server's reply and drops it; ``"before"`` does not forward it."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.mode: str | None = None
        self.fired: list[str] = []
        self.direct_url = ""  # the database itself, not through the proxy
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def arm(self, mode: str) -> None:
        with self.lock:
            self.mode = mode

    def _take(self, data: bytes) -> str | None:
        with self.lock:
            if self.mode is None or not is_commit(data):
                return None
            mode, self.mode = self.mode, None
            self.fired.append(mode)
            return mode

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            cut, replied = threading.Event(), threading.Event()
            self._spawn(self._down, server, client, cut, replied)
            self._spawn(self._up, client, server, cut, replied)

    def _down(
        self, server: socket.socket, client: socket.socket, cut: threading.Event, replied: Any
    ) -> None:
        try:
            while data := server.recv(65536):
                if cut.is_set():
                    replied.set()  # the server answered the COMMIT: dropped
                    continue
                client.sendall(data)
        except OSError:
            pass
        finally:
            replied.set()
            _close(client, server)

    def _up(
        self, client: socket.socket, server: socket.socket, cut: threading.Event, replied: Any
    ) -> None:
        try:
            while data := client.recv(65536):
                mode = self._take(data)
                if mode == "before":
                    break
                if mode == "after":
                    cut.set()
                    server.sendall(data)
                    replied.wait(10)
                    break
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)

    def close(self) -> None:
        _close(self.listener)


@pytest.fixture(params=["postgresql", "mysql"])
def proxied(
    request: pytest.FixtureRequest, make_store_url: Callable[[str], str]
) -> Iterator[tuple[str, CommitCutter]]:
    """A store URL whose connections go through a ``CommitCutter``."""
    url = make_url(make_store_url(request.param))
    default_port = 5432 if request.param == "postgresql" else 3306
    cutter = CommitCutter(url.host or "127.0.0.1", url.port or default_port)
    through = url.set(host="127.0.0.1", port=cutter.port)
    if request.param == "postgresql":
        # the statements stay readable: no TLS, no server-side prepared statements
        through = through.update_query_dict({"sslmode": "disable", "prepare_threshold": "none"})
    cutter.direct_url = make_store_url(request.param)
    yield through.render_as_string(hide_password=False), cutter
    cutter.close()


@contextlib.contextmanager
def conversations(store_url: str, emulator: Emulator) -> Iterator[cs.Conversations]:
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        yield convos


def arm_on_append(convos: cs.Conversations, cutter: CommitCutter, mode: str) -> None:
    """Arm the cutter for the first COMMIT of each turn's ``append_turn`` (not the begin, not
    the progress, not the driver's own retry of the same commit)."""
    store: Any = convos.store
    real = store.append_turn
    seen: set[str] = set()

    def append_turn(commit: Any) -> Any:
        key = commit.turn.idempotency_key
        if key not in seen:
            seen.add(key)
            cutter.arm(mode)
        return real(commit)

    store.append_turn = append_turn


@pytest.mark.parametrize("mode", ["after", "before"])
def test_send_survives_a_commit_cut(
    proxied: tuple[str, CommitCutter],
    emulator: Emulator,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, cutter = proxied
    caplog.set_level(logging.WARNING, logger="convostore.turns")
    with conversations(url, emulator) as convos:
        conv = convos.create(tenant="cuts", mode="server")
        arm_on_append(convos, cutter, mode)
        turns = [conv.send(f"cut {mode} {i}") for i in range(TURNS)]  # none raises
        cutter.mode = None
        assert cutter.fired == [mode] * TURNS
        assert [t.seq for t in turns] == list(range(1, TURNS + 1))
        stored = conv.turns()
        assert [(t.seq, t.interaction_id) for t in stored] == [
            (t.seq, t.interaction_id) for t in turns
        ]
        keys = [t.idempotency_key for t in stored]
        assert len(set(keys)) == TURNS
        texts = [s["content"][0]["text"] for s in conv.history() if s["type"] == "user_input"]
        assert texts == [f"cut {mode} {i}" for i in range(TURNS)]  # each once, in order
        record = conv.refresh()
        assert _transfer.verify(convos.store, record) == []
        assert record.turn_count == record.version == TURNS
        assert convos.store.get_pending(conv.id, tenant="cuts") is None
    unknown = [r for r in caplog.records if "commit outcome unknown" in r.getMessage()]
    assert len(unknown) == TURNS  # every commit's outcome was lost, and resolved
    backend = make_url(url).get_backend_name()
    print(f"\ncommit cut {mode} ({backend}): {TURNS} sends returned, {len(cutter.fired)} cut")


@pytest.mark.parametrize("mode", ["after", "before"])
def test_a_commit_cut_raises_a_store_error(
    proxied: tuple[str, CommitCutter], emulator: Emulator, mode: str
) -> None:
    """What the store itself raises when the connection drops in COMMIT: a StoreError (the
    driver's lookup by key depends on it), and the outcome is exactly the cut's."""
    url, cutter = proxied
    with conversations(url, emulator) as convos:
        conv = convos.create(tenant="cuts", mode="server")
        conv.send("first")
        store: Any = convos.store
        real = store.append_turn
        caught: list[BaseException] = []
        outcomes: list[bool] = []

        def append_turn(commit: Any) -> Any:
            if not cutter.fired:
                cutter.arm(mode)  # the first commit only: the driver's retry goes through
            try:
                return real(commit)
            except BaseException as exc:
                caught.append(exc)
                # what the database holds, asked past the proxy: the cut's own outcome
                with contextlib.closing(cs.open_store(cutter.direct_url)) as direct:
                    key = commit.turn.idempotency_key
                    found = direct.find_turn(conv.id, tenant="cuts", idempotency_key=key)
                outcomes.append(found is not None)
                raise

        store.append_turn = append_turn
        assert conv.send("second").seq == 2
        assert cutter.fired == [mode]
        assert len(caught) == 1
        assert isinstance(caught[0], cs.StoreError), repr(caught[0])
        assert isinstance(caught[0], cs.StoreUnavailable), repr(caught[0])
        assert outcomes == [mode == "after"]  # committed after the cut-after, not before
        assert conv.refresh().turn_count == 2
        cause = caught[0].__cause__
        driver = getattr(cause, "orig", cause)
        print(
            f"\ncommit cut {mode}: {type(driver).__module__}.{type(driver).__name__} -> "
            f"{type(caught[0]).__name__}"
        )


def test_a_cut_begin_commit_does_not_block_the_retry(
    proxied: tuple[str, CommitCutter], emulator: Emulator
) -> None:
    url, cutter = proxied
    with conversations(url, emulator) as convos:
        conv = convos.create(tenant="cuts", mode="server")
        store: Any = convos.store
        real = store.begin_turn

        def begin_turn(pending: Any) -> Any:
            if not cutter.fired:
                cutter.arm("after")
            return real(pending)

        store.begin_turn = begin_turn
        try:
            turn = conv.send("first", idempotency_key="cut-begin-1")
        except cs.StoreUnavailable:
            # the outcome was lost; a caller retries with the same key at once
            turn = conv.send("first", idempotency_key="cut-begin-1")
        assert cutter.fired == ["after"]
        assert turn.seq == 1

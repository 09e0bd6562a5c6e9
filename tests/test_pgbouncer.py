"""The PostgreSQL store through PgBouncer in transaction pooling mode.

A private ``pgbouncer`` (Debian's package) listens on a free loopback port in front of the
test PostgreSQL (trust auth) with a small server pool, so that consecutive transactions of one
client land on different server connections and the many clients share few of them. The store
URL carries ``?prepare_threshold=none``: PgBouncer before 1.21 (or with
``max_prepared_statements = 0``) cannot follow server-side prepared statements, and psycopg
prepares a query after its 5th run by default (``prepared statement "_pg3_0" already
exists``). The store relies on no session state (no SET, no advisory lock, no temporary table;
READ COMMITTED reads switch psycopg's client-side autocommit), so nothing else is needed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import convostore as cs
from convostore.testing import AsyncStoreConformance, StoreConformance

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
)
SERVER_POOL = 4  # server connections PgBouncer keeps per database/user pair


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    """The session's (migrated) PostgreSQL database, reached through a private PgBouncer."""
    import sqlalchemy as sa

    from convostore._migrate import upgrade

    if PGBOUNCER is None:
        message = "pgbouncer is not installed (apt-get install -y pgbouncer)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI requires it", pytrace=False)
        pytest.skip(message)
    upgrade(postgres_url)
    target = sa.make_url(postgres_url)
    port = free_port()
    # PgBouncer refuses to run as root: it then switches to the postgres user, which must be
    # able to write its log and pid files
    directory = Path(tempfile.mkdtemp(prefix="convostore-pgbouncer-"))
    run_as = ""
    if os.geteuid() == 0:
        run_as = "user = postgres\n"
        os.chown(directory, pwd.getpwnam("postgres").pw_uid, -1)
    (directory / "users.txt").write_text(f'"{target.username}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={target.host or '127.0.0.1'} port={target.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_POOL}\n"
        "max_client_conn = 500\nunix_socket_dir =\n"
        f"logfile = {directory / 'pgbouncer.log'}\npidfile = {directory / 'pgbouncer.pid'}\n"
        "ignore_startup_parameters = extra_float_digits,options\n" + run_as
    )
    for name in ("users.txt", "pgbouncer.ini"):
        (directory / name).chmod(0o644)
    process = subprocess.Popen(
        [PGBOUNCER, str(directory / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log = directory / "pgbouncer.log"
                raise RuntimeError(
                    "pgbouncer did not start: " + (log.read_text() if log.exists() else "")
                )
            time.sleep(0.02)
        url = target.set(host="127.0.0.1", port=port, drivername="postgresql")
        yield url.render_as_string(hide_password=False) + "?prepare_threshold=none"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


class TestPgBouncerConformance(StoreConformance):
    @pytest.fixture
    def store_factory(self, pgbouncer_url: str) -> Callable[[], Any]:
        return lambda: cs.open_store(pgbouncer_url)


class TestAsyncPgBouncerConformance(AsyncStoreConformance):
    @pytest.fixture
    def async_store_factory(self, pgbouncer_url: str) -> Callable[[], Any]:
        return lambda: cs.open_async_store(pgbouncer_url)


def _soak() -> Any:
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))
    return importlib.import_module("soak")


@pytest.mark.reliability
def test_sixteen_processes_send_through_pgbouncer(pgbouncer_url: str, emulator: Any) -> None:
    """16 processes (each with its own pool) race on one conversation through 4 server
    connections: every turn stored once, one linear chain."""
    figures = _soak().run_concurrency(
        pgbouncer_url, emulator, processes=16, turns=3, label="pgbouncer"
    )
    print(f"pgbouncer 16x3: {figures.line()}")
    assert figures.problems == []
    assert figures.turns_sent == 48 and figures.lost == figures.corrupted == 0
    assert figures.conflicts > 0

"""Fixtures of the reliability tests: migrated stores of every kind, the soak module."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from convostore import _migrate

SOAK_PATH = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
ALL_STORES = ("sqlite", "postgresql", "mysql", "redis")


@pytest.fixture(scope="session")
def soak() -> ModuleType:
    """``scripts/soak.py`` (the full-size runs), imported for its sized-down runs here. It is
    imported by name from ``scripts/`` so that its worker processes can import it too."""
    if str(SOAK_PATH.parent) not in sys.path:
        sys.path.insert(0, str(SOAK_PATH.parent))
    return importlib.import_module("soak")


@pytest.fixture(scope="session")
def _migrated() -> dict[str, bool]:
    return {}


@pytest.fixture
def make_store_url(
    request: pytest.FixtureRequest, tmp_path: Path, _migrated: dict[str, bool]
) -> Callable[[str], str]:
    """``make_store_url(kind)``: a URL of an empty (SQLite, Redis prefix) or migrated and shared
    (PostgreSQL, MariaDB session database) store of ``kind``."""

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        if kind == "memory":
            return f"memory://{uuid.uuid4().hex[:8]}"
        if kind == "redis":
            url: str = request.getfixturevalue("redis_url")
            prefix: str = request.getfixturevalue("redis_prefix")
            return f"{url}?key_prefix={prefix}{uuid.uuid4().hex[:6]}:"
        url = request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url")
        if not _migrated.get(kind):
            _migrate.upgrade(url)
            _migrated[kind] = True
        return url

    return make

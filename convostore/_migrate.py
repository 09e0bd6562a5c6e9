"""Run convostore's Alembic migrations programmatically.

The revision scripts ship inside the wheel as ``convostore/_migrations``; in a source checkout
(editable install) they are the repository's ``migrations/``. These functions use short-lived
sync engines, so both the sync and the asyncio stores can call them.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ._exceptions import ConfigurationError, SchemaError
from ._urls import redact

if TYPE_CHECKING:
    import sqlalchemy as sa
    from alembic.config import Config

# Alembic and SQLAlchemy are imported on use, so ``import convostore`` stays light.

__all__ = ["check", "current", "downgrade", "head", "upgrade", "upgrade_connection"]


@functools.cache
def script_location() -> str:
    """Where the revision scripts are: inside the package, else the source checkout."""
    packaged = resources.files("convostore") / "_migrations"
    if packaged.is_dir() and (packaged / "env.py").is_file():
        return str(packaged)
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    if (checkout / "env.py").is_file():
        return str(checkout)
    raise ConfigurationError("convostore's migration scripts are missing from this install")


def _config(connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location())
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head() -> str:
    """The newest revision this version of convostore knows."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(_config()).get_current_head()
    if revision is None:
        raise ConfigurationError("convostore's migration scripts have no head revision")
    return revision


def _engine(url: str) -> sa.Engine:
    import sqlalchemy as sa

    from ._sql import install_sqlite_hooks, normalize_url

    sa_url = normalize_url(url, is_async=False)
    engine = sa.create_engine(sa_url, poolclass=sa.NullPool)
    if sa_url.get_backend_name() == "sqlite":
        install_sqlite_hooks(engine)
    return engine


def upgrade_connection(connection: sa.Connection, revision: str = "head") -> None:
    """Upgrade through an open connection (the caller owns its transaction)."""
    from alembic import command
    from alembic.util import CommandError

    try:
        command.upgrade(_config(connection), revision)
    except CommandError as exc:
        raise SchemaError(f"cannot upgrade to {revision!r}: {exc}") from exc


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (default: the newest).

    On SQLite the whole upgrade runs under the write lock, so two processes opening a new
    file at once migrate it once.

    Raises:
        StoreUnavailable: the database could not be reached.
        SchemaError: the database is at a revision this convostore does not know.
        ConfigurationError: not a SQL URL.
    """
    from ._sql import translate_errors

    engine = _engine(url)
    try:
        with translate_errors(redact(url)), engine.connect() as conn:
            conn = conn.execution_options(convostore_write=True)
            with conn.begin():
                upgrade_connection(conn, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` down to ``revision`` (``"base"`` drops everything)."""
    from alembic import command
    from alembic.util import CommandError

    from ._sql import translate_errors

    engine = _engine(url)
    try:
        with translate_errors(redact(url)), engine.connect() as conn:
            conn = conn.execution_options(convostore_write=True)
            with conn.begin():
                try:
                    command.downgrade(_config(conn), revision)
                except CommandError as exc:
                    raise SchemaError(f"cannot downgrade to {revision!r}: {exc}") from exc
    finally:
        engine.dispose()


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    from ._sql import translate_errors

    engine = _engine(url)
    try:
        with translate_errors(redact(url)), engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def check(url: str) -> bool:
    """Whether the database at ``url`` is at the newest revision."""
    return current(url) == head()

"""Alembic environment for convostore.

Programmatic use (``convostore._migrate``) passes an open connection in
``config.attributes["connection"]``; command-line use takes ``-x url=...`` or
``sqlalchemy.url``.
"""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from convostore._sql import metadata, normalize_url

config = context.config
if config.config_file_name is not None and "connection" not in config.attributes:
    # the alembic command line: log as alembic.ini says; programmatic callers keep theirs
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=connection.dialect.name in ("sqlite", "postgresql"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database URL: alembic -x url=... upgrade head")
    engine = sa.create_engine(normalize_url(url, is_async=False), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported; run against a database")
run_migrations_online()

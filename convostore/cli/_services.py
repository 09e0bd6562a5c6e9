"""``emulator`` and ``db``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .._exceptions import (
    ConfigurationError,
)
from .._urls import family, redact

if TYPE_CHECKING:
    pass

from ._common import (
    _F,
    _emit_json,
    cli,
    json_option,
    parse_duration,
)

# --------------------------------------------------------------------------- services


@cli.command(
    "emulator",
    epilog="Example: convostore emulator --port 8765   (then GOOGLE_GEMINI_BASE_URL="
    "http://127.0.0.1:8765)",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--retention", default="55d", show_default=True, help="How long interactions live.")
@click.option("--no-require-key", is_flag=True, help="Accept requests without an API key.")
def emulator_command(host: str, port: int, retention: str, no_require_key: bool) -> int:
    """Serve the local Interactions API emulator in the foreground (Ctrl-C to stop)."""
    seconds = int(parse_duration(retention).total_seconds())
    from ..emulator import main as serve

    argv = ["--host", host, "--port", str(port), "--retention", f"{seconds}s"]
    if no_require_key:
        argv.append("--no-api-key")
    return serve(argv)


@cli.group("db", epilog="Example: convostore db upgrade postgresql://postgres@127.0.0.1/chat")
def db_group() -> None:
    """Database schema migrations (Alembic, shipped with the package)."""


def _url_argument(func: _F) -> _F:
    return click.argument("url", envvar="CONVOSTORE_URL")(func)


def _sql_url(url: str) -> str:
    if family(url) != "sql":
        raise ConfigurationError(f"{redact(url)} is not a SQL database URL; nothing to migrate")
    return url


@db_group.command("upgrade", epilog="Example: convostore db upgrade mysql+pymysql://root@db/chat")
@_url_argument
def db_upgrade(url: str) -> int:
    """Bring the database up to the newest schema."""
    from .. import _migrate

    _migrate.upgrade(_sql_url(url))
    click.echo(f"{redact(url)}: at {_migrate.current(url)} (newest {_migrate.head()})")
    return 0


def _revision_report(url: str, as_json: bool) -> bool:
    """Print where the database is; whether it is at the newest revision."""
    from .. import _migrate

    revision, newest = _migrate.current(_sql_url(url)), _migrate.head()
    if as_json:
        _emit_json({"url": redact(url), "current": revision, "head": newest})
    elif revision == newest:
        click.echo(f"{redact(url)}: up to date ({revision})")
    else:
        where = f"at {revision}" if revision else "not migrated"
        click.echo(f"{redact(url)}: {where}, newest is {newest}")
    return revision == newest


@db_group.command("current", epilog="Example: convostore db current postgresql://…/chat")
@_url_argument
@json_option
def db_current(url: str, as_json: bool) -> int:
    """Print the schema revision of the database (and the newest one)."""
    _revision_report(url, as_json)
    return 0


@db_group.command("check", epilog="Example: convostore db check postgresql://…/chat || exit 1")
@_url_argument
@json_option
def db_check(url: str, as_json: bool) -> int:
    """Exit 1 if the database is behind the newest schema."""
    if _revision_report(url, as_json):
        return 0
    if not as_json:
        click.echo("run: convostore db upgrade URL", err=True)
    return 1

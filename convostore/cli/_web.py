"""``serve``: the auditor's read-only web view."""

from __future__ import annotations

import os

import click

from .._exceptions import ConfigurationError
from ._common import _err, cli, open_existing, store_option

TOKENS_ENV = "CONVOSTORE_WEB_TOKENS"
TOKENS_FILE_ENV = "CONVOSTORE_WEB_TOKENS_FILE"


@cli.command(
    "serve",
    epilog="Example: CONVOSTORE_WEB_TOKENS_FILE=tokens.json convostore serve "
    "--store postgresql://auditor@db/chat --access-log /var/log/convostore-reads.jsonl",
)
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--tokens-file",
    envvar=TOKENS_FILE_ENV,
    default=None,
    metavar="FILE",
    help=f"Who may sign in and which tenants each reads (JSON; env {TOKENS_FILE_ENV}; "
    f"or the JSON itself in env {TOKENS_ENV}).",
)
@click.option(
    "--access-log",
    "access_log_path",
    envvar="CONVOSTORE_WEB_ACCESS_LOG",
    default="convostore-access.jsonl",
    show_default=True,
    metavar="FILE",
    help="JSON Lines file the auditors' reads are appended to (env CONVOSTORE_WEB_ACCESS_LOG).",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Serve without signing in (every tenant to anyone who connects); loopback only.",
)
def serve_command(
    store_url: str,
    host: str,
    port: int,
    tokens_file: str | None,
    access_log_path: str,
    no_auth: bool,
) -> int:
    """Serve the auditor's read-only web view of a store: conversations per tenant,
    transcripts with their verification, fork trees, retention, exports and case files.

    Signing in is required: each token grants some tenants, or all of them (see the README).
    It never writes to the store and never calls the Interactions API. Encrypted stores are
    read with the keys of CONVOSTORE_KEYS / CONVOSTORE_KEYS_FILE.
    """
    try:
        import uvicorn

        from ..web import AccessLog, Tokens, check_bind, create_app
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"serve needs {exc.name!r}: pip install 'convostore[web]'"
        ) from exc

    check_bind(host, no_auth=no_auth)
    tokens = None
    if no_auth:
        if tokens_file or os.environ.get(TOKENS_ENV):
            raise click.UsageError("--no-auth serves without tokens: remove the tokens")
    elif tokens_file:
        tokens = Tokens.from_file(tokens_file)
    elif os.environ.get(TOKENS_ENV):
        tokens = Tokens.from_json(os.environ[TOKENS_ENV], source=TOKENS_ENV)
    else:
        raise click.UsageError(
            f"give --tokens-file (or env {TOKENS_ENV}); --no-auth only on loopback"
        )
    log = AccessLog(access_log_path)
    store = open_existing(store_url)
    app = create_app(store, access_log=log, tokens=tokens, no_auth=no_auth)
    shown = f"[{host}]" if ":" in host else host
    _err().print(
        f"serving {store.url} read-only on http://{shown}:{port}/ "
        f"(reads logged to {log.path}); Ctrl+C stops"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
    return 0

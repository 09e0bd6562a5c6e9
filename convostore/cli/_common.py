"""Helpers shared by the commands: options, store opening, rendering, the command group."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .. import _transfer as transfer
from .._exceptions import (
    StoreUnavailable,
    ValidationError,
)
from .._sync.store import Store
from .._urls import family, redact

if TYPE_CHECKING:
    from .._encryption import KeyRing
    from .._sync.client import InteractionsClient

DEFAULT_STORE = "sqlite:///convostore.db"
"""The store used when neither ``--store`` nor ``CONVOSTORE_URL`` is given."""

_F = TypeVar("_F", bound=Callable[..., Any])

# --------------------------------------------------------------------------- helpers


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s`` (or ``2w``) -> timedelta.

    Raises:
        ValidationError: not a duration.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text.lower())
    if match is None:
        raise ValidationError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m)")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return timedelta(seconds=int(match.group(1)) * seconds)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True, default=str))


def _sqlite_file(url: str) -> Path | None:
    if not url.lower().startswith("sqlite"):
        return None
    path = url.split("://", 1)[1].split("?", 1)[0]
    if not path.startswith("/") or path in ("/", "/:memory:"):
        return None
    return Path(path[1:])


KEYS_ENV = "CONVOSTORE_KEYS"
KEYS_FILE_ENV = "CONVOSTORE_KEYS_FILE"


def keyring_from_env() -> KeyRing | None:
    """The encryption key ring from ``CONVOSTORE_KEYS`` (``kid:base64,…``, primary first) or
    the file named by ``CONVOSTORE_KEYS_FILE``; None when neither is set."""
    from .._encryption import KeyRing

    if os.environ.get(KEYS_ENV):
        return KeyRing.from_env(KEYS_ENV)
    if os.environ.get(KEYS_FILE_ENV):
        return KeyRing.from_file(os.environ[KEYS_FILE_ENV])
    return None


def open_existing(url: str, *, create: bool = False, encrypted: bool = True) -> Store:
    """Open the store at ``url`` (encrypted when a key ring is configured, see
    :func:`keyring_from_env`). Unless ``create``, a SQLite file must already exist (so a
    mistyped path is reported instead of silently creating an empty database)."""
    from .._registry import open_store

    family(url)
    path = _sqlite_file(url)
    if not create and path is not None and not path.exists():
        raise StoreUnavailable(f"{redact(url)}: no such database file ({path})")
    ring = keyring_from_env() if encrypted else None
    store: Store = open_store(url, encryption=ring) if ring is not None else open_store(url)
    return store


@contextmanager
def _store(url: str, *, create: bool = False, encrypted: bool = True) -> Iterator[Store]:
    store = open_existing(url, create=create, encrypted=encrypted)
    try:
        yield store
    finally:
        store.close()


def _client(base_url: str | None) -> InteractionsClient:
    from .._sync.client import InteractionsClient

    return InteractionsClient(base_url=base_url or None)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=_err(),
        transient=True,
    )


@contextmanager
def progress_bar(
    description: str, total: int | None = None, *, quiet: bool = False
) -> Iterator[Callable[..., None]]:
    """``advance`` for a command that walks many conversations: a rich progress bar on stderr
    when it is a terminal, nothing on a pipe or when ``quiet`` (``--json``). Without a total
    (the walk is streamed, not counted first) the bar pulses and counts."""
    console = _err()
    if quiet or not console.is_terminal:
        yield lambda *_: None
        return
    with _progress() as progress:
        task = progress.add_task(description, total=total)
        yield lambda *_: progress.advance(task)


# --------------------------------------------------------------------------- options


def store_option(func: _F) -> _F:
    return click.option(
        "--store",
        "store_url",
        envvar="CONVOSTORE_URL",
        default=DEFAULT_STORE,
        show_default=True,
        metavar="URL",
        help="Store URL (env CONVOSTORE_URL): sqlite:///file.db, postgresql://…, "
        "mysql+pymysql://…, redis://host:6379/0[?key_prefix=app:]",
    )(func)


def tenant_option(func: _F) -> _F:
    return click.option(
        "--tenant",
        envvar="CONVOSTORE_TENANT",
        default="default",
        show_default=True,
        help="Tenant the conversation belongs to (env CONVOSTORE_TENANT).",
    )(func)


def json_option(func: _F) -> _F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def base_url_option(func: _F) -> _F:
    return click.option(
        "--base-url",
        envvar="GOOGLE_GEMINI_BASE_URL",
        default=None,
        metavar="URL",
        help="API base URL (env GOOGLE_GEMINI_BASE_URL), e.g. a `convostore emulator`. "
        "The key comes from GEMINI_API_KEY.",
    )(func)


# --------------------------------------------------------------------------- rendering


def _text_of(parts: Any) -> str:
    out: list[str] = []
    for part in parts or []:
        if isinstance(part, dict) and part.get("type") == "text":
            out.append(str(part.get("text", "")))
        elif isinstance(part, dict):
            out.append(f"[{part.get('type')}]")
    return " ".join(out)


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_step(payload: dict[str, Any]) -> tuple[str, str]:
    """A step as ``(label, one readable line)`` for transcripts."""
    kind = str(payload.get("type"))
    if kind == "user_input":
        return "you", _text_of(payload.get("content"))
    if kind == "model_output":
        return "model", _text_of(payload.get("content"))
    if kind == "thought":
        signed = " (signed)" if payload.get("signature") else ""
        return "thought", _short(_text_of(payload.get("summary")) or "…", 80) + signed
    if kind == "function_call":
        args = _short(payload.get("arguments"), 80)
        return "call", f"{payload.get('name')}({args}) id={payload.get('id')}"
    if kind == "function_result":
        name = payload.get("name") or payload.get("call_id")
        return "result", f"{name}: {_short(payload.get('result'), 80)}"
    rest = {k: v for k, v in payload.items() if k != "type"}
    return kind, _short(rest, 100)


def _tokens(usage: dict[str, Any] | None) -> str:
    value = (usage or {}).get("total_tokens")
    return str(value) if isinstance(value, int) else "-"


def print_transcript(console: Console, bundle: transfer.Bundle) -> None:
    """A readable transcript: each turn's header, then its steps."""
    rec = bundle.record
    console.print(
        f"[bold]{rec.id}[/] tenant={escape(rec.tenant)} user={escape(str(rec.user))} "
        f"mode={rec.mode} model={escape(rec.model)} turns={rec.turn_count}"
    )
    settings = dict(rec.config)
    if isinstance(settings.get("tools"), list):
        settings["tools"] = [
            (t.get("name") or t.get("type")) if isinstance(t, dict) else t
            for t in settings["tools"]
        ]
    if settings:
        console.print(f"[dim]settings: {escape(_short(settings, 200))}[/]")
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for step in bundle.steps:
        by_turn.setdefault(step.turn_seq, []).append(step.payload)
    styles = {"you": "bold cyan", "model": "bold green", "thought": "dim", "call": "yellow"}
    markers = {c.last_turn: c for c in bundle.compactions}
    for turn in bundle.turns:
        if turn.seq - 1 in markers:
            from ._context import compaction_marker

            console.print(f"[bold magenta]{escape(compaction_marker(markers[turn.seq - 1]))}[/]")
        console.print(
            f"[dim]── turn {turn.seq} · {turn.mode_used} · {turn.reason} · {turn.status} · "
            f"{_tokens(turn.usage)} tokens · {turn.interaction_id or 'no interaction id'}[/]"
        )
        for payload in by_turn.get(turn.seq, []):
            label, line = describe_step(payload)
            style = styles.get(label, "magenta")
            console.print(f"[{style}]{escape(label)}:[/] {escape(line)}")


def bundle_json(bundle: transfer.Bundle) -> dict[str, Any]:
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for step in bundle.steps:
        by_turn.setdefault(step.turn_seq, []).append(step.payload)
    return {
        "conversation": bundle.record.model_dump(mode="json"),
        "turns": [
            {**t.model_dump(mode="json"), "steps": by_turn.get(t.seq, [])} for t in bundle.turns
        ],
    }


# --------------------------------------------------------------------------- the group


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: convostore demo   (then: convostore ls --store sqlite:///convostore-demo.db "
    "--tenant demo)",
)
@click.version_option(package_name="convostore")
@click.option("-v", "--verbose", is_flag=True, help="Log what convostore does to stderr.")
def cli(verbose: bool) -> None:
    """Keep Gemini Interactions API conversations alive: inspect, move, check and clean up
    stored conversations; chat; run the demo.

    The store comes from --store URL, else env CONVOSTORE_URL, else ./convostore.db (SQLite).
    Exit status: 0 ok, 1 the command failed, 2 usage error.
    """
    logger = logging.getLogger("convostore")
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    elif not logger.handlers:
        # without any handler Python prints warnings (e.g. a chain fallback) to stderr;
        # the commands report what matters themselves
        logger.addHandler(logging.NullHandler())

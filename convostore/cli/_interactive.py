"""``chat`` and ``demo``."""

from __future__ import annotations

from contextlib import ExitStack, suppress
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape

from .. import _transfer as transfer
from .._exceptions import (
    APIError,
    StoreError,
)
from .._sync.store import Store
from ..models import MODES

if TYPE_CHECKING:
    from .._sync.conversation import Conversation

from ._common import (
    _client,
    _out,
    _tokens,
    base_url_option,
    cli,
    open_existing,
    print_transcript,
    store_option,
    tenant_option,
)

# --------------------------------------------------------------------------- chat & demo


@cli.command(
    "chat",
    epilog="Examples: convostore chat --emulator;  convostore chat --resume ID --emulator;  "
    "GEMINI_API_KEY=… convostore chat --mode auto",
)
@store_option
@tenant_option
@click.option("--user", default=None, help="User id recorded on a new conversation.")
@click.option("--resume", "resume_id", default=None, metavar="ID", help="Continue a conversation.")
@click.option("--mode", type=click.Choice(MODES), default=None, help="server, stateless or auto.")
@click.option("--model", default=None, help="Model of a new conversation (or switch to it).")
@click.option("--system", "system_instruction", default=None, help="System instruction.")
@click.option("--emulator", "use_emulator", is_flag=True, help="Start a local emulator.")
@base_url_option
def chat_command(
    store_url: str,
    tenant: str,
    user: str | None,
    resume_id: str | None,
    mode: str | None,
    model: str | None,
    system_instruction: str | None,
    use_emulator: bool,
    base_url: str | None,
) -> int:
    """Chat in the terminal; answers stream as they arrive. Commands: /history, /fork N,
    /mode M, /usage, /id, /quit (or Ctrl-D). Resume later with --resume ID."""
    from .._sync.client import InteractionsClient
    from .._sync.conversations import DEFAULT_MODEL, Conversations

    with ExitStack() as stack:
        if use_emulator:
            from ..emulator import Emulator

            emu = stack.enter_context(Emulator())
            client = InteractionsClient(api_key="emulator", base_url=emu.url)
        else:
            client = _client(base_url)
        stack.callback(client.close)
        store = open_existing(store_url, create=True)
        stack.callback(store.close)
        convos = Conversations(store, client, model=model or DEFAULT_MODEL)
        if resume_id is not None:
            conv = convos.get(resume_id, tenant=tenant)
            if mode is not None or model is not None:
                conv.update(mode=mode, model=model)
        else:
            conv = convos.create(
                tenant=tenant,
                user=user,
                mode=mode or "auto",  # type: ignore[arg-type]
                system_instruction=system_instruction,
            )
        return _chat_loop(_out(), conv, store)
    raise AssertionError("unreachable")  # pragma: no cover


_CHAT_HELP = "commands: /history, /fork N, /mode server|stateless|auto, /usage, /id, /quit"


def _chat_loop(console: Console, conv: Conversation, store: Store) -> int:
    with suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (line editing and history for input())
    verb = "resumed" if conv.record.turn_count else "new"
    console.print(
        f"{verb} conversation [bold]{conv.id}[/] (mode {conv.record.mode}, "
        f"{conv.record.turn_count} turn(s)); {_CHAT_HELP}"
    )
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            click.echo()
            break
        if not line:
            continue
        if line.startswith("/"):
            next_conv = _chat_command(console, conv, store, line)
            if next_conv is None:
                break
            conv = next_conv
            continue
        try:
            click.echo("model> ", nl=False)
            with conv.stream(line) as events:
                for delta in events.text_deltas():
                    click.echo(delta, nl=False)
            click.echo()
            turn = events.turn
            if turn is not None:
                console.print(
                    f"[dim]turn {turn.seq} · {turn.mode_used} · {turn.reason} · "
                    f"{_tokens(turn.usage)} tokens[/]"
                )
        except (APIError, StoreError) as exc:
            click.echo()
            console.print(f"[red]error:[/] {escape(str(exc))} (nothing was stored)")
        except KeyboardInterrupt:
            click.echo()
            console.print("[yellow]cancelled[/] (nothing was stored)")
    console.print(f"bye; resume with: convostore chat --resume {conv.id}")
    return 0


def _chat_command(
    console: Console, conv: Conversation, store: Store, line: str
) -> Conversation | None:
    """Run a /command; the conversation to continue with, or None to quit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if name in ("/quit", "/exit", "/q"):
            return None
        if name == "/id":
            console.print(conv.id)
        elif name == "/history":
            print_transcript(console, transfer.load(store, conv.refresh()))
        elif name == "/usage":
            usage = conv.usage()
            console.print(", ".join(f"{k}={v}" for k, v in sorted(usage.items())) or "no usage")
        elif name == "/mode":
            conv.update(mode=arg)
            console.print(f"mode is now {conv.record.mode}")
        elif name == "/fork":
            fork = conv.fork(at_turn=int(arg) if arg else None)
            console.print(f"forked at turn {fork.record.turn_count}: now in [bold]{fork.id}[/]")
            return fork
        else:
            console.print(_CHAT_HELP)
    except ValueError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
    return conv


@cli.command(
    "demo", epilog="Example: convostore demo   (or: GEMINI_API_KEY=… convostore demo --live)"
)
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="Store URL (default: a fresh sqlite:///convostore-demo.db).",
)
@click.option("--live", is_flag=True, help="Use the real API (needs GEMINI_API_KEY).")
@click.option("--model", default=None, help="Model to use (default: convostore's default).")
def demo_command(store_url: str | None, live: bool, model: str | None) -> int:
    """Show what convostore does, in a few screens: the three modes, restart and resume,
    expiry and fallback, a fork, a streamed answer, and what is stored. Offline by default
    (a local emulator and a SQLite file)."""
    from .._demo import run_demo

    return run_demo(Console(highlight=False), store_url=store_url, live=live, model=model)

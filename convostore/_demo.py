"""``convostore demo``: a few screens that show what convostore does.

Offline by default: a local emulator (``convostore.emulator``) and a fresh SQLite file. With
``--live`` and ``GEMINI_API_KEY`` the same screens run against the real API (the forced expiry,
which only the emulator can do, is skipped).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from ._exceptions import ConfigurationError
from ._registry import open_store
from ._sync.client import InteractionsClient
from ._sync.conversation import Conversation
from ._sync.conversations import DEFAULT_MODEL, Conversations
from ._sync.store import Store
from ._urls import redact
from .models import Turn

__all__ = ["DEMO_STORE", "run_demo"]

DEMO_STORE = "sqlite:///convostore-demo.db"
"""The demo's store when ``--store`` is not given; recreated on every run."""

TENANT = "demo"
SEED = ("I have 2 dogs in my house.", "How many paws are in my house?")
SYSTEM = "Answer briefly."


def _fresh_sqlite(url: str) -> None:
    path = Path(url.split("///", 1)[1])
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _answer(text: str) -> str:
    """The emulator's answer in short (``Seen n user turn(s); digest d``), else the text."""
    try:
        from .emulator import parse_answer

        seen, digest, _ = parse_answer(text)
    except (ImportError, ConfigurationError, ValueError):
        flat = " ".join(text.split())
        return flat if len(flat) <= 70 else flat[:69] + "…"
    return f"Seen {seen} user turn(s); digest {digest}"


def _digest(text: str) -> str | None:
    try:
        from .emulator import parse_answer

        return parse_answer(text)[1]
    except (ImportError, ConfigurationError, ValueError):
        return None


def _turn_line(name: str, turn: Turn, carried: str = "") -> str:
    line = (
        f"{name} turn {turn.seq}: [bold]{turn.mode_used}[/] ({turn.reason}) -> "
        f"{escape(_answer(turn.text))}"
    )
    return f"{line}\n    [dim]request: {carried}[/]" if carried else line


class _Demo:
    def __init__(self, console: Console, *, store_url: str, emulator: Any, model: str) -> None:
        self.console = console
        self.store_url = store_url
        self.emu = emulator
        self.model = model
        self.convs: dict[str, Conversation] = {}
        self.stack = ExitStack()
        self.convos = self._open()

    def _open(self) -> Conversations:
        if self.emu is not None:
            client = InteractionsClient(api_key="demo", base_url=self.emu.url, max_retries=1)
        else:
            client = InteractionsClient()
        store: Store = open_store(self.store_url)
        self.stack.callback(store.close)
        self.stack.callback(client.close)
        return Conversations(store, client, model=self.model)

    def close(self) -> None:
        self.stack.close()

    def _carried(self) -> str:
        """What the last create request carried (emulator only: it records requests)."""
        if self.emu is None:
            return ""
        posts = [r for r in self.emu.requests if r.method == "POST"]
        if not posts or not isinstance(posts[-1].body, dict):
            return ""
        body = posts[-1].body
        steps = body.get("input")
        count = len(steps) if isinstance(steps, list) else 1
        if body.get("previous_interaction_id"):
            return f"head id + {count} new step(s)"
        return f"store:{str(body.get('store')).lower()} + {count} step(s)"

    def modes(self) -> None:
        self.console.rule("[bold]1. One exchange, three modes")
        table = Table(box=None, header_style="bold")
        for column in ("mode", "turn 2 travelled as", "request carried", "answer to turn 2"):
            table.add_column(column)
        digests: dict[str, str | None] = {}
        for mode in ("server", "stateless", "auto"):
            conv = self.convos.create(
                tenant=TENANT,
                user="alice",
                mode=mode,
                system_instruction=SYSTEM,
            )
            self.convs[mode] = conv
            conv.send(SEED[0])
            second = conv.send(SEED[1])
            digests[mode] = _digest(second.text)
            table.add_row(
                mode,
                f"{second.mode_used} ({second.reason})",
                self._carried(),
                escape(_answer(second.text)),
            )
        self.console.print(f'user: "{SEED[0]}"  then  "{SEED[1]}"')
        self.console.print(table)
        if digests["server"] is not None:
            same = digests["server"] == digests["stateless"] == digests["auto"]
            mark = "[green]identical[/]" if same else "[red]different[/]"
            self.console.print(
                f"The second request carried the first turn in every mode; digests of what the "
                f"model saw: {mark} ({digests['server']})."
            )

    def restart(self) -> None:
        self.console.rule("[bold]2. Restart and resume")
        conv = self.convs["server"]
        head = conv.record.head_interaction_id
        self.close()
        self.stack = ExitStack()
        self.convos = self._open()
        self.console.print(
            f"Closed the store and the client; reopened {escape(redact(self.store_url))}."
        )
        conv = self.convos.get(conv.id, tenant=TENANT)
        self.convs["server"] = conv
        self.console.print(
            f"convos.get({conv.id}) (server): {conv.record.turn_count} turns, head {head}"
        )
        turn = conv.send("And a cat.")
        chained = turn.record.previous_interaction_id == head
        self.console.print(_turn_line("server", turn, self._carried()))
        self.console.print(
            "Chained from the same head: " + ("[green]yes[/]" if chained else "[red]no[/]")
        )
        for mode in ("stateless", "auto"):
            self.convs[mode] = self.convos.get(self.convs[mode].id, tenant=TENANT)

    def expiry(self) -> None:
        self.console.rule("[bold]3. The server forgets; the conversation does not")
        conv = self.convs["auto"]
        if self.emu is None:
            self.console.print("Skipped with --live: only the emulator can expire interactions.")
            return
        head = conv.record.head_interaction_id
        self.emu.expire(head)
        self.console.print(
            f"emu.expire({head}): the server now answers 404 for the auto conversation's head."
        )
        turn = conv.send("Do they like walks?")
        self.console.print(_turn_line("auto", turn, self._carried()))
        turn = conv.send("Good night.")
        self.console.print(_turn_line("auto", turn, self._carried()))

    def fork(self) -> None:
        self.console.rule("[bold]4. Fork at turn 1")
        parent = self.convs["server"]
        fork = parent.fork(at_turn=1)
        self.convs["fork"] = fork
        turn = fork.send("How many ears are in my house?")
        self.console.print(f"fork {fork.id} of {parent.id} (server) at turn 1")
        self.console.print(_turn_line("fork", turn, self._carried()))
        self.console.print(
            f"The original still has {parent.refresh().turn_count} turns; "
            f"the fork has {fork.refresh().turn_count}."
        )

    def stream(self) -> None:
        self.console.rule("[bold]5. A streamed answer")
        conv = self.convs["stateless"]
        self.console.print("stateless conversation, user: What do you remember about my house?")
        self.console.print("model: ", end="")
        deltas = 0
        with conv.stream("What do you remember about my house?") as events:
            for delta in events.text_deltas():
                deltas += 1
                self.console.print(escape(delta), end="", soft_wrap=True)
        self.console.print()
        turn = events.turn
        if turn is not None:
            self.console.print(
                f"[dim]{deltas} text deltas; committed as turn {turn.seq} "
                f"({turn.mode_used}, {turn.reason}) when the stream completed[/]"
            )

    def stored(self) -> None:
        self.console.rule("[bold]6. What is stored")
        table = Table(header_style="bold")
        for column in ("conversation", "turn", "mode_used", "reason", "interaction", "tokens"):
            table.add_column(column)
        for name, conv in self.convs.items():
            for turn in conv.turns():
                tokens = (turn.usage or {}).get("total_tokens")
                table.add_row(
                    f"{name} {conv.id[:8]}" if turn.seq == 1 else "",
                    str(turn.seq),
                    turn.mode_used,
                    str(turn.reason),
                    turn.interaction_id or "(not stored)",
                    str(tokens) if tokens is not None else "-",
                )
            table.add_section()
        self.console.print(table)


def run_demo(
    console: Console, *, store_url: str | None, live: bool, model: str | None = None
) -> int:
    """Run the demo; return the exit status.

    Raises:
        ConfigurationError: ``live`` without ``GEMINI_API_KEY``.
    """
    if live and not os.environ.get("GEMINI_API_KEY"):
        raise ConfigurationError("--live needs GEMINI_API_KEY in the environment")
    if store_url is None:
        store_url = DEMO_STORE
        _fresh_sqlite(store_url)
    with ExitStack() as stack:
        emu = None
        if not live:
            from .emulator import Emulator

            emu = stack.enter_context(Emulator())
        where = "the real Interactions API" if emu is None else f"a local emulator at {emu.url}"
        console.print(
            Panel.fit(
                f"convostore demo: [bold]{where}[/], store [bold]{escape(redact(store_url))}"
                f"[/], tenant [bold]{TENANT}[/]",
                title="convostore",
            )
        )
        demo = _Demo(console, store_url=store_url, emulator=emu, model=model or DEFAULT_MODEL)
        stack.callback(lambda: demo.close())
        demo.modes()
        demo.restart()
        demo.expiry()
        demo.fork()
        demo.stream()
        demo.stored()
    flag = f"--store {redact(store_url)} --tenant {TENANT}"
    some_id = demo.convs["server"].id
    console.rule("[bold]Explore what was stored")
    for command in (
        f"convostore ls {flag}",
        f"convostore show {some_id} {flag}",
        f"convostore verify {flag}",
        f"convostore export {flag} -o demo.jsonl",
        f"convostore chat --resume {some_id} {flag} --emulator",
    ):
        console.print(escape(command), soft_wrap=True)
    return 0

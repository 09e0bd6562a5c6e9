"""Data the web view's tests read: conversations made through the emulator, a conversation
written as an import writes it (for turn statuses the emulator never produces), tampering by
direct SQL, and tokens. Shared by tests/test_web.py and tests/test_web_browser.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from convostore import _migrate
from convostore._core import audit
from convostore._sync.client import InteractionsClient
from convostore._sync.conversations import Conversations
from convostore._sync.store import Store
from convostore.models import ConversationRecord, Reason, StoredStep, TurnRecord
from convostore.web import AccessLog, Tokens, create_app

ROOT_TOKEN = "root-token-for-the-web-tests-0001"
ACME_TOKEN = "acme-token-for-the-web-tests-0002"
GLOBEX_TOKEN = "globex-token-for-the-web-tests-03"
TOKENS_JSON = json.dumps(
    {
        "root": {"token": ROOT_TOKEN, "all_tenants": True},
        "ann": {"token": ACME_TOKEN, "tenants": ["acme"]},
        "gil": {"token": GLOBEX_TOKEN, "tenants": ["globex"]},
    }
)
IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass
class Seeded:
    url: str
    root: str
    """acme: three turns, the root of the fork tree."""
    fork: str
    """acme: forked from ``root`` at turn 1."""
    grandchild: str
    """acme: forked from ``fork`` at turn 2."""
    tools: str
    """acme: a thought, a function call and its result, a picture."""
    tamper: str
    """acme: two turns; tests alter its step 3."""
    imported: str
    """acme: a chain break and a failed turn, written as an import writes."""
    globex: str
    """globex: one turn."""


def imported_conversation(
    conversation_id: str, *, tenant: str, turns: int, statuses: dict[int, tuple[str, str]]
) -> tuple[ConversationRecord, list[TurnRecord], list[StoredStep]]:
    """A conversation of ``turns`` turns (a user and a model step each) with audit hashes
    chained as convostore chains them; ``statuses`` maps a seq to (reason, status)."""
    start = datetime.now(UTC) - timedelta(minutes=turns)
    records: list[TurnRecord] = []
    steps: list[StoredStep] = []
    previous: str | None = None
    for seq in range(1, turns + 1):
        reason, status = statuses.get(seq, ("stateless_mode", "completed"))
        payloads = [
            {"type": "user_input", "content": [{"type": "text", "text": f"question {seq}"}]},
            {"type": "model_output", "content": [{"type": "text", "text": f"answer {seq}"}]},
        ]
        mine = [
            StoredStep(
                conversation_id=conversation_id,
                seq=len(steps) + i + 1,
                turn_seq=seq,
                type=p["type"],
                payload=p,
            )
            for i, p in enumerate(payloads)
        ]
        turn = TurnRecord(
            conversation_id=conversation_id,
            seq=seq,
            interaction_id=None,
            mode_used="stateless",
            reason=Reason(reason),
            status=status,
            usage={"total_tokens": 10 * seq},
            created_at=start + timedelta(minutes=seq),
        )
        previous = audit.turn_hash(previous, turn, mine)
        records.append(turn.model_copy(update={"audit_hash": previous}))
        steps.extend(mine)
    record = ConversationRecord(
        id=conversation_id,
        tenant=tenant,
        user="importer",
        mode="stateless",
        model="gemini-3-flash-preview",
        version=turns,
        turn_count=turns,
        step_count=len(steps),
        last_turn_hash=previous,
        created_at=start,
        updated_at=start + timedelta(minutes=turns),
        expires_at=datetime.now(UTC) + timedelta(days=30),
    )
    return record, records, steps


def seed(url: str, emulator_url: str, *, store: Store | None = None) -> Seeded:
    """Fill the store at ``url`` (or ``store``) with the conversations of :class:`Seeded`."""
    with (
        InteractionsClient(api_key="k", base_url=emulator_url, max_retries=0) as client,
        Conversations(store if store is not None else url, client) as convos,
    ):
        root = convos.create(tenant="acme", user="u1", system_instruction="Answer briefly.")
        root.send("I have 2 dogs in my house.")
        root.send("How many paws are in my house?")
        root.send("And a cat.")
        fork = root.fork(at_turn=1)
        fork.send("Actually I have 3 dogs.")
        grandchild = fork.fork(at_turn=2)
        grandchild.send("Make it four dogs.")
        tools = convos.create(tenant="acme", user="u2", tools=[WEATHER])
        turn = tools.send("Please think: what is the weather in Paris? call get_weather")
        call = turn.function_calls[0]
        tools.send(
            [
                {
                    "type": "function_result",
                    "call_id": call.id,
                    "name": call.name,
                    "result": {"temperature_c": 18, "sky": "clear"},
                }
            ]
        )
        tools.send(
            [
                {"type": "text", "text": "And what is in this picture?"},
                {"type": "image", "mime_type": "image/png", "data": IMAGE},
            ]
        )
        tamper = convos.create(tenant="acme", user="u3", ttl=timedelta(days=7))
        tamper.send("Remember the number 41.")
        tamper.send("Which number did I ask you to remember?")
        globex = convos.create(tenant="globex", user="g1")
        globex.send("The globex launch plan is secret.")
        record, turns, steps = imported_conversation(
            "imported-1",
            tenant="acme",
            turns=3,
            statuses={2: ("chain_broken", "completed"), 3: ("stateless_mode", "failed")},
        )
        convos.store.create_conversation(record, turns=turns, steps=steps)
        return Seeded(
            url=url,
            root=root.id,
            fork=fork.id,
            grandchild=grandchild.id,
            tools=tools.id,
            tamper=tamper.id,
            imported="imported-1",
            globex=globex.id,
        )


def tamper_step(url: str, conversation_id: str, seq: int, text: str) -> None:
    """Change a stored step's text with a direct SQL UPDATE, beneath convostore."""
    from convostore._sql import normalize_url, steps

    engine = sa.create_engine(normalize_url(url, is_async=False))
    try:
        with engine.begin() as conn:
            row = conn.execute(
                sa.select(steps.c.payload).where(
                    steps.c.conversation_id == conversation_id, steps.c.seq == seq
                )
            ).one()
            payload: Any = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
            payload["content"] = [{"type": "text", "text": text}]
            conn.execute(
                sa.update(steps)
                .where(steps.c.conversation_id == conversation_id, steps.c.seq == seq)
                .values(payload=payload)
            )
    finally:
        engine.dispose()


@contextmanager
def migrated_database(server_url: str, suffix: str) -> Iterator[str]:
    """A migrated database of its own beside the session's, dropped afterwards."""
    base, _, rest = server_url.rpartition("/")
    name, _, query = rest.partition("?")
    own = f"{name}_{suffix}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote(own)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    url = f"{base}/{own}" + (f"?{query}" if query else "")
    try:
        _migrate.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
        admin.dispose()


def make_app(store: Store, log_path: Any) -> Any:
    return create_app(
        store,
        access_log=AccessLog(log_path),
        tokens=Tokens.from_json(TOKENS_JSON, source="tests"),
    )

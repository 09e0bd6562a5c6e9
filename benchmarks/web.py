"""The auditor's web view on a large store: how long its pages take to open.

    python -m benchmarks.web                     # 10,000 conversations (a few minutes)
    python -m benchmarks.web --full              # 100,000 conversations
    python benchmarks/web.py --only sqlite --conversations 20000

Per backend (SQLite, PostgreSQL; a scratch database as the other benchmarks make one): the
store gets N conversations across 10 tenants (inserted in bulk beneath convostore, rows as the
store writes them) and one conversation of 10,000 steps (5,000 turns, written through
``create_conversation`` with its audit chain). Each page is requested through the app
in-process (Starlette's test client: routing, authentication, the store, verification and
rendering; no socket) and timed; the table shows the median with min and max. The target is
the issue's: a page opens in under a second.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._backends import Unavailable, open_backend
from benchmarks._timing import Stat

TOKEN = "benchmark-token-0123456789abcdef"
TENANTS = 10


def _bulk_conversations(url: str, count: int) -> None:
    """``count`` conversations, written as the SQL store writes its rows, in batches."""
    import sqlalchemy as sa

    from convostore._sql import conversation_row, conversations, normalize_url
    from convostore.models import ConversationRecord

    engine = sa.create_engine(normalize_url(url, is_async=False))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        batch: list[dict[str, Any]] = []
        for i in range(count):
            at = start + timedelta(seconds=i)
            record = ConversationRecord(
                id=f"conv-{i:07d}",
                tenant=f"tenant-{i % TENANTS}",
                user=f"user-{i % 1000}",
                mode=("auto", "server", "stateless")[i % 3],
                model="gemini-3-flash-preview",
                version=2,
                turn_count=0,
                created_at=at,
                updated_at=at,
            )
            batch.append(conversation_row(record))
            if len(batch) == 5000 or i == count - 1:
                with engine.begin() as conn:
                    conn.execute(sa.insert(conversations), batch)
                batch = []
    finally:
        engine.dispose()


def _long_conversation(store: Any, long_turns: int) -> str:
    from convostore._core import audit
    from convostore.models import ConversationRecord, StoredStep, TurnRecord

    cid = f"long-{2 * long_turns}-steps"
    start = datetime(2026, 6, 1, tzinfo=UTC)
    turns: list[TurnRecord] = []
    steps: list[StoredStep] = []
    previous: str | None = None
    for seq in range(1, long_turns + 1):
        payloads = [
            {"type": "user_input", "content": [{"type": "text", "text": f"Question {seq}? " * 8}]},
            {"type": "model_output", "content": [{"type": "text", "text": f"Answer {seq}. " * 60}]},
        ]
        mine = [
            StoredStep(
                conversation_id=cid,
                seq=len(steps) + k + 1,
                turn_seq=seq,
                type=p["type"],
                payload=p,
            )
            for k, p in enumerate(payloads)
        ]
        turn = TurnRecord(
            conversation_id=cid,
            seq=seq,
            mode_used="stateless",
            reason="stateless_mode",  # type: ignore[arg-type]
            status="completed",
            usage={"total_tokens": 300},
            created_at=start + timedelta(seconds=seq),
        )
        previous = audit.turn_hash(previous, turn, mine)
        turns.append(turn.model_copy(update={"audit_hash": previous}))
        steps.extend(mine)
    record = ConversationRecord(
        id=cid,
        tenant="tenant-0",
        user="user-long",
        mode="stateless",
        model="gemini-3-flash-preview",
        version=long_turns,
        turn_count=long_turns,
        step_count=len(steps),
        last_turn_hash=previous,
        created_at=start,
        updated_at=start + timedelta(seconds=long_turns),
    )
    store.create_conversation(record, turns=turns, steps=steps)
    return cid


def _timed(get: Callable[[], Any], repeat: int) -> tuple[Stat, Any]:
    samples = []
    answer = None
    for _ in range(repeat):
        started = time.perf_counter()
        answer = get()
        samples.append(time.perf_counter() - started)
    return Stat.of(samples), answer


def measure(
    backend: str, conversations: int, repeat: int, long_turns: int = 5000
) -> list[tuple[str, Stat, str]]:
    from starlette.testclient import TestClient

    import convostore as cs
    from convostore.web import AccessLog, ReadOnlyStore, Tokens, create_app
    from convostore.web._queries import verify

    rows: list[tuple[str, Stat, str]] = []
    with open_backend(backend) as env, tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        _bulk_conversations(env.url, conversations)
        store = cs.open_store(env.url)
        long_id = _long_conversation(store, long_turns)
        print(
            f"  {backend}: {conversations:,} conversations + one of {2 * long_turns:,} steps "
            f"loaded in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        tokens = Tokens.from_json(
            f'{{"bench": {{"token": "{TOKEN}", "all_tenants": true}}}}', source="bench"
        )
        app = create_app(store, access_log=AccessLog(Path(folder) / "reads.jsonl"), tokens=tokens)
        auth = {"authorization": f"Bearer {TOKEN}"}
        with TestClient(app) as client:

            def get(path: str) -> Callable[[], Any]:
                def call() -> Any:
                    answer = client.get(path, headers=auth)
                    assert answer.status_code == 200, (path, answer.status_code)
                    return answer

                return call

            stat, _ = _timed(get("/conversations"), repeat)
            rows.append(("list, first page (all tenants)", stat, "50 rows"))
            stat, _ = _timed(get("/conversations?tenant=tenant-3"), repeat)
            rows.append(("list, first page (one tenant)", stat, "50 rows"))
            # deep in the listing: follow the cursor 100 pages (or to the end), time that page
            path, depth = "/conversations", 1
            for _ in range(99):
                page = client.get(path, headers=auth).text
                more = re.search(r'href="(/conversations\?[^"]*cursor=[^"]+)"', page)
                if more is None:
                    break
                path, depth = more.group(1).replace("&amp;", "&"), depth + 1
            stat, _ = _timed(get(path), repeat)
            rows.append((f"list, page {depth} (all tenants, keyset)", stat, "50 rows"))
            stat, _ = _timed(get("/conversations?tenant=tenant-3&user=user-3"), repeat)
            rows.append(("list, one user", stat, ""))
            stat, _ = _timed(get("/conversations?mode=server"), repeat)
            rows.append(("list, filtered by mode (walks the listing)", stat, "50 rows"))
            stat, answer = _timed(get("/conversations?model=none"), repeat)
            examined = re.search(r"Examined ([\d,]+)", answer.text)
            rows.append(
                (
                    "list, filter matching nothing (one budget)",
                    stat,
                    f"{examined.group(1) if examined else 'all'} examined",
                )
            )
            long_path = f"/t/tenant-0/c/{long_id}"
            started = time.perf_counter()
            answer = get(long_path)()
            opened = time.perf_counter() - started
            rows.append(
                (
                    f"transcript of {2 * long_turns:,} steps, first open",
                    Stat.of([opened]),
                    "verification starts beside it",
                )
            )
            while "Verifying" in answer.text:
                time.sleep(0.05)
                answer = get(long_path)()
            assert "Verified intact" in answer.text
            stat, answer = _timed(get(long_path), repeat)
            rows.append(
                (f"transcript of {2 * long_turns:,} steps, first page", stat, "with its verdict")
            )
            stat, _ = _timed(get(f"{long_path}?after={long_turns - 25}"), repeat)
            rows.append((f"transcript of {2 * long_turns:,} steps, last page", stat, ""))
            reader = ReadOnlyStore(cs.open_store(env.url))
            try:
                record = reader.get_conversation(long_id, tenant="tenant-0")
                stat, _ = _timed(lambda: verify(reader, record), max(1, repeat // 2))
            finally:
                reader.close()
            rows.append(
                (
                    f"verification of {2 * long_turns:,} steps (in the background)",
                    stat,
                    "not a page: at most once a minute per conversation",
                )
            )
            # the oldest conversation of user-0: its forks are looked for among every newer
            # conversation of that user (1 in 1,000 of the store)
            stat, _ = _timed(get("/t/tenant-0/c/conv-0000000/forks"), repeat)
            walked = (conversations + 999) // 1000
            rows.append(("fork tree (walks the user's conversations)", stat, f"{walked:,} walked"))
            stat, answer = _timed(get(f"{long_path}/export"), max(1, repeat // 2))
            size = len(answer.content) / 1e6
            rows.append((f"export of {2 * long_turns:,} steps", stat, f"{size:.1f} MB"))
            stat, answer = _timed(get(f"{long_path}/case"), max(1, repeat // 2))
            rows.append(
                (
                    f"case file of {2 * long_turns:,} steps",
                    stat,
                    f"{len(answer.content) / 1e6:.1f} MB",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.web", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--full", action="store_true", help="100,000 conversations")
    parser.add_argument("--only", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--long-turns", type=int, default=5000, help="turns of the long conversation (2 steps each)"
    )
    args = parser.parse_args(argv)
    count = 100_000 if args.full else args.conversations
    print(
        f"convostore web view, {count:,} conversations + one of {2 * args.long_turns:,} steps; "
        f"median [min..max] of {args.repeat} requests; target: under 1 s"
    )
    print("| backend | page | median [min..max] | note | < 1 s |")
    print("|---|---|---|---|---|")
    for backend in args.only or ["sqlite", "postgresql"]:
        try:
            rows = measure(backend, count, args.repeat, args.long_turns)
        except Unavailable as exc:
            print(f"| {backend} | skipped: {exc} | | | |")
            continue
        for name, stat, note in rows:
            verdict = "ok" if stat.median < 1 else "MISS"
            if "in the background" in name or "export" in name or "case file" in name:
                verdict = "n/a"  # not a page that opens: the whole history, by design
            print(
                f"| {backend} | {name} | {stat.median * 1000:,.1f} ms "
                f"[{stat.min * 1000:,.1f}..{stat.max * 1000:,.1f}] | {note} | {verdict} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

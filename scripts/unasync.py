"""Generate convostore/_sync/ from convostore/_async/ by a table of substitutions.

    python scripts/unasync.py          # rewrite convostore/_sync/
    python scripts/unasync.py --check  # exit 1 if convostore/_sync/ is out of date

The async code is the source; never edit the generated files by hand.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "convostore" / "_async"
TARGET = ROOT / "convostore" / "_sync"

HEADER = "# Generated from convostore/_async by scripts/unasync.py. Do not edit.\n"

# Applied in order, as regular expressions on whole words where it matters.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"\bfrom \.\._async\b", "from .._sync"),
    (r"\bconvostore\._async\b", "convostore._sync"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\b__aiter__\b", "__iter__"),
    (r"\b__anext__\b", "__next__"),
    (r"\bStopAsyncIteration\b", "StopIteration"),
    (r"\banext\(", "next("),
    (r"\baclose\b", "close"),
    (r"\baiter_lines\b", "iter_lines"),
    (r"\baiter_bytes\b", "iter_bytes"),
    (r"\baiter_raw\b", "iter_raw"),
    (r"\baread\b", "read"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\bAsyncExitStack\b", "ExitStack"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncIterable\b", "Iterable"),
    (r"\bAsyncGenerator\[Any, None\]", "Generator[Any, None, None]"),
    (r"\bAsyncGenerator\b", "Generator"),
    (r"\bredis\.asyncio\b", "redis"),
    (r"\bsqlalchemy\.ext\.asyncio\b", "sqlalchemy"),
    (r"\bcreate_async_engine\b", "create_engine"),
    (r"\bAsyncEngine\b", "Engine"),
    (r"\bAsyncConnection\b", "Connection"),
    (r"\bAsyncRedis\b", "Redis"),
    (r"\b(\w+)\.run_sync\(([\w.]+)\)", r"\2(\1)"),
    (r"\bIS_ASYNC = True\b", "IS_ASYNC = False"),
    (r"\bis_async=True\b", "is_async=False"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\basyncio\.Lock\b", "threading.Lock"),
    (r"\bimport asyncio\b", "import threading\nimport time"),
    (r"\bopen_async_store\b", "open_store"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r"\basync_([a-z]\w*)", r"\1"),
    (r"\b_async_\b", "_sync_"),
]

_COMPILED = [(re.compile(pattern), repl) for pattern, repl in SUBSTITUTIONS]


def unasync_text(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if "# unasync: keep" in line:
            lines.append(line)
            continue
        for pattern, repl in _COMPILED:
            line = pattern.sub(repl, line)
        lines.append(line)
    return HEADER + "".join(lines)


def expected() -> dict[Path, str]:
    return {
        TARGET / src.relative_to(SOURCE): unasync_text(src.read_text())
        for src in sorted(SOURCE.rglob("*.py"))
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    wanted = expected()
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    extra = [p for p in TARGET.rglob("*.py") if p not in wanted]
    if check:
        for p in stale:
            print(f"out of date: {p.relative_to(ROOT)}")
        for p in extra:
            print(f"not generated from any source: {p.relative_to(ROOT)}")
        if stale or extra:
            print("run: python scripts/unasync.py")
            return 1
        return 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(ROOT)}")
    for p in extra:
        p.unlink()
        print(f"removed {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

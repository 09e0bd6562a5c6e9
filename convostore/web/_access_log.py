"""The auditors' own reads, appended to a JSON Lines file.

One line per read: ``{"time", "principal", "action", "tenant", "conversation_id", "outcome",
"detail", "client"}``. The file is opened for appending (created ``0600``), each line written
whole and flushed to disk before the page is served. It never holds a token or a session id.
It lives outside the store on purpose: the store records conversations, not who read them.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError

__all__ = ["AccessLog", "Entry"]

_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Entry:
    offset: int
    """Byte offset of the line in the file (pages of the log page go backwards from it)."""
    data: dict[str, Any]


class AccessLog:
    """Append-only JSON Lines log at ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot open the access log {path}: {exc.strerror or exc}"
            ) from exc
        os.close(fd)

    def write(
        self,
        *,
        principal: str | None,
        action: str,
        tenant: str | None = None,
        conversation_id: str | None = None,
        outcome: str = "ok",
        detail: str | None = None,
        client: str | None = None,
    ) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "principal": principal,
            "action": action,
            "tenant": tenant,
            "conversation_id": conversation_id,
            "outcome": outcome,
            "detail": detail,
            "client": client,
        }
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def read_back(self, *, before: int | None = None, limit: int = 100) -> list[Entry]:
        """Up to ``limit`` entries, newest first, of the lines that start before byte
        ``before`` (default: the end). Reads only the blocks those lines are in."""
        entries: list[Entry] = []
        with self.path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            position = size if before is None else max(0, min(before, size))
            carry = b""  # the start of a line that began in a block not read yet
            while position > 0 and len(entries) < limit:
                start = max(0, position - _BLOCK)
                handle.seek(start)
                data = handle.read(position - start) + carry
                base = start
                if start > 0:
                    cut = data.find(b"\n")
                    if cut < 0:
                        carry, position = data, start
                        continue
                    carry, data, base = data[:cut], data[cut + 1 :], start + cut + 1
                found: list[Entry] = []
                offset = base
                for raw in data.split(b"\n"):
                    if raw.strip():
                        found.append(Entry(offset, _parse(raw)))
                    offset += len(raw) + 1
                entries.extend(reversed(found))
                position = start
        return entries[:limit]


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"action": "(unreadable line)", "detail": raw[:200].decode(errors="replace")}
    return value if isinstance(value, dict) else {"action": "(unreadable line)"}

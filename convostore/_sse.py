"""A sans-I/O Server-Sent Events parser, fed bytes in arbitrary chunks.

It implements the framing of ``interactions-api.md`` §8.1 (the WHATWG event-stream format as the
official SDK reads it):

- lines end in ``\\n``, ``\\r\\n`` or ``\\r``, mixed freely; a blank line dispatches an event;
- ``data:`` lines are joined with ``\\n``; ``event:``, ``id:`` and ``retry:`` are kept;
  ``:`` lines are comments (keep-alives); one leading space after the colon is dropped;
- a UTF-8 byte-order mark at the very start is stripped; UTF-8 sequences may be split across
  chunks;
- an event without ``data`` is skipped; ``data: [DONE]`` ends the stream;
- at end of input, a pending event that has data is still dispatched (the SDK does the same,
  where WHATWG would drop it). A truncated event therefore surfaces as malformed JSON to the
  caller instead of vanishing.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["DONE", "SSEDecoder", "ServerSentEvent"]

DONE = "[DONE]"
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    Attributes:
        data: the ``data:`` lines joined with ``\\n``.
        event: the ``event:`` field, if any (dispatch uses the JSON in ``data``, not this).
        id: the last ``id:`` seen in the stream so far (it persists across events).
        retry: the ``retry:`` field in milliseconds, if any.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """``data`` parsed as JSON (raises ``json.JSONDecodeError``)."""
        return json.loads(self.data)


class SSEDecoder:
    """Incremental parser: :meth:`feed` bytes as they arrive, then :meth:`close` at EOF.

    After ``data: [DONE]`` :attr:`done` is true and further input is ignored.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._skip_lf = False
        self._data: list[str] = []
        self._event: str | None = None
        self._retry: int | None = None
        self._last_id: str | None = None
        self.done = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse a chunk and return the events it completes (possibly none)."""
        if self.done:
            return []
        return self._consume(self._decoder.decode(chunk), final=False)

    def close(self) -> list[ServerSentEvent]:
        """Signal end of input; returns the pending event, if it has data."""
        if self.done:
            return []
        events = self._consume(self._decoder.decode(b"", final=True), final=True)
        if self._buffer and not self.done:
            self._line(self._buffer, events)
        self._buffer = ""
        if not self.done:
            self._dispatch(events)
        return events

    def _consume(self, text: str, *, final: bool) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            # A chunk ended in "\r": a "\n" opening the next chunk belongs to the same CRLF.
            self._skip_lf = False
            text = text.removeprefix("\n")
        searched = len(self._buffer)
        text = self._buffer + text
        if "\r" not in text:
            # the usual framing (\n only): split at once rather than match line by line
            lines = text.split("\n")
            self._buffer = lines.pop()
            for line in lines:
                self._line(line, events)
                if self.done:
                    self._buffer = ""
                    return events
            return events
        start = 0
        for match in _LINE_END.finditer(text, searched):
            if match.group() == "\r" and match.end() == len(text) and not final:
                self._skip_lf = True
            self._line(text[start : match.start()], events)
            start = match.end()
            if self.done:
                self._buffer = ""
                return events
        self._buffer = text[start:]
        return events

    def _line(self, line: str, events: list[ServerSentEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line.startswith("data: "):
            self._data.append(line[6:])
            return
        if line.startswith(":"):
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\x00" not in value:
                self._last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        data, event, retry = self._data, self._event, self._retry
        self._data, self._event, self._retry = [], None, None
        if not data:
            return
        joined = "\n".join(data)
        if joined == DONE:
            self.done = True
            return
        events.append(ServerSentEvent(data=joined, event=event, id=self._last_id, retry=retry))

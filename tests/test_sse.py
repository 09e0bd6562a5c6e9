"""The SSE parser: framing of interactions-api.md §8.1, fed in arbitrary chunks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convostore._sse import ServerSentEvent, SSEDecoder


def parse(*chunks: bytes) -> tuple[list[ServerSentEvent], bool]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events, decoder.done


def datas(*chunks: bytes) -> list[str]:
    return [event.data for event in parse(*chunks)[0]]


STREAM = (
    "event: interaction.created\n"
    "id: 0\n"
    'data: {"event_type": "interaction.created", "text": "héllo ✓ 🐈"}\n'
    "\n"
    ": keep-alive\n"
    "\n"
    "event: step.delta\n"
    "id: 1\n"
    "retry: 1500\n"
    'data: {"event_type": "step.delta",\n'
    'data:  "index": 0}\n'
    "\n"
)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_newline_style_frames_the_same_events(newline: str) -> None:
    events, done = parse(STREAM.replace("\n", newline).encode())
    assert [e.event for e in events] == ["interaction.created", "step.delta"]
    assert [e.id for e in events] == ["0", "1"]
    assert [e.retry for e in events] == [None, 1500]
    assert json.loads(events[0].data)["text"] == "héllo ✓ 🐈"
    assert events[1].data == '{"event_type": "step.delta",\n "index": 0}'
    assert events[1].json() == {"event_type": "step.delta", "index": 0}
    assert not done


def test_mixed_newlines_in_one_stream() -> None:
    raw = b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\n\r"
    assert datas(raw) == ["a", "b", "c", "d"]


@settings(max_examples=150, deadline=None)
@given(
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30),
)
def test_any_chunking_gives_the_same_events(newline: str, cuts: list[int]) -> None:
    raw = ("\ufeff" + STREAM).replace("\n", newline).encode()
    whole = parse(raw)[0]
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert parse(*pieces)[0] == whole
    assert len(whole) == 2


def test_utf8_split_byte_by_byte() -> None:
    raw = 'data: {"t": "ünïcødé 🐈"}\n\n'.encode()
    assert datas(*[raw[i : i + 1] for i in range(len(raw))]) == ['{"t": "ünïcødé 🐈"}']


def test_bom_is_stripped_only_at_the_start() -> None:
    raw = b"\xef\xbb\xbfdata: x\n\ndata: \xef\xbb\xbfy\n\n"
    assert datas(raw[:1], raw[1:2], raw[2:]) == ["x", "\ufeffy"]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # "\r" ends a chunk and "\n" opens the next: one line end, not an extra blank line.
    assert datas(b"data: a\r", b"\ndata: b\r\n\r\n") == ["a\nb"]


def test_comments_and_events_without_data_are_skipped() -> None:
    raw = b": hello\n\nevent: ping\n\nid: 7\n\ndata: real\n\n"
    events, _ = parse(raw)
    assert [(e.data, e.event, e.id) for e in events] == [("real", None, "7")]


def test_field_details() -> None:
    raw = b"data:nospace\ndata:  two spaces\ndata\nid: bad\x00id\nretry: 1x\nfoo: bar\n\n"
    events, _ = parse(raw)
    assert events == [ServerSentEvent(data="nospace\n two spaces\n", id=None, retry=None)]


def test_done_ends_the_stream_and_ignores_the_rest() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"data: 1\n\ndata: [DONE]\n\ndata: 2\n\n")
    assert [e.data for e in events] == ["1"]
    assert decoder.done
    assert decoder.feed(b"data: 3\n\n") == []
    assert decoder.close() == []


def test_pending_event_is_dispatched_at_eof() -> None:
    assert datas(b"data: 1\n\ndata: last") == ["1", "last"]
    assert datas(b"data: 1\n\nid: 5\n") == ["1"]


def test_empty_input() -> None:
    assert parse(b"") == ([], False)
    assert parse() == ([], False)

"""The Interactions client over real HTTP against the emulator (both flavours), plus the pure
retry policy and error translation."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

import convostore as cs
from convostore._client_base import (
    DEFAULT_TIMEOUT,
    ClientSettings,
    parse_retry_after,
    retry_delay,
    status_error,
)
from convostore._core.continuation import Checkpoint, continuation_body
from convostore._core.streaming import StreamAccumulator
from convostore.models import StepDeltaEvent, TextDelta, to_wire

KEY = "AIzaSy-test-secret-0123456789"
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture
def client(emulator: Any) -> Iterator[cs.InteractionsClient]:
    with cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as c:
        yield c


def posts(emulator: Any) -> list[Any]:
    return [r for r in emulator.requests if r.method == "POST"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- unary


def test_create_sends_the_body_and_headers_and_keeps_the_raw_json(
    client: cs.InteractionsClient, emulator: Any
) -> None:
    interaction = client.create(model="m", input="Hi there", system_instruction="Be terse.")
    assert isinstance(interaction, cs.Interaction)
    assert interaction.status == "completed"
    assert interaction.id.startswith("v1_")
    assert interaction.output_text.endswith('You said: "Hi there".')
    assert interaction.raw["object"] == "interaction"
    assert interaction.raw["steps"] == interaction.steps
    assert interaction.usage is not None and interaction.usage.total_tokens
    [request] = emulator.requests
    assert (request.method, request.path) == ("POST", "/v1beta/interactions")
    assert request.body == {"model": "m", "input": "Hi there", "system_instruction": "Be terse."}
    assert request.headers["x-goog-api-key"] == KEY
    assert request.headers["api-revision"] == "2026-05-20"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"convostore/{cs.__version__}"


def test_base_url_prefix_version_env_and_extra_headers(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emulator.url + "/gw/")
    with cs.InteractionsClient(api_version="v1", headers={"X-Trace": "t1"}) as c:
        assert c.base_url == emulator.url + "/gw"
        c.create(model="m", input="x")
    [request] = emulator.requests
    assert request.path == "/gw/v1/interactions"
    assert request.headers["x-goog-api-key"] == KEY
    assert request.headers["x-trace"] == "t1"


def test_api_key_rules(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    with pytest.raises(cs.ConfigurationError, match="GEMINI_API_KEY"):
        cs.InteractionsClient()
    with (
        cs.InteractionsClient(base_url=emulator.url) as c,
        pytest.raises(cs.AuthenticationError) as info,
    ):  # no key: allowed off production
        c.create(model="m", input="x")
    assert info.value.code == "authentication"
    assert "x-goog-api-key" not in emulator.requests[0].headers


def test_get_delete_and_include_input(client: cs.InteractionsClient, emulator: Any) -> None:
    created = client.create(model="m", input="remember me")
    fetched = client.get(created.id)
    assert fetched.id == created.id
    assert [s["type"] for s in fetched.steps or []] == ["user_input", "model_output"]
    with_input = client.get(created.id, include_input=True)
    assert with_input.raw["input"] == "remember me"
    assert emulator.requests[-1].query == {"include_input": "true"}
    assert client.delete(created.id) is None
    assert emulator.requests[-1].method == "DELETE"
    with pytest.raises(cs.NotFoundError) as info:
        client.get(created.id)
    assert (info.value.status_code, info.value.code) == (404, "not_found")


def test_cancel_a_background_interaction(client: cs.InteractionsClient, emulator: Any) -> None:
    emulator.background_seconds = 30
    running = client.create(model="m", input="x", background=True)
    assert running.status == "in_progress"
    cancelled = client.cancel(running.id)
    assert cancelled.status == "cancelled"
    assert emulator.requests[-1].path == f"/v1beta/interactions/{running.id}/cancel"
    with pytest.raises(cs.BadRequestError) as info:  # not running any more
        client.cancel(running.id)
    assert info.value.code == "failed_precondition"


def test_ids_are_quoted_into_one_path_segment(client: cs.InteractionsClient, emulator: Any) -> None:
    with pytest.raises(cs.NotFoundError):
        client.get("a b?c=d#e")
    assert unquote(emulator.requests[-1].path) == "/v1beta/interactions/a b?c=d#e"
    assert emulator.requests[-1].query == {}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "body",
    [
        {"input": "x"},
        {"model": "m", "agent": "a", "input": "x"},
        {"model": "", "input": "x"},
        {"model": 3, "input": "x"},
        {"model": "m", "input": 42},
        {"model": "m", "input": ["just", "strings"]},
        {"model": "m", "input": []},
        {"model": "m", "input": {"text": "no type"}},
        {"model": "m", "input": [{"type": "function_call", "id": "c1"}]},
        {"model": "m", "input": "x", "generation_config": {"temperature": math.nan}},
        {"model": "m", "input": "x", "labels": {"a", "b"}},
        {"model": "m", "input": "x", "labels": object()},
    ],
)
def test_bad_create_bodies_are_rejected_before_sending(
    client: cs.InteractionsClient, emulator: Any, body: dict[str, Any]
) -> None:
    with pytest.raises(cs.ValidationError):
        client.create(**body)
    with pytest.raises(ValueError):
        client.stream(**body)
    assert emulator.requests == []


def test_stream_flag_belongs_to_the_call_not_the_body(
    client: cs.InteractionsClient, emulator: Any
) -> None:
    with pytest.raises(cs.ValidationError, match="stream"):
        client.stream(model="m", input="x", stream=True)
    assert emulator.requests == []


@pytest.mark.parametrize("bad_id", ["", "a/b", ".", "..", "x\ny", 7])
def test_bad_ids_are_rejected_before_sending(
    client: cs.InteractionsClient, emulator: Any, bad_id: Any
) -> None:
    for call in (client.get, client.delete, client.cancel):
        with pytest.raises(cs.ValidationError):
            call(bad_id)
    with pytest.raises(cs.ValidationError):
        client.get("ok", last_event_id="3")  # last_event_id needs stream=True
    assert emulator.requests == []


@pytest.mark.parametrize(
    "options",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"timeout": 0},
        {"timeout": "10"},
        {"api_version": "v1/x"},
        {"base_url": "ftp://example.org"},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(cs.ValidationError):
        cs.InteractionsClient(api_key=KEY, **options)


def test_default_timeouts() -> None:
    settings = ClientSettings.resolve(
        api_key=KEY,
        base_url=None,
        api_version="v1beta",
        timeout=None,
        max_retries=4,
        headers=None,
        own_client=True,
    )
    assert settings.timeout == DEFAULT_TIMEOUT
    assert DEFAULT_TIMEOUT.as_dict() == {
        "connect": 10.0,
        "read": 600.0,
        "write": 60.0,
        "pool": 10.0,
    }
    assert KEY not in repr(settings)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (400, cs.BadRequestError, "invalid_request"),
        (401, cs.AuthenticationError, "authentication"),
        (403, cs.PermissionDeniedError, "permission_denied"),
        (404, cs.NotFoundError, "not_found"),
        (409, cs.ConflictError, None),
        (418, cs.APIStatusError, None),
        (422, cs.UnprocessableEntityError, None),
        (429, cs.RateLimitError, "rate_limit_exceeded"),
        (500, cs.InternalServerError, "api_error"),
        (503, cs.InternalServerError, None),
    ],
)
def test_error_statuses_map_to_classes(
    emulator: Any, status: int, cls: type[cs.APIStatusError], code: str | None
) -> None:
    emulator.fail(status, retry_after=7)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as c,
        pytest.raises(cls) as info,
    ):
        c.create(model="m", input="x")
    error = info.value
    assert type(error) is cls
    assert error.status_code == status
    if code is not None:
        assert error.code == code
    assert error.code
    assert error.message == "injected fault"
    assert error.body == {"error": {"code": error.code, "message": "injected fault"}}
    assert error.retry_after == 7.0
    assert str(status) in str(error)
    assert len(emulator.requests) == 1


def test_google_style_and_non_json_error_bodies() -> None:
    google = b'{"error": {"code": 404, "message": "gone", "status": "NOT_FOUND"}}'
    error = status_error(404, {}, google, secret=None)
    assert type(error) is cs.NotFoundError
    assert (error.code, error.message, error.body["error"]["code"]) == ("NOT_FOUND", "gone", 404)
    bare = status_error(500, {}, b'{"error": {"code": 500}}', secret=None)
    assert (type(bare), bare.code, bare.message) == (
        cs.InternalServerError,
        "500",
        "Internal Server Error",
    )
    html = status_error(502, {"retry-after": "3"}, b"<html>Bad gateway</html>", secret=None)
    assert (type(html), html.code, html.body, html.retry_after) == (
        cs.InternalServerError,
        None,
        "<html>Bad gateway</html>",
        3.0,
    )
    assert html.message == "<html>Bad gateway</html>"
    empty = status_error(400, {}, b"", secret=None)
    assert (type(empty), empty.message) == (cs.BadRequestError, "Bad Request")
    leak = status_error(
        400, {}, f'{{"error": {{"message": "bad key {KEY}"}}}}'.encode(), secret=KEY
    )
    assert KEY not in str(leak) and KEY not in leak.message


def test_connection_refused(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    caplog.set_level(logging.INFO, logger="convostore.client")
    with (
        cs.InteractionsClient(api_key=KEY, base_url=url, max_retries=1) as c,
        pytest.raises(cs.APIConnectionError) as info,
    ):
        c.create(model="m", input="x")
    assert not isinstance(info.value, cs.APITimeoutError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying POST")]
    assert len(retries) == 1  # connecting failed: retried even for create


# --------------------------------------------------------------------------- retries


def test_retry_after_ms_is_honoured(client: cs.InteractionsClient, emulator: Any) -> None:
    emulator.fail(429, times=2, retry_after_ms=1)
    assert client.create(model="m", input="x").status == "completed"
    assert len(posts(emulator)) == 3


def test_retry_after_seconds_is_honoured(
    client: cs.InteractionsClient, emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="convostore.client")
    emulator.fail(503, times=2, retry_after=0.01)
    assert client.create(model="m", input="x").status == "completed"
    assert len(posts(emulator)) == 3
    delays = [r.args[2] for r in caplog.records if r.getMessage().startswith("retrying")]
    assert delays == [0.01, 0.01]


def test_retries_are_bounded_by_max_retries(emulator: Any) -> None:
    emulator.fail(429, times=10, retry_after_ms=1)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=2) as c,
        pytest.raises(cs.RateLimitError),
    ):
        c.create(model="m", input="x")
    assert len(posts(emulator)) == 3


def test_max_retries_zero_and_unretryable_statuses(emulator: Any) -> None:
    emulator.fail(500, retry_after_ms=1)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as c,
        pytest.raises(cs.InternalServerError),
    ):
        c.create(model="m", input="x")
    assert len(emulator.requests) == 1
    emulator.reset()
    emulator.fail(400, retry_after_ms=1)
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as c,
        pytest.raises(cs.BadRequestError),
    ):
        c.create(model="m", input="x")
    assert len(emulator.requests) == 1


def test_get_is_retried_on_503_with_backoff(client: cs.InteractionsClient, emulator: Any) -> None:
    created = client.create(model="m", input="x")
    emulator.fail(503, method="GET")
    assert client.get(created.id).id == created.id
    assert [r.method for r in emulator.requests] == ["POST", "GET", "GET"]


def test_read_timeout_on_create_is_not_retried(emulator: Any) -> None:
    timeout = httpx.Timeout(5.0, read=0.3)
    with cs.InteractionsClient(api_key=KEY, base_url=emulator.url, timeout=timeout) as c:
        emulator.delay(2.0, times=1)
        with pytest.raises(cs.APITimeoutError) as info:
            c.create(model="m", input="x")
        assert isinstance(info.value.__cause__, httpx.ReadTimeout)
        emulator.delay(2.0, times=1)
        with pytest.raises(cs.APITimeoutError):  # nor a streaming create waiting for headers
            c.create(model="m", input="x", stream=True)
    assert len(posts(emulator)) == 2


def test_read_timeout_on_get_is_retried(client: cs.InteractionsClient, emulator: Any) -> None:
    created = client.create(model="m", input="x")
    emulator.delay(2.0, times=1)
    timeout = httpx.Timeout(5.0, read=0.3)
    with cs.InteractionsClient(api_key=KEY, base_url=emulator.url, timeout=timeout) as c:
        assert c.get(created.id).id == created.id
    assert [r.method for r in emulator.requests] == ["POST", "GET", "GET"]


def test_backoff_schedule() -> None:
    assert [retry_delay(n, rand=0.0) for n in range(7)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert [retry_delay(n, rand=1.0) for n in range(5)] == [0.375, 0.75, 1.5, 3, 6]
    for n in range(6):
        assert 0.75 * min(0.5 * 2**n, 8) <= retry_delay(n) <= min(0.5 * 2**n, 8)


def test_retry_after_headers() -> None:
    now = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now.timestamp()) == 30.0
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "0", "retry-after": "9"}) == 9.0
    for useless in ("0", "-1", "soon", "nan"):
        assert parse_retry_after({"retry-after": useless}) is None
    assert parse_retry_after({}) is None
    assert retry_delay(0, {"retry-after": "3600"}) == 60.0  # capped
    assert retry_delay(2, {"retry-after": "0"}, rand=0.0) == 2.0  # falls back to backoff


# --------------------------------------------------------------------------- streaming


def rebuilt_steps(events: list[Any]) -> list[dict[str, Any]]:
    """The steps rebuilt from the deltas alone (the completion's own steps removed)."""
    acc = StreamAccumulator()
    for event in events:
        data = to_wire(event)
        if data["event_type"] == "interaction.completed":
            data["interaction"].pop("steps", None)
        acc.add(data)
    return acc.steps


def test_stream_text(client: cs.InteractionsClient, emulator: Any) -> None:
    with client.stream(model="m", input="tell me a long story") as stream:
        assert emulator.requests[0].body["stream"] is True
        assert emulator.requests[0].headers["accept"] == "text/event-stream"
        events = list(stream)
    kinds = [e.event_type for e in events]
    assert kinds[0] == "interaction.created" and kinds[-1] == "interaction.completed"
    assert kinds.count("step.delta") > 5
    interaction = stream.interaction
    assert interaction is not None and interaction.status == "completed"
    assert stream.interaction_id == interaction.id
    text = "".join(
        e.delta.text
        for e in events
        if isinstance(e, StepDeltaEvent) and isinstance(e.delta, TextDelta)
    )
    assert text == interaction.output_text
    assert 'You said: "tell me a long story"' in text
    assert rebuilt_steps(events) == interaction.steps
    assert stream.last_event_id == events[-1].event_id
    stored = client.get(interaction.id)
    assert [s for s in stored.steps or [] if s["type"] != "user_input"] == interaction.steps


def test_stream_thought_and_function_call(client: cs.InteractionsClient) -> None:
    stream = client.create(
        model="m", input="think, then call get_weather for Paris", tools=TOOLS, stream=True
    )
    with stream:
        events = list(stream)
    interaction = stream.interaction
    assert interaction is not None and interaction.status == "requires_action"
    thought, call = interaction.steps or []
    assert thought["type"] == "thought" and thought["signature"]
    assert call == {
        "type": "function_call",
        "id": call["id"],
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert any(getattr(e, "delta", None) and e.delta.type == "arguments_delta" for e in events)
    assert rebuilt_steps(events) == interaction.steps


def test_stream_text_deltas_and_until_done(client: cs.InteractionsClient) -> None:
    with client.stream(model="m", input="a long story please") as stream:
        first = next(iter(stream.text_deltas()))
        interaction = stream.until_done()
    assert interaction.output_text.startswith(first)
    assert stream.until_done().steps == interaction.steps  # again: same answer


def test_stream_error_event_raises_after_the_events_before_it(
    client: cs.InteractionsClient, emulator: Any
) -> None:
    emulator.fail_stream(after_events=3, code="resource_exhausted", message="boom")
    received: list[Any] = []
    with client.stream(model="m", input="long story") as stream:
        with pytest.raises(cs.StreamError) as info:
            for event in stream:
                received.append(event)
        assert list(stream) == []  # finished
    assert len(received) == 3
    assert (info.value.code, info.value.message) == ("resource_exhausted", "boom")
    assert stream.interaction is None
    assert len(emulator.requests) == 1


def test_cut_stream_is_never_a_finished_answer(
    client: cs.InteractionsClient, emulator: Any
) -> None:
    emulator.cut_stream(after_events=4)
    received: list[Any] = []
    with (
        client.stream(model="m", input="long story") as stream,
        pytest.raises(cs.StreamError, match=r"interaction\.completed|interrupted") as info,
    ):
        for event in stream:
            received.append(event)
    if "interrupted" in str(info.value):  # a dropped connection rather than a clean EOF
        assert isinstance(info.value.__cause__, httpx.TransportError)
    assert len(received) == 4
    assert stream.interaction is None
    with pytest.raises(cs.StreamError):
        stream.until_done()
    assert len(emulator.requests) == 1


def test_stream_is_retried_before_its_first_byte(
    client: cs.InteractionsClient, emulator: Any
) -> None:
    emulator.fail(429, times=2, retry_after_ms=1)
    with client.stream(model="m", input="hello") as stream:
        interaction = stream.until_done()
    assert interaction.status == "completed"
    assert len(posts(emulator)) == 3


def test_stream_http_error_raises_on_open(client: cs.InteractionsClient, emulator: Any) -> None:
    emulator.fail(403)
    with pytest.raises(cs.PermissionDeniedError):
        client.create(model="m", input="x", stream=True)
    lazy = client.stream(model="m", input="x")
    assert len(emulator.requests) == 1  # not sent until entered
    emulator.fail(404)
    with pytest.raises(cs.NotFoundError), lazy:
        pass


def test_get_stream_replays_and_resumes(client: cs.InteractionsClient, emulator: Any) -> None:
    with client.stream(model="m", input="a story") as stream:
        original = [to_wire(e) for e in stream]
    iid = stream.interaction_id
    assert iid is not None
    with client.get(iid, stream=True) as replay:
        assert [to_wire(e) for e in replay] == original
    assert emulator.requests[-1].query == {"stream": "true"}
    middle = original[2]["event_id"]
    with client.get(iid, stream=True, last_event_id=middle) as rest:
        events = list(rest)
    assert [to_wire(e) for e in events] == original[3:]
    assert emulator.requests[-1].query == {"stream": "true", "last_event_id": middle}


def test_stream_answered_with_json(client: cs.InteractionsClient, emulator: Any) -> None:
    # A background create that asks for a stream is answered with plain JSON.
    emulator.background_seconds = 30
    with client.create(model="m", input="x", background=True, stream=True) as stream:
        [event] = list(stream)
    assert event.event_type == "interaction.completed"
    assert stream.interaction is not None and stream.interaction.status == "in_progress"


def test_early_exit_releases_the_connection(emulator: Any) -> None:
    limits = httpx.Limits(max_connections=1)
    with httpx.Client(limits=limits, timeout=httpx.Timeout(5.0, pool=1.0)) as http:
        c = cs.InteractionsClient(api_key=KEY, base_url=emulator.url, http_client=http)
        for _ in range(3):
            with c.stream(model="m", input="a very long story") as stream:
                next(iter(stream))
        assert c.create(model="m", input="still works").status == "completed"
        c.close()
        c.close()
        assert not http.is_closed  # not ours to close
    with pytest.raises(cs.APIError, match="closed"):
        c.create(model="m", input="x")


# Endings the emulator cannot produce (a clean EOF or [DONE] before the completion, a drop after
# it, garbage data) come from canned bodies served by an httpx transport: the client, the parser
# and the accumulator all run unchanged.


def sse(data: dict[str, Any], end: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(data).encode() + end


CREATED = sse(
    {"event_type": "interaction.created", "interaction": {"id": "i1", "status": "in_progress"}},
    b"\r\n\r\n",
)
STEP = sse({"event_type": "step.start", "index": 0, "step": {"type": "model_output"}}) + sse(
    {"event_type": "step.delta", "index": 0, "delta": {"type": "text", "text": "Hi"}}, b"\r\r"
)
COMPLETED = sse(
    {"event_type": "interaction.completed", "interaction": {"id": "i1", "status": "completed"}}
)


class Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks, self.error = chunks, error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error


def canned(
    chunks: list[bytes], *, error: Exception | None = None, content_type: str = "text/event-stream"
) -> cs.InteractionsClient:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": content_type} if content_type else {}
        return httpx.Response(200, headers=headers, stream=Chunks(chunks, error))

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return cs.InteractionsClient(api_key=KEY, base_url="http://127.0.0.1:9", http_client=http)


def test_canned_stream_split_anywhere_rebuilds_the_answer() -> None:
    raw = b"\xef\xbb\xbf: hi\n\n" + CREATED + STEP + COMPLETED + b"data: [DONE]\n\ndata: junk\n\n"
    chunks = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    with canned(chunks).stream(model="m", input="x") as stream:
        interaction = stream.until_done()
    assert interaction.steps == [
        {"type": "model_output", "content": [{"type": "text", "text": "Hi"}]}
    ]


@pytest.mark.parametrize(
    "chunks",
    [[CREATED, STEP], [CREATED, STEP, b"data: [DONE]\n\n", COMPLETED], []],
    ids=["eof", "done", "empty"],
)
def test_clean_end_before_completion_is_a_stream_error(chunks: list[bytes]) -> None:
    with (
        canned(chunks).stream(model="m", input="x") as stream,
        pytest.raises(cs.StreamError, match=r"ended before interaction\.completed"),
    ):
        list(stream)
    assert stream.interaction is None


def test_connection_drop_before_and_after_completion() -> None:
    drop = httpx.ReadError("connection reset")
    with (
        canned([CREATED, STEP], error=drop).stream(model="m", input="x") as stream,
        pytest.raises(cs.StreamError, match="interrupted") as info,
    ):
        list(stream)
    assert info.value.__cause__ is drop
    with canned([CREATED, STEP, COMPLETED], error=drop).stream(model="m", input="x") as stream:
        assert stream.until_done().status == "completed"  # nothing was lost


@pytest.mark.parametrize("data", [b"data: {nope\n\n", b"data: [1, 2]\n\n"])
def test_malformed_event_data_is_a_stream_error(data: bytes) -> None:
    with canned([CREATED, data]).stream(model="m", input="x") as stream:
        events = []
        with pytest.raises(cs.StreamError, match="malformed"):
            for event in stream:
                events.append(event)
    assert [e.event_type for e in events] == ["interaction.created"]


@pytest.mark.parametrize("content_type", ["", "text/html", "application/json"])
def test_success_answers_that_are_not_interactions(content_type: str) -> None:
    with canned([b"<html>hi</html>"], content_type=content_type) as c, pytest.raises(cs.APIError):
        c.create(model="m", input="x")
    body = [b'{"id": "x"}']  # JSON, but no status
    with canned(body, content_type="application/json") as c, pytest.raises(cs.APIError):
        c.create(model="m", input="x")


# An answer holding parts and deltas of types convostore does not know must be stored the same
# whether it was sent unary or streamed: a replay may not depend on how the turn travelled.

ANSWER = [
    {"type": "thought", "signature": "c2ln", "summary": [{"type": "text", "text": "hmm"}]},
    {
        "type": "model_output",
        "content": [
            {"type": "text", "text": "Here it is: "},
            {"type": "hologram", "frames": 3, "data": {"k": [1, None]}},
            {"type": "text", "text": "enjoy."},
            {"type": "image", "mime_type": "image/png", "data": "iVBO"},
        ],
    },
    {"type": "tool_search_call", "id": "ts1", "arguments": {"function_names": ["f"]}},
    {"type": "brand_new_step", "payload": {"x": 1}},
]
ANSWER_EVENTS = [
    {"event_type": "interaction.created", "interaction": {"id": "i1", "status": "in_progress"}},
    {"event_type": "step.start", "index": 0, "step": {"type": "thought"}},
    {
        "event_type": "step.delta",
        "index": 0,
        "delta": {"type": "thought_summary", "content": {"type": "text", "text": "hmm"}},
    },
    {
        "event_type": "step.delta",
        "index": 0,
        "delta": {"type": "thought_signature", "signature": "c2ln"},
    },
    {"event_type": "step.stop", "index": 0},
    {"event_type": "step.start", "index": 1, "step": {"type": "model_output"}},
    {"event_type": "step.delta", "index": 1, "delta": {"type": "text", "text": "Here "}},
    {"event_type": "step.delta", "index": 1, "delta": {"type": "text", "text": "it is: "}},
    {
        "event_type": "step.delta",
        "index": 1,
        "delta": {"type": "hologram", "frames": 3, "data": {"k": [1, None]}},
    },
    {"event_type": "step.delta", "index": 1, "delta": {"type": "text", "text": "enjoy."}},
    {
        "event_type": "step.delta",
        "index": 1,
        "delta": {"type": "image", "mime_type": "image/png", "data": "iVBO"},
    },
    {"event_type": "step.stop", "index": 1},
    {"event_type": "step.start", "index": 2, "step": {"type": "tool_search_call", "id": "ts1"}},
    {
        "event_type": "step.delta",
        "index": 2,
        "delta": {"type": "tool_search_call", "arguments": {"function_names": ["f"]}},
    },
    {"event_type": "step.stop", "index": 2},
    {"event_type": "step.start", "index": 3, "step": ANSWER[3]},
    {"event_type": "step.stop", "index": 3},
    {"event_type": "interaction.completed", "interaction": {"id": "i1", "status": "completed"}},
]


def answering() -> cs.InteractionsClient:
    """A client whose server answers every request with ANSWER, unary or streamed."""

    def answer(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            chunks = [sse(event) for event in ANSWER_EVENTS]
            headers = {"content-type": "text/event-stream"}
            return httpx.Response(200, headers=headers, stream=Chunks(chunks))
        return httpx.Response(200, json={"id": "i1", "status": "completed", "steps": ANSWER})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return cs.InteractionsClient(api_key=KEY, base_url="http://127.0.0.1:9", http_client=http)


def test_unknown_parts_are_stored_the_same_unary_and_streamed() -> None:
    with answering() as c:
        unary = c.create(model="m", input="x")
        with c.stream(model="m", input="x") as stream:
            streamed = stream.until_done()
    assert unary.steps == ANSWER
    assert streamed.steps == unary.steps
    assert streamed.output_text == unary.output_text == "enjoy."  # the hologram ends the text
    assert streamed.output_image == unary.output_image == ANSWER[1]["content"][3]
    assert stream.unknown_deltas == [
        (1, {"type": "hologram", "frames": 3, "data": {"k": [1, None]}})
    ]


def test_a_replay_resends_the_stored_answer_verbatim_however_it_was_sent() -> None:
    """Stateless mode re-sends the stored steps: tool_search steps and unknown parts included,
    and the same steps whether the answer came unary or streamed."""
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if body.get("stream"):
            chunks = [sse(event) for event in ANSWER_EVENTS]
            headers = {"content-type": "text/event-stream"}
            return httpx.Response(200, headers=headers, stream=Chunks(chunks))
        return httpx.Response(200, json={"id": "i1", "status": "completed", "steps": ANSWER})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    client = cs.InteractionsClient(api_key=KEY, base_url="http://127.0.0.1:9", http_client=http)
    with cs.Conversations("memory://replay-verbatim", client) as convos:
        unary = convos.create(tenant="t", mode="stateless")
        assert unary.send("first").steps == ANSWER
        unary.send("again")
        streamed = convos.create(tenant="t", mode="stateless")
        with streamed.stream("first") as events:
            list(events)
        assert events.turn.steps == ANSWER
        streamed.send("again")
    user = [
        {"type": "user_input", "content": [{"type": "text", "text": t}]} for t in ("first", "again")
    ]
    assert bodies[1]["input"] == [user[0], *ANSWER, user[1]]
    assert bodies[3]["input"] == bodies[1]["input"]


# A cut stream: what a driver reads to resume it.

CHECKPOINT = sse(
    {
        "event_type": "interaction.status_update",
        "interaction_id": "i1",
        "status": "in_progress",
        "continuation_token": "tok1",
        "usage": {"total_output_tokens": 2},
    }
)


def test_a_stream_cut_at_a_checkpoint_can_be_resumed() -> None:
    drop = httpx.ReadError("connection reset")
    with (
        canned([CREATED, STEP, CHECKPOINT], error=drop).stream(model="m", input="x") as stream,
        pytest.raises(cs.StreamError, match="interrupted"),
    ):
        list(stream)
    assert stream.interaction is None
    assert stream.checkpoint == Checkpoint("tok1", "i1")
    assert stream.can_resume and not stream.content_since_checkpoint
    assert (stream.status, stream.continuation_token) == ("in_progress", "tok1")
    partial = stream.partial_interaction
    assert partial.status == "in_progress" and partial.continuation_token == "tok1"
    assert partial.output_text == "Hi"
    assert partial.usage is not None and partial.usage.total_output_tokens == 2
    body = continuation_body(
        {"model": "m", "input": "x"},
        token=stream.checkpoint.token,
        owner_id=stream.checkpoint.owner_id,
    )
    assert body == {"model": "m", "continuation_token": "tok1", "previous_interaction_id": "i1"}


def test_a_stream_cut_after_output_past_its_checkpoint_cannot_be_resumed_cleanly() -> None:
    more = sse({"event_type": "step.delta", "index": 0, "delta": {"type": "text", "text": "!"}})
    with (
        canned([CREATED, STEP, CHECKPOINT, more]).stream(model="m", input="x") as stream,
        pytest.raises(cs.StreamError, match="ended before"),
    ):
        list(stream)
    assert stream.checkpoint == Checkpoint("tok1", "i1")
    assert stream.content_since_checkpoint and not stream.can_resume
    assert stream.partial_interaction.output_text == "Hi!"


def test_a_continuation_request_resumes_from_its_own_token_until_a_new_one() -> None:
    hop = {"model": "m", "continuation_token": "tok0", "previous_interaction_id": "i0"}
    with (
        canned([CREATED]).stream(**hop) as stream,
        pytest.raises(cs.StreamError, match="ended before"),
    ):
        list(stream)
    assert stream.checkpoint == Checkpoint("tok0", "i0") and stream.can_resume
    with canned([CREATED, CHECKPOINT, COMPLETED]).stream(**hop) as stream:
        interaction = stream.until_done()
    assert interaction.status == "completed" and interaction.continuation_token is None
    assert stream.checkpoint is None  # the completed snapshot carried no token


def test_async_stream_exposes_the_resume_point() -> None:
    class AsyncChunks(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            for chunk in (CREATED, STEP, CHECKPOINT):
                yield chunk
            raise httpx.ReadError("connection reset")

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=AsyncChunks()
        )

    async def main() -> cs.AsyncInteractionStream:
        http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        async with (
            http,
            cs.AsyncInteractionsClient(
                api_key=KEY, base_url="http://127.0.0.1:9", http_client=http
            ) as c,
        ):
            stream = c.stream(model="m", input="x")
            with pytest.raises(cs.StreamError, match="interrupted"):
                async with stream:
                    async for _ in stream:
                        pass
            return stream

    stream = asyncio.run(main())
    assert stream.checkpoint == Checkpoint("tok1", "i1") and stream.can_resume
    assert stream.partial_interaction.output_text == "Hi"


# --------------------------------------------------------------------------- secrets


def test_the_key_never_leaks(emulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="convostore.client")
    seen: list[str] = []
    with cs.InteractionsClient(api_key=KEY, base_url=emulator.url) as c:
        seen.append(repr(c))
        emulator.fail(429, times=1, retry_after_ms=1)
        created = c.create(model="m", input="x")
        for status, times in ((401, 1), (404, 1), (500, 5)):
            emulator.fail(status, times=times, retry_after_ms=1)
            with pytest.raises(cs.APIStatusError) as info:
                c.get(created.id)
            seen += [str(info.value), repr(info.value), repr(info.value.body)]
        emulator.fail_stream(after_events=1)
        with pytest.raises(cs.StreamError) as stream_error, c.stream(model="m", input="y") as s:
            list(s)
        seen.append(str(stream_error.value))
    with cs.InteractionsClient(
        api_key=KEY, base_url=f"http://127.0.0.1:{closed_port()}", max_retries=0
    ) as dead:
        with pytest.raises(cs.APIConnectionError) as conn:
            dead.get("x")
        seen += [str(conn.value), repr(dead)]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("request GET") for m in messages)
    assert any(m.startswith("retrying") for m in messages)
    assert emulator.requests[0].headers["x-goog-api-key"] == KEY  # it was sent, though
    for text in seen + messages:
        assert KEY not in text


# --------------------------------------------------------------------------- asyncio flavour


def test_async_unary_get_delete(emulator: Any) -> None:
    async def main() -> None:
        async with cs.AsyncInteractionsClient(api_key=KEY, base_url=emulator.url) as c:
            created = await c.create(model="m", input="hello async")
            assert created.output_text.endswith('You said: "hello async".')
            assert (await c.get(created.id)).id == created.id
            await c.delete(created.id)
            with pytest.raises(cs.NotFoundError):
                await c.get(created.id)
            await c.aclose()
        await c.aclose()

    asyncio.run(main())
    assert [r.method for r in emulator.requests] == ["POST", "GET", "DELETE", "GET"]


def test_async_stream(emulator: Any) -> None:
    async def main() -> tuple[str, cs.Interaction, list[Any]]:
        async with cs.AsyncInteractionsClient(api_key=KEY, base_url=emulator.url) as c:
            async with c.stream(model="m", input="think about a story") as stream:
                text = "".join([t async for t in stream.text_deltas()])
            assert stream.interaction is not None
            events = []
            replay = await c.get(stream.interaction.id, stream=True)
            async with replay:
                events = [e async for e in replay]
            return text, stream.interaction, events

    text, interaction, events = asyncio.run(main())
    assert text == interaction.output_text
    assert [s["type"] for s in interaction.steps or []] == ["thought", "model_output"]
    assert rebuilt_steps(events) == interaction.steps


def test_async_faults(emulator: Any) -> None:
    timeout = httpx.Timeout(5.0, read=0.3)

    async def main() -> None:
        async with cs.AsyncInteractionsClient(
            api_key=KEY, base_url=emulator.url, timeout=timeout
        ) as c:
            emulator.fail(429, times=2, retry_after_ms=1)
            assert (await c.create(model="m", input="x")).status == "completed"
            emulator.fail(409, times=5, retry_after_ms=1)
            with pytest.raises(cs.ConflictError):
                await c.create(model="m", input="x")
            emulator.delay(2.0, times=1)
            with pytest.raises(cs.APITimeoutError):
                await c.create(model="m", input="x")
            emulator.fail_stream(after_events=2, code="api_error")
            stream = await c.create(model="m", input="long story", stream=True)
            got = []
            with pytest.raises(cs.StreamError) as info:
                async with stream:
                    async for event in stream:
                        got.append(event)
            assert info.value.code == "api_error" and len(got) == 2
            with pytest.raises(cs.ValidationError):
                await c.create(model="m", input=object())
            with pytest.raises(cs.ValidationError):
                await c.get("a/b")

    asyncio.run(main())
    assert len(posts(emulator)) == 3 + 5 + 1 + 1


def test_async_client_leaves_a_given_http_client_open(emulator: Any) -> None:
    async def main() -> bool:
        limits = httpx.Limits(max_connections=1)
        timeout = httpx.Timeout(5.0, pool=1.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            async with cs.AsyncInteractionsClient(
                api_key=KEY, base_url=emulator.url, http_client=http
            ) as c:
                for _ in range(3):  # an early exit releases the only connection
                    async with c.stream(model="m", input="a long story") as stream:
                        async for _event in stream:
                            break
                await c.create(model="m", input="x")
            return http.is_closed

    assert asyncio.run(main()) is False

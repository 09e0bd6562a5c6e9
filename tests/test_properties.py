"""Property-based tests: inputs, ids, tenants, metadata and steps of every shape.

Each value either gets a :class:`convostore.ValidationError` (with nothing written or sent) or
is stored and returned verbatim; afterwards the store verifies and earlier data is unchanged.
Memory and SQLite run many examples; PostgreSQL, MariaDB and Redis a few each.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import convostore as cs
from convostore import _migrate, _transfer
from convostore.emulator import Emulator
from convostore.models import MAX_JSON_DEPTH, TurnCommit
from convostore.testing import make_commit, model_step, user_step

KEY = "property-key-0123456789"
EXAMPLES = {"memory": 60, "sqlite": 40, "postgresql": 8, "mysql": 8, "redis": 8}
FRAGMENTS = [
    "'; DROP TABLE steps; --",
    '" OR 1=1 --',
    "\\",
    "%",
    "_",
    "*",
    "?",
    "[a-z]",
    "{tag}",
    "}{",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "\u2028",
    "🐈\u200d⬛",
    "null",
    "$where",
    "KEYS *",
    "\r\n",
]

# Text of any code point, lone surrogates included.
any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=20),
    st.sampled_from(FRAGMENTS),
    st.lists(st.sampled_from(FRAGMENTS), min_size=2, max_size=4).map("".join),
)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
odd_leaves = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, b"bytes", {1, 2}, dt.date(2026, 1, 1)]),
    st.builds(object),
)
keys = st.one_of(any_text, st.integers(), st.none())


def values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=12,
    )


any_value = values(st.one_of(json_leaves, json_leaves, odd_leaves))
objects = st.dictionaries(any_text, any_value, max_size=4)
ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,30}", fullmatch=True),
    any_text,
    st.text(max_size=300),
    st.integers(),
    st.none(),
)
step_payloads = st.one_of(
    st.builds(lambda kind, extra: {**extra, "type": kind}, any_text, objects),
    objects,
    any_value,
)


def is_plain_json(value: Any) -> bool:
    """The oracle: what must be accepted (and come back verbatim)."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, tuple):
            return False  # JSON would hand it back as a list
    return True


def exact(value: Any) -> str:
    """A JSON value as canonical text: equal only if equal in every type and digit."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = {"d": value} if i % 2 else [value]
    return value


@pytest.fixture(params=["memory", "sqlite", "postgresql", "mysql", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    kind: str = request.param
    if kind == "memory":
        return kind, f"memory://props-{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        return kind, f"sqlite:///{tmp_path / 'props.db'}"
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return kind, f"{url}?key_prefix={request.getfixturevalue('redis_prefix')}"
    url = request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url")
    _migrate.upgrade(url)
    return kind, url


@contextlib.contextmanager
def opened(url: str, emulator: Emulator) -> Iterator[cs.Conversations]:
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as client,
        cs.Conversations(url, client) as convos,
    ):
        yield convos


def snapshot(store: cs.Store, record: cs.ConversationRecord) -> tuple[Any, ...]:
    return (
        store.get_conversation(record.id, tenant=record.tenant),
        store.load_turns(record.id, tenant=record.tenant),
        store.load_steps(record.id, tenant=record.tenant),
    )


def assert_verifies(store: cs.Store, record: cs.ConversationRecord) -> None:
    current = store.get_conversation(record.id, tenant=record.tenant)
    assert _transfer.verify(store, current) == []


def unchecked_commit(record: cs.ConversationRecord, payloads: list[Any]) -> TurnCommit:
    """A commit of ``payloads`` built without pydantic validation, so that the store's own
    checks are what stands between a bad payload and the database."""
    commit = make_commit(record, [model_step("placeholder")] * len(payloads))
    steps = [
        cs.StoredStep.model_construct(
            conversation_id=record.id,
            seq=step.seq,
            turn_seq=step.turn_seq,
            type=str(payload.get("type")) if isinstance(payload, dict) else "model_output",
            payload=payload,
        )
        for step, payload in zip(commit.steps, payloads, strict=True)
    ]
    return commit.model_copy(update={"steps": steps})


def run_property(kind: str, test: Callable[..., None]) -> None:
    settings(
        max_examples=EXAMPLES[kind],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )(test)()


# --------------------------------------------------------------------------- the store


def test_conversation_fields_of_every_shape(
    store_url: tuple[str, str], emulator_server: Emulator
) -> None:
    kind, url = store_url
    with opened(url, emulator_server) as convos:
        store = convos.store
        baseline = convos.create(tenant="props", metadata={"keep": "me"})
        baseline.send("I have 2 dogs in my house.")
        before = snapshot(store, baseline.record)

        @given(
            tenant=ids, user=st.one_of(st.none(), ids), conversation_id=st.one_of(st.none(), ids),
            metadata=st.one_of(objects, any_value), system=st.one_of(st.none(), any_text),
            generation_config=st.one_of(st.none(), objects),
        )  # fmt: skip
        @example(
            tenant="t", user=None, conversation_id=None, metadata={"big": "x" * 2_000_000},
            system=None, generation_config=None,
        )  # fmt: skip
        @example(
            tenant="t", user="u", conversation_id=None, metadata={"deep": nested(60)},
            system="s", generation_config={"deep": nested(40)},
        )  # fmt: skip
        @example(
            tenant="t", user=None, conversation_id=None, metadata=[], system=None,
            generation_config=None,
        )  # fmt: skip
        @example(
            tenant="x'; DROP TABLE conversations; --", user=None, conversation_id=None,
            metadata={}, system=None, generation_config=None,
        )  # fmt: skip
        def check(**fields: Any) -> None:
            options = {k: fields[k] for k in ("tenant", "user", "conversation_id", "metadata")}
            try:
                conv = convos.create(
                    **options,
                    system_instruction=fields["system"],
                    generation_config=fields["generation_config"],
                )
            except cs.ValidationError:
                pass
            else:
                assert is_plain_json(fields["metadata"])
                assert fields["metadata"] is None or isinstance(fields["metadata"], dict)
                got = store.get_conversation(conv.id, tenant=conv.tenant)
                given_metadata = {} if fields["metadata"] is None else fields["metadata"]
                assert exact(got.metadata) == exact(given_metadata)
                assert got.tenant == fields["tenant"] and got.user == fields["user"]
                assert got.config.get("system_instruction") == fields["system"]
                assert got.config.get("generation_config") == fields["generation_config"]
                assert_verifies(store, got)
            assert snapshot(store, baseline.record) == before

        run_property(kind, check)


def test_steps_of_every_shape(store_url: tuple[str, str], emulator_server: Emulator) -> None:
    kind, url = store_url
    with opened(url, emulator_server) as convos:
        store = convos.store
        baseline = convos.create(tenant="props")
        baseline.send("I have 2 dogs in my house.")
        before = snapshot(store, baseline.record)
        target = convos.create(tenant="props")

        @given(payloads=st.lists(step_payloads, min_size=1, max_size=3))
        @example(payloads=[user_step("x" * 3_000_000), model_step("\x00" * 1000)])
        @example(payloads=[{"type": "deep", "v": nested(40)}])
        @example(payloads=[{"type": "t", "n": 10**40, "f": 1e308, "z": -0.0, "e": 5e-324}])
        @example(payloads=[{"type": "a\x00b", "k\x00": "v"}])
        def check(payloads: list[Any]) -> None:
            record = store.get_conversation(target.id, tenant="props")
            stored_before = store.load_steps(target.id, tenant="props")
            commit = unchecked_commit(record, payloads)
            try:
                store.append_turn(commit)
            except cs.ValidationError:
                assert store.load_steps(target.id, tenant="props") == stored_before
                assert store.get_conversation(target.id, tenant="props") == record
            else:
                assert all(isinstance(p, dict) and is_plain_json(p) for p in payloads)
                new = store.load_steps(target.id, tenant="props", turn=commit.turn.seq)
                assert [s.payload for s in new] == payloads
                # exact types too (True is not 1, 1.0 is not 1); key order is not kept by JSONB
                assert [exact(s.payload) for s in new] == [exact(p) for p in payloads]
            assert snapshot(store, baseline.record) == before

        run_property(kind, check)
        assert_verifies(store, baseline.record)


# --------------------------------------------------------------------------- sending


send_inputs = st.one_of(
    any_text,
    st.lists(st.builds(lambda t: {"type": "text", "text": t}, any_text), max_size=3),
    st.lists(st.builds(lambda kind, extra: {**extra, "type": kind}, any_text, objects), max_size=2),
    any_value,
)


@pytest.mark.parametrize("store_url", ["memory", "sqlite"], indirect=True)
def test_send_inputs_of_every_shape(store_url: tuple[str, str], emulator_server: Emulator) -> None:
    kind, url = store_url
    with opened(url, emulator_server) as convos:
        store = convos.store
        conv = convos.create(tenant="props", mode="server")
        conv.send("I have 2 dogs in my house.")

        used_keys: set[str] = set()

        @given(value=send_inputs, key=st.one_of(st.none(), ids))
        @example(value="\ud800 lone", key=None)
        @example(value="a\x00b", key=None)
        @example(value="fine", key="'; DROP TABLE turns; --")
        @example(value=[{"type": "text", "text": "hi", "x-extra": {"k": [1, None]}}], key=None)
        def check(value: Any, key: Any) -> None:
            record = conv.refresh()
            history = conv.history()
            sent = len(emulator_server.requests)
            try:
                turn = conv.send(value, idempotency_key=key)
            except cs.ValidationError:
                assert len(emulator_server.requests) == sent  # nothing sent
                assert conv.refresh() == record and conv.history() == history
                return
            except cs.BadRequestError:
                # the service's own validation (e.g. an unknown content type): nothing stored
                assert conv.refresh() == record and conv.history() == history
                return
            assert is_plain_json(value)
            if turn.replayed:  # the key was used before: the stored turn, nothing sent
                assert key in used_keys and len(emulator_server.requests) == sent
                assert conv.refresh() == record
            elif isinstance(value, str):
                assert turn.input_steps[0]["content"] == [{"type": "text", "text": value}]
            if key is not None:
                used_keys.add(key)
            stored = store.load_steps(conv.id, tenant="props", turn=turn.seq)
            assert [s.payload for s in stored] == turn.input_steps + turn.steps
            assert conv.history()[: len(history)] == history

        run_property(kind, check)
        assert_verifies(store, conv.record)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000])
def test_too_deep_values_are_refused_everywhere(
    depth: int, store_url: tuple[str, str], emulator_server: Emulator
) -> None:
    _, url = store_url
    with opened(url, emulator_server) as convos:
        store = convos.store
        conv = convos.create(tenant="props")
        conv.send("I have 2 dogs in my house.")
        before = snapshot(store, conv.record)
        sent = len(emulator_server.requests)
        deep = nested(depth)
        attempts: list[Callable[[], object]] = [
            lambda: convos.create(tenant="props", metadata={"deep": deep}),
            lambda: conv.update(metadata={"deep": deep}),
            lambda: conv.update(generation_config={"deep": deep}),
            lambda: store.append_turn(unchecked_commit(conv.record, [{"type": "d", "v": deep}])),
            lambda: conv.send([{"type": "text", "text": "x", "deep": deep}]),
        ]
        for attempt in attempts:
            with pytest.raises(cs.ValidationError):
                attempt()
        assert snapshot(store, conv.record) == before
        assert len(emulator_server.requests) == sent
        assert convos.list(tenant="props").items  # nothing else was created
        assert_verifies(store, conv.record)


def test_listing_with_any_tenant_user_or_cursor(
    store_url: tuple[str, str], emulator_server: Emulator
) -> None:
    """Glob and SQL fragments in a listing's tenant, user or cursor never widen it."""
    kind, url = store_url
    with opened(url, emulator_server) as convos:
        mine = convos.create(tenant="list-owner", user="u1")

        @given(tenant=ids, user=st.one_of(st.none(), ids), cursor=st.one_of(st.none(), any_text))
        @example(tenant="*", user=None, cursor=None)
        @example(tenant="list-owner", user="*", cursor=None)
        @example(tenant="list-%", user=None, cursor=None)
        @example(tenant="list-owner", user=None, cursor="' OR 1=1 --")
        def check(tenant: Any, user: Any, cursor: Any) -> None:
            try:
                page = convos.list(tenant=tenant, user=user, cursor=cursor)
            except cs.ValidationError:
                return
            assert all(r.tenant == tenant for r in page.items)
            assert all(user is None or r.user == user for r in page.items)
            if tenant != "list-owner" or user not in (None, "u1"):
                assert mine.id not in [r.id for r in page.items]

        run_property(kind, check)


numbers = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.integers(),
    st.booleans(),
    st.floats(),
    st.none(),
    any_text,
    st.lists(st.integers(), max_size=2),
)


@pytest.mark.parametrize("store_url", ["memory", "sqlite", "redis"], indirect=True)
def test_numeric_options_of_every_shape(
    store_url: tuple[str, str], emulator_server: Emulator
) -> None:
    kind, url = store_url
    with opened(url, emulator_server) as convos:
        store = convos.store
        conv = convos.create(tenant="numbers", mode="server")
        conv.send("I have 2 dogs in my house.")
        conv.send("How many paws are in my house?")
        before = snapshot(store, conv.record)

        @given(value=numbers)
        @example(value=True)
        @example(value=2.0)
        @example(value=10**30)
        def check(value: Any) -> None:
            for operation in (
                lambda: conv.fork(at_turn=value),
                lambda: conv.history(newest=value),
                lambda: store.load_steps(conv.id, tenant="numbers", newest=value),
                lambda: store.load_turns(conv.id, tenant="numbers", limit=value),
                lambda: convos.list(tenant="numbers", limit=value),
            ):
                try:
                    result = operation()
                except cs.ValidationError:
                    continue
                if isinstance(result, cs.Conversation):
                    turns = 2 if value is None else value
                    assert isinstance(turns, int) and not isinstance(turns, bool)
                    assert 0 <= turns <= 2 and result.record.turn_count == turns
                    assert_verifies(store, result.record)
            assert snapshot(store, conv.record) == before

        run_property(kind, check)


def test_models_of_every_shape(store_url: tuple[str, str], emulator_server: Emulator) -> None:
    kind, url = store_url
    with opened(url, emulator_server) as convos:
        store = convos.store
        conv = convos.create(tenant="models", mode="server")
        conv.send("I have 2 dogs in my house.")

        @given(model=st.one_of(any_text, st.text(min_size=1, max_size=2000), st.integers()))
        @example(model="\ud800")
        @example(model="a\x00b")
        @example(model="gemini'; DROP TABLE conversations; --")
        def check(model: Any) -> None:
            before = snapshot(store, conv.record)
            try:
                created = convos.create(tenant="models", model=model)
            except cs.ValidationError:
                pass
            else:
                got = store.get_conversation(created.id, tenant="models")
                assert got.model == model
            try:
                conv.update(model=model)
            except cs.ValidationError:
                assert snapshot(store, conv.record) == before
            else:
                assert store.get_conversation(conv.id, tenant="models").model == model
                conv.update(model="gemini-3-flash-preview")

        run_property(kind, check)
        assert_verifies(store, conv.record)


def test_settings_are_used_or_refused_never_dropped(emulator_server: Emulator) -> None:
    with opened("memory://settings-props", emulator_server) as convos:
        conv = convos.create(tenant="s", settings={"system_instruction": "You are a cat."})
        conv.send("hi")
        assert emulator_server.requests[-1].body["system_instruction"] == "You are a cat."
        bad_settings: list[Any] = [{"system_instruction": 5}, [("tools", [])], {"store": False}]
        for bad in bad_settings:
            with pytest.raises(cs.ValidationError):
                convos.create(tenant="s", settings=bad)
        with pytest.raises(cs.ValidationError):
            convos.create(tenant="s", system_instruction="a", settings={"system_instruction": "b"})
        assert [r.id for r in convos.list(tenant="s").items] == [conv.id]


# --------------------------------------------------------------------------- answers and streams

KNOWN_CONTENT = {"text", "image", "audio", "video", "document"}
new_type = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)
plain = st.dictionaries(
    st.from_regex(r"x_[a-z]{1,6}", fullmatch=True),
    st.one_of(st.none(), st.integers(), st.text(max_size=5)),
    max_size=2,
)
text_part = st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=8))
media_part = st.builds(
    lambda kind, data, extra: {**extra, "type": kind, "data": data, "mime_type": f"{kind}/x"},
    st.sampled_from(["image", "audio", "video", "document"]),
    st.sampled_from(["aGk=", "bG8="]),
    plain,
)
unknown_part = st.builds(
    lambda kind, extra: {**extra, "type": kind},
    new_type.filter(lambda t: t not in KNOWN_CONTENT),
    plain,
)
parts = st.lists(st.one_of(text_part, media_part, unknown_part), max_size=4)


def _no_adjacent_text(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A stream cannot tell two adjacent text parts from one: the server never sends them.
    kept: list[dict[str, Any]] = []
    for part in content:
        if not (kept and part["type"] == kept[-1]["type"] == "text"):
            kept.append(part)
    return kept


answer_steps = st.one_of(
    st.builds(lambda c: {"type": "model_output", "content": _no_adjacent_text(c)}, parts),
    st.just({"type": "model_output"}),
    st.builds(
        lambda s, c: {"type": "thought", "signature": s, "summary": c},
        st.sampled_from(["c2ln", "b3RoZXI="]),
        st.lists(st.one_of(text_part, media_part), max_size=2),
    ),
    st.builds(
        lambda i, a: {"type": "function_call", "id": i, "name": "f", "arguments": a},
        st.sampled_from(["c1", "c2"]),
        st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), st.text(max_size=4))),
    ),
    st.builds(
        lambda r: {"type": "function_result", "call_id": "c1", "name": "f", "result": r},
        st.one_of(st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers())),
    ),
    st.builds(
        lambda names: {
            "type": "tool_search_call",
            "id": "t1",
            "arguments": {"function_names": names},
            "signature": "c2ln",
        },
        st.lists(st.text(max_size=4), max_size=2),
    ),
    st.just(
        {
            "type": "tool_search_result",
            "call_id": "t1",
            "result": [{"type": "function", "name": "f"}],
            "signature": "c2ln",
        }
    ),
    st.builds(lambda extra: {**extra, "type": "brand_new_step"}, plain),
)
any_steps = st.lists(
    st.one_of(answer_steps, st.builds(lambda c: {"type": "user_input", "content": c}, parts)),
    max_size=6,
)


@settings(max_examples=300, deadline=None, database=None)
@given(steps=any_steps)
def test_answer_helpers_match_the_sdk_on_any_steps(steps: list[dict[str, Any]]) -> None:
    interaction = pytest.importorskip("google.genai._gaos.types.interactions.interaction")
    sdk = interaction.Interaction.model_validate(
        {"id": "i", "status": "completed", "steps": json.loads(json.dumps(steps))}
    )
    turn = cs.Turn(
        record=cs.TurnRecord(
            conversation_id="c", seq=1, mode_used="stateless", reason="chained", status="x"
        ),
        input_steps=[],
        steps=steps,
    )
    assert turn.text == (sdk.output_text or "")
    for ours, theirs in [
        (turn.output_image, sdk.output_image),
        (turn.output_audio, sdk.output_audio),
        (turn.output_video, sdk.output_video),
    ]:
        assert ours == (None if theirs is None else theirs.model_dump(mode="json"))


def stream_events(steps: list[dict[str, Any]], *, chunk: int) -> list[dict[str, Any]]:
    """The events a server streams for an answer of ``steps``, without the final ``steps``."""
    events: list[dict[str, Any]] = [
        {"event_type": "interaction.created", "interaction": {"id": "i", "status": "in_progress"}}
    ]
    for index, step in enumerate(steps):
        kind = step["type"]
        deltas: list[dict[str, Any]] = []
        if kind == "model_output":
            # The skeleton says whether the step has a content list at all (an empty one too).
            start: dict[str, Any] = {k: [] for k in ("content",) if k in step}
            start["type"] = kind
            for part in step.get("content", []):
                if part["type"] == "text":
                    text = part["text"]
                    pieces = [text[i : i + chunk] for i in range(0, len(text), chunk)] or [""]
                    deltas += [{"type": "text", "text": piece} for piece in pieces]
                else:
                    deltas.append(part)
        elif kind == "thought":
            start = {"type": kind, "summary": []}
            deltas += [{"type": "thought_summary", "content": c} for c in step["summary"]]
            deltas.append({"type": "thought_signature", "signature": step["signature"]})
        elif kind == "function_call":
            start = {**step, "arguments": {}}
            encoded = json.dumps(step["arguments"])
            deltas += [
                {"type": "arguments_delta", "arguments": encoded[i : i + chunk]}
                for i in range(0, len(encoded), chunk)
            ]
        elif kind == "function_result":
            start = {"type": kind, "call_id": step["call_id"]}
            deltas.append({"type": kind, "result": step["result"], "name": step["name"]})
        elif kind.startswith("tool_search"):
            start = {k: v for k, v in step.items() if k in ("type", "id", "call_id")}
            deltas.append({k: v for k, v in step.items() if k not in ("id", "call_id")})
        else:
            start = step
        events.append({"event_type": "step.start", "index": index, "step": start})
        events += [{"event_type": "step.delta", "index": index, "delta": d} for d in deltas]
        events.append({"event_type": "step.stop", "index": index})
    events.append(
        {"event_type": "interaction.completed", "interaction": {"id": "i", "status": "completed"}}
    )
    return events


@settings(max_examples=300, deadline=None, database=None)
@given(steps=st.lists(answer_steps, max_size=5), chunk=st.integers(1, 6))
def test_a_streamed_answer_stores_the_steps_of_the_same_answer_sent_unary(
    steps: list[dict[str, Any]], chunk: int
) -> None:
    from convostore._core.streaming import StreamAccumulator

    accumulator = StreamAccumulator()
    for event in stream_events(copy.deepcopy(steps), chunk=chunk):
        accumulator.add(event)
    assert accumulator.completed
    assert exact(accumulator.steps) == exact(steps)
    assert (
        accumulator.interaction().output_text
        == cs.Interaction.from_raw({"status": "completed", "steps": steps}).output_text
    )

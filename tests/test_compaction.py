"""Context lifecycle: long threads keep working. The record stays whole; requests carry a
compacted view (a summary, or nothing, in place of the oldest turns)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import convostore as cs
from convostore import _transfer
from convostore._core import context as ctx
from convostore.emulator import Emulator
from convostore.emulator._create import resolve_chain
from convostore.models import CompactionRecord, Reason

KEY = "test-key"
MODEL = "gemini-3-flash-preview"


@pytest.fixture
def client(emulator: Emulator) -> Iterator[cs.InteractionsClient]:
    with cs.InteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=0) as c:
        yield c


def _turn_bodies(emulator: Emulator) -> list[dict[str, Any]]:
    """The create bodies of turns: summaries (their prompt last) and refusals left out."""
    out = []
    for r in emulator.requests:
        if r.method != "POST" or r.body is None:
            continue
        last = (r.body.get("input") or [{}])[-1]
        if last.get("content") == [{"type": "text", "text": ctx.SUMMARY_PROMPT}]:
            continue
        out.append(r.body)
    return out


def _seen(emulator: Emulator, body: dict[str, Any]) -> list[Any]:
    """What the model saw for a create: the chain it continued, then its input."""
    chain = resolve_chain(emulator._state, body.get("previous_interaction_id"))
    return [*chain, *body["input"]]


def _strip(steps: list[Any]) -> list[Any]:
    # the emulator keeps its stored steps verbatim; ids and signatures are the model's own
    return [dict(s) for s in steps]


@pytest.mark.parametrize("mode", ["server", "stateless", "auto"])
@pytest.mark.parametrize("summarizer", ["trim", "summarize"])
def test_300_turns_in_a_small_window(
    emulator: Emulator,
    client: cs.InteractionsClient,
    tmp_path: Any,
    mode: str,
    summarizer: str,
) -> None:
    emulator.context_window(400)
    policy = cs.CompactionPolicy(max_input_tokens=250, keep_turns=4, summarizer=summarizer)
    url = "memory://" if summarizer == "trim" else f"sqlite:///{tmp_path}/c.db"
    with cs.Conversations(url, client, model=MODEL, compaction=policy) as convos:
        conv = convos.create(tenant="acme", mode=mode)
        turns = [conv.send(f"message number {i} about things") for i in range(1, 301)]
        assert [t.record.seq for t in turns] == list(range(1, 301))
        record = conv.refresh()
        assert record.step_count == len(conv.history()) == 600
        assert _transfer.verify(convos.store, record) == []
        compactions = conv.compactions()
        assert len(compactions) == record.context_epoch > 5
        assert {c.policy for c in compactions} == {"tokens"}
        assert all(c.summarizer == summarizer for c in compactions)
        bodies = _turn_bodies(emulator)
        assert len(bodies) == 300
        for k in (1, 2, 50, 151, 299, 300):
            assert conv.context(at_turn=k) == _strip(_seen(emulator, bodies[k - 1])), k
        if mode != "stateless":
            reseeded = [t for t in conv.turns() if t.reason == Reason.COMPACTED]
            assert len(reseeded) == len(compactions)
            assert all(t.previous_interaction_id is None for t in reseeded)
        # the next request's view: the newest compaction's replacement, then what followed
        view = conv.context()
        assert view[: len(compactions[-1].steps)] == compactions[-1].steps
        if summarizer == "summarize":
            assert all(c.interaction_id and c.usage for c in compactions)
            assert view[0]["content"][0]["text"].startswith(ctx.SUMMARY_LEAD)


@pytest.mark.parametrize("mode", ["server", "stateless"])
def test_a_refusal_compacts_and_retries_once(
    emulator: Emulator, client: cs.InteractionsClient, mode: str
) -> None:
    emulator.context_window(300)
    with cs.Conversations("memory://", client, model=MODEL) as convos:  # no trigger
        conv = convos.create(tenant="acme", mode=mode)
        for i in range(1, 81):
            conv.send(f"message number {i} about things")
        turns = conv.turns()
        assert len(turns) == 80
        refused = [t for t in turns if t.reason == Reason.TOO_LARGE]
        compactions = conv.compactions()
        assert refused and len(refused) == len(compactions)
        assert {c.policy for c in compactions} == {"too_large"}
        assert _transfer.verify(convos.store, conv.refresh()) == []
        assert [t.context_epoch for t in refused] == [c.epoch for c in compactions]


def test_without_compaction_a_long_thread_is_refused(
    emulator: Emulator, client: cs.InteractionsClient
) -> None:
    emulator.context_window(200)
    with cs.Conversations("memory://", client, model=MODEL, compaction=None) as convos:
        conv = convos.create(tenant="acme", mode="stateless")
        with pytest.raises(cs.APIError, match="exceeds the maximum number of tokens"):
            for i in range(1, 60):
                conv.send(f"message number {i} about things")


def test_compact_on_demand_fork_and_the_turn_boundary(
    emulator: Emulator, client: cs.InteractionsClient
) -> None:
    with cs.Conversations("memory://", client, model=MODEL) as convos:
        conv = convos.create(tenant="acme", mode="server")
        for i in range(1, 7):
            conv.send(f"message {i}")
        assert conv.compact(keep_turns=10) is None  # nothing old enough to cover
        done = conv.compact(keep_turns=2, summarizer=lambda prior, covered: [covered[0]])
        assert isinstance(done, CompactionRecord)
        assert (done.last_turn, done.last_seq, done.summarizer) == (4, 8, "callable")
        assert done.audit_hash == conv.turns()[3].audit_hash
        assert conv.context() == [conv.history()[0], *conv.history()[8:]]
        assert len(conv.history()) == 12  # nothing deleted
        # scroll-back reads the whole record, compacted turns included
        every = conv.history()
        assert conv.history(before_seq=5, limit=2) == every[2:4]
        assert conv.history(after_seq=10, limit=5) == every[10:]
        assert [s.seq for s in conv.page(before_seq=13, limit=3)] == [10, 11, 12]
        with pytest.raises(cs.ValidationError):
            conv.history(newest=2, limit=2)
        nxt = conv.send("after")
        assert nxt.reason == Reason.COMPACTED and nxt.record.context_epoch == 1
        fork = conv.fork(at_turn=5)
        assert [c.last_turn for c in fork.compactions()] == [4]
        early = conv.fork(at_turn=3)
        assert early.compactions() == []


def test_the_emulator_refuses_in_the_services_shape(emulator: Emulator) -> None:
    import httpx

    emulator.context_window(3)
    body = {"model": MODEL, "input": "one two three four"}
    answer = httpx.post(
        f"{emulator.url}/v1beta/interactions", json=body, headers={"x-goog-api-key": KEY}
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "invalid_request"
    assert "exceeds the maximum number of tokens" in error["message"]
    with pytest.raises(cs.ValidationError):
        emulator.context_window(0)


@pytest.fixture(params=["sqlite", "postgresql", "mysql", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'chat.db'}"
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return f"{url}?key_prefix={request.getfixturevalue('redis_prefix')}"
    from convostore import _migrate

    url = request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url")
    _migrate.upgrade(url)
    return str(url)


@pytest.mark.parametrize("encrypted", [False, True])
def test_compactions_round_trip_on_every_backend(
    emulator: Emulator,
    client: cs.InteractionsClient,
    backend_url: str,
    encrypted: bool,
) -> None:
    import io
    import os

    keyring = cs.KeyRing({"k1": os.urandom(32)}, primary="k1") if encrypted else None
    store = cs.open_store(backend_url, encryption=keyring)
    with cs.Conversations(store, client, model=MODEL) as convos:
        conv = convos.create(tenant="acme", mode="auto")
        for i in range(1, 6):
            conv.send(f"message {i}")
        first = conv.compact(keep_turns=2, summarizer="summarize")
        assert first is not None
        conv.send("six")
        second = conv.compact(keep_turns=1, summarizer="trim")
        assert second is not None and second.steps == first.steps
        turn = conv.send("seven")
        assert turn.reason == Reason.COMPACTED and turn.record.context_epoch == 2
        record = conv.refresh()
        assert _transfer.verify(store, record) == []
        assert conv.compactions() == [first, second]
        if encrypted:  # the summary is a payload: sealed at rest
            raw = store.inner.load_compactions(conv.id, tenant="acme")  # type: ignore[attr-defined]
            assert "Summary" not in str(raw[0].steps)
        # export -> import into a fresh store
        out = io.StringIO()
        _transfer.export(store, out, [record])
        bundles = _transfer.read_export(out.getvalue().splitlines())
        assert bundles[0].compactions == [first, second]
        target = cs.open_store("memory://")
        report = _transfer.import_bundles(target, bundles)
        assert report.created == [conv.id]
        assert target.get_conversation(conv.id, tenant="acme") == record
        assert target.load_compactions(conv.id, tenant="acme") == [first, second]
        assert _transfer.import_bundles(target, bundles).skipped == [conv.id]
        assert _transfer.verify(target, record) == []
        # copy back into the backend under test, as another tenant's store would hold it
        copied = cs.open_store("memory://")
        assert _transfer.copy(store, copied, tenant="acme", conversation_id=conv.id).created
        assert copied.load_compactions(conv.id, tenant="acme") == [first, second]
        # fork: only the compactions that end at or before the fork point
        assert [c.epoch for c in conv.fork(at_turn=4).compactions()] == [1]
        assert conv.fork(at_turn=2).compactions() == []
        forked = conv.fork()
        assert forked.compactions() == [
            c.model_copy(update={"conversation_id": forked.id}) for c in (first, second)
        ]
        assert _transfer.verify(store, forked.refresh()) == []
        assert forked.context() == conv.context()
        target.close()
        copied.close()
    store.close()


def test_cli_compact_show_marker_and_context_at(
    emulator: Emulator,
    client: cs.InteractionsClient,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from convostore.cli import run

    monkeypatch.setenv("COLUMNS", "200")
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with cs.Conversations(url, client, model=MODEL) as convos:
        conv = convos.create(tenant="acme", mode="server")
        for i in range(1, 6):
            conv.send(f"message {i}")
    where = ("--store", url, "--tenant", "acme")
    capsys.readouterr()
    assert run(["compact", conv.id, *where, "--keep-turns", "2"]) == 0
    assert "turns 1\u20133 compacted: trim (manual)" in capsys.readouterr().out
    with cs.Conversations(url, client, model=MODEL) as convos:
        again = convos.get(conv.id, tenant="acme")
        again.send("six")
        expected = again.context(at_turn=6)
    assert run(["show", conv.id, *where]) == 0
    text = capsys.readouterr().out
    assert text.index("turns 1\u20133 compacted") < text.index("turn 4 ·")
    assert "turn 6 · stateless · compacted" in text
    assert run(["show", conv.id, *where, "--context-at", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert run(["compact", conv.id, *where, "--keep-turns", "9"]) == 0
    assert "nothing to compact" in capsys.readouterr().out


def test_the_async_flavour_compacts_on_a_refusal_and_on_demand(emulator: Emulator) -> None:
    import asyncio

    async def main() -> None:
        emulator.context_window(150)
        async with (
            cs.AsyncInteractionsClient(api_key=KEY, base_url=emulator.url) as client,
            cs.AsyncConversations("memory://", client, model=MODEL) as convos,
        ):
            conv = await convos.create(tenant="acme", mode="auto")
            for i in range(1, 25):
                await conv.send(f"message number {i} about things")
            turns = await conv.turns()
            assert any(t.reason == Reason.TOO_LARGE for t in turns)
            done = await conv.compact(keep_turns=1)
            assert done is not None and done.policy == "manual"
            assert (await conv.context())[-1] == (await conv.history())[-1]
            nxt = await conv.send("and now?")
            assert nxt.reason == Reason.COMPACTED
            assert await conv.context(at_turn=nxt.record.seq) == [
                *done.steps,
                *(await conv.history())[done.last_seq : -2],
                *nxt.input_steps,
            ]

    asyncio.run(main())


def _turn(seq: int, status: str = "completed") -> Any:
    from convostore.models import TurnRecord

    return TurnRecord(
        conversation_id="c", seq=seq, mode_used="server", reason=Reason.CHAINED, status=status
    )


def _steps(per_turn: list[int]) -> list[Any]:
    from convostore.models import StoredStep

    out = []
    for turn, count in enumerate(per_turn, start=1):
        for _ in range(count):
            seq = len(out) + 1
            out.append(
                StoredStep(
                    conversation_id="c",
                    seq=seq,
                    turn_seq=turn,
                    type="user_input",
                    payload={"type": "user_input"},
                )
            )
    return out


def test_the_cut_never_separates_a_call_from_its_result() -> None:
    steps = _steps([2, 3, 2, 2, 2])
    # turn 3 ended in requires_action: turn 4 answers it, so the cut may not fall after 3
    turns = [_turn(1), _turn(2), _turn(3, "requires_action"), _turn(4), _turn(5)]
    assert ctx.cut(turns, steps, after_turn=0, keep_turns=2) == (2, 5)
    assert ctx.cut(turns, steps, after_turn=0, keep_turns=1) == (4, 9)
    assert ctx.cut(turns, steps, after_turn=2, keep_turns=2) is None  # nothing new to cover
    assert ctx.cut(turns, steps, after_turn=0, keep_turns=5) is None


def test_policy_budgets_triggers_and_refusals() -> None:
    from convostore._exceptions import BadRequestError, NotFoundError

    policy = cs.CompactionPolicy(max_input_tokens=900, fraction=0.5, limits={"small": 1000})
    assert policy.budget("small") == 500 and policy.budget("unknown") == 900
    assert cs.CompactionPolicy(fraction=0.8).budget("gemini-2.5-flash") == int(1_048_576 * 0.8)
    assert cs.CompactionPolicy().budget("small") is None
    record = cs.ConversationRecord(id="c", tenant="t", model="small")
    usage = _turn(1).model_copy(update={"usage": {"total_input_tokens": 500}})
    assert ctx.should_compact(policy, record, usage)
    assert not ctx.should_compact(policy, record, _turn(1))
    assert not ctx.should_compact(None, record, usage)
    for bad in (
        {"max_input_tokens": 0},
        {"fraction": 1.5},
        {"keep_turns": -1},
        {"summarizer": "shrink"},
    ):
        with pytest.raises(cs.ValidationError):
            cs.CompactionPolicy(**bad)
    big = BadRequestError(
        "The input token count (9) exceeds the maximum number of tokens allowed (3).",
        status_code=400,
    )
    assert ctx.too_large(big)
    assert not ctx.too_large(BadRequestError("bad field", status_code=400))
    assert not ctx.too_large(NotFoundError("exceeds tokens", status_code=404))

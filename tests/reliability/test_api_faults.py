"""API faults from the emulator: retried ones succeed; the others raise a typed error, commit
nothing, and the next send works."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import convostore as cs
from convostore import _transfer
from convostore.emulator import Emulator

pytestmark = pytest.mark.reliability

KEY = "fault-key-0123456789"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> str:
    return make_store_url(request.param)


@contextlib.contextmanager
def conversation(
    store_url: str, emulator: Emulator, *, mode: str = "server", **client_options: Any
) -> Iterator[cs.Conversation]:
    options: dict[str, Any] = {"max_retries": 2, **client_options}
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, **options) as client,
        cs.Conversations(store_url, client) as convos,
    ):
        conv = convos.create(tenant="faults", mode=mode)  # type: ignore[arg-type]
        conv.send("I have 2 dogs in my house.")
        yield conv


def state(conv: cs.Conversation) -> tuple[Any, ...]:
    record = conv.refresh()
    return (record.version, record.turn_count, record.step_count, conv.history(), conv.turns())


def assert_healthy(conv: cs.Conversation, turns: int) -> None:
    record = conv.refresh()
    assert _transfer.verify(conv._store, record) == []
    assert record.turn_count == turns == record.version


def creates(emulator: Emulator) -> int:
    return sum(1 for r in emulator.requests if r.method == "POST")


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "retry_after": 0.05},
        {"status": 429, "retry_after_ms": 20},
        {"status": 503, "retry_after_ms": 10},
        {"status": 503},
    ],
    ids=["429-retry-after", "429-retry-after-ms", "503-retry-after-ms", "503-backoff"],
)
def test_retryable_faults_are_retried_and_the_turn_succeeds(
    store_url: str, emulator: Emulator, fault: dict[str, Any]
) -> None:
    with conversation(store_url, emulator) as conv:
        emulator.reset()
        times = 1 if "retry_after" not in fault and "retry_after_ms" not in fault else 2
        emulator.fail(**fault, times=times)
        turn = conv.send("How many paws are in my house?")
        assert creates(emulator) == times + 1  # the faults, then the answer
        assert turn.seq == 2 and turn.text
        assert turn.record.previous_interaction_id == conv.turns()[0].interaction_id
        assert_healthy(conv, 2)


def _past_retry_budget(conv: cs.Conversation, emulator: Emulator) -> None:
    emulator.fail(500, times=3, retry_after_ms=5)  # max_retries=2: three answers, all 500
    with pytest.raises(cs.InternalServerError):
        conv.send("lost to 500s")


def _read_timeout(conv: cs.Conversation, emulator: Emulator) -> None:
    # a client of its own with a short read timeout: the other calls keep the default one
    with (
        cs.InteractionsClient(api_key=KEY, base_url=emulator.url, timeout=0.3) as impatient,
        cs.Conversations(conv._owner.store, impatient) as convos,
    ):
        emulator.delay(1.0, times=1)
        with pytest.raises(cs.APITimeoutError):
            convos.get(conv.id, tenant=conv.tenant).send("too slow")
    # A create that may have reached the server is never sent twice.
    assert creates(emulator) == 1


def _stream_cut(conv: cs.Conversation, emulator: Emulator) -> None:
    emulator.cut_stream(4)
    with pytest.raises(cs.StreamError), conv.stream("cut me off") as events:
        for _ in events:
            pass


def _stream_error_event(conv: cs.Conversation, emulator: Emulator) -> None:
    emulator.fail_stream(3, code="internal", message="injected")
    with pytest.raises(cs.StreamError), conv.stream("error event") as events:
        for _ in events:
            pass


@pytest.mark.parametrize(
    "inject", [_past_retry_budget, _read_timeout, _stream_cut, _stream_error_event]
)
@pytest.mark.parametrize("mode", ["server", "stateless"])
def test_unrecoverable_faults_commit_nothing_and_the_next_send_works(
    store_url: str,
    emulator: Emulator,
    inject: Callable[[cs.Conversation, Emulator], None],
    mode: str,
) -> None:
    with conversation(store_url, emulator, mode=mode) as conv:
        before = state(conv)
        emulator.reset()
        inject(conv, emulator)
        assert state(conv) == before
        emulator.reset()
        turn = conv.send("How many paws are in my house?")
        assert turn.seq == 2
        if mode == "server":
            assert turn.record.previous_interaction_id == before[4][0].interaction_id
        assert_healthy(conv, 2)


def test_async_twin_commits_nothing_on_faults_and_recovers(
    store_url: str, emulator: Emulator
) -> None:
    async def scenario() -> None:
        async with (
            cs.AsyncInteractionsClient(api_key=KEY, base_url=emulator.url, max_retries=1) as client,
            cs.AsyncConversations(store_url, client) as convos,
        ):
            conv = await convos.create(tenant="faults", mode="server")
            first = await conv.send("I have 2 dogs in my house.")
            before = (await conv.refresh(), await conv.history(), await conv.turns())
            emulator.reset()
            emulator.cut_stream(3)
            with pytest.raises(cs.StreamError):
                async with conv.stream("cut") as events:
                    async for _ in events:
                        pass
            emulator.fail(503, times=2, retry_after_ms=5)
            with pytest.raises(cs.InternalServerError):
                await conv.send("past the budget")
            assert (await conv.refresh(), await conv.history(), await conv.turns()) == before
            emulator.fail(429, times=1, retry_after=0.01)
            turn = await conv.send("How many paws are in my house?")
            assert turn.seq == 2
            assert turn.record.previous_interaction_id == first.interaction_id

    asyncio.run(scenario())

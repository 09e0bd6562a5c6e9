"""Whole turns (issue items 5 and 6), asyncio flavour.

Per-turn overhead: ``AsyncConversation.send`` against the emulator mounted in-process (httpx's
``ASGITransport``; the sync ``httpx.Client`` cannot mount an ASGI app), each turn paired with a
bare ``httpx`` POST of the very body convostore sent, to the same app, answer decoded with
``json.loads``. The difference of the medians is convostore's overhead: planning, the store's
read of the record (and of the history when replaying), the commit.

Many conversations: at the store level (the emulator would dominate otherwise), N
conversations x 10 turns appended one after the other, then again with 50 conversations in
flight at once; turns per second, and resume latency (open by id + newest 20 steps).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Literal

import httpx

import convostore as cs
from convostore.emulator import create_app

from . import _data
from ._backends import Env
from ._sizes import Sizes
from ._timing import Row, Stat


def measure(env: Env, sizes: Sizes) -> list[Row]:
    return asyncio.run(_measure(env, sizes))


async def _measure(env: Env, sizes: Sizes) -> list[Row]:
    store = cs.open_async_store(env.url, **env.options)
    try:
        rows = [
            await _overhead(env, store, sizes, "server"),
            await _overhead(env, store, sizes, "stateless"),
        ]
        rows += await _many(env, store, sizes)
        return rows
    finally:
        await store.aclose()


async def _overhead(
    env: Env, store: Any, sizes: Sizes, mode: Literal["server", "stateless"]
) -> Row:
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    app = create_app()
    transport = httpx.ASGITransport(app=app)
    base = "http://emulator.test"
    async with (
        httpx.AsyncClient(
            transport=transport, base_url=base, event_hooks={"request": [keep]}
        ) as http,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as bare_http,
    ):
        client = cs.AsyncInteractionsClient(
            base_url=base, api_key="bench", http_client=http, max_retries=0
        )
        convos = cs.AsyncConversations(store, client, model="gemini-3-flash-preview")
        conv = await convos.create(tenant="bench", mode=mode)
        ours: list[float] = []
        bare: list[float] = []
        for n in range(sizes.send_turns + 1):
            start = time.perf_counter()
            await conv.send(_data.user_text(n))
            elapsed = time.perf_counter() - start
            # the floor: the same request as a plain unary POST (convostore receives a stored
            # turn's answer as a stream, to record its id early; a bare client would not)
            request = sent[-1]
            body = json.loads(request.content)
            body.pop("stream", None)
            start = time.perf_counter()
            response = await bare_http.post(
                request.url.path,
                content=json.dumps(body).encode(),
                headers={"content-type": "application/json", "x-goog-api-key": "bench"},
            )
            json.loads(response.content)
            bare_elapsed = time.perf_counter() - start
            if n:  # the first turn warms both paths
                ours.append(elapsed)
                bare.append(bare_elapsed)
        mine, theirs = Stat.of(ours), Stat.of(bare)
        overhead = (mine.median - theirs.median) * 1000
        return Row(
            env.name,
            f"send, {mode} mode ({sizes.send_turns} turns)",
            mine,
            reference=theirs,
            reference_name="bare unary POST of the same body",
            note=f"overhead {overhead:.2f} ms per turn",
        )


async def _many(env: Env, store: Any, sizes: Sizes) -> list[Row]:
    rows = []
    for concurrency in (1, sizes.concurrency):
        records = [_data.fresh(tenant="bench-many") for _ in range(sizes.many_conversations)]
        plans = [_data.commits(r, sizes.many_turns) for r in records]
        queue = list(zip(records, plans, strict=True))

        async def worker(queue: list[Any] = queue) -> None:
            while queue:
                record, commits = queue.pop()
                await store.create_conversation(record)
                for commit in commits:
                    await store.append_turn(commit)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        rate = sizes.many_conversations * sizes.many_turns / elapsed
        rows.append(
            Row(
                env.name,
                f"{sizes.many_conversations} conversations x {sizes.many_turns} turns, "
                f"{concurrency} at once (turns/s)",
                Stat(rate, rate, rate, 1),
                unit="turns/s",
                note="create + appends, store level",
            )
        )
    sample = random.Random(7).sample(records, min(sizes.resume_samples, len(records)))
    times = []
    for record in sample:
        start = time.perf_counter()
        found = await store.get_conversation(record.id, tenant=record.tenant)
        await store.load_steps(found.id, tenant=found.tenant, newest=20)
        times.append(time.perf_counter() - start)
    rows.append(
        Row(
            env.name,
            f"resume among {sizes.many_conversations} conversations (open + newest 20)",
            Stat.of(times),
        )
    )
    return rows

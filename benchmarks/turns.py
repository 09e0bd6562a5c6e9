"""Whole turns (issue items 5 and 6), both flavours.

Per-turn overhead: ``Conversation.send`` (sync) and ``AsyncConversation.send``, each turn
paired call by call with the floor: the very body convostore sent, POSTed by a bare ``httpx``
client of the same flavour as a stream (``stream: true``: convostore receives every stored
turn's answer as a stream, to record the interaction's id as soon as the server names it),
each ``data:`` line decoded with ``json.loads``. The overhead is the median of the per-turn
differences: planning, the store's read of the record, the pending record, the id recorded,
the commit, assembling the answer. Two servers:

- **canned**: the answer is the emulator's own recorded SSE reply, served by
  ``httpx.MockTransport`` in the calling thread, so the difference is convostore's work alone,
  with no server and no scheduling noise in it;
- **emulator**: the emulator in a process of its own on loopback (as a deployment talks to
  the API); its own time and the machine's noise are in both sides.

The bare unary POST of the same body is printed beside, for reference.

Many conversations: at the store level (the emulator would dominate otherwise), N
conversations x 10 turns appended one after the other, then again with 50 conversations in
flight at once; turns per second, and resume latency (open by id + newest 20 steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import httpx

import convostore as cs

from . import _data
from ._backends import Env
from ._sizes import Sizes
from ._timing import Row, Stat

Mode = Literal["server", "stateless"]
HEADERS = {"content-type": "application/json", "x-goog-api-key": "bench"}


def measure(env: Env, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    with _emulator() as base:
        answer = _recorded_answer(base)
        for server in ("canned", "emulator"):
            for mode in ("server", "stateless"):
                rows.append(_sync_overhead(env, sizes, base, answer, server, mode))
                rows.append(asyncio.run(_async_overhead(env, sizes, base, answer, server, mode)))
    rows += asyncio.run(_store_level(env, sizes))
    return rows


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def _emulator() -> Iterator[str]:
    """``convostore emulator`` in a process of its own; its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "convostore.emulator", "--port", str(port), "--no-api-key"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/v1beta/interactions/none", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def _recorded_answer(base: str) -> bytes:
    """One streamed answer of the emulator to a bench turn, as it sent it."""
    body = {
        "model": "gemini-3-flash-preview",
        "input": [
            {"type": "user_input", "content": [{"type": "text", "text": _data.user_text(0)}]}
        ],
        "stream": True,
    }
    return httpx.post(f"{base}/v1beta/interactions", json=body, headers=HEADERS).content


def _canned(answer: bytes) -> httpx.MockTransport:
    """Serve the recorded answer to every create, under a fresh interaction id each time."""
    first = json.loads(answer.split(b"data: ", 1)[1].split(b"\n", 1)[0])
    old = first["interaction"]["id"].encode()

    def handler(request: httpx.Request) -> httpx.Response:
        fresh = f"v1_{uuid.uuid4().hex}".encode()
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=answer.replace(old, fresh)
        )

    return httpx.MockTransport(handler)


def _bodies(request: httpx.Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body convostore sent, as a bare client would send it streamed and unary (the
    floor encodes it itself: encoding a replayed history is a cost of the request, which
    has a target of its own in ``replay.py``)."""
    body = json.loads(request.content)
    return {**body, "stream": True}, {k: v for k, v in body.items() if k != "stream"}


def _row(env: Env, flavour: str, server: str, mode: Mode, turns: int, samples: Any) -> Row:
    ours, floor, unary, diffs = samples
    mine, theirs = Stat.of(ours), Stat.of(floor)
    overhead = statistics.median(diffs) * 1000
    unary_note = f"; bare unary POST {statistics.median(unary) * 1000:.3f} ms" if unary else ""
    return Row(
        env.name,
        f"{flavour}: send, {mode} mode, {server} answer ({turns} turns)",
        mine,
        reference=theirs,
        reference_name="bare streamed POST of the same body",
        note=f"overhead {overhead:.3f} ms per turn{unary_note}",
    )


# --------------------------------------------------------------------------- sync


def _sync_overhead(
    env: Env, sizes: Sizes, base: str, answer: bytes, server: str, mode: Mode
) -> Row:
    sent: list[httpx.Request] = []
    transport: Any = _canned(answer) if server == "canned" else None
    hooks = {"request": [sent.append]}
    store = cs.open_store(env.url, **env.options)
    with (
        httpx.Client(base_url=base, transport=transport, event_hooks=hooks) as http,
        httpx.Client(base_url=base, transport=transport) as bare,
    ):
        client = cs.InteractionsClient(
            base_url=base, api_key="bench", http_client=http, max_retries=0
        )
        convos = cs.Conversations(store, client, model="gemini-3-flash-preview")
        conv = convos.create(tenant="bench", mode=mode)
        ours: list[float] = []
        floor: list[float] = []
        unary: list[float] = []
        diffs: list[float] = []
        for n in range(sizes.send_turns + 3):
            start = time.perf_counter()
            conv.send(_data.user_text(n))
            elapsed = time.perf_counter() - start
            streamed, plain = _bodies(sent[-1])
            path = sent[-1].url.path
            start = time.perf_counter()
            content = json.dumps(streamed, separators=(",", ":"), ensure_ascii=False).encode()
            with bare.stream("POST", path, content=content, headers=HEADERS) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        json.loads(line[5:])
            bare_elapsed = time.perf_counter() - start
            if server == "emulator":
                start = time.perf_counter()
                content = json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode()
                json.loads(bare.post(path, content=content, headers=HEADERS).content)
                unary.append(time.perf_counter() - start)
            if n >= 3:  # the first turns warm both paths
                ours.append(elapsed)
                floor.append(bare_elapsed)
                diffs.append(elapsed - bare_elapsed)
        store.close()
    return _row(env, "sync", server, mode, sizes.send_turns, (ours, floor, unary, diffs))


# --------------------------------------------------------------------------- asyncio


async def _async_overhead(
    env: Env, sizes: Sizes, base: str, answer: bytes, server: str, mode: Mode
) -> Row:
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    transport: Any = _canned(answer) if server == "canned" else None  # serves both flavours
    store = cs.open_async_store(env.url, **env.options)
    async with (
        httpx.AsyncClient(
            base_url=base, transport=transport, event_hooks={"request": [keep]}
        ) as http,
        httpx.AsyncClient(base_url=base, transport=transport) as bare,
    ):
        client = cs.AsyncInteractionsClient(
            base_url=base, api_key="bench", http_client=http, max_retries=0
        )
        convos = cs.AsyncConversations(store, client, model="gemini-3-flash-preview")
        conv = await convos.create(tenant="bench", mode=mode)
        ours: list[float] = []
        floor: list[float] = []
        unary: list[float] = []
        diffs: list[float] = []
        for n in range(sizes.send_turns + 3):
            start = time.perf_counter()
            await conv.send(_data.user_text(n))
            elapsed = time.perf_counter() - start
            streamed, plain = _bodies(sent[-1])
            path = sent[-1].url.path
            start = time.perf_counter()
            content = json.dumps(streamed, separators=(",", ":"), ensure_ascii=False).encode()
            async with bare.stream("POST", path, content=content, headers=HEADERS) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        json.loads(line[5:])
            bare_elapsed = time.perf_counter() - start
            if server == "emulator":
                start = time.perf_counter()
                content = json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode()
                json.loads((await bare.post(path, content=content, headers=HEADERS)).content)
                unary.append(time.perf_counter() - start)
            if n >= 3:
                ours.append(elapsed)
                floor.append(bare_elapsed)
                diffs.append(elapsed - bare_elapsed)
    await store.aclose()
    return _row(env, "asyncio", server, mode, sizes.send_turns, (ours, floor, unary, diffs))


# --------------------------------------------------------------------------- many


async def _store_level(env: Env, sizes: Sizes) -> list[Row]:
    store = cs.open_async_store(env.url, **env.options)
    try:
        return await _many(env, store, sizes)
    finally:
        await store.aclose()


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

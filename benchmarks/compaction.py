"""The compacted view (issue 11): building it, and what it saves in request bytes.

1. The view of a 10,000-step conversation with one compaction (a summary pair in place of
   steps 1..8,000) — ``_core.context.view`` over the steps after the covered range, then the
   planner's request and the client's JSON encoding — beside building the plain replay of
   the same number of sent steps (target: <= 1.3x).
2. Request bytes at turn 300 of a stateless conversation, with and without a compaction
   covering turns 1..296 (the newest 4 kept raw).
"""

from __future__ import annotations

import json

import httpx

from convostore._async.client import AsyncInteractionsClient
from convostore._core import context, planner
from convostore.models import CompactionRecord, JSONObject, Reason

from . import _data
from ._sizes import Sizes
from ._timing import Row, Stat, paired

_STATELESS = planner.Decision("stateless", Reason.STATELESS_MODE, False, None)
_TOTAL = 10_000
_COVERED = 8_000


def _compaction(record_id: str, last_seq: int, last_turn: int) -> CompactionRecord:
    summary = " ".join(_data.user_text(i) for i in range(1, 9))  # about 1.6 KB of summary
    return CompactionRecord(
        conversation_id=record_id,
        epoch=1,
        last_seq=last_seq,
        last_turn=last_turn,
        steps=context.summary_steps(summary),
        summarizer="summarize",
        policy="tokens",
    )


def measure(sizes: Sizes) -> list[Row]:
    record, _, stored = _data.history(_TOTAL)
    record = record.model_copy(update={"mode": "stateless", "context_epoch": 1})
    compaction = _compaction(record.id, _COVERED, _COVERED // 2)
    after = stored[_COVERED:]
    plain = stored[: len(after) + len(compaction.steps)]
    new = [_data.turn_payloads(_TOTAL // 2 + 1)[0]]
    client = AsyncInteractionsClient(base_url="http://emulator.invalid", api_key="k")
    http = httpx.Client()

    def encode(history: list[JSONObject]) -> bytes:
        body = planner.plan_request(record, _STATELESS, new_steps=new, history=history)
        return client._build(http, "POST", client._url(), body=body).content

    def view() -> bytes:
        return encode(context.view(compaction, [s.payload for s in after]))

    def replay() -> bytes:
        return encode([s.payload for s in plain])

    mine, bare = paired(view, replay, sizes.replay_repeat)
    http.close()
    rows = [
        Row(
            "-",
            f"compacted view of {_TOTAL} steps ({len(after)} sent after the summary)",
            mine,
            reference=bare,
            reference_name=f"plain replay of {len(plain)} steps",
            target=1.3,
        )
    ]
    turn = 300
    rec, turns, steps = _data.history(2 * (turn - 1))
    rec = rec.model_copy(update={"mode": "stateless"})
    user: list[JSONObject] = [_data.turn_payloads(turn)[0]]
    full = planner.plan_request(rec, _STATELESS, new_steps=user, history=[s.payload for s in steps])
    cut = context.cut(turns, steps, after_turn=0, keep_turns=4)
    assert cut is not None
    compacted = _compaction(rec.id, cut[1], cut[0])
    sent = context.view(compacted, [s.payload for s in steps if s.seq > cut[1]])
    small = planner.plan_request(rec, _STATELESS, new_steps=user, history=sent)
    full_bytes = len(json.dumps(full, ensure_ascii=False).encode())
    small_bytes = len(json.dumps(small, ensure_ascii=False).encode())
    rows.append(
        Row(
            "-",
            f"request bytes at turn {turn}: compacted (turns 1-{cut[0]} summarized) vs full",
            Stat(small_bytes, small_bytes, small_bytes, 1),
            unit="B",
            reference=Stat(full_bytes, full_bytes, full_bytes, 1),
            reference_name="full replay",
        )
    )
    return rows

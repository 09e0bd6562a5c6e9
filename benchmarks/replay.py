"""Building a stateless request, and bytes per turn by mode (issue items 4 and 7).

The replay body over N stored steps is what a stateless turn costs before any I/O: the
planner's request plus the client's JSON encoding, beside a bare ``json.dumps``
of the same list (target: <= 1.3x). Bytes per turn compare the body a chained turn sends
with the body a replayed turn sends, at turn 10 and turn 100.
"""

from __future__ import annotations

import json

import httpx

from convostore._async.client import AsyncInteractionsClient
from convostore._core import planner
from convostore.models import JSONObject, Reason

from . import _data
from ._sizes import Sizes
from ._timing import Row, Stat, paired

_STATELESS = planner.Decision("stateless", Reason.STATELESS_MODE, False, None)
_CHAINED = planner.Decision("server", Reason.CHAINED, True, "v1_" + "0" * 32)


def measure(sizes: Sizes) -> list[Row]:
    record, _, stored = _data.history(sizes.replay_steps)
    record = record.model_copy(update={"mode": "stateless"})
    new = [_data.turn_payloads(sizes.replay_steps)[0]]
    client = AsyncInteractionsClient(base_url="http://emulator.invalid", api_key="k")
    http = httpx.Client()

    def ours() -> bytes:
        # what AsyncConversation._body and the client do before sending (the new input was
        # checked on its way in, the stored steps when they were written)
        history = [s.payload for s in stored]
        body = planner.plan_request(record, _STATELESS, new_steps=new, history=history)
        request = client._build(http, "POST", client._url(), body=body)
        return request.content

    payloads = [s.payload for s in stored]
    mine, bare = paired(ours, lambda: json.dumps(payloads), sizes.replay_repeat)
    # the client sends UTF-8 (fewer bytes for non-ASCII text than json.dumps' \u escapes), so
    # the floor that produces the same bytes is this one
    mine_utf8, bare_utf8 = paired(
        ours,
        lambda: json.dumps(payloads, ensure_ascii=False).encode(),
        sizes.replay_repeat,
    )
    http.close()
    rows = [
        Row(
            "-",
            f"replay body over {sizes.replay_steps} stored steps",
            mine,
            reference=bare,
            reference_name="bare json.dumps",
            target=1.3,
        ),
        Row(
            "-",
            f"replay body over {sizes.replay_steps} stored steps (same bytes)",
            mine_utf8,
            reference=bare_utf8,
            reference_name="bare json.dumps(ensure_ascii=False).encode()",
            target=1.3,
        ),
    ]
    for turn in (10, 100):
        rec, _, steps = _data.history(2 * (turn - 1))
        user: list[JSONObject] = [_data.turn_payloads(turn)[0]]
        chained = planner.plan_request(rec, _CHAINED, new_steps=user)
        replayed = planner.plan_request(
            rec, _STATELESS, new_steps=user, history=[s.payload for s in steps]
        )
        server_bytes = len(json.dumps(chained, ensure_ascii=False).encode())
        stateless_bytes = len(json.dumps(replayed, ensure_ascii=False).encode())
        rows.append(
            Row(
                "-",
                f"request bytes at turn {turn}: stateless vs server",
                Stat(stateless_bytes, stateless_bytes, stateless_bytes, 1),
                unit="B",
                reference=Stat(server_bytes, server_bytes, server_bytes, 1),
                reference_name="server (chained)",
            )
        )
    return rows

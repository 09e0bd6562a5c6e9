"""The emulator's deterministic "model": input normalisation, answers, signatures, usage.

Answer format
-------------
The main text of every answer is exactly::

    Seen {n} user turn(s); digest {d}. You said: "{latest}".

- ``n``: the number of ``user_input`` steps in the whole model-visible context (the resolved
  ``previous_interaction_id`` chain, then the new input).
- ``d``: the first 12 hex chars of the sha256 of the canonical JSON
  (``json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``) of
  ``{"system_instruction": <str or null>, "history": [every step before the newest user_input]}``.
  It covers the system instruction and every prior step, so it is the same whether the history
  came through a chain or was replayed with ``store: false``.
- ``latest``: the text parts of the newest ``user_input`` step, joined by a space.

:func:`parse_answer` reads ``(n, digest, latest)`` back (a ``latest`` that itself contains
``".`` followed by a space is cut there).

Triggers (case-insensitive, in the latest user text)
-----------------------------------------------------
- ``think``: a ``thought`` step (``signature`` + short ``summary``) precedes the answer.
- a declared ``function`` tool named in the text (``call <name>`` or just ``<name>``): a signed
  ``thought`` then a ``function_call`` (id ``call_<k>``, arguments built from the declared
  parameters: strings take the words after ``for``/``in``, else ``"x"``; numbers ``1``;
  booleans ``true``), status ``requires_action`` and no text.
- with a ``{"type": "tool_search"}`` tool also declared, that function is first found by a
  server-side tool search: a ``tool_search_call`` (id ``search_<k>``, ``arguments:
  {"function_names": [<name>]}``) and its ``tool_search_result`` (the declaration) precede the
  signed thought.
- a ``function_result`` as the last input step: the answer ends with
  `` Result of {name}: {result as JSON}``.
- ``long`` or ``story``: about 300 more words follow the main text after a blank line.
- ``json`` with a ``response_format``: the answer is the JSON object
  ``{"answer": <main text>, "seen": n, "digest": d}``.

Thought signatures are HMAC-SHA256 (a per-process secret), base64, over the canonical JSON of
the list of ``function_call`` steps that directly follow the thought (``[]`` when none).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONTENT_TYPES",
    "Generation",
    "InputError",
    "canonical_json",
    "count_words",
    "generate",
    "normalize_input",
    "parse_answer",
    "sign_calls",
    "validate_context",
]

CONTENT_TYPES = frozenset({"text", "image", "audio", "video", "document"})
FUNCTION_RESULT_ORDER_MESSAGE = (
    "Please ensure that function response turn comes immediately after a function call turn."
)

_SECRET = secrets.token_bytes(32)
_ANSWER = re.compile(
    r'^Seen (\d+) user turn\(s\); digest ([0-9a-f]{12})\. You said: "(.*?)"\.(?=\s|$)', re.DOTALL
)
_LOREM_TEXT = (
    "the emulator keeps telling a long and patient story about a small lighthouse on a rocky "
    "coast where the keeper counts ships at night and writes every name into a blue notebook "
    "so that nothing said to the sea is ever lost"
)


class InputError(ValueError):
    """The request input is malformed; the message is sent back as ``invalid_request``."""


def canonical_json(value: Any) -> str:
    """The canonical JSON used for digests and signatures."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sign_calls(calls: Sequence[Any]) -> str:
    """The thought signature covering the ``function_call`` steps that follow a thought."""
    mac = hmac.new(_SECRET, canonical_json(list(calls)).encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def parse_answer(text: str) -> tuple[int, str, str]:
    """Read ``(n, digest, latest user text)`` from an emulator answer (plain or JSON).

    Raises:
        ValueError: the text is not an emulator answer.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        stripped = str(json.loads(stripped)["answer"])
    match = _ANSWER.match(stripped)
    if match is None:
        raise ValueError(f"not an emulator answer: {text[:80]!r}")
    return int(match.group(1)), match.group(2), match.group(3)


def _is_content(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") in CONTENT_TYPES


def _is_step(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("type"), str)
        and item["type"] not in CONTENT_TYPES
    )


def normalize_input(value: Any) -> list[dict[str, Any]]:
    """Turn a create ``input`` into the list of steps the model sees (and that is stored).

    A string or content object(s) become one ``user_input`` step; a list of steps is kept
    verbatim (unknown types and extra keys included).

    Raises:
        InputError: the input has none of the accepted shapes.
    """
    if isinstance(value, str):
        return [{"type": "user_input", "content": [{"type": "text", "text": value}]}]
    if _is_content(value):
        return [{"type": "user_input", "content": [value]}]
    if isinstance(value, dict):
        if _is_step(value):
            return [value]
        raise InputError("input object must have a string 'type' (a content or a step)")
    if isinstance(value, list) and value:
        if all(_is_content(item) for item in value):
            return [{"type": "user_input", "content": list(value)}]
        if all(_is_step(item) for item in value):
            return list(value)
        raise InputError(
            "input list must hold either content objects or steps, each with a string 'type'"
        )
    if value is None:
        raise InputError("input is required")
    raise InputError("input must be a string, a content object, or a non-empty list")


def _check_function_result(context: list[dict[str, Any]], index: int) -> None:
    call_id = context[index].get("call_id")
    j = index - 1
    while j >= 0 and context[j].get("type") == "function_result":
        j -= 1
    turn_calls: set[Any] = set()
    while j >= 0 and context[j].get("type") not in ("user_input", "function_result"):
        if context[j].get("type") == "function_call":
            turn_calls.add(context[j].get("id"))
        j -= 1
    if call_id not in turn_calls:
        raise InputError(
            f"function_result call_id {call_id!r} does not answer a function_call of the "
            f"model turn right before it. {FUNCTION_RESULT_ORDER_MESSAGE}"
        )


def _check_signed_thought(context: list[dict[str, Any]], index: int) -> None:
    start = index
    while start > 0 and context[start - 1].get("type") == "function_call":
        start -= 1
    end = index
    while end + 1 < len(context) and context[end + 1].get("type") == "function_call":
        end += 1
    thought = context[start - 1] if start > 0 else None
    signature = thought.get("signature") if thought and thought.get("type") == "thought" else None
    name = context[index].get("name")
    if not isinstance(signature, str):
        raise InputError(f"function_call {name!r} is missing its signed thought step")
    if not hmac.compare_digest(signature, sign_calls(context[start : end + 1])):
        raise InputError(f"the thought signature of function_call {name!r} does not verify")


def validate_context(chain: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    """Reject replayed calls without a valid signed thought and misplaced function results.

    Only the new input ``steps`` are checked; the stored ``chain`` was checked when it was made.

    Raises:
        InputError: a rule the service enforces is broken.
    """
    context = [*chain, *steps]
    for index in range(len(chain), len(context)):
        kind = context[index].get("type")
        if kind == "function_result":
            _check_function_result(context, index)
        elif kind == "function_call":
            _check_signed_thought(context, index)


@dataclass
class Generation:
    """What the model produced for one turn."""

    steps: list[dict[str, Any]]
    status: str
    usage: dict[str, int]
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_NOT_WORDS = ("type", "signature", "id", "call_id", "mime_type", "data")


def _strings(value: Any) -> list[str]:
    # An explicit stack, not recursion: any JSON the client sends, however deep, is counted.
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed([v for k, v in item.items() if k not in _NOT_WORDS]))
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, bool | int | float):
            found.append(str(item))
    return found


def count_words(value: Any) -> int:
    """Words in every string of a JSON value (ids, types and signatures excluded): "tokens"."""
    return sum(len(s.split()) for s in _strings(value))


_words = count_words


def _user_text(step: dict[str, Any]) -> str:
    content = step.get("content")
    parts = content if isinstance(content, list) else []
    return " ".join(
        str(p["text"]) for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _argument_value(schema: Any, text: str) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, str):
        kind = kind.lower()
    if kind in ("number", "integer"):
        return 1
    if kind == "boolean":
        return True
    match = re.search(r"\b(?:for|in)\s+([^?.!,;]+)", text, re.IGNORECASE)
    return match.group(1).strip() if match else "x"


def _called_function(tools: Any, text: str) -> dict[str, Any] | None:
    lowered = text.lower()
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        name = tool.get("name")
        if isinstance(name, str) and name and name.lower() in lowered:
            return tool
    return None


def _function_call(tool: dict[str, Any], text: str, call_number: int) -> dict[str, Any]:
    params = tool.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    arguments = {
        key: _argument_value(schema, text)
        for key, schema in (props.items() if isinstance(props, dict) else [])
    }
    return {
        "type": "function_call",
        "id": f"call_{call_number}",
        "name": tool["name"],
        "arguments": arguments,
    }


def _searches_tools(tools: Any) -> bool:
    return any(
        isinstance(t, dict) and t.get("type") == "tool_search" and t.get("execution") != "client"
        for t in (tools if isinstance(tools, list) else [])
    )


def _tool_search(tool: dict[str, Any], number: int) -> list[dict[str, Any]]:
    call_id = f"search_{number}"
    call = {
        "type": "tool_search_call",
        "id": call_id,
        "arguments": {"function_names": [tool["name"]]},
    }
    result = {"type": "tool_search_result", "call_id": call_id, "result": [tool]}
    call["signature"] = sign_calls([call])
    result["signature"] = sign_calls([result])
    return [call, result]


def _thought(latest: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    summary = f"Considering: {' '.join(latest.split()[:8])}"
    return {
        "type": "thought",
        "signature": sign_calls(calls),
        "summary": [{"type": "text", "text": summary}],
    }


def _story(words: int = 300) -> str:
    lorem = _LOREM_TEXT.split()
    return " ".join(lorem[i % len(lorem)] for i in range(words)).capitalize() + "."


def generate(
    chain: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    *,
    system_instruction: Any = None,
    tools: Any = None,
    response_format: Any = None,
) -> Generation:
    """Answer one turn from its full context (stored ``chain`` + new input ``steps``)."""
    context = [*chain, *steps]
    user_positions = [i for i, s in enumerate(context) if s.get("type") == "user_input"]
    newest = user_positions[-1] if user_positions else len(context)
    latest = _user_text(context[newest]) if user_positions else ""
    history = context[:newest]
    digest = hashlib.sha256(
        canonical_json({"system_instruction": system_instruction, "history": history}).encode()
    ).hexdigest()[:12]
    lowered = latest.lower()
    out: list[dict[str, Any]] = []
    status = "completed"
    text: str | None = None

    last = steps[-1] if steps else {}
    tool = None if last.get("type") == "function_result" else _called_function(tools, latest)
    if tool is not None:
        calls_so_far = sum(1 for s in context if s.get("type") == "function_call")
        call = _function_call(tool, latest, calls_so_far + 1)
        if _searches_tools(tools):
            out += _tool_search(tool, calls_so_far + 1)
        out += [_thought(latest, [call]), call]
        status = "requires_action"
    else:
        if "think" in lowered:
            out.append(_thought(latest, []))
        text = f'Seen {len(user_positions)} user turn(s); digest {digest}. You said: "{latest}".'
        if last.get("type") == "function_result":
            name = last.get("name") or next(
                (
                    s.get("name")
                    for s in context
                    if s.get("type") == "function_call" and s.get("id") == last.get("call_id")
                ),
                None,
            )
            text += f" Result of {name}: {canonical_json(last.get('result'))}"
        if "long" in lowered or "story" in lowered:
            text += "\n\n" + _story()
        if "json" in lowered and response_format:
            text = json.dumps(
                {"answer": text, "seen": len(user_positions), "digest": digest},
                ensure_ascii=False,
            )
        out.append({"type": "model_output", "content": [{"type": "text", "text": text}]})

    cached = _words(chain)
    total_in = _words(system_instruction) + cached + _words(steps)
    thought_words = sum(_words(s.get("summary")) for s in out if s.get("type") == "thought")
    output_words = sum(_words(s) for s in out if s.get("type") != "thought")
    usage = {
        "total_input_tokens": total_in,
        "total_cached_tokens": cached,
        "total_output_tokens": output_words,
        "total_thought_tokens": thought_words,
        "total_tokens": total_in + output_words + thought_words,
    }
    return Generation(steps=out, status=status, usage=usage, text=text)

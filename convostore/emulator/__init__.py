"""A local, deterministic Gemini Interactions API server.

It speaks the wire protocol closely enough that the official ``google-genai`` SDK works against
it unchanged, stores and chains interactions, answers from the context it sees, and injects
faults on request. Every answer starts ``Seen {n} user turn(s); digest {d}. You said: "{latest}".``
(read it back with :func:`parse_answer`); the digest covers the system instruction and every
prior step, so chained and replayed histories give the same one. The exact format and the
triggers (``think``, a declared function's name, ``long``/``story``, ``json``) are documented
in :mod:`convostore.emulator._model`. Needs the ``emulator`` extra (starlette + uvicorn)::

    from convostore.emulator import Emulator

    with Emulator() as emu:
        client = InteractionsClient(api_key="k", base_url=emu.url)
        emu.fail(429, retry_after_ms=1)

Emulated: create (unary and SSE), get (JSON, SSE replay, ``last_event_id`` resume,
``include_input``), delete, cancel; ``store`` (default true), ``previous_interaction_id``
chains without inheritance of interaction-scoped settings, retention and forced expiry;
``background`` with polling; API key check; the service's validation of ``model``/``agent``,
unknown fields, input shapes, ``function_result`` placement and signed thoughts before replayed
``function_call`` steps; usage counted in words.

Not emulated: real generation, media output, built-in tools (search, code execution, MCP…),
``continuation_token`` / ``requires_continuation``, ``interaction.status_update`` events,
webhooks, agents beyond echoing ``agent``, Vertex paths, quotas, persistence across restarts
(state is in memory; thought signatures are valid for one process only).
"""

from __future__ import annotations

from .._exceptions import ConfigurationError

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "the emulator needs starlette and uvicorn: pip install 'convostore[emulator]'"
    ) from exc

from ._app import create_app
from ._cli import main
from ._model import parse_answer
from ._server import Emulator
from ._state import RecordedRequest

__all__ = ["Emulator", "RecordedRequest", "create_app", "main", "parse_answer"]

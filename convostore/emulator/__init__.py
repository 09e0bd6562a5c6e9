"""A local, deterministic Gemini Interactions API server.

It speaks the wire protocol closely enough that the official ``google-genai`` SDK works against
it unchanged, stores and chains interactions, answers from the context it sees (see
:mod:`convostore.emulator._model` for the answer format and triggers), and injects faults on
request. Needs the ``emulator`` extra (starlette + uvicorn)::

    from convostore.emulator import Emulator

    with Emulator() as emu:
        client = InteractionsClient(api_key="k", base_url=emu.url)
        emu.fail(429, retry_after_ms=1)
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

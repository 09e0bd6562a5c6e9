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

Emulated: create (unary and SSE), get (JSON, SSE replay and live streaming of a running
interaction, ``last_event_id`` resume, ``include_input``), delete, cancel; ``store`` (default
true), ``previous_interaction_id`` chains without inheritance of interaction-scoped settings,
retention and forced expiry; the service's validation of ``model``/``agent``, unknown fields,
input shapes, ``function_result`` placement and signed thoughts before replayed
``function_call`` steps; a declared ``tool_search`` tool run server-side
(``tool_search_call`` / ``tool_search_result`` steps and deltas before a function call); API
key check; usage counted in words.

Long and unfinished turns (the controls are methods of :class:`Emulator`):

- ``requires_continuation``: :meth:`Emulator.decode_limit` caps the answer words per create;
  a longer answer comes in hops, each its own interaction, resumed with the
  ``continuation_token`` the way SDK 3.6.1's automatic continuation does it (``store`` on:
  ``previous_interaction_id`` = the hop that issued the token and no ``input``; ``store:
  false``: the original ``input`` again). A wrong or unknown token, a token sent with another
  ``previous_interaction_id`` or with another input: ``400 invalid_request``.
- A context window (:meth:`Emulator.context_window`, per model): a create whose input —
  system instruction, chained history and ``input``, counted in words as usage is — is
  larger is refused with ``400 invalid_request`` ("… exceeds the maximum number of tokens
  …"), as the service refuses it; nothing is stored.
- ``interaction.status_update`` events: after ``interaction.created`` (the running status),
  before ``interaction.completed`` when the final status is not ``completed`` /
  ``requires_action`` (with the ``continuation_token`` for ``requires_continuation``), and as
  resumable checkpoints every K text deltas (:meth:`Emulator.checkpoint_every`;
  :meth:`Emulator.cut_stream_after_checkpoint` drops a stream right after one).
- Statuses on demand (:meth:`Emulator.next_status`): ``failed`` with ``errors``,
  ``cancelled``, ``incomplete`` and ``budget_exceeded`` with the partial answer, and
  ``in_progress`` / ``queued`` / ``idle`` answered unfinished and finished later.
- ``background``: answers ``in_progress`` at once and finishes after
  :attr:`Emulator.background_seconds`, whatever the decode limit; ``cancel`` stops a running
  interaction (status ``cancelled``); cancelling one that has finished is
  ``400 failed_precondition``.
- Webhooks: an interaction that finishes after its create answered POSTs a JSON event to
  ``webhook_config.uris`` (or :attr:`Emulator.webhook_uris`), signed in the Standard Webhooks
  format Google documents for Gemini API webhooks (:func:`sign_webhook`), retried on non-2xx
  and recorded in :attr:`Emulator.webhook_deliveries`.

Not emulated: real generation, media output, built-in tools (search, code execution, MCP,
client-side tool search…), agents beyond echoing ``agent``, the RS256 JWT signature of
per-request (``webhook_config``) webhooks (all deliveries are HMAC-signed), the webhooks
management API, Vertex paths, quotas, persistence across restarts (state is in memory;
thought signatures and continuation tokens are valid for one process only).
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
from ._state import RecordedRequest, WebhookDelivery
from ._webhooks import sign_webhook

__all__ = [
    "Emulator",
    "RecordedRequest",
    "WebhookDelivery",
    "create_app",
    "main",
    "parse_answer",
    "sign_webhook",
]

"""Signed webhook events for interactions that finish in the background.

Google documents Gemini API webhooks as following the Standard Webhooks specification
(https://www.standardwebhooks.com/): each delivery is a JSON ``POST`` with the headers
``webhook-id`` (the same on every retry of one event), ``webhook-timestamp`` (Unix seconds of
the attempt) and ``webhook-signature`` = ``v1,<base64 HMAC-SHA256>`` over
``"{webhook-id}.{webhook-timestamp}.{raw body}"``. A secret of the form ``whsec_<base64>``
(as the service hands out) is used as the base64-decoded bytes; any other string as its UTF-8
bytes. The emulator signs every delivery this way, including those to per-request
``webhook_config.uris`` (the service signs those with RS256 JWTs instead; not emulated).

The event body::

    {"type": "interaction.completed", "version": "v1", "timestamp": "2026-06-01T12:00:00Z",
     "id": "<interaction id>", "interaction_id": "<interaction id>", "status": "completed",
     "user_metadata": {...}}                       # webhook_config.user_metadata, or {}

``type`` is ``interaction.<final status>`` (``interaction.completed``,
``interaction.requires_action``, ``interaction.failed``, ``interaction.cancelled``,
``interaction.incomplete``, ``interaction.budget_exceeded``). A non-2xx answer or a connection
error is retried (``webhook_attempts`` in all, short exponential backoff); every attempt is
recorded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx

from ._state import EmulatorState, StoredInteraction, WebhookDelivery, isoformat

__all__ = ["schedule_webhooks", "sign_webhook", "webhook_event"]

_BACKOFF_SECONDS = 0.05
_TIMEOUT_SECONDS = 5.0
_TASKS: set[asyncio.Task[None]] = set()


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode()


def sign_webhook(
    secret: str, webhook_id: str, timestamp: int | str, body: bytes | str
) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery.

    Args:
        secret: the signing secret (``whsec_<base64>`` or any string).
        webhook_id: the ``webhook-id`` (stable across retries of one event).
        timestamp: the ``webhook-timestamp`` (Unix seconds).
        body: the raw request body, exactly as sent.

    Returns:
        ``{"webhook-id": …, "webhook-timestamp": …, "webhook-signature": "v1,<base64>"}``.
    """
    raw = body.encode() if isinstance(body, str) else body
    signed = f"{webhook_id}.{timestamp}.".encode() + raw
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def webhook_event(rec: StoredInteraction) -> dict[str, Any]:
    """The event body for ``rec``'s final status."""
    config = rec.webhook_config or {}
    metadata = config.get("user_metadata")
    return {
        "type": f"interaction.{rec.status}",
        "version": "v1",
        "timestamp": isoformat(time.time()),
        "id": rec.id,
        "interaction_id": rec.id,
        "status": rec.status,
        "user_metadata": metadata if isinstance(metadata, dict) else {},
    }


async def _deliver(
    state: EmulatorState, uri: str, body: bytes, secret: str | None, attempts: int
) -> None:
    webhook_id = "msg_" + secrets.token_hex(12)
    async with httpx.AsyncClient(timeout=_TIMEOUT_SECONDS) as client:
        for attempt in range(1, attempts + 1):
            timestamp = int(time.time())
            headers = {"content-type": "application/json"}
            if secret is not None:
                headers.update(sign_webhook(secret, webhook_id, timestamp, body))
            else:
                headers.update({"webhook-id": webhook_id, "webhook-timestamp": str(timestamp)})
            status: int | None = None
            error: str | None = None
            try:
                response = await client.post(uri, content=body, headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            with state.lock:
                state.webhook_deliveries.append(
                    WebhookDelivery(uri, webhook_id, attempt, headers, body, status, error)
                )
            if status is not None and 200 <= status < 300:
                return
            if attempt < attempts:
                await asyncio.sleep(_BACKOFF_SECONDS * 2 ** (attempt - 1))


def schedule_webhooks(state: EmulatorState, rec: StoredInteraction) -> None:
    """Deliver ``rec``'s final-status event to its webhooks, in the background.

    Runs on the server's event loop; the caller holds the state lock."""
    config = rec.webhook_config or {}
    uris = config.get("uris") if isinstance(config.get("uris"), list) else None
    targets = [u for u in (uris or state.settings.webhook_uris) if isinstance(u, str)]
    if not targets:
        return
    body = json.dumps(webhook_event(rec), ensure_ascii=False).encode()
    secret, attempts = state.settings.webhook_secret, state.settings.webhook_attempts
    loop = asyncio.get_running_loop()
    for uri in targets:
        task = loop.create_task(_deliver(state, uri, body, secret, attempts))
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

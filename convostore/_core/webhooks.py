"""Verifying a signed webhook (the Standard Webhooks scheme), with no I/O.

A webhook carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` headers; the signature is ``v1,<base64 HMAC-SHA256>`` over
``"{id}.{timestamp}.{body}"`` with the shared secret (several may be listed, space separated,
during a secret rotation). A secret written ``whsec_<base64>`` is the base64 of the key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from .._exceptions import ValidationError

TOLERANCE_SECONDS = 300
"""How far a webhook's timestamp may be from now (replays of old deliveries are refused)."""


def secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error as exc:
            raise ValidationError("webhook secret 'whsec_…' is not valid base64") from exc
    return secret.encode()


def sign(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for a body."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_webhook(
    secret: str | bytes,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> dict[str, Any]:
    """The webhook's JSON event, once its signature and timestamp check out.

    Raises:
        ValidationError: missing headers, a bad signature, a timestamp outside the tolerance,
            or a body that is not a JSON object.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    webhook_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not webhook_id or not stamp or not signatures:
        raise ValidationError("webhook without webhook-id, webhook-timestamp or signature")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise ValidationError("webhook-timestamp is not a Unix time") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise ValidationError("webhook timestamp is outside the allowed tolerance")
    expected = sign(secret, webhook_id, timestamp, body)
    if not any(hmac.compare_digest(expected, given) for given in signatures.split()):
        raise ValidationError("webhook signature does not match")
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise ValidationError("webhook body is not JSON") from exc
    if not isinstance(event, dict):
        raise ValidationError("webhook body is not a JSON object")
    return event

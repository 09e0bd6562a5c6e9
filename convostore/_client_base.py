"""What the sync and async Interactions clients share, with no I/O: settings, request building,
input checks, the retry policy, and the translation of HTTP outcomes into convostore errors.

Retry policy (the official SDK's): 408, 409, 429 and 5xx answers and failures to connect are
retried up to ``max_retries`` times, after ``0.5 s * 2**n`` capped at 8 s, less up to 25 %
jitter, or after the server's ``retry-after-ms`` / ``Retry-After`` when positive (capped at
60 s). A read timeout or a dropped connection after a ``create`` was sent is never retried: the
server may still be working on it, and a second request would be billed twice. ``get`` and
``delete`` (idempotent) are retried on those too.
"""

from __future__ import annotations

import contextlib
import email.utils
import importlib.metadata
import json
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pydantic

from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    StreamError,
    ValidationError,
    status_error_class,
)
from .models import STEP_TYPES, Interaction, check_json, parse_step

__all__ = [
    "API_REVISION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "BaseInteractionsClient",
    "ClientSettings",
    "check_create_body",
    "is_retryable_status",
    "is_retryable_transport",
    "map_exceptions",
    "parse_interaction",
    "parse_retry_after",
    "retry_delay",
    "status_error",
]

logger = logging.getLogger("convostore.client")

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_REVISION = "2026-05-20"
# Answers can take minutes: a long read timeout, short ones for everything else.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)
DEFAULT_MAX_RETRIES = 4
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
_ERROR_TEXT_LIMIT = 500

try:
    _VERSION = importlib.metadata.version("convostore")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
    _VERSION = "0"
USER_AGENT = f"convostore/{_VERSION}"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClientSettings:
    """Resolved client options. ``timeout`` is None only when the caller's own httpx client
    should keep its timeouts."""

    api_key: str | None = field(repr=False)
    base_url: str
    api_version: str
    timeout: httpx.Timeout | None
    max_retries: int
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(
        cls,
        *,
        api_key: str | None,
        base_url: str | None,
        api_version: str,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        headers: Mapping[str, str] | None,
        own_client: bool,
    ) -> ClientSettings:
        """Apply the environment and the defaults; reject bad options.

        Raises:
            ConfigurationError: no API key for the production service.
            ValidationError: a malformed option.
        """
        url = (base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValidationError(f"base_url must be an http(s) URL, not {url[:60]!r}")
        key = api_key if api_key is not None else os.environ.get("GEMINI_API_KEY")
        if not key and url == DEFAULT_BASE_URL:
            raise ConfigurationError(
                "no API key: pass api_key= or set GEMINI_API_KEY "
                "(a key is optional only for another base_url, e.g. the local emulator)"
            )
        if not isinstance(api_version, str) or not api_version or "/" in api_version:
            raise ValidationError("api_version must be a non-empty string without '/'")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValidationError("max_retries must be an integer >= 0")
        if timeout is None:
            resolved = DEFAULT_TIMEOUT if own_client else None
        elif isinstance(timeout, httpx.Timeout):
            resolved = timeout
        elif isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            resolved = httpx.Timeout(float(timeout))
        else:
            raise ValidationError("timeout must be a positive number of seconds or httpx.Timeout")
        return cls(
            api_key=key or None,
            base_url=url,
            api_version=api_version,
            timeout=resolved,
            max_retries=max_retries,
            headers=dict(headers or {}),
        )


_MIN_REDACTED_LENGTH = 8


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced.

    A secret shorter than 8 characters is no real API key, and replacing it everywhere would
    garble messages (a key ``"k"`` would hit every word with a k), so it is left alone.
    """
    if not secret or len(secret) < _MIN_REDACTED_LENGTH:
        return text
    return text.replace(secret, "<redacted>")


# --------------------------------------------------------------------------- input checks


def check_interaction_id(interaction_id: object) -> str:
    """An interaction id must be a non-empty string that is one URL path segment."""
    if not isinstance(interaction_id, str) or not interaction_id:
        raise ValidationError("interaction_id must be a non-empty string")
    if "/" in interaction_id or interaction_id in (".", "..") or not interaction_id.isprintable():
        raise ValidationError(f"interaction_id {interaction_id[:40]!r} is not a valid id")
    return interaction_id


def check_create_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """Check a create body before anything is sent and return it as a plain dict.

    Raises:
        ValidationError: not exactly one of ``model``/``agent``; ``input`` not a string, a
            content/step object or a non-empty list of them; a known step type missing required
            fields; a value that is not plain JSON.
    """
    body = dict(body)
    if "stream" in body:
        raise ValidationError("pass stream=True as an argument (or call stream()), not in body")
    targets = [key for key in ("model", "agent") if body.get(key) is not None]
    if len(targets) != 1:
        raise ValidationError("create() needs exactly one of 'model' or 'agent'")
    if not isinstance(body[targets[0]], str) or not body[targets[0]]:
        raise ValidationError(f"{targets[0]!r} must be a non-empty string")
    if "input" in body:
        _check_input(body["input"])
    check_json(body, "request body")
    return body


def _check_input(value: object) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, dict):
        _check_item(value, "input")
        return
    if isinstance(value, list):
        if not value:
            raise ValidationError("input must not be an empty list")
        for position, item in enumerate(value):
            if not isinstance(item, dict):
                raise ValidationError(
                    f"input[{position}] must be a content or step object, not {type(item).__name__}"
                )
            _check_item(item, f"input[{position}]")
        return
    raise ValidationError(
        "input must be a string, a content object or a list of content/step objects, "
        f"not {type(value).__name__}"
    )


def _check_item(item: dict[str, Any], what: str) -> None:
    kind = item.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValidationError(f"{what} must have a string 'type'")
    if kind in STEP_TYPES:
        # The service rejects incomplete steps; so does the SDK, before sending.
        parse_step(item)


# --------------------------------------------------------------------------- retries


RETRYABLE_STATUSES = frozenset({408, 409, 429})


def is_retryable_status(status_code: int) -> bool:
    """408, 409, 429 and every 5xx."""
    return status_code in RETRYABLE_STATUSES or status_code >= 500


def is_retryable_transport(exc: httpx.HTTPError, *, idempotent: bool) -> bool:
    """Failures to connect are always retried; anything after the request may have reached the
    server (read timeout, dropped connection) only for idempotent requests."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True
    return idempotent and isinstance(exc, httpx.TransportError)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, else ``Retry-After`` in seconds or as
    an HTTP date), or None when absent, unparseable or not positive."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        with contextlib.suppress(ValueError):
            value = float(millis) / 1000.0
            if value > 0 and value == value:
                return value
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return seconds if seconds > 0 and seconds == seconds else None


def retry_delay(
    retries_done: int,
    headers: Mapping[str, str] | None = None,
    *,
    rand: float | None = None,
    now: float | None = None,
) -> float:
    """Seconds to wait before retry number ``retries_done + 1``.

    Args:
        retries_done: retries already made (0 before the first retry).
        headers: the failed response's headers, if there was a response.
        rand: a number in [0, 1) for the jitter (random by default).
        now: the current Unix time, for ``Retry-After`` dates.
    """
    asked = parse_retry_after(headers or {}, now=now)
    if asked is not None:
        return min(asked, MAX_RETRY_AFTER)
    base = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    jitter = random.random() if rand is None else rand
    return base * (1.0 - 0.25 * jitter)


# --------------------------------------------------------------------------- errors


def status_error(
    status_code: int, headers: Mapping[str, str], content: bytes, *, secret: str | None
) -> APIStatusError:
    """The typed error for an HTTP error answer.

    Understands ``{"error": {"code": "not_found", "message": ...}}``, the Google style
    ``{"error": {"code": 404, "status": "NOT_FOUND", "message": ...}}`` and non-JSON bodies.
    """
    text = content.decode("utf-8", errors="replace")
    body: Any = text
    code: str | None = None
    message = ""
    with contextlib.suppress(ValueError):
        body = json.loads(text)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        raw_code, status = error.get("code"), error.get("status")
        if isinstance(raw_code, str) and raw_code:
            code = raw_code
        elif isinstance(status, str) and status:
            code = status
        elif isinstance(raw_code, int):
            code = str(raw_code)
        message = str(error.get("message") or "")
    elif isinstance(body, str):
        message = body.strip()[:_ERROR_TEXT_LIMIT]
    if not message:
        message = httpx.codes.get_reason_phrase(status_code) or "HTTP error"
    cls = status_error_class(status_code)
    return cls(
        redact(message, secret),
        status_code=status_code,
        code=code,
        body=body,
        retry_after=parse_retry_after(headers),
    )


@contextlib.contextmanager
def map_exceptions(*, secret: str | None, mid_stream: bool = False) -> Iterator[None]:
    """The one place httpx errors become convostore errors (chained).

    Timeouts become :class:`APITimeoutError`, other transport failures
    :class:`APIConnectionError`; once a stream has started, any of them is a
    :class:`StreamError` (the stream was cut), since a partial stream is never an answer.
    """
    try:
        yield
    except httpx.HTTPError as exc:
        detail = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, secret)
        if mid_stream:
            raise StreamError(f"stream interrupted ({detail})") from exc
        if isinstance(exc, httpx.TimeoutException):
            raise APITimeoutError(f"request timed out ({detail})") from exc
        raise APIConnectionError(f"connection failed ({detail})") from exc


def parse_interaction(response: httpx.Response) -> Interaction:
    """The Interaction of a successful JSON answer (already read)."""
    content_type = response.headers.get("content-type", "")
    if not content_type.lower().startswith("application/json"):
        raise APIError(
            f"unexpected content type {content_type or 'none'!r} in a {response.status_code} answer"
        )
    try:
        data = json.loads(response.content)
    except ValueError as exc:
        raise APIError("the answer is not valid JSON") from exc
    if not isinstance(data, dict):
        raise APIError("the answer is not a JSON object")
    try:
        return Interaction.from_raw(data)
    except pydantic.ValidationError as exc:
        raise APIError(f"the answer is not an interaction: {exc.errors()[0]['msg']}") from exc


# --------------------------------------------------------------------------- client base


class BaseInteractionsClient:
    """Settings, URLs and request construction shared by both clients."""

    _settings: ClientSettings

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def api_version(self) -> str:
        return self._settings.api_version

    @property
    def max_retries(self) -> int:
        return self._settings.max_retries

    def __repr__(self) -> str:
        key = "set" if self._settings.api_key else "none"
        return (
            f"{type(self).__name__}(base_url={self._settings.base_url!r}, "
            f"api_version={self._settings.api_version!r}, api_key=<{key}>)"
        )

    def _url(self, interaction_id: str | None = None, action: str | None = None) -> str:
        url = f"{self._settings.base_url}/{self._settings.api_version}/interactions"
        if interaction_id is not None:
            url += "/" + quote(check_interaction_id(interaction_id), safe="")
        if action is not None:
            url += "/" + action
        return url

    def _headers(self, *, stream: bool) -> dict[str, str]:
        headers = {
            "Api-Revision": API_REVISION,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": USER_AGENT,
        }
        headers.update(self._settings.headers)
        if self._settings.api_key:
            headers["x-goog-api-key"] = self._settings.api_key
        return headers

    def _build(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        url: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Request:
        content = None
        if body is not None:
            # UTF-8, not ASCII with \u escapes: a replayed history in Chinese or with emoji
            # is 1.4-3x fewer bytes on the wire, for ~0.4 ms more per 1,000 steps to encode
            content = json.dumps(
                body, allow_nan=False, separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
        timeout = self._settings.timeout
        return http.build_request(
            method,
            url,
            content=content,
            params=params,
            headers=self._headers(stream=stream),
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )

    def _log_retry(self, request: httpx.Request, delay: float, attempt: int, why: str) -> None:
        logger.info(
            "retrying %s %s in %.2f s (retry %d of %d, %s)",
            request.method,
            redact(str(request.url), self._settings.api_key),
            delay,
            attempt,
            self._settings.max_retries,
            redact(why, self._settings.api_key),
        )

    def _log_request(self, request: httpx.Request) -> None:
        logger.debug(
            "request %s %s", request.method, redact(str(request.url), self._settings.api_key)
        )

    def _log_response(self, request: httpx.Request, response: httpx.Response) -> None:
        logger.debug(
            "response %s %s -> %d %s",
            request.method,
            redact(str(request.url), self._settings.api_key),
            response.status_code,
            response.headers.get("content-type", ""),
        )

"""The exceptions convostore raises.

Every error derives from one root, so ``except ConvostoreError`` catches anything convostore
raises on purpose. Driver and HTTP errors are translated at one boundary per layer and chained
(``raise ... from exc``), so the original is always on ``__cause__``.

    ConvostoreError
    ├── ConfigurationError          bad URL, missing driver extra, unknown option
    ├── ValidationError (ValueError) bad input, rejected before anything is sent or written
    ├── StoreError                  the storage layer
    │   ├── ConversationNotFound (LookupError)   missing, deleted, or another tenant's
    │   ├── ConversationExists                   create with an id already taken
    │   ├── ConcurrentTurnError                  the version an append was planned against is stale
    │   ├── SchemaError                          database schema missing or behind; names the fix
    │   ├── StoreUnavailable                     the backend could not be reached
    │   ├── CorruptRecordError                   a stored row that does not parse
    │   └── EncryptionError                      encryption at rest (names the conversation)
    │       ├── MissingKeyError                  the data's key id is not in the key ring
    │       ├── WrongKeyError                    the key ring holds a different key under that id
    │       └── CorruptCiphertextError           ciphertext altered, moved, or not encrypted
    └── APIError                    the Interactions API (or the emulator)
        ├── APIConnectionError                   could not connect / connection dropped
        │   └── APITimeoutError                  no answer in time (never retried on create)
        ├── StreamError                          a stream ended by an ``error`` event or cut short
        ├── InteractionFailed                    the interaction ended failed or cancelled;
        │                                        has interaction_id, status, errors
        ├── InteractionUnfinished                the interaction never finished (in_progress,
        │                                        queued, idle, unknown status) while waited on
        └── APIStatusError                       an HTTP error status; has status_code, code, body
            ├── BadRequestError         400
            ├── AuthenticationError     401
            ├── PermissionDeniedError   403
            ├── NotFoundError           404
            ├── ConflictError           409
            ├── UnprocessableEntityError 422
            ├── RateLimitError          429
            └── InternalServerError     5xx
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConcurrentTurnError",
    "ConfigurationError",
    "ConflictError",
    "ConversationExists",
    "ConversationNotFound",
    "ConvostoreError",
    "CorruptCiphertextError",
    "CorruptRecordError",
    "EncryptionError",
    "InteractionFailed",
    "InteractionUnfinished",
    "InternalServerError",
    "MissingKeyError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "SchemaError",
    "StoreError",
    "StoreUnavailable",
    "StreamError",
    "UnprocessableEntityError",
    "ValidationError",
    "WrongKeyError",
    "status_error_class",
]


class ConvostoreError(Exception):
    """Root of every error convostore raises on purpose."""


class ConfigurationError(ConvostoreError):
    """A URL, option or installation problem found before any I/O."""


class ValidationError(ConvostoreError, ValueError):
    """Input rejected before anything was sent or written."""


class StoreError(ConvostoreError):
    """An error of the storage layer."""


class ConversationNotFound(StoreError, LookupError):
    """The conversation does not exist for this tenant (or was deleted)."""

    def __init__(self, conversation_id: str, message: str | None = None) -> None:
        self.conversation_id = conversation_id
        super().__init__(message or f"conversation {conversation_id!r} not found")


class ConversationExists(StoreError):
    """A conversation with this id already exists (in any tenant)."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        super().__init__(f"conversation {conversation_id!r} already exists")


class ConcurrentTurnError(StoreError):
    """Another writer appended first: the expected version is stale."""

    def __init__(
        self, conversation_id: str, *, expected_version: int, actual_version: int | None = None
    ) -> None:
        self.conversation_id = conversation_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        found = "" if actual_version is None else f", found {actual_version}"
        super().__init__(
            f"conversation {conversation_id!r} changed concurrently "
            f"(expected version {expected_version}{found})"
        )


class SchemaError(StoreError):
    """The database schema is missing or out of date."""


class StoreUnavailable(StoreError):
    """The storage backend could not be reached or failed mid-operation."""


class CorruptRecordError(StoreError):
    """A stored record could not be decoded; never skipped silently."""


class EncryptionError(StoreError):
    """Stored data could not be decrypted; never skipped silently.

    ``conversation_id`` names the conversation, ``seq`` the step (None for the conversation's
    data key or settings), ``kid`` the key id the data names (when it could be read).
    """

    def __init__(
        self,
        message: str,
        *,
        conversation_id: str,
        seq: int | None = None,
        kid: str | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self.seq = seq
        self.kid = kid
        where = f"conversation {conversation_id!r}" + ("" if seq is None else f" step {seq}")
        super().__init__(f"{where}: {message}")


class MissingKeyError(EncryptionError):
    """The key id the data was encrypted under is not in the key ring."""


class WrongKeyError(EncryptionError):
    """The key ring holds a different key under the data's key id (its check value differs)."""


class CorruptCiphertextError(EncryptionError):
    """Ciphertext failed authentication (altered, moved to another place) or is malformed."""


class APIError(ConvostoreError):
    """An error talking to the Interactions API."""


class APIConnectionError(APIError):
    """The connection could not be made or was dropped."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class StreamError(APIError):
    """A stream ended with an ``error`` event or was cut before ``interaction.completed``."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}" if code else message)


class _InteractionStatusError(APIError):
    """An interaction the API accepted ended in a status that gives no answer."""

    def __init__(
        self,
        message: str | None = None,
        *,
        interaction_id: str | None,
        status: str | None,
        errors: list[Any] | None = None,
    ) -> None:
        self.interaction_id = interaction_id
        self.status = status
        self.errors: list[Any] = list(errors or [])
        if message is None:
            ended = status or "without status"
            message = f"interaction {interaction_id or '(no id)'} ended {ended}"
            first = self.errors[0] if self.errors else None
            if isinstance(first, dict) and (first.get("message") or first.get("code")):
                code, text = first.get("code"), first.get("message")
                message += ": " + ": ".join(str(x) for x in (code, text) if x)
        self.message = message
        super().__init__(message)


class InteractionFailed(_InteractionStatusError):
    """The interaction ended ``failed`` or ``cancelled``: nothing of it is committed.

    Attributes:
        interaction_id: the interaction's id (None if the API gave none).
        status: the status it ended in.
        errors: the interaction's ``errors`` list as the API sent it (``[{code, message}]``).
    """


class InteractionUnfinished(_InteractionStatusError):
    """The interaction was still unfinished (``in_progress``, ``queued``, ``idle`` or a status
    convostore does not know) when convostore stopped waiting for it; it may still finish on
    the server. Same attributes as :class:`InteractionFailed`."""


class APIStatusError(APIError):
    """The API answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.body = body
        self.retry_after = retry_after
        super().__init__(f"Error code: {status_code} - {code or 'error'}: {message}")


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404."""


class ConflictError(APIStatusError):
    """409."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429."""


class InternalServerError(APIStatusError):
    """5xx."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status_code >= 500:
        return InternalServerError
    return _BY_STATUS.get(status_code, APIStatusError)

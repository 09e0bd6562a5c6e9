"""convostore: keep Gemini Interactions API conversations alive across requests, workers and
restarts."""

from __future__ import annotations

from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConcurrentTurnError,
    ConfigurationError,
    ConflictError,
    ConversationExists,
    ConversationNotFound,
    ConvostoreError,
    CorruptRecordError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SchemaError,
    StoreError,
    StoreUnavailable,
    StreamError,
    UnprocessableEntityError,
    ValidationError,
)
from ._migrate import upgrade as migrate
from ._registry import open_async_store, open_store
from .models import ConversationRecord, Reason, StoredStep, TurnRecord

__version__ = "0.1.0"

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
    "ConversationRecord",
    "ConvostoreError",
    "CorruptRecordError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "Reason",
    "SchemaError",
    "StoreError",
    "StoreUnavailable",
    "StoredStep",
    "StreamError",
    "TurnRecord",
    "UnprocessableEntityError",
    "ValidationError",
    "__version__",
    "migrate",
    "open_async_store",
    "open_store",
]

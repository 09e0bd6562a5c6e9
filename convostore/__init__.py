"""convostore: keep Gemini Interactions API conversations alive across requests, workers and
restarts."""

from __future__ import annotations

from ._async.client import AsyncInteractionsClient, AsyncInteractionStream
from ._async.conversation import AsyncConversation, AsyncTurnStream
from ._async.conversations import AsyncConversations
from ._async.encrypted_store import AsyncEncryptedStore, async_rotate_keys
from ._async.store import AsyncStore
from ._core.planner import Policy
from ._encryption import KeyRing, RotationReport
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
    CorruptCiphertextError,
    CorruptRecordError,
    EncryptionError,
    InteractionFailed,
    InteractionUnfinished,
    InternalServerError,
    MissingKeyError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SchemaError,
    StoreError,
    StoreUnavailable,
    StreamError,
    UnprocessableEntityError,
    ValidationError,
    WrongKeyError,
)
from ._migrate import upgrade as migrate
from ._registry import open_async_store, open_store
from ._sync.client import InteractionsClient, InteractionStream
from ._sync.conversation import Conversation, TurnStream
from ._sync.conversations import Conversations
from ._sync.encrypted_store import EncryptedStore, rotate_keys
from ._sync.store import Store
from .models import (
    ConversationRecord,
    DeleteReport,
    Interaction,
    Page,
    Reason,
    StoredStep,
    Turn,
    TurnRecord,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncConversation",
    "AsyncConversations",
    "AsyncEncryptedStore",
    "AsyncInteractionStream",
    "AsyncInteractionsClient",
    "AsyncStore",
    "AsyncTurnStream",
    "AuthenticationError",
    "BadRequestError",
    "ConcurrentTurnError",
    "ConfigurationError",
    "ConflictError",
    "Conversation",
    "ConversationExists",
    "ConversationNotFound",
    "ConversationRecord",
    "Conversations",
    "ConvostoreError",
    "CorruptCiphertextError",
    "CorruptRecordError",
    "DeleteReport",
    "EncryptedStore",
    "EncryptionError",
    "Interaction",
    "InteractionFailed",
    "InteractionStream",
    "InteractionUnfinished",
    "InteractionsClient",
    "InternalServerError",
    "KeyRing",
    "MissingKeyError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "Policy",
    "RateLimitError",
    "Reason",
    "RotationReport",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredStep",
    "StreamError",
    "Turn",
    "TurnRecord",
    "TurnStream",
    "UnprocessableEntityError",
    "ValidationError",
    "WrongKeyError",
    "__version__",
    "async_rotate_keys",
    "migrate",
    "open_async_store",
    "open_store",
    "rotate_keys",
]

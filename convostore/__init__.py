"""convostore: keep Gemini Interactions API conversations alive across requests, workers and
restarts."""

from __future__ import annotations

from ._async.client import AsyncInteractionsClient, AsyncInteractionStream
from ._async.conversation import AsyncConversation, AsyncTurnStream
from ._async.conversations import AsyncConversations
from ._async.store import AsyncStore
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
from ._planner import Policy
from ._migrate import upgrade as migrate
from ._registry import open_async_store, open_store
from ._sync.client import InteractionsClient, InteractionStream
from ._sync.conversation import Conversation, TurnStream
from ._sync.conversations import Conversations
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
    "CorruptRecordError",
    "DeleteReport",
    "Interaction",
    "InteractionStream",
    "InteractionsClient",
    "InternalServerError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "Policy",
    "RateLimitError",
    "Reason",
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
    "__version__",
    "migrate",
    "open_async_store",
    "open_store",
]

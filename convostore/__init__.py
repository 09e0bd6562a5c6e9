"""convostore: keep Gemini Interactions API conversations alive across requests, workers and
restarts."""

from __future__ import annotations

from ._async.client import AsyncInteractionsClient, AsyncInteractionStream
from ._async.conversation import AsyncConversation, AsyncPendingTurn, AsyncTurnStream
from ._async.conversations import AsyncConversations
from ._async.encrypted_store import AsyncEncryptedStore, async_rotate_keys
from ._async.store import AsyncStore
from ._core.context import CompactionPolicy
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
    LeaseLost,
    MissingKeyError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SchemaError,
    StoreError,
    StoreUnavailable,
    StreamError,
    TurnInFlight,
    UnprocessableEntityError,
    ValidationError,
    WrongKeyError,
)
from ._migrate import upgrade as migrate
from ._registry import open_async_store, open_store
from ._sync.client import InteractionsClient, InteractionStream
from ._sync.conversation import Conversation, PendingTurn, TurnStream
from ._sync.conversations import Conversations
from ._sync.encrypted_store import EncryptedStore, rotate_keys
from ._sync.store import Store
from .models import (
    CompactionRecord,
    ConversationRecord,
    DeleteReport,
    Interaction,
    OutboxItem,
    Page,
    PendingTurnRecord,
    Reason,
    RecoveryReport,
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
    "AsyncPendingTurn",
    "AsyncStore",
    "AsyncTurnStream",
    "AuthenticationError",
    "BadRequestError",
    "CompactionPolicy",
    "CompactionRecord",
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
    "LeaseLost",
    "MissingKeyError",
    "NotFoundError",
    "OutboxItem",
    "Page",
    "PendingTurn",
    "PendingTurnRecord",
    "PermissionDeniedError",
    "Policy",
    "RateLimitError",
    "Reason",
    "RecoveryReport",
    "RotationReport",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredStep",
    "StreamError",
    "Turn",
    "TurnInFlight",
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

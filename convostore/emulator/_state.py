"""The emulator's in-memory state: stored interactions, injected faults, the request log.

The server thread and the test thread both touch it, so every access holds ``lock``.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "FINAL_STATUSES",
    "UNFINISHED_STATUSES",
    "EmulatorSettings",
    "EmulatorState",
    "Fault",
    "RecordedRequest",
    "StatusFault",
    "StoredInteraction",
    "StreamFault",
    "WebhookDelivery",
    "isoformat",
    "new_interaction_id",
]

DEFAULT_RETENTION = timedelta(days=55)
DEFAULT_BACKGROUND_SECONDS = 0.05
DEFAULT_WEBHOOK_ATTEMPTS = 3
# An interaction in one of these is still running: no usage yet, GET ?stream=true waits.
UNFINISHED_STATUSES = frozenset({"in_progress", "queued", "idle"})
FINAL_STATUSES = frozenset(
    {
        "completed",
        "requires_action",
        "requires_continuation",
        "failed",
        "cancelled",
        "incomplete",
        "budget_exceeded",
    }
)


def new_interaction_id() -> str:
    """An id shaped like the service's: ``v1_<urlsafe base64>``."""
    return "v1_" + base64.urlsafe_b64encode(secrets.token_bytes(18)).decode().rstrip("=")


def isoformat(epoch: float) -> str:
    """``YYYY-MM-DDThh:mm:ssZ``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator received it (headers lower-cased, body parsed JSON)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    """``times`` matching requests are answered with an error status."""

    status: int
    times: int
    code: str
    retry_after: float | None = None
    retry_after_ms: int | None = None
    method: str | None = None


@dataclass
class StreamFault:
    """The next ``times`` streams stop after ``after_events`` events (with an error event when
    ``code`` is set, else by closing the connection)."""

    after_events: int
    times: int
    code: str | None = None
    message: str = ""
    after_checkpoint: int | None = None


@dataclass
class StatusFault:
    """The next ``times`` creates end with ``status`` (and ``errors``) instead of their own."""

    status: str
    times: int
    errors: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """One attempt to deliver a webhook event (``status`` None: the connection failed)."""

    uri: str
    webhook_id: str
    attempt: int
    headers: dict[str, str]
    body: bytes
    status: int | None
    error: str | None = None

    def json(self) -> Any:
        """The event, parsed from the raw body."""
        return json.loads(self.body)


@dataclass
class StoredInteraction:
    """One interaction kept by the emulator (``store: true``)."""

    id: str
    model: str | None
    agent: str | None
    created: float
    updated: float
    status: str
    raw_input: Any
    input_steps: list[dict[str, Any]]
    output_steps: list[dict[str, Any]]
    config: dict[str, Any]
    previous_interaction_id: str | None
    usage: dict[str, int]
    events: list[dict[str, Any]] = field(default_factory=list)
    background: bool = False
    expired: bool = False
    continuation_token: str | None = None
    errors: list[dict[str, str]] | None = None
    webhook_config: dict[str, Any] | None = None
    # The slice of a decode plan this hop produced (see ``_decode``); None before it finished.
    hop: Any = None

    @property
    def finished(self) -> bool:
        """False while the status is ``in_progress``, ``queued`` or ``idle``."""
        return self.status not in UNFINISHED_STATUSES

    def as_dict(self) -> dict[str, Any]:
        """A deep copy as a plain dict (what ``Emulator.interactions`` shows)."""
        return copy.deepcopy(
            {
                "id": self.id,
                "model": self.model,
                "agent": self.agent,
                "created": isoformat(self.created),
                "updated": isoformat(self.updated),
                "status": self.status,
                "input": self.raw_input,
                "input_steps": self.input_steps,
                "steps": [*self.input_steps, *self.output_steps],
                "output_steps": self.output_steps,
                "config": self.config,
                "previous_interaction_id": self.previous_interaction_id,
                "usage": self.usage,
                "background": self.background,
                "continuation_token": self.continuation_token,
                "errors": self.errors,
            }
        )


@dataclass
class EmulatorSettings:
    """Switches a test may flip on a running emulator; ``reset()`` restores them."""

    retention: timedelta = DEFAULT_RETENTION
    require_api_key: bool = True
    echo_user_input: bool = False
    reject_unknown_fields: bool = True
    background_seconds: float = DEFAULT_BACKGROUND_SECONDS
    # model (None: every model) -> most answer words one create may produce
    decode_limits: dict[str | None, int] = field(default_factory=dict)
    # model (None: every model) -> most input tokens (words) one create may carry
    context_windows: dict[str | None, int] = field(default_factory=dict)
    checkpoint_every: int | None = None
    webhook_secret: str | None = None
    webhook_uris: list[str] = field(default_factory=list)
    webhook_attempts: int = DEFAULT_WEBHOOK_ATTEMPTS

    def decode_limit(self, model: str | None) -> int | None:
        """The decode limit (in answer words) for ``model``, if any."""
        if model in self.decode_limits:
            return self.decode_limits[model]
        return self.decode_limits.get(None)

    def context_window(self, model: str | None) -> int | None:
        """The context window (in input words) of ``model``, if any."""
        if model in self.context_windows:
            return self.context_windows[model]
        return self.context_windows.get(None)

    def copy(self) -> EmulatorSettings:
        """A copy whose mutable fields are not shared."""
        return copy.deepcopy(self)


class EmulatorState:
    """Everything the emulator remembers, guarded by one lock."""

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.lock = threading.Lock()
        self.initial = (settings or EmulatorSettings()).copy()
        self.settings = self.initial.copy()
        self.interactions: dict[str, StoredInteraction] = {}
        self.faults: list[Fault] = []
        self.stream_faults: list[StreamFault] = []
        self.delay_seconds = 0.0
        self.delay_times: int | None = None
        self.requests: list[RecordedRequest] = []
        self.status_faults: list[StatusFault] = []
        self.tokens: dict[str, Any] = {}  # continuation_token -> _decode.ContinuationPoint
        self.webhook_deliveries: list[WebhookDelivery] = []

    def reset(self) -> None:
        """Clear faults, delays, the request and webhook logs; restore settings.

        Keep interactions and continuation tokens."""
        with self.lock:
            self.settings = self.initial.copy()
            self.faults.clear()
            self.stream_faults.clear()
            self.status_faults.clear()
            self.webhook_deliveries.clear()
            self.delay_seconds = 0.0
            self.delay_times = None
            self.requests.clear()

    def live(self, interaction_id: str) -> StoredInteraction | None:
        """The stored interaction if it exists and has not expired (caller holds the lock)."""
        found = self.interactions.get(interaction_id)
        if found is None or found.expired:
            return None
        age = time.time() - found.created
        if age >= self.settings.retention.total_seconds():
            return None
        return found

    def take_fault(self, method: str) -> Fault | None:
        """Consume one use of the first fault matching ``method`` (caller holds the lock)."""
        for fault in self.faults:
            if fault.method is None or fault.method.upper() == method:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def take_delay(self) -> float:
        """Seconds to sleep before answering this request (caller holds the lock)."""
        if self.delay_seconds <= 0:
            return 0.0
        seconds = self.delay_seconds
        if self.delay_times is not None:
            self.delay_times -= 1
            if self.delay_times <= 0:
                self.delay_seconds, self.delay_times = 0.0, None
        return seconds

    def take_status_fault(self) -> StatusFault | None:
        """Consume one use of the pending status fault, if any (caller holds the lock)."""
        if not self.status_faults:
            return None
        fault = self.status_faults[0]
        fault.times -= 1
        if fault.times <= 0:
            self.status_faults.pop(0)
        return copy.deepcopy(fault)

    def take_stream_fault(self) -> StreamFault | None:
        """Consume one use of the pending stream fault, if any (caller holds the lock)."""
        if not self.stream_faults:
            return None
        fault = self.stream_faults[0]
        fault.times -= 1
        if fault.times <= 0:
            self.stream_faults.pop(0)
        return copy.copy(fault)

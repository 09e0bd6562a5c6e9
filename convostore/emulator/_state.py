"""The emulator's in-memory state: stored interactions, injected faults, the request log.

The server thread and the test thread both touch it, so every access holds ``lock``.
"""

from __future__ import annotations

import base64
import copy
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "EmulatorSettings",
    "EmulatorState",
    "Fault",
    "RecordedRequest",
    "StoredInteraction",
    "StreamFault",
    "isoformat",
    "new_interaction_id",
]

DEFAULT_RETENTION = timedelta(days=55)
DEFAULT_BACKGROUND_SECONDS = 0.05


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


class EmulatorState:
    """Everything the emulator remembers, guarded by one lock."""

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.lock = threading.Lock()
        self.initial = copy.copy(settings or EmulatorSettings())
        self.settings = copy.copy(self.initial)
        self.interactions: dict[str, StoredInteraction] = {}
        self.faults: list[Fault] = []
        self.stream_faults: list[StreamFault] = []
        self.delay_seconds = 0.0
        self.delay_times: int | None = None
        self.requests: list[RecordedRequest] = []

    def reset(self) -> None:
        """Clear faults, delays and the request log; restore settings. Keep interactions."""
        with self.lock:
            self.settings = copy.copy(self.initial)
            self.faults.clear()
            self.stream_faults.clear()
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

    def take_stream_fault(self) -> StreamFault | None:
        """Consume one use of the pending stream fault, if any (caller holds the lock)."""
        if not self.stream_faults:
            return None
        fault = self.stream_faults[0]
        fault.times -= 1
        if fault.times <= 0:
            self.stream_faults.pop(0)
        return copy.copy(fault)

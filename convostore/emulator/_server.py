"""``Emulator``: the app served by uvicorn on loopback, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any

import uvicorn

from .._exceptions import ConfigurationError, ValidationError
from ._app import create_app, default_code
from ._controls import TurnControls
from ._state import (
    DEFAULT_RETENTION,
    EmulatorSettings,
    EmulatorState,
    Fault,
    RecordedRequest,
    StreamFault,
)

__all__ = ["Emulator", "settings_from_options"]

_START_TIMEOUT = 10.0


def settings_from_options(
    *,
    retention: timedelta | float = DEFAULT_RETENTION,
    require_api_key: bool = True,
    echo_user_input: bool = False,
    reject_unknown_fields: bool = True,
) -> EmulatorSettings:
    """Settings from the keyword options shared by ``Emulator`` and ``create_app``."""
    if not isinstance(retention, timedelta):
        retention = timedelta(seconds=float(retention))
    return EmulatorSettings(
        retention=retention,
        require_api_key=require_api_key,
        echo_user_input=echo_user_input,
        reject_unknown_fields=reject_unknown_fields,
    )


def _check_times(times: int) -> None:
    if times < 1:
        raise ValidationError(f"times must be at least 1, got {times}")


def _check_stream_fault(after_events: int, times: int) -> None:
    if after_events < 0:
        raise ValidationError(f"after_events must be >= 0, got {after_events}")
    _check_times(times)


class _InteractionsView(Mapping[str, dict[str, Any]]):
    """Live, read-only: each lookup copies one interaction under the lock."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def __getitem__(self, key: str) -> dict[str, Any]:
        with self._state.lock:
            found = self._state.live(key)
            if found is None:
                raise KeyError(key)
            return found.as_dict()

    def _keys(self) -> list[str]:
        with self._state.lock:
            return [key for key in self._state.interactions if self._state.live(key) is not None]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key: object) -> bool:
        with self._state.lock:
            return isinstance(key, str) and self._state.live(key) is not None


class Emulator(TurnControls):
    """A local Interactions API server on loopback, for demos and tests.

    Usable as a context manager or with :meth:`start` / :meth:`close`. The server runs in its
    own thread with its own event loop; ``url`` is valid once :meth:`start` returns.

    Test controls (each lasts until :meth:`reset`): faults (:meth:`fail`, :meth:`delay`,
    :meth:`cut_stream`, :meth:`fail_stream`, :meth:`cut_stream_after_checkpoint`,
    :meth:`expire`), long answers (:meth:`decode_limit`, :meth:`checkpoint_every`), statuses
    (:meth:`next_status`, :attr:`background_seconds`) and webhooks (:attr:`webhook_secret`,
    :attr:`webhook_uris`, :attr:`webhook_attempts`, :attr:`webhook_deliveries`,
    :meth:`wait_for_webhooks`).

    Args:
        host: interface to bind (keep it on loopback).
        port: TCP port; 0 picks a free one.
        retention: how long stored interactions live (a timedelta or seconds).
        require_api_key: answer 401 ``authentication`` to requests without a key.
        echo_user_input: unary create responses start with the input ``user_input`` steps.
        reject_unknown_fields: unknown top-level create fields get 400 ``parameter_unknown``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        retention: timedelta | float = DEFAULT_RETENTION,
        require_api_key: bool = True,
        echo_user_input: bool = False,
        reject_unknown_fields: bool = True,
    ) -> None:
        self._host, self._port = host, port
        self._state = EmulatorState(
            settings_from_options(
                retention=retention,
                require_api_key=require_api_key,
                echo_user_input=echo_user_input,
                reject_unknown_fields=reject_unknown_fields,
            )
        )
        self.app = create_app(self._state)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        """Bind the port and serve in a background thread; returns once it accepts requests."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise ConfigurationError(f"cannot bind {self._host}:{self._port}: {exc}") from exc
        sock.listen(128)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._socket = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="convostore-emulator"
        )
        self._thread.daemon = True
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise ConfigurationError("the emulator server did not start")
            time.sleep(0.005)
        return self

    def close(self) -> None:
        """Stop the server and join its thread. Idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_START_TIMEOUT)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (no trailing slash)."""
        if self._socket is None:
            raise ConfigurationError("the emulator is not running; call start() first")
        host, port = self._socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # ------------------------------------------------------------------ settings

    @property
    def echo_user_input(self) -> bool:
        """Unary create responses start with the input ``user_input`` steps (until reset)."""
        return self._state.settings.echo_user_input

    @echo_user_input.setter
    def echo_user_input(self, value: bool) -> None:
        with self._state.lock:
            self._state.settings.echo_user_input = value

    @property
    def require_api_key(self) -> bool:
        """Requests without a key get 401 (until reset)."""
        return self._state.settings.require_api_key

    @require_api_key.setter
    def require_api_key(self, value: bool) -> None:
        with self._state.lock:
            self._state.settings.require_api_key = value

    @property
    def reject_unknown_fields(self) -> bool:
        """Unknown create fields get 400 ``parameter_unknown`` (until reset)."""
        return self._state.settings.reject_unknown_fields

    @reject_unknown_fields.setter
    def reject_unknown_fields(self, value: bool) -> None:
        with self._state.lock:
            self._state.settings.reject_unknown_fields = value

    @property
    def retention(self) -> timedelta:
        """How long stored interactions live (until reset)."""
        return self._state.settings.retention

    @retention.setter
    def retention(self, value: timedelta | float) -> None:
        if not isinstance(value, timedelta):
            value = timedelta(seconds=float(value))
        with self._state.lock:
            self._state.settings.retention = value

    @property
    def background_seconds(self) -> float:
        """Seconds a running interaction takes to finish (until reset): a ``background`` one,
        or one :meth:`next_status` left ``in_progress`` / ``queued`` / ``idle``.

        Running interactions read it while they wait: set it high to hold them running, then
        low (e.g. 0) to let them finish now."""
        return self._state.settings.background_seconds

    @background_seconds.setter
    def background_seconds(self, value: float) -> None:
        with self._state.lock:
            self._state.settings.background_seconds = value

    # ------------------------------------------------------------------ faults

    def fail(
        self,
        status: int = 429,
        *,
        times: int = 1,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        code: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (of ``method`` only, if given) with an error.

        Raises:
            ValidationError: ``status`` is not an HTTP error status or ``times`` < 1.
        """
        if not 400 <= status <= 599:
            raise ValidationError(f"fail() needs an HTTP error status (400-599), got {status}")
        _check_times(times)
        fault = Fault(
            status=status,
            times=times,
            code=code or default_code(status),
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            method=method.upper() if method else None,
        )
        with self._state.lock:
            self._state.faults.append(fault)

    def delay(self, seconds: float, *, times: int | None = None) -> None:
        """Sleep ``seconds`` before answering the next ``times`` requests (None: until reset).

        Raises:
            ValidationError: negative ``seconds`` or ``times`` < 1.
        """
        if seconds < 0:
            raise ValidationError(f"delay() needs seconds >= 0, got {seconds}")
        if times is not None:
            _check_times(times)
        with self._state.lock:
            self._state.delay_seconds, self._state.delay_times = seconds, times

    def cut_stream(self, after_events: int, *, times: int = 1) -> None:
        """The next ``times`` streams drop the connection after ``after_events`` events.

        Raises:
            ValidationError: negative ``after_events`` or ``times`` < 1.
        """
        _check_stream_fault(after_events, times)
        with self._state.lock:
            self._state.stream_faults.append(StreamFault(after_events=after_events, times=times))

    def fail_stream(
        self,
        after_events: int,
        *,
        code: str = "resource_exhausted",
        message: str = "injected stream error",
        times: int = 1,
    ) -> None:
        """The next ``times`` streams send an ``error`` event after ``after_events`` events.

        Raises:
            ValidationError: negative ``after_events`` or ``times`` < 1.
        """
        _check_stream_fault(after_events, times)
        fault = StreamFault(after_events=after_events, times=times, code=code, message=message)
        with self._state.lock:
            self._state.stream_faults.append(fault)

    def expire(self, interaction_id: str | None = None) -> None:
        """Expire one stored interaction (404 from now on), or all of them."""
        with self._state.lock:
            for key, rec in self._state.interactions.items():
                if interaction_id is None or key == interaction_id:
                    rec.expired = True

    def reset(self) -> None:
        """Clear faults, delays, settings changes (decode limits, checkpoints, webhook
        settings), imposed statuses, the request log and the webhook log; keep interactions
        and continuation tokens."""
        self._state.reset()

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received since the last reset, oldest first (a copy)."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def interactions(self) -> Mapping[str, dict[str, Any]]:
        """Read-only view: id -> stored interaction (live and not expired), copied on access."""
        return _InteractionsView(self._state)

    def __repr__(self) -> str:
        where = self.url if self._socket is not None else "stopped"
        return f"<Emulator {where}>"

"""The emulator's controls for long and unfinished turns: decode limits, checkpoints,
statuses on demand and webhooks. Mixed into :class:`~convostore.emulator.Emulator`; every
setting here lasts until :meth:`Emulator.reset`.
"""

from __future__ import annotations

import time

from .._exceptions import ValidationError
from ._state import (
    FINAL_STATUSES,
    UNFINISHED_STATUSES,
    EmulatorState,
    StatusFault,
    StreamFault,
    WebhookDelivery,
)

__all__ = ["TurnControls"]

# Statuses next_status() can impose (completed / requires_action / requires_continuation come
# from the answer itself and the decode limit).
_IMPOSED_STATUSES = (FINAL_STATUSES | UNFINISHED_STATUSES) - {
    "completed",
    "requires_action",
    "requires_continuation",
}


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{name} must be a positive integer, got {value!r}")


class TurnControls:
    """Test controls for ``requires_continuation``, checkpoints, statuses and webhooks."""

    _state: EmulatorState

    # ------------------------------------------------------------------ context window

    def context_window(self, tokens: int | None, *, model: str | None = None) -> None:
        """Cap the input of one create at ``tokens`` (None removes the cap).

        The input is counted as usage counts it (words): the system instruction, the history
        chained through ``previous_interaction_id`` and the ``input``. A create over the cap
        is refused as the service refuses it: ``400 invalid_request``, "… exceeds the maximum
        number of tokens …"; nothing is stored.

        Args:
            tokens: the window, or None to remove it.
            model: the model it applies to; None: every model without a window of its own.

        Raises:
            ValidationError: ``tokens`` is not a positive integer.
        """
        if tokens is not None:
            _positive("tokens", tokens)
        with self._state.lock:
            if tokens is None:
                self._state.settings.context_windows.pop(model, None)
            else:
                self._state.settings.context_windows[model] = tokens

    # ------------------------------------------------------------------ decode limit

    def decode_limit(self, words: int | None, *, model: str | None = None) -> None:
        """Cap how many answer words one create may produce (None removes the cap).

        A create whose answer is longer returns ``status: "requires_continuation"`` with a
        ``continuation_token`` and the first ``words`` words (thoughts and function calls
        count as none). Each follow-up create with that token — plus, with ``store`` on,
        ``previous_interaction_id`` = the id of the interaction that returned it and no
        ``input``; with ``store: false``, the original ``input`` again — produces the next
        ``words``, until the last hop ends with the answer's own status. Each hop is its own
        interaction (stored when ``store`` is on) with its own id and usage, and the hops'
        texts join to exactly the answer a model without the limit gives. Background creates
        ignore the limit (the service continues them itself).

        Args:
            words: the limit, or None to remove it.
            model: the model it applies to; None: every model without a limit of its own.

        Raises:
            ValidationError: ``words`` is not a positive integer.
        """
        if words is not None:
            _positive("words", words)
        with self._state.lock:
            if words is None:
                self._state.settings.decode_limits.pop(model, None)
            else:
                self._state.settings.decode_limits[model] = words

    def checkpoint_every(self, deltas: int | None) -> None:
        """Streams send a resumable checkpoint after every ``deltas`` text deltas (None: none).

        A checkpoint is an ``interaction.status_update`` with ``status: "in_progress"`` and a
        ``continuation_token``; re-POSTing the create with that token (as for
        :meth:`decode_limit`, with ``previous_interaction_id`` = the interaction being
        streamed) resumes right after the checkpoint, without repeating output. With ``store``
        on, the resumed interaction then keeps only its output up to the checkpoint (status
        ``requires_continuation``), so the stored chain holds every word once.

        Raises:
            ValidationError: ``deltas`` is not a positive integer.
        """
        if deltas is not None:
            _positive("deltas", deltas)
        with self._state.lock:
            self._state.settings.checkpoint_every = deltas

    def cut_stream_after_checkpoint(self, checkpoint: int = 1, *, times: int = 1) -> None:
        """The next ``times`` streams drop the connection right after their ``checkpoint``-th
        event that carries a ``continuation_token`` (a checkpoint, or the final
        ``requires_continuation`` status update).

        Raises:
            ValidationError: ``checkpoint`` or ``times`` is not a positive integer.
        """
        _positive("checkpoint", checkpoint)
        _positive("times", times)
        fault = StreamFault(after_events=-1, times=times, after_checkpoint=checkpoint)
        with self._state.lock:
            self._state.stream_faults.append(fault)

    # ------------------------------------------------------------------ statuses

    def next_status(
        self,
        status: str,
        *,
        errors: list[dict[str, str]] | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` creates end with ``status`` instead of their own.

        - ``failed``: no output, ``errors`` (default
          ``[{"code": "internal", "message": "injected failure"}]``).
        - ``cancelled``: no output.
        - ``incomplete``, ``budget_exceeded``: the first half of the answer's words.
        - ``in_progress``, ``queued``, ``idle``: the create answers at once with that status
          and no output (a stream sends ``interaction.created`` and the status update, then
          waits); after :attr:`background_seconds` the interaction finishes with its own
          answer (GET shows it; the stream goes on) unless it was cancelled meanwhile.

        ``errors`` are recorded with the final statuses only. Streams carry the status in an
        ``interaction.status_update`` before ``interaction.completed``.

        Raises:
            ValidationError: an unknown status, malformed ``errors`` or ``times`` < 1.
        """
        if status not in _IMPOSED_STATUSES:
            allowed = ", ".join(sorted(_IMPOSED_STATUSES))
            raise ValidationError(f"next_status() takes one of {allowed}; got {status!r}")
        _positive("times", times)
        if errors is not None and not (
            isinstance(errors, list)
            and all(
                isinstance(e, dict) and all(isinstance(v, str) for v in e.values()) for e in errors
            )
        ):
            raise ValidationError("errors must be a list of {'code': str, 'message': str}")
        fault = StatusFault(status=status, times=times, errors=errors)
        with self._state.lock:
            self._state.status_faults.append(fault)

    # ------------------------------------------------------------------ webhooks

    @property
    def webhook_secret(self) -> str | None:
        """The signing secret of webhook deliveries (``whsec_<base64>`` or any string).

        None (the default): deliveries carry ``webhook-id`` and ``webhook-timestamp`` but no
        ``webhook-signature``. See :func:`~convostore.emulator.sign_webhook`."""
        return self._state.settings.webhook_secret

    @webhook_secret.setter
    def webhook_secret(self, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            raise ValidationError("webhook_secret must be a non-empty string or None")
        with self._state.lock:
            self._state.settings.webhook_secret = value

    @property
    def webhook_uris(self) -> list[str]:
        """Project-level webhook URIs, used when a create has no ``webhook_config.uris``."""
        return list(self._state.settings.webhook_uris)

    @webhook_uris.setter
    def webhook_uris(self, value: list[str]) -> None:
        if not isinstance(value, list | tuple) or not all(isinstance(u, str) for u in value):
            raise ValidationError("webhook_uris must be a list of URLs")
        with self._state.lock:
            self._state.settings.webhook_uris = list(value)

    @property
    def webhook_attempts(self) -> int:
        """How many times one event is tried on non-2xx answers or connection errors."""
        return self._state.settings.webhook_attempts

    @webhook_attempts.setter
    def webhook_attempts(self, value: int) -> None:
        _positive("webhook_attempts", value)
        with self._state.lock:
            self._state.settings.webhook_attempts = value

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every delivery attempt since the last reset, oldest first (a copy)."""
        with self._state.lock:
            return list(self._state.webhook_deliveries)

    def wait_for_webhooks(self, count: int, *, timeout: float = 5.0) -> list[WebhookDelivery]:
        """Wait until at least ``count`` delivery attempts were made; return them all.

        Raises:
            TimeoutError: fewer than ``count`` attempts after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            deliveries = self.webhook_deliveries
            if len(deliveries) >= count:
                return deliveries
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(deliveries)} webhook delivery attempt(s) after {timeout}s, "
                    f"expected {count}"
                )
            time.sleep(0.01)

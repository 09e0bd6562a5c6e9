"""Who may read what: bearer tokens mapped to tenants, and login sessions.

Tokens come from a JSON document (a file, or an environment variable holding the same text)
naming each principal once::

    {
      "alice": {"token_sha256": "<hex sha-256 of the token>", "tenants": ["acme", "globex"]},
      "root":  {"token": "<the token itself>", "all_tenants": true}
    }

A principal reads the tenants it lists, or, with ``"all_tenants": true`` (a grant of its own,
never implied by a list), every tenant and the access log. Tokens are compared as SHA-256
digests with :func:`hmac.compare_digest` against every entry, so neither the comparison nor
the number of entries examined depends on the token offered.

A login exchanges a token for an opaque session id held in an HttpOnly, SameSite=Strict
cookie; the server keeps only the id's digest. Sessions end on logout, after
``idle`` without a request, or ``lifetime`` after the login, and with the process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError, ValidationError
from ..models import check_id

__all__ = ["MIN_TOKEN_LENGTH", "Principal", "Sessions", "Tokens"]

MIN_TOKEN_LENGTH = 16
"""Shorter tokens are refused when the table is loaded (``secrets.token_urlsafe(32)`` gives 43)."""


@dataclass(frozen=True)
class Principal:
    """An authenticated reader."""

    name: str
    tenants: frozenset[str] = frozenset()
    all_tenants: bool = False

    def may_read(self, tenant: str) -> bool:
        return self.all_tenants or tenant in self.tenants


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _grant(name: str, entry: object, source: str) -> tuple[Principal, bytes]:
    where = f"{source}: principal {name!r}"
    try:
        check_id(name, "principal name")
    except ValidationError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"{where}: expected an object")
    unknown = set(entry) - {"token", "token_sha256", "tenants", "all_tenants"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if ("token" in entry) == ("token_sha256" in entry):
        raise ConfigurationError(f"{where}: give exactly one of 'token' and 'token_sha256'")
    if "token" in entry:
        token = entry["token"]
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(
                f"{where}: 'token' must be a string of at least {MIN_TOKEN_LENGTH} characters"
            )
        digest = _digest(token)
    else:
        hexed = entry["token_sha256"]
        try:
            digest = bytes.fromhex(hexed) if isinstance(hexed, str) else b""
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigurationError(f"{where}: 'token_sha256' must be 64 hex digits")
    all_tenants = entry.get("all_tenants", False)
    if not isinstance(all_tenants, bool):
        raise ConfigurationError(f"{where}: 'all_tenants' must be true or false")
    tenants = entry.get("tenants")
    if all_tenants and tenants is not None:
        raise ConfigurationError(f"{where}: give 'tenants' or 'all_tenants', not both")
    if not all_tenants:
        if not isinstance(tenants, list) or not tenants:
            raise ConfigurationError(
                f"{where}: needs 'tenants' (a non-empty list) or 'all_tenants': true"
            )
        for tenant in tenants:
            try:
                check_id(tenant, "tenant")
            except ValidationError as exc:
                raise ConfigurationError(f"{where}: {exc}") from None
    principal = Principal(name, frozenset(tenants or ()), all_tenants)
    return principal, digest


class Tokens:
    """The token table: digest -> principal."""

    def __init__(self, grants: list[tuple[Principal, bytes]]) -> None:
        digests = [digest for _, digest in grants]
        if len(set(digests)) != len(digests):
            raise ConfigurationError("two principals share one token")
        self._grants = grants

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Tokens:
        """Parse the JSON document described in the module docstring.

        Raises:
            ConfigurationError: not JSON, no principal, or a malformed entry (named).
        """
        try:
            data: Any = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"{source}: not JSON ({exc})") from None
        if not isinstance(data, dict) or not data:
            raise ConfigurationError(f"{source}: expected an object of principals")
        return cls([_grant(name, entry, source) for name, entry in data.items()])

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokens:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return cls.from_json(text, source=str(path))

    @property
    def principals(self) -> list[Principal]:
        return [principal for principal, _ in self._grants]

    def authenticate(self, token: str) -> Principal | None:
        """The principal holding ``token``, or None; every entry is compared."""
        digest = _digest(token)
        found: Principal | None = None
        for principal, expected in self._grants:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


@dataclass
class _Session:
    principal: Principal
    started: float
    seen: float


class Sessions:
    """Login sessions in memory, keyed by the digest of their opaque id."""

    def __init__(
        self,
        *,
        idle: float = 30 * 60,
        lifetime: float = 12 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[bytes, _Session] = {}

    def open(self, principal: Principal) -> str:
        """A new session id for ``principal`` (put it in the cookie, nowhere else)."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._expire(now)
            self._sessions[_digest(session_id)] = _Session(principal, now, now)
        return session_id

    def get(self, session_id: str) -> Principal | None:
        now = self._clock()
        with self._lock:
            session = self._sessions.get(_digest(session_id))
            if session is None:
                return None
            if now - session.seen > self.idle or now - session.started > self.lifetime:
                del self._sessions[_digest(session_id)]
                return None
            session.seen = now
            return session.principal

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(session_id), None)

    def _expire(self, now: float) -> None:
        stale = [
            key
            for key, s in self._sessions.items()
            if now - s.seen > self.idle or now - s.started > self.lifetime
        ]
        for key in stale:
            del self._sessions[key]

"""Encryption at rest, without I/O: the key ring, data-key envelopes and sealed payloads.

Envelope encryption, as a KMS does it: every conversation has its own random 256-bit data
key (DEK) that encrypts its step payloads and its settings with AES-256-GCM. The DEK is
stored with the conversation, wrapped (AES-GCM) by a key-encryption key (KEK) of the
:class:`KeyRing`, under the KEK's key id. Rotating a KEK re-wraps DEKs; the data stays put.

What is stored:

- ``metadata["$convostore.dek"] = {"v": 1, "kid", "kcv", "nonce", "wrapped"}``. ``kcv`` is a
  key check value of the KEK, so a ring holding a *different* key under the same id is told
  apart (:class:`WrongKeyError`) from a missing id (:class:`MissingKeyError`) and from
  altered data (:class:`CorruptCiphertextError`).
- a step payload becomes ``{"type": <type>, "$encrypted": {"v": 1, "nonce", "ct"}}``: the type
  stays readable because the stores index and return it.
- the config becomes ``{"$encrypted": {...}}``.

Every ciphertext is bound to its place by its associated data (conversation id, and for a
step its seq, turn and type), so a ciphertext moved or swapped is reported as corrupt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ._core.store_rules import stored_step
from ._exceptions import (
    ConfigurationError,
    CorruptCiphertextError,
    MissingKeyError,
    ValidationError,
    WrongKeyError,
)
from .models import ConversationRecord, JSONObject, PendingTurnRecord, StoredStep

__all__ = [
    "DEK_FIELD",
    "ENCRYPTED_FIELD",
    "ENV_VAR",
    "DataKeyCache",
    "KeyRing",
    "RotationReport",
    "check_unreserved",
    "envelope_of",
    "is_current",
    "key_check_value",
    "new_dek",
    "open_config",
    "open_pending",
    "open_steps",
    "seal_config",
    "seal_pending",
    "seal_steps",
    "unwrap_dek",
    "wrap_dek",
]

DEK_FIELD = "$convostore.dek"
"""The reserved metadata entry that holds a conversation's wrapped data key."""
ENCRYPTED_FIELD = "$encrypted"
ENV_VAR = "CONVOSTORE_KEYS"
"""The environment variable :meth:`KeyRing.from_env` reads: ``kid:base64key,...``."""

_VERSION = 1
_KEY_BYTES = 32
_NONCE_BYTES = 12
_KCV_BYTES = 8
_KID_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")


_crypto: tuple[Any, type[Exception]] | None = None


def _cryptography() -> tuple[Any, type[Exception]]:
    """``(AESGCM, InvalidTag)``, imported once, on first use."""
    global _crypto
    if _crypto is None:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                "encryption at rest needs the 'cryptography' package: "
                "pip install 'convostore[encryption]'"
            ) from exc
        _crypto = (AESGCM, InvalidTag)
    return _crypto


def _aesgcm(key: bytes) -> Any:
    return _cryptography()[0](key)


def _invalid_tag() -> type[Exception]:
    return _cryptography()[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    # strict: stray characters are corruption, not something to skip over
    return binascii.a2b_base64(text, strict_mode=True)


def key_check_value(key: bytes) -> str:
    """A short public fingerprint of a key: tells two keys apart without revealing either."""
    return _b64(hmac.new(key, b"convostore key check", hashlib.sha256).digest()[:_KCV_BYTES])


class KeyRing:
    """Key-encryption keys by key id; new data keys are wrapped under ``primary``.

    Args:
        keys: key id -> 32-byte AES-256 key. Key ids are 1-64 letters, digits or ``_.@+-``.
        primary: the key id new conversations and :func:`rotate_keys` wrap under.

    Raises:
        ConfigurationError: a malformed key or key id, an unknown primary, or the
            ``cryptography`` package missing.
    """

    __slots__ = ("_keys", "_primary")

    def __init__(self, keys: Mapping[str, bytes], *, primary: str) -> None:
        if not keys:
            raise ConfigurationError("a key ring needs at least one key")
        checked: dict[str, bytes] = {}
        for kid, key in keys.items():
            if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
                raise ConfigurationError(
                    f"key id {str(kid)[:20]!r} must be 1-64 letters, digits or _ . @ + -"
                )
            if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
                raise ConfigurationError(f"key {kid!r} must be {_KEY_BYTES} bytes (AES-256)")
            checked[kid] = key
        if primary not in checked:
            raise ConfigurationError(f"primary key id {primary!r} is not in the key ring")
        _aesgcm(checked[primary])  # fail at configuration time when cryptography is missing
        self._keys = checked
        self._primary = primary

    @classmethod
    def from_string(cls, text: str, *, primary: str | None = None) -> KeyRing:
        """Parse ``"k2:base64key,k1:base64key"`` (entries may also be separated by newlines;
        lines starting with ``#`` are comments). The first key is the primary unless
        ``primary`` names another. Error messages never quote key material."""
        keys: dict[str, bytes] = {}
        lines = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
        entries = [e.strip() for line in lines for e in line.split(",") if e.strip()]
        for number, entry in enumerate(entries, start=1):
            kid, sep, encoded = entry.partition(":")
            kid = kid.strip()
            if not sep:
                raise ConfigurationError(f"key ring entry {number} is not kid:base64key")
            if kid in keys:
                raise ConfigurationError(f"key id {kid!r} appears twice in the key ring")
            try:
                keys[kid] = _unb64(encoded.strip())
            except (ValueError, binascii.Error) as exc:
                raise ConfigurationError(f"key {kid!r} is not valid base64") from exc
        if not keys:
            raise ConfigurationError("the key ring holds no keys")
        return cls(keys, primary=primary or next(iter(keys)))

    @classmethod
    def from_env(cls, name: str = ENV_VAR, *, primary: str | None = None) -> KeyRing:
        """Read a key ring from an environment variable (format of :meth:`from_string`)."""
        text = os.environ.get(name)
        if not text:
            raise ConfigurationError(f"environment variable {name} holds no key ring")
        return cls.from_string(text, primary=primary)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, primary: str | None = None) -> KeyRing:
        """Read a key ring from a file (format of :meth:`from_string`, one entry a line)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the key file {str(path)!r}: {exc}") from exc
        return cls.from_string(text, primary=primary)

    @staticmethod
    def generate(kid: str) -> str:
        """A new random key as a ``kid:base64key`` entry for :meth:`from_string`."""
        return f"{kid}:{_b64(os.urandom(_KEY_BYTES))}"

    @property
    def primary(self) -> str:
        return self._primary

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:
        return f"<KeyRing primary={self._primary!r} kids={list(self._keys)!r}>"

    def _key(self, kid: str) -> bytes:
        return self._keys[kid]


# --------------------------------------------------------------------------- data keys


def new_dek() -> bytes:
    """A fresh random data key."""
    return os.urandom(_KEY_BYTES)


def _dek_aad(conversation_id: str, kid: str) -> bytes:
    return f"convostore-dek|{_VERSION}|{conversation_id}|{kid}".encode()


def wrap_dek(ring: KeyRing, dek: bytes, conversation_id: str) -> JSONObject:
    """The envelope storing ``dek`` wrapped under the ring's primary key."""
    kid = ring.primary
    kek = ring._key(kid)
    nonce = os.urandom(_NONCE_BYTES)
    wrapped = _aesgcm(kek).encrypt(nonce, dek, _dek_aad(conversation_id, kid))
    return {
        "v": _VERSION,
        "kid": kid,
        "kcv": key_check_value(kek),
        "nonce": _b64(nonce),
        "wrapped": _b64(wrapped),
    }


def envelope_of(record: ConversationRecord) -> JSONObject:
    """The stored data-key envelope of a record.

    Raises:
        CorruptCiphertextError: there is none (the conversation was not written encrypted).
    """
    envelope = record.metadata.get(DEK_FIELD)
    if not isinstance(envelope, dict):
        raise CorruptCiphertextError(
            "has no data key: it was not written through an encrypted store",
            conversation_id=record.id,
        )
    return envelope


def is_current(ring: KeyRing, envelope: JSONObject) -> bool:
    """Whether an envelope is already wrapped under the ring's primary key."""
    return envelope.get("kid") == ring.primary and envelope.get("kcv") == key_check_value(
        ring._key(ring.primary)
    )


def unwrap_dek(ring: KeyRing, envelope: JSONObject, conversation_id: str) -> bytes:
    """The data key inside an envelope.

    Raises:
        MissingKeyError: the envelope's key id is not in the ring.
        WrongKeyError: the ring's key under that id is another key.
        CorruptCiphertextError: the envelope is malformed or fails authentication.
    """
    kid = envelope.get("kid")
    if envelope.get("v") != _VERSION or not isinstance(kid, str):
        raise CorruptCiphertextError("malformed data-key envelope", conversation_id=conversation_id)
    if kid not in ring:
        raise MissingKeyError(
            f"data key is wrapped under key id {kid!r}, which the key ring does not hold "
            f"(it holds {list(ring.kids)!r})",
            conversation_id=conversation_id,
            kid=kid,
        )
    kek = ring._key(kid)
    if envelope.get("kcv") != key_check_value(kek):
        raise WrongKeyError(
            f"the key ring's key {kid!r} is not the key the data key was wrapped under",
            conversation_id=conversation_id,
            kid=kid,
        )
    try:
        nonce = _unb64(envelope.get("nonce"))
        wrapped = _unb64(envelope.get("wrapped"))
        dek: bytes = _aesgcm(kek).decrypt(nonce, wrapped, _dek_aad(conversation_id, kid))
    except (ValueError, binascii.Error, _invalid_tag()) as exc:
        raise CorruptCiphertextError(
            "data key failed authentication (altered or moved)",
            conversation_id=conversation_id,
            kid=kid,
        ) from exc
    if len(dek) != _KEY_BYTES:
        raise CorruptCiphertextError(
            "data key has the wrong length", conversation_id=conversation_id
        )
    return dek


# --------------------------------------------------------------------------- payloads


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _seal(aead: Any, value: Any, aad: bytes) -> JSONObject:
    nonce = os.urandom(_NONCE_BYTES)
    ct = aead.encrypt(nonce, _dumps(value), aad)
    return {"v": _VERSION, "nonce": _b64(nonce), "ct": _b64(ct)}


def _open(aead: Any, sealed: object, aad: bytes, conversation_id: str, seq: int | None) -> Any:
    if not isinstance(sealed, dict) or sealed.get("v") != _VERSION:
        raise CorruptCiphertextError(
            "is not encrypted (plaintext or a malformed envelope where ciphertext was expected)",
            conversation_id=conversation_id,
            seq=seq,
        )
    try:
        plain = aead.decrypt(_unb64(sealed.get("nonce")), _unb64(sealed.get("ct")), aad)
        return json.loads(plain)
    except (ValueError, binascii.Error, _invalid_tag()) as exc:
        raise CorruptCiphertextError(
            "ciphertext failed authentication (altered, moved or swapped)",
            conversation_id=conversation_id,
            seq=seq,
        ) from exc


def _step_aad(conversation_id: str, seq: int, turn_seq: int, kind: str) -> bytes:
    # ids never contain "|" (models.check_id) and the free-form type comes last: unambiguous
    return f"convostore-step|{_VERSION}|{conversation_id}|{seq}|{turn_seq}|{kind}".encode()


def _config_aad(conversation_id: str) -> bytes:
    return f"convostore-config|{_VERSION}|{conversation_id}".encode()


def seal_steps(dek: bytes, steps: Sequence[StoredStep]) -> list[StoredStep]:
    """The steps with their payloads encrypted (their types kept readable)."""
    aead = _aesgcm(dek)
    sealed = []
    for step in steps:
        aad = _step_aad(step.conversation_id, step.seq, step.turn_seq, step.type)
        payload = {"type": step.type, ENCRYPTED_FIELD: _seal(aead, step.payload, aad)}
        sealed.append(step.model_copy(update={"payload": payload}))
    return sealed


def open_steps(dek: bytes, steps: Sequence[StoredStep]) -> list[StoredStep]:
    """The steps with their payloads decrypted.

    Raises:
        CorruptCiphertextError: a step altered, moved, swapped, or not encrypted.
    """
    aead = _aesgcm(dek)
    opened = []
    for step in steps:
        cid, seq = step.conversation_id, step.seq
        aad = _step_aad(cid, seq, step.turn_seq, step.type)
        payload = _open(aead, step.payload.get(ENCRYPTED_FIELD), aad, cid, seq)
        if type(payload) is not dict or payload.get("type") != step.type:
            raise CorruptCiphertextError(
                "decrypted payload is not a step of its type", conversation_id=cid, seq=seq
            )
        opened.append(stored_step(cid, seq, step.turn_seq, payload))
    return opened


def seal_config(dek: bytes, conversation_id: str, config: JSONObject) -> JSONObject:
    """The stored form of a conversation's config."""
    return {ENCRYPTED_FIELD: _seal(_aesgcm(dek), config, _config_aad(conversation_id))}


def open_config(dek: bytes, conversation_id: str, stored: JSONObject) -> JSONObject:
    """A conversation's config, decrypted.

    Raises:
        CorruptCiphertextError: altered, moved, or not encrypted.
    """
    if set(stored) != {ENCRYPTED_FIELD}:
        raise CorruptCiphertextError("settings are not encrypted", conversation_id=conversation_id)
    aad = _config_aad(conversation_id)
    config = _open(_aesgcm(dek), stored[ENCRYPTED_FIELD], aad, conversation_id, None)
    if not isinstance(config, dict):
        raise CorruptCiphertextError(
            "decrypted settings are not an object", conversation_id=conversation_id
        )
    return config


def _pending_aad(pending: PendingTurnRecord) -> bytes:
    # the key is free-form and comes last: unambiguous
    return (
        f"convostore-pending|{_VERSION}|{pending.conversation_id}|{pending.idempotency_key}"
    ).encode()


def seal_pending(dek: bytes, pending: PendingTurnRecord) -> PendingTurnRecord:
    """The stored form of a turn in flight: its input steps and settings, the payloads,
    sealed together into ``config`` (``input_steps`` left empty); the rest stays readable."""
    sealed = _seal(_aesgcm(dek), [pending.input_steps, pending.config], _pending_aad(pending))
    return pending.model_copy(update={"input_steps": [], "config": {ENCRYPTED_FIELD: sealed}})


def open_pending(dek: bytes, stored: PendingTurnRecord) -> PendingTurnRecord:
    """A turn in flight, decrypted.

    Raises:
        CorruptCiphertextError: altered, moved, or not encrypted.
    """
    cid = stored.conversation_id
    if set(stored.config) != {ENCRYPTED_FIELD} or stored.input_steps:
        raise CorruptCiphertextError("turn in flight is not encrypted", conversation_id=cid)
    opened = _open(_aesgcm(dek), stored.config[ENCRYPTED_FIELD], _pending_aad(stored), cid, None)
    if (
        not isinstance(opened, list)
        or len(opened) != 2
        or not isinstance(opened[0], list)
        or not isinstance(opened[1], dict)
    ):
        raise CorruptCiphertextError("decrypted turn in flight is malformed", conversation_id=cid)
    return stored.model_copy(update={"input_steps": opened[0], "config": opened[1]})


def check_unreserved(metadata: JSONObject) -> None:
    """Callers may not write the reserved data-key entry themselves."""
    if DEK_FIELD in metadata:
        raise ValidationError(f"metadata key {DEK_FIELD!r} is reserved for encryption at rest")


# --------------------------------------------------------------------------- cache / report


class DataKeyCache:
    """A bounded LRU of unwrapped data keys by conversation id, safe across threads.

    Each entry remembers the conversation's ``created_at``, so a conversation deleted and
    re-created under the same id (with a new data key) is never served the old key.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple[bytes, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conversation_id: str) -> tuple[bytes, object] | None:
        with self._lock:
            item = self._items.get(conversation_id)
            if item is not None:
                self._items.move_to_end(conversation_id)
            return item

    def put(self, conversation_id: str, dek: bytes, created_at: object) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[conversation_id] = (dek, created_at)
            self._items.move_to_end(conversation_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, conversation_id: str) -> None:
        with self._lock:
            self._items.pop(conversation_id, None)


class RotationReport(BaseModel):
    """What :func:`rotate_keys` did.

    ``rewrapped``: data keys re-wrapped under the primary key. ``current``: already under it.
    ``vanished``: deleted while the rotation ran. ``retries``: re-reads after a concurrent
    write changed a conversation between its read and its update.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    primary: str
    conversations: int = 0
    rewrapped: int = 0
    current: int = 0
    vanished: int = 0
    retries: int = 0

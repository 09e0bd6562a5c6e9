"""Backends by URL scheme family: a plain table of lazy factories.

A factory imports its backend module only when a URL of its family is opened, so a missing
optional driver is reported as a :class:`ConfigurationError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._exceptions import ConfigurationError
from ._urls import family, redact, url_options

# family -> (module under convostore._async / convostore._sync, class name, driver modules)
BACKENDS: dict[str, tuple[str, str]] = {
    "sql": ("sql_store", "SQLStore"),
    "redis": ("redis_store", "RedisStore"),
    "memory": ("memory_store", "MemoryStore"),
}

# driver module -> the extra that installs it
EXTRAS: dict[str, str] = {
    "psycopg": "postgresql",
    "pymysql": "mysql",
    "aiomysql": "mysql",
    "redis": "redis",
}


def _factory(url: str, flavour: str) -> Any:
    module_name, class_name = BACKENDS[family(url)]
    try:
        module = importlib.import_module(f"convostore.{flavour}.{module_name}")
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        raise ConfigurationError(
            f"{redact(url)} needs the {exc.name!r} driver: pip install 'convostore[{extra}]'"
        ) from exc
    # async classes carry the Async prefix (AsyncMemoryStore); the generated twin does not
    if flavour == "_async" and hasattr(module, f"Async{class_name}"):
        return getattr(module, f"Async{class_name}")
    return getattr(module, class_name)


def _open(url: str, flavour: str, encryption: Any, options: dict[str, Any]) -> Any:
    url_options(url)  # an unknown or malformed option fails here, before any connection
    if encryption is None:
        return _factory(url, flavour).from_url(url, **options)
    from ._encryption import KeyRing

    # checked before the backend opens, so a bad option leaves no connection behind
    if not isinstance(encryption, KeyRing):
        raise ConfigurationError(
            f"encryption= takes a convostore.KeyRing, not {type(encryption).__name__}"
        )
    module = importlib.import_module(f"convostore.{flavour}.encrypted_store")
    wrapper = getattr(module, "AsyncEncryptedStore" if flavour == "_async" else "EncryptedStore")
    return wrapper(_factory(url, flavour).from_url(url, **options), encryption)


def open_store(url: str, *, encryption: Any = None, **options: Any) -> Any:
    """Open a store by URL: ``sqlite:///chat.db``, ``postgresql://…``, ``mysql+pymysql://…``,
    ``redis://…``, ``redis+cluster://h1:p1,h2:p2/``, ``memory://``. Options go to the backend
    (e.g. ``key_prefix`` for Redis, ``pool_size`` for SQL); the URL's query options are
    checked here, and an unknown or malformed one raises :class:`ConfigurationError`.
    ``encryption=KeyRing(...)`` encrypts step payloads and settings at rest."""
    return _open(url, "_sync", encryption, options)


def open_async_store(url: str, *, encryption: Any = None, **options: Any) -> Any:
    """The asyncio twin of :func:`open_store`."""
    return _open(url, "_async", encryption, options)

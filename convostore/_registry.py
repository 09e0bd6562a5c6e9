"""Backends by URL scheme family: a plain table of lazy factories.

A factory imports its backend module only when a URL of its family is opened, so a missing
optional driver is reported as a :class:`ConfigurationError` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._exceptions import ConfigurationError
from ._urls import family, redact

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


def open_store(url: str, **options: Any) -> Any:
    """Open a store by URL: ``sqlite:///chat.db``, ``postgresql://…``, ``mysql+pymysql://…``,
    ``redis://…``, ``memory://``. Options go to the backend (e.g. ``key_prefix`` for Redis)."""
    return _factory(url, "_sync").from_url(url, **options)


def open_async_store(url: str, **options: Any) -> Any:
    """The asyncio twin of :func:`open_store`."""
    return _factory(url, "_async").from_url(url, **options)

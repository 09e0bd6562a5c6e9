"""Store URLs: which backend family a URL names, and how to print it safely."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ._exceptions import ConfigurationError

# scheme (before any "+driver") -> backend family
FAMILIES: dict[str, str] = {
    "sqlite": "sql",
    "postgresql": "sql",
    "postgres": "sql",
    "mysql": "sql",
    "mariadb": "sql",
    "redis": "redis",
    "rediss": "redis",
    "memory": "memory",
}


def family(url: str) -> str:
    """The backend family (``sql``, ``redis``, ``memory``) of a store URL."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"not a store URL: {redact(str(url))!r}; expected one of "
            + ", ".join(f"{s}://" for s in sorted(FAMILIES))
        )
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    try:
        return FAMILIES[scheme]
    except KeyError:
        raise ConfigurationError(
            f"unsupported store URL scheme {scheme!r}; supported: "
            + ", ".join(f"{s}://" for s in sorted(FAMILIES))
        ) from None


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

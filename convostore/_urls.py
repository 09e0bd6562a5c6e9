"""Store URLs: which backend family a URL names, which options it may carry, and how to
print it safely."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

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
    """The URL with any password replaced by ``***`` (also in a cluster URL's host list)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


# --------------------------------------------------------------------------- URL options

# Store URLs are checked when a store is opened: an option nobody reads (a typo) or a value
# that does not parse is a ConfigurationError naming it, not a driver error at first use.


def _text(value: str) -> str:
    return value


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also refuses nan
        raise ValueError("must be a number of seconds >= 0")
    return number


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _threshold(value: str) -> int | None:
    return None if value.lower() == "none" else _count(value)


Parser = Callable[[str], Any]

# SQLAlchemy engine pool settings, read by the SQL store itself (every SQL backend)
POOL_OPTIONS: dict[str, Parser] = {
    "pool_size": _count,
    "max_overflow": _count,
    "pool_timeout": _seconds,
    "pool_recycle": _seconds,
    "pool_pre_ping": _flag,
}

# libpq connection parameters, which psycopg takes from the URL query
_LIBPQ = [
    "application_name",
    "channel_binding",
    "client_encoding",
    "connect_timeout",
    "dbname",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "load_balance_hosts",
    "max_protocol_version",
    "min_protocol_version",
    "options",
    "passfile",
    "password",
    "port",
    "replication",
    "require_auth",
    "requirepeer",
    "service",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcert",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslmode",
    "sslnegotiation",
    "sslpassword",
    "sslrootcert",
    "sslsni",
    "target_session_attrs",
    "tcp_user_timeout",
    "user",
]

# what both MySQL drivers (pymysql, aiomysql) accept through SQLAlchemy's URL query
_MYSQL = {
    "charset": _text,
    "connect_timeout": _count,
    "unix_socket": _text,
    "local_infile": _flag,
    "client_flag": _count,
    "init_command": _text,
    "program_name": _text,
    "ssl_ca": _text,
    "ssl_cert": _text,
    "ssl_key": _text,
    "ssl_capath": _text,
    "ssl_cipher": _text,
    "ssl_check_hostname": _flag,
}

_REDIS_COMMON: dict[str, Parser] = {
    "key_prefix": _text,
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "socket_keepalive": _flag,
    "health_check_interval": _count,
    "max_connections": _count,
}
_REDIS_TLS: dict[str, Parser] = {
    "ssl_cert_reqs": _text,
    "ssl_ca_certs": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "ssl_check_hostname": _flag,
}

# URL kind -> the query options it accepts and how each value parses
URL_OPTIONS: dict[str, dict[str, Parser]] = {
    "memory": {},
    "sqlite": {"timeout": _seconds, **POOL_OPTIONS},
    "postgresql": {
        **dict.fromkeys(_LIBPQ, _text),
        "prepare_threshold": _threshold,
        **POOL_OPTIONS,
    },
    "mysql": {**_MYSQL, **POOL_OPTIONS},
    "redis": {
        **_REDIS_COMMON,
        "db": _count,
        "protocol": _count,
        "retry_on_timeout": _flag,
    },
    "rediss": {**_REDIS_COMMON, "db": _count, "protocol": _count, **_REDIS_TLS},
    "redis+cluster": {**_REDIS_COMMON, "require_full_coverage": _flag},
    "rediss+cluster": {**_REDIS_COMMON, "require_full_coverage": _flag, **_REDIS_TLS},
}
_KINDS = {"postgres": "postgresql", "mariadb": "mysql"}


def kind(url: str) -> str:
    """What a store URL's options are checked against: its scheme without any SQL
    ``+driver`` (``redis+cluster`` and ``rediss+cluster`` stay whole)."""
    family(url)
    scheme = url.split("://", 1)[0].lower()
    if scheme in URL_OPTIONS:
        return scheme
    base = scheme.split("+", 1)[0]
    if base in ("redis", "rediss"):
        raise ConfigurationError(
            f"unsupported Redis URL scheme {scheme!r}; supported: redis://, rediss://, "
            "redis+cluster://, rediss+cluster://"
        )
    return _KINDS.get(base, base)


def url_options(url: str) -> dict[str, Any]:
    """The URL's query options, parsed, after checking each against what its store accepts.

    Raises:
        ConfigurationError: an unknown option, one given twice, or a value that does not
            parse; the message names the option and lists the accepted ones.
    """
    accepted = URL_OPTIONS[kind(url)]
    query = url.split("?", 1)[1] if "?" in url else ""
    found: dict[str, Any] = {}
    for item in query.split("&") if query else ():
        name, sep, value = item.partition("=")
        name, value = unquote_plus(name), unquote_plus(value)
        listing = ", ".join(sorted(accepted)) or "none"
        if not sep or not name:
            raise ConfigurationError(
                f"malformed option {item!r} in {redact(url)}: expected name=value; "
                f"accepted options: {listing}"
            )
        parser = accepted.get(name)
        if parser is None:
            raise ConfigurationError(
                f"unknown option {name!r} in {redact(url)}; accepted options: {listing}"
            )
        if name in found:
            raise ConfigurationError(f"option {name!r} is given twice in {redact(url)}")
        try:
            found[name] = parser(value)
        except ValueError as exc:
            raise ConfigurationError(
                f"option {name!r} in {redact(url)} has a bad value {value!r}: {exc}"
            ) from None
    return found


def without_options(url: str, names: Collection[str]) -> str:
    """The URL with the query options ``names`` removed (those the store reads itself)."""
    if "?" not in url:
        return url
    base, query = url.split("?", 1)
    kept = [item for item in query.split("&") if unquote_plus(item.partition("=")[0]) not in names]
    return f"{base}?{'&'.join(kept)}" if kept else base

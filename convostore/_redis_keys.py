"""The Redis key schema and Lua scripts, shared by the sync and asyncio Redis stores.

Per conversation (all keys share the hash tag ``{<conversation id>}``, so one script can
touch them all on Redis Cluster)::

    <prefix>{<id>}:c   hash: one field per ConversationRecord field, each value JSON text
    <prefix>{<id>}:t   list: one JSON ``[first_step_seq, status, turn]`` per turn, in seq order
    <prefix>{<id>}:s   list: one JSON ``[turn_seq, payload]`` per step, in seq order
    <prefix>{<id>}:k   hash: idempotency key -> turn seq
    <prefix>{<id>}:p   hash: the turn in flight, if any (see ``pending_fields``)

Indexes (each in a slot of its own; written outside the scripts)::

    <prefix>idx:all                  every conversation
    <prefix>idx:t:<tenant>           a tenant's conversations
    <prefix>idx:u:<tenant>/<user>    one user's conversations in a tenant
    <prefix>pidx:all                 every turn in flight (oldest first)
    <prefix>pidx:t:<tenant>          a tenant's turns in flight

The outbox is one hash of items (id -> JSON) and a sorted set of their ids by next attempt
(score: microseconds since the epoch), both under the hash tag ``{outbox}`` so that one script
writes the two, on Redis Cluster too::

    <prefix>{outbox}:items   <prefix>{outbox}:due

Index sorted sets hold every member at score 0, so members sort by their bytes:
``<19-digit microseconds since 0001-01-01>|<id>`` sorts exactly by ``(created_at, id)`` and
``ZRANGE … BYLEX REV`` gives keyset pagination for free. Ids never contain ``|``, ``/`` or
braces (``models.check_id``), so neither keys nor members can collide.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ._core.store_rules import (
    APPEND_FIELDS,
    PENDING_PROGRESS_FIELDS,
    TurnSpan,
    decode_pending,
    dumps,
    epoch_us,
    loads,
    stored_step,
)
from ._exceptions import ConfigurationError, CorruptRecordError
from .models import ConversationRecord, PendingTurnRecord, StoredStep, TurnRecord

DEFAULT_PREFIX = "convostore:"

# Shift microseconds so that every representable datetime gives a non-negative number.
_EPOCH_SHIFT = -epoch_us(datetime(1, 1, 1, tzinfo=UTC))


def check_prefix(prefix: object) -> str:
    """A key prefix must be a string without braces (they would capture the hash tag)."""
    if not isinstance(prefix, str):
        raise ConfigurationError(f"key_prefix must be a string, not {type(prefix).__name__}")
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"key_prefix must not contain braces: {prefix!r}")
    return prefix


def split_prefix(url: str) -> tuple[str, str | None]:
    """``(url without key_prefix, key_prefix or None)``: the prefix may ride in the query."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = [value for name, value in query if name == "key_prefix"]
    if not found:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != "key_prefix"])
    return urlunsplit(parts._replace(query=rest)), found[-1]


def is_cluster_url(url: str) -> bool:
    """``redis+cluster://`` or ``rediss+cluster://``: a Redis Cluster, by its seed nodes."""
    return url.split("://", 1)[0].lower().endswith("+cluster")


def cluster_settings(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``(seed nodes, RedisCluster keyword arguments)`` of a cluster URL
    ``redis[s]+cluster://[user:password@]host:port[,host:port…]/[?option=value…]``.

    The host list follows the comma-separated form other clients accept; any one reachable
    seed is enough, the client discovers the others. Options were checked by
    ``_urls.url_options`` (the key prefix is taken out before this).

    Raises:
        ConfigurationError: no seed, a seed without a valid port, or a database number.
    """
    from ._urls import URL_OPTIONS, kind

    scheme, rest = url.split("://", 1)
    location, _, query = rest.partition("?")
    netloc, _, path = location.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ConfigurationError("a Redis Cluster has only database 0; drop the /N from the URL")
    userinfo, at, hosts = netloc.rpartition("@")
    settings: dict[str, Any] = {"ssl": scheme.lower().startswith("rediss")}
    if at:
        user, _, password = userinfo.partition(":")
        settings.update(username=unquote(user) or None, password=unquote(password) or None)
    seeds = []
    for item in filter(None, hosts.split(",")):
        host, colon, port = item.rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"cluster seed {item!r} needs host:port")
        seeds.append((host.strip("[]") or "127.0.0.1", int(port)))
    if not seeds:
        raise ConfigurationError("a Redis Cluster URL names at least one host:port")
    parsers = URL_OPTIONS[kind(url)]
    for name, value in parse_qsl(query, keep_blank_values=True):
        settings[name] = parsers[name](value)
    return seeds, settings


def check_driver_options(factory: Any, options: dict[str, Any]) -> None:
    """Refuse keyword options the redis-py client would only reject at its first command."""
    parameters = inspect.signature(factory.__init__).parameters
    accepted = set(parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        import redis  # the sync RedisCluster hands its **kwargs to each node's redis.Redis

        accepted |= set(inspect.signature(redis.Redis.__init__).parameters)
    accepted -= {"self", "kwargs"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigurationError(
            f"unknown Redis option(s) {', '.join(unknown)} for {factory.__name__}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )


def tombstone_key(prefix: str, conversation_id: str) -> str:
    """Where DELETE leaves a minute-long note of a deletion (see ``DELETE``)."""
    return f"{prefix}{{{conversation_id}}}:d"


def conversation_keys(prefix: str, conversation_id: str) -> list[str]:
    """The record hash, turns list, steps list and idempotency hash of one conversation."""
    tag = f"{prefix}{{{conversation_id}}}"
    return [f"{tag}:c", f"{tag}:t", f"{tag}:s", f"{tag}:k"]


def index_keys(prefix: str, tenant: str, user: str | None) -> list[str]:
    """The sorted sets a conversation of ``tenant`` (and ``user``) is listed in."""
    keys = [f"{prefix}idx:all", f"{prefix}idx:t:{tenant}"]
    if user is not None:
        keys.append(f"{prefix}idx:u:{tenant}/{user}")
    return keys


def pending_key(prefix: str, conversation_id: str) -> str:
    """The hash of a conversation's turn in flight (same hash tag as the conversation)."""
    return f"{prefix}{{{conversation_id}}}:p"


def pending_index_keys(prefix: str, tenant: str) -> list[str]:
    """The sorted sets a turn in flight of ``tenant`` is listed in."""
    return [f"{prefix}pidx:all", f"{prefix}pidx:t:{tenant}"]


def outbox_keys(prefix: str) -> list[str]:
    """The outbox's item hash and its due-time sorted set (one hash tag)."""
    return [f"{prefix}{{outbox}}:items", f"{prefix}{{outbox}}:due"]


def sha(source: str) -> str:
    """The SHA1 by which Redis caches a script."""
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def index_member(created_at: datetime, conversation_id: str) -> str:
    return f"{epoch_us(created_at) + _EPOCH_SHIFT:019d}|{conversation_id}"


def member_id(member: bytes) -> str:
    return member.decode().rpartition("|")[2]


# --------------------------------------------------------------------------- element codecs


def expire_ms(record: ConversationRecord) -> str:
    return "" if record.expires_at is None else str(int(record.expires_at.timestamp() * 1000))


def record_fields(record: ConversationRecord, names: Sequence[str] | None = None) -> list[str]:
    """Flat field/value pairs for HSET: every field (or ``names``) as JSON text, the expiry
    in ms under ``_exp`` (which the scripts read to apply the TTL), and under ``_w`` a token
    of this one write (by which a re-sent script recognises that it already applied)."""
    data = record.model_dump(mode="json", include=None if names is None else set(names))
    flat: list[str] = []
    for name, value in data.items():
        flat += [name, dumps(value)]
    return [*flat, "_exp", expire_ms(record), "_w", os.urandom(16).hex()]


def decode_record(raw: Any) -> ConversationRecord:
    """A record from HGETALL's answer (a dict, or a flat list when it came from a script)."""
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    try:
        data = {k.decode(): loads(v) for k, v in pairs if not k.startswith(b"_")}
        return ConversationRecord.model_validate(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"stored conversation does not parse: {exc}") from exc


def turn_element(turn: TurnRecord, first_step: int) -> str:
    return dumps([first_step, turn.status, turn.model_dump(mode="json")])


def decode_turn(raw: bytes) -> TurnRecord:
    try:
        return TurnRecord.model_validate(loads(raw, "stored turn")[2])
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise CorruptRecordError(f"stored turn does not parse: {exc}") from exc


def decode_spans(raw: Sequence[bytes]) -> list[TurnSpan]:
    # one json.loads over the joined elements, as in decode_steps
    rows = loads(b"[" + b",".join(raw) + b"]", "stored turn")
    try:
        return [TurnSpan(*row[:2]) for row in rows]
    except (TypeError, KeyError) as exc:
        raise CorruptRecordError(f"stored turn does not parse: {exc}") from exc


def decode_steps(conversation_id: str, first: int, raw: Sequence[bytes]) -> list[StoredStep]:
    # One json.loads per element rather than one over the joined elements: each decoded pair
    # is dropped as soon as it is unpacked, so fewer objects stay alive and the garbage
    # collector runs less often over a long history (10,000 steps: ~15% faster).
    steps = []
    try:
        for seq, item in enumerate(raw, start=first):
            turn_seq, payload = json.loads(item)
            steps.append(stored_step(conversation_id, seq, turn_seq, payload))
    except (TypeError, ValueError) as exc:
        raise CorruptRecordError(f"stored step does not parse: {exc}") from exc
    return steps


def pending_fields(pending: PendingTurnRecord, member: str, token: str) -> list[str]:
    """Flat field/value pairs for the pending hash: the progress fields as JSON text each
    (``update_pending`` rewrites only those), the others as one JSON document under ``_rec``;
    and, for the scripts, the tenant (as the record hash holds it), the raw key (``_key``),
    the lease expiry in microseconds (``_exp``), the index member (``_m``), a write token."""
    data = pending.model_dump(mode="json")
    rest = {k: v for k, v in data.items() if k not in PENDING_PROGRESS_FIELDS}
    flat = ["tenant", dumps(pending.tenant), "_key", pending.idempotency_key]
    flat += ["_rec", dumps(rest), "_m", member, "_w", token]
    return flat + progress_fields(pending)


def progress_fields(pending: PendingTurnRecord) -> list[str]:
    """The field/value pairs ``update_pending`` writes (with the lease expiry ``_exp``)."""
    data = pending.model_dump(mode="json", include=set(PENDING_PROGRESS_FIELDS))
    flat = ["_exp", str(epoch_us(pending.lease_expires_at))]
    for name in PENDING_PROGRESS_FIELDS:
        flat += [name, dumps(data[name])]
    return flat


def decode_pending_hash(raw: Any) -> PendingTurnRecord:
    """A pending turn from HGETALL's answer (a dict, or a flat list from a script)."""
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    try:
        fields = {k.decode(): v for k, v in pairs}
        data = loads(fields["_rec"], "stored pending turn")
        for name in PENDING_PROGRESS_FIELDS:
            data[name] = loads(fields[name], "stored pending turn")
    except (KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"stored pending turn does not parse: {exc}") from exc
    return decode_pending(data)


# --------------------------------------------------------------------------- scripts

# True when the hash at ``key`` holds every field/value pair of ARGV[first..first+2n-1]:
# how a re-run of a script that was applied (its reply lost, redis-py re-sent it after a
# dropped connection) recognises its own write. The pairs include the "_w" token of the
# call, so neither another writer nor a second identical call by the caller matches.
_SAME = """
local function same(key, first, n)
  for j = first, first + 2 * n - 2, 2 do
    if redis.call('HGET', key, ARGV[j]) ~= ARGV[j + 1] then return false end
  end
  return true
end
"""

# KEYS: record, turns, steps, keys.  ARGV: expire-at ms or "", field count, fields/values…,
# turn count, turns…, idempotency pair count, key/seq…, steps…  Returns 1 when written (or
# already written by this very call), 0 when the id is taken.
CREATE = (
    _SAME
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if same(KEYS[1], 3, tonumber(ARGV[2])) then return 1 end
  return 0
end
local i = 3
local n = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, i, i + 2 * n - 1))
i = i + 2 * n
n = tonumber(ARGV[i])
for j = i + 1, i + n, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, j, math.min(j + 999, i + n)))
end
i = i + n + 1
n = tonumber(ARGV[i])
if n > 0 then redis.call('HSET', KEYS[4], unpack(ARGV, i + 1, i + 2 * n)) end
i = i + 2 * n + 1
for j = i, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(ARGV, j, math.min(j + 999, #ARGV)))
end
if ARGV[1] ~= '' then
  for _, key in ipairs(KEYS) do redis.call('PEXPIREAT', key, ARGV[1]) end
end
return 1
"""
)

# The fields an append writes, in the order append_values gives them: the script names them
# itself, so only the values travel (fewer arguments cost less to send and to unpack).
_APPEND_NAMES = (*APPEND_FIELDS, "_w")
_FIRST_VALUE = 8
_FIRST_STEP = _FIRST_VALUE + len(_APPEND_NAMES)
_HSET_APPEND = ", ".join(
    f"'{name}', ARGV[{_FIRST_VALUE + index}]" for index, name in enumerate(_APPEND_NAMES)
)


def append_values(record: ConversationRecord) -> list[str]:
    """The values of ``APPEND_FIELDS`` (JSON text) and a write token, for ``APPEND``."""
    data = record.model_dump(mode="json", include=set(APPEND_FIELDS))
    return [*(dumps(data[name]) for name in APPEND_FIELDS), os.urandom(16).hex()]


# KEYS: record, turns, steps, keys, pending.  ARGV: tenant JSON, expected version,
# idempotency key or "", turn element, turn seq, stored turn count, stored step count,
# append_values…, steps…  The TTL follows the stored "_exp" field (ms, or "" for none).
# Returns {0} missing, {1, turn} key already used, {2, version} stale, {4} counts do not
# continue, {3} written (also for a re-run of itself, found by its "_w" token).  Either way
# the pending turn carrying the key is deleted; its listing-index member is noted in the
# record's "_pstale", which the next BEGIN (or DELETE) hands back for removal: no round trip
# of its own per turn, and at most one stale index entry per conversation.
APPEND = f"""
local function drop_pending()
  if ARGV[3] == '' or redis.call('HGET', KEYS[5], '_key') ~= ARGV[3] then return end
  redis.call('HSET', KEYS[1], '_pstale', redis.call('HGET', KEYS[5], '_m'))
  redis.call('DEL', KEYS[5])
end
local now = redis.call('HMGET', KEYS[1], 'tenant', 'version', 'turn_count', 'step_count', '_exp')
if now[1] ~= ARGV[1] then return {{0}} end
if ARGV[3] ~= '' then
  local seq = redis.call('HGET', KEYS[4], ARGV[3])
  if seq then
    drop_pending()
    return {{1, redis.call('LINDEX', KEYS[2], tonumber(seq) - 1)}}
  end
end
if now[2] ~= ARGV[2] then
  if tonumber(now[2]) == tonumber(ARGV[2]) + 1 then
    local stored = redis.call('HMGET', KEYS[1], {", ".join(f"'{n}'" for n in _APPEND_NAMES)})
    local same = true
    for j = 1, {len(_APPEND_NAMES)} do
      if stored[j] ~= ARGV[{_FIRST_VALUE - 1} + j] then same = false end
    end
    if same then return {{3}} end
  end
  return {{2, now[2]}}
end
if now[3] ~= ARGV[6] or now[4] ~= ARGV[7] then return {{4}} end
redis.call('RPUSH', KEYS[2], ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[4], ARGV[3], ARGV[5]) end
redis.call('HSET', KEYS[1], {_HSET_APPEND})
for j = {_FIRST_STEP}, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(ARGV, j, math.min(j + 999, #ARGV)))
end
drop_pending()
if now[5] and now[5] ~= '' then
  for _, key in ipairs(KEYS) do redis.call('PEXPIREAT', key, now[5]) end
end
return {{3}}
"""

# KEYS: record, turns, steps, keys, pending.  ARGV: tenant JSON, expected version, field
# count, fields/values… (including "_exp", the TTL every key then takes).  Returns {0}
# missing, {2, version} stale, or {3, fields} with the record's fields after the update
# (also for a re-run of itself).
UPDATE = (
    _SAME
    + """
if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return {0} end
local version = redis.call('HGET', KEYS[1], 'version')
local n = tonumber(ARGV[3])
if version ~= ARGV[2] then
  if tonumber(version) == tonumber(ARGV[2]) + 1 and same(KEYS[1], 4, n) then
    return {3, redis.call('HGETALL', KEYS[1])}
  end
  return {2, version}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + 2 * n))
local expire = redis.call('HGET', KEYS[1], '_exp')
for _, key in ipairs(KEYS) do
  if expire and expire ~= '' then redis.call('PEXPIREAT', key, expire)
  else redis.call('PERSIST', key) end
end
return {3, redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: record, turns, steps, keys, tombstone, pending.  ARGV: tenant JSON, token of this
# call.  Returns the user and created_at of the deleted record, and the listing-index
# members of its pending turn ("_pm") and of a committed one ("_ps", see APPEND) if any
# (what the index entries need), or {}.
# The tombstone keeps just those and the token for a minute, so that a re-run of an applied
# delete (its reply lost) still reports the deletion and lets the caller clean the indexes.
DELETE = """
if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then
  if redis.call('HGET', KEYS[5], '_w') == ARGV[2] then return redis.call('HGETALL', KEYS[5]) end
  return {}
end
local kept = redis.call('HMGET', KEYS[1], 'user', 'created_at', '_pstale')
local pending = redis.call('HGET', KEYS[6], '_m')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6])
local fields = {'user', kept[1] or 'null', 'created_at', kept[2] or 'null'}
for name, member in pairs({_pm = pending, _ps = kept[3]}) do
  if member then
    table.insert(fields, name)
    table.insert(fields, member)
  end
end
redis.call('HSET', KEYS[5], '_w', ARGV[2], unpack(fields))
redis.call('PEXPIRE', KEYS[5], 60000)
return fields
"""

# KEYS: record, pending.  ARGV: tenant JSON, planned version, stored turn count expected,
# token of this call, pending fields…  The pending hash takes the conversation's TTL.
# Returns {0} missing, {1, pending} a turn is in flight, {2, version} stale, {4} not the
# next seq, {3, m} written (also for a re-run of itself, found by its token), with m the
# stale listing-index member noted by APPEND, to remove (or nil).
BEGIN = """
local now = redis.call('HMGET', KEYS[1], 'tenant', 'version', 'turn_count', '_exp', '_pstale')
if now[1] ~= ARGV[1] then return {0} end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[2], '_w') == ARGV[4] then return {3} end
  return {1, redis.call('HGETALL', KEYS[2])}
end
if now[2] ~= ARGV[2] then return {2, now[2]} end
if now[3] ~= ARGV[3] then return {4} end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
if now[4] and now[4] ~= '' then redis.call('PEXPIREAT', KEYS[2], now[4]) end
if now[5] then redis.call('HDEL', KEYS[1], '_pstale') end
return {3, now[5]}
"""

# KEYS: pending.  ARGV: tenant JSON, key, owner JSON, progress fields…  Returns 1 when
# written, 0 when the pending turn is gone, another's, or held by another owner.
UPDATE_PENDING = """
local s = redis.call('HMGET', KEYS[1], 'tenant', '_key', 'lease_owner')
if s[1] ~= ARGV[1] or s[2] ~= ARGV[2] or s[3] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
return 1
"""

# KEYS: pending.  ARGV: tenant JSON, owner JSON, now (us), new expiry (us), new expiry JSON.
# Compare-and-set of the lease: returns the pending hash after the claim, or nil.
CLAIM = """
local s = redis.call('HMGET', KEYS[1], 'tenant', 'lease_owner', '_exp')
if s[1] ~= ARGV[1] then return false end
if s[2] ~= ARGV[2] and tonumber(s[3]) > tonumber(ARGV[3]) then return false end
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[2], 'lease_expires_at', ARGV[5], '_exp', ARGV[4])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: pending.  ARGV: tenant JSON, key.  Returns the index member of the deleted pending
# turn, or nil when there was none with that key.
RELEASE = """
local s = redis.call('HMGET', KEYS[1], 'tenant', '_key', '_m')
if s[1] ~= ARGV[1] or s[2] ~= ARGV[2] then return false end
redis.call('DEL', KEYS[1])
return s[3]
"""

# KEYS: outbox items, outbox due.  ARGV: id, the item's JSON as read, its new JSON, score.
# Returns 1 when written, 0 when the item was removed or changed since it was read.
UPDATE_OUTBOX = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""

# KEYS: outbox items, outbox due.  ARGV: (id, item JSON, next attempt in us) for each item.
ADD_OUTBOX = """
for i = 1, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i])
end
return 1
"""

# KEYS: outbox items, outbox due.  ARGV: ids.
REMOVE_OUTBOX = """
if #ARGV > 0 then
  redis.call('HDEL', KEYS[1], unpack(ARGV))
  redis.call('ZREM', KEYS[2], unpack(ARGV))
end
return 1
"""

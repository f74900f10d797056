"""Counter commands: INCR. Handlers run with the store lock held."""

from collections import deque

from ..errors import NotInteger, Overflow, WrongType, describe_key
from .table import DENYOOM, INT64_MAX, INT64_MIN, WRITE, CommandSpec, Field, to_key, to_offset


def _parse_counter(key, entry) -> int:
    """Read a stored string as a signed 64-bit integer, or raise NOT_INTEGER."""
    text = entry.decode("ascii", "replace") if type(entry) is bytes else entry
    body = text[1:] if text[:1] == "-" else text
    if not (body.isascii() and body.isdigit()) or (len(body) > 1 and body[0] == "0"):
        raise NotInteger("key %s does not hold an integer" % describe_key(key))
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise NotInteger("key %s holds an integer beyond 64 bits" % describe_key(key))
    return value


def _add_to_counter(store, ctx, key, delta: int) -> int:
    """Add `delta` to the counter at `key` (0 if absent), keeping its TTL; return the new value."""
    entry = store.get(key, ctx.now_ms)
    if entry is None:
        current = 0
    elif type(entry) is deque:
        raise WrongType("key %s holds a list, not a counter" % describe_key(key))
    else:
        current = _parse_counter(key, entry)
    result = current + delta
    if result > INT64_MAX:
        raise Overflow("incrementing key %s would overflow a signed 64-bit integer" % describe_key(key))
    store.put(key, str(result), store.expire_at(key))
    return result


def incr(store, ctx, key, offset):
    """INCR key [offset] -> new value (offset >= 0, default 1)."""
    return {"status": "OK", "value": _add_to_counter(store, ctx, key, offset)}


SPECS = (
    CommandSpec("INCR", incr, (Field("key", to_key), Field("offset", to_offset, False, 1)),
                frozenset({WRITE, DENYOOM}), "add OFFSET (default 1) to a counter"),
)

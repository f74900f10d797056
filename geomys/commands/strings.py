"""String commands: SET and GET. Handlers run with the store lock held."""

from collections import deque

from ..errors import KeyExists, NotFound, WrongType, describe_key
from .table import DENYOOM, OK, WRITE, CommandSpec, Field, to_key, to_str, to_ttl_ms


def set_(store, ctx, key, value, ttl_ms):
    """SET key value [exp] -> OK. Never overwrites: an existing key is KEY_EXISTS."""
    if ttl_ms is None:
        added = store.add(key, value, None, ctx.now_ms)
    else:
        now_ms = ctx.now()
        added = store.add(key, value, now_ms + ttl_ms, now_ms)
    if not added:
        raise KeyExists("key %s already exists" % describe_key(key))
    return OK


def get(store, ctx, key):
    """GET key -> value."""
    entry = store.get(key, ctx.now_ms)
    if entry is None:
        raise NotFound("key %s not found" % describe_key(key))
    if type(entry) is deque:
        raise WrongType("key %s holds a list, not a string" % describe_key(key))
    return {"status": "OK", "value": entry}


SPECS = (
    CommandSpec("SET", set_,
                (Field("key", to_key), Field("value", to_str), Field("exp", to_ttl_ms, False, metavar="TTL_MS")),
                frozenset({WRITE, DENYOOM}), "store a string (fails if KEY exists)"),
    CommandSpec("GET", get, (Field("key", to_key),), frozenset(), "read a string"),
)

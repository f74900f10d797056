"""List commands: PUSH, LPOP, RPOP, BLPOP, BRPOP, LLEN. Handlers run with the store lock held.

A list is a `collections.deque`, so both ends are O(1). BLPOP/BRPOP return
None when they would have to wait; the engine then queues the client on the
key and calls them again when a PUSH wakes it.
"""

from collections import deque

from ..errors import NotFound, WrongType, describe_key
from .table import BLOCKING, DENYOOM, OK, WRITE, CommandSpec, Field, to_key, to_seconds, to_str


def _list_at(store, ctx, key):
    """Return the deque at `key`, None if absent; WRONG_TYPE if it holds a string."""
    entry = store.get(key, ctx.now_ms)
    if entry is not None and type(entry) is not deque:
        raise WrongType("key %s holds a string, not a list" % describe_key(key))
    return entry


def push(store, ctx, key, value):
    """PUSH key value -> OK. Appends at the rear, creating the list if needed."""
    _list_at(store, ctx, key)
    store.push(key, value)
    return OK


def _pop(store, ctx, key, left: bool):
    if not _list_at(store, ctx, key):
        raise NotFound("list %s not found or empty" % describe_key(key))
    return {"status": "OK", "value": store.pop(key, left)}


def lpop(store, ctx, key):
    """LPOP key -> first element."""
    return _pop(store, ctx, key, True)


def rpop(store, ctx, key):
    """RPOP key -> last element."""
    return _pop(store, ctx, key, False)


def _try_pop(store, ctx, key, left: bool):
    """Pop if the list has an element, else None (the caller waits); WRONG_TYPE on a string."""
    if not _list_at(store, ctx, key):
        return None
    return {"status": "OK", "value": store.pop(key, left)}


def blpop(store, ctx, key, timeout):
    """BLPOP key timeout -> first element, waiting up to timeout seconds (0: forever)."""
    return _try_pop(store, ctx, key, True)


def brpop(store, ctx, key, timeout):
    """BRPOP key timeout -> last element, waiting up to timeout seconds (0: forever)."""
    return _try_pop(store, ctx, key, False)


def llen(store, ctx, key):
    """LLEN key -> length (0 if absent)."""
    items = _list_at(store, ctx, key)
    return {"status": "OK", "value": len(items) if items else 0}


_KEY = Field("key", to_key)
_TIMEOUT = Field("timeout", to_seconds)

SPECS = (
    CommandSpec("PUSH", push, (_KEY, Field("value", to_str)), frozenset({WRITE, DENYOOM}),
                "append VALUE at the rear of a list"),
    CommandSpec("LPOP", lpop, (_KEY,), frozenset({WRITE}), "remove and return the first element of a list"),
    CommandSpec("RPOP", rpop, (_KEY,), frozenset({WRITE}), "remove and return the last element of a list"),
    CommandSpec("BLPOP", blpop, (_KEY, _TIMEOUT), frozenset({WRITE, BLOCKING}),
                "like lpop, waiting up to TIMEOUT seconds (0: forever)"),
    CommandSpec("BRPOP", brpop, (_KEY, _TIMEOUT), frozenset({WRITE, BLOCKING}),
                "like rpop, waiting up to TIMEOUT seconds (0: forever)"),
    CommandSpec("LLEN", llen, (_KEY,), frozenset(), "length of a list (0 if absent)"),
)

"""Keyspace commands: DEL, EXISTS, FLUSHDB. Handlers run with the store lock held."""

from .table import OK, WRITE, CommandSpec, Field, to_key


def delete(store, ctx, key):
    """DEL key -> 1 if removed, 0 if absent."""
    present = store.get(key, ctx.now_ms) is not None
    return {"status": "OK", "value": 1 if present and store.delete(key) else 0}


def exists(store, ctx, key):
    """EXISTS key -> 1 or 0."""
    return {"status": "OK", "value": 0 if store.get(key, ctx.now_ms) is None else 1}


def flushdb(store, ctx):
    """FLUSHDB -> OK. Removes every key (and, through its record, empties the AOF)."""
    store.flush()
    return OK


SPECS = (
    CommandSpec("DEL", delete, (Field("key", to_key),), frozenset({WRITE}),
                "remove a key (1 if removed, 0 if absent)"),
    CommandSpec("EXISTS", exists, (Field("key", to_key),), frozenset(), "1 if KEY exists, else 0"),
    CommandSpec("FLUSHDB", flushdb, (), frozenset({WRITE}), "remove every key"),
)

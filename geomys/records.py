"""Effect records: the deterministic description of one change to the keyspace.

A record is a tuple whose first item names the effect:

    ("SET", key, value, expire_at_ms | None)   put a string (also what INCR logs)
    ("PUSH", key, value)                       append to a list
    ("LPOP", key) / ("RPOP", key)              remove a list's first / last element
    ("DEL", key)                               remove a key (also expiry on the leader)
    ("FLUSHDB",)                               remove every key
    ("MEMBERS", [[node_id, client_address, grpc_address], ...])
                                               the cluster's membership from here on;
                                               no effect on the keyspace

The store produces them as it changes; the append-only file, replication and
snapshots carry them in one encoding (`pack` / `unpack`, MessagePack with str
kept apart from bin); `apply` replays them. Imports only msgpack, the store
and errors (and threading, for one encoder per thread).
"""

import threading
from collections import deque

import msgpack

from .errors import BadRequest
from .store import Store

_STRING_TYPES = (str, bytes)
_KEY_TYPES = (str, bytes)


def _check_set(rec: tuple) -> bool:
    return (len(rec) == 4 and isinstance(rec[1], _KEY_TYPES) and isinstance(rec[2], _STRING_TYPES)
            and (rec[3] is None or type(rec[3]) is int))


def _check_push(rec: tuple) -> bool:
    return len(rec) == 3 and isinstance(rec[1], _KEY_TYPES) and isinstance(rec[2], _STRING_TYPES)


def _check_key(rec: tuple) -> bool:
    return len(rec) == 2 and isinstance(rec[1], _KEY_TYPES)


def _check_members(rec: tuple) -> bool:
    return len(rec) == 2 and isinstance(rec[1], (list, tuple)) and all(
        isinstance(m, (list, tuple)) and len(m) == 3 and type(m[0]) is int
        and isinstance(m[1], str) and isinstance(m[2], str) for m in rec[1])


_CHECKS = {
    "SET": _check_set,
    "PUSH": _check_push,
    "LPOP": _check_key,
    "RPOP": _check_key,
    "DEL": _check_key,
    "FLUSHDB": lambda rec: len(rec) == 1,
    "MEMBERS": _check_members,
}


def validate(rec) -> tuple:
    """Return `rec` as a tuple if it is a well-formed record, else raise BadRequest."""
    if isinstance(rec, list):
        rec = tuple(rec)
    check = _CHECKS.get(rec[0]) if isinstance(rec, tuple) and rec and isinstance(rec[0], str) else None
    if check is None or not check(rec):
        raise BadRequest("malformed record of type %s" % type(rec).__name__)
    return rec


# One encoder per thread, reused: msgpack.packb builds a new one on every
# call, which costs twice what the packing does. An encoder is not safe to
# share between threads, and records are encoded by several.
_encoders = threading.local()


def pack(rec: tuple) -> bytes:
    """Encode a record: the bytes the append-only file frames and nodes send each other."""
    try:
        encode = _encoders.pack
    except AttributeError:
        encode = _encoders.pack = msgpack.Packer(use_bin_type=True).pack
    return encode(rec)


def unpack(data: bytes) -> tuple:
    """Decode and validate an encoded record; raise BadRequest if the bytes are not one."""
    try:
        value = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:  # msgpack reports bad bytes through several exception types
        raise BadRequest("record is not MessagePack (%s)" % type(exc).__name__) from None
    return validate(value)


def apply(store: Store, rec: tuple) -> None:
    """Apply one validated record to `store` (caller holds store.lock).

    Records describe what already happened on the node that produced them, so
    they are applied without the command rules: a SET replaces, a pop of a list
    that is not there is ignored rather than failing.
    """
    name = rec[0]
    if name == "SET":
        store.put(rec[1], rec[2], rec[3])
    elif name == "PUSH":
        entry = store.peek(rec[1])
        if entry is not None and type(entry) is not deque:
            store.delete(rec[1])
        store.push(rec[1], rec[2])
    elif name == "LPOP" or name == "RPOP":
        if isinstance(store.peek(rec[1]), deque):
            store.pop(rec[1], left=name == "LPOP")
    elif name == "DEL":
        store.delete(rec[1])
    elif name == "FLUSHDB":
        store.flush()
    # MEMBERS changes the cluster, not the keyspace: the cluster node reads it.

"""The keyspace: strings, deques and TTLs behind one re-entrant lock.

Pure data structure: no sockets, no threads of its own, no encoding. The
caller holds `store.lock` for every method marked so (the engine does, for
a run of commands at a time). Every mutation is noted as an *effect
record* in `store.effects` while `record_effects` is on; the engine hands
those records to the append-only file and to replication, so what is logged
is always what happened (a served BLPOP is logged as the LPOP it did).
"""

import heapq
import itertools
import sys
import threading
from collections import deque
from typing import Iterator, Optional, Union

Value = Union[str, bytes]
Entry = Union[str, bytes, deque]

# The estimate behind max_memory. A key or value (str or bytes) counts as its
# length plus the header of an ASCII str: exact for ASCII text, 16 bytes over
# for bytes, under for text beyond ASCII (2 to 4 bytes a character). len()
# rather than sys.getsizeof because this runs on every write and getsizeof
# costs ten times as much. The other costs were measured with tracemalloc on
# CPython 3.11: a dict slot with its share of the hash table's spare room, an
# empty deque, a deque's pointer to one element, and a TTL (its entry in the
# expiry dict, the int, the heap tuple).
OBJECT_OVERHEAD = sys.getsizeof("")
ENTRY_OVERHEAD = 48
LIST_OVERHEAD = sys.getsizeof(deque())
ELEMENT_OVERHEAD = OBJECT_OVERHEAD + 8
TTL_OVERHEAD = 176
STRING_ENTRY_OVERHEAD = 2 * OBJECT_OVERHEAD + ENTRY_OVERHEAD


def entry_bytes(key, entry: Entry) -> int:
    """Estimated bytes one key and its entry hold (a list counts every element)."""
    if type(entry) is deque:
        return (len(key) + OBJECT_OVERHEAD + ENTRY_OVERHEAD + LIST_OVERHEAD
                + sum(len(value) for value in entry) + ELEMENT_OVERHEAD * len(entry))
    return len(key) + len(entry) + STRING_ENTRY_OVERHEAD


class Waiter:
    """One client blocked in BLPOP/BRPOP on a key; woken through its own condition."""

    __slots__ = ("cond",)

    def __init__(self, lock: threading.RLock) -> None:
        self.cond = threading.Condition(lock)


class Store:
    """In-memory keyspace. Strings are `str`/`bytes`, lists are `collections.deque`."""

    def __init__(self, owns_expiry: bool = True) -> None:
        self.lock = threading.RLock()
        # Only the node that owns expiry (standalone or leader) deletes expired
        # keys; a follower hides them and waits for the leader's DEL record.
        self.owns_expiry = owns_expiry
        self.record_effects = False
        self.effects: list[tuple] = []
        self.changes = 0   # counts every mutation, so a derived value (INFO's digest) knows it is stale
        # Estimated bytes the keys, values and TTLs hold, kept up to date by
        # every mutation so that max_memory costs one comparison per write.
        self.used_bytes = 0
        self._data: dict = {}
        # Key -> absolute expiry (ms since epoch) of every key with a TTL. Read,
        # never changed, outside the store: while it is empty, a hold of the
        # lock need not read the clock (Engine._run_locked).
        self.expires: dict = {}
        self._expiry_heap: list = []
        self._heap_order = itertools.count()
        self._waiters: dict = {}

    # -- lookups (caller holds lock) ---------------------------------------

    def get(self, key, now_ms: int) -> Optional[Entry]:
        """Return the live entry at `key`, or None (expiring it if its time has passed)."""
        entry = self._data.get(key)
        if self.expires:  # while no key has a TTL there is nothing to look up
            expire_at = self.expires.get(key)
            if expire_at is not None and expire_at <= now_ms:
                if self.owns_expiry:
                    self.delete(key)
                return None
        return entry

    def next_expiry(self) -> Optional[int]:
        """The earliest TTL that may still apply (ms since epoch), or None if no key has one."""
        return self._expiry_heap[0][0] if self._expiry_heap else None

    def peek(self, key) -> Optional[Entry]:
        """Return the stored entry at `key` without looking at its TTL."""
        return self._data.get(key)

    def expire_at(self, key) -> Optional[int]:
        """Return the absolute expiry (ms since epoch) of `key`, or None."""
        return self.expires.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self):
        """A view of every stored key, expired or not (copy it before releasing the lock)."""
        return self._data.keys()

    # -- mutations (caller holds lock) -------------------------------------

    def put(self, key, value: Value, expire_at_ms: Optional[int] = None) -> None:
        """Store a string at `key`, replacing whatever was there."""
        self.changes += 1
        data, expires = self._data, self.expires
        old = data.get(key)
        if old is None:
            self.used_bytes += len(key) + len(value) + STRING_ENTRY_OVERHEAD
        elif type(old) is deque:
            self.used_bytes += entry_bytes(key, value) - entry_bytes(key, old)
        else:
            self.used_bytes += len(value) - len(old)
        data[key] = value
        if expire_at_ms is None:
            if expires and expires.pop(key, None) is not None:  # no lookup while no key has a TTL
                self.used_bytes -= TTL_OVERHEAD
        else:
            if key not in expires:
                self.used_bytes += TTL_OVERHEAD
            expires[key] = expire_at_ms
            heapq.heappush(self._expiry_heap, (expire_at_ms, next(self._heap_order), key))
        if self.record_effects:
            self.effects.append(("SET", key, value, expire_at_ms))

    def add(self, key, value: Value, expire_at_ms: Optional[int], now_ms: int) -> bool:
        """Store a string at `key` unless a live entry is there (SET); return whether it did."""
        data = self._data
        # A key with a TTL is always in _data (a TTL is dropped with its key),
        # so a key not there has no TTL to consider either.
        if key in data or expire_at_ms is not None:
            if self.get(key, now_ms) is not None:
                return False
            self.put(key, value, expire_at_ms)
            return True
        # A new key without a TTL, SET's usual case, is put's first branch
        # written out: no old entry to discount, no TTL to add or drop.
        self.changes += 1
        data[key] = value
        self.used_bytes += len(key) + len(value) + STRING_ENTRY_OVERHEAD
        if self.record_effects:
            self.effects.append(("SET", key, value, None))
        return True

    def push(self, key, value: Value) -> int:
        """Append `value` at the rear of the list at `key` (created if absent); return its length."""
        items = self._data.get(key)
        if items is None:
            items = self._data[key] = deque()
            self.used_bytes += entry_bytes(key, items)
        self.changes += 1
        items.append(value)
        self.used_bytes += len(value) + ELEMENT_OVERHEAD
        if self.record_effects:
            self.effects.append(("PUSH", key, value))
        waiters = self._waiters.get(key)
        if waiters:
            waiters[0].cond.notify()
        return len(items)

    def pop(self, key, left: bool) -> Value:
        """Remove and return the first (left) or last element of the non-empty list at `key`."""
        items = self._data[key]
        self.changes += 1
        value = items.popleft() if left else items.pop()
        self.used_bytes -= len(value) + ELEMENT_OVERHEAD
        if not items:
            self._remove(key, items)
        if self.record_effects:
            self.effects.append(("LPOP" if left else "RPOP", key))
        return value

    def delete(self, key) -> bool:
        """Remove `key` whatever its type; return whether it was there."""
        entry = self._data.get(key)
        if entry is None:
            return False
        self.changes += 1
        self._remove(key, entry)
        if self.record_effects:
            self.effects.append(("DEL", key))
        return True

    def _remove(self, key, entry: Entry) -> None:
        """Drop `key` (holding `entry`) and its TTL, and what they were counted for."""
        del self._data[key]
        self.used_bytes -= entry_bytes(key, entry)
        if self.expires.pop(key, None) is not None:
            self.used_bytes -= TTL_OVERHEAD

    def flush(self) -> None:
        """Remove every key."""
        self.changes += 1
        self.used_bytes = 0
        self._data.clear()
        self.expires.clear()
        self._expiry_heap.clear()
        if self.record_effects:
            self.effects.append(("FLUSHDB",))

    def sweep(self, now_ms: int, limit: int) -> int:
        """Delete up to `limit` keys whose TTL has passed; return how many went.

        Keys are found through a heap of (expiry, insertion number, key) (the
        number keeps str and bytes keys from ever being compared); entries made stale by a
        delete or a new TTL are skipped, and the heap is rebuilt when stale
        entries outnumber live ones so it cannot grow without bound.
        """
        if not self.owns_expiry:
            return 0
        heap, expires = self._expiry_heap, self.expires
        removed = 0
        while heap and heap[0][0] <= now_ms and removed < limit:
            at, _, key = heapq.heappop(heap)
            if expires.get(key) == at:
                self.delete(key)
                removed += 1
        if len(heap) > 2 * len(expires) + 1024:
            order = self._heap_order
            self._expiry_heap = [(at, next(order), key) for key, at in expires.items()]
            heapq.heapify(self._expiry_heap)
        return removed

    def take_effects(self) -> list[tuple]:
        """Return and clear the effect records noted since the last call."""
        effects, self.effects = self.effects, []
        return effects

    # -- snapshots (caller holds lock) -------------------------------------

    def snapshot(self) -> list[tuple]:
        """Copy the keyspace as effect records that rebuild it (a quick in-memory copy)."""
        expires = self.expires
        records = []
        for key, entry in self._data.items():
            if type(entry) is deque:
                records.extend(("PUSH", key, value) for value in entry)
            else:
                records.append(("SET", key, entry, expires.get(key)))
        return records

    def entries(self) -> Iterator[tuple]:
        """Yield (key, entry, expire_at_ms) for every stored key, expired or not."""
        expires = self.expires
        for key, entry in self._data.items():
            yield key, entry, expires.get(key)

    def replace_contents(self, other: "Store") -> None:
        """Take over `other`'s keys and TTLs, dropping ours; blocked clients stay queued."""
        self.changes += 1
        self._data, self.expires, self._expiry_heap = other._data, other.expires, other._expiry_heap
        self._heap_order = other._heap_order
        self.used_bytes = other.used_bytes
        for key, waiters in self._waiters.items():
            if waiters and type(self._data.get(key)) is deque:
                waiters[0].cond.notify()

    # -- blocked clients (caller holds lock) -------------------------------

    def add_waiter(self, key) -> Waiter:
        """Queue a new waiter on `key` behind the ones already there (first come, first served)."""
        waiter = Waiter(self.lock)
        self._waiters.setdefault(key, deque()).append(waiter)
        return waiter

    def is_first_waiter(self, key, waiter: Waiter) -> bool:
        """Tell whether `waiter` is at the head of the queue for `key`."""
        return self._waiters[key][0] is waiter

    def remove_waiter(self, key, waiter: Waiter) -> None:
        """Take `waiter` off the queue and pass the turn on if elements remain."""
        waiters = self._waiters[key]
        waiters.remove(waiter)
        if not waiters:
            del self._waiters[key]
        elif type(self._data.get(key)) is deque:
            waiters[0].cond.notify()

    def waiting_clients(self) -> int:
        """Count the clients blocked on any key."""
        return sum(len(w) for w in self._waiters.values())

"""A Hypothesis state machine that runs commands through Engine.execute against a model.

The model is a dict (key -> string or collections.deque) and a dict of expiry
times, written from docs/protocol.md rather than from the code: SET never overwrites;
INCR keeps a decimal string and the key's TTL, fails with NOT_INTEGER on
anything but a signed 64-bit decimal and with OVERFLOW past 2**63-1, changing
nothing; a list that becomes empty disappears; strings and lists share one
key space (WRONG_TYPE); a key is gone once its TTL has passed. Time is a
FakeClock the machine moves. After every step, the keys a client can see
must be exactly the model's.
"""

import re
from collections import deque

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from geomys.store import TTL_OVERHEAD, entry_bytes
from tests.fakes import Harness, RecordingSink, assert_error, store_state

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)")

# Keys as clients send them: a bin key that is valid UTF-8 names the same key as the str.
KEYS = st.sampled_from(["a", "b", b"a", "\u00e9", "\u00e9".encode(), b"\xff"])
VALUES = st.sampled_from([
    "0", "1", "-7", "x", "", b"\x00", b"12", "01", "+1", "\u0661", 5, -3, 1.5,
    "9223372036854775806", "9223372036854775807", "-9223372036854775808", "9223372036854775808",
])
OFFSETS = st.integers(0, INT64_MAX) | st.sampled_from([0, 1, 2, INT64_MAX, "2", "-1", -1, 2**63, "x"])


def key_of(raw):
    """The key a client's raw key names."""
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return raw


def stored_form(raw):
    """What a string value is stored as: numbers become their decimal text."""
    return repr(raw) if isinstance(raw, (int, float)) else raw


def offset_of(raw):
    """INCR's offset as the model reads it, or None where the request is BAD_REQUEST."""
    if isinstance(raw, str):
        if not re.fullmatch(r"[+-]?[0-9]+", raw):
            return None
        raw = int(raw)
    return raw if 0 <= raw <= INT64_MAX else None


def counter_of(entry):
    """The integer a stored string holds, or None if it is not a signed 64-bit decimal."""
    text = entry.decode("ascii", "replace") if isinstance(entry, bytes) else entry
    if not DECIMAL.fullmatch(text) or not INT64_MIN <= int(text) <= INT64_MAX:
        return None
    return int(text)


class StoreMachine(RuleBasedStateMachine):
    """Commands against a fresh Engine and Store; the same effects applied to the model."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.data: dict = {}
        self.expires: dict = {}

    def run(self, command: str, expected, **fields) -> None:
        """Execute a request and check its reply: `expected` is the reply map, or an error code."""
        reply = self.h.run(command, **fields)
        if isinstance(expected, str):
            assert_error(reply, expected)
        else:
            assert reply == expected, (command, fields, reply)

    def forget(self, key) -> None:
        self.data.pop(key, None)
        self.expires.pop(key, None)

    # -- strings and counters ------------------------------------------------------------

    @rule(raw_key=KEYS, value=VALUES, ttl=st.none() | st.integers(1, 3000))
    def set(self, raw_key, value, ttl):
        key = key_of(raw_key)
        fields = {"key": raw_key, "value": value} if ttl is None else {"key": raw_key, "value": value, "exp": ttl}
        if key in self.data:
            return self.run("SET", "KEY_EXISTS", **fields)
        self.run("SET", {"status": "OK"}, **fields)
        self.data[key] = stored_form(value)
        if ttl is not None:
            self.expires[key] = self.h.clock.wall_ms() + ttl

    @rule(raw_key=KEYS)
    def get(self, raw_key):
        entry = self.data.get(key_of(raw_key))
        expected = "NOT_FOUND" if entry is None else "WRONG_TYPE" if isinstance(entry, deque) else \
            {"status": "OK", "value": entry}
        self.run("GET", expected, key=raw_key)

    @rule(raw_key=KEYS, raw_offset=OFFSETS)
    def incr(self, raw_key, raw_offset):
        key, offset = key_of(raw_key), offset_of(raw_offset)
        entry = self.data.get(key)
        if offset is None:
            return self.run("INCR", "BAD_REQUEST", key=raw_key, offset=raw_offset)
        if isinstance(entry, deque):
            return self.run("INCR", "WRONG_TYPE", key=raw_key, offset=raw_offset)
        current = 0 if entry is None else counter_of(entry)
        if current is None:
            return self.run("INCR", "NOT_INTEGER", key=raw_key, offset=raw_offset)
        if current + offset > INT64_MAX:
            return self.run("INCR", "OVERFLOW", key=raw_key, offset=raw_offset)
        self.run("INCR", {"status": "OK", "value": current + offset}, key=raw_key, offset=raw_offset)
        self.data[key] = str(current + offset)

    # -- lists ---------------------------------------------------------------------------

    @rule(raw_key=KEYS, value=VALUES)
    def push(self, raw_key, value):
        key = key_of(raw_key)
        if key in self.data and not isinstance(self.data[key], deque):
            return self.run("PUSH", "WRONG_TYPE", key=raw_key, value=value)
        self.run("PUSH", {"status": "OK"}, key=raw_key, value=value)
        self.data.setdefault(key, deque()).append(stored_form(value))

    def pop(self, command: str, raw_key, left: bool, **fields) -> None:
        key = key_of(raw_key)
        items = self.data.get(key)
        if items is None:
            return self.run(command, "NOT_FOUND", key=raw_key, **fields)
        if not isinstance(items, deque):
            return self.run(command, "WRONG_TYPE", key=raw_key, **fields)
        value = items.popleft() if left else items.pop()
        if not items:
            self.forget(key)
        self.run(command, {"status": "OK", "value": value}, key=raw_key, **fields)

    @rule(raw_key=KEYS, left=st.booleans())
    def lpop_or_rpop(self, raw_key, left):
        self.pop("LPOP" if left else "RPOP", raw_key, left)

    # Only on keys that exist: on a missing one a blocking pop would wait, and
    # the FakeClock never ends its timeout.
    @precondition(lambda self: self.data)
    @rule(data=st.data(), left=st.booleans())
    def blpop_or_brpop_on_an_existing_key(self, data, left):
        raw_key = data.draw(st.sampled_from(sorted(self.data, key=repr)))
        self.pop("BLPOP" if left else "BRPOP", raw_key, left, timeout=0.5)

    @rule(raw_key=KEYS)
    def llen(self, raw_key):
        items = self.data.get(key_of(raw_key))
        if items is not None and not isinstance(items, deque):
            return self.run("LLEN", "WRONG_TYPE", key=raw_key)
        self.run("LLEN", {"status": "OK", "value": len(items or ())}, key=raw_key)

    # -- keyspace --------------------------------------------------------------------------

    @rule(raw_key=KEYS)
    def delete(self, raw_key):
        key = key_of(raw_key)
        self.run("DEL", {"status": "OK", "value": int(key in self.data)}, key=raw_key)
        self.forget(key)

    @rule(raw_key=KEYS)
    def exists(self, raw_key):
        self.run("EXISTS", {"status": "OK", "value": int(key_of(raw_key) in self.data)}, key=raw_key)

    @rule()
    def flushdb(self):
        self.run("FLUSHDB", {"status": "OK"})
        self.data.clear()
        self.expires.clear()

    # -- time ------------------------------------------------------------------------------

    @rule(ms=st.integers(0, 2000))
    def time_passes(self, ms):
        self.h.clock.advance(ms / 1000)
        now = self.h.clock.wall_ms()
        for key in [k for k, at in self.expires.items() if at <= now]:
            self.forget(key)

    @rule()
    def sweep_expired_keys(self):
        self.h.engine.sweep_expired()
        # Nothing expired stays in memory after a sweep (docs/protocol.md, SET: expired keys do not pile up).
        assert len(self.h.store) == len(self.data)

    @invariant()
    def visible_keys_are_the_models(self):
        now = self.h.clock.wall_ms()
        visible = {key: entry for key, entry in store_state(self.h.store).items()
                   if entry[1] is None or entry[1] > now}
        assert visible == {key: (list(entry) if isinstance(entry, deque) else entry, self.expires.get(key))
                           for key, entry in self.data.items()}


    @invariant()
    def used_bytes_is_the_sum_of_the_stored_entries(self):
        # max_memory relies on this running figure staying exact through every change.
        expected = sum(entry_bytes(key, entry) + (TTL_OVERHEAD if expire_at is not None else 0)
                       for key, entry, expire_at in self.h.store.entries())
        assert self.h.store.used_bytes == expected


TestStoreAgainstModel = StoreMachine.TestCase
TestStoreAgainstModel.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)


# -- what the machine found, kept as plain examples --------------------------------------

def test_a_str_key_and_a_bin_key_may_get_the_same_expiry():
    h = Harness()
    sink = RecordingSink()
    h.engine.add_sink(sink)
    assert h.run("SET", key="a", value="1", exp=1000) == {"status": "OK"}
    assert h.run("SET", key=b"\xff", value="2", exp=1000) == {"status": "OK"}
    # Both writes reach the records the append-only file and the followers get.
    assert [record[1] for record in sink.records] == ["a", b"\xff"]


def test_keys_of_both_kinds_expiring_together_are_swept():
    h = Harness()
    for key, exp in [("z", 500), (b"\xff", 1000), ("a", 1000)]:
        h.ok("SET", key=key, value="v", exp=exp)
    h.clock.advance(1)
    assert h.engine.sweep_expired() == 3
    assert len(h.store) == 0

"""Unit tests of geomys.records: validating effect records and applying them.

Records are what the append-only file and replication carry, so applying the
effects a run produced must rebuild the very state that run left behind.
"""

from collections import deque

import pytest
from hypothesis import given, settings, strategies as st

from geomys import records
from geomys.errors import BadRequest
from geomys.store import Store
from tests.fakes import EPOCH_MS, Harness, RecordingSink, store_state as state


def applied(*recs) -> Store:
    store = Store()
    for rec in recs:
        records.apply(store, records.validate(rec))
    return store


@pytest.mark.parametrize("rec", [
    ("SET", "k", "v", None),
    ("SET", "k", b"v", EPOCH_MS),
    ("SET", b"k", "v", None),
    ("PUSH", "k", "v"),
    ("LPOP", "k"),
    ("RPOP", b"k"),
    ("DEL", "k"),
    ("FLUSHDB",),
])
def test_well_formed_records_pass_validation(rec):
    assert records.validate(rec) == rec


def test_a_record_decoded_as_a_list_becomes_a_tuple():
    assert records.validate(["PUSH", "k", "v"]) == ("PUSH", "k", "v")


@pytest.mark.parametrize("rec", [
    (),
    ("NOPE", "k"),
    ("SET", "k", "v"),
    ("SET", "k", 5, None),
    ("SET", "k", "v", 1.5),
    ("SET", "k", "v", "123"),
    ("PUSH", "k"),
    ("PUSH", ["k"], "v"),
    ("LPOP", "k", "extra"),
    ("DEL", 5),
    ("FLUSHDB", "x"),
    "SET",
    None,
    {"SET": "k"},
])
def test_malformed_records_are_bad_request(rec):
    with pytest.raises(BadRequest):
        records.validate(rec)


def test_set_record_replaces_whatever_is_there():
    store = applied(("PUSH", "k", "a"), ("SET", "k", "v", EPOCH_MS + 5))
    assert state(store) == {"k": ("v", EPOCH_MS + 5)}


def test_push_record_replaces_a_string_with_a_list():
    store = applied(("SET", "k", "v", None), ("PUSH", "k", "a"))
    assert state(store) == {"k": (["a"], None)}


def test_pop_records_of_a_missing_list_are_ignored():
    store = applied(("LPOP", "k"), ("RPOP", "k"), ("SET", "s", "v", None), ("LPOP", "s"))
    assert state(store) == {"s": ("v", None)}


def test_pop_records_take_from_the_right_end():
    store = applied(("PUSH", "k", "1"), ("PUSH", "k", "2"), ("PUSH", "k", "3"), ("LPOP", "k"), ("RPOP", "k"))
    assert state(store) == {"k": (["2"], None)}


def test_del_and_flushdb_records_remove_keys():
    store = applied(("SET", "a", "1", None), ("SET", "b", "2", None), ("DEL", "a"))
    assert state(store) == {"b": ("2", None)}
    records.apply(store, ("FLUSHDB",))
    assert state(store) == {}


# -- replaying a run's effects rebuilds its state ------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.sampled_from(["1", "7", "x", "", b"\x00"])
REQUESTS = st.one_of(
    st.builds(lambda k, v: {"command": "SET", "key": k, "value": v}, KEYS, VALUES),
    st.builds(lambda k, v, e: {"command": "SET", "key": k, "value": v, "exp": e},
              KEYS, VALUES, st.integers(1, 3000)),
    st.builds(lambda k, o: {"command": "INCR", "key": k, "offset": o}, KEYS, st.integers(0, 5)),
    st.builds(lambda k, v: {"command": "PUSH", "key": k, "value": v}, KEYS, VALUES),
    st.builds(lambda k: {"command": "LPOP", "key": k}, KEYS),
    st.builds(lambda k: {"command": "RPOP", "key": k}, KEYS),
    st.builds(lambda k: {"command": "BLPOP", "key": k, "timeout": 0.001}, KEYS),
    st.builds(lambda k: {"command": "DEL", "key": k}, KEYS),
    st.builds(lambda k: {"command": "GET", "key": k}, KEYS),
    st.just({"command": "FLUSHDB"}),
    st.just({"command": "SWEEP"}),      # not a command: advance time and sweep
    st.just({"command": "TICK"}),       # not a command: advance time only
)


@settings(max_examples=150, deadline=None)
@given(st.lists(REQUESTS, max_size=40))
def test_replaying_the_recorded_effects_rebuilds_the_same_state(requests):
    h = Harness()
    sink = RecordingSink()
    h.engine.add_sink(sink)
    for request in requests:
        if request["command"] == "SWEEP":
            h.clock.advance(1)
            h.engine.sweep_expired()
        elif request["command"] == "TICK":
            h.clock.advance(0.7)
        elif request["command"] == "BLPOP":
            # Only ever the immediate case here: never block the test.
            if h.run("LLEN", key=request["key"]).get("value"):
                h.engine.execute(request, h.ctx)
        else:
            h.engine.execute(request, h.ctx)
    replica = Store()
    for record in sink.records:
        records.apply(replica, records.validate(record))
    with h.store.lock:
        snapshot = h.store.snapshot()
    assert state(replica) == state(h.store)
    assert state(applied(*snapshot)) == state(h.store)
    # The engine numbers records one by one; INFO reports the last number.
    assert h.run("INFO")["value"]["replication_offset"] == len(sink.records)
    assert all(isinstance(entry, (str, bytes, deque)) for _, entry, _ in h.store.entries())

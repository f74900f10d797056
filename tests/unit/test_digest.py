"""INFO's digest: equal data gives equal digests, any difference changes it."""

from collections import deque

from geomys import records
from geomys.digest import combine, entry_digest
from geomys.engine import Engine
from geomys.store import Store
from tests.fakes import EPOCH_MS, FakeClock


def engine_with(*recs) -> Engine:
    engine = Engine(Store(), FakeClock())
    with engine.store.lock:
        for rec in recs:
            records.apply(engine.store, rec)
    return engine


def test_digest_does_not_depend_on_insertion_order():
    a = engine_with(("SET", "x", "1", None), ("PUSH", "q", "a"), ("SET", "y", "2", None))
    b = engine_with(("SET", "y", "2", None), ("SET", "x", "1", None), ("PUSH", "q", "a"))
    assert a.digest() == b.digest()


def test_digest_changes_with_value_type_expiry_and_list_order():
    base = entry_digest("k", "v", None)
    assert entry_digest("k", "w", None) != base
    assert entry_digest("k", b"v", None) != base
    assert entry_digest("k", deque(["v"]), None) != base
    assert entry_digest("k", "v", EPOCH_MS + 5) != base
    assert entry_digest("k", deque(["a", "b"]), None) != entry_digest("k", deque(["b", "a"]), None)


def test_snapshot_replayed_elsewhere_has_the_same_digest():
    source = engine_with(("SET", "s", "1", EPOCH_MS + 60_000), ("PUSH", "q", "a"), ("PUSH", "q", b"\xff"))
    with source.store.lock:
        copy = engine_with(*source.store.snapshot())
    assert copy.digest() == source.digest()
    assert copy.info()["digest"] == source.info()["digest"]


def test_expired_keys_do_not_count():
    engine = engine_with(("SET", "gone", "1", EPOCH_MS - 1), ("SET", "here", "1", None))
    assert engine.digest() == engine_with(("SET", "here", "1", None)).digest()


def test_empty_keyspace_digest_is_zero():
    assert engine_with().digest() == "0" * 16
    assert combine([]) == 0


def test_digest_follows_every_change_even_without_a_new_key():
    engine = engine_with(("SET", "c", "1", None))
    before = engine.digest()
    with engine.store.lock:
        records.apply(engine.store, ("SET", "c", "2", None))   # what INCR does: same key count
    assert engine.digest() != before
    with engine.store.lock:
        records.apply(engine.store, ("SET", "c", "1", None))
    assert engine.digest() == before


def test_digest_drops_a_key_once_its_ttl_passes_without_any_write():
    clock = FakeClock()
    engine = Engine(Store(owns_expiry=False), clock)           # a follower: expiry hides, never deletes
    with engine.store.lock:
        records.apply(engine.store, ("SET", "t", "1", EPOCH_MS + 1000))
    with_key = engine.digest()
    clock.advance(2)
    assert with_key != "0" * 16
    assert engine.digest() == "0" * 16

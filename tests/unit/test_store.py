"""Unit tests of geomys.store.Store: typed access, TTLs, sweeping, effect records,
snapshots and the FIFO queue of blocked clients.

No sockets, no threads, no sleeps: time is passed in as `now_ms`.
"""

import pytest

from geomys import records
from geomys.store import Store
from tests.fakes import EPOCH_MS, store_state as state

NOW = EPOCH_MS


@pytest.fixture
def store():
    return Store()


def test_put_then_get_returns_the_string(store):
    store.put("k", "v")
    assert store.get("k", NOW) == "v"
    assert len(store) == 1


def test_get_of_a_missing_key_is_none(store):
    assert store.get("nope", NOW) is None


def test_put_replaces_a_value_and_drops_its_old_ttl(store):
    store.put("k", "old", NOW + 10)
    store.put("k", "new")
    assert store.get("k", NOW + 1000) == "new"
    assert store.expire_at("k") is None


@pytest.mark.parametrize("ttl", [None, 5000])
def test_add_stores_a_new_key_as_put_would(ttl):
    added, put = Store(), Store()
    for store in (added, put):
        store.record_effects = True
    assert added.add("k", "value", None if ttl is None else NOW + ttl, NOW) is True
    put.put("k", "value", None if ttl is None else NOW + ttl)
    assert state(added) == state(put)
    assert (added.used_bytes, added.changes, added.effects) == (put.used_bytes, put.changes, put.effects)


def test_add_leaves_a_live_key_alone_and_replaces_an_expired_one(store):
    store.put("live", "old")
    store.put("dead", "old", NOW - 1)
    assert store.add("live", "new", None, NOW) is False
    assert store.add("dead", "new", None, NOW) is True
    assert (store.get("live", NOW), store.get("dead", NOW), store.expire_at("dead")) == ("old", "new", None)


def test_push_appends_at_the_rear_and_returns_the_length(store):
    assert store.push("l", "a") == 1
    assert store.push("l", "b") == 2
    assert list(store.get("l", NOW)) == ["a", "b"]


def test_pop_takes_from_the_chosen_end(store):
    for value in ("1", "2", "3"):
        store.push("l", value)
    assert store.pop("l", left=True) == "1"
    assert store.pop("l", left=False) == "3"
    assert list(store.peek("l")) == ["2"]


def test_popping_the_last_element_removes_the_key(store):
    store.push("l", "only")
    store.pop("l", left=True)
    assert store.get("l", NOW) is None
    assert len(store) == 0


def test_delete_reports_whether_the_key_was_there(store):
    store.put("s", "v")
    store.push("l", "x")
    assert store.delete("s") is True
    assert store.delete("l") is True
    assert store.delete("s") is False
    assert len(store) == 0


def test_flush_removes_every_key_and_ttl(store):
    store.put("a", "1", NOW + 100)
    store.push("b", "x")
    store.flush()
    assert len(store) == 0
    assert store.expire_at("a") is None
    assert store.sweep(NOW + 1000, 100) == 0


def test_expired_key_is_hidden_on_read_and_removed(store):
    store.put("k", "v", NOW + 100)
    assert store.get("k", NOW + 99) == "v"
    assert store.get("k", NOW + 100) is None
    assert store.peek("k") is None
    assert len(store) == 0


def test_sweep_removes_expired_keys_nobody_reads(store):
    for i in range(10):
        store.put("t%d" % i, "v", NOW + 100)
    store.put("forever", "v")
    store.put("later", "v", NOW + 10_000)
    assert store.sweep(NOW + 100, limit=1000) == 10
    assert sorted(state(store)) == ["forever", "later"]


def test_str_and_bytes_keys_with_the_same_expiry_can_share_the_sweep_heap(store):
    # The heap must never compare the keys themselves: str < bytes raises.
    store.put("k", "v", EPOCH_MS + 5)
    store.put(b"\xff", "v", EPOCH_MS + 5)
    store.put(b"\xfe", "v", EPOCH_MS + 5)
    assert store.sweep(EPOCH_MS + 5, 10) == 3
    assert len(store) == 0


def test_sweep_removes_at_most_limit_keys_per_call(store):
    for i in range(10):
        store.put("t%d" % i, "v", NOW + 1)
    assert store.sweep(NOW + 1, limit=4) == 4
    assert store.sweep(NOW + 1, limit=4) == 4
    assert store.sweep(NOW + 1, limit=4) == 2
    assert len(store) == 0


def test_sweep_ignores_a_ttl_that_was_replaced(store):
    store.put("k", "v", NOW + 10)
    store.put("k", "v2", NOW + 1000)
    assert store.sweep(NOW + 500, 100) == 0
    assert store.get("k", NOW + 500) == "v2"
    assert store.sweep(NOW + 1000, 100) == 1


def test_sweep_ignores_a_key_deleted_and_recreated_without_ttl(store):
    store.put("k", "v", NOW + 10)
    store.delete("k")
    store.put("k", "v2")
    assert store.sweep(NOW + 500, 100) == 0
    assert store.get("k", NOW + 500) == "v2"


def test_many_rewritten_ttls_do_not_grow_the_sweep_heap_without_bound(store):
    # Behaviour, not internals: after many TTL rewrites, sweeping still finds
    # exactly the keys that expired and nothing else.
    for i in range(5000):
        store.put("k", "v%d" % i, NOW + 10 + i)
    store.put("other", "v", NOW + 1)
    assert store.sweep(NOW + 5, 10_000) == 1
    assert store.get("k", NOW + 5) == "v4999"


def test_follower_hides_expired_keys_but_does_not_delete_them():
    follower = Store(owns_expiry=False)
    follower.put("k", "v", NOW + 100)
    assert follower.get("k", NOW + 100) is None
    assert follower.peek("k") == "v"
    assert len(follower) == 1
    assert follower.sweep(NOW + 1000, 100) == 0
    assert follower.peek("k") == "v"


def test_no_effects_are_recorded_unless_asked(store):
    store.put("k", "v")
    store.push("l", "x")
    store.delete("k")
    assert store.take_effects() == []


def test_every_mutation_is_recorded_as_an_effect_when_asked(store):
    store.record_effects = True
    store.put("s", "v", NOW + 5)
    store.push("l", "a")
    store.push("l", "b")
    store.pop("l", left=True)
    store.pop("l", left=False)
    store.delete("s")
    store.flush()
    assert store.take_effects() == [
        ("SET", "s", "v", NOW + 5),
        ("PUSH", "l", "a"),
        ("PUSH", "l", "b"),
        ("LPOP", "l"),
        ("RPOP", "l"),
        ("DEL", "s"),
        ("FLUSHDB",),
    ]
    assert store.take_effects() == []


def test_deleting_a_missing_key_records_nothing(store):
    store.record_effects = True
    store.delete("missing")
    assert store.take_effects() == []


def test_lazy_expiry_is_recorded_as_a_delete(store):
    store.put("k", "v", NOW + 1)
    store.record_effects = True
    assert store.get("k", NOW + 1) is None
    assert store.take_effects() == [("DEL", "k")]


def test_sweep_is_recorded_as_deletes(store):
    store.put("a", "v", NOW + 1)
    store.put("b", "v", NOW + 2)
    store.record_effects = True
    store.sweep(NOW + 2, 100)
    assert sorted(store.take_effects()) == [("DEL", "a"), ("DEL", "b")]


def populated_store() -> Store:
    store = Store()
    store.put("plain", "v")
    store.put("ttl", "expiring", NOW + 60_000)
    store.put(b"\xff\xfe", b"\x00\x01binary")
    store.put("unicode", "gr\u00fc\u00df dich \u2603")
    for value in ("1", "2", b"\x03", "4"):
        store.push("list", value)
    store.push("single", "x")
    return store


def test_snapshot_rebuilds_an_identical_store_through_records_apply():
    source = populated_store()
    with source.lock:
        snapshot = source.snapshot()
    copy = Store()
    for record in snapshot:
        records.apply(copy, records.validate(record))
    assert state(copy) == state(source)


def test_snapshot_of_an_empty_store_is_empty(store):
    assert store.snapshot() == []


def test_waiters_are_served_first_come_first_served(store):
    first = store.add_waiter("k")
    second = store.add_waiter("k")
    other_key = store.add_waiter("other")
    assert store.is_first_waiter("k", first)
    assert not store.is_first_waiter("k", second)
    assert store.is_first_waiter("other", other_key)
    assert store.waiting_clients() == 3
    store.remove_waiter("k", first)
    assert store.is_first_waiter("k", second)
    assert store.waiting_clients() == 2


def test_a_waiter_leaving_from_the_middle_keeps_the_order(store):
    waiters = [store.add_waiter("k") for _ in range(3)]
    store.remove_waiter("k", waiters[1])
    assert store.is_first_waiter("k", waiters[0])
    store.remove_waiter("k", waiters[0])
    assert store.is_first_waiter("k", waiters[2])


def test_removing_the_last_waiter_leaves_no_queue(store):
    waiter = store.add_waiter("k")
    store.remove_waiter("k", waiter)
    assert store.waiting_clients() == 0
    fresh = store.add_waiter("k")
    assert store.is_first_waiter("k", fresh)

"""max_memory: size texts, the store's running estimate, and which commands get OOM.

Engine(Store(), FakeClock()) only: the limit is set so the data may hold a
few hundred bytes, which makes every step exact.
"""

import sys
from pathlib import Path

import pytest

from geomys import errors, memory
from geomys.store import ENTRY_OVERHEAD, TTL_OVERHEAD, Store, entry_bytes
from tests.fakes import Harness, RecordingSink, assert_error

BASELINE = 10_000


def limited(data_room: int) -> Harness:
    """A harness whose data may take `data_room` estimated bytes before writes get OOM."""
    h = Harness()
    h.engine.set_max_memory(BASELINE + data_room, BASELINE)
    return h


def fill_until_oom(h: Harness, limit: int = 10_000) -> list:
    """SET k0, k1, ... until one is refused with OOM; return the keys that were stored."""
    stored = []
    for i in range(limit):
        reply = h.run("SET", key="k%d" % i, value="v" * 20)
        if reply["status"] != "OK":
            assert_error(reply, "OOM")
            return stored
        stored.append("k%d" % i)
    raise AssertionError("no OOM after %d writes" % limit)


# -- sizes --------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("0", 0), ("1048576", 1 << 20), ("512kb", 512 << 10), ("64mb", 64 << 20), ("1gb", 1 << 30),
    ("64MB", 64 << 20), (" 2 gb ", 2 << 30), ("100b", 100),
])
def test_sizes_take_kb_mb_and_gb_suffixes(text, size):
    assert memory.parse_size(text) == size


@pytest.mark.parametrize("text", ["-1", "-64mb", "64xb", "1.5gb", "mb", "", "64 m", "1tb"])
def test_a_negative_size_or_an_unknown_suffix_is_refused(text):
    with pytest.raises(ValueError):
        memory.parse_size(text)


def test_rss_is_read_from_proc():
    assert memory.rss_bytes() > 1 << 20


# -- the store's estimate -----------------------------------------------------

def test_the_estimate_counts_keys_values_and_ttls_and_returns_to_zero():
    store = Store()
    store.put("k", "value")
    # ASCII text is counted at its exact object size, plus the dict slot.
    assert store.used_bytes == sys.getsizeof("k") + sys.getsizeof("value") + ENTRY_OVERHEAD
    store.put("k", "value", 123)
    assert store.used_bytes == entry_bytes("k", "value") + TTL_OVERHEAD
    store.push("list", "a")
    store.push("list", "bb")
    store.pop("list", True)
    store.delete("k")
    assert store.used_bytes == entry_bytes("list", store.peek("list"))
    store.pop("list", False)
    assert store.used_bytes == 0


def test_flush_and_replacing_the_contents_reset_the_estimate():
    store, other = Store(), Store()
    store.put("a", "x" * 1000)
    other.put("b", "y")
    store.replace_contents(other)
    assert store.used_bytes == entry_bytes("b", "y")
    store.flush()
    assert store.used_bytes == 0


# -- the engine -----------------------------------------------------------------

def test_without_a_limit_nothing_is_refused():
    h = Harness()
    h.engine.set_max_memory(0, BASELINE)
    for i in range(200):
        h.ok("SET", key="k%d" % i, value="v" * 1000)


def test_writes_that_add_data_get_oom_once_the_limit_is_reached():
    h = limited(1000)
    stored = fill_until_oom(h)
    assert stored and h.engine.used_memory() >= h.engine.max_memory
    assert_error(h.run("PUSH", key="list", value="x"), "OOM")
    assert_error(h.run("INCR", key="counter"), "OOM")
    assert h.value("EXISTS", key="list") == 0 and h.value("EXISTS", key="counter") == 0


def test_an_oom_write_is_neither_applied_nor_recorded():
    h = limited(1000)
    sink = RecordingSink()
    h.engine.add_sink(sink)
    stored = fill_until_oom(h)
    assert [record[1] for record in sink.records] == stored


def test_reads_deletes_pops_flushdb_and_compact_work_at_the_limit():
    h = limited(1500)
    h.ok("PUSH", key="list", value="a")
    h.ok("PUSH", key="list", value="b")
    stored = fill_until_oom(h)
    assert all(h.value("GET", key=key) == "v" * 20 for key in stored)
    assert h.value("EXISTS", key=stored[0]) == 1 and h.value("LLEN", key="list") == 2
    assert h.value("LPOP", key="list") == "a" and h.value("RPOP", key="list") == "b"
    assert h.value("DEL", key=stored[0]) == 1
    h.ok("COMPACT")
    h.ok("INFO")
    h.ok("PING")
    h.ok("FLUSHDB")
    assert h.value("EXISTS", key=stored[1]) == 0


def test_a_del_makes_room_for_a_write_again():
    h = limited(1000)
    stored = fill_until_oom(h)
    h.ok("DEL", key=stored[0])
    h.ok("SET", key="after-del", value="v" * 20)
    assert_error(h.run("SET", key="one-more", value="v" * 20), "OOM")


def test_flushdb_makes_room_for_as_many_writes_as_before():
    h = limited(1000)
    before = fill_until_oom(h)
    h.ok("FLUSHDB")
    assert fill_until_oom(h) == before


def test_the_limit_holds_on_a_leader_that_was_a_follower_and_lifting_it_lets_writes_through():
    # The engine looks at writes before running them only under a limit or
    # on a follower: changing one must not drop the other's check.
    h = limited(1000)
    h.engine.forwarder = lambda requests, ctx: [{"status": "OK"}] * len(requests)
    h.engine.forwarder = None
    stored = fill_until_oom(h)
    h.engine.set_max_memory(0, BASELINE)
    h.ok("SET", key="unlimited", value="v" * 20)
    assert h.value("GET", key="unlimited") == "v" * 20 and h.value("EXISTS", key=stored[-1]) == 1


def test_a_pipeline_gets_oom_for_the_writes_past_the_limit_only():
    h = limited(1000)
    replies: list = []
    h.engine.execute_batch([{"command": "SET", "key": "k%d" % i, "value": "v" * 20} for i in range(100)]
                           + [{"command": "GET", "key": "k0"}], h.ctx, replies)
    codes = [reply.get("code", "OK") for reply in replies]
    first_oom = codes.index("OOM")
    assert first_oom > 0 and set(codes[first_oom:-1]) == {"OOM"} and replies[-1]["value"] == "v" * 20


def test_info_shows_the_memory_in_use_and_the_limit():
    h = limited(1000)
    h.ok("SET", key="k", value="v")
    info = h.value("INFO")
    assert info["max_memory"] == BASELINE + 1000
    assert info["used_memory"] == BASELINE + entry_bytes("k", "v")
    assert info["used_memory_dataset"] == entry_bytes("k", "v")
    assert info["used_memory_rss"] > 0


def test_data_loaded_above_the_limit_is_served_and_writes_get_oom():
    h = Harness()
    for i in range(50):
        h.ok("SET", key="k%d" % i, value="v" * 100)
    h.engine.set_max_memory(BASELINE + 100, BASELINE)
    assert h.value("GET", key="k7") == "v" * 100
    assert_error(h.run("SET", key="new", value="v"), "OOM")


def test_the_client_library_raises_out_of_memory_for_oom():
    # geomys.Client turns an error map into the class of its code.
    error = errors.from_code("OOM", "memory in use reached max_memory")
    assert isinstance(error, errors.OutOfMemory) and error.code == "OOM"


def test_protocol_md_documents_oom():
    assert "| OOM |" in (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()

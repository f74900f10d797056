"""Persistence end to end: real geomys processes writing, stopping and replaying their AOF.

Each test starts servers through the start_server fixture with its own
persistence_path under tmp_path. Load runs until a condition is met (enough
acknowledged writes) rather than for a fixed time. Crashes, damaged files and
a full disk are the fault-injection scenarios of
tests/faults/test_persistence_faults.py.
"""

import os
import time
from collections import deque

import pytest

from geomys.aof import HEADER
from tests.cluster_helpers import WriteLoad, get_many
from tests.helpers import RawClient, wait_until

pytestmark = pytest.mark.integration


def start_aof_server(start_server, tmp_path, mode, **options):
    return start_server(persistence=mode, persistence_path=str(tmp_path / "db.aof"), **options)


def pipeline(client: RawClient, requests: list[dict]) -> list[dict]:
    """Send many requests at once and read every reply."""
    for start in range(0, len(requests), 2000):
        client.send(*requests[start:start + 2000])
    return [client.read() for _ in requests]


def ok(reply: dict) -> dict:
    assert reply["status"] == "OK", reply
    return reply


def check_strings(client: RawClient, expected: dict) -> None:
    """Every key in `expected` holds exactly that string."""
    keys = list(expected)
    replies = pipeline(client, [{"command": "GET", "key": k} for k in keys])
    wrong = {k: r for k, r in zip(keys, replies) if r.get("value") != expected[k]}
    assert not wrong, "%d keys differ, e.g. %r" % (len(wrong), list(wrong.items())[:3])


def drain_list(client: RawClient, key) -> list:
    """Pop a whole list from the front (destructive; used for the final comparison)."""
    items = []
    while True:
        reply = client.call("LPOP", key=key)
        if reply["status"] != "OK":
            assert reply["code"] == "NOT_FOUND", reply
            return items
        items.append(reply["value"])


# -- workload, clean stop, restart --------------------------------------------------------


def run_workload(client: RawClient) -> tuple[dict, dict, list]:
    """Write a known mix of commands (with a FLUSHDB in the middle); return the expected state."""
    ok(client.call("SET", key="gone1", value="before flush"))
    ok(client.call("PUSH", key="gone-list", value="x"))
    ok(client.call("INCR", key="gone-counter", offset=3))
    ok(client.call("FLUSHDB"))
    ok(client.call("SET", key="plain", value="héllo"))
    ok(client.call("SET", key=b"bin\x00key", value=b"\x00\xffbytes"))
    ok(client.call("SET", key="with-ttl", value="lives an hour", exp=3_600_000))
    assert client.call("SET", key="plain", value="overwrite?")["code"] == "KEY_EXISTS"
    ok(client.call("SET", key="counter", value="10", exp=3_600_000))
    for _ in range(5):
        ok(client.call("INCR", key="counter", offset=2))
    ok(client.call("INCR", key="fresh-counter"))
    assert client.call("INCR", key="plain")["code"] == "NOT_INTEGER"
    for item in ["a", "b", "c", "d", b"\x01e"]:
        ok(client.call("PUSH", key="queue", value=item))
    assert ok(client.call("LPOP", key="queue"))["value"] == "a"
    assert ok(client.call("RPOP", key="queue"))["value"] == b"\x01e"
    ok(client.call("PUSH", key="emptied", value="only"))
    ok(client.call("LPOP", key="emptied"))
    ok(client.call("SET", key="deleted", value="soon gone"))
    assert ok(client.call("DEL", key="deleted"))["value"] == 1
    strings = {"plain": "héllo", b"bin\x00key": b"\x00\xffbytes", "with-ttl": "lives an hour",
               "counter": "20", "fresh-counter": "1"}
    lists = {"queue": ["b", "c", "d"]}
    absent = ["gone1", "gone-list", "gone-counter", "emptied", "deleted"]
    return strings, lists, absent


def check_workload_state(client: RawClient, strings: dict, lists: dict, absent: list) -> None:
    check_strings(client, strings)
    for key in absent:
        assert client.call("EXISTS", key=key)["value"] == 0, key
    assert client.call("INFO")["value"]["keys"] == len(strings) + len(lists)
    for key, items in lists.items():
        assert drain_list(client, key) == items


@pytest.mark.parametrize("mode", ["writethrough", "buffered", "writethroughdisk", "bufferedwrite"])
def test_every_key_is_restored_after_a_clean_stop_and_restart(start_server, tmp_path, mode):
    server = start_aof_server(start_server, tmp_path, mode, flush_interval_ms=60_000)
    with server.client() as client:
        expected = run_workload(client)
    assert server.stop() == 0
    server.start()
    with server.client() as client:
        check_workload_state(client, *expected)


def test_flushdb_in_writethrough_mode_empties_the_file_before_replying(start_server, tmp_path):
    server = start_aof_server(start_server, tmp_path, "writethrough")
    with server.client() as client:
        for i in range(100):
            ok(client.call("SET", key="k%d" % i, value="v" * 100))
        assert os.path.getsize(tmp_path / "db.aof") > 10_000
        ok(client.call("FLUSHDB"))
        assert (tmp_path / "db.aof").read_bytes() == HEADER
    server.kill()
    server.start()
    assert server.info()["keys"] == 0


# -- a clean stop under load -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["buffered", "writethrough"])
def test_a_clean_stop_under_load_loses_no_acknowledged_write(start_server, tmp_path, mode):
    server = start_aof_server(start_server, tmp_path, mode, flush_interval_ms=60_000)
    load = WriteLoad(lambda: [server.port], threads=8, prefix="s", sticky=True).start()
    try:
        load.wait_acked(1000, timeout=30)
        assert server.stop() == 0
    finally:
        load.stop()
    server.start()
    load.check(get_many(server.port, load.all_keys()), "after a clean stop under load")


# -- one server per file ----------------------------------------------------------------------


def test_a_second_server_on_the_same_file_refuses_to_start(start_server, tmp_path):
    first = start_aof_server(start_server, tmp_path, "writethrough")
    second = start_aof_server(start_server, tmp_path, "buffered", wait=False)
    assert second.proc.wait(20) == 2
    assert "another geomys server is using %s" % (tmp_path / "db.aof") in second.log_text()
    ok(first.call("SET", key="still", value="serving"))
    first.kill()
    second.start()  # the kernel released the dead server's lock
    assert ok(second.call("GET", key="still"))["value"] == "serving"


# -- compaction ------------------------------------------------------------------------------


def churn(client: RawClient, rounds: int) -> tuple[dict, dict]:
    """A workload whose log is much longer than its final state; return (strings, lists)."""
    requests, queue = [], deque()
    for i in range(rounds):
        requests += [
            {"command": "INCR", "key": "counter%d" % (i % 10), "offset": 1},
            {"command": "PUSH", "key": "queue", "value": "item%d" % i},
            {"command": "PUSH", "key": "queue", "value": "more%d" % i},
            {"command": "LPOP", "key": "queue"},
            {"command": "SET", "key": "tmp%d" % i, "value": "x" * 64},
            {"command": "DEL", "key": "tmp%d" % i},
        ]
        queue.extend(["item%d" % i, "more%d" % i])
        queue.popleft()
    for reply in pipeline(client, requests):
        ok(reply)
    strings = {"counter%d" % c: str(rounds // 10) for c in range(10)}
    return strings, {"queue": list(queue)}


def test_compact_shrinks_the_file_and_the_state_is_identical_before_and_after(start_server, tmp_path):
    server = start_aof_server(start_server, tmp_path, "writethrough")
    path = tmp_path / "db.aof"
    with server.client() as client:
        strings, lists = churn(client, 1000)
        before = os.path.getsize(path)
        llen = client.call("LLEN", key="queue")["value"]
        assert llen == len(lists["queue"])
        reply = ok(client.call("COMPACT"))
        assert "compacted" in reply["message"]
        after = os.path.getsize(path)
        assert after < before / 5
        info = client.call("INFO")["value"]["persistence"]
        assert info["compactions"] == 1 and info["file_size"] == after
        check_strings(client, strings)
        assert client.call("LLEN", key="queue")["value"] == llen
    server.kill()
    server.start()
    with server.client() as client:
        check_strings(client, strings)
        assert drain_list(client, "queue") == lists["queue"]


def test_the_file_is_compacted_automatically_past_both_thresholds(start_server, tmp_path):
    server = start_aof_server(start_server, tmp_path, "buffered", flush_interval_ms=50,
                              compact_min_bytes=50_000, compact_growth_percent=50)
    with server.client() as client:
        strings, lists = churn(client, 1000)  # about 200 kB of records for 20 kB of state

        def compacted_and_settled():
            info = client.call("INFO")["value"]["persistence"]
            return info["compactions"] >= 1 and not info["compacting"] and info["file_size"] < 50_000
        wait_until(compacted_and_settled, timeout=15, message="an automatic compaction below the threshold")
    assert server.stop() == 0
    assert os.path.getsize(tmp_path / "db.aof") < 50_000
    server.start()
    with server.client() as client:
        check_strings(client, strings)
        assert drain_list(client, "queue") == lists["queue"]


# -- TTLs across restarts --------------------------------------------------------------------


def test_a_ttl_is_neither_revived_nor_extended_by_a_restart(start_server, tmp_path):
    server = start_aof_server(start_server, tmp_path, "writethrough")
    with server.client() as client:
        ok(client.call("SET", key="short", value="v", exp=500))
        ok(client.call("SET", key="long", value="v", exp=2500))
        set_at = time.monotonic()
        ok(client.call("SET", key="forever", value="v"))
    assert server.stop() == 0
    wait_until(lambda: time.monotonic() > set_at + 0.8, timeout=5, message="the short TTL to pass")
    server.start()
    with server.client() as client:
        assert client.call("GET", key="short")["code"] == "NOT_FOUND"
        assert ok(client.call("GET", key="long"))["value"] == "v"
        wait_until(lambda: client.call("GET", key="long")["status"] == "ERROR", timeout=10,
                   interval=0.01, message="the long TTL to pass")
        gone_at = time.monotonic()
        assert ok(client.call("GET", key="forever"))["value"] == "v"
    # An extended TTL would run 2.5 s from the restart, at least 0.8 s later than this.
    assert gone_at < set_at + 2.5 + 0.4


# -- INFO ----------------------------------------------------------------------------------


def test_info_reports_mode_path_size_last_fsync_and_records_replayed(start_server, tmp_path):
    path = tmp_path / "db.aof"
    server = start_aof_server(start_server, tmp_path, "writethrough")
    with server.client() as client:
        info = client.call("INFO")["value"]["persistence"]
        assert info["mode"] == "writethrough" and info["path"] == str(path)
        assert info["records_replayed"] == 0 and info["file_size"] == len(HEADER)
        for i in range(7):
            ok(client.call("SET", key="k%d" % i, value="v"))
        info = client.call("INFO")["value"]["persistence"]
        assert info["file_size"] == os.path.getsize(path)
        assert abs(info["last_fsync"] - time.time()) < 10
    assert server.stop() == 0
    server.options["persistence"] = "buffered"
    server.options["flush_interval_ms"] = 250
    server.start()
    info = server.info()["persistence"]
    assert info["mode"] == "buffered" and info["flush_interval_ms"] == 250
    assert info["records_replayed"] == 7 and info["file_size"] == os.path.getsize(path)


def test_info_says_persistence_is_off_by_default(server):
    assert server.info()["persistence"]["mode"] == "none"

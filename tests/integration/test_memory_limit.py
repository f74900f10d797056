"""max_memory on real processes: a client writing without pause meets OOM while
the process stays within the documented slack (docs/deploy.md), nothing it
was told OK is lost, DEL and FLUSHDB make room again; a cluster's leader
answers OOM to writes a follower forwards; data above the limit on disk is
served at start.
"""

import pytest

from tests.helpers import RawClient, process_status, wait_until

pytestmark = pytest.mark.integration

MIB = 1 << 20
BATCH = 500


def slack_bytes(limit: int) -> int:
    """How far above max_memory the peak RSS may go, as docs/deploy.md states it."""
    return limit // 4 + 8 * MIB


def write_until_oom(client: RawClient, prefix: str, value: str, most: int = 2_000_000) -> list:
    """Pipeline SETs in batches without pause until one gets OOM; return the keys told OK."""
    stored: list = []
    for start in range(0, most, BATCH):
        keys = ["%s:%d" % (prefix, i) for i in range(start, start + BATCH)]
        client.send(*[{"command": "SET", "key": key, "value": value} for key in keys])
        replies = [client.read() for _ in keys]
        for key, reply in zip(keys, replies):
            if reply["status"] == "OK":
                stored.append(key)
            else:
                assert reply["code"] == "OOM", reply
        if len(stored) < start + BATCH:
            return stored
    raise AssertionError("no OOM after %d writes" % most)


def assert_all_stored(client: RawClient, keys: list, value: str) -> None:
    for start in range(0, len(keys), BATCH):
        chunk = keys[start:start + BATCH]
        client.send(*[{"command": "GET", "key": key} for key in chunk])
        for key in chunk:
            reply = client.read()
            assert reply == {"status": "OK", "value": value}, (key, reply)


def test_a_client_writing_without_pause_meets_oom_within_the_slack_and_deletes_make_room(start_server):
    limit = 64 * MIB
    server = start_server(max_memory="64mb")
    value = "v" * 100
    with server.client(timeout=30) as client:
        stored = write_until_oom(client, "key", value)
        assert len(stored) > 1000
        peak = process_status(server.proc.pid, "VmHWM") * 1024
        assert peak <= limit + slack_bytes(limit), "peak RSS %d MiB" % (peak // MIB)
        info = client.call("INFO")["value"]
        assert info["max_memory"] == limit and info["used_memory"] >= limit
        assert client.call("PUSH", key="list", value="x")["code"] == "OOM"
        assert client.call("INCR", key="counter")["code"] == "OOM"
        assert_all_stored(client, stored, value)
        assert client.call("DEL", key=stored[0]) == {"status": "OK", "value": 1}
        assert client.call("SET", key="after-del", value="v")["status"] == "OK"
        assert client.call("FLUSHDB")["status"] == "OK"
        again = write_until_oom(client, "again", value)
        assert len(again) > len(stored) // 2
    assert server.stop() == 0


def test_a_write_a_follower_forwards_gets_the_leaders_oom(start_server):
    leader = start_server(node_id=1, bootstrap=True, max_memory="80mb", heartbeat_interval=0.2, failure_timeout=1)
    follower = start_server(node_id=2, join="127.0.0.1:%d" % (leader.port + 1000),
                            heartbeat_interval=0.2, failure_timeout=1)
    wait_until(lambda: follower.info()["role"] == "follower", 20, message="the follower to join")
    value = "v" * 1000
    with follower.client(timeout=30) as client:
        stored = write_until_oom(client, "key", value)
        assert stored
        assert_all_stored(client, stored[-BATCH:], value)
        assert client.call("FLUSHDB")["status"] == "OK"
        assert client.call("SET", key="after-flush", value=value)["status"] == "OK"
    assert follower.info()["max_memory"] == 0   # the follower has no limit of its own: the leader decided


def test_data_on_disk_above_max_memory_is_served_and_writes_get_oom(start_server, tmp_path):
    path = tmp_path / "data.aof"
    first = start_server(persistence="writethrough", persistence_path=path)
    baseline = first.info()["used_memory"]
    value = "v" * 1000
    with first.client() as client:
        client.send(*[{"command": "SET", "key": "k%d" % i, "value": value} for i in range(4000)])
        assert all(client.read()["status"] == "OK" for _ in range(4000))
    assert first.stop() == 0
    limit = baseline + 2 * MIB  # the 4000 keys take about 4 MiB
    second = start_server(port=first.port, persistence="writethrough", persistence_path=path, max_memory=limit)
    assert "max_memory" in second.log_text() and "WARNING" in second.log_text()
    with second.client() as client:
        assert_all_stored(client, ["k%d" % i for i in range(4000)], value)
        assert client.call("SET", key="new", value="v")["code"] == "OOM"
        assert client.call("DEL", key="k0")["value"] == 1

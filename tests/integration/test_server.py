"""The standalone server over real TCP: pipelining, split and huge requests,
concurrent counters, blocking pops across connections, TTLs, INFO and AUTH.

Each test starts its own `geomys` process on a free loopback port (see
tests/conftest.py); every wait is a bounded wait_until, never a fixed sleep.
"""

import os
import socket
import threading
import time

import msgpack
import pytest

from tests.fakes import Harness, assert_error
from tests.helpers import RawClient, wait_until

pytestmark = pytest.mark.integration


def blocked_clients(server) -> int:
    return server.info()["blocked_clients"]


def wait_blocked(server, count: int) -> None:
    wait_until(lambda: blocked_clients(server) == count, timeout=10, message="%d blocked clients" % count)


# The commands of docs/protocol.md walked through, run against the in-process Engine and a real
# server alike: (command, fields, expected status/code/value).
PROTOCOL_WALK = [
    ("PING", {}, ("OK", None, None)),
    ("SET", {"key": "c", "value": "1"}, ("OK", None, None)),
    ("SET", {"key": "c", "value": "2"}, ("ERROR", "KEY_EXISTS", None)),
    ("INCR", {"key": "c", "offset": "1"}, ("OK", None, 2)),
    ("GET", {"key": "c"}, ("OK", None, "2")),
    ("INCR", {"key": "c", "offset": -1}, ("ERROR", "BAD_REQUEST", None)),
    ("SET", {"key": "max", "value": str(2**63 - 1)}, ("OK", None, None)),
    ("INCR", {"key": "max"}, ("ERROR", "OVERFLOW", None)),
    ("SET", {"key": "word", "value": "abc"}, ("OK", None, None)),
    ("INCR", {"key": "word"}, ("ERROR", "NOT_INTEGER", None)),
    ("PUSH", {"key": "q", "value": "1"}, ("OK", None, None)),
    ("PUSH", {"key": "q", "value": "2"}, ("OK", None, None)),
    ("PUSH", {"key": "q", "value": "3"}, ("OK", None, None)),
    ("LPOP", {"key": "q"}, ("OK", None, "1")),
    ("RPOP", {"key": "q"}, ("OK", None, "3")),
    ("LLEN", {"key": "q"}, ("OK", None, 1)),
    ("GET", {"key": "q"}, ("ERROR", "WRONG_TYPE", None)),
    ("PUSH", {"key": "c", "value": "x"}, ("ERROR", "WRONG_TYPE", None)),
    ("INCR", {"key": "q"}, ("ERROR", "WRONG_TYPE", None)),
    ("BLPOP", {"key": "q", "timeout": 1}, ("OK", None, "2")),
    ("LPOP", {"key": "q"}, ("ERROR", "NOT_FOUND", None)),
    ("BLPOP", {"key": "c", "timeout": 1}, ("ERROR", "WRONG_TYPE", None)),
    ("LLEN", {"key": "q"}, ("OK", None, 0)),
    ("EXISTS", {"key": "q"}, ("OK", None, 0)),
    ("DEL", {"key": "c"}, ("OK", None, 1)),
    ("DEL", {"key": "c"}, ("OK", None, 0)),
    ("GET", {"key": "c"}, ("ERROR", "NOT_FOUND", None)),
    ("AUTH", {"value": "pw"}, ("ERROR", "AUTH_FAILED", None)),
    ("NOPE", {}, ("ERROR", "UNKNOWN_COMMAND", None)),
    ("FLUSHDB", {}, ("OK", None, None)),
    ("EXISTS", {"key": "max"}, ("OK", None, 0)),
]


@pytest.fixture(params=["engine", "server"])
def call(request, start_server):
    """call(command, **fields) -> reply, on an in-process Engine or over TCP."""
    if request.param == "engine":
        return Harness().run
    client = start_server().client()
    request.addfinalizer(client.close)
    return client.call


def test_the_spec_walk_through_gives_the_same_replies_on_engine_and_server(call):
    for command, fields, (status, code, value) in PROTOCOL_WALK:
        reply = call(command, **fields)
        assert (reply["status"], reply.get("code"), reply.get("value")) == (status, code, value), \
            (command, fields, reply)


def test_the_spec_examples_work_over_the_wire(server):
    with server.client() as c:
        assert c.call("ping") == {"status": "OK", "message": "PONG"}
        assert c.call("Set", key="name", value="john doe") == {"status": "OK"}
        assert c.call("GET", key="name") == {"status": "OK", "value": "john doe"}
        assert_error(c.call("SET", key="name", value="x"), "KEY_EXISTS", "name")
        c.call("SET", key="c", value="1")
        assert c.call("INCR", key="c", offset="1") == {"status": "OK", "value": 2}
        assert c.call("GET", key="c")["value"] == "2"
        for value in ("1", "2", "3"):
            assert c.call("PUSH", key="q", value=value) == {"status": "OK"}
        assert c.call("LPOP", key="q")["value"] == "1"
        assert c.call("RPOP", key="q")["value"] == "3"
        assert c.call("LLEN", key="q")["value"] == 1
        assert_error(c.call("GET", key="q"), "WRONG_TYPE", "q")
        assert c.call("DEL", key="q")["value"] == 1
        assert c.call("EXISTS", key="q")["value"] == 0
        assert c.call("FLUSHDB") == {"status": "OK"}
        assert c.call("INFO")["value"]["keys"] == 0


def test_bin_values_come_back_as_bin_and_str_as_str(server):
    with server.client() as c:
        c.call("SET", key=b"bin-key", value=b"\x00\xff\xfe")
        c.call("SET", key="str-key", value="gr\u00fc\u00df")
        assert c.call("GET", key="bin-key")["value"] == b"\x00\xff\xfe"
        assert c.call("GET", key=b"str-key")["value"] == "gr\u00fc\u00df"


def test_1000_pipelined_requests_in_one_send_are_answered_in_order(server):
    requests = []
    for i in range(500):
        requests.append({"command": "ECHO", "message": "m%d" % i})
        requests.append({"command": "INCR", "key": "counter"})
    with server.client() as c:
        c.send(*requests)
        replies = [c.read() for _ in requests]
    assert [r["message"] for r in replies[0::2]] == ["m%d" % i for i in range(500)]
    assert [r["value"] for r in replies[1::2]] == list(range(1, 501))


def test_a_request_sent_one_byte_per_tcp_segment_is_served(server):
    frame = msgpack.packb({"command": "SET", "key": "split", "value": "v" * 300}, use_bin_type=True)
    with server.client() as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(frame)):
            c.send_raw(frame[i:i + 1])
        assert c.read() == {"status": "OK"}
        assert c.call("GET", key="split")["value"] == "v" * 300


def test_a_10_mb_value_round_trips(server):
    value = os.urandom(10 * 1024 * 1024)
    with server.client(timeout=30) as c:
        assert c.call("SET", key="big", value=value) == {"status": "OK"}
        assert c.call("GET", key="big")["value"] == value


def test_8_clients_incrementing_one_counter_500_times_each_reach_exactly_4000(server):
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def worker():
        try:
            with server.client() as c:
                results.append([c.call("INCR", key="shared")["value"] for _ in range(500)])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert server.call("GET", key="shared")["value"] == "4000"
    seen = sorted(v for values in results for v in values)
    assert seen == list(range(1, 4001))
    assert all(values == sorted(values) for values in results)


def test_blpop_is_woken_by_a_push_from_another_connection(server):
    with server.client() as waiter, server.client() as pusher:
        waiter.send({"command": "BLPOP", "key": "jobs", "timeout": 20})
        wait_blocked(server, 1)
        assert pusher.call("PUSH", key="jobs", value="job-1") == {"status": "OK"}
        assert waiter.read() == {"status": "OK", "value": "job-1"}
    assert server.call("LLEN", key="jobs")["value"] == 0


def test_blpop_answers_earlier_pipelined_requests_before_it_blocks(server):
    with server.client() as waiter, server.client() as pusher:
        waiter.send({"command": "PING"}, {"command": "BLPOP", "key": "jobs", "timeout": 20})
        assert waiter.read()["message"] == "PONG"
        wait_blocked(server, 1)
        pusher.call("PUSH", key="jobs", value="x")
        assert waiter.read()["value"] == "x"


def test_blpop_times_out_with_timeout(server):
    with server.client() as c:
        started = time.monotonic()
        reply = c.call("BLPOP", key="empty", timeout=0.3)
        elapsed = time.monotonic() - started
    assert_error(reply, "TIMEOUT", "empty")
    assert 0.25 <= elapsed < 5
    assert blocked_clients(server) == 0


def test_a_blpop_waiter_that_disconnects_loses_no_element(server):
    waiter = server.client()
    waiter.send({"command": "BLPOP", "key": "jobs", "timeout": 0})
    wait_blocked(server, 1)
    waiter.close()
    wait_blocked(server, 0)
    with server.client() as c:
        c.call("PUSH", key="jobs", value="precious")
        assert c.call("LPOP", key="jobs") == {"status": "OK", "value": "precious"}


def test_a_push_right_after_a_waiter_disconnects_is_not_taken_by_it(server):
    waiter = server.client()
    waiter.send({"command": "BLPOP", "key": "jobs", "timeout": 0})
    wait_blocked(server, 1)
    waiter.close()
    with server.client() as c:
        c.call("PUSH", key="jobs", value="precious")
        wait_blocked(server, 0)
        assert c.call("LPOP", key="jobs") == {"status": "OK", "value": "precious"}


def test_a_key_with_a_ttl_disappears_once_the_ttl_has_passed(server):
    with server.client() as c:
        assert c.call("SET", key="short", value="v", exp=200) == {"status": "OK"}
        assert c.call("GET", key="short")["value"] == "v"
        wait_until(lambda: c.call("GET", key="short").get("code") == "NOT_FOUND", timeout=5,
                   message="the key to expire")
        assert c.call("SET", key="short", value="again") == {"status": "OK"}


def test_expired_keys_are_swept_without_being_read(server):
    with server.client() as c:
        c.send(*[{"command": "SET", "key": "t%d" % i, "value": "v", "exp": 200} for i in range(100)])
        assert all(c.read() == {"status": "OK"} for _ in range(100))
        c.call("SET", key="forever", value="v")
        assert c.call("INFO")["value"]["keys"] == 101
        wait_until(lambda: c.call("INFO")["value"]["keys"] == 1, timeout=5, message="expired keys to be swept")
        assert c.call("GET", key="forever")["value"] == "v"


def test_info_reports_every_field_the_spec_lists(server):
    info = server.info()
    for field in ("version", "node_id", "role", "leader_id", "leader_address", "term", "nodes", "keys",
                  "connected_clients", "commands_processed", "persistence", "replication_offset", "digest"):
        assert field in info, "INFO lacks %r: %r" % (field, info)
    assert info["role"] == "standalone"
    assert info["node_id"] == server.port
    # The readiness check's connection is counted until its handler sees it close.
    wait_until(lambda: server.info()["connected_clients"] == 1, timeout=10, message="one connected client")
    assert info["persistence"]["mode"] == "none"


def test_requirepass_is_enforced_per_connection(start_server):
    server = start_server(requirepass="s3cret")
    with server.client() as c:
        assert_error(c.call("GET", key="k"), "AUTH_REQUIRED")
        assert c.call("PING")["message"] == "PONG"
        assert_error(c.call("AUTH", value="wrong"), "AUTH_FAILED")
        assert_error(c.call("SET", key="k", value="v"), "AUTH_REQUIRED")
        assert c.call("AUTH", value="s3cret") == {"status": "OK"}
        assert c.call("SET", key="k", value="v") == {"status": "OK"}
        assert c.call("GET", key="k")["value"] == "v"
    with RawClient(server.port) as fresh:
        assert_error(fresh.call("GET", key="k"), "AUTH_REQUIRED")


def test_a_waiter_that_sent_more_requests_before_disconnecting_loses_no_element(server):
    # The PING sits unread in the server's socket buffer when the client leaves,
    # so "is there a byte to peek?" is not the same as "is the client there?".
    waiter = server.client()
    waiter.send({"command": "BLPOP", "key": "jobs", "timeout": 0})
    wait_blocked(server, 1)
    waiter.send({"command": "PING"})
    waiter.close()
    wait_blocked(server, 0)
    with server.client() as c:
        c.call("PUSH", key="jobs", value="precious")
        assert c.call("LPOP", key="jobs") == {"status": "OK", "value": "precious"}

"""Limits and security (docs/reliability.md, "Limits and security") against real server
processes, plus the two constant-time comparisons checked in-process.

Covered here: the small request size allowed before AUTH, passwords and the
cluster secret compared with hmac.compare_digest, cluster_secret enforced on
every gRPC method, a thousand wrong AUTH attempts, and a client that never
reads its replies. The loopback default, protected mode and max_clients are
in test_startup.py and test_limits.py.
"""

import hmac
import resource
import secrets
import time
from collections import namedtuple
from pathlib import Path

import grpc
import msgpack
import pytest

from geomys import engine
from geomys.cluster import core, transport, wire
from geomys.cluster.pb import cluster_pb2 as pb
from geomys.cluster.pb import cluster_pb2_grpc as pb_grpc
from geomys.cluster.rules import NodeAddress
from geomys.net import PREAUTH_MAX_REQUEST_BYTES
from tests.fakes import Harness, assert_error
from tests.helpers import (HOST, frame_of_size, process_status, process_threads, read_until_closed,
                           wait_only_info_connection, wait_until)

integration = pytest.mark.integration

PASSWORD = "s3cret-password"
SECRET = "cluster-s3cret"
OK = {"status": "OK"}
# Seconds for one request on loopback: generous for a busy 2-core machine;
# what it catches is a client held up until something else lets go.
PROMPT = 2.0


def timed_call(client, command: str, **fields) -> dict:
    """Call `command` and fail if the reply takes PROMPT seconds or more."""
    started = time.monotonic()
    reply = client.call(command, **fields)
    elapsed = time.monotonic() - started
    assert elapsed < PROMPT, "%s took %.2fs" % (command, elapsed)
    return reply


# -- before AUTH, only small requests ---------------------------------------------------

@integration
def test_a_large_request_before_auth_gets_one_auth_required_then_close(start_server):
    server = start_server(requirepass=PASSWORD)
    with server.client() as client:
        client.send({"command": "SET", "key": "big", "value": "x" * 20_000})
        replies = read_until_closed(client)
    assert len(replies) == 1, replies
    assert_error(replies[0], "AUTH_REQUIRED")
    with server.client() as client:
        assert client.call("AUTH", value=PASSWORD) == OK
        assert client.call("EXISTS", key="big")["value"] == 0


@integration
def test_the_limit_before_auth_is_exact(start_server):
    server = start_server(requirepass=PASSWORD)
    with server.client() as client:
        client.send_raw(frame_of_size(PREAUTH_MAX_REQUEST_BYTES))
        assert_error(client.read(), "AUTH_REQUIRED")
        assert client.call("PING")["message"] == "PONG"  # the connection stayed
        client.send_raw(frame_of_size(PREAUTH_MAX_REQUEST_BYTES + 1))
        replies = read_until_closed(client)
    assert len(replies) == 1, replies
    assert_error(replies[0], "AUTH_REQUIRED")


@integration
def test_small_requests_work_before_auth_and_after_auth_a_large_one_is_served(start_server):
    server = start_server(requirepass=PASSWORD)
    big = "x" * (1 << 20)
    with server.client() as client:
        assert client.call("PING")["message"] == "PONG"
        assert_error(client.call("AUTH", value="wrong"), "AUTH_FAILED")
        assert client.call("AUTH", value=PASSWORD) == OK
        assert client.call("SET", key="big", value=big) == OK
        assert client.call("GET", key="big") == {"status": "OK", "value": big}


@integration
def test_without_requirepass_there_is_no_limit_before_auth(server):
    value = "x" * 20_000
    with server.client() as client:
        assert client.call("SET", key="big", value=value) == OK
        assert client.call("GET", key="big") == {"status": "OK", "value": value}


# -- constant-time comparisons ------------------------------------------------------------

@pytest.fixture
def compare_digest_calls(monkeypatch):
    """Record each hmac.compare_digest call, whichever way the code under test reaches it."""
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append({x.encode() if isinstance(x, str) else x for x in (a, b)})
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    monkeypatch.setattr(secrets, "compare_digest", spy)
    for module in (engine, transport):  # a `from hmac import compare_digest` binds its own name
        if hasattr(module, "compare_digest"):
            monkeypatch.setattr(module, "compare_digest", spy)
    return calls


def test_auth_compares_passwords_with_compare_digest(compare_digest_calls):
    h = Harness(requirepass=PASSWORD)
    assert_error(h.run("AUTH", value="wrong"), "AUTH_FAILED")
    assert h.run("AUTH", value=PASSWORD) == OK
    assert compare_digest_calls == [{b"wrong", PASSWORD.encode()}, {PASSWORD.encode()}]


HandlerCallDetails = namedtuple("HandlerCallDetails", "method invocation_metadata")


def test_the_cluster_secret_is_compared_with_compare_digest(compare_digest_calls):
    interceptor = transport.SecretInterceptor(SECRET)
    admitted = object()  # what the interceptor hands on when it lets a call through

    def intercept(secret):
        details = HandlerCallDetails("/geomys.cluster.Cluster/Ask", ((transport.SECRET_HEADER, secret),))
        return interceptor.intercept_service(lambda _: admitted, details)

    assert intercept("wrong-secret!") is not admitted
    assert intercept(SECRET) is admitted
    assert compare_digest_calls == [{b"wrong-secret!", SECRET.encode()}, {SECRET.encode()}]


# -- cluster_secret on every gRPC method ------------------------------------------------------

# Requests that would change the node if they were let through (factories: a stream is used up once sent).
INTRUDER = NodeAddress(9, "127.0.0.1:1", "127.0.0.1:2")
INTRUSIONS = {
    "Forward": lambda: pb.ForwardRequest(
        requests=[msgpack.packb({"command": "SET", "key": "intruder", "value": "x"})], from_node=9),
    "Exchange": lambda: iter([pb.Batch(messages=[wire.to_pb(core.NewLeader(9, 99)),
                                                wire.to_pb(core.Append(9, 99, -1, 0, (), 0))])]),
    "Ask": lambda: wire.to_pb(core.Join(9, 0, INTRUDER, True)),
    "Sync": lambda: pb.SyncRequest(node_id=9),
}


def observable(info: dict) -> tuple:
    """What INFO shows of a node's role, term, membership and data."""
    return info["role"], info["term"], info["leader_id"], info["nodes"], info["digest"]


@integration
def test_every_cluster_rpc_is_refused_without_the_right_secret(start_server):
    node = start_server(node_id=1, bootstrap=True, cluster_secret=SECRET, heartbeat_interval=0.2,
                        failure_timeout=1.0)
    wait_until(lambda: node.info()["role"] == "leader", timeout=10, message="the node to lead")
    before = observable(node.info())
    methods = pb.DESCRIPTOR.services_by_name["Cluster"].methods
    assert {m.name for m in methods} == set(INTRUSIONS)
    with grpc.insecure_channel("%s:%d" % (HOST, node.port + 1000)) as channel:
        stub = pb_grpc.ClusterStub(channel)
        for method in methods:
            for metadata in [(), ((transport.SECRET_HEADER, "wrong"),), ((transport.SECRET_HEADER, SECRET[:-1]),)]:
                with pytest.raises(grpc.RpcError) as refused:
                    result = getattr(stub, method.name)(INTRUSIONS[method.name](), timeout=5, metadata=metadata)
                    if method.server_streaming:
                        list(result)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method.name, metadata)
        assert observable(node.info()) == before
        assert node.call("EXISTS", key="intruder")["value"] == 0

        right = ((transport.SECRET_HEADER, SECRET),)
        reply = stub.Forward(pb.ForwardRequest(requests=[msgpack.packb({"command": "SET", "key": "k", "value": "v"})],
                                               from_node=1), timeout=5, metadata=right)
        assert [msgpack.unpackb(r) for r in reply.replies] == [OK]
        # A Join with a taken id, not assigned by the leader: refused, and answered.
        join = core.Join(5, 0, NodeAddress(1, "127.0.0.1:1", "127.0.0.1:2"))
        taken = wire.from_pb(stub.Ask(wire.to_pb(join), timeout=5, metadata=right))
        assert taken.status == core.REFUSED
    assert node.call("GET", key="k") == {"status": "OK", "value": "v"}


# -- wrong passwords ----------------------------------------------------------------------------

@integration
def test_a_thousand_wrong_auth_attempts_do_not_hurt_the_server_or_its_other_clients(start_server):
    server = start_server(requirepass=PASSWORD)
    attackers = [server.client() for _ in range(4)]
    bystander = server.client()
    try:
        assert bystander.call("AUTH", value=PASSWORD) == OK
        per_batch = 25
        for batch in range(10):  # 10 batches x 4 connections x 25 = 1,000 attempts
            for i, attacker in enumerate(attackers):
                attacker.send(*({"command": "AUTH", "value": "guess-%d-%d-%d" % (batch, i, n)}
                                for n in range(per_batch)))
            # Served while the guesses are in flight.
            assert timed_call(bystander, "SET", key="b%d" % batch, value="v") == OK
            assert timed_call(bystander, "GET", key="b%d" % batch) == {"status": "OK", "value": "v"}
            for attacker in attackers:
                for _ in range(per_batch):
                    assert_error(attacker.read(), "AUTH_FAILED")
        with server.client() as fresh:
            assert timed_call(fresh, "PING")["message"] == "PONG"
        for attacker in attackers:
            assert_error(attacker.call("GET", key="b0"), "AUTH_REQUIRED")
        assert timed_call(attackers[0], "AUTH", value=PASSWORD) == OK
        assert attackers[0].call("GET", key="b0") == {"status": "OK", "value": "v"}
    finally:
        for client in attackers + [bystander]:
            client.close()
    assert "Traceback" not in server.log_text()


# -- a client that never reads --------------------------------------------------------------------

BIG = 1 << 20


def send_queue(local_port: int, remote_port: int) -> int:
    """Bytes the loopback TCP socket local_port -> remote_port has not yet had acknowledged (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
        if (local, remote) == (local_port, remote_port):
            return int(fields[4].split(":")[0], 16)
    return 0


def start_slow_client(server, gets: int):
    """Connect a client that pipelines `gets` GETs of the 1 MiB value 'big' and never reads a reply."""
    slow = server.client()
    slow.send(*[{"command": "GET", "key": "big"}] * gets)
    return slow, slow.sock.getsockname()[1]


def assert_others_are_served(server, rounds: int = 10) -> None:
    """Check that another client's SET and GET are each answered promptly."""
    with server.client() as other:
        for i in range(rounds):
            assert timed_call(other, "SET", key="other%d" % i, value="v") == OK
            assert timed_call(other, "GET", key="other%d" % i) == {"status": "OK", "value": "v"}


@integration
@pytest.mark.parametrize("persistence", ["none", "writethrough"])
def test_a_client_that_never_reads_holds_up_no_other_client_and_its_thread_ends_with_it(start_server, tmp_path,
                                                                                         persistence):
    server = start_server(persistence=persistence, persistence_path=str(tmp_path / "db.aof"))
    assert server.call("SET", key="big", value="x" * BIG) == OK
    wait_only_info_connection(server)
    threads_before = process_threads(server.proc.pid)
    # 64 MiB of replies: many times what the socket buffers of both ends hold.
    slow, slow_port = start_slow_client(server, 64)
    try:
        wait_until(lambda: send_queue(server.port, slow_port) > 0, timeout=10,
                   message="the server to be sending to the slow client")
        assert_others_are_served(server)
        assert send_queue(server.port, slow_port) > 0, "the slow client should still be stuck"
    finally:
        slow.close()
    wait_only_info_connection(server)
    wait_until(lambda: process_threads(server.proc.pid) <= threads_before, timeout=10,
               message="the slow client's thread to end")


# How much more memory the server may use while a client lets its replies pile
# up: a few replies in flight at a time, not the thousands it asked for.
SLOW_CLIENT_MEMORY_BOUND_KB = 64 * 1024


@integration
def test_a_client_that_never_reads_cannot_make_the_server_hold_its_replies_in_memory(start_server):
    server = start_server()
    pid = server.proc.pid
    assert server.call("SET", key="big", value="x" * BIG) == OK
    assert len(server.call("GET", key="big")["value"]) == BIG  # the peak below includes one reply
    # Spare the machine whatever this test finds: 512 MiB past its size, the
    # server gets a MemoryError rather than the host running out of memory.
    ceiling = process_status(pid, "VmSize") * 1024 + (512 << 20)
    resource.prlimit(pid, resource.RLIMIT_AS, (ceiling, ceiling))
    peak_before = process_status(pid, "VmHWM")

    def grown() -> int:
        return process_status(pid, "VmHWM") - peak_before

    slow, slow_port = start_slow_client(server, 2000)  # 2 GB of replies asked for
    try:
        wait_until(lambda: send_queue(server.port, slow_port) > 0 or grown() >= SLOW_CLIENT_MEMORY_BOUND_KB,
                   timeout=10, message="the server to be sending to the slow client")
        assert_others_are_served(server)
        assert grown() < SLOW_CLIENT_MEMORY_BOUND_KB, "peak RSS grew by %d kB" % grown()
    finally:
        slow.close()

"""Linearizable reads on a cluster of real processes (docs/cluster.md, "Read consistency").

A counter tells old and new values apart: INCR through the leader, freeze
the leader until another is elected, INCR through the new one (acknowledged),
and read the counter on the old leader the moment it runs again. With
`consistent` the answer is the new value or NO_LEADER, never the old value;
a local read on the same node may still show the old one, which is what the
field is for. The same check for a follower cut off by a network partition
is in tests/faults/test_partition_reads.py.
"""

import contextlib
import time

import pytest

from tests.cluster_helpers import Cluster
from tests.helpers import RawClient

pytestmark = pytest.mark.integration

ROUNDS = 3
RPC_TIMEOUT = 1.0      # how long a node may try to confirm a read before it answers NO_LEADER


@pytest.fixture
def cluster(tmp_path):
    nodes = Cluster(tmp_path, rpc_timeout=RPC_TIMEOUT)
    try:
        yield nodes.start()
    finally:
        nodes.cleanup()


def new_value_or_no_leader(reply: dict, new: int) -> bool:
    return reply == {"status": "OK", "value": str(new)} or reply.get("code") == "NO_LEADER"


def incr_acknowledged(cluster: Cluster, node_id: int) -> int:
    reply = cluster.write(node_id, "INCR", key="counter")
    assert reply["status"] == "OK", reply
    return reply["value"]


def test_an_old_leader_resumed_after_a_pause_never_answers_a_consistent_read_with_the_old_value(cluster):
    outcomes = []
    for _ in range(ROUNDS):
        old = cluster.wait_leader()
        incr_acknowledged(cluster, old)
        cluster.wait_converged()
        cluster.pause(old)
        others = [n for n in cluster.nodes if n != old]
        new_leader = cluster.wait_leader(ids=others, not_in=[old])
        new = incr_acknowledged(cluster, new_leader)
        # The requests reach the frozen process's sockets first; it reads them the moment it runs again.
        with RawClient(cluster.port(old)) as consistent, RawClient(cluster.port(old)) as local:
            consistent.send({"command": "GET", "key": "counter", "consistent": True})
            local.send({"command": "GET", "key": "counter"})
            cluster.resume(old)
            reply, local_reply = consistent.read(), local.read()
        assert new_value_or_no_leader(reply, new), (reply, new)
        outcomes.append((reply.get("value", reply.get("code")), local_reply.get("value")))
        cluster.wait_converged()
    print("consistent answer, local answer, per round:", outcomes)


def test_fifty_concurrent_consistent_reads_share_a_few_rounds_and_info_counts_them(cluster):
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    incr_acknowledged(cluster, leader)
    for node_id in (leader, follower):
        before = cluster.info(node_id)
        clients = [RawClient(cluster.port(node_id)) for _ in range(50)]
        with contextlib.ExitStack() as stack:
            for client in clients:
                stack.enter_context(client)
                client.send({"command": "GET", "key": "counter", "consistent": True})
            replies = [client.read() for client in clients]
        after = cluster.info(node_id)
        assert all(r == {"status": "OK", "value": "1"} for r in replies), replies
        assert after["read_index_reads"] - before["read_index_reads"] == 50
        rounds = after["read_index_rounds"] - before["read_index_rounds"]
        assert 1 <= rounds < 50, rounds


def test_the_reads_of_one_pipelined_batch_share_one_wait(cluster):
    leader = cluster.wait_leader()
    incr_acknowledged(cluster, leader)
    before = cluster.info(leader)
    with RawClient(cluster.port(leader)) as client:
        client.send(*[{"command": "GET", "key": "counter", "consistent": True}] * 16)
        replies = [client.read() for _ in range(16)]
    after = cluster.info(leader)
    assert replies == [{"status": "OK", "value": "1"}] * 16
    assert after["read_index_reads"] - before["read_index_reads"] == 16
    assert after["read_index_rounds"] - before["read_index_rounds"] == 1


@pytest.mark.parametrize("value", ["yes", 1, [True]])
def test_a_consistent_field_that_is_not_a_boolean_is_bad_request_and_ignored_on_writes(cluster, value):
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    reply = cluster.write(follower, "GET", key="k", consistent=value)
    assert reply["code"] == "BAD_REQUEST" and "consistent" in reply["message"], reply
    assert cluster.write(follower, "SET", key="k", value="v", consistent=value) == {"status": "OK"}
    assert cluster.write(follower, "GET", key="k", consistent=True) == {"status": "OK", "value": "v"}


def test_read_consistency_linearizable_makes_plain_reads_linearizable(tmp_path):
    nodes = Cluster(tmp_path, rpc_timeout=RPC_TIMEOUT, read_consistency="linearizable")
    try:
        nodes.start()
        leader = nodes.wait_leader()
        follower = next(n for n in nodes.nodes if n != leader)
        new = incr_acknowledged(nodes, leader)
        before = nodes.info(follower)["read_index_reads"]
        assert nodes.write(follower, "GET", key="counter") == {"status": "OK", "value": str(new)}
        assert nodes.info(follower)["read_index_reads"] == before + 1
        nodes.write(follower, "GET", key="counter", consistent=False)
        assert nodes.info(follower)["read_index_reads"] == before + 1
    finally:
        nodes.cleanup()


def test_a_standalone_server_accepts_consistent_and_checks_it(server):
    server.call("SET", key="k", value="v")
    assert server.call("GET", key="k", consistent=True) == {"status": "OK", "value": "v"}
    assert server.call("EXISTS", key="k", consistent=False) == {"status": "OK", "value": 1}
    reply = server.call("LLEN", key="k2", consistent="maybe")
    assert reply["code"] == "BAD_REQUEST" and "consistent" in reply["message"]


def test_a_connection_reads_its_own_writes_through_a_follower(cluster):
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    with RawClient(cluster.port(follower)) as client:
        for i in range(300):
            assert client.call("SET", key="own%d" % i, value="v%d" % i) == {"status": "OK"}
            assert client.call("GET", key="own%d" % i) == {"status": "OK", "value": "v%d" % i}
        client.send({"command": "INCR", "key": "pipelined"}, {"command": "GET", "key": "pipelined"})
        assert [client.read(), client.read()] == [{"status": "OK", "value": 1}, {"status": "OK", "value": "1"}]

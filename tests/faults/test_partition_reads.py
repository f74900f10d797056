"""A follower cut off from its leader by a network partition never answers a linearizable read stale.

The node runs under a uid of its own and an nftables table cuts its gRPC
traffic (tests/faults/partition.py); its client port stays open. A counter
tells old and new values apart: INCR through the leader, cut the follower
off, INCR again (acknowledged by the leader and the other follower), then
read the counter on the cut-off follower: `consistent` gets NO_LEADER within
a bounded time, while a local read shows the old value. After the heal a
consistent read there shows the new one.
"""

import time

import pytest

from tests.cluster_helpers import FAILURE_TIMEOUT, Cluster
from tests.faults.partition import Firewall, UidNode, UidReservation
from tests.helpers import RawClient, ServerProcess, wait_until
from tests.integration.test_linearizable_reads import ROUNDS, RPC_TIMEOUT, incr_acknowledged

pytestmark = pytest.mark.integration


def test_a_follower_cut_off_from_the_leader_never_answers_a_consistent_read_with_the_old_value(tmp_path, nftables):
    reservation = UidReservation(3)
    uid_of = dict(zip((1, 2, 3), reservation.uids))
    firewall = Firewall()

    def node(workdir, node_id: int, **config) -> ServerProcess:
        return UidNode(workdir, uid_of[node_id], node_id=node_id, **config)
    cluster = Cluster(tmp_path / "cluster", process=node, rpc_timeout=RPC_TIMEOUT)
    try:
        cluster.start()
        for _ in range(ROUNDS):
            leader = cluster.wait_leader()
            follower = max(n for n in cluster.nodes if n != leader)
            incr_acknowledged(cluster, leader)
            cluster.wait_converged()
            endpoints = {n: cluster.nodes[n].endpoint() for n in cluster.nodes}
            firewall.isolate(endpoints[follower], [endpoints[n] for n in endpoints if n != follower])
            new = incr_acknowledged(cluster, leader)      # nodes 1 and the other follower: a majority
            with RawClient(cluster.port(follower)) as client:
                started = time.monotonic()
                reply = client.call("GET", key="counter", consistent=True)
                took = time.monotonic() - started
                assert client.call("GET", key="counter")["value"] == str(new - 1)   # the local read is stale
            assert reply.get("code") == "NO_LEADER", reply
            assert took < RPC_TIMEOUT + 2 * FAILURE_TIMEOUT, took
            firewall.heal()
            cluster.wait_converged()
            reply = wait_until(lambda: (lambda r: r if r.get("status") == "OK" else None)(
                cluster.nodes[follower].call("GET", key="counter", consistent=True)), 10, 0.1,
                "a consistent read on the healed follower")
            assert reply["value"] == str(new)
    finally:
        firewall.heal()
        cluster.cleanup()
        reservation.release()

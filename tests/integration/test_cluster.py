"""A three-node cluster of real geomys processes on 127.0.0.1 (docs/cluster.md).

Replication and INFO agreement, forwarded writes and blocking pops, joins,
a lost majority, cluster_secret and the start-up errors of docs/cluster.md
("Ports and modes"). Timings are
short (heartbeat 0.2 s, failure timeout 1 s); every wait is a bounded
wait_until. Failures under load (kill -9, pauses, a join of more than 4 MB,
catch-up past the backlog) live in tests/faults/test_cluster_faults.py.
"""

import socket
import threading
import time

import grpc
import pytest

from geomys.cluster import core, wire
from geomys.cluster.log import Entry
from geomys.cluster.pb import cluster_pb2 as pb
from geomys.cluster.pb import cluster_pb2_grpc as pb_grpc
from geomys.records import pack
from tests.cluster_helpers import Cluster, WriteLoad, grpc_address
from tests.helpers import ServerProcess, free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def make_cluster(tmp_path):
    """Factory: make_cluster(size, **options) -> a started Cluster; every process is killed at teardown."""
    clusters = []

    def factory(size: int = 3, first_id: int = 1, **options) -> Cluster:
        cluster = Cluster(tmp_path / ("cluster%d" % len(clusters)), **options)
        clusters.append(cluster)
        return cluster.start(size, first_id=first_id)

    yield factory
    for cluster in clusters:
        cluster.cleanup()


@pytest.fixture
def cluster(make_cluster):
    return make_cluster(3)


def followers_of(cluster: Cluster, leader: int) -> list[int]:
    return [n for n in cluster.running_ids() if n != leader]


def wait_exit(node: ServerProcess, timeout: float = 30.0) -> int:
    """Wait for a node that is expected to give up; return its exit status."""
    try:
        return node.proc.wait(timeout)
    except Exception:
        raise AssertionError("geomys did not exit within %.0fs:\n%s" % (timeout, node.log_text())) from None


# -- replication and INFO ------------------------------------------------------------------

def test_writes_through_every_node_are_readable_on_every_node(cluster):
    leader = cluster.wait_leader()
    keys = {}
    for node_id in cluster.running_ids():
        for i in range(20):
            key, value = "via-%d-%d" % (node_id, i), "value-%d-%d" % (node_id, i)
            assert cluster.write(node_id, "SET", key=key, value=value) == {"status": "OK"}
            keys[key] = value
        assert cluster.write(node_id, "INCR", key="shared-counter")["status"] == "OK"
        assert cluster.write(node_id, "PUSH", key="shared-list", value="from-%d" % node_id) == {"status": "OK"}
    cluster.wait_converged()
    for node_id in cluster.running_ids():
        assert cluster.data(node_id, keys) == keys, "node %d" % node_id
        assert cluster.write(node_id, "GET", key="shared-counter")["value"] == "3"
        assert cluster.write(node_id, "LLEN", key="shared-list")["value"] == 3
    # A follower's write really went through the leader: one log, one order.
    assert cluster.write(leader, "LPOP", key="shared-list")["value"] == "from-1"


def test_info_agrees_on_membership_leader_and_term_everywhere(cluster):
    leader = cluster.wait_leader()
    cluster.write(leader, "SET", key="k", value="v")
    infos = cluster.wait_converged()
    expected_nodes = {str(n): {"client": "127.0.0.1:%d" % cluster.port(n),
                               "grpc": "127.0.0.1:%d" % (cluster.port(n) + 1000)} for n in (1, 2, 3)}
    for node_id, info in infos.items():
        assert info["nodes"] == expected_nodes, "node %d" % node_id
        assert info["leader_id"] == leader and info["term"] == infos[leader]["term"]
        assert info["leader_address"] == "127.0.0.1:%d" % cluster.port(leader)
        assert info["node_id"] == node_id
    assert infos[leader]["role"] == "leader"
    offset = infos[leader]["replication_offset"]
    assert infos[leader]["followers"] == {str(n): offset for n in followers_of(cluster, leader)}
    for node_id in followers_of(cluster, leader):
        assert infos[node_id]["role"] == "follower"
        assert infos[node_id]["replication_offset"] == offset


def test_write_on_a_follower_is_acknowledged_only_once_the_leader_has_it(cluster):
    leader = cluster.wait_leader()
    follower = followers_of(cluster, leader)[0]
    with cluster.nodes[follower].client() as client:
        assert client.call("SET", key="fwd", value="1") == {"status": "OK"}
    # The leader executed it, so its reply is already visible there (no wait needed).
    assert cluster.write(leader, "GET", key="fwd") == {"status": "OK", "value": "1"}
    assert cluster.write(follower, "SET", key="fwd", value="2")["code"] == "KEY_EXISTS"


# -- joins ----------------------------------------------------------------------------------

def _kill_follower_and_join_fresh_node(cluster: Cluster, load: WriteLoad, new_id: int) -> int:
    leader = cluster.wait_leader()
    victim = followers_of(cluster, leader)[-1]
    cluster.kill(victim)
    cluster.wait_members(cluster.live_ids())             # the leader removed the dead follower
    cluster.add_node(new_id)
    cluster.wait_members(cluster.live_ids())
    assert load.acked >= 300, "load too small to mean anything: %d acks, errors %s" % (load.acked, load.errors)
    return leader


def test_fresh_node_joined_under_load_after_a_follower_died_ends_identical(cluster):
    cluster.wait_leader()
    with WriteLoad(lambda: [cluster.port(n) for n in cluster.running_ids()], threads=3) as load:
        load.wait_acked(200)
        leader = _kill_follower_and_join_fresh_node(cluster, load, new_id=4)
        load.wait_acked(load.acked + 100)
    infos = cluster.wait_converged()
    keys = load.all_keys()
    reference = cluster.data(leader, keys)
    load.check(reference, "leader")
    for node_id in cluster.running_ids():
        assert cluster.data(node_id, keys) == reference, "node %d differs from the leader" % node_id
    assert infos[4]["syncs_full_received"] >= 1
    assert not load.unexpected


def test_node_with_a_smaller_id_that_joins_later_follows(make_cluster):
    cluster = make_cluster(1, first_id=5)
    term = cluster.info(5)["term"]
    cluster.add_node(2)
    cluster.add_node(3)
    infos = cluster.wait_converged()
    assert cluster.agreed_leader() == 5
    assert {i["term"] for i in infos.values()} == {term}
    assert infos[5]["elections"] == infos[2]["elections"] == infos[3]["elections"] == 0


def test_restarted_node_with_an_old_file_takes_the_leaders_state(make_cluster, tmp_path):
    cluster = make_cluster(3, persistence="writethrough")
    leader = cluster.wait_leader()
    for i in range(50):
        assert cluster.write(leader, "SET", key="old%d" % i, value="1")["status"] == "OK"
    follower = followers_of(cluster, leader)[0]
    cluster.wait_converged()
    cluster.kill(follower)
    for i in range(50):
        assert cluster.write(leader, "SET", key="new%d" % i, value="2")["status"] == "OK"
    assert cluster.write(leader, "DEL", key="old0")["value"] == 1
    survivors = followers_of(cluster, follower)
    cluster.wait_members(survivors)          # the dead follower was removed
    cluster.add_node(follower)               # same id, same append-only file, stale
    info = cluster.wait_converged()
    assert info[follower]["digest"] == info[leader]["digest"]
    assert cluster.write(follower, "GET", key="old0")["code"] == "NOT_FOUND"
    # Its file now describes the leader's state: replayed alone, it gives the same data.
    aof = cluster.nodes[follower].options["persistence_path"]
    assert cluster.nodes[follower].stop() == 0
    alone = ServerProcess(tmp_path / "alone", persistence="writethrough", persistence_path=aof).start()
    try:
        assert alone.info()["digest"] == cluster.info(leader)["digest"]
    finally:
        alone.cleanup()


# -- a lost majority -----------------------------------------------------------------------------


@pytest.mark.parametrize("survivor_role", ["leader", "follower"])
def test_survivor_of_two_killed_nodes_refuses_writes_and_never_shows_an_unconfirmed_one(cluster, survivor_role):
    leader = cluster.wait_leader()
    cluster.write(leader, "SET", key="before", value="kept")
    cluster.wait_converged()
    survivor = leader if survivor_role == "leader" else followers_of(cluster, leader)[0]
    for node_id in cluster.running_ids():
        if node_id != survivor:
            cluster.kill(node_id)

    # Without a majority no write can ever be acknowledged: the very first answer must be NO_LEADER
    # (a leader answers once it steps down, within about failure_timeout).
    with cluster.nodes[survivor].client(timeout=6 * cluster.failure_timeout + 5) as client:
        reply = client.call("SET", key="after", value="x")
    assert reply.get("code") == "NO_LEADER", reply
    wait_until(lambda: cluster.info(survivor)["role"] != "leader", 6 * cluster.failure_timeout + 5, 0.05,
               "the survivor to stop leading")
    # It keeps refusing (no split-brain leader of one).
    for _ in range(5):
        assert cluster.write(survivor, "INCR", key="c")["code"] == "NO_LEADER"
    if survivor_role == "follower":
        # A follower's store holds only committed writes: it goes on serving reads.
        assert cluster.write(survivor, "GET", key="before") == {"status": "OK", "value": "kept"}
        assert cluster.write(survivor, "EXISTS", key="after")["value"] == 0
    else:
        # The old leader's store holds the SET that never reached a majority: it answers
        # no read until a leader confirms or replaces its data, rather than show that write.
        for key in ("before", "after"):
            assert cluster.write(survivor, "GET", key=key)["code"] == "NO_LEADER"


# -- forwarded blocking pops -------------------------------------------------------------------

def test_blpop_on_a_follower_is_woken_by_a_push_on_another_node(cluster):
    leader = cluster.wait_leader()
    waiter_node, pusher_node = followers_of(cluster, leader)
    result = {}

    def blpop():
        with cluster.nodes[waiter_node].client(timeout=20) as client:
            started = time.monotonic()
            result["reply"] = client.call("BLPOP", key="jobs", timeout=5)
            result["elapsed"] = time.monotonic() - started
    thread = threading.Thread(target=blpop, daemon=True)
    thread.start()
    wait_until(lambda: cluster.info(leader)["blocked_clients"] >= 1, 5, 0.02,
               "the forwarded BLPOP to wait on the leader")
    assert cluster.write(pusher_node, "PUSH", key="jobs", value="job-1") == {"status": "OK"}
    thread.join(10)
    assert not thread.is_alive()
    assert result["reply"] == {"status": "OK", "value": "job-1"}
    assert result["elapsed"] < 4.5
    cluster.wait_converged()
    for node_id in cluster.running_ids():
        assert cluster.write(node_id, "LLEN", key="jobs")["value"] == 0, "node %d still has the job" % node_id


def test_blpop_through_a_follower_times_out_with_timeout(cluster):
    leader = cluster.wait_leader()
    follower = followers_of(cluster, leader)[0]
    with cluster.nodes[follower].client(timeout=20) as client:
        started = time.monotonic()
        reply = client.call("BLPOP", key="empty", timeout=1)
        elapsed = time.monotonic() - started
    assert reply["status"] == "ERROR" and reply["code"] == "TIMEOUT", reply
    assert 0.9 <= elapsed < 4, elapsed


# -- cluster_secret --------------------------------------------------------------------------------

def test_cluster_started_with_a_secret_replicates_and_forwards(make_cluster):
    cluster = make_cluster(3, cluster_secret="s3cret")
    leader = cluster.wait_leader()
    follower = followers_of(cluster, leader)[0]
    assert cluster.write(follower, "SET", key="secret-k", value="v") == {"status": "OK"}
    cluster.wait_converged()
    for node_id in cluster.running_ids():
        assert cluster.write(node_id, "GET", key="secret-k")["value"] == "v"


@pytest.mark.parametrize("secret", ["wrong", None])
def test_node_without_the_right_secret_cannot_join(make_cluster, tmp_path, secret):
    cluster = make_cluster(1, cluster_secret="s3cret")
    intruder = ServerProcess(tmp_path / "intruder", node_id=9, join=grpc_address(cluster.nodes[1]),
                             heartbeat_interval=0.2, failure_timeout=1.0, cluster_secret=secret)
    try:
        intruder.start(wait=False)
        assert wait_exit(intruder) != 0
        assert "secret" in intruder.log_text().lower() or "unauthenticated" in intruder.log_text().lower()
    finally:
        intruder.cleanup()
    assert set(cluster.info(1)["nodes"]) == {"1"}


# -- start-up errors -----------------------------------------------------------------------------

def test_join_to_a_dead_address_exits_nonzero_with_a_clear_message(tmp_path):
    dead = free_port()
    node = ServerProcess(tmp_path / "lonely", node_id=2, join="127.0.0.1:%d" % dead,
                         heartbeat_interval=0.2, failure_timeout=1.0)
    try:
        node.start(wait=False)
        assert wait_exit(node) != 0
        log = node.log_text()
        assert "127.0.0.1:%d" % dead in log and "cluster" in log.lower(), log
    finally:
        node.cleanup()


def test_duplicate_node_id_is_refused(make_cluster, tmp_path):
    cluster = make_cluster(2)
    data_file = tmp_path / "twin.aof"
    kept = b"GEOAOF" + b"earlier state that a refused join must not touch"
    data_file.write_bytes(kept)
    twin = ServerProcess(tmp_path / "twin", node_id=2, join=grpc_address(cluster.nodes[1]),
                         heartbeat_interval=0.2, failure_timeout=1.0, persistence="writethrough",
                         persistence_path=str(data_file))
    try:
        twin.start(wait=False)
        assert wait_exit(twin) != 0
        assert "node id 2" in twin.log_text() and "already" in twin.log_text(), twin.log_text()
        assert data_file.read_bytes() == kept
    finally:
        twin.cleanup()
    cluster.wait_members([1, 2])


def test_failure_timeout_below_twice_the_heartbeat_exits_2(tmp_path):
    node = ServerProcess(tmp_path / "bad", node_id=1, bootstrap=True, heartbeat_interval=0.6, failure_timeout=1.0)
    try:
        node.start(wait=False)
        assert wait_exit(node) == 2
        assert "failure_timeout" in node.log_text()
    finally:
        node.cleanup()


def test_busy_grpc_port_exits_2(tmp_path):
    node = ServerProcess(tmp_path / "busy", node_id=1, bootstrap=True, heartbeat_interval=0.2, failure_timeout=1.0)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.port + 1000))
        squatter.listen()
        try:
            node.start(wait=False)
            assert wait_exit(node) == 2
            assert str(node.port + 1000) in node.log_text(), node.log_text()
        finally:
            node.cleanup()


# -- bad messages from other nodes --------------------------------------------------------------

def _exchange(cluster: Cluster, node_id: int, *messages) -> list:
    """Send core messages on one Exchange stream to `node_id`; return the core messages it answers."""
    with grpc.insecure_channel(grpc_address(cluster.nodes[node_id])) as channel:
        answers = pb_grpc.ClusterStub(channel).Exchange(
            iter([pb.Batch(messages=[m if isinstance(m, pb.Message) else wire.to_pb(m) for m in messages])]),
            timeout=10)
        return [wire.from_pb(m) for batch in answers for m in batch.messages]


def _observable(info: dict) -> tuple:
    return info["role"], info["term"], info["leader_id"], info["nodes"], info["commit_offset"], info["digest"]


def test_messages_from_an_unknown_node_an_old_term_or_malformed_change_nothing_and_are_answered(cluster):
    leader = cluster.wait_leader()
    follower = followers_of(cluster, leader)[0]
    cluster.write(leader, "SET", key="k", value="v")
    cluster.wait_converged()
    before = {n: _observable(cluster.info(n)) for n in cluster.running_ids()}
    forged = (Entry(999, 99, pack(("SET", "forged", "x", None))),)

    # A node the cluster does not know: refused, with the reason.
    answers = _exchange(cluster, follower, core.Append(42, 99, 0, 0, forged, 999), core.NewLeader(42, 99))
    assert [type(a) for a in answers] == [core.Rejected, core.Rejected]
    assert "node 42" in answers[0].reason
    # A member's id with a term older than the cluster's: the follower says its term and takes nothing.
    term = cluster.info(follower)["term"]
    answers = _exchange(cluster, follower, core.Append(leader, term - 1, 0, 0, forged, 999))
    assert len(answers) == 1 and type(answers[0]) is core.AppendReply
    assert not answers[0].ok and answers[0].term == term
    # Bytes that are no message: the stream fails with INVALID_ARGUMENT.
    with pytest.raises(grpc.RpcError) as refused:
        _exchange(cluster, follower, pb.Message())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:
        _exchange(cluster, follower, pb.Message(append=pb.Append(src=leader, term=term, entries=b"\xc1")))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert {n: _observable(cluster.info(n)) for n in cluster.running_ids()} == before
    assert cluster.write(follower, "EXISTS", key="forged")["value"] == 0

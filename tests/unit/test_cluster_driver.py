"""The cluster driver (geomys.cluster.node) over an in-memory network: what it adds to the core.

The core decides; these tests check that the driver carries its decisions
out: a follower's store takes only committed entries, a reply waits for the
commit that covers it and fails when that can no longer come, a snapshot
replaces a store. Messages move only when delivered; a linearizable read,
which blocks its thread until the leader answers, runs in a thread of its
own while the test delivers.
"""

import threading
import time

import pytest

from geomys.cluster.core import Append
from geomys.errors import NoLeader
from tests.helpers import wait_until
from tests.inmem import FAILURE_TIMEOUT, HEARTBEAT, RPC_TIMEOUT, run, three_nodes


def test_a_follower_stores_a_write_only_once_the_leader_says_it_is_committed():
    net = three_nodes()
    leader, follower = net.nodes[1], net.nodes[2]
    reply, ctx = run(leader, "SET", key="k", value="v")
    assert reply == {"status": "OK"}
    # Deliver the Appends, not yet the answers: the followers hold the entry in their logs only.
    appends = [m for m in net.in_flight if m[0] == 1]
    net.in_flight.clear()
    for src, dst, message in appends:
        net.nodes[dst].receive([message])
    assert follower.core.log.last_seq == leader.engine.seq
    assert follower.engine.store.peek("k") is None
    assert run(follower, "EXISTS", key="k")[0]["value"] == 0
    net.deliver()            # the answers: a majority holds the entry; the new commit point travels on
    net.tick_all(HEARTBEAT)
    assert leader.core.commit == leader.engine.seq
    leader.engine.settle(ctx)   # the SET's reply may go now
    assert follower.engine.store.peek("k") == "v"
    assert run(follower, "GET", key="k")[0] == {"status": "OK", "value": "v"}


def test_a_leader_that_stepped_down_answers_no_read_that_shows_an_unconfirmed_write():
    net = three_nodes()
    leader = net.nodes[1]
    net.cut |= {frozenset((1, 2)), frozenset((1, 3))}
    reply, ctx = run(leader, "INCR", key="c")
    assert reply == {"status": "OK", "value": 1}
    read, read_ctx = run(leader, "GET", key="c")
    assert read["value"] == "1"                         # computed, but never sent: settle decides
    for _ in range(int(FAILURE_TIMEOUT / HEARTBEAT * 2) + 2):
        net.tick_all(HEARTBEAT / 2)
    assert leader.core.role != "leader"
    with pytest.raises(NoLeader):
        leader.engine.settle(read_ctx)
    with pytest.raises(NoLeader):
        leader.engine.settle(ctx)
    # A read after the step-down is refused too: its store holds the INCR no majority has.
    later, later_ctx = run(leader, "GET", key="c")
    with pytest.raises(NoLeader):
        leader.engine.settle(later_ctx)


def test_the_old_leader_takes_the_new_leaders_state_after_the_partition_heals():
    net = three_nodes()
    old = net.nodes[1]
    net.cut |= {frozenset((1, 2)), frozenset((1, 3))}
    run(old, "SET", key="lost", value="x")           # never reaches a majority
    for _ in range(int(FAILURE_TIMEOUT / HEARTBEAT * 6)):
        net.tick_all(HEARTBEAT / 2)
    new = next(n for n in net.nodes.values() if n.core.role == "leader")
    assert new.core.id == 2
    reply, ctx = run(new, "SET", key="kept", value="y")
    net.deliver()
    net.tick_all(HEARTBEAT / 2)
    new.engine.settle(ctx)
    net.cut.clear()
    for _ in range(int(FAILURE_TIMEOUT / HEARTBEAT * 4)):
        net.tick_all(HEARTBEAT / 2)
    assert old.core.leader_id == 2
    assert old.engine.store.peek("lost") is None and old.engine.store.peek("kept") == "y"
    assert old.stats["syncs_full_received"] >= 1
    read, read_ctx = run(old, "GET", key="kept")
    old.engine.settle(read_ctx)
    assert read == {"status": "OK", "value": "y"}


def read_in_thread(node, **fields):
    """Start a linearizable GET on `node` in a thread (the read barrier blocks it); return (thread, result)."""
    result = {}

    def read():
        try:
            result["reply"], ctx = run(node, "GET", consistent=True, **fields)
            node.engine.settle(ctx)
        except NoLeader as exc:   # settle's failure; the barrier's comes back as a reply
            result["reply"] = {"status": "ERROR", "code": "NO_LEADER", "message": str(exc)}
        result["at"] = time.monotonic()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, result


def deliver_until_done(net, thread, seconds: float = 5.0) -> None:
    """Carry messages while `thread` waits for them, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while thread.is_alive() and time.monotonic() < deadline:
        net.deliver()
        thread.join(0.005)
    assert not thread.is_alive(), "the read did not finish within %gs" % seconds


def test_a_linearizable_read_on_a_lagging_follower_waits_for_the_leaders_commit_point():
    net = three_nodes()
    leader, follower = net.nodes[1], net.nodes[3]
    reply, ctx = run(leader, "SET", key="k", value="new")
    net.in_flight = type(net.in_flight)(m for m in net.in_flight if m[1] != 3)   # node 3 misses the Append
    net.deliver()
    leader.engine.settle(ctx)                           # acknowledged: nodes 1 and 2 hold it
    assert run(follower, "GET", key="k")[0]["code"] == "NOT_FOUND"   # a local read is stale
    thread, result = read_in_thread(follower, key="k")
    deliver_until_done(net, thread)
    assert result["reply"] == {"status": "OK", "value": "new"}
    assert follower.info()["read_index_reads"] == 1 and leader.info()["read_index_rounds"] >= 1


def test_a_linearizable_read_cut_off_from_the_leader_fails_with_no_leader_within_rpc_timeout():
    net = three_nodes()
    follower = net.nodes[2]
    net.cut.add(frozenset((1, 2)))
    started = time.monotonic()
    thread, result = read_in_thread(follower, key="k")
    deliver_until_done(net, thread)
    assert result["reply"]["code"] == "NO_LEADER"
    assert result["at"] - started < RPC_TIMEOUT + 1.0


def test_a_linearizable_read_on_a_deposed_leader_fails_rather_than_answer_stale():
    net = three_nodes()
    old = net.nodes[1]
    reply, ctx = run(old, "INCR", key="c")
    net.deliver()
    net.tick_all()
    old.engine.settle(ctx)                           # c = 1 everywhere
    net.cut |= {frozenset((1, 2)), frozenset((1, 3))}
    for _ in range(int(FAILURE_TIMEOUT / HEARTBEAT * 4)):   # nodes 2 and 3 elect node 2; node 1 does not tick
        for node_id in (2, 3):
            net.nodes[node_id].tick()
        net.clock.advance(HEARTBEAT / 2)
        net.deliver()
    assert net.nodes[2].core.is_leader and old.core.is_leader
    reply, ctx = run(net.nodes[2], "INCR", key="c")
    net.deliver()
    net.nodes[2].engine.settle(ctx)                  # c = 2 acknowledged
    assert run(old, "GET", key="c")[0]["value"] == "1"   # a local read on node 1 is stale
    net.cut.clear()
    thread, result = read_in_thread(old, key="c")
    deliver_until_done(net, thread)
    assert result["reply"] == {"status": "OK", "value": "2"} or result["reply"]["code"] == "NO_LEADER"
    assert not old.core.is_leader


def test_a_reply_that_read_no_store_is_settled_like_any_other():
    net = three_nodes()
    leader = net.nodes[1]
    assert run(leader, "PING")[0] == {"status": "OK", "message": "PONG"}
    _, ctx = run(leader, "PING")
    leader.engine.settle(ctx)  # no store read: no snapshot can have replaced what it showed


def cut_off_leader_with_unconfirmed_incrs(incrs: int):
    """Node 1 leads, is cut off and INCRs c `incrs` times alone; nodes 2 and 3 elect node 2 (node 1 still a member)."""
    net = three_nodes()
    old, new = net.nodes[1], net.nodes[2]
    net.cut |= {frozenset((1, 2)), frozenset((1, 3))}
    for _ in range(incrs):
        run(old, "INCR", key="c")                    # never reaches a majority
    for _ in range(int(FAILURE_TIMEOUT / HEARTBEAT * 6)):
        if new.core.is_leader:
            break
        net.tick_all(HEARTBEAT / 2)
    assert new.core.is_leader and 1 in new.core.members
    return net, old, new


def write_and_commit(net, node, count: int) -> None:
    """Acknowledge `count` SETs on the leader `node`."""
    for i in range(count):
        _, ctx = run(node, "SET", key="k%d" % i, value="v")
        net.deliver()
        net.tick_all()
        node.engine.settle(ctx)


def test_a_read_computed_before_a_snapshot_replaced_the_store_is_not_answered_after_it():
    # The reply waits (settle) only after the snapshot is in and the commit point has passed
    # the read's seq: that commit point numbers the new leader's entries, not the INCR the read showed.
    net, old, new = cut_off_leader_with_unconfirmed_incrs(1)
    read, read_ctx = run(old, "GET", key="c")
    assert read == {"status": "OK", "value": "1"}       # the unconfirmed INCR, computed, not yet sent
    write_and_commit(net, new, 3)                       # node 2's log now runs past node 1's store
    net.cut.clear()
    for _ in range(int(FAILURE_TIMEOUT / HEARTBEAT * 2)):
        net.tick_all(HEARTBEAT / 2)
    assert old.stats["syncs_full_received"] >= 1 and old.engine.store.peek("c") is None
    assert old.core.commit >= read_ctx.wait_seq
    with pytest.raises(NoLeader):
        old.engine.settle(read_ctx)


def test_a_read_computed_on_a_store_longer_than_the_snapshot_that_replaced_it_is_not_answered_after_it():
    # The old store ran past the seq the snapshot put the store at: the read's seq is
    # above the snapshot's, and the new leader's commit point passes it only later.
    net, old, new = cut_off_leader_with_unconfirmed_incrs(5)
    read, read_ctx = run(old, "GET", key="c")
    assert read == {"status": "OK", "value": "5"}
    write_and_commit(net, new, 1)
    net.cut.clear()
    for _ in range(int(FAILURE_TIMEOUT / HEARTBEAT * 2)):
        net.tick_all(HEARTBEAT / 2)
    assert old.stats["syncs_full_received"] >= 1 and old.engine.seq < read_ctx.wait_seq
    write_and_commit(net, new, read_ctx.wait_seq - new.engine.seq + 1)
    for _ in range(4):
        if old.core.commit >= read_ctx.wait_seq:
            break
        net.tick_all(HEARTBEAT / 2)
    assert old.core.commit >= read_ctx.wait_seq
    with pytest.raises(NoLeader):
        old.engine.settle(read_ctx)


def test_a_reply_waiting_while_a_snapshot_replaces_the_store_fails_even_if_the_commit_point_passes_it():
    # The waiting reply is woken by the snapshot but gets the lock only after the new
    # leader's commit point has passed its seq (a busy machine schedules it late).
    net, old, new = cut_off_leader_with_unconfirmed_incrs(5)
    # Node 1 follows node 2 from a heartbeat that matches its committed entries only,
    # so its reads wait for a commit instead of failing at once.
    commit = old.core.commit
    old.receive([Append(2, new.core.term, commit, old.core.log.term_at(commit), (), 0)])
    assert old.core.leader_id == 2 and old.core.leader_alive(net.clock.monotonic())
    read, read_ctx = run(old, "GET", key="c")
    assert read == {"status": "OK", "value": "5"}
    result = {}

    def settle():
        try:
            old.engine.settle(read_ctx)
            result["outcome"] = "answered"
        except NoLeader:
            result["outcome"] = "NO_LEADER"

    thread = threading.Thread(target=settle, daemon=True)
    thread.start()
    wait_until(lambda: old._waiters or not thread.is_alive(), timeout=5, interval=0.001,
               message="the reply to wait for a commit")
    assert old._waiters, "the reply did not wait for a commit: %s" % result
    with old.lock:                                     # the waiter, once woken, queues for this lock
        net.cut.clear()
        net.tick_all(HEARTBEAT / 2)                    # node 2's Append: node 1 takes its snapshot
        assert old.stats["syncs_full_received"] == 1
        assert old.engine.seq < read_ctx.wait_seq      # the snapshot is shorter than the old store
        write_and_commit(net, new, read_ctx.wait_seq - new.engine.seq + 1)
        for _ in range(4):                             # node 2's next heartbeats bring node 1 its commit point
            if old.core.commit >= read_ctx.wait_seq:
                break
            net.tick_all(HEARTBEAT / 2)
        assert old.core.commit >= read_ctx.wait_seq
    thread.join(5)
    assert result == {"outcome": "NO_LEADER"}

"""The cluster driver (geomys.cluster.node) over an in-memory network: what it adds to the core.

The core decides; these tests check that the driver carries its decisions
out: a follower's store takes only committed entries, a reply waits for the
commit that covers it and fails when that can no longer come, a snapshot
replaces a store. Single-threaded: messages move only when delivered.
"""

import pytest

from geomys.errors import NoLeader
from tests.inmem import FAILURE_TIMEOUT, HEARTBEAT, run, three_nodes


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

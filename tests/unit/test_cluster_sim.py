"""The cluster's rules exercised end to end on an in-memory network.

Real ClusterNodes and Engines, a fake clock and a fake network that cuts
links, isolates nodes and drops messages: elections, replication, catch-up
and step-downs, deterministic and without sockets or sleeps.
"""

import threading

import pytest

from geomys.cluster.state import FOLLOWER, LEADER, members_record
from geomys.engine import Context
from geomys.errors import NoLeader
from tests.fakenet import FAILURE_TIMEOUT, HEARTBEAT, FakeNetwork, join, three_node_cluster


class Call:
    """Run `fn` on a thread and keep its result."""

    def __init__(self, fn) -> None:
        self.fn, self.result, self._done = fn, None, threading.Event()

    def start(self) -> "Call":
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        self.result = self.fn()
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, seconds: float) -> bool:
        return self._done.wait(seconds)

    def join(self, seconds: float = 10.0):
        assert self._done.wait(seconds), "call did not finish"
        return self.result


def fail_over(net: FakeNetwork, old_leader: int) -> None:
    """Let time pass until the survivors have elected a leader other than `old_leader` (bounded)."""
    net.run_for(6 * FAILURE_TIMEOUT, until=lambda: any(n != old_leader for n in net.leaders()))


def test_bootstrap_node_leads_and_joiners_become_members():
    net = three_node_cluster()
    assert net.leaders() == [1]
    for node in net.nodes.values():
        assert sorted(node.state.members) == [1, 2, 3]
        assert node.state.leader_id == 1 and node.state.term == 1
    assert [net.nodes[n].state.role for n in (2, 3)] == [FOLLOWER, FOLLOWER]


def test_writes_replicate_in_order_and_commit_on_a_majority():
    net = three_node_cluster()
    assert net.write(1, "SET", key="a", value="1")["status"] == "OK"
    assert net.write(1, "INCR", key="a", offset=4)["value"] == 5
    assert net.write(1, "PUSH", key="q", value="x")["status"] == "OK"
    leader = net.nodes[1]
    assert leader.safe_seq < leader.engine.seq  # nothing acknowledged before followers applied it
    net.pump()
    assert leader.safe_seq == leader.engine.seq
    for node_id in (2, 3):
        assert net.read(node_id, "a") == "5"
        assert net.nodes[node_id].engine.seq == leader.engine.seq


def test_commit_needs_only_a_majority_when_one_follower_is_cut_off():
    net = three_node_cluster()
    net.cut(1, 3)
    net.write(1, "SET", key="k", value="v")
    net.pump()
    assert net.nodes[1].safe_seq == net.nodes[1].engine.seq
    assert net.read(2, "k") == "v" and net.read(3, "k") is None


def test_follower_forwards_writes_to_the_leader():
    net = three_node_cluster()
    # The leader holds the forwarded reply until a majority applied the write,
    # so the write runs on a thread while the test drives replication.
    call = Call(lambda: net.write(2, "SET", key="f", value="1")).start()
    for _ in range(200):
        net.pump()
        if call.done():
            break
        call.wait(0.01)
    assert call.join() == {"status": "OK"}
    assert net.read(1, "f") == "1" and net.read(2, "f") == "1"


def test_consecutive_writes_of_one_read_reach_the_leader_in_one_forward_call(monkeypatch):
    net = three_node_cluster()
    follower = net.nodes[2]
    forwarded = []
    real_call = follower.peers.call

    def counting_call(address, method, request, timeout=None):
        if method == "Forward":
            forwarded.append(len(request.requests))
        return real_call(address, method, request, timeout)
    monkeypatch.setattr(follower.peers, "call", counting_call)
    requests = [{"command": "SET", "key": "p%d" % i, "value": str(i)} for i in range(5)]
    requests += [{"command": "INCR", "key": "n"}, {"command": "GET", "key": "nothing"}, {"command": "INCR", "key": "n"}]
    replies: list = []
    call = Call(lambda: follower.engine.execute_batch(requests, Context(follower.engine, "pipeline"), replies)).start()
    for _ in range(200):
        net.pump()
        if call.done():
            break
        call.wait(0.01)
    call.join()
    assert replies[:6] == [{"status": "OK"}] * 5 + [{"status": "OK", "value": 1}]
    assert replies[6]["code"] == "NOT_FOUND" and replies[7] == {"status": "OK", "value": 2}
    assert forwarded == [6, 1]          # the read in between ran on the follower
    assert net.read(1, "p4") == "4"


def test_write_without_a_known_leader_is_no_leader():
    net = three_node_cluster()
    net.down.add(1)
    net.advance(FAILURE_TIMEOUT + HEARTBEAT)
    net.isolate(2)
    net.tick_all()  # node 2 finds no majority and stays a candidate
    reply = net.write(2, "SET", key="x", value="1")
    assert reply["code"] == "NO_LEADER"


def test_smallest_live_id_becomes_leader_after_the_leader_fails():
    net = three_node_cluster()
    net.down.add(1)
    fail_over(net, 1)
    assert net.leaders() == [2]
    assert net.nodes[2].state.term == 2
    assert net.nodes[3].state.leader_id == 2 and net.nodes[3].state.role == FOLLOWER


def test_acknowledged_writes_survive_a_leader_crash():
    net = three_node_cluster()
    for i in range(20):
        net.write(1, "SET", key="k%d" % i, value=str(i))
    net.pump()
    committed = net.nodes[1].safe_seq
    assert committed == net.nodes[1].engine.seq
    net.down.add(1)
    fail_over(net, 1)
    assert net.leaders() == [2]
    assert all(net.read(2, "k%d" % i) == str(i) for i in range(20))
    assert net.write(2, "SET", key="after", value="1")["status"] == "OK"


def test_lagging_smallest_id_copies_entries_before_leading():
    net = three_node_cluster()
    net.cut(1, 2)                      # node 2 misses these; nodes 1 and 3 are a majority
    for i in range(10):
        net.write(1, "SET", key="late%d" % i, value=str(i))
    net.pump()
    assert net.nodes[1].safe_seq == net.nodes[1].engine.seq
    assert net.read(2, "late0") is None
    net.down.add(1)
    net.heal(1, 2)
    fail_over(net, 1)
    assert net.leaders() == [2]
    assert all(net.read(2, "late%d" % i) == str(i) for i in range(10))
    assert net.nodes[2].engine.seq >= net.nodes[3].engine.seq


def test_leadership_does_not_move_while_the_leader_is_healthy():
    net = three_node_cluster()
    net.cut(2, 3)          # followers cannot see each other, both still see the leader
    net.cut(1, 3)          # ... and node 3 loses the leader too
    net.advance(FAILURE_TIMEOUT + HEARTBEAT)
    for _ in range(4):
        net.nodes[1].replicate_once(2)   # the leader still reaches node 2
        net.tick_all()
    assert net.leaders() == [1]
    assert net.nodes[1].state.term == 1


def test_candidate_named_by_answers_that_refuses_is_dropped():
    net = three_node_cluster()
    net.cut(1, 3)                       # node 3 cannot reach the leader, node 2 still can
    net.advance(FAILURE_TIMEOUT + HEARTBEAT)
    net.nodes[1].replicate_once(2)      # node 2 hears from its leader
    net.nodes[3].tick()                 # node 3's election: node 2 names its live leader 1
    net.run_tasks()
    assert net.leaders() == [1]
    assert net.nodes[3].state.leader_id is None


def test_isolated_leader_steps_down_and_removes_nobody():
    net = three_node_cluster()
    net.isolate(1)
    net.advance(FAILURE_TIMEOUT + HEARTBEAT)
    net.nodes[1].tick()
    assert net.nodes[1].state.role != LEADER
    assert sorted(net.nodes[1].state.members) == [1, 2, 3]


def elect_node_2_while_1_is_away(net: FakeNetwork) -> None:
    """With node 1 isolated, let nodes 2 and 3 elect node 2, which then takes a write of 'new'."""
    net.advance(FAILURE_TIMEOUT + HEARTBEAT)
    for node_id in (2, 3):
        net.nodes[node_id].tick()
    net.run_tasks()
    net.pump()
    assert 2 in net.leaders()
    net.write(2, "SET", key="new", value="2")
    net.pump()


def test_paused_leader_steps_down_on_a_higher_term_and_resyncs():
    net = three_node_cluster()
    net.write(1, "SET", key="before", value="1")
    net.pump()
    net.isolate(1)                                   # as if SIGSTOPped
    stale = net.write(1, "SET", key="lost", value="x")   # applied locally, never replicated
    assert stale["status"] == "OK"
    elect_node_2_while_1_is_away(net)
    net.rejoin(1)
    net.nodes[1].replicate_once(2)                   # the old leader learns of term 2
    assert net.nodes[1].state.role != LEADER
    stale_seq = net.nodes[1].engine.seq
    with pytest.raises(NoLeader):
        net.nodes[1].wait(stale_seq, write_seq=stale_seq)   # its unreplicated write is never confirmed
    net.nodes[1].wait(stale_seq)                     # ... but reads there are served, as on any follower
    net.pump()
    net.run_tasks()
    net.pump()
    assert net.read(1, "lost") is None
    assert net.read(1, "new") == "2" and net.read(1, "before") == "1"
    assert net.nodes[1].state.leader_id == 2


def test_dropped_appends_are_resent_when_the_network_recovers():
    net = three_node_cluster()
    net.dropped.add("AppendEntries")
    for i in range(5):
        net.write(1, "INCR", key="c")
    net.pump()
    assert net.read(2, "c") is None
    net.dropped.clear()
    net.pump()
    assert net.read(2, "c") == "5" and net.read(3, "c") == "5"


def test_follower_behind_the_backlog_gets_a_full_snapshot():
    net = three_node_cluster()
    full_syncs = net.nodes[3].stats["syncs_full_received"]   # the join's
    net.cut(1, 3)
    for i in range(1500):                            # more than backlog_entries (1000)
        net.write(1, "SET", key="b%d" % i, value="v")
    net.pump()
    net.heal(1, 3)
    net.pump()
    net.run_tasks()
    net.pump()
    assert net.nodes[3].stats["syncs_full_received"] == full_syncs + 1
    assert net.nodes[1].stats["syncs_full_served"] >= 3
    assert net.nodes[3].engine.seq == net.nodes[1].engine.seq
    assert net.read(3, "b1499") == "v"


def test_follower_within_the_backlog_catches_up_incrementally():
    net = three_node_cluster()
    full_syncs = net.nodes[3].stats["syncs_full_received"]   # the join's
    net.cut(1, 3)
    for i in range(30):
        net.write(1, "SET", key="i%d" % i, value="v")
    net.pump()
    net.heal(1, 3)
    net.pump()
    assert net.nodes[3].stats["syncs_full_received"] == full_syncs
    assert net.read(3, "i29") == "v"


def test_silent_follower_is_removed_while_the_leader_reaches_a_majority():
    net = three_node_cluster()
    net.down.add(3)
    net.advance(FAILURE_TIMEOUT + HEARTBEAT)
    net.nodes[1].replicate_once(2)
    net.nodes[1].tick()
    net.pump()
    assert sorted(net.nodes[1].state.members) == [1, 2]
    assert sorted(net.nodes[2].state.members) == [1, 2]


def test_duplicate_node_id_is_refused():
    net = three_node_cluster()
    with pytest.raises(Exception, match="already in the cluster"):
        join(net, 2)


def test_smaller_id_that_joins_later_follows():
    net = FakeNetwork()
    net.add_node(5).bootstrap()
    join(net, 7, via=5)
    join(net, 1, via=5)
    assert net.leaders() == [5]
    assert net.nodes[1].state.leader_id == 5


def test_terms_only_increase_across_elections():
    net = three_node_cluster()
    join(net, 4)
    terms = [net.nodes[2].state.term]
    for dead in (1, 2):
        net.down.add(dead)
        fail_over(net, dead)
        net.run_for(2 * FAILURE_TIMEOUT)     # the new leader removes the dead member
        terms.append(max(n.state.term for i, n in net.nodes.items() if i not in net.down))
    assert terms == [1, 2, 3]
    assert net.leaders() == [3]
    assert sorted(net.nodes[3].state.members) == [3, 4]


def test_a_second_take_over_never_demotes_a_serving_leader():
    net = three_node_cluster()
    net.down.add(1)
    fail_over(net, 1)
    leader = net.nodes[2]
    term = leader.state.term
    leader._take_over(term)      # e.g. a late CanYouLead arriving after the election was won
    assert net.leaders() == [2] and leader.state.term == term
    net.write(2, "SET", key="still", value="leading")
    net.pump()
    assert leader.safe_seq == leader.engine.seq and net.read(3, "still") == "leading"


def test_leader_that_lost_its_majority_still_serves_reads():
    net = three_node_cluster()
    net.write(1, "SET", key="old", value="1")
    net.pump()
    net.isolate(1)
    net.write(1, "SET", key="unconfirmed", value="1")
    net.advance(FAILURE_TIMEOUT + HEARTBEAT)
    net.nodes[1].tick()
    assert net.nodes[1].state.role != LEADER
    assert net.read(1, "old") == "1"
    net.nodes[1].wait(net.nodes[1].engine.seq)       # a read's wait returns at once
    assert net.write(1, "SET", key="new", value="1")["code"] == "NO_LEADER"


def test_node_removed_while_paused_rejoins_and_converges():
    net = three_node_cluster()
    net.write(1, "SET", key="a", value="1")
    net.pump()
    net.isolate(1)                                   # as if SIGSTOPped
    net.write(1, "SET", key="unconfirmed", value="x")
    fail_over(net, 1)
    net.run_for(2 * FAILURE_TIMEOUT)                 # node 2 removes the silent node 1
    assert sorted(net.nodes[2].state.members) == [2, 3]
    net.write(2, "SET", key="b", value="2")
    net.rejoin(1)                                    # SIGCONT
    net.run_for(4 * FAILURE_TIMEOUT, until=lambda: 1 in net.nodes[2].state.members
                and net.nodes[1].engine.seq == net.nodes[2].engine.seq)
    assert sorted(net.nodes[2].state.members) == [1, 2, 3]
    assert net.nodes[1].state.role == FOLLOWER and net.nodes[1].state.leader_id == 2
    assert net.read(1, "b") == "2" and net.read(1, "a") == "1"
    assert net.read(1, "unconfirmed") is None
    assert net.nodes[1].engine.digest() == net.nodes[2].engine.digest()


def test_node_that_missed_a_join_and_an_election_finds_the_new_leader():
    net = FakeNetwork()
    net.add_node(5).bootstrap()
    for node_id in (6, 7, 8):
        join(net, node_id, via=5)
    net.isolate(7)                                   # paused: misses what follows
    join(net, 4, via=5)
    net.down.add(5)
    fail_over(net, 5)
    assert net.leaders() == [4]
    assert 4 not in net.nodes[7].state.members       # node 7 never heard of node 4
    net.rejoin(7)
    net.run_for(4 * FAILURE_TIMEOUT, until=lambda: net.nodes[7].state.leader_id == 4
                and net.nodes[7].engine.seq == net.nodes[4].engine.seq)
    assert net.nodes[7].state.leader_id == 4
    assert 4 in net.nodes[7].state.members
    assert net.nodes[7].engine.digest() == net.nodes[4].engine.digest()


def test_deposed_leader_whose_own_list_lacks_the_new_leader_still_resyncs():
    net = three_node_cluster()
    net.write(1, "SET", key="before", value="1")
    net.pump()
    net.isolate(1)                                              # as if SIGSTOPped
    elect_node_2_while_1_is_away(net)
    # Back from its pause, the old leader still believes it leads and, misled by stale
    # contact times, removes node 2 from its own list (an entry never committed).
    old = net.nodes[1]
    assert old.state.role == LEADER
    old.engine.append_records([members_record({n: a for n, a in old.state.members.items() if n != 2})])
    assert 2 not in old.state.members
    net.rejoin(1)
    net.run_for(4 * FAILURE_TIMEOUT, until=lambda: net.read(1, "new") == "2")
    assert sorted(old.state.members) == [1, 2, 3] and old.state.leader_id == 2
    assert net.read(1, "new") == "2" and net.read(1, "before") == "1"


def test_a_failed_write_that_rests_on_an_uncommitted_entry_is_not_confirmed():
    net = three_node_cluster()
    net.isolate(1)
    old = net.nodes[1]
    net.write(1, "SET", key="k", value="1")                     # applied on node 1, never committed
    retry = Context(old.engine, "retry")
    assert old.engine.execute({"command": "SET", "key": "k", "value": "1"}, retry)["code"] == "KEY_EXISTS"
    net.advance(FAILURE_TIMEOUT + HEARTBEAT)
    old.tick()
    assert old.state.role != LEADER
    # KEY_EXISTS would reveal an entry the new leader never had: the outcome is unknown.
    with pytest.raises(NoLeader):
        old.wait(retry.wait_seq, retry.write_seq)


def test_a_follower_back_from_a_cut_catches_up_from_the_backlog_and_is_counted():
    net = three_node_cluster()
    net.write(1, "SET", key="before", value="1")
    net.pump()
    full_syncs = net.nodes[3].stats["syncs_full_received"]   # its join was one
    net.isolate(3)
    for i in range(5):
        net.write(1, "SET", key="missed-%d" % i, value="x")
    net.pump()
    assert net.read(3, "missed-0") is None
    net.rejoin(3)
    net.run_for(2 * HEARTBEAT, until=lambda: net.read(3, "missed-4") == "x")
    assert net.read(3, "missed-4") == "x"
    assert net.nodes[1].stats["catchups_from_backlog"] == 1
    assert net.nodes[3].stats["syncs_full_received"] == full_syncs

"""The cluster's rules, one scenario at a time, as short scripts over the simulator.

Each test builds a simulated cluster (tests/sim/cluster.py), applies faults
and client operations step by step in simulated time, and asserts what the
nodes show through the core's public attributes. The checker verifies the
safety invariants after every step of every scenario as well. No threads,
no real-time waits, no calls into the core's private methods.
"""

from geomys.cluster.core import Append, CanYouLead, Fetch, JoinReply
from geomys.cluster.rules import CANDIDATE, FOLLOWER, LEADER

from tests.sim.cluster import FAILURE_TIMEOUT, HEARTBEAT, TICK, TIMING, Sim


def three_nodes(**options) -> Sim:
    sim = Sim(seed=7, trace=print, **options)   # the trace shows up when a test fails
    sim.form_cluster([1, 2, 3])
    return sim


def acknowledged(sim: Sim, *writes, within: float = 2 * HEARTBEAT) -> bool:
    return sim.run_until(lambda: all(w.status == "acked" for w in writes), within)


def fail_over(sim: Sim, old_leader: int) -> None:
    """Run until the others have elected a leader other than `old_leader` (bounded)."""
    assert sim.run_until(lambda: any(n != old_leader for n in sim.leaders()), 6 * FAILURE_TIMEOUT)


def in_sync(sim: Sim, node_id: int, leader: int) -> bool:
    """Whether `node_id` follows `leader` with the same store and the same commit point."""
    node, lead = sim.nodes[node_id], sim.nodes[leader]
    return node.core.leader_id == leader and node.store == lead.store and node.core.commit == lead.core.commit


def test_bootstrap_node_leads_and_joiners_become_members():
    sim = three_nodes()
    assert sim.leaders() == [1]
    for node in sim.nodes.values():
        assert sorted(node.core.members) == [1, 2, 3]
        assert node.core.leader_id == 1 and node.core.term == 1
    assert [sim.nodes[n].core.role for n in (2, 3)] == [FOLLOWER, FOLLOWER]


def test_writes_replicate_in_order_and_commit_on_a_majority():
    sim = three_nodes()
    writes = [sim.write(1) for _ in range(3)]
    leader = sim.nodes[1].core
    assert leader.commit < leader.applied                  # nothing committed before a follower has it
    assert [w.status for w in writes] == ["pending"] * 3
    assert acknowledged(sim, *writes)
    assert leader.commit == leader.applied
    assert sim.run_until(lambda: in_sync(sim, 2, 1) and in_sync(sim, 3, 1), HEARTBEAT)
    for node_id in (2, 3):
        assert sim.read(node_id).records[-3:] == [w.record for w in writes]


def test_commit_needs_only_a_majority_when_one_follower_is_cut_off():
    sim = three_nodes()
    sim.cut(1, 3)
    write = sim.write(1)
    assert acknowledged(sim, write)
    sim.run_for(HEARTBEAT)
    assert sim.read(2).sees(write)
    assert not sim.read(3).sees(write)


def test_smallest_live_id_becomes_leader_after_the_leader_fails():
    sim = three_nodes()
    sim.crash(1)
    fail_over(sim, 1)
    assert sim.leaders() == [2]
    assert sim.nodes[2].core.term == 2
    assert sim.nodes[3].core.leader_id == 2 and sim.nodes[3].core.role == FOLLOWER


def test_acknowledged_writes_survive_a_leader_crash():
    sim = three_nodes()
    writes = [sim.write(1) for _ in range(20)]
    assert acknowledged(sim, *writes)
    sim.crash(1)
    fail_over(sim, 1)
    assert sim.leaders() == [2]
    assert sim.run_until(lambda: sim.read(2).served, HEARTBEAT)
    assert all(sim.read(2).sees(w) for w in writes)
    assert acknowledged(sim, sim.write(2))


def test_lagging_smallest_id_copies_entries_before_leading():
    sim = three_nodes()
    sim.cut(1, 2)                      # node 2 misses these; nodes 1 and 3 are a majority
    writes = [sim.write(1) for _ in range(10)]
    assert acknowledged(sim, *writes)
    assert not sim.read(2).sees(writes[0])
    sim.crash(1)
    fail_over(sim, 1)
    assert sim.leaders() == [2]
    assert sim.run_until(lambda: sim.read(2).served, HEARTBEAT)
    assert all(sim.read(2).sees(w) for w in writes)


def test_leadership_does_not_move_while_the_leader_is_healthy():
    sim = three_nodes()
    sim.cut(2, 3)          # the followers cannot see each other, both still see the leader
    sim.run_for(3 * FAILURE_TIMEOUT)
    assert sim.leaders() == [1]
    assert sim.checker.leader_of_term == {1: 1}


def test_a_follower_cut_off_from_the_leader_alone_does_not_unseat_it():
    sim = three_nodes()
    sim.cut(1, 3)          # node 3 loses the leader; node 2 still hears it and names it
    sim.run_for(2 * FAILURE_TIMEOUT)
    assert sim.leaders() == [1]
    assert sim.checker.leader_of_term == {1: 1}
    assert sim.nodes[3].core.leader_id is None


def test_a_candidate_named_by_the_answers_that_refuses_is_dropped():
    sim = three_nodes()
    sim.isolate(1)
    sim.write(1)                                     # node 1 will hold an entry that may never commit
    fail_over(sim, 1)
    assert acknowledged(sim, sim.write(2))
    sim.pause(1)
    sim.reconnect(1)
    sim.crash(2)
    node3 = sim.nodes[3].core
    assert sim.run_until(lambda: node3.role == CANDIDATE, 2 * FAILURE_TIMEOUT)
    sim.resume(1)
    # Node 3 names node 1, the smallest live id; node 1 refuses to lead for it while its
    # store holds that entry, and node 3 leaves it out of its next rounds.
    assert sim.run_until(lambda: 1 in node3.suspected, FAILURE_TIMEOUT)
    assert sim.nodes[1].core.applied > sim.nodes[1].core.commit
    assert sim.run_until(lambda: len(sim.leaders()) == 1, 3 * FAILURE_TIMEOUT)   # and the election goes on


def test_isolated_leader_steps_down_and_removes_nobody():
    sim = three_nodes()
    sim.isolate(1)
    sim.run_for(FAILURE_TIMEOUT + HEARTBEAT)
    node = sim.nodes[1]
    assert node.core.role != LEADER
    assert sorted(node.core.members) == [1, 2, 3]
    assert all(e.members is None or len(e.members) == 3 for e in node.core.log.after(3, 1000))


def test_paused_leader_steps_down_on_a_higher_term_and_resyncs():
    sim = three_nodes()
    before = sim.write(1)
    assert acknowledged(sim, before)
    sim.pause(1)                                   # SIGSTOP
    fail_over(sim, 1)
    assert sim.leaders() == [1, 2]                 # node 1, paused, cannot tell it lost
    new = sim.write(2)
    assert acknowledged(sim, new)
    sim.resume(1)                                  # SIGCONT: it hears of term 2
    assert sim.run_until(lambda: in_sync(sim, 1, 2), 2 * FAILURE_TIMEOUT)
    assert sim.nodes[1].core.role == FOLLOWER
    assert sim.read(1).sees(new) and sim.read(1).sees(before)


def test_deposed_leader_whose_own_list_lacks_the_new_leader_still_resyncs():
    sim = three_nodes()
    sim.cut(1, 2)
    old = sim.nodes[1].core
    assert sim.run_until(lambda: 2 not in old.members, FAILURE_TIMEOUT + 2 * HEARTBEAT)
    sim.hold(1, 3)                                   # node 1's removal of node 2 never reaches node 3
    assert sim.run_until(lambda: 2 in sim.leaders(), 3 * FAILURE_TIMEOUT)
    new = sim.write(2)
    assert acknowledged(sim, new)
    assert sorted(old.members) == [1, 3]             # its own list still lacks the new leader
    sim.heal_network()
    assert sim.run_until(lambda: in_sync(sim, 1, 2) and sorted(old.members) == [1, 2, 3], 2 * FAILURE_TIMEOUT)
    assert sim.read(1).sees(new)


def test_a_deposed_leader_never_shows_its_unconfirmed_write():
    sim = three_nodes()
    sim.isolate(1)
    lost = sim.write(1)                            # in node 1's store, never replicated
    assert sim.read(1).served is False             # a read would reveal it before it commits
    fail_over(sim, 1)
    assert sim.run_until(lambda: 1 not in sim.leaders(), FAILURE_TIMEOUT)
    assert lost.status == "no-leader"
    assert not sim.read(1).served                  # stepped down, still holding it: no reads
    assert sim.write(1).status == "no-leader"
    new = sim.write(2)
    assert acknowledged(sim, new)
    sim.reconnect(1)
    assert sim.run_until(lambda: in_sync(sim, 1, 2), 2 * FAILURE_TIMEOUT)
    read = sim.read(1)
    assert read.served and read.sees(new) and not read.sees(lost)


def test_dropped_appends_are_resent_when_the_network_recovers():
    sim = three_nodes()
    sim.faults.drop_types.add(Append)
    writes = [sim.write(1) for _ in range(5)]
    sim.run_for(HEARTBEAT)
    assert not any(sim.read(2).sees(w) for w in writes)
    sim.faults.drop_types.clear()
    assert acknowledged(sim, *writes)
    assert sim.run_until(lambda: in_sync(sim, 2, 1) and in_sync(sim, 3, 1), 2 * HEARTBEAT)


def test_follower_behind_the_backlog_gets_a_snapshot():
    sim = three_nodes(backlog=10)
    snapshots = sim.nodes[3].snapshots_installed
    sim.cut(1, 3)
    writes = [sim.write(1) for _ in range(40)]       # more than the backlog keeps
    assert acknowledged(sim, *writes)
    sim.heal(1, 3)
    assert sim.run_until(lambda: in_sync(sim, 3, 1), 2 * FAILURE_TIMEOUT)
    assert sim.nodes[3].snapshots_installed == snapshots + 1
    assert sim.read(3).sees(writes[-1])


def test_follower_back_from_a_cut_catches_up_from_the_backlog_and_is_counted():
    sim = three_nodes(backlog=100)
    snapshots = sim.nodes[3].snapshots_installed
    catch_ups = sim.nodes[1].core.stats["catchups_from_backlog"]
    sim.isolate(3)
    writes = [sim.write(1) for _ in range(5)]
    assert acknowledged(sim, *writes)
    sim.run_for(2 * HEARTBEAT)                       # away for a while, not long enough to be removed
    assert not sim.read(3).sees(writes[0])
    sim.reconnect(3)
    assert sim.run_until(lambda: in_sync(sim, 3, 1), 2 * HEARTBEAT)
    assert sim.read(3).sees(writes[-1])
    stats = sim.nodes[1].core.stats                  # counted once its answer reaches the leader
    assert sim.run_until(lambda: stats["catchups_from_backlog"] == catch_ups + 1, HEARTBEAT)
    assert sim.nodes[3].snapshots_installed == snapshots


def test_silent_follower_is_removed_while_the_leader_reaches_a_majority():
    sim = three_nodes()
    sim.crash(3)
    assert sim.run_until(lambda: sorted(sim.nodes[2].core.members) == [1, 2], FAILURE_TIMEOUT + 2 * HEARTBEAT)
    assert sorted(sim.nodes[1].core.members) == [1, 2]


def test_a_node_stopping_cleanly_is_removed_at_once_and_can_come_back():
    sim = three_nodes()
    sim.stop(3)                                      # SIGTERM: it asks the leader to remove it
    assert sim.run_until(lambda: sorted(sim.nodes[1].core.members) == [1, 2] and 3 not in sim.nodes, HEARTBEAT)
    assert sim.run_until(lambda: sim.nodes[1].core.commit >= sim.nodes[1].core.members_seq, HEARTBEAT)
    back = sim.restart(3, keep_file=True)            # started again with -join, under a new id
    assert sim.run_until(lambda: sorted(sim.nodes[1].core.members) == [1, 2, back.id] and in_sync(sim, back.id, 1),
                         4 * HEARTBEAT)


def test_a_node_id_still_in_the_cluster_is_refused_until_the_old_node_is_removed():
    sim = three_nodes()
    sim.crash(2)
    again = sim.join(2, via=1)                       # restarted at once with the same id
    assert sim.run_until(lambda: again.join_refused is not None, HEARTBEAT)
    assert "already in the cluster" in again.join_refused
    assert sim.run_until(lambda: 2 not in sim.nodes[1].core.members, FAILURE_TIMEOUT + 2 * HEARTBEAT)
    sim.join(2, via=3)                               # through a follower, which redirects it
    assert sim.run_until(lambda: sorted(sim.nodes[1].core.members) == [1, 2, 3], 2 * HEARTBEAT)


def test_smaller_id_that_joins_later_follows():
    sim = Sim(seed=7, trace=print)
    sim.form_cluster([5, 7, 1])
    assert sim.leaders() == [5]
    assert sim.nodes[1].core.leader_id == 5 and sim.checker.leader_of_term == {1: 5}


def test_terms_only_increase_across_elections():
    sim = three_nodes()
    sim.join(4, via=1)
    assert sim.run_until(lambda: 4 in sim.nodes[1].core.members, 2 * HEARTBEAT)
    terms = [sim.nodes[2].core.term]
    for dead in (1, 2):
        sim.crash(dead)
        fail_over(sim, dead)
        sim.run_for(2 * FAILURE_TIMEOUT)     # the new leader removes the dead member
        terms.append(max(n.core.term for n in sim.nodes.values()))
    assert terms == [1, 2, 3]
    assert sim.leaders() == [3]
    assert sorted(sim.nodes[3].core.members) == [3, 4]


def test_a_late_can_you_lead_never_demotes_a_serving_leader():
    sim = three_nodes()
    sim.crash(1)
    fail_over(sim, 1)
    term = sim.nodes[2].core.term
    sim.deliver(3, 2, CanYouLead(3, term))         # e.g. a duplicate from the election just won
    sim.run_for(HEARTBEAT)
    assert sim.leaders() == [2] and sim.nodes[2].core.term == term
    write = sim.write(2)
    assert acknowledged(sim, write)
    assert sim.run_until(lambda: sim.read(3).sees(write), HEARTBEAT)


def test_node_removed_while_away_rejoins_and_converges():
    sim = three_nodes()
    first = sim.write(1)
    assert acknowledged(sim, first)
    sim.isolate(1)
    unconfirmed = sim.write(1)
    fail_over(sim, 1)
    assert sim.run_until(lambda: sorted(sim.nodes[2].core.members) == [2, 3], 2 * FAILURE_TIMEOUT)
    second = sim.write(2)
    assert acknowledged(sim, second)
    sim.reconnect(1)
    assert sim.run_until(lambda: 1 in sim.nodes[2].core.members and in_sync(sim, 1, 2), 4 * FAILURE_TIMEOUT)
    assert sorted(sim.nodes[2].core.members) == [1, 2, 3]
    assert sim.nodes[1].core.role == FOLLOWER
    read = sim.read(1)
    assert read.sees(first) and read.sees(second) and not read.sees(unconfirmed)


def test_node_that_missed_a_join_and_an_election_finds_the_new_leader():
    sim = Sim(seed=7, trace=print)
    sim.form_cluster([5, 6, 7, 8])
    sim.pause(7)                                     # misses what follows
    sim.join(4, via=5)
    assert sim.run_until(lambda: 4 in sim.nodes[5].core.members, 2 * HEARTBEAT)
    sim.crash(5)
    fail_over(sim, 5)
    assert sim.leaders() == [4]
    assert 4 not in sim.nodes[7].core.members        # node 7 never heard of node 4
    sim.resume(7)
    assert sim.run_until(lambda: in_sync(sim, 7, 4), 4 * FAILURE_TIMEOUT)
    assert 4 in sim.nodes[7].core.members


def test_a_deposed_leader_that_takes_over_again_first_drops_its_unconfirmed_write():
    sim = three_nodes()
    sim.isolate(1)
    lost = sim.write(1)                              # node 1 holds an entry that never commits
    fail_over(sim, 1)
    new = sim.write(2)
    assert acknowledged(sim, new)
    sim.reconnect(1)
    sim.crash(2)                                     # before node 1 could resync from it
    # Node 1, the smallest live id, takes over; node 3's log replaces the entry its store holds.
    assert sim.run_until(lambda: sim.leaders() == [1], 6 * FAILURE_TIMEOUT)
    assert sim.run_until(lambda: sim.read(1).served, HEARTBEAT)
    read = sim.read(1)
    assert read.sees(new) and not read.sees(lost)
    assert acknowledged(sim, sim.write(1))


def test_a_restarted_node_never_shows_what_its_file_held_uncommitted():
    sim = three_nodes()
    sim.isolate(1)
    lost = sim.write(1)
    sim.crash(1)
    sim.reconnect(1)
    fail_over(sim, 1)
    node = sim.restart(1, keep_file=True)            # its store still holds `lost`
    assert lost.record in [e.record for e in node.store]
    assert not sim.read(node.id).served
    assert sim.run_until(lambda: node.id in sim.nodes[2].core.members and in_sync(sim, node.id, 2),
                         4 * FAILURE_TIMEOUT)
    assert not sim.read(node.id).sees(lost)


def test_a_join_whose_answer_was_lost_is_taken_on_the_retry():
    sim = three_nodes()
    sim.faults.drop_types.add(JoinReply)
    node = sim.join(4, via=1)
    sim.run_for(HEARTBEAT / 2)
    sim.faults.drop_types.clear()
    assert node.joining                              # accepted by the leader, but it does not know
    assert sim.run_until(lambda: 4 in sim.nodes[1].core.members and in_sync(sim, 4, 1), 4 * HEARTBEAT)


def test_a_learner_that_takes_no_entries_does_not_become_a_member():
    sim = three_nodes()
    node = sim.join(4, via=1)
    assert sim.run_until(lambda: not node.joining, HEARTBEAT)
    sim.cut(1, 4)                                    # accepted, then cut off: it has nothing
    sim.run_for(2 * HEARTBEAT)
    assert sorted(sim.nodes[1].core.members) == [1, 2, 3]
    sim.heal(1, 4)
    assert sim.run_until(lambda: 4 in sim.nodes[1].core.members, 4 * HEARTBEAT)


def test_a_take_over_whose_copy_is_lost_gives_up_and_succeeds_later():
    sim = three_nodes()
    sim.cut(1, 2)                                    # node 2 misses these writes
    writes = [sim.write(1) for _ in range(5)]
    assert acknowledged(sim, *writes)
    sim.crash(1)
    sim.faults.drop_types.add(Fetch)                 # node 2 cannot copy what node 3 has
    sim.run_for(2 * FAILURE_TIMEOUT)
    assert sim.leaders() == []
    sim.faults.drop_types.clear()
    fail_over(sim, 1)
    assert sim.leaders() == [2]
    assert sim.run_until(lambda: sim.read(2).served, HEARTBEAT)
    assert all(sim.read(2).sees(w) for w in writes)


def test_a_node_whose_copy_removes_it_from_the_membership_does_not_lead():
    sim = three_nodes()
    sim.cut(1, 2)
    sim.pause(1)                                     # nodes 2 and 3 lose their leader
    node2 = sim.nodes[2].core
    assert sim.run_until(lambda: node2.role == CANDIDATE and node2.leader_id == 2, 3 * FAILURE_TIMEOUT)
    sim.hold(2, 3)                                   # node 2's NewLeader waits on the way to node 3
    sim.resume(1)                                    # back, node 1 removes node 2, silent to it
    assert sim.run_until(lambda: sorted(sim.nodes[3].core.members) == [1, 3], HEARTBEAT)
    sim.release(2, 3)                                # node 3 accepts term 2 with that entry in its log
    sim.run_for(HEARTBEAT)                           # the checker: no leader outside its membership
    assert 2 not in sim.leaders()
    sim.heal(1, 2)
    assert sim.run_until(lambda: sim.leaders() and all(sorted(n.core.members) == [1, 2, 3]
                                                       for n in sim.nodes.values()), 4 * FAILURE_TIMEOUT)


def test_a_learner_whose_leader_fails_joins_the_next_leader():
    sim = three_nodes()
    node = sim.join(4, via=1)
    assert sim.run_until(lambda: node.snapshots_installed == 1, HEARTBEAT)   # it knows the members now
    sim.cut(1, 4)                                    # it stays a learner of node 1...
    sim.crash(1)                                     # ...which fails; node 2 never heard of node 4
    fail_over(sim, 1)
    assert sim.leaders() == [2] and 4 not in sim.nodes[2].core.learners
    assert sim.run_until(lambda: 4 in sim.nodes[2].core.members and in_sync(sim, 4, 2), 2 * FAILURE_TIMEOUT)


def test_a_take_over_that_needs_a_snapshot_and_then_entries_completes():
    sim = three_nodes(backlog=10)
    sim.cut(1, 2)                                    # node 2 falls behind node 3's backlog
    writes = [sim.write(1) for _ in range(40)]
    assert acknowledged(sim, *writes)
    sim.run_for(HEARTBEAT)                           # node 3 commits them and trims its log
    writes += [sim.write(1) for _ in range(5)]
    assert acknowledged(sim, *writes)
    sim.cut(1, 3)                                    # node 3 never hears the last commit point
    sim.crash(1)
    node3 = sim.nodes[3].core
    assert node3.applied < node3.log.last_seq        # node 3's store lags its log
    fail_over(sim, 1)
    assert sim.leaders() == [2]
    assert sim.nodes[2].snapshots_installed == 2     # its join's, and node 3's during the take-over
    assert sim.run_until(lambda: sim.read(2).served, HEARTBEAT)
    assert all(sim.read(2).sees(w) for w in writes)


def test_a_new_leader_whose_first_appends_go_unanswered_does_not_send_a_snapshot():
    sim = three_nodes(backlog=10)
    writes = [sim.write(1) for _ in range(40)]      # past the backlog: every log is trimmed
    assert acknowledged(sim, *writes)
    sim.run_for(HEARTBEAT)
    snapshots = sim.nodes[3].snapshots_installed
    sim.crash(1)
    assert sim.run_until(lambda: sim.leaders() == [2], 6 * FAILURE_TIMEOUT)
    sim.hold(2, 3)                                   # a slow link: node 2's first Appends wait...
    sim.run_for(2 * HEARTBEAT)                       # ...longer than a heartbeat interval
    sim.release(2, 3)
    assert sim.run_until(lambda: in_sync(sim, 3, 2), 2 * HEARTBEAT)
    assert sim.nodes[3].snapshots_installed == snapshots   # its log was the leader's all along


# -- linearizable reads (read index) ---------------------------------------------------------

def answered(sim: Sim, *reads, within: float = 2 * HEARTBEAT) -> bool:
    return sim.run_until(lambda: all(r.status != "pending" for r in reads), within)


def test_a_linearizable_read_on_a_follower_sees_a_write_acknowledged_before_it():
    sim = three_nodes()
    sim.hold(1, 3)                                   # node 3 lags: its local read is stale
    write = sim.write(1)
    assert acknowledged(sim, write)
    assert not sim.read(3).sees(write)
    read = sim.read_consistent(3)
    sim.run_for(HEARTBEAT / 2)
    assert read.status == "pending"                  # it waits for the store to reach the index
    sim.release(1, 3)
    assert answered(sim, read)
    assert read.status == "served" and read.sees(write)


def test_a_paused_leader_answers_a_linearizable_read_with_the_new_value_or_an_error():
    sim = three_nodes()
    sim.pause(1)
    fail_over(sim, 1)
    write = sim.write(sim.leaders()[-1])
    assert acknowledged(sim, write)
    read = sim.read_consistent(1)                    # sent while node 1 is frozen...
    sim.resume(1)                                    # ...and taken before it hears of node 2
    assert answered(sim, read)
    assert read.status == "failed" or read.sees(write)
    assert not sim.nodes[1].core.is_leader


def test_a_follower_cut_off_from_its_leader_fails_a_linearizable_read_in_bounded_time():
    sim = three_nodes()
    sim.cut(1, 3)
    write = sim.write(1)
    assert acknowledged(sim, write)
    read = sim.read_consistent(3)
    assert answered(sim, read, within=TIMING.read_timeout + 2 * TICK)
    assert read.status == "failed"
    sim.heal(1, 3)
    read = sim.read_consistent(3)
    assert answered(sim, read) and read.status == "served" and read.sees(write)


def test_reads_arriving_together_share_confirmations():
    """The first read of a burst starts a round; all that arrive while it is in flight share the next."""
    sim = three_nodes()
    for node_id in (1, 2):                           # on the leader, then through a follower
        stats = sim.nodes[node_id].core.stats
        rounds = stats["read_index_rounds"]
        reads = [sim.read_consistent(node_id) for _ in range(50)]
        assert answered(sim, *reads)
        assert all(r.status == "served" for r in reads)
        assert stats["read_index_rounds"] - rounds == 2


def test_a_new_leader_gives_no_read_index_before_an_entry_of_its_term_commits():
    sim = three_nodes()
    writes = [sim.write(1) for _ in range(5)]
    assert acknowledged(sim, *writes)
    sim.crash(1)
    assert sim.run_until(lambda: sim.leaders() == [2], 6 * FAILURE_TIMEOUT)
    new = sim.nodes[2].core
    assert new.log.term_at(new.commit) != new.term   # its first entry is not committed yet
    reads = [sim.read_consistent(2), sim.read_consistent(3)]
    assert answered(sim, *reads)
    assert all(r.status == "served" and r.index and new.log.term_at(r.index) == new.term for r in reads)
    assert all(r.sees(w) for r in reads for w in writes)

"""The checker catches what it is there to catch: histories that break an invariant.

Nodes here are stand-ins with the attributes the checker reads, so each test
builds exactly the broken history it names.
"""

from types import SimpleNamespace

import pytest

from geomys.cluster.log import Entry, Log
from geomys.cluster.rules import FOLLOWER, LEADER, NodeAddress

from tests.sim.checker import Checker, InvariantViolation
from tests.sim.cluster import ConsistentRead, Write


class Node:
    """What the checker reads of a simulated node: its id, its store and its core's attributes."""

    def __init__(self, node_id, store, role, term, commit, members) -> None:
        log = Log(100, 1 << 20)
        for entry in store:
            log.append(entry)
        self.id, self.store = node_id, list(store)
        self.core = SimpleNamespace(role=role, term=term, log=log, applied=len(store),
                                    commit=len(store) if commit is None else commit,
                                    members={n: NodeAddress(n, "c", "g") for n in members})


def node(node_id, store, role=FOLLOWER, term=1, commit=None, members=(1, 2, 3)) -> Node:
    return Node(node_id, store, role, term, commit, members)


def entries(*records, term=1):
    return [Entry(seq, term, record) for seq, record in enumerate(records, 1)]


def test_two_leaders_of_one_term_are_caught():
    checker = Checker()
    checker.after_step(node(1, [], role=LEADER, term=2), 1.0)
    with pytest.raises(InvariantViolation, match="leads term 2, which node 1 led already"):
        checker.after_step(node(2, [], role=LEADER, term=2), 2.0)


def test_two_entries_committed_at_one_seq_are_caught():
    checker = Checker()
    checker.after_step(node(1, entries(b"a", b"b")), 1.0)
    with pytest.raises(InvariantViolation, match="committed entry 2"):
        checker.after_step(node(2, entries(b"a", b"c")), 2.0)


def test_a_later_leader_without_an_acknowledged_write_is_caught():
    checker = Checker()
    checker.after_step(node(1, entries(b"a", b"b")), 1.0)
    checker.on_ack(Write(b"b", 1, seq=2, term=1, status="acked"))
    checker.after_step(node(1, entries(b"a", b"b")), 1.0)
    with pytest.raises(InvariantViolation, match="lacks write b"):
        checker.after_step(node(2, entries(b"a"), role=LEADER, term=2), 2.0)


def test_a_term_going_back_is_caught():
    checker = Checker()
    same = node(1, [], term=3)
    checker.after_step(same, 1.0)
    same.core.term = 2
    with pytest.raises(InvariantViolation, match="term went back"):
        checker.after_step(same, 2.0)


def test_a_served_read_of_an_entry_that_never_committed_is_caught_at_the_end():
    checker = Checker()
    deposed = node(1, entries(b"a", b"lost"), commit=1)
    checker.on_read(deposed, 1.0)
    final = node(2, entries(b"a", b"kept"), role=LEADER, term=2, members=(2,))
    with pytest.raises(InvariantViolation, match="saw entry 2 .*lost.*never committed"):
        checker.final_check({2: final}, final)


def test_an_apply_that_skips_an_entry_is_caught():
    with pytest.raises(InvariantViolation, match="apply entry 3 after entry 1"):
        Checker().check_apply(node(1, entries(b"a")), entries(b"a", b"b", b"c")[2:])


def test_a_linearizable_read_missing_a_write_acknowledged_before_it_started_is_caught():
    checker = Checker()
    checker.on_ack(Write(b"b", 2, seq=2, term=2, status="acked", acked_at=1.0))
    fresh = ConsistentRead(1, started=2.0, ended=2.5, status="served", store=entries(b"a", b"b"), length=2)
    checker.on_consistent_read(fresh)
    concurrent = ConsistentRead(1, started=0.5, ended=2.5, status="served", store=entries(b"a"), length=1)
    checker.on_consistent_read(concurrent)           # the write was acknowledged after it started
    stale = ConsistentRead(1, started=2.0, ended=2.5, status="served", store=entries(b"a"), length=1)
    with pytest.raises(InvariantViolation, match="linearizable read on node 1 started at t=2.000 .* misses write b"):
        checker.on_consistent_read(stale)

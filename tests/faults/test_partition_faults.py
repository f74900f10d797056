"""Network partitions in a three-node cluster of real processes (docs/reliability.md, scenarios 12 and 13).

Each node runs under a uid of its own, and an nftables table cuts one node
off from the others' gRPC traffic, both ways, while every client port stays
reachable (tests/faults/partition.py). Writer threads stay on the node that
is cut off, sending SETs and INCRs to it, and readers GET those keys from
every node all along (tests/faults/reads.py); a second load writes through
every node. After healing, no acknowledged write may be lost on any node, and
no read from any node may have shown a write that never committed. Every
wait is bounded; the only sleeps are the chosen lengths of cuts and calms.
"""

import contextlib
import random
import time
from typing import Optional

import pytest

from tests.cluster_helpers import FAILURE_TIMEOUT, Cluster, WriteLoad
from tests.faults.conftest import FaultSettings, require_load
from tests.faults.partition import Firewall, UidNode, UidReservation
from tests.faults.reads import Read, ReadRecorder, dirty_reads
from tests.faults.test_cluster_faults import ALL, converge, load_before_fault, lost_writes, running_ports, soak_seed

pytestmark = pytest.mark.integration

WRITERS = 4                    # threads that stay on the node that is cut off
BACKGROUND_CLIENTS = 8         # threads writing through every node, to keep the majority busy
WRITER_TIMEOUT = 3.0           # above rpc_timeout (2 s): a cut-off node's own answer is seen
MIN_WRITER_ACKS = 100          # acknowledged through the node to be cut off, before the cut
MIN_READS_WHILE_CUT = 20       # GETs the cut-off node replies to while cut off (its client port is open)
CUT_SECONDS = 3 * FAILURE_TIMEOUT
CALM_RANGE = (0.5, 1.5)        # repeated partitions: seconds of calm before each cut
CUT_RANGE = (0.5, 3 * FAILURE_TIMEOUT)   # and the length of each cut, some shorter than a failure timeout
MIN_CUTS = 2
# The run's size, read at collection: the long variant outlasts pytest's usual per-test timeout.
SIZE = FaultSettings()


class DirtyRead(AssertionError):
    """A read showed a write that never committed."""



class PartitionRun:
    """A cluster whose nodes run under uids of their own, with the loads, readers and cuts of one scenario.

    `start` launches a load through every node and readers on every node;
    each `cut_off` puts a new writer on one node, cuts that node off, holds
    the cut and heals it; `check` converges the cluster and judges every
    acknowledged write and every read.
    """

    def __init__(self, cluster: Cluster, firewall: Firewall) -> None:
        self.cluster = cluster
        self.firewall = firewall
        self.writers: list[WriteLoad] = []
        self.background: Optional[WriteLoad] = None
        self.readers = ReadRecorder(cluster, ALL, self.target_keys)
        self.cut_times: list[float] = []             # time.monotonic() of every cut
        self.figures: dict = {}                      # set by `check`

    def target_keys(self) -> list[str]:
        """What the readers GET: the counters of the newest writer and the SET each of its threads is sending."""
        if not self.writers:
            return []
        writer = self.writers[-1]
        sets = [op["key"] for op in list(writer.sending) if op is not None and op["command"] == "SET"]
        return [writer.counter_key(t) for t in range(WRITERS)] + sets

    def start(self) -> int:
        """Start the load through every node and the readers; return the writes acknowledged before a fault."""
        self.background = WriteLoad(running_ports(self.cluster), threads=BACKGROUND_CLIENTS, prefix="all",
                                    key_exists_confirms=False).start()
        self.readers.start()
        return load_before_fault(self.background)

    def stop(self) -> None:
        """Stop every load and the readers (the cuts are healed by the fixture)."""
        for load in [self.background, *self.writers]:
            if load is not None:
                load.stop()
        self.readers.stop()

    def cut_off(self, victim: int, hold: float, prove: bool) -> dict:
        """Put a writer on `victim`, cut it off for `hold` seconds at least, heal; return the round's figures.

        With `prove`, the cut also lasts until the majority side shows it
        stopped hearing from `victim` (a new leader among the others, or
        `victim` removed from the membership), which the round asserts.
        """
        cluster = self.cluster
        others = [n for n in ALL if n != victim]
        leader = cluster.wait_leader()
        term_before = cluster.info(leader)["term"]
        writer = WriteLoad(lambda: [cluster.port(victim)], threads=WRITERS, prefix="cut%d" % len(self.writers),
                           sticky=True, socket_timeout=WRITER_TIMEOUT, key_exists_confirms=False)
        self.writers.append(writer.start())
        with contextlib.suppress(AssertionError):     # too few within the bound: require_load says so
            writer.wait_acked(MIN_WRITER_ACKS)
        require_load(writer.acked, MIN_WRITER_ACKS, "writes acknowledged through node %d" % victim)
        majority_acked = self.background.acked
        endpoints = {n: cluster.nodes[n].endpoint() for n in ALL}
        self.firewall.isolate(endpoints[victim], [endpoints[n] for n in others])
        cut_at = time.monotonic()
        self.cut_times.append(cut_at)
        noticed = None
        if prove and victim == leader:
            cluster.wait_leader(ids=others, not_in=[victim])
            noticed = time.monotonic() - cut_at
        elif prove:
            cluster.wait_members(others)                  # the leader removed the node it no longer hears
            noticed = time.monotonic() - cut_at
        time.sleep(max(cut_at + hold - time.monotonic(), 0))    # the fault's chosen length
        # The writer is told to stop before the heal: at most the operation each thread has
        # in flight ends after it, and nothing is sent to its keys later, so the final state
        # shows what of it committed.
        writer.halt()
        dropped = self.firewall.heal()
        healed_at = time.monotonic()
        writer.stop()
        reads_while_cut = self.readers.replied(victim, cut_at, healed_at)
        answered_while_cut = self.readers.answered(victim, cut_at, healed_at)
        figures = dict(victim=("leader" if victim == leader else "follower"), cut_seconds=round(healed_at - cut_at, 2),
                       writer_acked_before_cut=writer.acked, reads_by_cut_node_while_cut=reads_while_cut,
                       reads_it_answered_with_data=answered_while_cut,
                       packets_dropped=dropped,
                       majority_acked_while_cut=self.background.acked - majority_acked)
        if prove:
            figures.update(noticed_seconds=round(noticed, 2))
            require_load(reads_while_cut, MIN_READS_WHILE_CUT, "GETs node %d replied to while cut off" % victim)
            assert dropped > 0, "the firewall dropped no packet: node %d was not cut off" % victim
            assert self.background.acked > majority_acked, \
                "the majority acknowledged nothing while node %d was cut off" % victim
            if victim == leader:
                assert cluster.info(others[0])["term"] > term_before
        cluster.wait_members(ALL, timeout=10 * FAILURE_TIMEOUT + 10)   # the cut-off node is back
        return figures

    def cut_number(self, read: Read) -> int:
        """Which cut (counting from 1) came last before `read` was answered (0: none)."""
        return sum(1 for at in self.cut_times if at <= read.answered)

    def since_cut(self, read: Read) -> float:
        """Seconds from the last cut before `read` to its answer (negative: before the first cut)."""
        return read.answered - self.cut_times[max(self.cut_number(read) - 1, 0)]

    def check(self) -> dict:
        """Converge, then judge every acknowledged write and every read; return the figures.

        A lost write fails the scenario (AssertionError); a dirty read raises
        DirtyRead, naming the first few.
        """
        self.stop()
        _, converged = converge(self.cluster, ALL, self.background)
        loads = [self.background, *self.writers]
        lost = lost_writes(self.cluster, loads, ALL)
        reads = self.readers.distinct()
        keys = sorted({r.key for r in reads} | {k for w in self.writers for k in w.all_keys()})
        finals = {n: self.cluster.data(n, keys) for n in ALL}
        final = finals[ALL[0]]
        assert all(data == final for data in finals.values()), "the nodes converged but hold different data"
        counters = {w.counter_key(t) for w in self.writers for t in range(WRITERS)}
        dirty = dirty_reads(reads, final, counters)
        # A retried SET answered KEY_EXISTS by a key that is absent at the end showed a write too.
        revealed = sorted((w.prefix, k) for w in self.writers for k in w.confirmed_sets if final.get(k) is None)
        figures = dict(acked_writes=sum(load.acked for load in loads), gets_answered=self.readers.answered(),
                       reads_distinct=len(reads), read_errors=dict(self.readers.errors),
                       digests_equal_seconds=round(converged, 2), lost_writes=len(lost), dirty_reads=len(dirty),
                       dirty_reads_by_node={str(n): sum(1 for r in dirty if r.node_id == n) for n in ALL},
                       key_exists_of_uncommitted=len(revealed))
        if dirty:
            figures.update(first_dirty_read_after_its_cut_seconds=round(min(map(self.since_cut, dirty)), 2))
        self.figures = figures
        assert not lost, "%d acknowledged writes lost, e.g. %s" % (len(lost), lost[:5])
        if dirty or revealed:
            shown = ["node %d, %.2f s after cut %d: GET %s -> %r, finally %r" % (
                r.node_id, self.since_cut(r), self.cut_number(r), r.key, r.value, final.get(r.key))
                for r in sorted(dirty, key=lambda r: r.answered)[:5]]
            raise DirtyRead("%d reads showed writes that never committed, e.g. %s; %d retried SETs answered "
                            "KEY_EXISTS for keys absent at the end, e.g. %s" % (len(dirty), shown, len(revealed),
                                                                                 revealed[:3]))
        return figures


@pytest.fixture
def partition_run(tmp_path, nftables):
    """A started PartitionRun; at teardown the cut is healed, the loads stopped and every process killed."""
    reservation = UidReservation(len(ALL))
    uid_of = dict(zip(ALL, reservation.uids))
    firewall = Firewall()

    def node(workdir, node_id: int, **config) -> UidNode:
        return UidNode(workdir, uid_of[node_id], node_id=node_id, **config)
    cluster = Cluster(tmp_path / "cluster", process=node)
    run = PartitionRun(cluster, firewall)
    try:
        cluster.start(ids=ALL)
        yield run
    finally:
        firewall.heal()
        with contextlib.suppress(AssertionError):     # a failed test may leave loads that do not stop
            run.stop()
        cluster.cleanup()
        reservation.release()


def record(figures, run: PartitionRun) -> None:
    """Add the final figures of `run` to the scenario's (even when it failed on a dirty read)."""
    figures.add(**run.figures)


# -- 12. one node cut off: the leader, a follower ----------------------------------------------------

def test_leader_cut_off_from_both_followers_loses_no_acknowledged_write_and_no_node_shows_an_uncommitted_one(
        partition_run, figures):
    """Cut the leader off from both followers (gRPC, both ways) under load, then heal.

    Writers keep sending to the old leader and readers read its keys from
    every node. The followers elect a new leader; the old one, its client
    port still open, answers reads meanwhile. After the heal it is a member
    again, and every node holds every acknowledged write with equal digests;
    no read on any node showed a write that never committed.
    """
    run = partition_run
    acked_before = run.start()
    leader = run.cluster.wait_leader()
    try:
        figures.add(acked_before_fault=acked_before, **run.cut_off(leader, CUT_SECONDS, prove=True))
        run.check()
    finally:
        record(figures, run)


def test_follower_cut_off_from_the_others_loses_no_acknowledged_write_and_no_node_shows_an_uncommitted_one(
        partition_run, figures):
    """Cut a follower off (gRPC, both ways) under load, then heal: the same checks as for the leader.

    The leader keeps its majority and removes the silent follower; writes to
    the follower fail meanwhile, its reads go on from its own copy. After the
    heal it joins again and catches up.
    """
    run = partition_run
    acked_before = run.start()
    leader = run.cluster.wait_leader()
    follower = max(n for n in ALL if n != leader)
    try:
        figures.add(acked_before_fault=acked_before, **run.cut_off(follower, CUT_SECONDS, prove=True))
        run.check()
    finally:
        record(figures, run)


# -- 13. repeated partitions -----------------------------------------------------------------------

@pytest.mark.timeout(300 + 3 * SIZE.partition_seconds)
def test_repeated_partitions_of_random_nodes_lose_nothing_and_show_no_uncommitted_write(
        partition_run, settings, figures):
    """For settings.partition_seconds, cut a node off for 0.5-3 s after a calm of 0.5-1.5 s.

    The cuts take the leader and a random follower in turn (which comes
    first is random).

    One cut at a time, and before each the cluster is whole again (three
    members agreeing on a leader). Some cuts are shorter than a failure
    timeout (the leader may keep its place), others long enough for an
    election. The seed is printed and recorded; GEOMYS_FAULT_SEED replays
    the choices.
    """
    seed = soak_seed()
    print("repeated-partition seed: %d (GEOMYS_FAULT_SEED=%d replays its choices)" % (seed, seed))
    figures.add(seed=str(seed))
    rng = random.Random(seed)
    run = partition_run
    try:
        figures.add(acked_before_fault=run.start())
        started = time.monotonic()
        cuts = {"leader": 0, "follower": 0}
        leader_first = rng.random() < 0.5
        while time.monotonic() - started < settings.partition_seconds:
            leader = run.cluster.wait_leader()
            time.sleep(rng.uniform(*CALM_RANGE))                   # calm: the load runs undisturbed
            cut_leader = leader_first == (sum(cuts.values()) % 2 == 0)
            victim = leader if cut_leader else rng.choice([n for n in ALL if n != leader])
            found = run.cut_off(victim, rng.uniform(*CUT_RANGE), prove=False)
            cuts[found["victim"]] += 1
            figures.add(cut_node=found["victim"], cut_seconds=found["cut_seconds"],
                        packets_dropped=found["packets_dropped"])
        figures.add(run_seconds=round(time.monotonic() - started, 1), leader_cuts=cuts["leader"],
                    follower_cuts=cuts["follower"])
        require_load(sum(cuts.values()), MIN_CUTS, "cuts made")
        run.check()
    finally:
        record(figures, run)

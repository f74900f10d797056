"""Faults injected into a three-node cluster of real processes under write load (docs/cluster.md, "Guarantees").

Scenarios 7 to 11 of the fault-injection suite: the leader killed (kill -9),
the leader paused (SIGSTOP/SIGCONT), a lagging node with the smallest id
left to lead, catch-up by snapshot and by backlog, and a soak of random
faults. Twenty client threads spread over the nodes write unique keys and
per-thread counters and record every acknowledged write
(tests/cluster_helpers.WriteLoad); afterwards every node must hold all of
them and the nodes' digests must match. A scenario that saw fewer than
MIN_ACKED_BEFORE_FAULT acknowledged writes before its fault fails as
vacuous. Every wait is bounded; the only sleeps are the chosen lengths of
faults and of the quiet spells between them.
"""

import contextlib
import os
import random
import time
from collections import Counter

import pytest

from tests.cluster_helpers import FAILURE_TIMEOUT, Cluster, ClusterMonitor, WriteLoad, try_info
from tests.faults.conftest import MIN_ACKED_BEFORE_FAULT, FaultSettings, require_load
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

CLIENTS = 20                          # client threads of every load, spread over the running nodes
ALL = (1, 2, 3)
# The run's size, read at collection: the long variant outlasts pytest's usual per-test timeout.
SIZE = FaultSettings()


@pytest.fixture
def make_cluster(tmp_path):
    """Factory: make_cluster(ids, **options) -> a started Cluster; every process is killed at teardown."""
    started = []

    def factory(ids=ALL, **options) -> Cluster:
        cluster = Cluster(tmp_path / ("cluster%d" % len(started)), **options)
        started.append(cluster)
        return cluster.start(ids=ids)

    yield factory
    for cluster in started:
        cluster.cleanup()


def running_ports(cluster: Cluster):
    """What a load's clients connect to: every node that is neither dead nor paused, as it is now."""
    return lambda: [cluster.port(n) for n in cluster.running_ids()]


def start_load(cluster: Cluster, prefix: str, **options) -> WriteLoad:
    return WriteLoad(running_ports(cluster), threads=CLIENTS, prefix=prefix, **options).start()


def load_before_fault(load: WriteLoad, timeout: float = 30.0) -> int:
    """Let the load reach MIN_ACKED_BEFORE_FAULT acknowledged writes; fail as vacuous if it cannot."""
    with contextlib.suppress(AssertionError):   # too few within the bound: require_load says so
        load.wait_acked(MIN_ACKED_BEFORE_FAULT, timeout)
    acked = load.acked
    require_load(acked)
    return acked


def lost_writes(cluster: Cluster, loads: list[WriteLoad], ids) -> list[str]:
    """Every acknowledged write of `loads` that a node of `ids` lacks or gets wrong, named with the node."""
    keys = [k for load in loads for k in load.all_keys()]
    lost = []
    for node_id in ids:
        data = cluster.data(node_id, keys)
        lost += ["node %d: %s" % (node_id, wrong) for load in loads for wrong in load.discrepancies(data)]
    return lost


def converge(cluster: Cluster, ids, load: WriteLoad) -> tuple[dict, float]:
    """Wait until the nodes agree on everything INFO shows, digest included.

    Returns their INFOs and the seconds from the end of `load` (the last
    write) until they agreed.
    """
    infos = cluster.wait_converged(list(ids))
    return infos, time.monotonic() - load.stopped_at


def wait_failover(load: WriteLoad, since: float, limit: float) -> float:
    """Seconds from `since` until a write sent after it was acknowledged; fail after `limit`."""
    return wait_until(lambda: load.first_ack_after(since), limit, 0.05,
                      "a write sent after the fault to be acknowledged (errors so far: %s)" % load.errors)


def fall_behind(cluster: Cluster, follower: int, leader: int, entries: int,
                min_seconds: float = 0.0) -> tuple[int, int]:
    """SIGSTOP `follower` until the load took the leader `entries` entries past it; the caller resumes it.

    The pause also lasts `min_seconds` at least. Returns how many entries it
    missed and the leader's offset then. The wait is bounded by half the
    failure timeout, so the follower is not removed; a load too slow to get
    that far within it makes the scenario vacuous.
    """
    start = cluster.info(follower)["replication_offset"]
    reached = [start]
    paused_at = time.monotonic()

    def far_enough():
        reached.append(cluster.info(leader)["replication_offset"])
        return reached[-1] >= start + entries and time.monotonic() - paused_at >= min_seconds
    cluster.pause(follower)
    with contextlib.suppress(AssertionError):   # not far enough in time: require_load says so
        wait_until(far_enough, 0.5 * cluster.failure_timeout, 0.02)
    require_load(reached[-1] - start, entries, "entries written past paused node %d" % follower)
    return reached[-1] - start, reached[-1]


def regressions(loads: list[WriteLoad]) -> list[tuple]:
    return [(load.prefix, *r) for load in loads for r in load.incr_regressions]


# -- 7. kill -9 the leader --------------------------------------------------------------------------

@pytest.mark.timeout(300 + 30 * SIZE.trials)
def test_killed_leader_is_replaced_by_the_smallest_survivor_without_losing_acknowledged_writes(
        make_cluster, settings, figures):
    """Kill the leader under load, `settings.trials` times in a row on one cluster.

    Each time the smallest survivor must lead and take writes within a few
    failure timeouts, both survivors must hold every acknowledged write with
    equal digests, and a fresh node then joins so the next trial again has
    three members (the next leader to die is one that joined or followed).
    """
    cluster = make_cluster()
    loads: list[WriteLoad] = []
    next_id = 4
    figures.add(trials=settings.trials)
    for trial in range(settings.trials):
        leader = cluster.wait_leader()
        survivors = [n for n in cluster.running_ids() if n != leader]
        term_before = cluster.info(leader)["term"]
        load = start_load(cluster, "t%d" % trial)
        loads.append(load)
        try:
            acked_before = load_before_fault(load)
            cluster.kill(leader)
            killed_at = time.monotonic()
            new_leader = cluster.wait_leader(ids=survivors, not_in=[leader])
            elected = time.monotonic() - killed_at
            failover = wait_failover(load, killed_at, 5 * FAILURE_TIMEOUT)
            load.wait_acked(load.acked + 500)                      # the new leader under the full load
        finally:
            load.stop()
        assert new_leader == min(survivors), "trial %d: node %d leads, not the smallest survivor %d" % (
            trial, new_leader, min(survivors))
        assert not load.unexpected, load.unexpected[:5]
        cluster.wait_members(survivors)                            # the dead leader was removed
        infos, converged = converge(cluster, survivors, load)
        lost = lost_writes(cluster, [load], survivors)
        figures.add(acked_before_fault=acked_before, acked_writes=load.acked, election_seconds=round(elected, 2),
                    failover_seconds=round(failover, 2), digests_equal_seconds=round(converged, 2),
                    term_before=term_before, term_after=infos[new_leader]["term"], lost_writes=len(lost))
        assert not lost, "trial %d: %d acknowledged writes lost, e.g. %s" % (trial, len(lost), lost[:5])
        assert infos[new_leader]["term"] > term_before
        assert not regressions([load]), regressions([load])[:5]
        cluster.add_node(next_id)                                  # back to three members
        next_id += 1
    cluster.wait_converged()
    lost = lost_writes(cluster, loads, cluster.running_ids())     # earlier trials' writes survived later ones
    assert not lost, "%d acknowledged writes lost by the end, e.g. %s" % (len(lost), lost[:5])


# -- 8. SIGSTOP / SIGCONT the leader ------------------------------------------------------------------

PAUSE_SECONDS = 3 * FAILURE_TIMEOUT
PROBES = 4                             # INCRs sent to the paused leader, answered only after SIGCONT
SHARED = "paused-leader-shared"        # a counter advanced by the old leader, then by the new one


def test_paused_leader_acknowledges_nothing_without_its_majority_and_rejoins_with_equal_digests(
        make_cluster, figures):
    """SIGSTOP the leader for three failure timeouts while clients keep writing to it, then SIGCONT.

    Probes INCR a shared counter on the paused leader; meanwhile the new
    leader INCRs it past anything the old one could reach from its own stale
    state. So a probe answered OK with a value not above that proves the old
    leader acknowledged a write on its own after losing its majority; it may
    only refuse (NO_LEADER) or relay the new leader's answer. Terms seen by
    polling INFO never go down, no acknowledged write is lost, and all three
    nodes end with equal digests.
    """
    cluster = make_cluster()
    leader = cluster.wait_leader()
    others = [n for n in cluster.running_ids() if n != leader]
    term_before = cluster.info(leader)["term"]
    monitor = ClusterMonitor(cluster).start()
    # The deposed leader may answer a retried SET with KEY_EXISTS from its own discarded entry.
    load = start_load(cluster, "main", key_exists_confirms=False)
    # Clients that stay on the leader's port: while it is paused they time out and send again.
    stuck = WriteLoad(lambda: [cluster.port(leader)], threads=4, prefix="stuck", sticky=True,
                      socket_timeout=FAILURE_TIMEOUT, key_exists_confirms=False).start()
    probes = []
    try:
        acked_before = load_before_fault(load)
        stuck.wait_acked(50)
        assert cluster.write(leader, "INCR", key=SHARED)["status"] == "OK"
        cluster.pause(leader)
        paused_at = time.monotonic()
        probes = [cluster.nodes[leader].client(timeout=PAUSE_SECONDS + 5 * FAILURE_TIMEOUT + 5)
                  for _ in range(PROBES)]
        for probe in probes:
            probe.send({"command": "INCR", "key": SHARED})
        new_leader = cluster.wait_leader(ids=others, not_in=[leader])
        elected = time.monotonic() - paused_at
        # PROBES + 1 increments on top of what the old leader had: beyond its reach with PROBES.
        advanced = [cluster.write(new_leader, "INCR", key=SHARED) for _ in range(PROBES + 1)]
        assert all(r["status"] == "OK" for r in advanced), advanced
        advanced_to = advanced[-1]["value"]
        load.wait_acked(load.acked + 200)                            # the new leader takes writes
        time.sleep(max(paused_at + PAUSE_SECONDS - time.monotonic(), 0))   # the fault's chosen length
        cluster.resume(leader)
        paused_for = time.monotonic() - paused_at
        replies = [probe.read() for probe in probes]

        def follows_new_leader():
            info = try_info(cluster.nodes[leader])
            return info is not None and info["role"] == "follower" and info["leader_id"] == new_leader \
                and info["term"] > term_before
        wait_until(follows_new_leader, 5 * FAILURE_TIMEOUT + 5, 0.05,
                   "the resumed leader to follow node %d at a higher term" % new_leader)
        stuck.wait_acked(stuck.acked + 20)                         # it serves its clients again (forwarding)
    finally:
        for probe in probes:
            probe.close()
        load.stop()
        stuck.stop()
        monitor.stop()
    assert new_leader == min(others)
    refused = [r for r in replies if r.get("code") == "NO_LEADER"]
    relayed = [r["value"] for r in replies if r.get("status") == "OK"]
    assert len(refused) + len(relayed) == PROBES, "probes got other answers: %s" % replies
    own = [v for v in relayed if v <= advanced_to]
    assert not own, "the paused leader acknowledged INCRs from its own stale state: %s (new leader was at %d)" % (
        own, advanced_to)
    assert stuck.errors.get("timeout"), "no client was ever stuck on the paused leader: %s" % stuck.errors
    assert not load.unexpected and not stuck.unexpected, (load.unexpected[:3], stuck.unexpected[:3])
    cluster.wait_members(ALL)                                      # the old leader is a member again
    infos, converged = converge(cluster, ALL, stuck)
    lost = lost_writes(cluster, [load, stuck], ALL)
    shared = int(cluster.write(new_leader, "GET", key=SHARED)["value"])
    term_regressions = monitor.term_regressions()
    figures.add(acked_before_fault=acked_before, acked_writes=load.acked + stuck.acked,
                pause_seconds=round(paused_for, 2), election_seconds=round(elected, 2),
                probes_refused=len(refused), probes_relayed=len(relayed),
                sticky_timeouts=stuck.errors.get("timeout", 0), term_before=term_before,
                term_after=infos[new_leader]["term"],
                term_regressions=len(term_regressions), digests_equal_seconds=round(converged, 2),
                lost_writes=len(lost))
    assert not lost, "%d acknowledged writes lost, e.g. %s" % (len(lost), lost[:5])
    # Each relayed probe counted once; a refused one at most once (its outcome is unknown).
    assert advanced_to + len(relayed) <= shared <= advanced_to + PROBES, (shared, advanced_to, replies)
    assert not term_regressions, term_regressions[:5]
    assert infos[new_leader]["term"] > term_before
    assert not regressions([load, stuck]), regressions([load, stuck])[:5]


# -- 9. a lagging node with the smallest id --------------------------------------------------------

LAG_ENTRIES = 300            # entries the leader writes while node 1 is paused
MIN_LAG = 100                # fewer missing entries when the leader dies: the scenario is vacuous


def test_lagging_smallest_id_leads_only_after_copying_every_entry_the_survivor_had(make_cluster, figures):
    """Node 1 falls behind (paused), the leader is killed, node 1 resumed: it must copy, then lead.

    Node 2 bootstraps and node 1 joins last, so node 1 follows although its
    id is the smallest. It is paused while the leader writes LAG_ENTRIES
    entries; the leader is killed and node 1 resumed at once, before it can
    catch up. As the smallest survivor node 1 leads next, but only after
    copying what node 3 had: node 3 is then never resynced (its log was a
    prefix of the new leader's, it lost no entry), node 1 counts a sync it
    received, and no client's counter goes backwards across the failover (an
    INCR executed on node 1's stale copy would answer a value already seen).
    """
    cluster = make_cluster(ids=(2, 3, 1))
    assert cluster.wait_leader() == 2
    load = start_load(cluster, "lag")
    try:
        acked_before = load_before_fault(load)
        before = {n: cluster.info(n) for n in (1, 3)}
        fall_behind(cluster, 1, 2, LAG_ENTRIES)
        # Killed first: resumed even a few milliseconds earlier, node 1 could catch up from it.
        cluster.kill(2)
        killed_at = time.monotonic()
        cluster.resume(1)
        at_kill = {n: cluster.info(n) for n in (1, 3)}
        new_leader = cluster.wait_leader(ids=[1, 3], not_in=[2])
        elected = time.monotonic() - killed_at
        failover = wait_failover(load, killed_at, 5 * FAILURE_TIMEOUT)
        load.wait_acked(load.acked + 500)
    finally:
        load.stop()
    # The logs as the leader died: node 1 still followed it at the old term, behind node 3.
    assert at_kill[1]["role"] == "follower" and at_kill[1]["term"] == before[1]["term"], at_kill[1]
    assert set(at_kill[3]["nodes"]) == {"1", "2", "3"}, "node 1 was removed during its pause: %s" % at_kill[3]
    lag = at_kill[3]["replication_offset"] - at_kill[1]["replication_offset"]
    require_load(lag, MIN_LAG, "entries node 1 lacked when the leader died")
    assert new_leader == 1, "node %d leads, not node 1 (the smallest survivor)" % new_leader
    assert not load.unexpected, load.unexpected[:5]
    cluster.wait_members([1, 3])
    infos, converged = converge(cluster, [1, 3], load)
    lost = lost_writes(cluster, [load], [1, 3])
    copies = {kind: infos[1][key] - before[1][key]
              for kind, key in (("entries", "copies_before_leading"), ("full", "syncs_full_received"))}
    figures.add(acked_before_fault=acked_before, lag_entries=lag, election_seconds=round(elected, 2),
                failover_seconds=round(failover, 2), entry_copies=copies["entries"],
                full_copies=copies["full"], counter_regressions=len(regressions([load])),
                digests_equal_seconds=round(converged, 2), lost_writes=len(lost))
    assert not lost, "%d acknowledged writes lost, e.g. %s" % (len(lost), lost[:5])
    assert not regressions([load]), "counters went backwards: %s" % regressions([load])[:5]
    assert sum(copies.values()) >= 1, "node 1 led without copying the entries it lacked: %s" % infos[1]
    assert infos[3]["syncs_full_received"] == before[3]["syncs_full_received"], \
        "node 3 had to take a snapshot: the new leader lacked its entries"


# -- 10. catch-up: a join with a large snapshot, a follower within and past the backlog --------------------

BIG_VALUE_BYTES = 8192
BIG_KEYS = 600                 # about 4.9 MB: past gRPC's 4 MB message limit, so the snapshot is chunked


def preload(cluster: Cluster, node_id: int) -> dict:
    """Write BIG_KEYS values of BIG_VALUE_BYTES through `node_id` (pipelined); return them."""
    data = {"big-%04d" % i: ("%04d" % i) * (BIG_VALUE_BYTES // 4) for i in range(BIG_KEYS)}
    with cluster.nodes[node_id].client(timeout=60) as client:
        client.send(*({"command": "SET", "key": k, "value": v} for k, v in data.items()))
        replies = [client.read() for _ in data]
    assert all(r == {"status": "OK"} for r in replies), [r for r in replies if r != {"status": "OK"}][:3]
    return data


def test_node_joining_under_load_takes_a_chunked_snapshot_of_over_4mb_and_digests_match(make_cluster, figures):
    """A fourth node joins while 20 clients write on top of ~4.9 MB: it gets a full sync and ends identical."""
    cluster = make_cluster()
    leader = cluster.wait_leader()
    big = preload(cluster, leader)
    served_before = cluster.info(leader)["syncs_full_served"]
    load = start_load(cluster, "join")
    try:
        acked_before = load_before_fault(load)
        started = time.monotonic()
        cluster.add_node(4)                                        # waits until node 4 is a member
        joined = time.monotonic() - started
        load.wait_acked(load.acked + 500)                          # writes go on with four members
    finally:
        load.stop()
    assert not load.unexpected, load.unexpected[:5]
    infos, converged = converge(cluster, [1, 2, 3, 4], load)
    lost = lost_writes(cluster, [load], [1, 2, 3, 4])
    figures.add(data_mb=round(sum(map(len, big.values())) / 1e6, 1), acked_before_fault=acked_before,
                acked_writes=load.acked, join_seconds=round(joined, 2),
                full_syncs_served=infos[leader]["syncs_full_served"] - served_before,
                digests_equal_seconds=round(converged, 2), lost_writes=len(lost))
    assert infos[4]["syncs_full_received"] >= 1 and infos[leader]["syncs_full_served"] > served_before
    assert cluster.data(4, big) == big
    assert not lost, "%d acknowledged writes lost, e.g. %s" % (len(lost), lost[:5])


# A follower paused within the leader's backlog gets the entries it missed from
# it; paused past it, a full snapshot. Failure timeouts are long, so a paused
# follower stays a member. The pause within lasts longer than rpc_timeout (2 s):
# the leader's calls to the paused follower fail, which is what makes it count
# the catch-up that follows in INFO (catchups_from_backlog).
WITHIN_OPTIONS = dict(heartbeat_interval=0.5, failure_timeout=10.0, backlog_entries=200_000)
WITHIN_BACKLOG = 300
WITHIN_PAUSE = 2.5
PAST_OPTIONS = dict(heartbeat_interval=0.5, failure_timeout=4.0, backlog_entries=1000)
PAST_BACKLOG = 1500
# ...and for longer than a heartbeat interval plus a tick, so the leader finds its Appends
# unanswered and probes from what the follower holds: a shorter pause under a fast load
# leaves the missed entries in the follower's socket, sent before the backlog dropped them.
PAST_PAUSE = 1.2


def catch_up_after_pause(make_cluster, options: dict, entries: int, min_pause: float = 0.0) -> dict:
    """Pause a follower under load until it missed `entries`, resume it, and check nothing was lost.

    Returns the figures: acknowledged writes before the pause, entries missed,
    and the leader's catch-up counters over the scenario.
    """
    cluster = make_cluster(**options)
    leader = cluster.wait_leader()
    follower = max(n for n in ALL if n != leader)
    load = start_load(cluster, "behind")
    try:
        acked_before = load_before_fault(load)
        before = cluster.info(leader)
        missed, target = fall_behind(cluster, follower, leader, entries, min_pause)
        cluster.resume(follower)
        wait_until(lambda: cluster.info(follower)["replication_offset"] >= target, 4 * cluster.failure_timeout,
                   0.05, "node %d to catch up the %d entries it missed" % (follower, missed))
        load.wait_acked(load.acked + 200)
    finally:
        load.stop()
    assert not load.unexpected, load.unexpected[:5]
    infos, converged = converge(cluster, ALL, load)
    lost = lost_writes(cluster, [load], ALL)
    assert set(infos[follower]["nodes"]) == {"1", "2", "3"}        # it was never removed
    assert not lost, "%d acknowledged writes lost, e.g. %s" % (len(lost), lost[:5])
    return dict(acked_before_fault=acked_before, backlog_entries=options["backlog_entries"], missed_entries=missed,
                backlog_catchups=infos[leader]["catchups_from_backlog"] - before["catchups_from_backlog"],
                full_syncs_served=infos[leader]["syncs_full_served"] - before["syncs_full_served"],
                digests_equal_seconds=round(converged, 2), lost_writes=len(lost))


def test_follower_paused_within_the_backlog_catches_up_from_it(make_cluster, figures):
    """A follower paused (past the RPC deadline) while 20 clients write gets what it missed from the backlog."""
    found = catch_up_after_pause(make_cluster, WITHIN_OPTIONS, WITHIN_BACKLOG, WITHIN_PAUSE)
    figures.add(**found)
    assert found["missed_entries"] < WITHIN_OPTIONS["backlog_entries"]
    assert found["backlog_catchups"] >= 1 and found["full_syncs_served"] == 0, found


def test_follower_paused_past_the_backlog_catches_up_from_a_full_snapshot(make_cluster, figures):
    """A follower paused until the backlog no longer reaches its log gets a full snapshot, then the stream."""
    found = catch_up_after_pause(make_cluster, PAST_OPTIONS, PAST_BACKLOG, PAST_PAUSE)
    figures.add(**found)
    assert found["full_syncs_served"] >= 1, found


# -- 11. a soak of random faults ---------------------------------------------------------------------

SOAK_RATE = 15                 # operations a second per client: a steady 300 a second in all
SOAK_INCRS_PER_SET = 3         # mostly counters, so the key count (and INFO's digest work) stays small
FAULT_GAP = (1.0, 3.0)         # seconds of calm before each fault
PAUSE_RANGE = (1.0, 3.0)       # seconds a paused node stays stopped
MIN_FAULTS = 2


def soak_seed() -> int:
    """GEOMYS_FAULT_SEED replays a run's choice of faults; otherwise a fresh seed (printed and recorded)."""
    raw = os.environ.get("GEOMYS_FAULT_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(1 << 32)


@pytest.mark.timeout(300 + 2 * SIZE.soak_seconds)
def test_random_faults_under_steady_load_lose_nothing_and_keep_a_leader(make_cluster, settings, figures):
    """Every few seconds kill -9 and restart, or SIGSTOP for 1-3 s, a random node, for settings.soak_seconds.

    One node at a time: before each fault the cluster is whole again (three
    members agreeing on a leader), so a majority always survives. A killed
    node restarts under its id and joins again, taking the leader's state
    (docs/cluster.md), so the nodes run without persistence: a file of its
    own would play no part. Clients write at a steady rate through every
    running node. In the end no
    acknowledged write is lost, no client's counter ever answered a smaller
    value than before, no node's term went down, and a leader backed by a
    majority was seen in most INFO rounds.
    """
    seed = soak_seed()
    print("random-fault soak seed: %d (GEOMYS_FAULT_SEED=%d replays its faults)" % (seed, seed))
    figures.add(seed=str(seed))   # a name to replay with, not a quantity
    rng = random.Random(seed)
    cluster = make_cluster()
    cluster.wait_leader()
    faults: Counter = Counter()
    # A paused leader, once deposed, may answer a retried SET with KEY_EXISTS from a discarded entry.
    load = start_load(cluster, "soak", rate=SOAK_RATE, incrs_per_set=SOAK_INCRS_PER_SET, key_exists_confirms=False)
    monitor = ClusterMonitor(cluster, interval=0.5)
    try:
        acked_before = load_before_fault(load)
        monitor.start()
        started, acked_at_start = time.monotonic(), load.acked
        while time.monotonic() - started < settings.soak_seconds:
            cluster.wait_members(ALL)
            cluster.wait_leader()
            time.sleep(rng.uniform(*FAULT_GAP))                   # calm: the load runs undisturbed
            victim = rng.choice(ALL)
            if rng.random() < 0.5:
                cluster.kill(victim)
                faults["kill"] += 1
                cluster.restart(victim)
            else:
                cluster.pause(victim)
                faults["pause"] += 1
                time.sleep(rng.uniform(*PAUSE_RANGE))             # the fault's chosen length
                cluster.resume(victim)
        soaked, acked_in_soak = time.monotonic() - started, load.acked - acked_at_start
        cluster.wait_members(ALL)
    finally:
        load.stop()
        monitor.stop()
    infos, converged = converge(cluster, ALL, load)
    lost = lost_writes(cluster, [load], ALL)
    term_regressions = monitor.term_regressions()
    present = monitor.leader_present_fraction()
    figures.add(soak_seconds=round(soaked, 1), faults=sum(faults.values()), kills=faults["kill"],
                pauses=faults["pause"], acked_before_fault=acked_before, acked_ops=load.acked,
                acked_per_second=round(acked_in_soak / soaked), no_leader_replies=load.errors.get("NO_LEADER", 0),
                leader_present_fraction=round(present, 3), info_rounds=len(monitor.rounds),
                highest_term=monitor.highest_term(), counter_regressions=len(load.incr_regressions),
                term_regressions=len(term_regressions), digests_equal_seconds=round(converged, 2),
                lost_writes=len(lost))
    require_load(sum(faults.values()), MIN_FAULTS, "faults injected")
    assert not lost, "seed %d: %d acknowledged writes lost, e.g. %s" % (seed, len(lost), lost[:5])
    assert not load.incr_regressions, "seed %d: counters went backwards: %s" % (seed, load.incr_regressions[:5])
    assert not term_regressions, "seed %d: %s" % (seed, term_regressions[:5])
    assert present > 0.5, "seed %d: a leader was present in only %.0f%% of INFO rounds" % (seed, 100 * present)
    assert not load.unexpected, load.unexpected[:5]

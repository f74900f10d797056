"""One random run of the simulated cluster per seed: faults and client operations, then healing.

A run forms a cluster (3 nodes, or 5 for one seed in five), then for a few
simulated seconds draws an operation every so often: a client write on a
leader, a client read on any node (local, or linearizable), or a fault (loss, duplicates, long delays
that reorder, a cut link, an isolated node, a partition, healing, a crash, a
clean stop, a restart with or without the append-only file, a pause, a
resume). Crashes and stops are drawn so that a majority of every membership
survives: that is the condition under which no acknowledged write may be lost
(see `_may_crash`). Then everything heals, and the
cluster must settle on one leader, agree on its membership and commit one last
write (`Sim.settle`). The checker checks the invariants after every step and
at the end.

    python -m tests.sim.run --seed 1234 --verbose    # replay one seed with a trace
"""

from .cluster import Sim

OPS_PER_SECOND = 25


def run_seed(seed: int, trace=None) -> Sim:
    """Run the random schedule of `seed`; raise InvariantViolation or LivenessFailure if the cluster fails."""
    sim = Sim(seed, trace=trace)
    rng = sim.rng
    size = 5 if seed % 5 == 0 else 3
    sim.form_cluster(range(1, size + 1))
    end = sim.now + rng.uniform(3.0, 6.0)
    while sim.now < end:
        sim.run_for(rng.expovariate(OPS_PER_SECOND))
        op = rng.choices(_OPS, weights=_WEIGHTS)[0]
        op(sim, rng)
    for node_id in sorted(sim.crashed):
        sim.restart(node_id, keep_file=rng.random() < 0.5)
    sim.settle()
    return sim


def _write(sim, rng) -> None:
    leaders = [n for n in sim.leaders() if not sim.nodes[n].paused]
    if leaders:
        sim.write(rng.choice(leaders))


def _read(sim, rng) -> None:
    sim.read(rng.choice(sorted(sim.nodes)))


def _consistent_read(sim, rng) -> None:
    sim.read_consistent(rng.choice(sorted(sim.nodes)))


def _loss(sim, rng) -> None:
    sim.faults.drop = rng.choice([0.0, 0.05, 0.2] if _recovering(sim) else [0.0, 0.05, 0.2, 0.5])
    sim.note("network: loss %.2f", sim.faults.drop)


def _duplicates(sim, rng) -> None:
    sim.faults.duplicate = rng.choice([0.0, 0.1, 0.3])
    sim.note("network: duplicates %.2f", sim.faults.duplicate)


def _delays(sim, rng) -> None:
    sim.faults.max_delay = rng.choice([0.01, 0.1, 0.5] if _recovering(sim) else [0.01, 0.1, 0.5, 2.0])
    sim.note("network: delays up to %.2fs", sim.faults.max_delay)


def _cut_link(sim, rng) -> None:
    if _recovering(sim):
        return
    a, b = rng.sample(sorted(sim.nodes), 2)
    sim.cut(a, b, both_ways=rng.random() < 0.7)


def _isolate(sim, rng) -> None:
    if _recovering(sim):
        return
    sim.isolate(rng.choice(sorted(sim.nodes)))


def _partition(sim, rng) -> None:
    if _recovering(sim):
        return
    ids = sorted(sim.nodes)
    rng.shuffle(ids)
    split = rng.randint(1, len(ids) - 1)
    sim.partition(set(ids[:split]), set(ids[split:]))


def _heal(sim, rng) -> None:
    sim.heal_network()


def _crash(sim, rng) -> None:
    candidates = [n for n in sorted(sim.nodes) if _may_crash(sim, n)]
    if candidates:
        sim.crash(rng.choice(candidates))


def _stop(sim, rng) -> None:
    candidates = [n for n in sorted(sim.nodes) if _may_crash(sim, n)]
    if candidates:
        sim.stop(rng.choice(candidates))


def _may_crash(sim, node_id: int) -> bool:
    """Whether crashing `node_id` leaves the cluster able to recover by itself.

    A majority of every membership any node holds must survive. A leader may
    still promote a learner that has crashed (it promotes caught-up learners it
    has not yet dropped as silent), so every dead learner counts as a dead
    member to be. And no node may be paused, cut off, or behind a heavy loss or
    delays of seconds at the moment (nor until the dead node is removed, see
    `_recovering`): a leader removes a member silent for failure_timeout while
    it heard from a majority within the last heartbeat interval, so removing a silenced node
    just after another one crashed would leave a membership whose majority is
    dead, from which no election can recover (see tests/sim/README.md).
    """
    if any(n.paused for n in sim.nodes.values()) or sim.faults.cut or sim.faults.isolated \
            or sim.faults.drop >= 0.5 or sim.faults.max_delay >= 2.0:
        return False
    dead = sim.dead | {node_id}
    learners = set().union(*(n.core.learners for n in sim.nodes.values()))
    for node in sim.nodes.values():
        worst = set(node.core.members) | (learners & dead)
        if len(worst & dead) > (len(worst) - 1) // 2:
            return False
    return True


def _recovering(sim) -> bool:
    """Whether a crashed or stopped node is still a member (or a learner) somewhere.

    Until the leader has removed it, no live node is silenced (paused, cut off,
    or behind a loss heavy enough to hide it for failure_timeout):
    a leader may take a late message from the dead node as a sign of life and
    remove the silenced one instead, leaving a membership whose majority is dead.
    """
    return any(set(n.core.members) & sim.dead or set(n.core.learners) & sim.dead for n in sim.nodes.values())


def _restart(sim, rng) -> None:
    if sim.crashed:
        sim.restart(rng.choice(sorted(sim.crashed)), keep_file=rng.random() < 0.5)


def _pause(sim, rng) -> None:
    if _recovering(sim):
        return
    running = [n for n in sorted(sim.nodes) if not sim.nodes[n].paused]
    if running:
        sim.pause(rng.choice(running))


def _resume(sim, rng) -> None:
    paused = [n for n in sorted(sim.nodes) if sim.nodes[n].paused]
    if paused:
        sim.resume(rng.choice(paused))


# Faults are drawn rarely enough that a cut or a pause often lasts longer than
# failure_timeout, so that leaders fail over, step down and resync.
_OPS, _WEIGHTS = zip(
    (_write, 40), (_read, 30), (_consistent_read, 20),
    (_loss, 2), (_duplicates, 2), (_delays, 2),
    (_cut_link, 1), (_isolate, 1), (_partition, 1), (_heal, 1),
    (_crash, 1), (_stop, 1), (_restart, 1), (_pause, 1), (_resume, 1),
)

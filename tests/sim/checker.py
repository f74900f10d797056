"""The safety invariants the simulator checks after every step, and at the end of a run.

The checker watches the cluster from outside, as a history of what every node
did: which node led which term, which entries each node's commit point
covered, which client writes were acknowledged, what every served read saw.
It reads only the core's public attributes (role, term, commit, applied, log,
members) and the simulated stores; any breach raises `InvariantViolation`
with a sentence saying what went wrong, where and when.

Only the node that just took a step can have changed, so `after_step` looks
at that node alone, and each check costs what the step added.
"""

from geomys.cluster.rules import LEADER


class InvariantViolation(AssertionError):
    """A safety property of the cluster does not hold."""


class Checker:
    """The history of a run and the invariants over it."""

    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}   # term -> the node that led it
        self.committed: list = []                  # the cluster's committed log: entry seq at index seq - 1
        self.acked: list = []                      # acknowledged client writes, in order of acknowledgement
        self.reads: list = []                      # (node id, time, store, length) of every served read
        self._new_acks: list = []
        # Keyed by node (not id): a node restarted under an old id is a new node.
        self._term: dict = {}            # node -> the newest term it had
        self._checked_commit: dict = {}  # node -> its commit point already compared
        self._leader_seen: dict = {}     # (node, term) -> (acks checked, log end)

    # -- during the run ----------------------------------------------------------------------

    def check_apply(self, node, entries) -> None:
        """An Apply must extend the store exactly: the next seq, in order, without gaps."""
        expected = len(node.store) + 1
        for entry in entries:
            if entry.seq != expected:
                raise InvariantViolation("node %d was told to apply entry %d after entry %d"
                                         % (node.id, entry.seq, expected - 1))
            expected += 1

    def on_ack(self, write) -> None:
        """A client's write was acknowledged (checked against the committed log after the step)."""
        self.acked.append(write)
        self._new_acks.append(write)

    def on_read(self, node, now: float) -> None:
        """A read was served from `node`'s store as it is now (compared with the final log at the end)."""
        self.reads.append((node.id, now, node.store, len(node.store)))

    def on_consistent_read(self, read) -> None:
        """A linearizable read was served: it holds every write acknowledged before it started.

        Its store is also checked at the end, like any served read, for
        entries that never committed.
        """
        for write in self.acked:
            if write.acked_at < read.started and not read.sees(write):
                raise InvariantViolation("a linearizable read on node %d started at t=%.3f and answered at t=%.3f "
                                         "misses %s, acknowledged at t=%.3f"
                                         % (read.node, read.started, read.ended, _show_write(write), write.acked_at))
        self.reads.append((read.node, read.ended, read.store, read.length))

    def after_step(self, node, now: float) -> None:
        """Check what one step of `node` may have broken."""
        core = node.core
        where = "node %d at t=%.3f" % (node.id, now)
        if core.term < self._term.get(node, 0):
            raise InvariantViolation("%s: term went back from %d to %d" % (where, self._term[node], core.term))
        self._term[node] = core.term
        if core.applied != len(node.store):
            raise InvariantViolation("%s: the core says the store holds up to entry %d, it holds %d entries"
                                     % (where, core.applied, len(node.store)))
        self._check_commit(node, where)
        while self._new_acks:
            write = self._new_acks.pop()
            self._check_is_committed(write, where)
        if core.role == LEADER:
            self._check_leader(node, where)

    def _check_commit(self, node, where: str) -> None:
        """Entries up to a node's commit point are the cluster's committed entries: the same on every node."""
        commit = node.core.commit
        if commit > len(node.store):
            raise InvariantViolation("%s: commit point %d is beyond the store's %d entries"
                                     % (where, commit, len(node.store)))
        start = min(self._checked_commit.get(node, 0), commit)   # a snapshot may move it back
        for seq in range(start + 1, commit + 1):
            entry = node.store[seq - 1]
            if seq <= len(self.committed):
                if self.committed[seq - 1] != entry:
                    raise InvariantViolation("%s: committed entry %d is %s, but %s was committed there before"
                                             % (where, seq, _show(entry), _show(self.committed[seq - 1])))
            else:
                self.committed.append(entry)
        self._checked_commit[node] = commit

    def _check_is_committed(self, write, where: str) -> None:
        entry = self.committed[write.seq - 1] if write.seq <= len(self.committed) else None
        if entry is None or (entry.term, entry.record) != (write.term, write.record):
            raise InvariantViolation("%s: acknowledged %s but the committed entry %d is %s"
                                     % (where, _show_write(write), write.seq, _show(entry)))

    def _check_leader(self, node, where: str) -> None:
        """One leader per term; a leader holds every write acknowledged up to its term, and loses none."""
        core = node.core
        holder = self.leader_of_term.setdefault(core.term, node.id)
        if holder != node.id:
            raise InvariantViolation("%s: leads term %d, which node %d led already" % (where, core.term, holder))
        if node.id not in core.members:
            raise InvariantViolation("%s: leads term %d outside its own membership %s"
                                     % (where, core.term, sorted(core.members)))
        checked, log_end = self._leader_seen.get((node, core.term), (0, 0))
        if core.log.last_seq < log_end:
            raise InvariantViolation("%s: a leader's log shrank from %d to %d entries in term %d"
                                     % (where, log_end, core.log.last_seq, core.term))
        for write in self.acked[checked:]:
            if write.term <= core.term and not _holds(node, write):
                raise InvariantViolation("%s: leader of term %d lacks %s"
                                         % (where, core.term, _show_write(write)))
        self._leader_seen[(node, core.term)] = (len(self.acked), core.log.last_seq)

    # -- at the end of a run -----------------------------------------------------------------

    def final_check(self, nodes: dict, leader) -> None:
        """After healing: one committed log everywhere, holding every acknowledged write and every served read.

        `leader`'s store is the final committed log (its last write has
        committed, so its commit point covers its whole store).
        """
        final = leader.store
        if leader.core.commit != len(final):
            raise InvariantViolation("the final leader %d has not committed its whole store" % leader.id)
        if final[:len(self.committed)] != self.committed:
            seq = next(i + 1 for i, e in enumerate(self.committed) if i >= len(final) or final[i] != e)
            raise InvariantViolation("committed entry %d (%s) is not in the final log"
                                     % (seq, _show(self.committed[seq - 1])))
        for write in self.acked:
            if not _holds(leader, write):
                raise InvariantViolation("the final log lost %s" % _show_write(write))
        checked: dict[int, int] = {}   # a store list is only appended to: check each prefix once
        for node_id, when, store, length in self.reads:
            if checked.get(id(store), -1) >= length:
                continue
            for i in range(length):
                if i >= len(final) or store[i] != final[i]:
                    raise InvariantViolation("a read served by node %d at t=%.3f saw entry %d (%s), which "
                                             "never committed" % (node_id, when, i + 1, _show(store[i])))
            checked[id(store)] = length
        live = set(nodes)
        for node in nodes.values():
            if set(node.core.members) != live:
                raise InvariantViolation("node %d has members %s after healing; the live nodes are %s"
                                         % (node.id, sorted(node.core.members), sorted(live)))
            if node.store != final:
                raise InvariantViolation("node %d's store differs from the leader's after healing" % node.id)


def _holds(node, write) -> bool:
    """Whether `node`'s log (or its store, for entries the log dropped) has the write at its seq."""
    entry = node.core.log.entry(write.seq)
    if entry is None and write.seq <= node.core.log.base_seq and write.seq <= len(node.store):
        entry = node.store[write.seq - 1]
    return entry is not None and (entry.term, entry.record) == (write.term, write.record)


def _show(entry) -> str:
    if entry is None:
        return "nothing"
    return "[seq %d term %d %s]" % (entry.seq, entry.term, entry.record.decode(errors="replace"))


def _show_write(write) -> str:
    return "write %s (seq %d, term %d, on node %d)" % (write.record.decode(), write.seq, write.term, write.node)

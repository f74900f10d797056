"""A simulated cluster: consensus cores, their stores, a network and a clock, all in one thread.

`Sim` runs N instances of `geomys.cluster.core.Core` the way the real driver
(geomys.cluster.node) runs one: it feeds each core ticks, messages and client
writes, and carries out the actions the core returns. Everything happens in
simulated time, on one event queue ordered by (time, order of scheduling),
and every random choice (latency, loss, duplication, the cores' jitter) comes
from one `random.Random(seed)`, so one seed replays one run exactly.

The driver's part, per action:

    Send(to, m)          the network carries m to node `to` (delay, loss, duplicates, cuts)
    RoleChanged          a node that stops leading answers its pending client writes NO_LEADER
    Apply(entries)       the entries are appended to the node's store
    Committed(seq)       the leader's pending client writes up to seq are acknowledged
    FetchSnapshot(peer)  after a transfer time, the node's store becomes a copy of the peer's,
                         then `snapshot_installed`; `snapshot_failed` if the transfer cannot be made
    ProposeMembers(ms)   the leader logs a membership entry, like a write
    ReadReady(ids, i)    those linearizable reads are served once the node's store holds entry i,
                         committed (checked after each of its steps), or fail after read_timeout
    ReadFailed(ids, r)   those linearizable reads are answered NO_LEADER

A node's *store* is the list of entries it holds: a leader's holds every entry
it proposed, a follower's the entries of its Apply actions (or of the
snapshot it installed). A store list is only ever appended to or replaced,
never changed in place, so a read can keep the list and its length as what
it saw. A read is served only while `core.commit >= core.applied`, i.e. the
store holds nothing uncommitted, which is the driver's rule too.

Joining is a call whose answer comes back to the caller: the joining node's
driver sends `Join` to a member, follows a REDIRECT to the leader, retries
while there is no leader, and calls `core.joined` once accepted. A crashed
node restarts as a new process under a new id (as an operator would start it
again with -join): with its append-only file, its store still holds what it
had applied and its log starts where the store ends; without it, it starts
empty. Either way it joins as a learner through the leader.

After every step the `Checker` (tests/sim/checker.py) checks the invariants.
Scenario tests drive a `Sim` step by step through its public methods;
tests/sim/chaos.py drives it with a random schedule.
"""

import dataclasses
import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

from geomys.cluster.core import (ACCEPTED, REDIRECT, REFUSED, Apply, Committed, Core, FetchSnapshot, Join,
                                 JoinReply, Leave, LeaveReply, ProposeMembers, ReadFailed, ReadReady, RoleChanged,
                                 Send, Timing)
from geomys.cluster.log import Log
from geomys.cluster.rules import FOLLOWER, LEADER, NodeAddress

from .checker import Checker, InvariantViolation

HEARTBEAT = 1.0
FAILURE_TIMEOUT = 3.0
TIMING = Timing(heartbeat_interval=HEARTBEAT, failure_timeout=FAILURE_TIMEOUT)
TICK = 0.25                # the driver's timer period (plus a little jitter)
RPC_TIMEOUT = 0.5          # a message over a cut link fails after this long
REFUSED_AFTER = 0.01       # ... to a crashed node (connection refused) after this
JOIN_RETRY = 1.0           # a joining node asks again after this long without an answer
SNAPSHOT_TIME = (0.01, 0.1)  # how long a snapshot transfer takes, on top of the network's delay
BACKLOG = 30               # entries a log keeps once committed (small, so snapshots happen)


class LivenessFailure(AssertionError):
    """The cluster did not recover within the time allowed."""


def address(node_id: int) -> NodeAddress:
    return NodeAddress(node_id, "client-%d" % node_id, "grpc-%d" % node_id)


@dataclass
class Write:
    """A client's write: proposed on a leader, then acknowledged or answered NO_LEADER."""

    record: bytes
    node: int
    seq: int = 0
    term: int = 0
    status: str = "pending"   # acked | no-leader (never proposed, or the outcome is unknown)
    acked_at: float = float("inf")


@dataclass(frozen=True)
class Read:
    """A client's read on one node: refused (not served), or what the store held (its first `length` entries)."""

    node: int
    served: bool
    store: list = field(default_factory=list)   # the store list itself: only ever appended to
    length: int = 0

    @property
    def records(self) -> list[bytes]:
        return [entry.record for entry in self.store[:self.length]]

    def sees(self, write: Write) -> bool:
        return write.record in self.records


@dataclass
class ConsistentRead:
    """A client's linearizable read on one node, with the real times it started and ended.

    pending until answered; served with what the store held then (its first
    `length` entries), or failed (NO_LEADER, never a stale answer).
    """

    node: int
    started: float
    ended: float = float("inf")
    status: str = "pending"   # served | failed
    index: Optional[int] = None
    store: list = field(default_factory=list)
    length: int = 0

    def sees(self, write: Write) -> bool:
        return write.seq <= self.length and self.store[write.seq - 1].record == write.record


@dataclass
class NetworkFaults:
    """What the network does to messages now."""

    drop: float = 0.0              # chance a message is lost
    duplicate: float = 0.0         # chance it arrives twice
    max_delay: float = 0.01        # latency is uniform in [0.001, max_delay]; a wide range reorders
    cut: set = field(default_factory=set)            # directed links (src, dst) that lose everything
    isolated: set = field(default_factory=set)       # nodes cut from every other node
    held: set = field(default_factory=set)           # directed links whose messages wait for `release`
    drop_types: set = field(default_factory=set)     # message types lost on every link

    def link_up(self, src: int, dst: int) -> bool:
        return (src, dst) not in self.cut and src not in self.isolated and dst not in self.isolated


class SimNode:
    """One node as its driver sees it: the core, the store, and what the driver is waiting for."""

    def __init__(self, core: Core, store: list) -> None:
        self.id = core.id
        self.core = core
        self.store = store
        self.alive = True           # False once crashed: its events are dropped
        self.paused = False
        self.deferred: list = []    # events that reached it while paused, run on resume
        self.joining = False        # its driver still looks for a leader to take it
        self.leaving = False        # stopping cleanly: it waits for the leader's answer to Leave
        self.join_refused: Optional[str] = None
        self.writes: dict[int, Write] = {}   # seq -> client write awaiting its commit
        self.reads: dict[int, ConsistentRead] = {}   # read id -> linearizable read awaiting its answer
        self.snapshots_installed = 0


class Sim:
    """N cores, their drivers, a network and a clock; see the module docstring."""

    def __init__(self, seed: int = 0, backlog: int = BACKLOG, trace: Optional[Callable[[str], None]] = None) -> None:
        self.rng = random.Random(seed)
        self.backlog = backlog
        self.trace = trace
        self.now = 0.0
        self.nodes: dict[int, SimNode] = {}      # running nodes (paused ones included)
        self.crashed: dict[int, SimNode] = {}    # crashed and not restarted
        self.dead: set[int] = set()              # every id that crashed or stopped (a restart takes a new id)
        self.faults = NetworkFaults()
        self.checker = Checker()
        self.writes: list[Write] = []
        self.consistent_reads: list[ConsistentRead] = []
        self._read_ids = itertools.count(1)
        self._held: list = []                    # (src, dst, message) waiting on a held link
        self._queue: list = []
        self._order = itertools.count()
        self._last_id = 0
        self._records = itertools.count(1)

    # -- the clock and the event queue -------------------------------------------------------

    def _at(self, when: float, fn: Callable, *args) -> None:
        heapq.heappush(self._queue, (when, next(self._order), fn, args))

    def run_for(self, seconds: float, until: Optional[Callable[[], bool]] = None) -> bool:
        """Run events for `seconds` of simulated time, or until `until()` holds; return whether it held."""
        end = self.now + seconds
        if until is not None and until():
            return True
        while self._queue and self._queue[0][0] <= end:
            when, _, fn, args = heapq.heappop(self._queue)
            self.now = when
            fn(*args)
            if until is not None and until():
                return True
        self.now = end
        return False

    def run_until(self, condition: Callable[[], bool], within: float) -> bool:
        """Run until `condition()` holds, for at most `within` simulated seconds."""
        return self.run_for(within, until=condition)

    def note(self, text: str, *args) -> None:
        """Add a line to the trace (only when tracing: callers on hot paths check `self.trace` first)."""
        if self.trace is not None:
            self.trace("%9.4f  %s" % (self.now, text % args if args else text))

    # -- nodes -------------------------------------------------------------------------------

    def _add_node(self, node_id: int, store: list) -> SimNode:
        log = Log(max_entries=self.backlog, max_bytes=1 << 20)
        if store:
            log.reset(store[-1].seq, store[-1].term)   # the log starts where the store ends
        core = Core(address(node_id), TIMING, random.Random(self.rng.random()), log)
        node = SimNode(core, store)
        self.nodes[node_id] = node
        self._last_id = max(self._last_id, node_id)
        self._at(self.now + self.rng.uniform(0, TICK), self._tick, node)
        return node

    def bootstrap(self, node_id: int) -> SimNode:
        """Start a new cluster led by node `node_id`."""
        node = self._add_node(node_id, [])
        self.note("n%d bootstraps", node_id)
        self._carry_out(node, node.core.bootstrap(self.now))
        return node

    def join(self, node_id: int, via: int, store: Optional[list] = None) -> SimNode:
        """Start node `node_id` and have it join through node `via` (its driver retries until taken)."""
        if node_id in self.nodes:
            raise ValueError("node %d is running already" % node_id)
        node = self._add_node(node_id, store if store is not None else [])
        node.joining = True
        self.note("n%d starts, joins via n%d (store of %d entries)", node_id, via, len(node.store))
        self._send_join(node, via)
        self._at(self.now + JOIN_RETRY, self._retry_join, node)
        return node

    def form_cluster(self, ids, within: float = 30.0) -> None:
        """Bootstrap the first id and join the others one by one, until all are members."""
        first, *rest = ids
        self.bootstrap(first)
        for node_id in rest:
            self.join(node_id, via=first)
            if not self.run_until(lambda: self._is_member_everywhere(node_id), within):
                raise LivenessFailure("node %d did not become a member within %.0fs" % (node_id, within))

    def _is_member_everywhere(self, node_id: int) -> bool:
        return all(node_id in n.core.members and n.core.commit >= n.core.members_seq for n in self.nodes.values())

    def crash(self, node_id: int) -> None:
        """Kill node `node_id` (kill -9): everything it had in memory is gone."""
        node = self.nodes.pop(node_id)
        node.alive = False
        self.crashed[node_id] = node
        self.dead.add(node_id)
        self.note("n%d CRASHES", node_id)
        self._fail_writes(node)

    def stop(self, node_id: int) -> None:
        """Stop node `node_id` cleanly (SIGTERM): it asks its leader to remove it, then exits.

        The process exits when the answer comes, or after an RPC timeout without one.
        """
        node = self.nodes[node_id]
        core = node.core
        self.dead.add(node_id)     # going away: count it gone from now on
        if core.is_leader or core.leader_id is None or core.id not in core.members:
            self.crash(node_id)
            return
        self.note("n%d stops: asks n%d to remove it", node_id, core.leader_id)
        node.leaving = True
        self._transmit(node, core.leader_id, Leave(core.id, core.term))
        self._at(self.now + RPC_TIMEOUT, self._exit, node)

    def _exit(self, node: SimNode) -> None:
        if node.alive and self.nodes.get(node.id) is node:
            self.note("n%d exits", node.id)
            self.crash(node.id)

    def restart(self, old_id: int, keep_file: bool, via: Optional[int] = None) -> SimNode:
        """Start crashed node `old_id` again as a new node (new id), with or without its append-only file."""
        old = self.crashed.pop(old_id)
        store = list(old.store) if keep_file else []
        via = via if via is not None else self._any_member()
        node_id = self._last_id + 1
        self.note("n%d restarts as n%d %s its file", old_id, node_id, "with" if keep_file else "without")
        return self.join(node_id, via, store)

    def pause(self, node_id: int) -> None:
        """Stop node `node_id` (SIGSTOP): it runs nothing; what reaches it waits."""
        self.nodes[node_id].paused = True
        self.note("n%d PAUSED", node_id)

    def resume(self, node_id: int) -> None:
        """Continue node `node_id` (SIGCONT): what reached it meanwhile runs now.

        Client requests first, then the rest in order: the process's threads
        wake in any order, and the worst one for a linearizable read is its
        client thread running before the messages that would tell the node
        it was replaced.
        """
        node = self.nodes[node_id]
        node.paused = False
        self.note("n%d resumes (%d events waited)", node_id, len(node.deferred))
        reads = [event for event in node.deferred if event[0] == self._start_read]
        for fn, args in reads + [event for event in node.deferred if event[0] != self._start_read]:
            self._at(self.now, fn, *args)
        node.deferred.clear()

    def _any_member(self) -> int:
        running = [n for n in sorted(self.nodes) if not self.nodes[n].joining]
        return self.rng.choice(running)

    def _tick(self, node: SimNode) -> None:
        if not node.alive:
            return
        self._at(self.now + TICK + self.rng.uniform(0, TICK / 10), self._tick, node)
        if not node.paused:
            self._carry_out(node, node.core.tick(self.now))

    # -- the driver --------------------------------------------------------------------------

    def _carry_out(self, node: SimNode, actions: list, join_caller: Optional[SimNode] = None) -> None:
        """Do what the core asked, in order; then check the invariants.

        `join_caller`: the step answered a Join, whose reply goes back to the caller.
        """
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, Send):
                if join_caller is not None and isinstance(action.message, JoinReply):
                    self._transmit(node, join_caller.id, action.message, to_node=join_caller)
                else:
                    self._transmit(node, action.to, action.message)
            elif isinstance(action, RoleChanged):
                self.note("n%d is %s of term %d (leader %s)", node.id, action.role, action.term, action.leader_id)
                self._fail_writes(node, unless_term=action.term if action.role == LEADER else None)
            elif isinstance(action, Apply):
                self.note("n%d applies %s", node.id, _seqs(action.entries))
                self.checker.check_apply(node, action.entries)
                node.store.extend(action.entries)
            elif isinstance(action, Committed):
                self.note("n%d committed up to %d", node.id, action.seq)
                for seq in sorted(s for s in node.writes if s <= action.seq):
                    write = node.writes.pop(seq)
                    write.status = "acked"
                    write.acked_at = self.now
                    self.note("client: %s acknowledged (seq %d)", write.record.decode(), seq)
                    self.checker.on_ack(write)
            elif isinstance(action, FetchSnapshot):
                self.note("n%d fetches a snapshot from n%d", node.id, action.peer)
                delay = self.rng.uniform(*SNAPSHOT_TIME)
                self._at(self.now + delay, self._snapshot_arrives, node, action.peer)
            elif isinstance(action, ReadReady):
                for read_id in action.reads:
                    if read_id in node.reads:   # else the driver gave up on it (read_timeout)
                        node.reads[read_id].index = action.index
            elif isinstance(action, ReadFailed):
                for read_id in action.reads:
                    self._end_read(node, read_id, "failed")
            elif isinstance(action, ProposeMembers):
                if not node.core.is_leader:
                    raise InvariantViolation("node %d asked to log a membership change while not leading" % node.id)
                members = {a.node_id: a for a in action.members}
                record = repr(sorted(members)).encode()
                pending.extend(self._propose(node, b"members " + record, members))
            else:
                raise InvariantViolation("node %d returned an unknown action %r" % (node.id, action))
        if node.reads:
            self._serve_reads(node)
        self.checker.after_step(node, self.now)

    def _propose(self, node: SimNode, record: bytes, members: Optional[dict] = None) -> list:
        """Log an entry on the leader: its store holds it at once, as the engine executed it."""
        actions = node.core.propose(record, members)
        entry = node.core.log.entry(node.core.log.last_seq)
        node.store.append(entry)
        self.note("n%d proposes %s at seq %d", node.id, record.decode(), entry.seq)
        return actions

    def _serve_reads(self, node: SimNode) -> None:
        """Answer the linearizable reads whose index the store now holds, committed; fail those too late.

        The driver's rule: the store holds the read index, applied and
        committed, and nothing uncommitted (a reply waits for the commit of
        what it shows), within read_timeout of the read's start.
        """
        core = node.core
        for read_id, read in list(node.reads.items()):
            if read.index is not None and core.applied >= read.index and core.commit >= core.applied:
                read.store, read.length = node.store, len(node.store)
                self._end_read(node, read_id, "served")
                self.checker.on_consistent_read(read)
            elif self.now - read.started >= TIMING.read_timeout:
                self._end_read(node, read_id, "failed")

    def _end_read(self, node: SimNode, read_id: int, status: str) -> None:
        read = node.reads.pop(read_id, None)
        if read is None:
            return   # answered already: the driver gave up on it before the core did
        read.status, read.ended = status, self.now
        self.note("client: linearizable read on n%d %s%s", read.node, status,
                  " (%d entries)" % read.length if status == "served" else "")

    def _fail_writes(self, node: SimNode, unless_term: Optional[int] = None) -> None:
        """Answer NO_LEADER to the pending writes, but those of `unless_term` if the node still leads it."""
        for seq, write in list(node.writes.items()):
            if write.term != unless_term:
                write.status = "no-leader"
                self.note("client: %s answered NO_LEADER (outcome unknown)", write.record.decode())
                del node.writes[seq]

    def _snapshot_arrives(self, node: SimNode, peer_id: int) -> None:
        if not node.alive:
            return
        if node.paused:
            node.deferred.append((self._snapshot_arrives, (node, peer_id)))
            return
        peer = self.nodes.get(peer_id)
        if peer is None or peer.paused or not self.faults.link_up(peer_id, node.id) \
                or self.rng.random() < self.faults.drop:
            self.note("n%d: the snapshot from n%d failed", node.id, peer_id)
            self._carry_out(node, node.core.snapshot_failed())
            return
        # The snapshot is the peer's store, at the position where that store ends
        # (a follower's log may run ahead of it), with the peer's membership now:
        # what the driver's serve_sync sends.
        node.store = list(peer.store)
        last = node.store[-1] if node.store else None
        members = dict(peer.core.members)
        node.snapshots_installed += 1
        self.note("n%d installs a snapshot of n%d up to seq %d", node.id, peer_id, last.seq if last else 0)
        self._carry_out(node, node.core.snapshot_installed(last.seq if last else 0, last.term if last else 0,
                                                           members, self.now))

    # -- joining -----------------------------------------------------------------------------

    def _send_join(self, node: SimNode, target: int) -> None:
        self._transmit(node, target, Join(node.id, 0, node.core.me))

    def _retry_join(self, node: SimNode) -> None:
        if not node.alive or not node.joining:
            return
        self._at(self.now + JOIN_RETRY, self._retry_join, node)
        if not node.paused:
            self._send_join(node, self._any_member())

    def _join_answered(self, node: SimNode, reply: JoinReply) -> None:
        self.note("n%d: join %s by n%d %s", node.id, reply.status, reply.src, reply.message)
        if reply.status == ACCEPTED:
            node.joining = False
            self._carry_out(node, node.core.joined(reply.leader, reply.term, self.now))
        elif reply.status == REDIRECT:
            self._send_join(node, reply.leader.node_id)
        elif reply.status == REFUSED:
            # The process exits (status 2): nothing of it runs any more.
            node.joining = False
            node.join_refused = reply.message
            node.alive = False
            del self.nodes[node.id]
        # NO_LEADER: the retry timer asks again

    # -- the network -------------------------------------------------------------------------

    def _transmit(self, src: SimNode, dst_id: int, message, to_node: Optional[SimNode] = None) -> None:
        """Send `message` from `src` to node `dst_id` (or to the caller `to_node`), subject to the faults."""
        dst = to_node or self.nodes.get(dst_id)
        faults = self.faults
        if dst is None or not dst.alive:
            self._at(self.now + REFUSED_AFTER, self._unreachable, src, dst_id)
            return
        if not faults.link_up(src.id, dst_id):
            self._at(self.now + RPC_TIMEOUT, self._unreachable, src, dst_id)
            return
        if type(message) in faults.drop_types or (faults.drop and self.rng.random() < faults.drop):
            if self.trace:
                self.note("n%d -> n%d LOST %s", src.id, dst_id, describe(message))
            return
        copies = 2 if faults.duplicate and self.rng.random() < faults.duplicate else 1
        for _ in range(copies):
            self._at(self.now + self.rng.uniform(0.001, faults.max_delay), self._deliver, src, dst, message)

    def _deliver(self, src: SimNode, dst: SimNode, message) -> None:
        if not dst.alive:
            return
        if not self.faults.link_up(src.id, dst.id):
            if self.trace:
                self.note("n%d -> n%d LOST (cut in flight) %s", src.id, dst.id, describe(message))
            return
        if (src.id, dst.id) in self.faults.held:
            self._held.append((src, dst, message))
            return
        if dst.paused:
            dst.deferred.append((self._deliver, (src, dst, message)))
            return
        if self.trace:
            self.note("n%d <- n%d %s", dst.id, src.id, describe(message))
        if isinstance(message, JoinReply) and dst.joining:
            self._join_answered(dst, message)
            self.checker.after_step(dst, self.now)
            return
        if isinstance(message, LeaveReply) and dst.leaving:
            self._exit(dst)
            return
        actions = dst.core.step(message, self.now)
        self._carry_out(dst, actions, join_caller=src if isinstance(message, Join) else None)

    def _unreachable(self, src: SimNode, peer_id: int) -> None:
        if src.alive and not src.paused:
            self._carry_out(src, src.core.unreachable(peer_id, self.now))

    def deliver(self, src_id: int, dst_id: int, message) -> None:
        """Hand `message` to the network as if node `src_id` had sent it (e.g. a late duplicate)."""
        self._transmit(self.nodes[src_id], dst_id, message)

    # -- faults ------------------------------------------------------------------------------

    def cut(self, a: int, b: int, both_ways: bool = True) -> None:
        """Lose every message from a to b (and b to a)."""
        self.faults.cut.add((a, b))
        if both_ways:
            self.faults.cut.add((b, a))
        self.note("network: cut n%d %s n%d", a, "<->" if both_ways else "->", b)

    def heal(self, a: int, b: int) -> None:
        self.faults.cut -= {(a, b), (b, a)}
        self.note("network: healed n%d <-> n%d", a, b)

    def isolate(self, node_id: int) -> None:
        """Cut node `node_id` off from every other node (clients still reach it)."""
        self.faults.isolated.add(node_id)
        self.note("network: n%d isolated", node_id)

    def reconnect(self, node_id: int) -> None:
        self.faults.isolated.discard(node_id)
        self.note("network: n%d reconnected", node_id)

    def partition(self, *groups) -> None:
        """Cut every link between the groups (sets of node ids)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1:]:
                for a in group:
                    for b in other:
                        self.faults.cut |= {(a, b), (b, a)}
        self.note("network: partition %s", " | ".join(str(sorted(g)) for g in groups))

    def hold(self, a: int, b: int) -> None:
        """Keep every message from a to b, those in flight included, until `release(a, b)`."""
        self.faults.held.add((a, b))
        self.note("network: holding n%d -> n%d", a, b)

    def release(self, a: int, b: int) -> None:
        """Deliver what a held link kept, in order, and let messages through again."""
        self.faults.held.discard((a, b))
        self.note("network: releasing n%d -> n%d", a, b)
        kept = [m for m in self._held if (m[0].id, m[1].id) == (a, b)]
        self._held = [m for m in self._held if (m[0].id, m[1].id) != (a, b)]
        for src, dst, message in kept:
            self._at(self.now, self._deliver, src, dst, message)

    def heal_network(self) -> None:
        """Every link up, no loss, no duplicates, short delays; held messages go."""
        for a, b in sorted(self.faults.held):
            self.release(a, b)
        self.faults = NetworkFaults()
        self.note("network: healed")

    # -- clients -----------------------------------------------------------------------------

    def write(self, node_id: int) -> Write:
        """A client writes a new, unique record on node `node_id`; it is proposed only if the node leads."""
        write = Write(b"w%d" % next(self._records), node_id)
        node = self.nodes.get(node_id)
        if node is None or node.paused or not node.core.is_leader:
            write.status = "no-leader"
            return write
        write.seq, write.term = node.core.log.last_seq + 1, node.core.term
        node.writes[write.seq] = write
        self.writes.append(write)
        self.note("client: %s on n%d", write.record.decode(), node_id)
        self._carry_out(node, self._propose(node, write.record))
        return write

    def read(self, node_id: int) -> Read:
        """A client reads on node `node_id`: served only if its store holds nothing uncommitted."""
        node = self.nodes.get(node_id)
        if node is None or node.paused or node.core.commit < node.core.applied:
            return Read(node_id, False)
        self.checker.on_read(node, self.now)
        return Read(node_id, True, node.store, len(node.store))

    def read_consistent(self, node_id: int) -> ConsistentRead:
        """A client sends a linearizable read to node `node_id`; a paused node takes it when it resumes."""
        read = ConsistentRead(node_id, self.now)
        self.consistent_reads.append(read)
        node = self.nodes.get(node_id)
        if node is None or node.joining:
            read.status, read.ended = "failed", self.now
        elif node.paused:
            node.deferred.append((self._start_read, (node, read)))
        else:
            self._start_read(node, read)
        return read

    def _start_read(self, node: SimNode, read: ConsistentRead) -> None:
        if not node.alive:
            return   # the client's connection broke: no answer
        if node.paused:
            node.deferred.append((self._start_read, (node, read)))
            return
        read_id = next(self._read_ids)
        node.reads[read_id] = read
        self.note("client: linearizable read on n%d (read %d)", node.id, read_id)
        self._carry_out(node, node.core.read_index(read_id, self.now))

    # -- views -------------------------------------------------------------------------------

    def leaders(self) -> list[int]:
        """The running nodes that lead (more than one only while an old leader has not noticed)."""
        return sorted(n for n, node in self.nodes.items() if node.core.is_leader)

    def settle(self, within: float = 60.0) -> SimNode:
        """Heal everything, wait for one leader followed by every node, and commit one last write.

        A write answered NO_LEADER (the leader found it had lost its majority
        while everything was away) is written again, as a client would.
        Raises LivenessFailure if that takes longer than `within` simulated seconds.
        """
        self.heal_network()
        for node_id, node in sorted(self.nodes.items()):
            if node.paused:
                self.resume(node_id)
        deadline = self.now + within
        while self.run_until(self._settled, deadline - self.now):
            leader = self.nodes[self.leaders()[0]]
            write = self.write(leader.id)
            if not self.run_until(lambda: write.status != "pending", deadline - self.now):
                break
            if write.status == "acked" and self.run_until(self._settled, deadline - self.now):
                leader = self.nodes[self.leaders()[0]]
                self.checker.final_check(self.nodes, leader)
                return leader
        raise LivenessFailure("no settled cluster with a last write committed %.0fs after healing:\n%s"
                              % (within, self.describe_state()))

    def _settled(self) -> bool:
        leaders = self.leaders()
        if len(leaders) != 1:
            return False
        leader = self.nodes[leaders[0]].core
        ids = set(self.nodes)
        return all(set(n.core.members) == ids and n.core.commit == leader.log.last_seq
                   and (n.core.role == FOLLOWER and n.core.leader_id == leader.id or n.core is leader)
                   and n.core.term == leader.term for n in self.nodes.values())

    def describe_state(self) -> str:
        """One line per node: what a reader needs to see why a run did not settle."""
        lines = []
        for node_id, node in sorted({**self.nodes, **self.crashed}.items()):
            c = node.core
            state = "crashed" if not node.alive else "paused" if node.paused else "joining" if node.joining else ""
            lines.append("  n%d %s %s term=%d leader=%s members=%s log=%d..%d commit=%d applied=%d"
                         % (node_id, state, c.role, c.term, c.leader_id, sorted(c.members),
                            c.log.base_seq, c.log.last_seq, c.commit, c.applied))
        return "\n".join(lines)


def describe(message) -> str:
    """A message on one line: its type and fields, entries shown as a range of seqs."""
    fields = []
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if f.name == "src":
            continue
        if f.name == "entries":
            value = _seqs(value)
        elif isinstance(value, NodeAddress):
            value = "n%d" % value.node_id
        fields.append("%s=%s" % (f.name, value))
    return "%s(%s)" % (type(message).__name__, ", ".join(fields))


def _seqs(entries) -> str:
    return "%d..%d" % (entries[0].seq, entries[-1].seq) if entries else "-"

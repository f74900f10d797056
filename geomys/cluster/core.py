"""The consensus core: one node's part in the cluster as a pure state machine.

Three inputs drive it: `tick(now)` (time passed), `step(message, now)` (a
message from another node arrived) and `propose(record)` (the leader logged a
write); a fourth, `read_index(read_id, now)`, asks for a linearizable read.
Each returns a list of small immutable actions for the driver
(geomys.cluster.node) to carry out: send a message, the role changed, apply
committed entries, replies up to a seq may go, fetch a snapshot, log a
membership change, a read's index is known (or it failed). The core owns the role, the term, the leader, the
membership, the learners, per-peer progress, the log and its commit point,
and the election. It never sleeps, threads, reads a clock or touches the
network, so the simulator in tests/sim drives it step by step. The driver
calls it under one lock.

Following one write, top to bottom of this file: `propose` appends the entry
and `_send_append` ships it to each follower; a follower's `_on_append`
checks that it extends its log and answers; the leader's `_on_append_reply`
records the follower's progress and `_advance_commit` moves the commit point
once a majority holds the entry, which the next `Append` (or a `Commit`)
carries to the followers, whose `_apply_committed` hands it to their stores.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional, Protocol, Union

from . import rules
from .log import Entry, Log
from .rules import CANDIDATE, FOLLOWER, LEADER, LEARNER, NodeAddress, VoteAnswer

logger = logging.getLogger(__name__)

APPEND_BATCH = 2000              # most entries in one Append
APPEND_BATCH_BYTES = 4 << 20     # ...and about this many bytes of them
MAX_INFLIGHT = 2                 # Appends a leader keeps in flight to one follower
LEARNER_SLACK = 100              # a learner this close to the leader's log becomes a member


# -- messages between nodes ------------------------------------------------------------------
# Every message names its sender (`src`) and the sender's term. The driver
# carries them over gRPC (geomys.cluster.wire) or, in tests, in memory.

@dataclass(frozen=True, slots=True)
class Append:
    """Leader -> follower: entries after (prev_seq, prev_term), and the commit point.

    Empty, it is a heartbeat. prev_seq -1 tells the follower to fetch a snapshot.
    """

    src: int
    term: int
    prev_seq: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    round: int = 0             # the newest read-index round the leader started (echoed in the reply)


@dataclass(frozen=True, slots=True)
class AppendReply:
    """Follower -> leader: ok and where the log now matches (last_seq), or a refusal with a hint.

    On a refusal, last_seq is a point from which the leader should resend; a
    follower fetching a snapshot says `syncing` instead. `round` echoes the
    Append's: the follower still followed this leader's term when it answered.
    """

    src: int
    term: int
    ok: bool
    last_seq: int
    syncing: bool = False
    round: int = 0


@dataclass(frozen=True, slots=True)
class Commit:
    """Leader -> follower: the commit point moved and there is nothing new to send (no answer)."""

    src: int
    term: int
    commit: int


@dataclass(frozen=True, slots=True)
class Poll:
    """Candidate -> members: who should lead? (election, step 1)"""

    src: int
    term: int


@dataclass(frozen=True, slots=True)
class PollReply:
    """The node this member names (its live leader, else the smallest live id it knows) and its log's end."""

    src: int
    term: int
    nominee: int
    nominee_node: Optional[NodeAddress]
    last_seq: int
    last_term: int


@dataclass(frozen=True, slots=True)
class CanYouLead:
    """Candidate -> the node every answer named: take over, unless you hear from a live leader (step 2)."""

    src: int
    term: int


@dataclass(frozen=True, slots=True)
class CanYouLeadReply:
    """granted with leader_id = src: it already leads (member says whether the asker is in its list)."""

    src: int
    term: int
    granted: bool
    leader_id: int
    member: bool = True


@dataclass(frozen=True, slots=True)
class NewLeader:
    """The node taking over announces its new term; a node accepts at most one leader per term (step 3)."""

    src: int
    term: int


@dataclass(frozen=True, slots=True)
class NewLeaderReply:
    """Accepted or not, and where the acceptor's log ends."""

    src: int
    term: int
    accepted: bool
    last_seq: int
    last_term: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """The node taking over asks the most up-to-date acceptor for its entries after `after_seq`."""

    src: int
    term: int
    after_seq: int


@dataclass(frozen=True, slots=True)
class FetchReply:
    """The entries asked for; ok False: the log no longer reaches back that far (fetch a snapshot)."""

    src: int
    term: int
    ok: bool
    entries: tuple[Entry, ...]


# JoinReply statuses
ACCEPTED, REDIRECT, REFUSED, NO_LEADER = "accepted", "redirect", "refused", "no-leader"


@dataclass(frozen=True, slots=True)
class Join:
    """A node asks to join as a learner; `id_assigned` lets the leader pick another id if it is taken."""

    src: int
    term: int
    node: NodeAddress
    id_assigned: bool = False


@dataclass(frozen=True, slots=True)
class JoinReply:
    """ACCEPTED (node_id is the joiner's id), REDIRECT (ask `leader`), REFUSED or NO_LEADER."""

    src: int
    term: int
    status: str
    node_id: int = 0
    leader: Optional[NodeAddress] = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Leave:
    """A node stopping cleanly asks the leader to remove it."""

    src: int
    term: int


@dataclass(frozen=True, slots=True)
class LeaveReply:
    """Whether the leader took the request."""

    src: int
    term: int
    ok: bool


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """Follower -> leader: which commit point may a linearizable read that arrived here wait for?"""

    src: int
    term: int
    read_id: int


@dataclass(frozen=True, slots=True)
class ReadIndexReply:
    """The leader's commit point when it confirmed it still leads; ok False: it could not."""

    src: int
    term: int
    read_id: int
    ok: bool
    index: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The answer to a message the core will not act on (unknown sender); it changes nothing."""

    src: int
    term: int
    reason: str


Message = Union[Append, AppendReply, Commit, Poll, PollReply, CanYouLead, CanYouLeadReply, NewLeader, NewLeaderReply,
                Fetch, FetchReply, Join, JoinReply, Leave, LeaveReply, ReadIndex, ReadIndexReply, Rejected]


# -- actions for the driver ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    """Deliver `message` to node `to` (best effort: the protocol survives loss)."""

    to: int
    message: Message


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """This node's role, term or leader changed. Only a LEADER executes writes and expires keys."""

    role: str
    term: int
    leader_id: Optional[int]


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply these entries to the store, in order (they are committed, or this node now leads)."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Committed:
    """Entries up to `seq` are committed: replies that reveal them may go."""

    seq: int


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    """Replace the store with a snapshot from node `peer`, then call `snapshot_installed`."""

    peer: int


@dataclass(frozen=True, slots=True)
class ProposeMembers:
    """The leader changes the membership: log a membership entry (through the engine, like a write)."""

    members: tuple[NodeAddress, ...]


@dataclass(frozen=True, slots=True)
class ReadReady:
    """These linearizable reads may be served once the store holds entry `index` (and it is committed)."""

    reads: tuple[int, ...]
    index: int


@dataclass(frozen=True, slots=True)
class ReadFailed:
    """These linearizable reads cannot be confirmed: answer them NO_LEADER."""

    reads: tuple[int, ...]
    reason: str


Action = Union[Send, RoleChanged, Apply, Committed, FetchSnapshot, ProposeMembers, ReadReady, ReadFailed]


# -- the core --------------------------------------------------------------------------------

class Random(Protocol):
    """The randomness the core needs: a seeded random.Random in tests, any in production."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True)
class Timing:
    """The cluster's timings, in seconds (see docs/cluster.md, Timings)."""

    heartbeat_interval: float
    failure_timeout: float
    read_timeout: float = 2.0      # a linearizable read not confirmed within this fails (rpc_timeout)


PROBE, REPLICATE, SNAPSHOT = "probe", "replicate", "snapshot"


@dataclass(slots=True)
class Progress:
    """What the leader knows of one follower's log.

    PROBE: one Append at a time until the follower says where its log ends;
    REPLICATE: up to MAX_INFLIGHT Appends in flight, `next_seq` moving ahead
    of the replies; SNAPSHOT: the follower is fetching a snapshot.
    """

    next_seq: int
    match: int = 0
    state: str = PROBE
    inflight: int = 0
    commit_sent: int = 0
    last_sent: float = float("-inf")
    last_heard: float = float("-inf")
    lagging: bool = False      # it stopped answering for a while: count its catch-up
    round: int = 0             # the newest read-index round it acknowledged


@dataclass(slots=True)
class PollRound:
    """One election round: the answers to "who should lead?" gathered so far."""

    term: int
    own: VoteAnswer
    asked: set[int]
    answers: dict[int, VoteAnswer] = field(default_factory=dict)
    nominee_nodes: dict[int, NodeAddress] = field(default_factory=dict)


@dataclass(slots=True)
class ReadRound:
    """Linearizable reads waiting together for one confirmation.

    On a leader: one round of heartbeats, sent after every read in it
    arrived; once a majority acknowledged it, `index` (the commit point when
    it started) is each read's index. On a follower: one ReadIndex request to
    the leader, `number` being its read_id.
    """

    number: int
    index: int
    reads: list          # (node, read id, arrived): this node's own reads, or followers' requests
    started: float
    leader: Optional[int] = None


@dataclass(slots=True)
class TakeOver:
    """A take-over in progress: the acceptances of the new term, then perhaps a copy from the best acceptor."""

    term: int
    started: float                 # when it started, or last received entries it was copying
    accepted: dict[int, VoteAnswer]
    fetching: Optional[int] = None
    fetch_until: int = 0


class Core:
    """One node's cluster state and rules; every input returns the actions that follow from it."""

    def __init__(self, me: NodeAddress, timing: Timing, rng: Random, log: Log) -> None:
        self.me = me
        self.id = me.node_id
        self.timing = timing
        self.rng = rng
        self.log = log
        self.role = FOLLOWER
        self.term = 0
        self.leader_id: Optional[int] = None
        self.members: dict[int, NodeAddress] = {}
        self.members_seq = 0               # the entry the membership comes from
        self._member_history: list[tuple[int, dict[int, NodeAddress]]] = []  # (seq, members) not yet committed
        self.learners: dict[int, NodeAddress] = {}
        self.known: dict[int, NodeAddress] = {}   # every node any list or answer named
        # A log that does not start empty comes from this node's append-only file,
        # whose newest entries may never have committed (it may have led alone):
        # nothing is known committed until a leader's Append says so.
        self.commit = 0
        self.applied = log.base_seq        # the newest entry the store holds
        self.matched = 0                   # follower: its log agrees with its leader's up to here
        self.syncing = False               # a snapshot fetch is under way
        self.progress: dict[int, Progress] = {}
        self.last_seen: dict[int, float] = {}
        self.last_leader_contact = float("-inf")
        self.suspected: set[int] = set()   # nodes dropped by a refused election
        self.poll: Optional[PollRound] = None
        self.takeover: Optional[TakeOver] = None
        self.next_round = float("-inf")
        self.next_join = float("-inf")
        # Linearizable reads (see `read_index`).
        self.commit_term = 0               # leader: the term of the entry its commit point last counted
        self.read_round: Optional[ReadRound] = None   # the confirmation in flight
        self.reads_waiting: list = []      # (node, read id, arrived) waiting for the next confirmation
        self.last_read_round = 0           # number of the newest round (leader) or request (follower)
        self.stats = {"elections": 0, "catchups_from_backlog": 0, "copies_before_leading": 0,
                      "read_index_rounds": 0}
        self._now = 0.0                    # the time of the latest input
        self._out: list = []

    # -- views -------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this node leads and executes writes."""
        return self.role == LEADER

    def leader_alive(self, now: float) -> bool:
        """Whether this node has heard from its leader within failure_timeout (a leader: itself)."""
        if self.role == LEADER:
            return True
        return self.leader_id is not None and self.leader_id != self.id and \
            now - self.last_leader_contact < self.timing.failure_timeout

    def address(self, node_id: Optional[int]) -> Optional[NodeAddress]:
        """Where node `node_id` is, if any list or answer named it."""
        if node_id is None:
            return None
        return self.members.get(node_id) or self.learners.get(node_id) or self.known.get(node_id)

    # -- inputs ------------------------------------------------------------------------------

    def bootstrap(self, now: float) -> list:
        """Start a new cluster with this node as its only member, leading term 1."""
        self._now = now
        self._set_members(self.log.last_seq, {self.id: self.me})
        self.members_seq = self.commit = self.applied = self.log.last_seq
        self._member_history.clear()
        self.term = 0
        self.takeover = TakeOver(1, now, {})
        self._lead(now)
        return self._flush()

    def joined(self, leader: NodeAddress, term: int, now: float) -> list:
        """A leader took this node as a learner (after a Join the driver sent): take its state."""
        self._now = now
        self.known[leader.node_id] = leader
        self._follow(leader.node_id, term, now)
        self._start_snapshot(leader.node_id, "a joining node takes the leader's state")
        return self._flush()

    def snapshot_installed(self, seq: int, term: int, members: dict[int, NodeAddress], now: float) -> list:
        """The driver replaced the store with a snapshot taken at (seq, term) holding `members`.

        The snapshot may hold entries its sender had not committed yet, so
        the commit point stays where it was until the leader's next Append.
        """
        self._now = now
        self.syncing = False
        self.matched = 0
        self.log.reset(seq, term)
        self.applied = seq
        self.commit = min(self.commit, seq)
        self._member_history.clear()
        self._set_members(seq, members)
        if self.takeover is not None and self.takeover.fetching is not None:
            self.takeover.fetching = None
            self._finish_take_over(now)
        elif self.leader_id not in (None, self.id):
            # Tell the leader at once where this log now ends.
            self._send(self.leader_id, AppendReply(self.id, self.term, False, seq))
        return self._flush()

    def snapshot_failed(self) -> list:
        """The snapshot fetch failed: the leader's next Append asks again."""
        self.syncing = False
        if self.takeover is not None and self.takeover.fetching is not None:
            self.takeover = None
        return self._flush()

    def unreachable(self, peer: int, now: float) -> list:
        """A message to `peer` could not be delivered (connection refused, broken stream)."""
        self._now = now
        progress = self.progress.get(peer)
        if progress is not None:
            self._probe_again(progress)
        if self.poll is not None and peer in self.poll.asked:
            self.poll.asked.discard(peer)
            self._maybe_conclude_poll(now)
        return self._flush()

    def propose(self, record: bytes, members: Optional[dict[int, NodeAddress]] = None) -> list:
        """Append the leader's next entry (a write's record, or a membership change) and send it."""
        seq = self.log.last_seq + 1
        self.log.append(Entry(seq, self.term, record, tuple(members.values()) if members else None))
        self.applied = seq   # the leader's store already holds what it proposes
        if members is not None:
            self._set_members(seq, members)
        if len(self.members) == 1:
            self._advance_commit()
        for peer in self.progress:
            self._send_append(peer)
        return self._flush()

    def read_index(self, read_id: int, now: float) -> list:
        """A client's linearizable read arrived: ReadReady once its read index is known, else ReadFailed.

        The read index is the leader's commit point, taken once two things
        hold: a round of heartbeats sent after the read arrived was
        acknowledged by a majority (so no newer term had a leader when the
        read arrived), and an entry of the leader's own term committed (so
        the commit point covers every write acknowledged before). A follower
        asks its leader for it (ReadIndex). Reads arriving while a round or
        request is in flight share the next one. No clock is trusted: a
        leader that was paused for any length of time still asks a majority.
        """
        self._now = now
        if self.role == LEADER:
            self.reads_waiting.append((self.id, read_id, now))
            self._start_read_round(now)
        elif self.leader_alive(now):
            self.reads_waiting.append((self.id, read_id, now))
            self._ask_read_index(now)
        else:
            self._out.append(ReadFailed((read_id,), "no leader is known at the moment; try again shortly"))
        return self._flush()

    def tick(self, now: float) -> list:
        """Time passed: heartbeats and upkeep on a leader; failure detection and elections elsewhere."""
        self._now = now
        if self.read_round is not None or self.reads_waiting:
            self._expire_reads(now)
        if self.role == LEADER:
            self._leader_tick(now)
        elif self.takeover is not None:
            # No majority accepted, or the copy from the best acceptor stalled (a Fetch or
            # its reply was lost): give up, and elect again. A snapshot ends by itself.
            if not self.syncing and now - self.takeover.started >= self.timing.failure_timeout / 2:
                logger.info("node %d could not take over term %d", self.id, self.takeover.term)
                self._give_up_take_over()
        elif self.leader_alive(now):
            pass
        elif self.id not in self.members:
            self._ask_to_rejoin(now)   # a learner, or a node removed while it was away
        elif now >= self.next_round:
            self._election_round(now)
        return self._flush()

    def step(self, message: Message, now: float) -> list:
        """A message from another node arrived."""
        handler = self._HANDLERS.get(type(message))
        if handler is None or message.src == self.id:
            return []
        self._now = now
        if type(message) not in (Join, Poll) and not self._knows(message.src):
            self._send(message.src, Rejected(self.id, self.term, "node %d is not in this cluster" % message.src))
            return self._flush()
        handler(self, message, now)
        return self._flush()

    def _knows(self, node_id: int) -> bool:
        return node_id in self.members or node_id in self.learners or node_id in self.known

    # -- roles: the one place they change ----------------------------------------------------

    def _become(self, role: str, term: int, leader_id: Optional[int]) -> None:
        """Take a role; the driver follows through the RoleChanged action (writes, expiry, waiters)."""
        if (role, term, leader_id) == (self.role, self.term, self.leader_id):
            return
        if self.role == LEADER and role != LEADER:
            logger.warning("node %d stepped down at term %d", self.id, term)
            self._fail_reads("this node stopped leading")
            self.progress.clear()
            self.learners.clear()
        elif (term, leader_id) != (self.term, self.leader_id):
            self._fail_reads("the leader changed")
        self.role, self.term, self.leader_id = role, term, leader_id
        self._out.append(RoleChanged(role, term, leader_id))

    def _follow(self, leader: int, term: int, now: float) -> bool:
        """Follow `leader` at `term` unless the term is older or has another leader; return whether it did."""
        if term < self.term or leader == self.id:
            return False
        if term == self.term and self.leader_id is not None and self.leader_id != leader:
            return False
        if self.takeover is not None:
            self.takeover = None
        if self.leader_id != leader or term != self.term:
            logger.info("node %d now follows node %d at term %d", self.id, leader, term)
            self.matched = 0
        self.poll = None
        # A node outside the membership follows as a learner: it votes in nothing.
        self._become(FOLLOWER if self.id in self.members else LEARNER, term, leader)
        self.last_leader_contact = now
        self.last_seen[leader] = now
        self.suspected.clear()
        return True

    def _step_down(self, term: int, why: str) -> None:
        logger.warning("node %d gives up leading: %s", self.id, why)
        self._become(CANDIDATE, max(term, self.term), None)
        self.last_leader_contact = float("-inf")

    # -- membership ----------------------------------------------------------------------------

    def _set_members(self, seq: int, members: dict[int, NodeAddress]) -> None:
        """Use `members` from entry `seq` on (a membership applies as soon as it is in the log)."""
        if seq > self.commit:
            self._member_history.append((self.members_seq, dict(self.members)))
        self.members = dict(members)
        self.members_seq = seq
        self.known.update(members)
        for node_id in members:
            self.learners.pop(node_id, None)
            if self.role == LEADER and node_id != self.id and node_id not in self.progress:
                self.progress[node_id] = Progress(self.log.last_seq + 1)
        if self.role == LEADER:
            for node_id in list(self.progress):
                if node_id not in members and node_id not in self.learners:
                    del self.progress[node_id]
        if self.role in (FOLLOWER, LEARNER) and self.leader_id is not None:
            self._become(FOLLOWER if self.id in members else LEARNER, self.term, self.leader_id)

    def _truncate(self, seq: int) -> None:
        """Drop log entries after `seq`, and any membership they brought."""
        self.log.truncate_after(seq)
        self.matched = min(self.matched, seq)
        while self.members_seq > seq and self._member_history:
            self.members_seq, members = self._member_history.pop()
            self.members = members

    # -- replication, leader side ------------------------------------------------------------

    def _send_append(self, peer: int, heartbeat: bool = False) -> None:
        """Send `peer` what it lacks, within the in-flight window; or a heartbeat."""
        p = self.progress[peer]
        log = self.log
        if p.state == SNAPSHOT:
            if heartbeat:
                # It is fetching a snapshot: a probe at the end of the log keeps it
                # following and, once it has the snapshot, asks where its log now ends.
                self._send(peer, Append(self.id, self.term, log.last_seq, log.last_term, (), self.commit,
                                        self.last_read_round))
                p.last_sent = self._now
            return
        if not heartbeat and p.inflight >= (MAX_INFLIGHT if p.state == REPLICATE else 1):
            return
        prev = p.next_seq - 1
        if not log.covers(prev):
            # The log no longer reaches back to where the follower's ends: it needs a snapshot.
            p.state, p.inflight = SNAPSHOT, 0
            self._send(peer, Append(self.id, self.term, -1, 0, (), self.commit, self.last_read_round))
            p.last_sent = self._now
            return
        entries = tuple(log.after(prev, APPEND_BATCH, APPEND_BATCH_BYTES))
        if not entries and not heartbeat:
            if p.commit_sent < self.commit and p.state == REPLICATE:
                # Nothing new: tell it the commit point without asking for an answer.
                self._send(peer, Commit(self.id, self.term, self.commit))
                p.commit_sent = self.commit
            return
        self._send(peer, Append(self.id, self.term, prev, log.term_at(prev), entries, self.commit,
                                self.last_read_round))
        if entries:
            p.next_seq = entries[-1].seq + 1
        p.inflight += 1
        p.commit_sent = self.commit
        p.last_sent = self._now

    def _on_append_reply(self, m: AppendReply, now: float) -> None:
        if m.term > self.term and self.role == LEADER:
            self._step_down(m.term, "node %d has term %d" % (m.src, m.term))
            return
        p = self.progress.get(m.src)
        if self.role != LEADER or m.term < self.term or p is None:
            return  # an answer to an older leadership
        self.last_seen[m.src] = p.last_heard = now
        p.inflight = max(0, p.inflight - 1)
        if m.round > p.round:
            p.round = m.round
            self._check_read_round(now)
        if m.syncing:
            p.state, p.inflight = SNAPSHOT, 0
            return
        if m.ok:
            if m.last_seq > p.match:
                if p.lagging:
                    self.stats["catchups_from_backlog"] += 1
                p.match = m.last_seq
            p.lagging = False
            p.next_seq = max(p.next_seq, m.last_seq + 1)
            if p.state != REPLICATE:
                p.state = REPLICATE
            self._advance_commit()
        else:
            # The follower's log ends elsewhere (or it just took a snapshot): resend,
            # one batch at a time, from where it says its log agrees.
            p.state, p.inflight = PROBE, 0
            p.next_seq = max(min(m.last_seq, self.log.last_seq), p.match) + 1
        self._send_append(m.src)

    def _probe_again(self, p: Progress) -> None:
        """Assume what was in flight to a follower lost: probe from its last known match.

        With no match known yet (a leader's first Appends went unanswered), probe
        at the end of the log, as a new leader does: the follower's answer says
        where its log ends. Probing from seq 1 would send a snapshot whenever the
        log no longer reaches back that far, to a follower that lacks nothing.
        """
        p.state, p.inflight, p.lagging = PROBE, 0, True
        p.next_seq = p.match + 1 if p.match else self.log.last_seq + 1

    def _advance_commit(self) -> None:
        """Move the commit point to the newest entry of this term a majority holds."""
        matches = {n: p.match for n, p in self.progress.items()}
        seq = rules.commit_seq(self.id, self.log.last_seq, matches, self.members)
        # Only an entry of the current term is committed by counting; earlier ones
        # come with it (an older entry held by a majority can still be replaced).
        if seq <= self.commit or self.log.term_at(seq) != self.term:
            return
        self.commit = seq
        self.commit_term = self.term
        self._after_commit()
        self._out.append(Committed(seq))
        self._start_read_round(self._now)
        for peer, p in self.progress.items():
            if p.inflight == 0:
                self._send_append(peer)

    def _after_commit(self) -> None:
        """Forget membership history the commit point passed, and trim the backlog."""
        self._member_history = [(s, m) for s, m in self._member_history if s >= self.commit]
        self.log.trim(min(self.commit, self.applied))

    def _leader_tick(self, now: float) -> None:
        timing = self.timing
        if not rules.reaches_majority(self.id, self.members, self.last_seen, now, timing.failure_timeout):
            self._step_down(self.term, "no majority heard within failure_timeout")
            return
        for peer, p in self.progress.items():
            if p.inflight and now - p.last_heard >= timing.heartbeat_interval:
                # Unanswered for a heartbeat interval: assume the window lost; probe again.
                self._probe_again(p)
            if now - p.last_sent >= timing.heartbeat_interval / 2:
                self._send_append(peer, heartbeat=True)
        self._membership_upkeep(now)

    def _membership_upkeep(self, now: float) -> None:
        """Remove one silent member, drop stale learners, promote one caught-up learner.

        One change at a time, and only once the previous one is committed, so
        any two successive memberships share a majority.
        """
        timing = self.timing
        for node_id in [n for n in self.learners
                        if now - self.last_seen.get(n, now) >= timing.failure_timeout]:
            del self.learners[node_id]
            self.progress.pop(node_id, None)
        if self.members_seq > self.commit:
            return
        silent = rules.silent_members(self.id, self.members, self.last_seen, now, timing.failure_timeout,
                                      timing.heartbeat_interval)
        if silent:
            logger.warning("removed node %d: silent for %.1fs", silent[0], timing.failure_timeout)
            self._propose_members({n: a for n, a in self.members.items() if n != silent[0]})
            return
        for node_id, node in sorted(self.learners.items()):
            progress = self.progress.get(node_id)
            # Only a learner that answers: while the log is short, one that never took
            # an entry is as "caught up" as one that took them all.
            answering = progress and progress.state == REPLICATE and \
                now - progress.last_heard < timing.heartbeat_interval
            if answering and rules.learner_caught_up(progress.match, self.log.last_seq, LEARNER_SLACK):
                logger.info("node %d caught up and became a member", node_id)
                self._propose_members({**self.members, node_id: node})
                return

    def _propose_members(self, members: dict[int, NodeAddress]) -> None:
        self._out.append(ProposeMembers(tuple(a for _, a in sorted(members.items()))))

    # -- replication, follower side ----------------------------------------------------------

    def _on_append(self, m: Append, now: float) -> None:
        if not self._follow(m.src, m.term, now):
            # An older term (or another leader's): the answer carries this node's term, and no round.
            self._send(m.src, AppendReply(self.id, self.term, False, self.log.last_seq))
            return
        ok, last_seq, syncing = self._accept_append(m)
        self._send(m.src, AppendReply(self.id, self.term, ok, last_seq, syncing, m.round))

    def _accept_append(self, m: Append) -> tuple[bool, int, bool]:
        """Take the entries of the leader's Append if they extend this log: (ok, last_seq, syncing) for the reply."""
        if self.syncing or m.prev_seq < 0:
            self._start_snapshot(m.src, "the leader's log no longer reaches back to this one's end")
            return False, self.log.last_seq, True
        log = self.log
        if m.prev_seq > log.last_seq or m.prev_seq < log.base_seq:
            # A gap, or older than this log reaches (a duplicate, or reordered): resend from its end or start.
            return False, min(log.last_seq, max(m.prev_seq, log.base_seq)), False
        if log.term_at(m.prev_seq) != m.prev_term:
            if m.prev_seq <= self.applied:
                # The store holds an entry the leader's log does not: only a snapshot can undo it.
                self._start_snapshot(m.src, "this store holds entries the leader's log replaced")
                return False, log.last_seq, True
            # Entries after the commit point may differ from the leader's: resend from there.
            return False, max(self.commit, log.base_seq), False
        if not self._take_entries(m.entries, m.src, "the leader's"):
            return False, log.last_seq, True
        matched = m.entries[-1].seq if m.entries else m.prev_seq
        self.matched = max(self.matched, matched)
        self._learn_commit(m.commit)
        return True, matched, False

    def _take_entries(self, entries, peer: int, whose: str) -> bool:
        """Add entries that extend this log, replacing a tail that differs from them.

        Returns False, with a snapshot started, when an entry would replace one
        the store already holds (this node executed writes that never
        committed): only a snapshot can undo those. That includes a store that
        runs past the log, whose tail an earlier conflict already cut.
        """
        log = self.log
        for entry in entries:
            if entry.seq <= log.base_seq or (entry.seq <= log.last_seq and log.term_at(entry.seq) == entry.term):
                continue   # held already
            if entry.seq <= self.applied:
                self._truncate(entry.seq - 1)
                self._start_snapshot(peer, "this store holds entries %s log replaced" % whose)
                return False
            if entry.seq <= log.last_seq:
                self._truncate(entry.seq - 1)
            log.append(entry)
            if entry.members is not None:
                self._set_members(entry.seq, {n.node_id: n for n in entry.members})
        return True

    def _on_commit(self, m: Commit, now: float) -> None:
        if m.src == self.leader_id and m.term == self.term and not self.syncing:
            self.last_leader_contact = now
            self._learn_commit(m.commit)

    def _learn_commit(self, commit: int) -> None:
        """Move the commit point up to the leader's, as far as this log is known to agree with it."""
        commit = min(commit, self.matched)
        if commit > self.commit:
            self.commit = commit
            self._apply_committed()
            self._out.append(Committed(commit))

    def _apply_committed(self) -> None:
        """Hand the committed entries the store lacks to the driver, in order."""
        self._apply_upto(self.commit)
        self._after_commit()

    def _apply_upto(self, upto: int) -> None:
        if upto <= self.applied or self.applied < self.log.base_seq:
            return
        entries = []
        while self.applied < upto:
            batch = [e for e in self.log.after(self.applied, APPEND_BATCH) if e.seq <= upto]
            if not batch:
                break
            entries.extend(batch)
            self.applied = batch[-1].seq
        if entries:
            self._out.append(Apply(tuple(entries)))

    def _start_snapshot(self, peer: int, why: str) -> None:
        if not self.syncing:
            logger.info("node %d takes a snapshot from node %d: %s", self.id, peer, why)
            self.syncing = True
            self._out.append(FetchSnapshot(peer))

    # -- elections ---------------------------------------------------------------------------

    def _vote_answer(self, candidate: Optional[int], now: float) -> VoteAnswer:
        """This node's answer to "who should lead?" (a candidate asking is evidently alive)."""
        if candidate is not None:
            self.last_seen[candidate] = now
        live = rules.live_ids(self.id, self.last_seen, now, self.timing.failure_timeout, self.members)
        live -= self.suspected
        if candidate is not None:
            live.add(candidate)
        nominee = rules.nominee(self.id, self.leader_id, self.leader_alive(now), live)
        return VoteAnswer(self.id, nominee, self.term, self.log.last_seq, self.log.last_term)

    def _election_round(self, now: float) -> None:
        """Conclude the open round, or ask every member whom to follow."""
        self.next_round = now + self.timing.failure_timeout / 4 * self.rng.uniform(0.8, 1.0)
        if self.role != CANDIDATE:
            logger.warning("node %d lost its leader (node %s); starting an election", self.id, self.leader_id)
            self._become(CANDIDATE, self.term, None)
        if self.poll is not None:
            self._conclude_poll(now)
            return
        self.stats["elections"] += 1
        others = {n for n in self.members if n != self.id}
        self.poll = PollRound(self.term, self._vote_answer(None, now), set(others))
        for node_id in sorted(others):
            self._send(node_id, Poll(self.id, self.term))
        self._maybe_conclude_poll(now)

    def _on_poll(self, m: Poll, now: float) -> None:
        answer = self._vote_answer(m.src, now)
        self._send(m.src, PollReply(self.id, self.term, answer.nominee, self.address(answer.nominee),
                                    answer.last_seq, answer.last_term))

    def _on_poll_reply(self, m: PollReply, now: float) -> None:
        poll = self.poll
        if poll is None or m.src not in poll.asked:
            return
        poll.answers[m.src] = VoteAnswer(m.src, m.nominee, m.term, m.last_seq, m.last_term)
        if m.nominee_node is not None:
            poll.nominee_nodes[m.nominee] = m.nominee_node
            self.known.setdefault(m.nominee, m.nominee_node)
        self._maybe_conclude_poll(now)

    def _maybe_conclude_poll(self, now: float) -> None:
        if self.poll is not None and set(self.poll.answers) >= self.poll.asked:
            self._conclude_poll(now)

    def _conclude_poll(self, now: float) -> None:
        """Act on a unanimous majority: take over, or ask the named node to; else find an unknown leader."""
        poll, self.poll = self.poll, None
        others = list(poll.answers.values())
        answers = [rules.defer_to_others(poll.own, others)] + others
        for answer in answers:
            self.last_seen[answer.node_id] = now
        chosen = rules.tally(self.members, answers)
        if chosen is None:
            # A node away while the membership changed may not know the leader elected
            # meanwhile: when every other member names one node outside its list, ask it.
            named = {a.nominee for a in others}
            if len(named) == 1 and others:
                nominee = named.pop()
                if nominee not in self.members and nominee in poll.nominee_nodes:
                    self._send(nominee, CanYouLead(self.id, self.term))
            return
        top_term = max(a.term for a in answers)
        if chosen == self.id:
            self._take_over(top_term, now)
        else:
            self._send(chosen, CanYouLead(self.id, top_term))

    def _on_can_you_lead(self, m: CanYouLead, now: float) -> None:
        if self.role == LEADER:
            self._send(m.src, CanYouLeadReply(self.id, self.term, True, self.id, m.src in self.members))
        elif self.leader_id not in (None, self.id) and self.leader_alive(now):
            self._send(m.src, CanYouLeadReply(self.id, self.term, False, self.leader_id))
        elif self.id not in self.members or self.role == LEARNER or self.syncing or self.applied > self.commit:
            # A store holding entries that may never commit must not lead: it syncs first.
            self._send(m.src, CanYouLeadReply(self.id, self.term, False, 0))
        else:
            self._take_over(max(m.term, self.term), now)
            self._send(m.src, CanYouLeadReply(self.id, self.term, True, 0))

    def _on_can_you_lead_reply(self, m: CanYouLeadReply, now: float) -> None:
        if m.granted and m.leader_id == m.src:
            # It already leads (this node was away while it was elected): follow it.
            self._follow(m.src, m.term, now)
            if not m.member:
                self._ask_to_rejoin(now)
        elif not m.granted and self.role == CANDIDATE:
            self.suspected.add(m.src)
            logger.info("node %d refused or could not lead; electing again without it", m.src)

    def _take_over(self, seen_term: int, now: float) -> None:
        """Announce a new term; with a majority's acceptance (and their newest entries), lead.

        Not while a snapshot is replacing the store, nor while the store runs
        past the log (a conflict cut the log under entries the store holds):
        such a store cannot be told apart from the log it would lead with.
        """
        if self.role == LEADER or self.takeover is not None or self.id not in self.members \
                or self.syncing or self.applied > self.log.last_seq:
            return
        term = max(self.term, seen_term) + 1
        self.poll = None
        self._become(CANDIDATE, term, self.id)
        own = VoteAnswer(self.id, self.id, term, self.log.last_seq, self.log.last_term)
        self.takeover = TakeOver(term, now, {self.id: own})
        for node_id in sorted(self.members):
            if node_id != self.id:
                self._send(node_id, NewLeader(self.id, term))
        self._maybe_finish_take_over(now)

    def _on_new_leader(self, m: NewLeader, now: float) -> None:
        if self.role == LEADER and m.term > self.term:
            self._step_down(m.term, "node %d leads term %d" % (m.src, m.term))
        if self._follow(m.src, m.term, now):
            self._send(m.src, NewLeaderReply(self.id, self.term, True, self.log.last_seq, self.log.last_term))
        else:
            self._send(m.src, NewLeaderReply(self.id, self.term, False, 0, 0))

    def _on_new_leader_reply(self, m: NewLeaderReply, now: float) -> None:
        takeover = self.takeover
        if takeover is None or m.term != takeover.term or not m.accepted:
            return
        takeover.accepted[m.src] = VoteAnswer(m.src, self.id, m.term, m.last_seq, m.last_term)
        self._maybe_finish_take_over(now)

    def _maybe_finish_take_over(self, now: float) -> None:
        takeover = self.takeover
        accepted = [n for n in takeover.accepted if n in self.members]
        if takeover.fetching is None and len(accepted) >= rules.majority(len(self.members)):
            self._finish_take_over(now)

    def _finish_take_over(self, now: float) -> None:
        """Copy what the most up-to-date acceptor has beyond this log, then lead."""
        takeover = self.takeover
        best = rules.most_up_to_date(takeover.accepted.values())
        if (best.last_term, best.last_seq) > (self.log.last_term, self.log.last_seq):
            logger.info("node %d copies entries up to seq %d from node %d before leading",
                        self.id, best.last_seq, best.node_id)
            takeover.fetching, takeover.fetch_until = best.node_id, best.last_seq
            # From the commit point, or from the log's base when a snapshot put it past
            # the commit point: asking again for what the best log no longer holds would
            # fetch the same snapshot forever.
            self._send(best.node_id, Fetch(self.id, takeover.term, max(self.commit, self.log.base_seq)))
            return
        if self.id not in self.members:
            # What it copied removes it from the membership: the members elect among
            # themselves, and this node asks to join again, like any node removed.
            logger.info("node %d is no longer a member; it does not lead term %d", self.id, takeover.term)
            self._give_up_take_over()
            return
        self._lead(now)

    def _on_fetch(self, m: Fetch, now: float) -> None:
        ok = self.log.covers(m.after_seq) or m.after_seq >= self.log.last_seq
        entries = tuple(self.log.after(m.after_seq, APPEND_BATCH, APPEND_BATCH_BYTES)) if ok else ()
        self._send(m.src, FetchReply(self.id, self.term, ok, entries))

    def _on_fetch_reply(self, m: FetchReply, now: float) -> None:
        takeover = self.takeover
        if takeover is None or takeover.fetching != m.src:
            return
        if not m.ok:
            self.syncing = True
            self._out.append(FetchSnapshot(m.src))
            return
        if m.entries:
            self.stats["copies_before_leading"] += 1
        if not self._take_entries(m.entries, m.src, "the best"):
            return
        if m.entries and self.log.last_seq < takeover.fetch_until:
            takeover.started = now
            self._send(m.src, Fetch(self.id, takeover.term, self.log.last_seq))
            return
        takeover.fetching = None
        self._finish_take_over(now)

    def _give_up_take_over(self) -> None:
        self.takeover = None
        if self.leader_id == self.id:
            self._become(CANDIDATE, self.term, None)

    def _lead(self, now: float) -> None:
        """Become the serving leader of the take-over's term."""
        term = self.takeover.term
        self.takeover = None
        self.poll = None
        self.suspected.clear()
        # A leader's store holds its whole log: it executes new writes on top of it.
        self._apply_upto(self.log.last_seq)
        self._become(LEADER, term, self.id)
        logger.info("node %d became leader at term %d (log at seq %d)", self.id, term, self.log.last_seq)
        self.progress = {n: Progress(self.log.last_seq + 1) for n in self.members if n != self.id}
        for n in self.members:
            self.last_seen[n] = now   # a fresh leader gives every member a full failure_timeout
        # The first entry of a term commits every entry before it.
        self._propose_members(self.members)

    # -- linearizable reads (read index) -----------------------------------------------------

    def _start_read_round(self, now: float) -> None:
        """Leader: send the heartbeats that confirm the waiting reads, unless a round is in flight.

        Not before an entry of this term committed: until then the commit
        point may lack writes an earlier leader acknowledged.
        """
        if self.read_round is not None or not self.reads_waiting or self.commit_term != self.term:
            return
        self.last_read_round += 1
        self.read_round = ReadRound(self.last_read_round, self.commit, self.reads_waiting, now)
        self.reads_waiting = []
        for peer in self.members:
            if peer in self.progress:
                self._send_append(peer, heartbeat=True)
        self._check_read_round(now)

    def _check_read_round(self, now: float) -> None:
        """Leader: once a majority acknowledged the round in flight, its reads have their index."""
        r = self.read_round
        if r is None or not rules.round_confirmed(self.id, self.members,
                                                  {n: p.round for n, p in self.progress.items()}, r.number):
            return
        self.read_round = None
        self.stats["read_index_rounds"] += 1
        self._answer_reads(r.reads, r.index, "")
        self._start_read_round(now)

    def _ask_read_index(self, now: float) -> None:
        """Follower: ask the leader for the waiting reads' index, unless a request is in flight."""
        if self.read_round is not None or not self.reads_waiting:
            return
        self.last_read_round += 1
        self.read_round = ReadRound(self.last_read_round, 0, self.reads_waiting, now, self.leader_id)
        self.reads_waiting = []
        self._send(self.leader_id, ReadIndex(self.id, self.term, self.last_read_round))

    def _on_read_index(self, m: ReadIndex, now: float) -> None:
        if self.role != LEADER or m.term > self.term:
            self._send(m.src, ReadIndexReply(self.id, self.term, m.read_id, False, 0))
            return
        self.reads_waiting.append((m.src, m.read_id, now))
        self._start_read_round(now)

    def _on_read_index_reply(self, m: ReadIndexReply, now: float) -> None:
        r = self.read_round
        if r is None or self.role == LEADER or m.src != r.leader or m.read_id != r.number:
            return   # an answer to a request given up on
        self.read_round = None
        if m.ok:
            self.stats["read_index_rounds"] += 1
        self._answer_reads(r.reads, m.index if m.ok else None, "the leader could not confirm that it still leads")
        self._ask_read_index(now)

    def _expire_reads(self, now: float) -> None:
        """Fail the reads not confirmed within read_timeout (a lost message, a cut, no majority)."""
        timeout = self.timing.read_timeout
        why = "the leader was not confirmed within %gs" % timeout
        r = self.read_round
        if r is not None and now - r.started >= timeout:
            self.read_round = None
            self._answer_reads(r.reads, None, why)
        expired = [w for w in self.reads_waiting if now - w[2] >= timeout]
        if expired:
            self.reads_waiting = [w for w in self.reads_waiting if now - w[2] < timeout]
            self._answer_reads(expired, None, why)
        if self.role == LEADER:
            self._start_read_round(now)
        elif self.leader_alive(now):
            self._ask_read_index(now)
        else:
            self._fail_reads("no leader is known at the moment; try again shortly")

    def _fail_reads(self, reason: str) -> None:
        """Fail every read in flight or waiting (the role or the leader changed)."""
        reads = (self.read_round.reads if self.read_round is not None else []) + self.reads_waiting
        self.read_round, self.reads_waiting = None, []
        self._answer_reads(reads, None, reason)

    def _answer_reads(self, reads: list, index: Optional[int], reason: str) -> None:
        """Give reads their index (None: they failed): this node's as an action, a follower's as a reply."""
        local = []
        for node, read_id, *_ in reads:
            if node == self.id:
                local.append(read_id)
            else:
                self._send(node, ReadIndexReply(self.id, self.term, read_id, index is not None, index or 0))
        if not local:
            return
        if index is None:
            self._out.append(ReadFailed(tuple(local), reason))
        else:
            self._out.append(ReadReady(tuple(local), index))

    # -- joining and leaving -----------------------------------------------------------------

    def _on_join(self, m: Join, now: float) -> None:
        if self.role != LEADER:
            leader = self.address(self.leader_id) if self.leader_alive(now) else None
            if leader is not None:
                self._send(m.src, JoinReply(self.id, self.term, REDIRECT, leader=leader), m.node)
            else:
                self._send(m.src, JoinReply(self.id, self.term, NO_LEADER, message="no leader at the moment"),
                           m.node)
            return
        node_id = m.node.node_id
        # The same node asking again (the answer to its first Join was lost) is taken again.
        taken = set(self.members) | {n for n, a in self.learners.items() if a != m.node}
        if node_id in taken or node_id <= 0:
            if not m.id_assigned:
                self._send(m.src, JoinReply(self.id, self.term, REFUSED,
                                            message="node id %d is already in the cluster" % node_id), m.node)
                return
            node_id = max(taken) + 1
        node = NodeAddress(node_id, m.node.client_address, m.node.grpc_address)
        self.known[node_id] = node
        self.learners[node_id] = node
        self.last_seen[node_id] = now
        self.progress[node_id] = Progress(self.log.last_seq + 1, last_heard=now)
        logger.info("node %d (%s) joined as a learner", node_id, node.client_address)
        self._send(node_id, JoinReply(self.id, self.term, ACCEPTED, node_id, self.me))
        self._send_append(node_id, heartbeat=True)

    def _on_join_reply(self, m: JoinReply, now: float) -> None:
        if m.status == ACCEPTED and m.node_id == self.id:
            self.known[m.src] = m.leader
            self._follow(m.src, m.term, now)
        elif m.status == REDIRECT and m.leader is not None:
            self.known[m.leader.node_id] = m.leader
            self._send(m.leader.node_id, Join(self.id, self.term, self.me))

    def _ask_to_rejoin(self, now: float) -> None:
        """A node removed while it was away registers again as a learner, like a new node.

        It asks its leader while it hears from it, and otherwise every node it
        knows: the leader may have failed, and the next one does not know this node.
        """
        if now < self.next_join:
            return
        self.next_join = now + self.timing.failure_timeout / 2
        if self.leader_id not in (None, self.id) and self.leader_alive(now):
            targets = [self.leader_id]
        else:
            targets = [n for n in sorted(self.known) if n != self.id]
        if targets:
            logger.warning("node %d is no longer a member; asking node(s) %s to take it back", self.id, targets)
        for target in targets:
            self._send(target, Join(self.id, self.term, self.me))

    def _on_leave(self, m: Leave, now: float) -> None:
        ok = self.role == LEADER and self.members_seq <= self.commit
        if ok:
            self.learners.pop(m.src, None)
            self.progress.pop(m.src, None)
            if m.src in self.members:
                logger.info("node %d left the cluster", m.src)
                self._propose_members({n: a for n, a in self.members.items() if n != m.src})
        self._send(m.src, LeaveReply(self.id, self.term, ok))

    def _on_ignored(self, m, now: float) -> None:
        """Answers the core needs nothing from (LeaveReply, Rejected)."""

    # -- output ------------------------------------------------------------------------------

    def _send(self, to: int, message: Message, node: Optional[NodeAddress] = None) -> None:
        if node is not None:
            self.known.setdefault(to, node)
        self._out.append(Send(to, message))

    def _flush(self) -> list:
        out, self._out = self._out, []
        return out

    _HANDLERS = {
        Append: _on_append, AppendReply: _on_append_reply, Commit: _on_commit,
        Poll: _on_poll, PollReply: _on_poll_reply,
        CanYouLead: _on_can_you_lead, CanYouLeadReply: _on_can_you_lead_reply,
        NewLeader: _on_new_leader, NewLeaderReply: _on_new_leader_reply,
        Fetch: _on_fetch, FetchReply: _on_fetch_reply,
        Join: _on_join, JoinReply: _on_join_reply,
        Leave: _on_leave, LeaveReply: _on_ignored, Rejected: _on_ignored,
        ReadIndex: _on_read_index, ReadIndexReply: _on_read_index_reply,
    }

"""The cluster driver: the only place where the rules, threads and gRPC meet.

A `ClusterNode` is a record sink of the engine (on the leader every write
becomes a numbered, replicated log entry and its reply waits for a majority),
the engine's forwarder (on a follower every write goes to the leader), and
the handler behind the gRPC service. Its threads: a ticker (heartbeats,
failure detection, elections, membership upkeep), one sender per peer while
leading, and a sync thread while catching up. Lock order: store.lock, then
`self._lock`; no RPC is ever made while holding either.
"""

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional

import msgpack

from .. import records as records_mod
from ..clock import Clock, SystemClock
from ..commands import TABLE, lookup
from ..config import Config
from ..engine import Context, Engine
from ..errors import GeomysError, NoLeader, Timeout
from ..protocol import error_reply
from ..store import Store
from . import state as rules
from .pb import cluster_pb2 as pb
from .replication import Backlog
from .state import CANDIDATE, FOLLOWER, LEADER, LEARNER, ClusterState, NodeAddress, VoteAnswer
from .transport import Peers, PeerUnavailable

logger = logging.getLogger(__name__)

APPEND_BATCH = 2000              # most entries in one AppendEntries
APPEND_BATCH_BYTES = 4 << 20     # ...and about this many bytes
SYNC_CHUNK_BYTES = 1 << 20       # snapshot chunk size on the Sync stream
LEARNER_SLACK = 100              # a learner this close to the leader's log becomes a member
FORWARD_BLOCK_CHUNK = 2.0        # a forwarded blocking pop waits on the leader at most this long per call
JOIN_ATTEMPTS = 3                # calls to the join address before concluding nobody is there


# What a sender does after one AppendEntries (replicate_once's answer).
AGAIN, IDLE, BACK_OFF, STOP = "again", "idle", "back-off", "stop"


class JoinError(Exception):
    """Joining the cluster failed; the message says why."""


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _is_blocking(request) -> bool:
    """Whether a decoded request names a blocking command (forwarded in chunks, one at a time)."""
    spec = lookup(TABLE, request.get("command")) if isinstance(request, dict) else None
    return spec is not None and spec.is_blocking


def _decode_entry(payload: bytes) -> tuple[int, int, tuple]:
    seq, term, record = _unpack(payload)
    return seq, term, records_mod.validate(record)


class ClusterNode:
    """One node's part in the cluster: roles, log, replication, elections."""

    def __init__(self, config: Config, engine: Engine, clock: Optional[Clock] = None, peers=None,
                 spawn: Optional[Callable[[str, Callable, tuple], None]] = None, channel_credentials=None) -> None:
        """Wire a node; tests pass a fake clock, an in-memory network as `peers` and a task runner as `spawn`."""
        self.config = config
        self.engine = engine
        self.store = engine.store
        self.now = (clock or SystemClock()).monotonic
        self._spawner = spawn
        self.me = NodeAddress(config.node_id, "%s:%d" % (config.advertise_host, config.client_port),
                              "%s:%d" % (config.advertise_host, config.grpc_port))
        self.state = ClusterState(self_id=config.node_id)
        self.backlog = Backlog(config.backlog_entries, config.backlog_bytes)
        self.peers = peers or Peers(config.rpc_timeout, config.max_request_bytes + (4 << 20), config.cluster_secret,
                                    channel_credentials)
        self._lock = threading.RLock()
        # Two conditions on one lock, so a new entry wakes only the senders and
        # a commit only the clients waiting for one (never a herd of both).
        self._entries_cond = threading.Condition(self._lock)   # senders: new entries, epoch changes
        self._commit_cond = threading.Condition(self._lock)    # clients: commits, role changes
        self.safe_seq = 0          # highest seq a reply may reveal (leader: committed)
        self.acked: dict[int, int] = {}   # leader: follower id -> last seq it applied
        self.learners: dict[int, NodeAddress] = {}
        # Every node any member list named: a deposed leader's own uncommitted list may
        # lack the new leader, and it must still reach that leader to be synced back.
        self._known: dict[int, NodeAddress] = {}
        self.epoch = 0             # bumped at each leadership change; senders of old epochs stop
        self.syncing = False
        self.stats = {"syncs_full_served": 0, "syncs_incremental_served": 0,
                      "syncs_full_received": 0, "syncs_incremental_received": 0, "elections": 0,
                      "catchups_from_backlog": 0}
        self._unreached: set[int] = set()   # leader: peers whose last call failed
        self._stopping = threading.Event()
        self._becoming_leader = False
        self._rejoining = False
        self._leaving = False
        self._ticking = False
        self._next_heartbeat = 0.0
        self._members_changed = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cluster-rpc")
        self._forward_slots = threading.BoundedSemaphore(32)
        self._threads: list[threading.Thread] = []
        self._senders: dict[int, int] = {}            # peer id -> epoch its sender serves
        self._peer_log: dict[int, Optional[tuple[int, int]]] = {}  # peer id -> (seq, term) its log ends at
        self.failure_timeout = config.failure_timeout
        self.heartbeat_interval = config.heartbeat_interval
        # Election calls must not wait on a paused node longer than the others
        # wait for the new leader's first append.
        self.election_timeout = min(config.rpc_timeout, config.failure_timeout / 3)

    # -- start-up ---------------------------------------------------------------

    def bootstrap(self) -> None:
        """Start a new cluster with this node as its only member and leader (term 1)."""
        with self.store.lock:
            self.backlog.reset(self.engine.seq, 0)
            self.state.members = {self.me.node_id: self.me}
            self.state.term = 1
            self._become_serving_leader()
        logger.info("node %d bootstrapped a new cluster and became leader at term 1", self.me.node_id)

    def join(self) -> None:
        """Join the cluster at config.join: register as a learner, take its state, wait to be a member."""
        deadline = self.now() + max(self.config.join_timeout, 3 * self.failure_timeout)
        leader_address = self.register(self.config.join, deadline)
        self._sync_from(leader_address, full=True)
        self._start_threads()
        if not self._wait_member(deadline):
            raise JoinError("the leader did not make this node a member within %.0fs" % self.config.join_timeout)
        logger.info("node %d joined the cluster (leader %d, term %d)",
                    self.me.node_id, self.state.leader_id, self.state.term)

    def register(self, address: str, deadline: float) -> str:
        """Ask the cluster at `address` to take this node as a learner; return the leader's address.

        A follower answers with the leader's address, which is asked next; a
        cluster in the middle of an election is asked again until `deadline`.
        """
        with self.store.lock:
            self.state.role = LEARNER
            self.engine.forwarder = self.forward
            self.store.owns_expiry = False
        failures = 0
        while True:
            request = pb.JoinRequest(node=self._node_pb(self.me),
                                     id_assigned_by_leader=not self.config.node_id_explicit)
            try:
                reply = self.peers.call(address, "Join", request)
            except PeerUnavailable as exc:
                failures += 1
                if failures >= JOIN_ATTEMPTS or self._stopping.wait(0.5):
                    raise JoinError("no Geomys cluster answers at %s (%s)" % (address, exc)) from None
                continue  # a busy or just-started peer may miss one call
            if reply.status == pb.JoinReply.ACCEPTED:
                break
            if reply.status == pb.JoinReply.REFUSED:
                raise JoinError("the cluster refused this node: %s" % reply.message)
            if reply.status == pb.JoinReply.REDIRECT:
                address = reply.leader_grpc_address
            elif self.now() >= deadline or self._stopping.wait(min(self.heartbeat_interval, 1.0)):
                raise JoinError("the cluster at %s had no leader until the join timed out" % address)
        if reply.node_id != self.me.node_id:
            logger.info("the leader assigned node id %d", reply.node_id)
            self.me = NodeAddress(reply.node_id, self.me.client_address, self.me.grpc_address)
            self.state.self_id = reply.node_id
        with self.store.lock:
            self.state.adopt_term(reply.term, reply.leader_id, self.now())
            self.state.members[reply.leader_id] = NodeAddress(reply.leader_id, "", address)
        return address

    def _wait_member(self, deadline: float) -> bool:
        while self.now() < deadline and not self._stopping.is_set():
            if self.me.node_id in self.state.members:
                return True
            self._members_changed.wait(0.1)
            self._members_changed.clear()
        return self.me.node_id in self.state.members

    def start(self) -> None:
        """Start the ticker (the bootstrap leader's senders start with its leadership)."""
        self._start_threads()

    def _start_threads(self) -> None:
        if not self._ticking:
            self._ticking = True
            self._spawn("cluster-ticker", self._tick_loop)

    def _spawn(self, name: str, target: Callable, *args) -> None:
        if self._spawner is not None:
            self._spawner(name, target, args)
            return
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Leave the cluster (a follower asks the leader to remove it) and stop every thread."""
        self._leaving = True  # from now on, not being a member is expected: never rejoin
        if self.state.role in (FOLLOWER, LEARNER) and self.state.leader_id in self.state.members:
            try:
                self.peers.call(self.state.members[self.state.leader_id].grpc_address, "Leave",
                                pb.LeaveRequest(node_id=self.me.node_id, term=self.state.term))
            except PeerUnavailable as exc:
                logger.warning("could not tell the leader this node leaves: %s", exc)
        self._stopping.set()
        with self._lock:
            self.epoch += 1
            self._wake_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.peers.close()

    # -- roles (caller holds store.lock) ---------------------------------------------

    def _become_serving_leader(self) -> None:
        """Start executing writes: no forwarding, expiry owned here, senders running."""
        state = self.state
        state.role, state.leader_id = LEADER, self.me.node_id
        state.last_term = state.term
        self.engine.forwarder = None
        self.store.owns_expiry = True
        with self._lock:
            self.epoch += 1
            self.acked = {}
            self.safe_seq = max(self.safe_seq, self.engine.seq)
            epoch = self.epoch
            self._wake_all()
        # The first entry of a term commits every entry before it.
        self.engine.append_records([rules.members_record(state.members)])
        for node_id in self._targets():
            self._start_sender(node_id, epoch)

    def _step_down(self, term: int, leader_id: Optional[int], why: str) -> None:
        """Stop leading: writes are forwarded (or refused), waiting replies fail."""
        state = self.state
        was_leader = state.role == LEADER
        if term > state.term:
            state.term = term
        state.role = FOLLOWER if leader_id is not None else CANDIDATE
        state.leader_id = leader_id
        self.engine.forwarder = self.forward
        self.store.owns_expiry = False
        with self._lock:
            self.epoch += 1
            self._wake_all()
        if was_leader:
            logger.warning("node %d stepped down at term %d: %s", self.me.node_id, state.term, why)

    def _wake_all(self) -> None:
        """Wake senders and waiting clients alike: the epoch or role changed (caller holds _lock)."""
        self._entries_cond.notify_all()
        self._commit_cond.notify_all()

    def _targets(self) -> list[int]:
        return [n for n in list(self.state.members) + list(self.learners) if n != self.me.node_id]

    def _address_of(self, node_id: int) -> Optional[str]:
        node = self.state.members.get(node_id) or self.learners.get(node_id) or self._known.get(node_id)
        return node.grpc_address if node else None

    # -- the engine's record sink ------------------------------------------------------

    def append(self, seq: int, record: tuple) -> None:
        """Log a leader's write as entry `seq` of the current term (caller holds store.lock)."""
        state = self.state
        if state.role != LEADER:
            return  # a follower's entries are logged by _apply_payloads with the leader's terms
        self.backlog.append(seq, state.term, _pack([seq, state.term, record]))
        state.last_term = state.term
        if record[0] == "MEMBERS":
            self._set_members(rules.members_from_record(record))
        with self._lock:
            if len(state.members) <= 1:
                self.safe_seq = seq
                self._commit_cond.notify_all()
            self._entries_cond.notify_all()

    def wait(self, seq: int, write_seq: int = 0) -> None:
        """Block until entry `seq` is applied by a majority, as long as this node leads.

        A write of this connection that leadership was lost before confirming
        is NO_LEADER (its outcome is unknown). A node that does not lead shows
        reads from what it has, like any follower, so a node cut off from the
        majority keeps serving reads.
        """
        if self.safe_seq >= seq:
            return
        with self._lock:
            while self.safe_seq < seq:
                if self.state.role != LEADER:
                    if self.safe_seq < write_seq:
                        raise NoLeader("leadership was lost before this write reached a majority; "
                                       "its outcome is unknown")
                    return
                self._commit_cond.wait(0.5)

    def _set_members(self, members: dict[int, NodeAddress]) -> None:
        """Adopt a new membership (from a MEMBERS record)."""
        state = self.state
        state.members = members
        self._known.update(members)
        for node_id in members:
            self.learners.pop(node_id, None)
        if state.role == LEARNER and self.me.node_id in members:
            state.role = FOLLOWER
        self._members_changed.set()

    # -- the engine's forwarder (follower) ---------------------------------------------

    def forward(self, requests: list, ctx: Context) -> list:
        """Execute writes on the leader, in order and in one call; return its replies unchanged.

        Called outside the store lock with the consecutive writes of one read
        (or one blocking pop, which is forwarded in bounded chunks).
        """
        if ctx.forwarded:
            raise NoLeader("this node is not the leader")
        leader_id = self.state.leader_id
        address = self._address_of(leader_id) if leader_id is not None else None
        if address is None or leader_id == self.me.node_id or \
                not self.state.leader_alive(self.now(), self.failure_timeout):
            raise NoLeader("no leader is known at the moment; try again shortly")
        if len(requests) == 1 and _is_blocking(requests[0]):
            return [self._forward_blocking(address, requests[0], ctx)]
        return self._forward_once(address, requests, self.config.rpc_timeout)

    def _forward_once(self, address: str, requests: list, timeout: float) -> list:
        try:
            reply = self.peers.call(address, "Forward", pb.ForwardRequest(
                requests=[_pack(r) for r in requests], term=self.state.term, from_node=self.me.node_id),
                timeout=timeout)
        except PeerUnavailable as exc:
            raise NoLeader("the leader could not be reached (%s); the write's outcome is unknown" % exc) from None
        if reply.not_leader:
            raise NoLeader("the node this one follows is no longer the leader; try again shortly")
        if len(reply.replies) != len(requests):
            raise NoLeader("the leader answered %d of %d forwarded requests" % (len(reply.replies), len(requests)))
        return [_unpack(r) for r in reply.replies]

    def _forward_blocking(self, address: str, request: dict, ctx: Context) -> dict:
        """Wait for a blocking pop in short calls, so a long wait never pins a leader's gRPC worker."""
        timeout = float(request.get("timeout") or 0)
        deadline = self.now() + timeout if timeout else None
        while True:
            chunk = FORWARD_BLOCK_CHUNK if deadline is None else min(FORWARD_BLOCK_CHUNK,
                                                                     max(deadline - self.now(), 0.001))
            reply = self._forward_once(address, [dict(request, timeout=chunk)], chunk + self.config.rpc_timeout)[0]
            if reply.get("code") != "TIMEOUT":
                return reply
            if deadline is not None and self.now() >= deadline:
                return error_reply(Timeout("no element arrived in list %r within %gs" % (request.get("key"), timeout)))
            if not ctx.is_connected():
                return reply

    # -- gRPC handlers (called by cluster.service on the gRPC pool) ------------------------

    def on_forward(self, req: pb.ForwardRequest) -> pb.ForwardReply:
        """Run a follower's client writes here, in order, if this node leads; return the replies."""
        if self.engine.forwarder is not None:
            return pb.ForwardReply(not_leader=True, leader_id=self.state.leader_id or 0)
        requests = []
        for payload in req.requests:
            try:
                requests.append(_unpack(payload))
            except (ValueError, msgpack.exceptions.UnpackException):
                requests.append(None)  # answered BAD_REQUEST by the engine
        ctx = Context(self.engine, address="node %d" % req.from_node)
        ctx.authenticated = True
        ctx.forwarded = True
        blocking = any(_is_blocking(r) for r in requests)
        if blocking and not self._forward_slots.acquire(timeout=FORWARD_BLOCK_CHUNK):
            busy = error_reply(Timeout("too many blocked clients; try again"))
            return pb.ForwardReply(replies=[_pack(busy)] * len(requests))
        try:
            replies: list = []
            self.engine.execute_batch(requests, ctx, replies)
            try:
                self.engine.settle(ctx)
            except GeomysError as exc:
                replies = [error_reply(exc)] * len(replies)
        finally:
            if blocking:
                self._forward_slots.release()
        return pb.ForwardReply(replies=[_pack(r) for r in replies])

    def on_heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        """A follower says it is alive; answer with the membership."""
        now = self.now()
        with self.store.lock:
            state = self.state
            if req.term > state.term and state.role == LEADER:
                self._step_down(req.term, None, "a node reported a higher term")
            with self._lock:
                state.last_seen[req.node_id] = now
            members = [self._node_pb(a) for _, a in sorted(state.members.items())]
            return pb.HeartbeatReply(ok=state.role == LEADER, term=state.term, leader_id=state.leader_id or 0,
                                     nodes=members, nodes_hash=rules.membership_hash(state.members))

    def on_join(self, req: pb.JoinRequest) -> pb.JoinReply:
        """Take a new node as a learner (leader), or point it at the leader."""
        with self.store.lock:
            state = self.state
            if state.role != LEADER or self.engine.forwarder is not None:
                address = self._address_of(state.leader_id) if state.leader_id is not None else None
                if address and state.leader_alive(self.now(), self.failure_timeout):
                    return pb.JoinReply(status=pb.JoinReply.REDIRECT, leader_id=state.leader_id,
                                        leader_grpc_address=address)
                return pb.JoinReply(status=pb.JoinReply.NO_LEADER, message="no leader at the moment")
            node_id = req.node.node_id
            taken = set(state.members) | set(self.learners)
            if node_id in taken or node_id <= 0:
                if not req.id_assigned_by_leader:
                    return pb.JoinReply(status=pb.JoinReply.REFUSED,
                                        message="node id %d is already in the cluster" % node_id)
                node_id = max(taken) + 1
            node = NodeAddress(node_id, req.node.client_address, req.node.grpc_address)
            self.learners[node_id] = node
            with self._lock:
                state.last_seen[node_id] = self.now()
            self._start_sender(node_id, self.epoch)
            logger.info("node %d (%s) joined as a learner", node_id, node.client_address)
            return pb.JoinReply(status=pb.JoinReply.ACCEPTED, node_id=node_id, leader_id=self.me.node_id,
                                leader_grpc_address=self.me.grpc_address, term=state.term)

    def on_leave(self, req: pb.LeaveRequest) -> pb.LeaveReply:
        """Remove a node that is stopping cleanly."""
        with self.store.lock:
            if self.state.role != LEADER:
                return pb.LeaveReply(ok=False)
            self.learners.pop(req.node_id, None)
            if req.node_id in self.state.members and req.node_id != self.me.node_id:
                members = {n: a for n, a in self.state.members.items() if n != req.node_id}
                self.engine.append_records([rules.members_record(members)])
                logger.info("node %d left the cluster", req.node_id)
        return pb.LeaveReply(ok=True)

    def on_append(self, req: pb.AppendRequest) -> pb.AppendReply:
        """Apply the leader's next entries in order, or say where this node's log ends."""
        now = self.now()
        with self.store.lock:
            state = self.state
            if req.term < state.term or not state.adopt_term(req.term, req.leader_id, now):
                return self._append_reply(pb.AppendReply.STALE_TERM)
            if self.engine.forwarder is None:  # was leading at a lower term
                self._step_down(req.term, req.leader_id, "a leader of a higher term appeared")
            with self._lock:
                state.last_seen[req.leader_id] = now
            if req.prev_seq < 0 or self.syncing:
                if not self.syncing:
                    self._start_sync(req.leader_id)
                return self._append_reply(pb.AppendReply.SYNCING)
            my_seq = self.engine.seq
            if req.prev_seq > my_seq or self.backlog.term_at(req.prev_seq) != req.prev_term:
                return self._append_reply(pb.AppendReply.MISMATCH)
            if not self._apply_payloads(req.entries):
                return self._append_reply(pb.AppendReply.MISMATCH)
            self._note_safe(min(req.commit_seq, self.engine.seq) if state.role != LEADER else self.engine.seq)
            return self._append_reply(pb.AppendReply.OK)

    def _append_reply(self, status) -> pb.AppendReply:
        return pb.AppendReply(status=status, term=self.state.term, last_seq=self.engine.seq,
                              last_term=self.state.last_term)

    def _note_safe(self, seq: int) -> None:
        # A follower reveals whatever its leader sent; only a leader waits for majorities.
        with self._lock:
            self.safe_seq = max(self.safe_seq, self.engine.seq)
            self._commit_cond.notify_all()

    def _apply_payloads(self, payloads) -> bool:
        """Apply encoded entries that extend this log, skipping ones it has (caller holds store.lock).

        Returns False when an entry conflicts with this node's log (same seq,
        other term) or leaves a gap; nothing after that point is applied.
        """
        batch, state = [], self.state
        next_seq = self.engine.seq + 1
        for payload in payloads:
            seq, term, record = _decode_entry(payload)
            if seq < next_seq:
                if self.backlog.term_at(seq) not in (term, None):
                    return False
                continue
            if seq != next_seq:
                return False
            batch.append((seq, record))
            self.backlog.append(seq, term, payload)
            state.last_term = term
            next_seq += 1
            if record[0] == "MEMBERS":
                self.engine.apply_entries(batch)
                batch = []
                self._set_members(rules.members_from_record(record))
        if batch:
            self.engine.apply_entries(batch)
        return True

    def on_vote(self, req: pb.VoteRequest) -> pb.VoteReply:
        """Name the node that should lead, with this node's term and log position."""
        with self.store.lock:
            with self._lock:
                answer = self.state.vote_answer(req.candidate_id, self.now(), self.failure_timeout,
                                                self.engine.seq)
            nominee = self.state.members.get(answer.nominee) or self.learners.get(answer.nominee)
        return pb.VoteReply(node_id=answer.node_id, nominee=answer.nominee, term=answer.term,
                            last_seq=answer.last_seq, last_term=answer.last_term,
                            nominee_node=self._node_pb(nominee) if nominee else None)

    def on_can_you_lead(self, req: pb.CanYouLeadRequest) -> pb.CanYouLeadReply:
        """Agree to lead if this node sees no live leader, and start taking over."""
        now = self.now()
        with self.store.lock:
            state = self.state
            if state.role == LEADER and self.engine.forwarder is None:
                return pb.CanYouLeadReply(granted=True, term=state.term, leader_id=self.me.node_id)
            if state.leader_id not in (None, self.me.node_id) and state.leader_alive(now, self.failure_timeout):
                return pb.CanYouLeadReply(granted=False, term=state.term, leader_id=state.leader_id)
            if self.me.node_id not in state.members or state.role == LEARNER:
                return pb.CanYouLeadReply(granted=False, term=state.term)
            if not self._becoming_leader:
                self._becoming_leader = True
                self._spawn("take-over", self._take_over, max(req.term, state.term))
        # leader_id stays 0: this node is about to take over and will announce itself.
        return pb.CanYouLeadReply(granted=True, term=state.term)

    def on_new_leader(self, req: pb.NewLeaderRequest) -> pb.NewLeaderReply:
        """Accept a new leader of a higher term (at most one per term) and report this log's end."""
        with self.store.lock:
            state = self.state
            if req.term <= state.term and not (req.term == state.term and req.leader_id == state.leader_id):
                return pb.NewLeaderReply(accepted=False, term=state.term)
            if state.role == LEADER and req.leader_id != self.me.node_id:
                self._step_down(req.term, req.leader_id, "node %d leads term %d" % (req.leader_id, req.term))
            state.adopt_term(req.term, req.leader_id, self.now())
            self.engine.forwarder = self.forward
            self.store.owns_expiry = False
            logger.info("node %d now follows node %d at term %d", self.me.node_id, req.leader_id, req.term)
            return pb.NewLeaderReply(accepted=True, term=state.term, last_seq=self.engine.seq,
                                     last_term=state.last_term)

    def serve_sync(self, req: pb.SyncRequest) -> Iterator[pb.SyncChunk]:
        """Stream what a node needs after (after_seq, after_term): backlog entries, or a snapshot first."""
        with self.store.lock:
            term, leader = self.state.term, self.state.leader_id or 0
            incremental = req.after_seq >= 0 and req.after_seq <= self.engine.seq and \
                self.backlog.covers(req.after_seq, req.after_term)
            if incremental:
                position = (req.after_seq, req.after_term)
                snapshot = None
            else:
                snapshot = self.store.snapshot() + [rules.members_record(self.state.members)]
                position = (self.engine.seq, self.state.last_term)
        with self._lock:
            self.stats["syncs_incremental_served" if incremental else "syncs_full_served"] += 1
        logger.info("serving a %s sync to node %d from seq %d", "incremental" if incremental else "full",
                    req.node_id, position[0])
        yield pb.SyncChunk(full=snapshot is not None, snapshot_seq=position[0], snapshot_term=position[1],
                           term=term, leader_id=leader)
        if snapshot is not None:
            yield from self._snapshot_chunks(snapshot)
        seq = position[0]
        while True:
            with self.store.lock:
                if self.backlog.term_at(seq) is None:
                    return  # fell out of the backlog meanwhile: the caller will be told to sync again
                payloads = self.backlog.after(seq, APPEND_BATCH, APPEND_BATCH_BYTES)
            if not payloads:
                return
            yield pb.SyncChunk(entries=payloads)
            seq = _unpack(payloads[-1])[0]

    @staticmethod
    def _snapshot_chunks(snapshot: list) -> Iterator[pb.SyncChunk]:
        packer = msgpack.Packer(use_bin_type=True)
        chunk, size = [], 0
        for record in snapshot:
            chunk.append(record)
            size += len(record[1]) + (len(record[2]) if len(record) > 2 and isinstance(record[2], (str, bytes)) else 8)
            if size >= SYNC_CHUNK_BYTES:
                yield pb.SyncChunk(records=packer.pack(chunk))
                chunk, size = [], 0
        if chunk:
            yield pb.SyncChunk(records=packer.pack(chunk))

    # -- catching up (this node receives a Sync) ----------------------------------------

    def _start_sync(self, leader_id: int) -> None:
        """Begin catching up from the leader in the background (caller holds store.lock)."""
        address = self._address_of(leader_id)
        if address is None:
            return
        self.syncing = True
        self._spawn("sync", self._sync_thread, address)

    def _sync_thread(self, address: str) -> None:
        try:
            self._sync_from(address, full=False)
        except (PeerUnavailable, GeomysError, ValueError) as exc:
            logger.warning("catching up from %s failed: %s", address, exc)
        finally:
            with self.store.lock:
                self.syncing = False

    def _sync_from(self, address: str, full: bool) -> None:
        """Take a snapshot and/or entries from the node at `address` until its stream ends."""
        with self.store.lock:
            self.syncing = True
            after = (-1, 0) if full else (self.engine.seq, self.state.last_term)
        try:
            stream = self.peers.sync(address, pb.SyncRequest(node_id=self.me.node_id, after_seq=after[0],
                                                             after_term=after[1]),
                                     timeout=max(self.config.join_timeout, 60.0))
            head = next(stream, None)
            if head is None:
                raise PeerUnavailable("empty sync stream from %s" % address)
            incoming: Optional[Store] = Store(owns_expiry=False) if head.full else None
            members = None
            for chunk in stream:
                if chunk.records:
                    for raw in _unpack(chunk.records):
                        record = records_mod.validate(raw)
                        if record[0] == "MEMBERS":
                            members = rules.members_from_record(record)
                        else:
                            records_mod.apply(incoming, record)
                    continue
                if incoming is not None:
                    self._install(incoming, head, members)
                    incoming = None
                with self.store.lock:
                    self._apply_payloads(chunk.entries)
                    self._note_safe(self.engine.seq)
            if incoming is not None:
                self._install(incoming, head, members)
            with self._lock:
                self.stats["syncs_full_received" if head.full else "syncs_incremental_received"] += 1
            logger.info("caught up from %s (%s) to seq %d", address, "snapshot" if head.full else "backlog",
                        self.engine.seq)
        finally:
            with self.store.lock:
                self.syncing = False

    def _install(self, incoming: Store, head: pb.SyncChunk, members) -> None:
        with self.store.lock:
            self.engine.install_snapshot(incoming, head.snapshot_seq, incoming.snapshot())
            self.backlog.reset(head.snapshot_seq, head.snapshot_term)
            self.state.last_term = head.snapshot_term
            if members:
                self._set_members(members)
            self._note_safe(head.snapshot_seq)

    # -- leader: one sender per peer ------------------------------------------------------

    def _start_sender(self, node_id: int, epoch: int) -> None:
        """Run a sender for `node_id` in this leadership epoch, unless one already runs (caller holds store.lock)."""
        if self._senders.get(node_id) == epoch:
            return
        self._senders[node_id] = epoch
        self._peer_log[node_id] = None
        self._spawn("sender-%d" % node_id, self._sender_loop, node_id, epoch)

    def _sender_loop(self, node_id: int, epoch: int) -> None:
        """Replicate to one peer until the epoch ends: push, or wait for entries, or back off."""
        backoff = min(self.heartbeat_interval / 4, 0.1)
        try:
            while not self._stopping.is_set():
                outcome = self.replicate_once(node_id, epoch)
                if outcome == STOP:
                    return
                if outcome == IDLE:
                    self._wait_for_entries(epoch, self._peer_log[node_id][0])
                elif outcome == BACK_OFF:
                    self._idle(epoch, backoff)
        finally:
            with self.store.lock:
                if self._senders.get(node_id) == epoch:
                    del self._senders[node_id]

    def replicate_once(self, node_id: int, epoch: Optional[int] = None) -> str:
        """Send one AppendEntries to `node_id` and act on its answer; return what the sender does next.

        The batch starts where the peer's log is known to end; until that is
        known it is an empty probe, and when the backlog no longer covers the
        peer it is told to Sync (prev_seq = -1).
        """
        with self.store.lock:
            if epoch is None:
                epoch = self.epoch
            if self.epoch != epoch or (node_id not in self.state.members and node_id not in self.learners):
                return STOP
            address = self._address_of(node_id)
            after = self._peer_log.get(node_id)
            if after is None:
                prev, payloads = self.backlog.last, []
            elif after[0] <= self.engine.seq and self.backlog.covers(*after):
                prev, payloads = after, self.backlog.after(after[0], APPEND_BATCH, APPEND_BATCH_BYTES)
            else:
                prev, payloads = (-1, 0), []
            request = pb.AppendRequest(term=self.state.term, leader_id=self.me.node_id, prev_seq=prev[0],
                                       prev_term=prev[1], entries=payloads, commit_seq=self.safe_seq)
            # Entries for a peer that could not be reached: if it takes them, it
            # caught up from the backlog (past the backlog, it is told to Sync).
            resuming = node_id in self._unreached and bool(payloads)
        try:
            reply = self.peers.call(address, "AppendEntries", request)
        except PeerUnavailable:
            with self.store.lock:
                self._unreached.add(node_id)
            return BACK_OFF
        with self.store.lock:
            if self.epoch != epoch:
                return STOP
            if reply.status == pb.AppendReply.STALE_TERM:
                # Not counted as contact: a node that follows a newer leader is
                # not part of this leader's majority.
                self._step_down(reply.term, None, "node %d has term %d" % (node_id, reply.term))
                return STOP
            with self._lock:
                self.state.last_seen[node_id] = self.now()
            self._peer_log[node_id] = (reply.last_seq, reply.last_term)
            self._unreached.discard(node_id)
            if reply.status == pb.AppendReply.OK:
                if resuming:
                    self.stats["catchups_from_backlog"] += 1
                self._note_ack(node_id, reply.last_seq)
                return IDLE if reply.last_seq >= self.engine.seq else AGAIN
            return BACK_OFF if reply.status == pb.AppendReply.SYNCING else AGAIN

    def _note_ack(self, node_id: int, seq: int) -> None:
        """Record a follower's progress and advance the commit point (caller holds store.lock)."""
        state = self.state
        with self._lock:
            self.acked[node_id] = seq
            if node_id in state.members:
                commit = rules.commit_seq(self.me.node_id, self.engine.seq, self.acked, state.members)
                if commit > self.safe_seq:
                    self.safe_seq = commit
                    self._commit_cond.notify_all()

    def _wait_for_entries(self, epoch: int, seq: int) -> None:
        """Sleep until there is an entry after `seq`, the epoch ends, or a keepalive is due."""
        deadline = self.now() + self.heartbeat_interval
        with self._lock:
            while self.engine.seq <= seq and self.epoch == epoch and not self._stopping.is_set():
                remaining = deadline - self.now()
                if remaining <= 0:
                    return
                self._entries_cond.wait(remaining)

    def _idle(self, epoch: int, seconds: float) -> None:
        with self._lock:
            if self.epoch == epoch:
                self._entries_cond.wait(seconds)

    # -- the ticker: heartbeats, failure detection, elections ---------------------------------

    def _tick_loop(self) -> None:
        period = min(self.heartbeat_interval, self.failure_timeout / 4)
        # A little jitter keeps the nodes' election rounds from staying in lockstep.
        while not self._stopping.wait(period * random.uniform(0.8, 1.0)):
            try:
                self.tick()
            except Exception:  # the ticker must outlive any single failure
                logger.exception("cluster ticker error")

    def tick(self) -> None:
        """One round of upkeep: a leader checks its majority and membership; a follower
        heartbeats its leader, or starts an election once the leader has been silent too long."""
        now = self.now()
        role = self.state.role
        if role == LEADER:
            self._leader_upkeep(now)
        elif not self.state.leader_alive(now, self.failure_timeout):
            if role != LEARNER and self.me.node_id in self.state.members:
                self._run_election()
        elif now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_interval
            self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        leader_id = self.state.leader_id
        address = self._address_of(leader_id) if leader_id is not None else None
        if address is None:
            return
        try:
            # The ticker waits for this call: with the full rpc_timeout, a paused leader would
            # hold up noticing its failure (and the election) by that much.
            reply = self.peers.call(address, "Heartbeat", pb.HeartbeatRequest(
                node_id=self.me.node_id, term=self.state.term, last_seq=self.engine.seq), self.election_timeout)
        except PeerUnavailable as exc:
            logger.debug("heartbeat to node %d failed: %s", leader_id, exc)
            return
        with self.store.lock:
            if reply.ok and reply.leader_id == leader_id and reply.term >= self.state.term:
                self.state.adopt_term(reply.term, leader_id, self.now())
                members = {n.node_id: NodeAddress(n.node_id, n.client_address, n.grpc_address) for n in reply.nodes}
                if reply.nodes_hash != rules.membership_hash(self.state.members) and members:
                    self._set_members(members)
                if self.me.node_id not in members and self.state.role != LEARNER \
                        and not self._leaving and not self._rejoining:
                    # Removed while away (paused, cut off): come back the way a new node does.
                    self._rejoining = True
                    self._spawn("rejoin", self._rejoin, address)

    def _rejoin(self, address: str) -> None:
        """Register again as a learner; the leader then catches this node up and makes it a member."""
        try:
            self.register(address, self.now() + self.config.join_timeout)
            logger.warning("node %d was no longer a member; rejoined the cluster as a learner", self.me.node_id)
        except JoinError as exc:
            logger.warning("node %d could not rejoin the cluster: %s", self.me.node_id, exc)
            with self.store.lock:
                if self.state.role == LEARNER:
                    self.state.role = FOLLOWER  # so the next heartbeat tries again
        finally:
            self._rejoining = False

    def _leader_upkeep(self, now: float) -> None:
        """Step down without a majority; remove silent members; promote caught-up learners."""
        with self.store.lock:
            state = self.state
            if self.engine.forwarder is not None:
                return  # still taking over
            with self._lock:
                last_seen = dict(state.last_seen)
            if not rules.reaches_majority(self.me.node_id, state.members, last_seen, now, self.failure_timeout):
                self._step_down(state.term, None, "no majority heard within failure_timeout")
                return
            silent = rules.silent_members(self.me.node_id, state.members, last_seen, now, self.failure_timeout)
            stale_learners = [n for n in self.learners if now - last_seen.get(n, now) >= self.failure_timeout]
            for node_id in stale_learners:
                del self.learners[node_id]
            ready = [n for n in self.learners
                     if rules.learner_caught_up(self.acked.get(n, -1), self.engine.seq, LEARNER_SLACK)]
            if silent or ready:
                members = {n: a for n, a in state.members.items() if n not in silent}
                members.update({n: self.learners[n] for n in ready})
                for node_id in silent:
                    logger.warning("removed node %d: silent for %.1fs", node_id, self.failure_timeout)
                for node_id in ready:
                    logger.info("node %d caught up and became a member", node_id)
                self.engine.append_records([rules.members_record(members)])

    def _run_election(self) -> None:
        """One round of the election: ask everyone whom to follow; act on a unanimous majority."""
        with self.store.lock:
            state = self.state
            if state.role != CANDIDATE:
                logger.warning("node %d lost its leader (node %s); starting an election",
                               self.me.node_id, state.leader_id)
                state.role, state.leader_id = CANDIDATE, None
                self.engine.forwarder = self.forward
                self.store.owns_expiry = False
            members = dict(state.members)
            with self._lock:
                own = state.vote_answer(self.me.node_id, self.now(), self.failure_timeout, self.engine.seq)
        self.stats["elections"] += 1
        replies = self._ask_all(members, "RequestVote", pb.VoteRequest(candidate_id=self.me.node_id, term=own.term))
        others = [VoteAnswer(n, r.nominee, r.term, r.last_seq, r.last_term) for n, r in replies]
        answers = [rules.defer_to_others(own, others)] + others
        with self._lock:
            for answer in answers:
                self.state.last_seen[answer.node_id] = self.now()
        chosen = rules.tally(members, answers)
        if chosen is None:
            self._find_unknown_leader(members, replies)
            return
        top_term = max(a.term for a in answers)
        if chosen == self.me.node_id:
            self._take_over(top_term)
            return
        try:
            reply = self.peers.call(members[chosen].grpc_address, "CanYouLead",
                                    pb.CanYouLeadRequest(candidate_id=self.me.node_id, term=top_term),
                                    self.election_timeout)
            granted = reply.granted
        except PeerUnavailable:
            granted = False
        if granted and reply.leader_id == chosen:
            # It already leads (this node was away while it was elected): follow it.
            with self.store.lock:
                if self.state.adopt_term(reply.term, chosen, self.now()):
                    logger.info("node %d now follows node %d at term %d", self.me.node_id, chosen, reply.term)
            return
        if not granted:
            with self._lock:
                self.state.suspected.add(chosen)
            logger.info("node %d refused or could not lead; electing again without it", chosen)

    def _find_unknown_leader(self, members: dict, replies: list) -> None:
        """Follow the node every other member names when it is missing from this node's list.

        A node that was away while the membership changed may not know the
        leader elected meanwhile; the answers say where it is, and it is
        followed only if it confirms that it leads.
        """
        named = {r.nominee for _, r in replies}
        if len(named) != 1 or not replies:
            return
        nominee = named.pop()
        node = next((r.nominee_node for _, r in replies if r.nominee_node.node_id == nominee), None)
        if nominee in members or node is None:
            return
        try:
            reply = self.peers.call(node.grpc_address, "CanYouLead",
                                    pb.CanYouLeadRequest(candidate_id=self.me.node_id, term=self.state.term),
                                    self.election_timeout)
        except PeerUnavailable:
            return
        if reply.granted and reply.leader_id == nominee:
            with self.store.lock:
                self.state.members.setdefault(nominee, NodeAddress(nominee, node.client_address, node.grpc_address))
                if self.state.adopt_term(reply.term, nominee, self.now()):
                    logger.info("node %d now follows node %d at term %d", self.me.node_id, nominee, reply.term)

    def _ask_all(self, members: dict, method: str, request) -> list[tuple[int, object]]:
        """Call `method` on every other member in parallel; return (node id, answer) for those that answered."""
        futures = [(n, self._pool.submit(self.peers.call, a.grpc_address, method, request, self.election_timeout))
                   for n, a in members.items() if n != self.me.node_id]
        answers = []
        for node_id, future in futures:
            try:
                answers.append((node_id, future.result()))
            except PeerUnavailable:
                pass
        return answers

    def _take_over(self, seen_term: int) -> None:
        """Become leader of a new term: a majority must accept it, then copy what a voter has and we lack."""
        try:
            with self.store.lock:
                state = self.state
                if state.role == LEADER and self.engine.forwarder is None:
                    return  # a concurrent take-over already won: never demote a serving leader to CANDIDATE
                term = max(state.term, seen_term) + 1
                members = dict(state.members)
                if self.me.node_id not in members:
                    return
                state.term = term
                state.role, state.leader_id = CANDIDATE, self.me.node_id
                own = VoteAnswer(self.me.node_id, self.me.node_id, term, self.engine.seq, state.last_term)
            replies = self._ask_all(members, "NewLeader", pb.NewLeaderRequest(term=term, leader_id=self.me.node_id))
            accepted = [own] + [VoteAnswer(n, self.me.node_id, r.term, r.last_seq, r.last_term)
                                for n, r in replies if r.accepted]
            if len(accepted) < rules.majority(len(members)):
                logger.info("node %d could not gather a majority for term %d", self.me.node_id, term)
                with self.store.lock:
                    if self.state.leader_id == self.me.node_id and self.state.role != LEADER:
                        self.state.leader_id = None
                return
            best = rules.most_up_to_date(accepted)
            if (best.last_term, best.last_seq) > (own.last_term, own.last_seq):
                # A voter has entries we lack (perhaps acknowledged ones): copy them first.
                logger.info("node %d copies entries up to seq %d from node %d before leading",
                            self.me.node_id, best.last_seq, best.node_id)
                self._sync_from(members[best.node_id].grpc_address, full=False)
            with self.store.lock:
                if self.state.term != term or self.state.leader_id != self.me.node_id:
                    return  # someone else won meanwhile
                self._become_serving_leader()
            logger.info("node %d became leader at term %d (log at seq %d)", self.me.node_id, term, self.engine.seq)
        except PeerUnavailable as exc:
            logger.warning("taking over leadership failed: %s", exc)
        finally:
            self._becoming_leader = False

    # -- INFO -------------------------------------------------------------------------------

    def info(self) -> dict:
        """The cluster part of INFO."""
        with self.store.lock:
            state = self.state
            leader = state.members.get(state.leader_id) if state.leader_id is not None else None
            info = {
                "node_id": self.me.node_id,
                "role": state.role,
                "term": state.term,
                "leader_id": state.leader_id,
                "leader_address": leader.client_address if leader else None,
                # Map keys are strings: many MessagePack readers refuse integer keys.
                "nodes": {str(n): {"client": a.client_address, "grpc": a.grpc_address}
                          for n, a in sorted(state.members.items())},
                "nodes_hash": rules.membership_hash(state.members),
                "learners": sorted(self.learners),
                "commit_offset": self.safe_seq,
                "last_term": state.last_term,
                "syncing": self.syncing,
            }
            if state.role == LEADER:
                info["followers"] = {str(n): self.acked.get(n, 0) for n in self._targets()}
            with self._lock:
                info.update(self.stats)
        return info

    @staticmethod
    def _node_pb(node: NodeAddress) -> pb.NodeInfo:
        return pb.NodeInfo(node_id=node.node_id, client_address=node.client_address, grpc_address=node.grpc_address)

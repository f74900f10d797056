"""The cluster driver: feeds the consensus core and carries out what it decides.

`ClusterNode` turns gRPC calls, ticks of its ticker thread and the leader's
writes into inputs of the core (geomys.cluster.core) under one lock, the
store's, and carries out the actions the core returns: messages go out
through the transport, committed entries into the store, role changes into
the engine's routing. It makes no decision of its own: why a node did
something is always answered in the core. It is also the engine's record
sink (a reply waits here until what it reveals is committed), its
forwarder (a follower hands writes to the leader, batched across clients)
and its read barrier (a linearizable read waits here for its read index).
"""

import heapq
import itertools
import logging
import random
import threading
from typing import Callable, Iterator, Optional

import msgpack

from .. import records
from ..clock import Clock, SystemClock
from ..commands import TABLE, lookup
from ..config import Config
from ..engine import Context, Engine
from ..errors import GeomysError, NoLeader, Timeout
from ..protocol import error_reply
from ..store import Store
from . import core as core_mod
from . import rules
from .core import Core, Timing
from .forwarding import ForwardBatcher
from .log import Log
from .pb import cluster_pb2 as pb
from .rules import LEADER, NodeAddress
from .transport import GrpcTransport, PeerUnavailable, Transport
from .wire import node_from_pb, node_to_pb

logger = logging.getLogger(__name__)

SYNC_CHUNK_BYTES = 1 << 20       # snapshot chunk size on the Sync stream
FORWARD_BLOCK_CHUNK = 2.0        # a forwarded blocking pop waits on the leader at most this long per call
JOIN_ATTEMPTS = 3                # calls to the join address before concluding nobody is there


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


class ClusterNode:
    """One node's driver: the core, its lock, its ticker, and the I/O the core asks for."""

    def __init__(self, config: Config, engine: Engine, clock: Optional[Clock] = None,
                 transport: Optional[Transport] = None, rng: Optional[random.Random] = None,
                 spawn: Optional[Callable[..., None]] = None, channel_credentials=None) -> None:
        """Wire a node; tests pass a fake clock, an in-memory transport and a `spawn` that runs tasks inline.

        `channel_credentials` (geomys.tls) makes the calls to other nodes mutual TLS.
        """
        self.config = config
        self.engine = engine
        self.store = engine.store
        self.now = (clock or SystemClock()).monotonic
        me = NodeAddress(config.node_id, "%s:%d" % (config.advertise_host, config.client_port),
                         "%s:%d" % (config.advertise_host, config.grpc_port))
        timing = Timing(config.heartbeat_interval, config.failure_timeout, config.rpc_timeout)
        self.core = Core(me, timing, rng or random.Random(), Log(config.backlog_entries, config.backlog_bytes))
        self.transport = transport or GrpcTransport(config.rpc_timeout, config.max_request_bytes + (4 << 20),
                                                    config.cluster_secret, self.receive, channel_credentials)
        # One lock for the core and the store: a write's entry is proposed in the
        # same hold of the lock that applied it, so log order is apply order.
        self.lock = self.store.lock
        self._changed = threading.Condition(self.lock)   # role changes, snapshots, membership
        # Replies waiting for a commit, as a heap of (seq, n, gate): a commit opens
        # only the gates it covers, not every waiting client. A gate is a plain
        # lock its waiter holds and blocks on again: far cheaper than a Condition.
        self._waiters: list = []
        self._waiter_count = 0
        # Linearizable reads waiting for their read index: id -> [gate, index, failure, reads it covers].
        self._reads: dict[int, list] = {}
        self._read_ids = itertools.count(1)
        self.leadership = 0        # bumped whenever this node stops leading
        self.stats = {"syncs_full_served": 0, "syncs_full_received": 0, "read_index_reads": 0}
        self.batcher = ForwardBatcher(self._forward_call)
        self._forward_slots = threading.BoundedSemaphore(32)
        self._stopping = threading.Event()
        self._ticking = False
        self._pending_members: list = []
        self._applying = False
        self._spawner = spawn
        self.election_timeout = min(config.rpc_timeout, config.failure_timeout / 3)

    # -- feeding the core (caller holds no lock unless said) ----------------------------------

    def _run(self, actions: list) -> None:
        """Carry out the core's actions, in order (caller holds the lock)."""
        core = self.core
        for action in actions:
            kind = type(action)
            if kind is core_mod.Send:
                address = core.address(action.to)
                if address is not None:
                    self.transport.send(action.to, address.grpc_address, action.message)
            elif kind is core_mod.Committed:
                waiters = self._waiters
                while waiters and waiters[0][0] <= action.seq:
                    heapq.heappop(waiters)[2].release()
            elif kind is core_mod.Apply:
                self._applying = True   # the entries are in the log already: append() must not propose them
                try:
                    self.engine.apply_entries([(e.seq, records.unpack(e.record)) for e in action.entries])
                finally:
                    self._applying = False
                self._changed.notify_all()
            elif kind is core_mod.RoleChanged:
                self._role_changed(action)
            elif kind is core_mod.FetchSnapshot:
                self._spawn("sync", self._fetch_snapshot, action.peer)
            elif kind is core_mod.ProposeMembers:
                self._pending_members.append(action.members)
            elif kind is core_mod.ReadReady or kind is core_mod.ReadFailed:
                ready = kind is core_mod.ReadReady
                for read_id in action.reads:
                    slot = self._reads.pop(read_id, None)
                    if slot is not None:   # else its reader gave up waiting
                        slot[1 if ready else 2] = action.index if ready else action.reason
                        if ready:
                            self.stats["read_index_reads"] += slot[3]
                        slot[0].release()
        while self._pending_members:
            members = self._pending_members.pop(0)
            if core.is_leader:
                # Through the engine like a write: it numbers the entry and the AOF logs it.
                self.engine.append_records([rules.members_record({n.node_id: n for n in members})])

    def _role_changed(self, action: core_mod.RoleChanged) -> None:
        """The one place the engine's routing follows the core's role (caller holds the lock)."""
        leading = action.role == LEADER
        if not leading and self.engine.forwarder is None:
            self.leadership += 1
        self.engine.forwarder = None if leading else self.forward
        self.store.owns_expiry = leading
        self._wake_all()

    def _wake_all(self) -> None:
        """Wake every waiting reply and joiner: the role changed or the store was replaced (caller holds the lock)."""
        for _, _, gate in self._waiters:
            gate.release()
        self._waiters.clear()
        self._changed.notify_all()

    def receive(self, messages: list, answer_inline: bool = False) -> list:
        """Core messages arrived from one node, in order (a gRPC or stream thread).

        With `answer_inline`, the messages the core sends back to that node are
        returned, for the caller to answer on the same stream, instead of sent.
        """
        answers = []
        with self.lock:
            now = self.now()
            for message in messages:
                actions = self.core.step(message, now)
                if answer_inline:
                    for action in actions:
                        if type(action) is core_mod.Send and action.to == message.src:
                            answers.append(action.message)
                    actions = [a for a in actions if type(a) is not core_mod.Send or a.to != message.src]
                self._run(actions)
        return answers

    def ask(self, message: core_mod.Message) -> core_mod.Message:
        """Step a message that wants its answer back on the call (Join, Leave); return that answer."""
        with self.lock:
            actions = self.core.step(message, self.now())
            answer = next((a for a in actions if type(a) is core_mod.Send and a.to in (message.src, 0)
                           and type(a.message) in (core_mod.JoinReply, core_mod.LeaveReply, core_mod.Rejected)),
                          None)
            if answer is None:
                answer = next((a for a in actions if type(a) is core_mod.Send
                               and type(a.message) is core_mod.JoinReply), None)
            self._run([a for a in actions if a is not answer])
        if answer is None:
            return core_mod.Rejected(self.core.id, self.core.term, "no answer")
        return answer.message

    def tick(self) -> None:
        """Tell the core that time passed, and which peers could not be reached."""
        with self.lock:
            now = self.now()
            for peer in self.transport.take_unreachable():
                self._run(self.core.unreachable(peer, now))
            self._run(self.core.tick(now))

    def _tick_loop(self) -> None:
        period = min(self.config.heartbeat_interval / 4, self.config.failure_timeout / 8)
        while not self._stopping.wait(period):
            try:
                self.tick()
            except Exception:  # the ticker must outlive any single failure
                logger.exception("cluster ticker error")

    # -- start-up and shutdown ---------------------------------------------------------------

    def bootstrap(self) -> None:
        """Start a new cluster with this node as its only member and leader (term 1)."""
        with self.lock:
            self.core.log.reset(self.engine.seq, 0)
            self._run(self.core.bootstrap(self.now()))
        logger.info("node %d bootstrapped a new cluster and became leader at term 1", self.core.id)

    def start(self) -> None:
        """Start the ticker."""
        if not self._ticking:
            self._ticking = True
            self._spawn("cluster-ticker", self._tick_loop)

    def join(self, prepare: Callable[[], None] = lambda: None) -> None:
        """Join the cluster at config.join: register as a learner, take a snapshot, wait to be a member.

        `prepare` runs once the cluster has accepted this node, before its state arrives.
        """
        deadline = self.now() + max(self.config.join_timeout, 3 * self.config.failure_timeout)
        leader = self.begin_join(self.config.join, deadline, prepare)
        self.start()
        with self.lock:
            while self.core.id not in self.core.members and not self._stopping.is_set():
                remaining = deadline - self.now()
                if remaining <= 0:
                    raise JoinError("the leader did not make this node a member within %.0fs"
                                    % self.config.join_timeout)
                self._changed.wait(min(remaining, 0.5))
        logger.info("node %d joined the cluster (leader %d, term %d)", self.core.id, leader, self.core.term)

    def begin_join(self, address: str, deadline: float, prepare: Callable[[], None] = lambda: None) -> int:
        """Register with the cluster at `address` as a learner and start taking its state; return the leader's id."""
        leader, term = self._register(address, deadline)
        prepare()
        with self.lock:
            self._run(self.core.joined(leader, term, self.now()))
        return leader.node_id

    def _register(self, address: str, deadline: float) -> tuple[NodeAddress, int]:
        """Ask the cluster at `address` to take this node as a learner; follow redirects."""
        failures = 0
        while True:
            me = self.core.me
            request = core_mod.Join(me.node_id, 0, me, not self.config.node_id_explicit)
            try:
                reply = self.transport.ask(address, request)
            except PeerUnavailable as exc:
                failures += 1
                if failures >= JOIN_ATTEMPTS or self._stopping.wait(0.5):
                    raise JoinError("no Geomys cluster answers at %s (%s)" % (address, exc)) from None
                continue  # a busy or just-started peer may miss one call
            status = getattr(reply, "status", None)
            if status == core_mod.ACCEPTED:
                break
            if status == core_mod.REFUSED or type(reply) is core_mod.Rejected:
                raise JoinError("the cluster refused this node: %s"
                                % getattr(reply, "message", getattr(reply, "reason", "")))
            if status == core_mod.REDIRECT:
                address = reply.leader.grpc_address
            elif self.now() >= deadline or self._stopping.wait(min(self.config.heartbeat_interval, 1.0)):
                raise JoinError("the cluster at %s had no leader until the join timed out" % address)
        if reply.node_id != self.core.id:
            logger.info("the leader assigned node id %d", reply.node_id)
            with self.lock:
                self.core.me = NodeAddress(reply.node_id, me.client_address, me.grpc_address)
                self.core.id = reply.node_id
        return reply.leader, reply.term

    def stop(self) -> None:
        """Ask the leader to remove this node (a follower), stop the ticker and the transport."""
        core = self.core
        leader = core.address(core.leader_id) if not core.is_leader else None
        if leader is not None and core.id in core.members:
            try:
                self.transport.ask(leader.grpc_address, core_mod.Leave(core.id, core.term), self.election_timeout)
            except PeerUnavailable as exc:
                logger.warning("could not tell the leader this node leaves: %s", exc)
        self._stopping.set()
        with self.lock:
            self.leadership += 1
            self._wake_all()
        self.transport.close()

    def _spawn(self, name: str, target: Callable, *args) -> None:
        if self._spawner is not None:
            self._spawner(target, *args)
            return
        threading.Thread(target=target, args=args, name=name, daemon=True).start()

    # -- the engine's record sink ------------------------------------------------------------

    def append(self, seq: int, record: tuple) -> None:
        """Propose a leader's write as entry `seq` (caller holds the lock, so entries arrive in order)."""
        core = self.core
        if not core.is_leader or self._applying:
            return  # a follower's entries come from its leader, already in its log
        members = rules.members_from_record(record) if record[0] == "MEMBERS" else None
        self._run(core.propose(records.pack(record), members))

    def extend(self, first_seq: int, batch: list) -> None:
        """Propose a leader's writes as entries `first_seq` onwards (caller holds the lock)."""
        for offset, record in enumerate(batch):
            self.append(first_seq + offset, record)

    def wait(self, seq: int, write_seq: int = 0, snapshots: int = 0) -> None:
        """Block until entry `seq` is committed, so no reply shows a write that may never commit.

        On the leader a reply waits for a majority; if leadership is lost
        meanwhile it fails with NO_LEADER. A node whose store holds entries
        not yet committed (a leader that stepped down) answers only once they
        are, or fails after failure_timeout. A reply computed on a store that
        a snapshot has replaced since (`snapshots`, the engine's count when
        the reply was computed, is behind) fails at once, whatever the commit
        point says: the commit point now numbers the entries of the new
        store, and the old one may have held others at the same seqs.
        """
        core, engine = self.core, self.engine
        # The commit point first, the count of snapshots after it: a count
        # unchanged after the commit point was read means it was the old
        # store's commit point, which the reply's entries may rely on.
        if core.commit >= seq and engine.snapshots == snapshots:
            return
        with self.lock:
            leadership = self.leadership
        deadline = self.now() + self.config.failure_timeout
        while True:
            with self.lock:
                # Before the commit point: a snapshot may have moved it onto other entries.
                if engine.snapshots != snapshots:
                    raise NoLeader("a snapshot replaced this node's data before the reply could be confirmed; "
                                   "a write's outcome is unknown; try again shortly")
                if core.commit >= seq:
                    return
                if self.leadership != leadership:
                    raise NoLeader("leadership was lost before this reply's data reached a majority; "
                                   "a write's outcome is unknown")
                if not core.is_leader and seq <= write_seq:
                    raise NoLeader("this node no longer leads; the write's outcome is unknown")
                if not core.is_leader and not core.leader_alive(self.now()):
                    raise NoLeader("this node holds writes the cluster has not confirmed, and no leader "
                                   "is known to confirm or replace them; try again shortly")
                remaining = deadline - self.now()
                if remaining <= 0:
                    raise NoLeader("this node holds writes the cluster has not confirmed; try again shortly")
                gate = self._gate(seq)
            gate.acquire(timeout=remaining)

    def _gate(self, seq: int) -> threading.Lock:
        """A held lock that the commit of entry `seq` (or a role change) releases (caller holds the lock)."""
        gate = threading.Lock()
        gate.acquire()
        self._waiter_count += 1
        heapq.heappush(self._waiters, (seq, self._waiter_count, gate))
        return gate

    # -- linearizable reads ------------------------------------------------------------------

    def read_barrier(self, reads: int, floor: int) -> None:
        """Block until this node may answer reads: the engine's hook, called before a lock hold with reads.

        With `reads` linearizable reads (INFO counts them), the store must
        hold every write acknowledged before the call: the core confirms a
        read index with a majority (geomys.cluster.core, `read_index`) and
        this node waits until it has applied and committed that entry. Any
        read must also see entry `floor`, the connection's newest forwarded
        write, so a client reads its own writes through a follower. Raises
        NoLeader when that cannot happen within rpc_timeout: the reads are
        never answered from a store that may be stale.
        """
        timeout = self.config.rpc_timeout
        if not reads:
            if not self._catch_up(floor, self.now() + timeout):
                raise NoLeader("this node has not caught up with this connection's last write within %gs; "
                               "try again shortly" % timeout)
            return
        gate = threading.Lock()
        gate.acquire()
        read_id = next(self._read_ids)
        slot = [gate, None, None, reads]
        with self.lock:
            self._reads[read_id] = slot
            self._run(self.core.read_index(read_id, self.now()))
        deadline = self.now() + timeout
        if not gate.acquire(timeout=timeout):
            with self.lock:
                self._reads.pop(read_id, None)
        index, failure = slot[1], slot[2]
        if index is None:
            raise NoLeader(failure or "the leader was not confirmed within %gs; try again shortly" % timeout)
        if not self._catch_up(max(index, floor), deadline):
            raise NoLeader("this node did not catch up with the leader's commit point within %gs" % timeout)

    def _catch_up(self, seq: int, deadline: float) -> bool:
        """Wait until this node's store holds entry `seq`, committed; False if `deadline` passes first."""
        core = self.core
        if core.commit >= seq and core.applied >= seq:
            return True   # the common case; no lock: the engine reads the store in a later hold of it anyway
        while True:
            with self.lock:
                if core.commit >= seq and core.applied >= seq:
                    return True
                remaining = deadline - self.now()
                if remaining <= 0:
                    return False
                gate = self._gate(seq)
            gate.acquire(timeout=remaining)

    # -- the engine's forwarder (follower) ---------------------------------------------------

    def forward(self, requests: list, ctx: Context) -> list:
        """Execute writes on the leader and return its replies unchanged.

        Called outside the lock with the consecutive writes of one read; the
        writes of every client waiting at the same time go in one Forward call.
        """
        if ctx.forwarded:
            raise NoLeader("this node is not the leader")
        leader = self._leader_address()
        if len(requests) == 1 and _is_blocking(requests[0]):
            reply, seq = self._forward_blocking(leader, requests[0], ctx)
            replies = [reply]
        else:
            replies, seq = self.batcher.submit(leader, requests)
        # The connection's next reads here wait until this store holds these writes.
        ctx.read_floor = max(ctx.read_floor, seq)
        return replies

    def _leader_address(self) -> str:
        core = self.core
        leader = core.address(core.leader_id)
        if leader is None or core.leader_id == core.id or not core.leader_alive(self.now()):
            raise NoLeader("no leader is known at the moment; try again shortly")
        return leader.grpc_address

    def _forward_call(self, address: str, requests: list, timeout: Optional[float] = None) -> tuple[list, int]:
        """One Forward call: the leader runs `requests` in order; return its replies and its log position."""
        try:
            reply = self.transport.call(address, "Forward", pb.ForwardRequest(
                requests=[_pack(r) for r in requests], term=self.core.term, from_node=self.core.id),
                timeout=timeout)
        except PeerUnavailable as exc:
            raise NoLeader("the leader could not be reached (%s); the write's outcome is unknown" % exc) from None
        if reply.not_leader:
            raise NoLeader("the node this one follows is no longer the leader; try again shortly")
        if len(reply.replies) != len(requests):
            raise NoLeader("the leader answered %d of %d forwarded requests" % (len(reply.replies), len(requests)))
        return [_unpack(r) for r in reply.replies], reply.seq

    def _forward_blocking(self, address: str, request: dict, ctx: Context) -> tuple[dict, int]:
        """Wait for a blocking pop in short calls, so a long wait never pins a leader's gRPC worker.

        Returns the reply and the leader's log position it rests on.
        """
        timeout = float(request.get("timeout") or 0)
        deadline = self.now() + timeout if timeout else None
        while True:
            chunk = FORWARD_BLOCK_CHUNK if deadline is None else min(FORWARD_BLOCK_CHUNK,
                                                                     max(deadline - self.now(), 0.001))
            replies, seq = self._forward_call(address, [dict(request, timeout=chunk)],
                                              chunk + self.config.rpc_timeout)
            reply = replies[0]
            if reply.get("code") != "TIMEOUT":
                return reply, seq
            if deadline is not None and self.now() >= deadline:
                return error_reply(Timeout("no element arrived in list %r within %gs"
                                           % (request.get("key"), timeout))), seq
            if not ctx.is_connected():
                return reply, seq

    # -- gRPC handlers: Forward and Sync ------------------------------------------------------

    def on_forward(self, req: pb.ForwardRequest) -> pb.ForwardReply:
        """Run a follower's client writes here, in order, if this node leads; return the replies."""
        if self.engine.forwarder is not None:
            return pb.ForwardReply(not_leader=True, leader_id=self.core.leader_id or 0)
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
        return pb.ForwardReply(replies=[_pack(r) for r in replies], seq=ctx.wait_seq)

    def serve_sync(self, req: pb.SyncRequest) -> Iterator[pb.SyncChunk]:
        """Stream a snapshot of this node's store: what it holds, at which log position, with which members."""
        with self.lock:
            core = self.core
            seq = self.engine.seq
            term = core.log.term_at(seq) or 0
            snapshot = self.store.snapshot()
            members = [node_to_pb(n) for _, n in sorted(core.members.items())]
            self.stats["syncs_full_served"] += 1
        logger.info("serving a snapshot at seq %d to node %d", seq, req.node_id)
        yield pb.SyncChunk(snapshot_seq=seq, snapshot_term=term, members=members)
        chunk, size = [], 0
        for record in snapshot:
            data = records.pack(record)
            chunk.append(data)
            size += len(data)
            if size >= SYNC_CHUNK_BYTES:
                yield pb.SyncChunk(records=chunk)
                chunk, size = [], 0
        if chunk:
            yield pb.SyncChunk(records=chunk)

    def _fetch_snapshot(self, peer: int) -> None:
        """Replace the store with a snapshot from `peer` (a sync thread)."""
        address = self.core.address(peer)
        try:
            if address is None:
                raise PeerUnavailable("node %d has no known address" % peer)
            stream = self.transport.sync(address.grpc_address, pb.SyncRequest(node_id=self.core.id),
                                         timeout=max(self.config.join_timeout, 60.0))
            head = next(stream, None)
            if head is None:
                raise PeerUnavailable("empty snapshot from node %d" % peer)
            incoming = Store(owns_expiry=False)
            for chunk in stream:
                for data in chunk.records:
                    records.apply(incoming, records.unpack(data))
            with self.lock:
                self._applying = True
                try:
                    self.engine.install_snapshot(incoming, head.snapshot_seq, incoming.snapshot())
                finally:
                    self._applying = False
                self._wake_all()
                self.stats["syncs_full_received"] += 1
                members = {n.node_id: node_from_pb(n) for n in head.members}
                self._run(self.core.snapshot_installed(head.snapshot_seq, head.snapshot_term, members, self.now()))
            logger.info("took a snapshot from node %d at seq %d", peer, head.snapshot_seq)
        except (PeerUnavailable, GeomysError, ValueError) as exc:
            logger.warning("taking a snapshot from node %d failed: %s", peer, exc)
            with self.lock:
                self._run(self.core.snapshot_failed())

    # -- INFO --------------------------------------------------------------------------------

    def info(self) -> dict:
        """The cluster part of INFO."""
        with self.lock:
            core = self.core
            leader = core.address(core.leader_id)
            info = {
                "node_id": core.id,
                "role": core.role,
                "term": core.term,
                "leader_id": core.leader_id,
                "leader_address": leader.client_address if leader else None,
                # Map keys are strings: many MessagePack readers refuse integer keys.
                "nodes": {str(n): {"client": a.client_address, "grpc": a.grpc_address}
                          for n, a in sorted(core.members.items())},
                "nodes_hash": rules.membership_hash(core.members),
                "learners": sorted(core.learners),
                "commit_offset": core.commit,
                "last_term": core.log.last_term,
                "syncing": core.syncing,
            }
            if core.is_leader:
                info["followers"] = {str(n): p.match for n, p in core.progress.items()}
            info.update(self.stats)
            info.update(core.stats)
        return info

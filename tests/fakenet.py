"""An in-memory cluster for unit tests: ClusterNodes wired through a fake network.

Calls between nodes go straight to the callee's handlers (no sockets); links
can be cut, nodes isolated or taken down, and whole message types dropped.
Background work the nodes would run on threads is queued instead, and the
test runs it (`run_tasks`) or drives the loops itself (`tick`,
`replicate_once`), so every scenario is deterministic and sleeps nowhere.
"""

from typing import Callable, Optional

from geomys import config as config_mod
from geomys.cluster.node import ClusterNode
from geomys.cluster.state import LEADER
from geomys.cluster.transport import PeerUnavailable
from geomys.engine import Context, Engine
from geomys.store import Store
from tests.fakes import FakeClock

HEARTBEAT = 1.0
FAILURE_TIMEOUT = 3.0

_HANDLERS = {
    "Heartbeat": "on_heartbeat",
    "Join": "on_join",
    "AppendEntries": "on_append",
    "Forward": "on_forward",
    "RequestVote": "on_vote",
    "CanYouLead": "on_can_you_lead",
    "NewLeader": "on_new_leader",
    "Leave": "on_leave",
}

# Loops that run forever on real threads; in the simulation the test drives them.
_LOOPS = ("cluster-ticker", "sender-")


class Endpoint:
    """One node's view of the network: what it uses as `peers`."""

    def __init__(self, net: "FakeNetwork", node_id: int) -> None:
        self.net = net
        self.node_id = node_id
        self.rpc_timeout = 1.0

    def call(self, address: str, method: str, request, timeout: Optional[float] = None):
        target = self.net.reach(self.node_id, address, method)
        return getattr(target, _HANDLERS[method])(request)

    def sync(self, address: str, request, timeout: float):
        target = self.net.reach(self.node_id, address, "Sync")
        yield from target.serve_sync(request)

    def close(self) -> None:
        pass


class FakeNetwork:
    """Nodes by address, the links between them, and the tasks they queued."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.nodes: dict[int, ClusterNode] = {}
        self.cut_links: set[frozenset] = set()
        self.down: set[int] = set()
        self.isolated: set[int] = set()
        self.dropped: set[str] = set()
        self.tasks: list[tuple[str, Callable, tuple]] = []

    # -- building ----------------------------------------------------------------

    def add_node(self, node_id: int) -> ClusterNode:
        values = {opt.name: opt.default for opt in config_mod.OPTIONS}
        values.update(node_id=node_id, port=20000 + node_id, heartbeat_interval=HEARTBEAT,
                      failure_timeout=FAILURE_TIMEOUT, backlog_entries=1000)
        config = config_mod.validate(values)
        engine = Engine(Store(), self.clock)
        node = ClusterNode(config, engine, clock=self.clock, peers=Endpoint(self, node_id), spawn=self._spawn)
        engine.add_sink(node)
        self.nodes[node_id] = node
        return node

    def _spawn(self, name: str, target: Callable, args: tuple) -> None:
        if not name.startswith(_LOOPS):
            self.tasks.append((name, target, args))

    # -- faults --------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self.cut_links.add(frozenset((a, b)))

    def heal(self, a: int, b: int) -> None:
        self.cut_links.discard(frozenset((a, b)))

    def isolate(self, node_id: int) -> None:
        """Cut every link of `node_id`, including to nodes added later."""
        self.isolated.add(node_id)

    def rejoin(self, node_id: int) -> None:
        self.isolated.discard(node_id)

    def reach(self, caller: int, address: str, method: str) -> ClusterNode:
        """The node at `address`, if a message from `caller` gets there."""
        target = next((n for n in self.nodes.values() if n.me.grpc_address == address), None)
        if target is None or target.me.node_id in self.down or caller in self.down:
            raise PeerUnavailable("%s unreachable" % address)
        if frozenset((caller, target.me.node_id)) in self.cut_links or method in self.dropped \
                or {caller, target.me.node_id} & self.isolated:
            raise PeerUnavailable("link %d-%d cut" % (caller, target.me.node_id))
        return target

    # -- driving ---------------------------------------------------------------------

    def run_tasks(self, limit: int = 50) -> None:
        """Run queued background work (syncs, take-overs) until none is left."""
        for _ in range(limit):
            if not self.tasks:
                return
            _, target, args = self.tasks.pop(0)
            target(*args)
        raise AssertionError("background tasks did not settle")

    def pump(self, rounds: int = 20) -> None:
        """Let every live leader replicate to every peer until nothing more moves."""
        for _ in range(rounds):
            moved = False
            for node in list(self.nodes.values()):
                if node.me.node_id in self.down or node.state.role != LEADER:
                    continue
                for peer in node._targets():
                    seq_before = self.nodes[peer].engine.seq if peer in self.nodes else None
                    outcome = node.replicate_once(peer)
                    moved |= outcome == "again" or (peer in self.nodes and self.nodes[peer].engine.seq != seq_before)
            self.run_tasks()
            if not moved:
                return

    def tick_all(self) -> None:
        for node_id, node in list(self.nodes.items()):
            if node_id not in self.down:
                node.tick()
        self.run_tasks()

    def advance(self, seconds: float) -> None:
        """Move time on with no message exchanged (as if every node were paused)."""
        self.clock.advance(seconds)

    def run_for(self, seconds: float, until: Optional[Callable[[], bool]] = None) -> None:
        """Let time pass in half-heartbeat steps, nodes exchanging keepalives, heartbeats and votes."""
        steps = max(1, round(seconds / (HEARTBEAT / 2)))
        for _ in range(steps):
            self.clock.advance(HEARTBEAT / 2)
            self.pump()
            self.tick_all()
            self.pump()
            if until is not None and until():
                return

    # -- conveniences ------------------------------------------------------------------

    def write(self, node_id: int, command: str, **fields) -> dict:
        """Execute a command on a node as a client would (without waiting for replication)."""
        node = self.nodes[node_id]
        ctx = Context(node.engine, "test")
        return node.engine.execute({"command": command, **fields}, ctx)

    def read(self, node_id: int, key):
        return self.write(node_id, "GET", key=key).get("value")

    def leaders(self) -> list[int]:
        return [n for n, node in self.nodes.items()
                if n not in self.down and node.state.role == LEADER and node.engine.forwarder is None]


def three_node_cluster() -> FakeNetwork:
    """Nodes 1 (bootstrap leader), 2 and 3, all members, replication settled."""
    net = FakeNetwork()
    leader = net.add_node(1)
    leader.bootstrap()
    for node_id in (2, 3):
        join(net, node_id)
    return net


def join(net: FakeNetwork, node_id: int, via: int = 1) -> ClusterNode:
    """Add a node the way `geomys -join` does: register, full sync, then promotion by the leader."""
    node = net.add_node(node_id)
    address = node.register(net.nodes[via].me.grpc_address, deadline=net.clock.monotonic() + 10)
    node._sync_from(address, full=True)
    net.pump()
    for node_ in list(net.nodes.values()):
        if node_.state.role == LEADER:
            node_.tick()
    net.pump()
    assert node_id in node.state.members, "node %d did not become a member" % node_id
    return node


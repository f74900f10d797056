"""An in-memory network of cluster drivers: ClusterNodes with real engines and stores, no gRPC.

Messages queue in the network until the test delivers them (`deliver`),
links can be cut, and background work (a snapshot fetch) runs inline, so
every test is single-threaded and deterministic. The consensus rules
themselves are exercised far more widely by the simulator in tests/sim;
this network checks what the driver adds: applying, waiting, routing.
"""

from collections import deque
from typing import Optional

from geomys import config as config_mod
from geomys.cluster.node import ClusterNode
from geomys.cluster.transport import PeerUnavailable
from geomys.engine import Context, Engine
from geomys.store import Store
from tests.fakes import FakeClock

HEARTBEAT = 1.0
FAILURE_TIMEOUT = 3.0
RPC_TIMEOUT = 0.5   # also how long a linearizable read may wait (real time: it blocks its thread)


class Network:
    """Nodes by id, the messages in flight, and the links that are cut."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.nodes: dict[int, ClusterNode] = {}
        self.by_address: dict[str, ClusterNode] = {}
        self.in_flight: deque = deque()     # (from id, to id, message)
        self.cut: set[frozenset] = set()
        self.unreachable: dict[int, set[int]] = {}

    def add(self, node_id: int, bootstrap: bool = False) -> ClusterNode:
        config = config_mod.load(["-node_id=%d" % node_id, "-port=%d" % (20000 + node_id),
                                  "-heartbeat_interval=%g" % HEARTBEAT, "-failure_timeout=%g" % FAILURE_TIMEOUT,
                                  "-rpc_timeout=%g" % RPC_TIMEOUT,
                                  "-bootstrap" if bootstrap else "-join=127.0.0.1:21001"])
        engine = Engine(Store(), self.clock)
        node = ClusterNode(config, engine, clock=self.clock, transport=Transport(self, node_id),
                           spawn=lambda target, *args: target(*args))
        engine.add_sink(node)
        engine.read_barrier = node.read_barrier
        self.nodes[node_id] = node
        self.by_address[node.core.me.grpc_address] = node
        self.unreachable[node_id] = set()
        return node

    def linked(self, a: int, b: int) -> bool:
        return frozenset((a, b)) not in self.cut

    def deliver(self, limit: int = 10000) -> int:
        """Deliver messages (and the answers they cause) until none is in flight; return how many."""
        count = 0
        while self.in_flight and count < limit:
            src, dst, message = self.in_flight.popleft()
            count += 1
            if not self.linked(src, dst):
                continue
            for answer in self.nodes[dst].receive([message], answer_inline=True):
                self.in_flight.append((dst, src, answer))
        assert not self.in_flight, "messages still in flight after %d deliveries" % limit
        return count

    def tick_all(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        for node in self.nodes.values():
            node.tick()
        self.deliver()


class Transport:
    """One node's side of the in-memory network (the driver's Transport protocol)."""

    def __init__(self, net: Network, node_id: int) -> None:
        self.net = net
        self.node_id = node_id

    def _reach(self, address: str) -> ClusterNode:
        node = self.net.by_address.get(address)
        if node is None or not self.net.linked(self.node_id, node.core.id):
            raise PeerUnavailable("no route to %s" % address)
        return node

    def send(self, to: int, address: str, message) -> None:
        self.net.in_flight.append((self.node_id, to, message))

    def take_unreachable(self) -> set[int]:
        peers, self.net.unreachable[self.node_id] = self.net.unreachable[self.node_id], set()
        return peers

    def ask(self, address: str, message, timeout: Optional[float] = None):
        return self._reach(address).ask(message)

    def call(self, address: str, method: str, request, timeout: Optional[float] = None):
        assert method == "Forward"
        return self._reach(address).on_forward(request)

    def sync(self, address: str, request, timeout: float):
        yield from self._reach(address).serve_sync(request)

    def close(self) -> None:
        pass


def three_nodes() -> Network:
    """Node 1 bootstraps; nodes 2 and 3 join and become members."""
    net = Network()
    net.add(1, bootstrap=True).bootstrap()
    for node_id in (2, 3):
        node = net.add(node_id)
        node.begin_join("127.0.0.1:21001", deadline=net.clock.monotonic() + 10)
        net.deliver()
        for _ in range(5):
            net.tick_all(HEARTBEAT / 2)
    assert all(set(n.core.members) == {1, 2, 3} for n in net.nodes.values()), \
        {i: sorted(n.core.members) for i, n in net.nodes.items()}
    return net


def run(node: ClusterNode, command: str, **fields) -> tuple[dict, Context]:
    """Execute one request on `node` without settling it; return the reply and the context."""
    ctx = Context(node.engine)
    return node.engine.execute(dict(fields, command=command), ctx), ctx

"""Test support for clusters of real geomys processes on 127.0.0.1.

`Cluster` starts N nodes with short timings, reads INFO to find the leader and
to wait until every node agrees; `WriteLoad` runs client threads that record
every acknowledged write and retry elsewhere on NO_LEADER or a dropped
connection; `ClusterMonitor` polls INFO in the background to follow terms and
leaders over time. Every wait is bounded (tests.helpers.wait_until); processes
are signalled by the PID this module started, never by name.
"""

import itertools
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

from tests.helpers import HOST, RawClient, ServerProcess, wait_until

JOIN_ATTEMPTS = 3
HEARTBEAT = 0.2
FAILURE_TIMEOUT = 1.0

#: Connection failures a client treats as "try another node".
CONNECTION_ERRORS = (OSError, EOFError)


def grpc_address(node: ServerProcess) -> str:
    return "%s:%d" % (HOST, node.port + 1000)


def try_info(node: ServerProcess, timeout: float = 2.0) -> Optional[dict]:
    """INFO of `node`, or None if it does not answer within `timeout`."""
    try:
        with RawClient(node.port, timeout=timeout) as client:
            reply = client.call("INFO")
    except CONNECTION_ERRORS:
        return None
    return reply.get("value") if reply.get("status") == "OK" else None


def get_many(port: int, keys: Iterable[str], batch: int = 500, timeout: float = 30.0) -> dict:
    """GET every key from one node (pipelined); return key -> value, or None for NOT_FOUND."""
    keys = list(keys)
    out = {}
    with RawClient(port, timeout=timeout) as client:
        for start in range(0, len(keys), batch):
            part = keys[start:start + batch]
            client.send(*({"command": "GET", "key": k} for k in part))
            for key in part:
                reply = client.read()
                if reply.get("status") == "OK":
                    out[key] = reply["value"]
                elif reply.get("code") == "NOT_FOUND":
                    out[key] = None
                else:
                    raise AssertionError("GET %r on port %d answered %r" % (key, port, reply))
    return out


class Cluster:
    """Nodes of one test cluster, keyed by node id; node 1 bootstraps unless told otherwise."""

    def __init__(self, workdir: Path, heartbeat_interval: float = HEARTBEAT,
                 failure_timeout: float = FAILURE_TIMEOUT,
                 process: Callable[..., ServerProcess] = ServerProcess, **options) -> None:
        self.workdir = Path(workdir)
        # process(workdir, node_id=..., **config) makes a node's process; the partition
        # scenarios run each node under a uid of its own (tests/faults/partition.py).
        self.process = process
        self.options = dict(heartbeat_interval=heartbeat_interval, failure_timeout=failure_timeout, **options)
        self.failure_timeout = failure_timeout
        self.nodes: dict[int, ServerProcess] = {}
        self.dead: set[int] = set()          # killed by the test (kill -9 or clean stop)
        self.paused: set[int] = set()
        self.join_retries = 0                # joins retried after a transient RPC failure

    # -- processes -------------------------------------------------------------------

    def _process(self, node_id: int, **options) -> ServerProcess:
        merged = dict(self.options, node_id=node_id, **options)
        workdir = self.workdir / ("node%d" % node_id)
        if merged.get("persistence", "none") != "none":
            merged.setdefault("persistence_path", str(workdir / "db.aof"))  # one file per node, kept across restarts
        node = self.process(workdir, **merged)
        self.nodes[node_id] = node
        self.dead.discard(node_id)
        return node

    def start(self, size: int = 3, first_id: int = 1, ids: Optional[Sequence[int]] = None) -> "Cluster":
        """Bootstrap the first node, join the others one by one, wait until all are members.

        The nodes are `ids` in that order (the first one leads), by default
        `size` ids counting from `first_id`.
        """
        ids = list(ids) if ids is not None else list(range(first_id, first_id + size))
        self._process(ids[0], bootstrap=True).start()
        for node_id in ids[1:]:
            self.add_node(node_id)
        return self

    def add_node(self, node_id: int, via: Optional[int] = None, wait: bool = True, **options) -> ServerProcess:
        """Start a node that joins through `via` (default: any live node); wait until it is a member."""
        via = via if via is not None else self.live_ids()[0]
        for attempt in range(JOIN_ATTEMPTS):
            node = self._process(node_id, join=grpc_address(self.nodes[via]), **options)
            try:
                node.start(wait=wait)
                break
            except AssertionError as exc:
                # geomys gives up a join when its first Join RPC fails, and on a loaded machine
                # that call can miss rpc_timeout: retry that case only, and say so (a warning).
                transient = "no Geomys cluster answers" in node.log_text() and via in self.running_ids()
                if not transient or attempt == JOIN_ATTEMPTS - 1:
                    raise AssertionError("node %d could not join through node %d: %s\ninfos: %s\n%s" % (
                        node_id, via, exc, self._brief(self.running_ids()), self.logs())) from None
                node.cleanup()
                self.join_retries += 1
                warnings.warn("node %d: join through node %d retried after a transient failure: %s"
                              % (node_id, via, node.log_text().strip().splitlines()[-1:]))
        if wait:
            self.wait_members(self.live_ids(), timeout=10 * self.failure_timeout + 10)
        return node

    def kill(self, node_id: int) -> None:
        """kill -9 one node."""
        self.nodes[node_id].kill()
        self.dead.add(node_id)
        self.paused.discard(node_id)

    def restart(self, node_id: int) -> ServerProcess:
        """Start a killed node again under its id; wait until it is a member again.

        The cluster refuses an id it still lists, so this first waits until the
        leader has removed the dead node; the node then joins like a new one
        (on a new port) and takes the leader's state.
        """
        self.wait_members([n for n in self.live_ids() if n != node_id])
        self.nodes[node_id].cleanup()
        return self.add_node(node_id)

    def pause(self, node_id: int) -> None:
        self.nodes[node_id].pause()
        self.paused.add(node_id)

    def resume(self, node_id: int) -> None:
        self.nodes[node_id].resume()
        self.paused.discard(node_id)

    def live_ids(self) -> list[int]:
        """Ids of the nodes started and neither killed nor exited, smallest first."""
        # A copy: client threads ask while the test adds nodes.
        return sorted(n for n, p in list(self.nodes.items())
                      if n not in self.dead and p.proc is not None and p.proc.poll() is None)

    def running_ids(self) -> list[int]:
        """Live and not paused."""
        return [n for n in self.live_ids() if n not in self.paused]

    def port(self, node_id: int) -> int:
        return self.nodes[node_id].port

    def cleanup(self) -> None:
        for node in self.nodes.values():
            node.cleanup()

    def logs(self, ids: Optional[Iterable[int]] = None, tail: int = 40) -> str:
        """The last lines of each node's log, for failure messages."""
        parts = []
        for node_id in ids if ids is not None else sorted(self.nodes):
            lines = self.nodes[node_id].log_text().splitlines()[-tail:]
            parts.append("--- node %d ---\n%s" % (node_id, "\n".join(lines)))
        return "\n".join(parts)

    # -- INFO ------------------------------------------------------------------------

    def info(self, node_id: int) -> dict:
        return self.nodes[node_id].info()

    def infos(self, ids: Optional[Iterable[int]] = None) -> dict[int, Optional[dict]]:
        ids = self.running_ids() if ids is None else ids
        return {n: try_info(self.nodes[n]) for n in ids}

    def agreed_leader(self, ids: Optional[Iterable[int]] = None) -> Optional[int]:
        """The leader every node of `ids` names at one term, if that leader is among them and says so."""
        infos = self.infos(ids)
        if not infos or any(i is None for i in infos.values()):
            return None
        leaders = {(i["leader_id"], i["term"]) for i in infos.values()}
        if len(leaders) != 1:
            return None
        leader, _ = leaders.pop()
        if leader not in infos or infos[leader]["role"] != "leader":
            return None
        if any(i["role"] != "follower" for n, i in infos.items() if n != leader):
            return None
        return leader

    def wait_leader(self, ids: Optional[Iterable[int]] = None, timeout: Optional[float] = None,
                    not_in: Iterable[int] = ()) -> int:
        """Wait until the nodes `ids` (default: running ones) agree on a leader outside `not_in`."""
        ids = list(self.running_ids() if ids is None else ids)
        not_in = set(not_in)
        timeout = timeout if timeout is not None else 8 * self.failure_timeout + 5

        def agreed():
            leader = self.agreed_leader(ids)
            return leader if leader is not None and leader not in not_in else None
        try:
            return wait_until(agreed, timeout, 0.05, "nodes %s to agree on a leader" % ids)
        except AssertionError as exc:
            raise AssertionError("%s\ninfos: %s\n%s" % (exc, self._brief(ids), self.logs(ids))) from None

    def wait_members(self, ids: Iterable[int], timeout: Optional[float] = None) -> None:
        """Wait until every node of `ids` lists exactly `ids` as the membership."""
        ids = sorted(ids)
        want = {str(n) for n in ids}
        timeout = timeout if timeout is not None else 8 * self.failure_timeout + 5

        def agreed():
            infos = self.infos(ids)
            return all(i is not None and set(i["nodes"]) == want for i in infos.values())
        try:
            wait_until(agreed, timeout, 0.05, "nodes %s to list exactly themselves as members" % ids)
        except AssertionError as exc:
            raise AssertionError("%s\ninfos: %s\n%s" % (exc, self._brief(ids), self.logs(ids))) from None

    def wait_converged(self, ids: Optional[Iterable[int]] = None, timeout: Optional[float] = None) -> dict:
        """Wait until the nodes agree on leader, term, membership, applied offset, key count and digest."""
        ids = list(self.running_ids() if ids is None else ids)
        timeout = timeout if timeout is not None else 8 * self.failure_timeout + 10

        def converged():
            if self.agreed_leader(ids) is None:
                return None
            infos = self.infos(ids)
            if any(i is None for i in infos.values()):
                return None
            # `digest` (docs/protocol.md, INFO: equal digests, equal data) is compared too when INFO has it.
            fields = {(i["term"], i["leader_id"], tuple(sorted(i["nodes"])), i["replication_offset"], i["keys"],
                       i.get("digest")) for i in infos.values()}
            return infos if len(fields) == 1 else None
        try:
            return wait_until(converged, timeout, 0.05, "nodes %s to converge" % ids)
        except AssertionError as exc:
            raise AssertionError("%s\ninfos: %s\n%s" % (exc, self._brief(ids), self.logs(ids))) from None

    def _brief(self, ids) -> dict:
        keys = ("role", "term", "leader_id", "nodes", "replication_offset", "commit_offset", "keys", "digest",
                "followers", "learners", "syncing")
        return {n: ({k: i.get(k) for k in keys} if i else None) for n, i in self.infos(ids).items()}

    # -- data ------------------------------------------------------------------------

    def write(self, node_id: int, command: str, **fields) -> dict:
        return self.nodes[node_id].call(command, **fields)

    def data(self, node_id: int, keys: Iterable[str]) -> dict:
        return get_many(self.port(node_id), keys)


class WriteLoad:
    """Client threads writing unique SET keys and per-thread INCR counters, recording every ack.

    Each thread alternates `SET <prefix>-<thread>-<i>` and `incrs_per_set`
    times `INCR <prefix>-counter-<thread>`, as fast as replies come or at
    `rate` operations a second. On NO_LEADER or a dropped/timed-out
    connection it moves to the next port that `ports()` returns (unless
    `sticky`) and retries the same operation, so a write whose first attempt
    was applied may come back KEY_EXISTS. That reply is recorded as
    confirmed, and checked like an acknowledgement when `key_exists_confirms`
    (replies reveal only committed writes). Not so where a leader may be
    deposed under the load: it answers like a follower, from writes of its
    own that were never confirmed and that the new leader discards
    (docs/cluster.md). A thread's INCR replies must keep growing: one that
    does not is noted in `incr_regressions`.
    """

    def __init__(self, ports: Callable[[], list[int]], threads: int = 4, prefix: str = "load",
                 value_size: int = 16, socket_timeout: float = 2.0, sticky: bool = False,
                 pause_after_error: float = 0.02, rate: Optional[float] = None, incrs_per_set: int = 1,
                 key_exists_confirms: bool = True) -> None:
        self.ports = ports
        self.prefix = prefix
        self.value_size = value_size
        self.socket_timeout = socket_timeout
        self.sticky = sticky
        self.pause_after_error = pause_after_error
        self.interval = 1.0 / rate if rate else 0.0
        self.incrs_per_set = incrs_per_set
        self.key_exists_confirms = key_exists_confirms
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.acked_sets: dict[str, str] = {}         # key -> value, acknowledged OK
        self.acked_at: dict[str, float] = {}         # key -> time.monotonic() of its OK
        self.confirmed_sets: dict[str, str] = {}     # key -> value, retry answered KEY_EXISTS
        self.sending: list[Optional[dict]] = [None] * threads   # the operation each thread has in flight
        self.acked_incrs = [0] * threads             # INCRs acknowledged per thread
        self.attempted_incrs = [0] * threads         # INCRs sent at least once (upper bound)
        self.last_incr_value = [0] * threads
        self.incr_regressions: list[tuple[int, int, int]] = []   # (thread, value seen before, smaller reply)
        self.acks: list[tuple[float, float]] = []    # (sent, answered), monotonic, of every OK
        self.errors: dict[str, int] = {}
        self.unexpected: list = []
        self.stopped_at: Optional[float] = None     # time.monotonic() when the last thread ended
        self._threads = [threading.Thread(target=self._run, args=(t,), name="load-%d" % t, daemon=True)
                         for t in range(threads)]

    # -- control ---------------------------------------------------------------------

    def start(self) -> "WriteLoad":
        for thread in self._threads:
            thread.start()
        return self

    def halt(self) -> None:
        """Tell the threads to end after the operation they have in flight, without waiting for them."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        self.halt()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, "load threads did not stop: %s" % alive
        self.stopped_at = time.monotonic()

    def __enter__(self) -> "WriteLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- results ---------------------------------------------------------------------

    @property
    def acked(self) -> int:
        with self._lock:
            return len(self.acked_sets) + sum(self.acked_incrs)

    def counter_key(self, thread: int) -> str:
        return "%s-counter-%d" % (self.prefix, thread)

    def all_keys(self) -> list[str]:
        with self._lock:
            return list(self.acked_sets) + list(self.confirmed_sets) + \
                [self.counter_key(t) for t in range(len(self.acked_incrs))]

    def wait_acked(self, count: int, timeout: float = 20.0) -> None:
        wait_until(lambda: self.acked >= count, timeout, 0.05,
                   "%d acknowledged writes (errors so far: %s)" % (count, self.errors))

    def first_ack_after(self, since: float) -> Optional[float]:
        """Seconds from `since` to the first acknowledgement of a write sent after it (None: none yet)."""
        with self._lock:
            answered = [a for s, a in self.acks if s >= since]
        return min(answered) - since if answered else None

    def discrepancies(self, data: dict) -> list[str]:
        """What `data` (key -> value from one node) gets wrong: acknowledged writes it lacks, impossible counters."""
        with self._lock:
            sets = dict(self.acked_sets, **(self.confirmed_sets if self.key_exists_confirms else {}))
            acked_incrs, attempted = list(self.acked_incrs), list(self.attempted_incrs)
            last = list(self.last_incr_value)
        wrong = ["SET %s: acknowledged %r, found %r" % (k, v, data.get(k))
                 for k, v in sorted(sets.items()) if data.get(k) != v]
        for t, (acked, tried, seen) in enumerate(zip(acked_incrs, attempted, last)):
            value = int(data.get(self.counter_key(t)) or 0)
            if value < acked:
                wrong.append("counter %d is %d but %d INCRs were acknowledged" % (t, value, acked))
            if value < seen:
                wrong.append("counter %d is %d but a reply already showed %d" % (t, value, seen))
            if value > tried:
                wrong.append("counter %d is %d but only %d INCRs were sent" % (t, value, tried))
        return wrong

    def check(self, data: dict, where: str = "") -> None:
        """Assert that `data` (key -> value from one node) holds every acknowledged write."""
        wrong = self.discrepancies(data)
        assert not wrong, "%s: %d acknowledged writes missing or wrong, e.g. %s" % (where, len(wrong), wrong[:5])

    # -- the client threads --------------------------------------------------------------

    def _note_error(self, what: str) -> None:
        with self._lock:
            self.errors[what] = self.errors.get(what, 0) + 1

    def _run(self, t: int) -> None:
        client, port = None, None
        rotation = itertools.count(t)
        ops = self._operations(t)
        op = next(ops)
        due = time.monotonic()
        while not self._stop.is_set():
            if client is None:
                ports = self.ports()
                if not ports:
                    self._stop.wait(0.05)
                    continue
                port = ports[0] if self.sticky else ports[next(rotation) % len(ports)]
                try:
                    client = RawClient(port, timeout=self.socket_timeout)
                except CONNECTION_ERRORS:
                    self._note_error("connect")
                    client = None
                    self._stop.wait(self.pause_after_error)
                    continue
            if op["command"] == "INCR":
                with self._lock:
                    self.attempted_incrs[t] += 1   # every send may apply: an upper bound
            sent = time.monotonic()
            self.sending[t] = op
            try:
                reply = client.call(op["command"], **{k: v for k, v in op.items() if k != "command"})
            except (socket.timeout, TimeoutError):
                self._note_error("timeout")
                client.close()
                client = None
                continue
            except CONNECTION_ERRORS:
                self._note_error("connection")
                client.close()
                client = None
                self._stop.wait(self.pause_after_error)
                continue
            if self._record(t, op, reply, sent):
                op = next(ops)
                if self.interval:
                    # A steady rate: one operation per interval, and no burst to make up for a stall.
                    due = max(due + self.interval, time.monotonic())
                    self._stop.wait(due - time.monotonic())
            else:
                client.close()
                client = None
                self._stop.wait(self.pause_after_error)
        if client is not None:
            client.close()

    def _operations(self, t: int):
        for i in itertools.count():
            value = ("v%d-%d-" % (t, i)).ljust(self.value_size, "x")
            yield {"command": "SET", "key": "%s-%d-%d" % (self.prefix, t, i), "value": value}
            for _ in range(self.incrs_per_set):
                yield {"command": "INCR", "key": self.counter_key(t)}

    def _record(self, t: int, op: dict, reply: dict, sent: float) -> bool:
        """Note the outcome; return True to go on with the next operation, False to retry elsewhere."""
        status, code = reply.get("status"), reply.get("code")
        answered = time.monotonic()
        with self._lock:
            if status == "OK":
                self.acks.append((sent, answered))
                if op["command"] == "SET":
                    self.acked_sets[op["key"]] = op["value"]
                    self.acked_at[op["key"]] = answered
                else:
                    self.acked_incrs[t] += 1
                    if reply["value"] <= self.last_incr_value[t]:
                        self.incr_regressions.append((t, self.last_incr_value[t], reply["value"]))
                    self.last_incr_value[t] = max(self.last_incr_value[t], reply["value"])
                return True
            if op["command"] == "SET" and code == "KEY_EXISTS":
                self.confirmed_sets[op["key"]] = op["value"]
                return True
        self._note_error(code or "?")
        if code != "NO_LEADER":
            with self._lock:
                self.unexpected.append((op, reply))
        return False


class NodeView(NamedTuple):
    """What one INFO said about a node's place in the cluster."""

    port: int           # tells incarnations apart: a restarted node has a new port
    role: str
    term: int
    leader_id: Optional[int]
    members: int


class ClusterMonitor:
    """Polls INFO on every running node from a thread, to follow terms and leaders over time.

    Each round keeps a NodeView per node that answered (None for one that did
    not). INFO hashes every key for its digest, so rounds are spaced by
    `interval` to keep the cost small beside the load under test.
    """

    def __init__(self, cluster: Cluster, interval: float = 0.3, timeout: float = 1.0) -> None:
        self.cluster = cluster
        self.interval = interval
        self.timeout = timeout
        self.rounds: list[dict[int, Optional[NodeView]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-monitor", daemon=True)

    def start(self) -> "ClusterMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:   # started
            self._thread.join(self.timeout * (len(self.cluster.nodes) + 1) + self.interval)
            assert not self._thread.is_alive(), "the cluster monitor did not stop"

    def __enter__(self) -> "ClusterMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            views = {}
            for node_id in self.cluster.running_ids():
                node = self.cluster.nodes[node_id]
                info = try_info(node, self.timeout)
                views[node_id] = None if info is None else NodeView(
                    node.port, info["role"], info["term"], info["leader_id"], len(info["nodes"]))
            self.rounds.append(views)

    @staticmethod
    def leader_of(views: dict[int, Optional[NodeView]]) -> Optional[int]:
        """The node that says it leads and that a majority of its membership follows at its term, if any."""
        for node_id, view in views.items():
            if view is not None and view.role == "leader":
                followers = sum(1 for v in views.values()
                                if v is not None and v.leader_id == node_id and v.term == view.term)
                if followers >= view.members // 2 + 1:
                    return node_id
        return None

    def leader_present_fraction(self) -> float:
        """The share of rounds in which a leader with a majority behind it was seen."""
        assert self.rounds, "the monitor saw no round"
        return sum(1 for views in self.rounds if self.leader_of(views) is not None) / len(self.rounds)

    def term_regressions(self) -> list[str]:
        """Every time a node (one incarnation of it) answered with a lower term than before."""
        last: dict[tuple[int, int], int] = {}
        regressions = []
        for number, views in enumerate(self.rounds):
            for node_id, view in views.items():
                if view is None:
                    continue
                before = last.get((node_id, view.port))
                if before is not None and view.term < before:
                    regressions.append("round %d: node %d went from term %d to %d"
                                       % (number, node_id, before, view.term))
                last[(node_id, view.port)] = view.term
        return regressions

    def highest_term(self) -> int:
        return max((v.term for views in self.rounds for v in views.values() if v is not None), default=0)

#!/usr/bin/env python3
"""One PySyncObj node with an in-memory ReplDict, and the SET load that scripts/bench.py runs in it.

PySyncObj is a Raft library, not a server: its clients are threads of a
node's own process, which call the replicated dict's methods. So bench.py
starts this script three times (one Raft cluster on loopback ports) and asks
a node over a small control port to run one cell of the benchmark in its own
process. The control port speaks Geomys's MessagePack maps:

    {"command": "PING"}  -> {"status": "OK"}
    {"command": "INFO"}  -> {"status": "OK", "value": {"self", "leader", "role", "connected"}}
    {"command": "BENCH", "clients": C, "pipeline": P, "requests": N, "max_seconds": S}
                         -> {"status": "OK", "value": {"rps", "p50_ms", "p99_ms", "completed", "cut_short",
                                                       "errors", "errors_by_reason", "role_before", "role_after"}}

    python scripts/pysyncobj_node.py --port 7100 --partners 127.0.0.1:7101,127.0.0.1:7102 \
        --control-port 7200 --batching off

A BENCH cell follows geomys-benchmark's conventions: N SETs of fresh keys
split evenly over C client threads, values of 3 bytes; at pipeline 1 each
thread calls `set(key, value, sync=True)`; at pipeline P it issues P
`set(key, value, callback=...)` calls and issues the next P once all P
callbacks have come (redis-benchmark's -P). Latency runs from the batch's
first call to each callback. The cell stops after S seconds and says so;
SETs still in flight then are not counted.

Imports pysyncobj, msgpack, geomys.benchmark (its key plan and its
statistics, so both systems are counted alike) and the standard library.
The control server runs in the main thread, PySyncObj's own thread ticks
the Raft node, and a BENCH starts its client threads.
"""

import argparse
import logging
import socketserver
import threading
import time
import uuid
from collections import Counter
from typing import Optional, Protocol

import msgpack

from geomys.benchmark import Options, WorkerReport, aggregate, plan_client, split_evenly

# The two settings measured. appendEntriesUseBatch=False sends every new
# entry to the followers at once (and wakes the ticking thread through a pipe
# when a command is queued); with batching on, the leader sends what has
# gathered every appendEntriesPeriod, and the ticking thread sleeps up to
# autoTickPeriod between ticks, so both are set to the batching interval.
BATCHING = {
    "off": {"appendEntriesUseBatch": False},
    "2ms": {"appendEntriesUseBatch": True, "appendEntriesPeriod": 0.002, "autoTickPeriod": 0.002},
}
VALUE = "x" * 3  # geomys-benchmark's default -d


class ReplicatedDict(Protocol):
    """What a BENCH cell needs of pysyncobj's ReplDict (a fake one in unit tests)."""

    def set(self, key, value, sync: bool = False, timeout: Optional[float] = None, callback=None): ...


def run_cell(store: ReplicatedDict, clients: int, pipeline: int, requests: int, max_seconds: float,
             is_timeout=lambda exc: False):
    """Run `requests` SETs over `clients` threads against `store`; return geomys.benchmark's BenchmarkResult.

    `is_timeout(exc)` says whether an exception of a synchronous set() means
    its timeout ran out (the cell's deadline), not that the SET failed.
    """
    options = Options(clients=clients, requests=requests, pipeline=pipeline, tests=("set",),
                      max_seconds=max_seconds)
    run_id = uuid.uuid4().hex[:8]
    # Every key is made before the clock starts, as geomys-benchmark encodes every request first.
    keys = [[request["key"] for request in plan_client("set", client, count, run_id, VALUE).requests]
            for client, count in enumerate(split_evenly(requests, clients)) if count]
    go = threading.Event()
    reports = [WorkerReport() for _ in keys]
    threads = [threading.Thread(target=_client, name="bench-client-%d" % client, daemon=True,
                                args=(store, client_keys, pipeline, max_seconds, go, report, is_timeout))
               for client, (client_keys, report) in enumerate(zip(keys, reports))]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        # Each client stops at its deadline; the margin covers thread start-up on a busy machine.
        thread.join(max_seconds + 30.0)
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError("a client thread did not stop after its deadline")
    return aggregate("set", options, reports, 1)


def _client(store: ReplicatedDict, keys: list, pipeline: int, max_seconds: float, go: threading.Event,
            report: WorkerReport, is_timeout) -> None:
    """One client thread: SET every key, `pipeline` at a time, until done or the deadline; fill `report`."""
    go.wait()
    clock = time.perf_counter
    histogram, errors = Counter(), Counter()
    report.started = clock()
    deadline = report.started + max_seconds
    finished_all = True
    for start in range(0, len(keys), pipeline):
        batch = keys[start:start + pipeline]
        sent_at = clock()
        if sent_at >= deadline:
            finished_all = False
            break
        if pipeline == 1:
            stamps = _set_sync(store, batch[0], deadline - sent_at, is_timeout)
        else:
            stamps = _set_batch(store, batch, deadline)
        for received_at, error in stamps:
            histogram[int((received_at - sent_at) * 1e6)] += 1
            if error:
                errors[error] += 1
        report.completed += len(stamps)
        if len(stamps) < len(batch):
            finished_all = False
            break
    report.finished = clock()
    report.cut_short = not finished_all
    report.histogram, report.errors = dict(histogram), dict(errors)


def _set_sync(store: ReplicatedDict, key: str, timeout: float, is_timeout) -> list:
    """One blocking SET: [(time of the reply, error or None)], or [] if the timeout ran out first."""
    try:
        store.set(key, VALUE, sync=True, timeout=timeout)
    except Exception as exc:  # pysyncobj raises SyncObjException(reason) for a failed command
        if is_timeout(exc):
            return []
        return [(time.perf_counter(), str(exc.args[0]) if exc.args else type(exc).__name__)]
    return [(time.perf_counter(), None)]


def _set_batch(store: ReplicatedDict, keys: list, deadline: float) -> list:
    """Issue one SET per key with a callback, wait for all of them; return the replies that came by `deadline`."""
    stamps: list = []
    done = threading.Event()
    size = len(keys)

    def callback(result, reason) -> None:
        # Called on PySyncObj's ticking thread; reason 0 is FAIL_REASON.SUCCESS.
        stamps.append((time.perf_counter(), str(reason) if reason else None))
        if len(stamps) == size:
            done.set()

    for key in keys:
        store.set(key, VALUE, callback=callback)
    done.wait(deadline - time.perf_counter())
    return [stamp for stamp in stamps[:size] if stamp[0] <= deadline]


# -- the node and its control port -------------------------------------------------------------


class Node:
    """A PySyncObj node holding one ReplDict, and the answers of its control port."""

    def __init__(self, port: int, partners: list[str], batching: str) -> None:
        from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException
        from pysyncobj.batteries import ReplDict

        self.store = ReplDict()
        self.sync_obj = SyncObj("127.0.0.1:%d" % port, partners, consumers=[self.store],
                                conf=SyncObjConf(**BATCHING[batching]))
        self.timeout_error = SyncObjException
        self.reason_names = {str(v): k for k, v in vars(FAIL_REASON).items() if k.isupper()}
        self.bench_lock = threading.Lock()

    def info(self) -> dict:
        """Who this node is, whom it follows, and how many partners it is connected to."""
        status = self.sync_obj.getStatus()
        me, leader = str(status["self"]), status["leader"]
        return {"self": me, "leader": str(leader) if leader is not None else None,
                "role": role_of(me, leader and str(leader)),
                "connected": sum(1 for key, value in status.items()
                                 if key.startswith("partner_node_status_server_") and value == 2)}

    def bench(self, clients: int, pipeline: int, requests: int, max_seconds: float) -> dict:
        """Run one cell in this process; one cell at a time."""
        with self.bench_lock:
            role_before = self.info()["role"]
            result = run_cell(self.store, clients, pipeline, requests, max_seconds, self._is_timeout)
            return {"rps": result.rps, "p50_ms": result.latency.p50_ms, "p99_ms": result.latency.p99_ms,
                    "completed": result.completed, "cut_short": result.cut_short,
                    "errors": result.error_count,
                    "errors_by_reason": {self.reason_names.get(r, r): n for r, n in result.errors.items()},
                    "role_before": role_before, "role_after": self.info()["role"]}

    def _is_timeout(self, exc: Exception) -> bool:
        return isinstance(exc, self.timeout_error) and exc.args[:1] == ("Timeout",)

    def answer(self, request) -> dict:
        """The reply to one control request."""
        if type(request) is not dict:
            return error("BAD_REQUEST", "a request must be a map")
        command = request.get("command")
        if command == "PING":
            return {"status": "OK"}
        if command == "INFO":
            return {"status": "OK", "value": self.info()}
        if command == "BENCH":
            try:
                cell = {name: request[name] for name in ("clients", "pipeline", "requests", "max_seconds")}
            except KeyError as exc:
                return error("BAD_REQUEST", "BENCH needs the field %s" % exc)
            if not all(type(cell[n]) is int and cell[n] >= 1 for n in ("clients", "pipeline", "requests")) or \
                    not (type(cell["max_seconds"]) in (int, float) and cell["max_seconds"] > 0):
                return error("BAD_REQUEST", "clients, pipeline and requests must be positive integers, "
                                            "max_seconds a positive number")
            try:
                return {"status": "OK", "value": self.bench(**cell)}
            except Exception as exc:  # a stuck client thread ends this cell, not the node
                return error("INTERNAL", "%s: %s" % (type(exc).__name__, exc))
        return error("UNKNOWN_COMMAND", "unknown command %r" % (command,))


def role_of(me: str, leader: Optional[str]) -> str:
    """`leader`, `follower`, or `none` while no leader is known."""
    if leader is None:
        return "none"
    return "leader" if leader == me else "follower"


def error(code: str, message: str) -> dict:
    """An error reply in Geomys's shape."""
    return {"status": "ERROR", "code": code, "message": message}


class ControlHandler(socketserver.BaseRequestHandler):
    """Answers the MessagePack requests of one control connection, in order."""

    def handle(self) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        pack = msgpack.Packer(use_bin_type=True).pack
        try:
            while chunk := self.request.recv(65536):
                unpacker.feed(chunk)
                for request in unpacker:
                    self.request.sendall(pack(self.server.node.answer(request)))
        except (OSError, ValueError, msgpack.exceptions.UnpackException):
            return  # a broken connection ends only this control client


class ControlServer(socketserver.ThreadingTCPServer):
    """The control port: one thread per connection, so INFO answers while a cell runs."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, node: Node) -> None:
        self.node = node
        super().__init__(("127.0.0.1", port), ControlHandler)


def main() -> None:
    """Start the node, then serve the control port until killed."""
    parser = argparse.ArgumentParser(description="One PySyncObj node (in-memory ReplDict) for scripts/bench.py.")
    parser.add_argument("--port", type=int, required=True, help="this node's Raft port on 127.0.0.1")
    parser.add_argument("--partners", required=True, help="comma list of the other nodes' host:port")
    parser.add_argument("--control-port", type=int, required=True, help="the control port on 127.0.0.1")
    parser.add_argument("--batching", choices=sorted(BATCHING), default="off",
                        help="off: send each entry at once; 2ms: send what gathered every 2 ms")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = Node(args.port, [p for p in args.partners.split(",") if p], args.batching)
    with ControlServer(args.control_port, node) as server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

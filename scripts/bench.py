#!/usr/bin/env python3
"""The reference benchmark matrix of Geomys, written into docs/performance.md.

Starts every server itself on free 127.0.0.1 ports (the bare baseline of
scripts/baseline_server.py, Geomys standalone, writethrough, buffered, a
three-node cluster, Redis when it is installed, and two three-node PySyncObj
clusters), then runs SET, GET and INCR at 1 and 50 clients, pipeline 1 and
16. Each cell is run --repeat times, the servers taking turns in a rotating
order so that drift (CPU frequency, the page cache, a noisy neighbour) hits
them all alike; medians are quoted. Geomys is driven by geomys-benchmark,
Redis by redis-benchmark, PySyncObj by client threads in one of its nodes
(scripts/pysyncobj_node.py, which pip installs pysyncobj into this
interpreter's environment first if needed). The cluster is also compared with
PySyncObj on SET at 1, 8 and 50 clients, in a section of its own; and, with
--reads, its GET is measured local against linearizable (`consistent`), on
the leader and through a follower, in a section of its own.

    python scripts/bench.py --repeat 3                 # everything, into docs/performance.md
    python scripts/bench.py --pysyncobj --repeat 3     # only the cluster against PySyncObj
    python scripts/bench.py --reads --repeat 3         # only local against linearizable reads
    python scripts/bench.py --quick --servers standalone,baseline --tests set --output /tmp/perf.md
    python scripts/bench.py --cpu --repeat 3           # server CPU per request against the baseline

--cpu measures what the server spends per request instead: Geomys, writethrough
(SET only) and the baseline, SET and GET at 8 and 50 clients, a fixed -n per
run; user and system CPU from /proc/PID/stat, and `perf stat` counts per
request (context switches, page faults, syscalls by kind) when perf is
installed and allowed, else context switches sampled from /proc
(scripts/server_counters.py). It writes a section of its own (another one with
--pin, which binds each server to the last CPU and the load to the others);
--source DIR adds rows for the geomys package of another checkout.

Every run is bounded by --max-seconds; the servers are stopped by PID at the
end and on Ctrl-C. Runs in the main thread; imports only scripts/bench_common.py,
scripts/server_counters.py, msgpack and the standard library.
"""

import argparse
import csv
import importlib.metadata
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from bench_common import (REPO, BenchError, Connection, Server, Servers, add_output_option, command_path,
                          free_port, geomys_argv, info, machine_summary, median, positive_int, publish,
                          replace_section, run_main, start_cluster, start_geomys, wait_until)
import server_counters

SERVERS = ("baseline", "standalone", "writethrough", "buffered", "cluster", "redis", "pysyncobj")
TESTS = ("set", "get", "incr")
CLIENTS = (1, 50)
PIPELINES = (1, 16)
SECTION = "bench"
BACKLOG_ENTRIES = 100000  # the server's default backlog_entries

# The cluster against PySyncObj: SET only, at one more client count, in a section of its own.
COMPARISON_CLIENTS = (1, 8, 50)
COMPARISON_SECTION = "pysyncobj"
PYSYNCOBJ = "pysyncobj==0.3.17"  # pinned, so a re-run measures the same library
PYSYNCOBJ_BATCHING = ("off", "2ms")  # the settings of scripts/pysyncobj_node.py

# Linearizable reads against local ones: GET on one cluster, in a section of its own.
READS_SECTION = "reads"
READ_WHERE = (("leader", "on the leader"), ("follower", "through a follower"))
READ_GOAL = 0.5   # a consistent GET at 50 clients, -P 16, over a local one

# Rows of the tables, in display order: (row key, label). "cluster" gives two rows.
ROWS = (
    ("baseline", "baseline (scripts/baseline_server.py)"),
    ("standalone", "Geomys standalone, persistence none"),
    ("writethrough", "Geomys writethrough"),
    ("buffered", "Geomys buffered"),
    ("leader", "Geomys 3-node cluster, via the leader"),
    ("follower", "Geomys 3-node cluster, SET via a follower"),
    ("redis", "Redis (redis-benchmark)"),
)

REPORT_PATTERNS = {
    "cut_short": re.compile(r"cut short by --max-seconds"),
    "rps": re.compile(r"^\s*([\d.]+) requests per second", re.M),
    "latency": re.compile(r"p50=([\d.]+) p95=[\d.]+ p99=([\d.]+)"),
    "errors": re.compile(r"^\s*errors: (\d+)", re.M),
}


@dataclass(frozen=True, slots=True)
class Target:
    """One row of the tables: where it listens, what it runs, which processes do its work."""

    row: str
    port: int
    tests: tuple[str, ...]
    processes: tuple[Server, ...]
    tool: str = "geomys-benchmark"
    clients: tuple[int, ...] = CLIENTS
    runner: Optional["PySyncObjRuns | ReadIndexRuns"] = None  # runs each cell itself instead of a tool
    options: tuple[str, ...] = ()             # more geomys-benchmark options, e.g. --consistent


@dataclass(frozen=True, slots=True)
class Sample:
    """One run of one test against one target, or (as a Cell) the medians of a cell's runs."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    cut_short: bool
    errors: int
    leader_changed: bool = False  # PySyncObj only: the measured node saw an election during the run


Cell = Sample  # a cell's summary has the same fields as one run


# -- running one test ----------------------------------------------------------------------


def geomys_benchmark_argv(port: int, test: str, clients: int, pipeline: int, requests: int,
                          max_seconds: float, options: Sequence[str] = ()) -> list[str]:
    """The geomys-benchmark command line of one run (its default report, which says when it was cut short)."""
    return command_path("geomys-benchmark") + [
        "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-P", str(pipeline), "-n", str(requests),
        "-t", test, "--max-seconds", str(max_seconds), *options]


def redis_benchmark_argv(port: int, test: str, clients: int, pipeline: int, requests: int) -> list[str]:
    """The redis-benchmark command line of one run."""
    return ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-P", str(pipeline),
            "-n", str(requests), "-t", test, "--csv"]


def parse_geomys_report(text: str) -> tuple[float, float, float, bool, int]:
    """Read rps, p50, p99, cut-short and errors from geomys-benchmark's default report."""
    rps = REPORT_PATTERNS["rps"].search(text)
    latency = REPORT_PATTERNS["latency"].search(text)
    errors = REPORT_PATTERNS["errors"].search(text)
    if not (rps and latency and errors):
        raise BenchError("unexpected geomys-benchmark output:\n" + text)
    return (float(rps.group(1)), float(latency.group(1)), float(latency.group(2)),
            bool(REPORT_PATTERNS["cut_short"].search(text)), int(errors.group(1)))


def parse_redis_csv(text: str) -> tuple[float, float, float, bool, int]:
    """Read rps, p50 and p99 from redis-benchmark --csv (it has no time limit and no error count)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if len(rows) != 1:
        raise BenchError("unexpected redis-benchmark output:\n" + text)
    row = rows[0]
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"]), False, 0


def run_one(target: Target, test: str, clients: int, pipeline: int, requests: int, max_seconds: float) -> Sample:
    """Run one test against one target; the server CPU time is read from /proc around the run."""
    cpu_before = sum(p.cpu_seconds() for p in target.processes)
    if target.runner is not None:
        *figures, leader_changed = target.runner.run(clients, pipeline, requests, max_seconds)
    else:
        figures, leader_changed = run_tool(target, test, clients, pipeline, requests, max_seconds), False
    rps, p50, p99, cut_short, errors = figures
    cpu = sum(p.cpu_seconds() for p in target.processes) - cpu_before
    # A run cut short served fewer than `requests`: rps x elapsed would be exact, rps x max_seconds is close.
    served = min(requests, rps * max_seconds) if cut_short else requests
    return Sample(rps, p50, p99, cpu / max(served, 1) * 1e6, cut_short, errors, leader_changed)


def run_tool(target: Target, test: str, clients: int, pipeline: int, requests: int,
             max_seconds: float) -> tuple[float, float, float, bool, int]:
    """Run geomys-benchmark or redis-benchmark once; return rps, p50, p99, cut-short and errors."""
    if target.tool == "redis-benchmark":
        argv, parse = redis_benchmark_argv(target.port, test, clients, pipeline, requests), parse_redis_csv
    else:
        argv = geomys_benchmark_argv(target.port, test, clients, pipeline, requests, max_seconds, target.options)
        parse = parse_geomys_report
    try:
        # geomys-benchmark bounds itself by --max-seconds; this bound is for a tool that hangs.
        run = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=2 * max_seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError("%s did not finish: %s" % (argv[0], " ".join(argv))) from None
    if run.returncode != 0:
        raise BenchError("%s failed (status %d): %s\n%s" % (argv[0], run.returncode, " ".join(argv), run.stderr))
    return parse(run.stdout)


# -- the servers ------------------------------------------------------------------------------


def start_targets(servers: Servers, workdir: Path, names: Sequence[str], warm_up: bool) -> list[Target]:
    """Start the servers named, wait until each answers, and return the table rows they give.

    With `warm_up`, the cluster's replication backlog is filled first (see fill_backlog).
    """
    targets = []
    if "baseline" in names:
        port = free_port()
        server = servers.add(Server("baseline", [sys.executable, str(REPO / "scripts" / "baseline_server.py"),
                                                 "--port", str(port)], port, workdir)).wait_ready()
        targets.append(Target("baseline", port, TESTS, (server,)))
    if "standalone" in names:
        server = start_geomys(servers, "standalone", workdir)
        targets.append(Target("standalone", server.port, TESTS, (server,)))
    for mode in ("writethrough", "buffered"):
        if mode in names:
            server = start_geomys(servers, mode, workdir, "--persistence", mode,
                                  "--persistence_path", str(workdir / ("%s.aof" % mode)))
            targets.append(Target(mode, server.port, TESTS, (server,)))
    # With PySyncObj in the run, the cluster's SET is measured at its client counts too.
    cluster_clients = COMPARISON_CLIENTS if "pysyncobj" in names else CLIENTS
    if "cluster" in names:
        nodes = tuple(start_cluster(servers, workdir))
        if warm_up:
            fill_backlog(nodes[0].port)
        # The whole cluster's CPU is counted: a write costs work on every node.
        targets.append(Target("leader", nodes[0].port, TESTS, nodes, clients=cluster_clients))
        targets.append(Target("follower", nodes[1].port, ("set",), nodes, clients=cluster_clients))
    if "redis" in names and redis_available():
        port = free_port()
        server = servers.add(Server("redis", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--daemonize", "no"], port, workdir))
        wait_redis(server)
        targets.append(Target("redis", port, TESTS, (server,), tool="redis-benchmark"))
    if "pysyncobj" in names:
        ensure_pysyncobj()
        # No processes of their own to count CPU for: each run starts and stops its cluster.
        targets += [Target(pysyncobj_row(batching, role), 0, ("set",), (), tool="pysyncobj",
                           clients=COMPARISON_CLIENTS, runner=PySyncObjRuns(servers, workdir, batching, role))
                    for batching in PYSYNCOBJ_BATCHING for role in ("leader", "follower")]
    return targets


def start_read_targets(servers: Servers, workdir: Path) -> list[Target]:
    """One 3-node cluster; GET on its leader and on a follower, each local and linearizable."""
    nodes = tuple(start_cluster(servers, workdir))
    targets = []
    for where, port in (("leader", nodes[0].port), ("follower", nodes[1].port)):
        targets.append(Target("%s local" % where, port, ("get",), nodes))
        consistent = Target("%s consistent" % where, port, ("get",), nodes, options=("--consistent",))
        targets.append(replace(consistent, runner=ReadIndexRuns(consistent)))
    return targets


class ReadIndexRuns:
    """A linearizable-GET row: geomys-benchmark, with the measured node's read-index counters around each run.

    What INFO counts per cell tells how well reads share rounds: a read
    barrier covers the reads of one pipeline batch of one connection, and a
    round (on a follower, a ReadIndex request) covers every barrier waiting.
    INFO counts the rounds and the reads they gave an index to.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.counted: dict[tuple[int, int], list[tuple[int, int]]] = {}   # (clients, P) -> [(rounds, reads)]

    def run(self, clients: int, pipeline: int, requests: int,
            max_seconds: float) -> tuple[float, float, float, bool, int, bool]:
        """Run one GET cell; return what run_tool does, and False (no election to flag)."""
        before = info(self.target.port)
        figures = run_tool(self.target, "get", clients, pipeline, requests, max_seconds)
        after = info(self.target.port)
        self.counted.setdefault((clients, pipeline), []).append(
            (after["read_index_rounds"] - before["read_index_rounds"],
             after["read_index_reads"] - before["read_index_reads"]))
        return (*figures, False)

    def per_round(self, clients: int, pipeline: int) -> str:
        """Reads per round in this cell, over all its runs."""
        counts = self.counted.get((clients, pipeline), [])
        rounds, reads = sum(c[0] for c in counts), sum(c[1] for c in counts)
        return "%.1f" % (reads / rounds) if rounds else "–"


def fill_backlog(port: int) -> None:
    """Write BACKLOG_ENTRIES keys through the leader, untimed.

    A leader keeps its last backlog_entries (default 100000) log entries in
    memory, and replication costs more once that backlog is full, which is
    the state of any leader that has run for a while. Filling it first means
    every repetition measures that state, not the first one a fresher one.
    """
    argv = geomys_benchmark_argv(port, "set", 50, 16, BACKLOG_ENTRIES, 300)
    run = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=400)
    if run.returncode != 0:
        raise BenchError("filling the cluster's backlog failed:\n" + run.stderr)


def redis_available() -> bool:
    """Whether both redis-server and redis-benchmark are on PATH."""
    return bool(shutil.which("redis-server") and shutil.which("redis-benchmark"))


def redis_version() -> str:
    """`7.0.15` from `redis-server --version`."""
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=([\d.]+)", out)
    return found.group(1) if found else "?"


def wait_redis(server: Server, timeout: float = 30.0) -> None:
    """Wait until Redis answers a RESP PING (Redis does not speak MessagePack)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise BenchError("redis-server exited:\n" + server.log_tail())
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError("redis-server did not answer PING within %.0f s" % timeout)


def pysyncobj_row(batching: str, role: str) -> str:
    """`pysyncobj-off-leader`: the row of one PySyncObj setting measured through one role."""
    return "pysyncobj-%s-%s" % (batching, role)


def pysyncobj_version() -> Optional[str]:
    """The version of pysyncobj installed beside this interpreter, or None."""
    try:
        return importlib.metadata.version("pysyncobj")
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_pysyncobj() -> None:
    """Install the pinned pysyncobj into this interpreter's environment unless it is there already."""
    if pysyncobj_version() == PYSYNCOBJ.split("==")[1]:
        return
    print("installing %s into %s" % (PYSYNCOBJ, sys.prefix), file=sys.stderr, flush=True)
    try:
        run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", PYSYNCOBJ], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=600)
    except subprocess.TimeoutExpired:
        raise BenchError("pip install %s did not finish in 600 s" % PYSYNCOBJ) from None
    importlib.invalidate_caches()
    if run.returncode != 0 or pysyncobj_version() is None:
        raise BenchError("pip install %s failed:\n%s" % (PYSYNCOBJ, run.stderr))


class PySyncObjRuns:
    """One PySyncObj row: each run on a fresh three-node cluster, in the node that has the row's role.

    A fresh cluster per run, because an idle PySyncObj node keeps ticking
    (three nodes batching every 2 ms use about a fifth of a core doing
    nothing), which would slow every other system measured meanwhile; and
    each run then starts from an empty dict. Starting takes a few seconds,
    untimed.
    """

    def __init__(self, servers: Servers, workdir: Path, batching: str, role: str) -> None:
        self.servers, self.workdir, self.batching, self.role = servers, workdir, batching, role

    def run(self, clients: int, pipeline: int, requests: int,
            max_seconds: float) -> tuple[float, float, float, bool, int, bool]:
        """Run one SET cell; return rps, p50, p99, cut-short and errors, as run_tool does, and leader-changed.

        On a busy machine PySyncObj may hold an election during a run (a
        node's ticking thread did not hear from the leader within
        raftMinTimeout): the run's figures are kept, and the run is flagged.
        """
        nodes, roles = start_pysyncobj(self.servers, self.workdir, self.batching)
        try:
            node = nodes[roles.index(self.role)]
            # The node bounds the cell by max_seconds; this bound is for a node that hangs.
            with Connection(node.port, timeout=2 * max_seconds + 60) as conn:
                reply = conn.call("BENCH", clients=clients, pipeline=pipeline, requests=requests,
                                  max_seconds=max_seconds)
        finally:
            for node in nodes:
                node.stop()
        if reply.get("status") != "OK":
            raise BenchError("%s failed a cell: %s" % (node.name, reply))
        cell = reply["value"]
        leader_changed = cell["role_before"] != self.role or cell["role_after"] != self.role
        if cell["errors"]:
            print("PySyncObj answered errors in a run: %s" % cell["errors_by_reason"], file=sys.stderr, flush=True)
        if leader_changed:
            print("PySyncObj's leader changed during a run: %s was %s at its start and %s at its end"
                  % (node.name, cell["role_before"], cell["role_after"]), file=sys.stderr, flush=True)
        return cell["rps"], cell["p50_ms"], cell["p99_ms"], cell["cut_short"], cell["errors"], leader_changed


def start_pysyncobj(servers: Servers, workdir: Path, batching: str,
                    timeout: float = 60.0) -> tuple[list[Server], list[str]]:
    """Start three scripts/pysyncobj_node.py on free ports; once they agree on a leader, return them and their roles.

    Of two nodes, the one with the greater address (compared as text) opens
    the connection, and after a failed attempt waits connectionRetryTime (5 s)
    to try again; so the nodes start in order of their addresses, each once
    the one before it answers (its Raft port is bound by then).
    """
    addresses = sorted("127.0.0.1:%d" % free_port() for _ in range(3))
    nodes = []
    for i, address in enumerate(addresses):
        control = free_port()
        argv = [sys.executable, str(REPO / "scripts" / "pysyncobj_node.py"), "--port", address.rsplit(":", 1)[1],
                "--partners", ",".join(a for a in addresses if a != address), "--control-port", str(control),
                "--batching", batching]
        nodes.append(servers.add(Server("pysyncobj-%s-%d" % (batching, i + 1), argv, control, workdir)))
        nodes[-1].wait_ready(timeout)

    def roles_once_agreed() -> Optional[list[str]]:
        infos = [info(node.port, timeout=10.0) for node in nodes]
        leaders = {i["leader"] for i in infos}
        agreed = (len(leaders) == 1 and None not in leaders
                  and all(i["connected"] == 2 for i in infos if i["role"] == "leader"))
        return [i["role"] for i in infos] if agreed else None
    roles = wait_until(roles_once_agreed, timeout, "the PySyncObj nodes (batching %s) to agree on a leader" % batching)
    return nodes, roles


# -- the matrix ------------------------------------------------------------------------------


def run_matrix(targets: Sequence[Target], tests: Sequence[str], repeat: int, requests: dict[int, int],
               max_seconds: float) -> dict[tuple, list[Sample]]:
    """Run every cell `repeat` times, the targets in a rotating order; return samples per cell.

    A cell is (row, test, clients, pipeline).
    """
    samples: dict[tuple, list[Sample]] = {}
    total = repeat * sum(1 for _ in cells(targets, tests))
    done = 0
    started = time.monotonic()
    for rep in range(repeat):
        order = list(targets[rep % len(targets):]) + list(targets[:rep % len(targets)])
        for target, test, clients, pipeline in cells(order, tests):
            sample = run_one(target, test, clients, pipeline, requests[pipeline], max_seconds)
            samples.setdefault((target.row, test, clients, pipeline), []).append(sample)
            done += 1
            print("[%3d/%d %5.0fs] rep %d  %-22s %-4s c=%-2d P=%-2d %10.0f req/s%s"
                  % (done, total, time.monotonic() - started, rep + 1, target.row, test, clients,
                     pipeline, sample.rps, "  (cut short)" if sample.cut_short else ""),
                  file=sys.stderr, flush=True)
    return samples


def cells(targets: Sequence[Target], tests: Sequence[str]):
    """Every (target, test, clients, pipeline) the matrix runs once per repetition, in `targets` order."""
    for clients in sorted({c for target in targets for c in target.clients}):
        for pipeline in PIPELINES:
            for test in tests:
                for target in targets:
                    if test in target.tests and clients in target.clients:
                        yield target, test, clients, pipeline


def summarize(samples: dict[tuple, list[Sample]]) -> dict[tuple, Cell]:
    """The median of each figure of each cell (any run cut short, with errors or an election marks the cell)."""
    return {key: Cell(rps=median([s.rps for s in runs]), p50_ms=median([s.p50_ms for s in runs]),
                      p99_ms=median([s.p99_ms for s in runs]), cpu_us=median([s.cpu_us for s in runs]),
                      cut_short=any(s.cut_short for s in runs), errors=sum(s.errors for s in runs),
                      leader_changed=any(s.leader_changed for s in runs))
            for key, runs in samples.items()}


# -- the report ------------------------------------------------------------------------------


def ratio(results: dict[tuple, Cell], row: str, base_row: str, test: str, clients: int,
          pipeline: int) -> Optional[float]:
    """rps of `row` over rps of `base_row` in the same cell, or None if either was not measured."""
    cell, base = results.get((row, test, clients, pipeline)), results.get((base_row, test, clients, pipeline))
    if cell is None or base is None or not base.rps:
        return None
    return cell.rps / base.rps


# What the marks of `mark` mean, as footnotes under a table.
MARKS = ("`*` at least one run stopped at --max-seconds before -n requests: the rate is over the requests "
         "completed.", "`!` some replies were errors.")


def mark(cell: Cell) -> str:
    """The footnote marks of a cell."""
    return ("*" if cell.cut_short else "") + ("!" if cell.errors else "") + ("†" if cell.leader_changed else "")


def rps_text(results: dict[tuple, Cell], row: str, test: str, clients: int, pipeline: int) -> str:
    """`21,384 (0.87)`: median requests per second and its ratio to the baseline's."""
    cell = results.get((row, test, clients, pipeline))
    if cell is None:
        return "–"
    text = "{:,.0f}{}".format(cell.rps, mark(cell))
    factor = ratio(results, row, "baseline", test, clients, pipeline)
    if factor is not None and row not in ("baseline", "redis"):
        text += " (%s)" % ratio_text(factor)
    return text


def ratio_text(value: float) -> str:
    """Two decimals, three below 0.1 (so a tiny ratio does not read 0.00)."""
    return ("%.2f" if value >= 0.1 else "%.3f") % value


def config_table(results: dict[tuple, Cell], rows: Sequence[tuple[str, str]], tests: Sequence[str],
                 clients: int, pipeline: int, requests: int) -> str:
    """The table of one (clients, pipeline) configuration."""
    lines = ["#### %d client%s, pipeline %d (-n %d)" % (clients, "" if clients == 1 else "s", pipeline, requests),
             "",
             "| server | %s | SET p50 / p99 ms | server CPU µs/request (%s) |"
             % (" | ".join("%s req/s (× baseline)" % t.upper() for t in tests),
                " / ".join(t.upper() for t in tests)),
             "|---|%s---:|---:|" % ("---:|" * len(tests))]
    for row, label in rows:
        if not any((row, t, clients, pipeline) in results for t in tests):
            continue
        set_cell = results.get((row, "set", clients, pipeline))
        latency = "%.2f / %.2f" % (set_cell.p50_ms, set_cell.p99_ms) if set_cell else "–"
        cpu = " / ".join("%.0f" % results[(row, t, clients, pipeline)].cpu_us
                         if (row, t, clients, pipeline) in results else "–" for t in tests)
        lines.append("| %s | %s | %s | %s |" % (label, " | ".join(rps_text(results, row, t, clients, pipeline)
                                                                   for t in tests), latency, cpu))
    return "\n".join(lines)


GOALS = (
    # (what, row, base row, test, clients, pipeline, goal)
    ("standalone SET vs baseline, 50 clients, -P 1", "standalone", "baseline", "set", 50, 1, 0.90),
    ("standalone SET vs baseline, 50 clients, -P 16", "standalone", "baseline", "set", 50, 16, 0.90),
    ("standalone GET vs baseline, 50 clients, -P 1", "standalone", "baseline", "get", 50, 1, 0.90),
    ("standalone GET vs baseline, 50 clients, -P 16", "standalone", "baseline", "get", 50, 16, 0.90),
    ("writethrough SET vs persistence none, 50 clients, -P 1", "writethrough", "standalone", "set", 50, 1, 0.50),
    ("writethrough SET vs persistence none, 50 clients, -P 16", "writethrough", "standalone", "set", 50, 16, 0.50),
    ("3-node cluster SET (leader) vs standalone, 50 clients, -P 1", "leader", "standalone", "set", 50, 1, 0.50),
    ("3-node cluster SET (leader) vs standalone, 50 clients, -P 16", "leader", "standalone", "set", 50, 16, 0.50),
)


def goals_table(results: dict[tuple, Cell]) -> str:
    """The ratios the project tracks, each against its goal."""
    lines = ["| ratio (median req/s over median req/s, same run) | measured | goal | met |", "|---|---:|---:|---|"]
    for what, row, base_row, test, clients, pipeline, goal in GOALS:
        value = ratio(results, row, base_row, test, clients, pipeline)
        if value is None:
            lines.append("| %s | not measured | ≥ %.2f | – |" % (what, goal))
        else:
            lines.append("| %s | %s | ≥ %.2f | %s |"
                         % (what, ratio_text(value), goal, "yes" if value >= goal else "**no**"))
    return "\n".join(lines)


def latency_table(results: dict[tuple, Cell]) -> str:
    """SET latency on the cluster's leader and through a follower."""
    lines = ["| SET latency, ms (median of runs) | p50 | p99 |", "|---|---:|---:|"]
    for clients in CLIENTS:
        for pipeline in PIPELINES:
            for row, where in (("leader", "on the leader"), ("follower", "through a follower")):
                cell = results.get((row, "set", clients, pipeline))
                if cell is not None:
                    lines.append("| %s, %d client%s, -P %d%s | %.2f | %.2f |"
                                 % (where, clients, "" if clients == 1 else "s", pipeline,
                                    " " + mark(cell) if mark(cell) else "", cell.p50_ms, cell.p99_ms))
    return "\n".join(lines) if len(lines) > 2 else "(the cluster was not measured)"


def render(results: dict[tuple, Cell], names: Sequence[str], tests: Sequence[str], repeat: int,
           requests: dict[int, int], max_seconds: float, warmed_up: bool, argv: Sequence[str],
           seconds: float) -> str:
    """The generated markdown: how it was run, one table per configuration, the goals, the latencies."""
    redis_label = ("Redis %s (redis-benchmark)" % redis_version()) if "redis" in names and redis_available() else ""
    rows = [(row, redis_label if row == "redis" else label) for row, label in ROWS]
    parts = [
        generated_line(argv, seconds),
        "",
        method_line(repeat, requests, max_seconds) +
        " geomys-benchmark ran with its default `--procs` (one client process per core, at most one per "
        "connection). In brackets: the ratio to the baseline's median in the same cell. %s"
        "Server CPU is user + system time of the server process (the sum of all three nodes for the "
        "cluster rows) over the requests of the run, from /proc/PID/stat (10 ms ticks)."
        % (warm_up_note() if warmed_up else ""),
        "",
    ]
    for clients in CLIENTS:
        for pipeline in PIPELINES:
            if any(key[2:] == (clients, pipeline) for key in results):
                parts += [config_table(results, rows, tests, clients, pipeline, requests[pipeline]), ""]
    notes = list(MARKS)
    if "redis" in names:
        if redis_available():
            notes.append("Redis is measured with its own tool (redis-benchmark, a C client, single-threaded) "
                         "and its own protocol (RESP), no persistence; its SET overwrites one key and its "
                         "INCR updates one counter, where Geomys's SET writes a fresh key every time. It is "
                         "a reference point, not a like-for-like comparison.")
        else:
            notes.append("Redis rows skipped: redis-server or redis-benchmark is not on PATH.")
    parts += ["\n".join("- " + note for note in notes), "",
              "#### Goals", "", goals_table(results), "",
              "#### SET latency in the cluster", "", latency_table(results)]
    return "\n".join(parts)


def generated_line(argv: Sequence[str], seconds: float) -> str:
    """The first line of a generated section: the command, the date, the machine, the time taken."""
    return ("Generated by `%s` on %s (%s); took %.0f s."
            % (" ".join(["python scripts/bench.py", *argv]), time.strftime("%Y-%m-%d"), machine_summary(), seconds))


def method_line(repeat: int, requests: dict[int, int], max_seconds: float) -> str:
    """How often each cell ran, in what order, with which -n and time bound."""
    return ("Each figure is the median of %d run%s; in every repetition the servers took turns in a rotating "
            "order. -n %d at pipeline 1, -n %d at pipeline 16; each run stopped after %g s at most."
            % (repeat, "" if repeat == 1 else "s", requests[1], requests[16], max_seconds))


def warm_up_note() -> str:
    """What fill_backlog did before the first run."""
    return ("Before the first run the cluster took %d untimed SETs, so its replication backlog was full "
            "throughout, as on a leader that has run for a while. " % BACKLOG_ENTRIES)


def comparison_rows(results: dict[tuple, Cell]) -> list[tuple]:
    """Per SET cell of the comparison: (role, clients, pipeline, Geomys, PySyncObj per setting, ratio).

    The ratio is Geomys's rate over the faster PySyncObj setting's in the
    same cell (None when either side is missing), so "ahead" means ahead of both.
    """
    rows = []
    for role in ("leader", "follower"):
        for clients in COMPARISON_CLIENTS:
            for pipeline in PIPELINES:
                geomys = results.get((role, "set", clients, pipeline))
                peers = tuple(results.get((pysyncobj_row(b, role), "set", clients, pipeline))
                              for b in PYSYNCOBJ_BATCHING)
                measured = [peer.rps for peer in peers if peer is not None]
                value = geomys.rps / max(measured) if geomys is not None and measured and max(measured) else None
                rows.append((role, clients, pipeline, geomys, peers, value))
    return rows


def comparison_table(results: dict[tuple, Cell]) -> str:
    """SET through the leader and through a follower: Geomys and PySyncObj side by side, req/s and p50."""
    def figures(cell: Optional[Cell]) -> str:
        return "– | –" if cell is None else "{:,.0f}{} | {:.2f}".format(cell.rps, mark(cell), cell.p50_ms)

    lines = ["| SET | Geomys req/s | p50 ms | %s | Geomys ÷ faster PySyncObj | Geomys ahead |"
             % " | ".join("PySyncObj, batching %s req/s | p50 ms" % b.replace("ms", " ms")
                          for b in PYSYNCOBJ_BATCHING),
             "|---|---:|---:|%s---:|---|" % ("---:|---:|" * len(PYSYNCOBJ_BATCHING))]
    for role, clients, pipeline, geomys, peers, value in comparison_rows(results):
        if geomys is None and all(peer is None for peer in peers):
            continue
        verdict = "–" if value is None else "yes" if value > 1 else "**no**"
        lines.append("| via the %s, %d client%s, -P %d | %s | %s | %s | %s |"
                     % (role, clients, "" if clients == 1 else "s", pipeline, figures(geomys),
                        " | ".join(figures(peer) for peer in peers),
                        "–" if value is None else ratio_text(value), verdict))
    return "\n".join(lines)


def render_comparison(results: dict[tuple, Cell], repeat: int, requests: dict[int, int], max_seconds: float,
                      warmed_up: bool, argv: Sequence[str], seconds: float) -> str:
    """The generated markdown of the cluster against PySyncObj."""
    return "\n".join([
        generated_line(argv, seconds) + " pysyncobj %s." % (pysyncobj_version() or "?"),
        "",
        "SET of a fresh key per request, 3-byte values, -n split evenly over the clients. "
        + method_line(repeat, requests, max_seconds) +
        " Geomys: its 3-node cluster driven by geomys-benchmark over TCP. %sPySyncObj: three "
        "scripts/pysyncobj_node.py processes, an in-memory ReplDict, the client threads inside the measured "
        "node's process, a fresh cluster for every run (started untimed)." % (warm_up_note() if warmed_up else ""),
        "",
        comparison_table(results),
        "",
        "\n".join("- " + note for note in MARKS + (
            "`†` PySyncObj held an election during at least one run (the measured node did not know the same "
            "leader at the run's start and end); the figures of that run are kept.",)),
    ])


def render_reads(results: dict[tuple, Cell], targets: Sequence[Target], repeat: int, requests: dict[int, int],
                 max_seconds: float, argv: Sequence[str], seconds: float) -> str:
    """The generated markdown of local against linearizable GET on the cluster."""
    runners = {t.row: t.runner for t in targets if t.runner is not None}
    lines = ["| GET, 3-node cluster | local req/s | consistent req/s | consistent / local | p50 ms, local / "
             "consistent | cluster CPU µs/request, local / consistent | reads per round |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    goals = ["| ratio (median req/s over median req/s, same run) | measured | goal | met |", "|---|---:|---:|---|"]
    for where, label in READ_WHERE:
        for clients in CLIENTS:
            for pipeline in PIPELINES:
                local = results.get(("%s local" % where, "get", clients, pipeline))
                consistent = results.get(("%s consistent" % where, "get", clients, pipeline))
                if local is None or consistent is None:
                    continue
                value = consistent.rps / local.rps if local.rps else 0.0
                lines.append("| %s, %d client%s, -P %d | %s | %s | %s | %.2f / %.2f | %.0f / %.0f | %s |" % (
                    label, clients, "" if clients == 1 else "s", pipeline, "{:,.0f}{}".format(local.rps, mark(local)),
                    "{:,.0f}{}".format(consistent.rps, mark(consistent)), ratio_text(value), local.p50_ms,
                    consistent.p50_ms, local.cpu_us, consistent.cpu_us,
                    runners["%s consistent" % where].per_round(clients, pipeline)))
                if clients == 50 and pipeline == 16:
                    goals.append("| consistent GET %s vs local, 50 clients, -P 16 | %s | ≥ %.2f | %s |"
                                 % (label, ratio_text(value), READ_GOAL, "yes" if value >= READ_GOAL else "**no**"))
    return "\n".join([
        generated_line(argv, seconds),
        "",
        "GET of keys written before the clock starts (geomys-benchmark -t get), on one 3-node cluster: local "
        "reads, and linearizable ones (--consistent: each read waits for a read index the leader confirmed "
        "with a majority, docs/cluster.md). " + method_line(repeat, requests, max_seconds) +
        " Cluster CPU is user + system time of the three nodes over the requests of the run. Reads per round "
        "is what the measured node's INFO counted over the cell's runs (`read_index_reads` over "
        "`read_index_rounds`; on a follower a round is one ReadIndex request to the leader); the reads of "
        "one pipeline batch of one connection share one wait.",
        "",
        "\n".join(lines),
        "",
        "\n".join("- " + note for note in MARKS),
        "",
        "\n".join(goals),
    ])


# -- server CPU per request (--cpu) -----------------------------------------------------------

CPU_SECTION = "bench_cpu"
CPU_PINNED_SECTION = "bench_cpu_pinned"  # --cpu --pin writes here, so both runs can stand in the doc
CPU_SERVERS = ("baseline", "standalone", "writethrough")
CPU_TESTS = ("set", "get")
CPU_CLIENTS = (8, 50)
CPU_REQUESTS = 40000   # -n at pipeline 1; pipeline 16 runs CPU_P16_FACTOR times as many
CPU_P16_FACTOR = 10
CPU_GOAL = 1.25        # Geomys's CPU per request over the baseline's, at most
RPS_GOAL = 0.90        # Geomys's req/s over the baseline's, at least
WRITETHROUGH_GOAL = 0.50  # writethrough SET req/s over persistence none, at least


@dataclass(frozen=True, slots=True)
class CpuSample:
    """One run of one cell on one server (or, summarized, the medians of a cell's runs): per request."""

    rps: float
    user_us: float
    system_us: float
    counts: dict  # perf or /proc counts divided by the requests, by name
    cut_short: bool
    errors: int

    @property
    def cpu_us(self) -> float:
        return self.user_us + self.system_us


def run_cpu_one(target: Target, test: str, clients: int, pipeline: int, requests: int, max_seconds: float,
                perf: Optional[str], events: Sequence[str], pin: Optional[tuple[set, set]] = None) -> CpuSample:
    """One geomys-benchmark run with fixed -n, the server's CPU and counts taken around it.

    `pin`: (the server's CPUs, the load's CPUs), to run each on its own.
    """
    argv = geomys_benchmark_argv(target.port, test, clients, pipeline, requests, max_seconds)
    server = target.processes[0]
    if pin:
        server_counters.pin_process(server.pid, pin[0])
        argv = server_counters.on_cpus(argv, pin[1])
    try:
        run, usage = server_counters.run_measured(argv, server.pid, perf, events, timeout=2 * max_seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError("geomys-benchmark did not finish: %s" % " ".join(argv)) from None
    if run.returncode != 0:
        raise BenchError("geomys-benchmark failed (status %d): %s\n%s" % (run.returncode, " ".join(argv), run.stderr))
    rps, _, _, cut_short, errors = parse_geomys_report(run.stdout)
    served = min(requests, rps * max_seconds) if cut_short else requests
    per = 1e6 / max(served, 1)
    return CpuSample(rps, usage.user_s * per, usage.system_s * per,
                     {name: count / max(served, 1) for name, count in usage.counts.items()}, cut_short, errors)


def run_cpu_matrix(targets: Sequence[Target], tests: Sequence[str], clients: Sequence[int], repeat: int,
                   requests: dict[int, int], max_seconds: float, perf: Optional[str],
                   events: Sequence[str], pin: Optional[tuple[set, set]] = None) -> dict[tuple, list[CpuSample]]:
    """Every (row, test, clients, pipeline) `repeat` times; in each cell the servers take turns, in an order
    that rotates from one repetition to the next."""
    keys = [(test, c, p) for test in tests for c in clients for p in PIPELINES]
    total = repeat * sum(1 for t in targets for key in keys if key[0] in t.tests)
    samples: dict[tuple, list[CpuSample]] = {}
    done, started = 0, time.monotonic()
    for rep in range(repeat):
        order = list(targets[rep % len(targets):]) + list(targets[:rep % len(targets)])
        for test, c, p in keys:
            for target in order:
                if test not in target.tests:
                    continue
                sample = run_cpu_one(target, test, c, p, requests[p], max_seconds, perf, events, pin)
                samples.setdefault((target.row, test, c, p), []).append(sample)
                done += 1
                print("[%3d/%d %5.0fs] rep %d  %-12s %-4s c=%-2d P=%-2d %9.0f req/s %6.1f µs CPU/request"
                      % (done, total, time.monotonic() - started, rep + 1, target.row, test, c, p, sample.rps,
                         sample.cpu_us), file=sys.stderr, flush=True)
    return samples


def summarize_cpu(samples: dict[tuple, list[CpuSample]]) -> dict[tuple, CpuSample]:
    """The median of every figure of each cell."""
    result = {}
    for key, runs in samples.items():
        names = dict.fromkeys(name for run in runs for name in run.counts)
        result[key] = CpuSample(median([r.rps for r in runs]), median([r.user_us for r in runs]),
                                median([r.system_us for r in runs]),
                                {n: median([r.counts.get(n, 0.0) for r in runs]) for n in names},
                                any(r.cut_short for r in runs), sum(r.errors for r in runs))
    return result


CPU_ROWS = (("baseline", "baseline"), ("standalone", "Geomys"), ("writethrough", "Geomys writethrough"))
# Runs the geomys package of the checkout named first on the command line (--source).
FROM_SOURCE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from geomys.app import main; main()"


def start_sources(servers: Servers, workdir: Path, sources: Sequence[Path],
                  names: Sequence[str]) -> tuple[list[Target], list[tuple[str, str]]]:
    """Geomys from other checkouts (--source): a standalone row each, and a writethrough row if measured."""
    targets, rows = [], []
    for source in sources:
        command = [sys.executable, "-c", FROM_SOURCE, str(source.resolve())]
        for mode in ("standalone", "writethrough"):
            if mode not in names:
                continue
            row = "%s@%s" % (mode, source.name)
            options = () if mode == "standalone" else (
                "--persistence", mode, "--persistence_path", str(workdir / ("%s.aof" % row)))
            port = free_port(span=1000)
            server = servers.add(Server(row, geomys_argv(port, *options, command=command), port,
                                        workdir)).wait_ready()
            targets.append(Target(row, port, ("set",) if mode == "writethrough" else TESTS, (server,)))
            rows.append((row, "%s at %s" % ("Geomys" if mode == "standalone" else "Geomys writethrough",
                                            source.name)))
    return targets, rows


def cpu_table(results: dict[tuple, CpuSample], test: str, rows: Sequence[tuple[str, str]] = CPU_ROWS) -> str:
    """One test's cells: per server, req/s, CPU per request split, and the counts per request."""
    names = list(dict.fromkeys(n for key, cell in results.items() if key[1] == test for n in cell.counts))
    lines = ["| %s | server | req/s | CPU µs/request: user + system = total | CPU × baseline | %s |"
             % (test.upper(), " | ".join("%s /req" % n for n in names)),
             "|---|---|---:|---:|---:|%s" % ("---:|" * len(names))]
    for c in sorted({key[2] for key in results}):
        for p in PIPELINES:
            base = results.get(("baseline", test, c, p))
            for row, label in rows:
                cell = results.get((row, test, c, p))
                if cell is None:
                    continue
                factor = "%.2f" % (cell.cpu_us / base.cpu_us) if base and base.cpu_us and row != "baseline" else "–"
                flags = ("*" if cell.cut_short else "") + ("!" if cell.errors else "")
                lines.append("| %d clients, -P %d | %s | %s%s | %.1f + %.1f = **%.1f** | %s | %s |" % (
                    c, p, label, "{:,.0f}".format(cell.rps), flags, cell.user_us, cell.system_us, cell.cpu_us,
                    factor, " | ".join("%.2f" % cell.counts.get(n, 0.0) for n in names)))
    return "\n".join(lines)


def paired_ratios(samples: dict[tuple, list[CpuSample]], row: str, key: tuple) -> list[float]:
    """The row's CPU per request over the baseline's, one ratio per repetition of the cell.

    The runs of one repetition of a cell ran within seconds of each other, so whatever
    else the shared machine was doing weighs on both: a ratio of the pair
    moves less than either figure does.
    """
    return [mine.cpu_us / base.cpu_us for mine, base in zip(samples.get((row,) + key, []),
                                                             samples.get(("baseline",) + key, []))
            if base.cpu_us]


def cpu_goals_table(results: dict[tuple, CpuSample], samples: dict[tuple, list[CpuSample]]) -> str:
    """Geomys against the baseline per cell (CPU and req/s), and writethrough against persistence none.

    The CPU verdict is on the median of the repetitions' paired ratios, shown with their range.
    """
    lines = ["| cell | CPU/request × baseline, median of the repetitions (lowest–highest) (goal ≤ %.2f) | "
             "req/s × baseline (goal ≥ %.2f) | writethrough req/s × none (goal ≥ %.2f) |"
             % (CPU_GOAL, RPS_GOAL, WRITETHROUGH_GOAL),
             "|---|---:|---:|---:|"]

    def verdict(value: Optional[float], goal: float, at_most: bool = False) -> str:
        if value is None:
            return "–"
        met = value <= goal if at_most else value >= goal
        return "%.2f %s" % (value, "yes" if met else "**no**")

    for key in sorted({k[1:] for k in results}, key=lambda k: (CPU_TESTS.index(k[0]), k[1], k[2])):
        base, geomys, wt = (results.get((row,) + key) for row in ("baseline", "standalone", "writethrough"))
        ratios = paired_ratios(samples, "standalone", key)
        cpu = verdict(median(ratios), CPU_GOAL, at_most=True) if ratios else "–"
        if len(ratios) > 1:
            cpu += " (%.2f–%.2f)" % (min(ratios), max(ratios))
        rps = geomys.rps / base.rps if geomys and base and base.rps else None
        wt_ratio = wt.rps / geomys.rps if wt and geomys and geomys.rps else None
        lines.append("| %s, %d clients, -P %d | %s | %s | %s |" % (
            key[0].upper(), key[1], key[2], cpu, verdict(rps, RPS_GOAL), verdict(wt_ratio, WRITETHROUGH_GOAL)))
    return "\n".join(lines)


def render_cpu(samples: dict[tuple, list[CpuSample]], tests: Sequence[str], repeat: int, requests: dict[int, int],
               max_seconds: float, perf: Optional[str], events: Sequence[str], why_not: str,
               argv: Sequence[str], seconds: float, rows: Sequence[tuple[str, str]] = CPU_ROWS,
               pin: Optional[tuple[set, set]] = None) -> str:
    """The generated markdown of the CPU mode; `why_not` says why perf was not used, if it was not."""
    results = summarize_cpu(samples)
    if not why_not:
        counted = ("Counts per request from `%s stat` attached to the server for the whole run (%s)."
                   % (Path(perf).name, ", ".join(events)))
    else:
        counted = ("perf was not used (%s), so the only counts are context switches, sampled from "
                   "/proc/PID/task/*/status every %g s: threads that ended between two samples are missed, "
                   "so they are lower bounds." % (why_not, server_counters.SAMPLE_INTERVAL))
    parts = [
        generated_line(argv, seconds), "",
        "Each figure is the median of %d run%s; in each cell the servers took turns, in an order that rotated "
        "from one repetition to the next. -n %d at pipeline 1, -n %d at pipeline 16 (each run stopped after "
        "%g s at most). Server CPU per request: user and system time of the server process from "
        "/proc/PID/stat (10 ms ticks) over the run, divided by its requests. %s Writethrough runs SET only.%s"
        % (repeat, "" if repeat == 1 else "s", requests[1], requests[16], max_seconds, counted,
           " Pinned (--pin): every server thread on CPU %s, geomys-benchmark on CPU %s."
           % (",".join(map(str, sorted(pin[0]))), ",".join(map(str, sorted(pin[1])))) if pin else ""), "",
    ]
    for test in tests:
        parts += [cpu_table(results, test, rows), ""]
    parts += ["\n".join("- " + note for note in MARKS), "",
              "#### Goals of server CPU per request%s" % (", pinned" if pin else ""), "",
              "The CPU ratio here pairs the runs of each repetition: Geomys's CPU per request over the "
              "baseline's in the same repetition of the cell, the two run within seconds of each other. The median of "
              "those ratios decides; the CPU tables above divide the medians instead.", "",
              cpu_goals_table(results, samples)]
    return "\n".join(parts)


def run_cpu_mode(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """--cpu: Geomys and the baseline side by side, CPU and counts per request, into their own section."""
    names = args.servers or CPU_SERVERS
    tests = args.tests or CPU_TESTS
    clients = tuple(int(c) for c in args.clients) if args.clients else CPU_CLIENTS
    repeat = args.repeat or (1 if args.quick else 3)
    base_n = args.requests or (2000 if args.quick else CPU_REQUESTS)
    requests = {1: base_n, 16: CPU_P16_FACTOR * base_n}
    perf = None if args.no_perf else server_counters.find_perf()
    events = server_counters.usable_events(perf) if perf else ()
    why_not = ("--no-perf" if args.no_perf else "perf is not installed" if not perf
               else "this kernel lets perf count none of its events" if not events else "")
    pin = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise BenchError("--pin needs at least two CPUs, this process may use %d" % len(cpus))
        pin = ({cpus[-1]}, set(cpus[:-1]))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geomys-bench-") as tmp, Servers() as servers:
        targets = [replace(t, tests=("set",) if t.row == "writethrough" else t.tests)
                   for t in start_targets(servers, Path(tmp), names, warm_up=False)]
        more, source_rows = start_sources(servers, Path(tmp), args.source, names)
        samples = run_cpu_matrix(targets + more, tests, clients, repeat, requests, args.max_seconds, perf, events,
                                 pin)
    rows = [CPU_ROWS[0], CPU_ROWS[1], *[r for r in source_rows if r[0].startswith("standalone@")],
            CPU_ROWS[2], *[r for r in source_rows if r[0].startswith("writethrough@")]]
    text = render_cpu(samples, tests, repeat, requests, args.max_seconds, perf, events, why_not,
                      argv, time.monotonic() - started, rows, pin)
    publish(text, args.output, CPU_PINNED_SECTION if pin else CPU_SECTION)
    return 0


# -- the command line ------------------------------------------------------------------------


def parse_list(allowed: Sequence[str]):
    """An argparse type: a comma list of names from `allowed`."""
    def convert(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError("choose from %s" % ",".join(allowed))
        return names
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The command line of bench.py."""
    parser = argparse.ArgumentParser(
        description="Run Geomys's reference benchmark matrix and write its tables into docs/performance.md.")
    add = parser.add_argument
    add("--quick", action="store_true",
        help="small -n (2000 / 10000) and one repetition: checks that everything runs, measures little")
    add("--repeat", type=positive_int, default=None, metavar="N", help="runs of every cell (default 3, --quick 1)")
    add("--requests", type=positive_int, default=None, metavar="N",
        help="-n of the pipeline-1 runs (default 20000, --cpu 40000, --quick 2000); pipeline-16 runs use "
             "5 x N (--cpu: 10 x N)")
    add("--max-seconds", type=float, default=20.0, metavar="S",
        help="bound of each run, passed to geomys-benchmark (default %(default)s)")
    add("--servers", type=parse_list(SERVERS), default=None, metavar="LIST",
        help="comma list from %s (default all; redis only if installed; pysyncobj is pip installed "
             "into this interpreter's environment if missing)" % ",".join(SERVERS))
    add("--tests", type=parse_list(TESTS), default=None, metavar="LIST",
        help="comma list from %s (default all)" % ",".join(TESTS))
    add("--clients", type=parse_list([str(c) for c in COMPARISON_CLIENTS]), default=None, metavar="LIST",
        help="comma list of client counts to run, from %s (default all: %s for most servers, also %s for "
             "the cluster against PySyncObj)" % (",".join(map(str, COMPARISON_CLIENTS)),
                                                 ",".join(map(str, CLIENTS)),
                                                 ",".join(map(str, sorted(set(COMPARISON_CLIENTS) - set(CLIENTS))))))
    add("--reads", action="store_true",
        help="only GET on a 3-node cluster, local against linearizable (--consistent), on the leader and "
             "through a follower, written into its own section")
    add("--pysyncobj", action="store_true",
        help="only the 3-node cluster against PySyncObj (SET at %s clients), written into its own section"
             % "/".join(map(str, COMPARISON_CLIENTS)))
    add("--cpu", action="store_true",
        help="server CPU per request (user and system), with perf stat counts when perf works: Geomys, "
             "writethrough (SET) and the baseline, SET and GET at %s clients, written into its own section"
             % "/".join(map(str, CPU_CLIENTS)))
    add("--source", type=Path, action="append", default=[], metavar="DIR",
        help="with --cpu: also measure the geomys package of the checkout DIR (say, a git worktree of an older "
             "commit), in rows of its own; may be given more than once")
    add("--pin", action="store_true",
        help="with --cpu: bind each server to the last CPU and geomys-benchmark to the others, so server "
             "threads never hand the GIL across cores and the load never shares the server's core")
    add("--no-perf", action="store_true",
        help="with --cpu: do not use perf even if it works (context switches are then sampled from /proc)")
    add_output_option(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the matrix, print the tables and write them into --output."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.pysyncobj or args.reads) and (args.servers or args.tests):
        parser.error("--pysyncobj and --reads choose their servers and tests themselves")
    if args.pysyncobj and args.reads:
        parser.error("--pysyncobj and --reads are separate runs")
    if args.cpu:
        if args.pysyncobj or args.reads or set(args.servers or ()) - set(CPU_SERVERS) \
                or set(args.tests or ()) - set(CPU_TESTS):
            parser.error("--cpu measures only %s, tests %s" % (",".join(CPU_SERVERS), ",".join(CPU_TESTS)))
        return run_cpu_mode(args, argv)
    names = ("cluster", "pysyncobj") if args.pysyncobj else args.servers or SERVERS
    tests = ("set",) if args.pysyncobj else args.tests or TESTS
    repeat = args.repeat or (1 if args.quick else 3)
    base_n = args.requests or (2000 if args.quick else 20000)
    requests = {1: base_n, 16: 5 * base_n}
    warmed_up = "cluster" in names and not args.quick
    started = time.monotonic()
    if args.reads:
        return run_reads(args, argv, repeat, requests, started)
    with tempfile.TemporaryDirectory(prefix="geomys-bench-") as tmp, Servers() as servers:
        targets = start_targets(servers, Path(tmp), names, warm_up=warmed_up)
        if args.clients:
            targets = [replace(t, clients=tuple(c for c in t.clients if str(c) in args.clients)) for t in targets]
        samples = run_matrix(targets, tests, repeat, requests, args.max_seconds)
    results, seconds = summarize(samples), time.monotonic() - started
    sections = []
    if not args.pysyncobj:
        sections.append((SECTION, render(results, names, tests, repeat, requests, args.max_seconds, warmed_up,
                                          argv, seconds)))
    if "pysyncobj" in names and "set" in tests:
        sections.append((COMPARISON_SECTION, render_comparison(results, repeat, requests, args.max_seconds,
                                                               warmed_up, argv, seconds)))
    for name, text in sections:
        print(text + "\n")
        replace_section(args.output, name, text)
    print("written into %s" % args.output, file=sys.stderr)
    return 0


def run_reads(args: argparse.Namespace, argv: Sequence[str], repeat: int, requests: dict[int, int],
              started: float) -> int:
    """--reads: local against linearizable GET on one cluster, into its own section."""
    with tempfile.TemporaryDirectory(prefix="geomys-bench-") as tmp, Servers() as servers:
        targets = start_read_targets(servers, Path(tmp))
        if args.clients:
            targets = [replace(t, clients=tuple(c for c in t.clients if str(c) in args.clients)) for t in targets]
        samples = run_matrix(targets, ("get",), repeat, requests, args.max_seconds)
    text = render_reads(summarize(samples), targets, repeat, requests, args.max_seconds, argv,
                        time.monotonic() - started)
    publish(text, args.output, READS_SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench.py", main))

#!/usr/bin/env python3
"""What TLS costs Geomys, written into the TLS section of docs/performance.md.

In one run, on free 127.0.0.1 ports and with throwaway certificates
(scripts/make_certs.py):

- client path: one standalone server with both a plaintext port and a
  tls_port, so both are measured against the same process; SET and GET at
  50 clients, pipeline 1 and 16, through each port (geomys-benchmark, with
  --tls on the TLS port);
- cluster writes: two three-node clusters, one plain and one with
  tls_cluster = yes, SET through the leader and through a follower (clients
  in plaintext on both, so only the traffic between nodes differs);
- handshake cost: --connections new connections one after another, each
  sending one PING and closing, plaintext and TLS.

Each pair (plaintext, TLS) runs back to back in an order that alternates
between repetitions; the figures are medians of --repeat runs and the
ratios are TLS over plaintext in the same run. Beside throughput, the server
CPU time per request (user + system, from /proc, the three nodes summed for
a cluster) is reported: on a shared, noisy machine it moves less than
requests per second do.

    python scripts/bench_tls.py --repeat 3
    python scripts/bench_tls.py --quick --output /tmp/perf.md

Every run is bounded by --max-seconds; the servers are stopped by PID at the
end and on Ctrl-C. Runs in the main thread.
"""

import argparse
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import msgpack
from bench import geomys_benchmark_argv, parse_geomys_report
from bench_common import (HOST, BenchError, Server, Servers, add_output_option, free_port, machine_summary, median,
                          positive_int, publish, run_main, start_cluster, start_geomys)
from make_certs import LOCAL_NAMES, write_all

SECTION = "tls"
CLIENTS = 50
PIPELINES = (1, 16)
CLIENT_TESTS = ("set", "get")
GOAL_SET_P16 = 0.7


def certificates(folder: Path) -> dict[str, str]:
    """Throwaway certificates in `folder`; return the paths a node and a client need."""
    write_all(folder, {n: LOCAL_NAMES for n in (1, 2, 3)})
    return {"ca": str(folder / "ca.pem"), "cert": str(folder / "node1.crt"), "key": str(folder / "node1.key")}


def tls_options(certs: dict[str, str]) -> list[str]:
    return ["--tls_cert_file", certs["cert"], "--tls_key_file", certs["key"], "--tls_ca_file", certs["ca"]]


def run_benchmark(port: int, test: str, pipeline: int, requests: int, max_seconds: float,
                  tls_ca: Optional[str] = None) -> float:
    """Requests per second of one geomys-benchmark run (with --tls when `tls_ca` is given); fails if cut short."""
    argv = geomys_benchmark_argv(port, test, CLIENTS, pipeline, requests, max_seconds)
    if tls_ca:
        argv += ["--tls", "--cacert", tls_ca]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=2 * max_seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError("geomys-benchmark did not finish: %s" % " ".join(argv)) from None
    if run.returncode != 0:
        raise BenchError("geomys-benchmark failed: %s\n%s" % (" ".join(argv), run.stderr))
    rps, _, _, cut_short, errors = parse_geomys_report(run.stdout)
    if errors or cut_short:
        raise BenchError("%s in: %s" % ("%d error replies" % errors if errors else "cut short by --max-seconds",
                                        " ".join(argv)))
    return rps


def with_cpu(processes: Sequence[Server], units: int, measure) -> Callable[[], tuple[float, float]]:
    """Wrap `measure` to return (its result, server CPU microseconds per unit of work) around it."""
    def run() -> tuple[float, float]:
        before = sum(p.cpu_seconds() for p in processes)
        result = measure()
        return result, (sum(p.cpu_seconds() for p in processes) - before) / units * 1e6
    return run


def connection_seconds(port: int, count: int, context: Optional[ssl.SSLContext]) -> float:
    """Mean seconds of one new connection that sends a PING, reads the PONG and closes."""
    ping = msgpack.packb({"command": "PING"})
    started = time.perf_counter()
    for _ in range(count):
        with socket.create_connection((HOST, port), timeout=10) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = context.wrap_socket(raw, server_hostname=HOST) if context else raw
            sock.sendall(ping)
            if not sock.recv(1024):
                raise BenchError("port %d closed the connection before answering PING" % port)
            sock.close()
    return (time.perf_counter() - started) / count


def pair(repetition: int, plain, tls) -> tuple:
    """Run the plaintext and the TLS measure back to back, the first one alternating; return (plain, tls)."""
    if repetition % 2:
        second = tls()
        return plain(), second
    first = plain()
    return first, tls()


def measure(args, workdir: Path) -> dict:
    """Start the servers, run every pair --repeat times, return the samples by cell."""
    certs = certificates(workdir / "certs")
    requests = {1: args.requests, 16: 5 * args.requests}
    samples: dict[tuple, list[tuple[float, float]]] = {}
    with Servers() as servers:
        tls_port = free_port()
        server = start_geomys(servers, "standalone", workdir, "--tls_port", str(tls_port), *tls_options(certs))
        plain_nodes = start_cluster(servers, workdir, prefix="plain")
        tls_nodes = start_cluster(servers, workdir, prefix="tls", options=["--tls_cluster", "yes",
                                                                             *tls_options(certs)])
        context = ssl.create_default_context(cafile=certs["ca"])
        for repetition in range(args.repeat):
            for test in CLIENT_TESTS:
                for pipeline in PIPELINES:
                    def run(port, ca=None, test=test, pipeline=pipeline):
                        return with_cpu([server], requests[pipeline], lambda: run_benchmark(
                            port, test, pipeline, requests[pipeline], args.max_seconds, ca))
                    samples.setdefault(("client", test, pipeline), []).append(
                        pair(repetition, run(server.port), run(tls_port, certs["ca"])))
            for role, index in (("leader", 0), ("follower", 1)):
                for pipeline in PIPELINES:
                    def run_set(nodes: list[Server], pipeline=pipeline, index=index):
                        return with_cpu(nodes, requests[pipeline], lambda: run_benchmark(
                            nodes[index].port, "set", pipeline, requests[pipeline], args.max_seconds))
                    samples.setdefault(("cluster", role, pipeline), []).append(
                        pair(repetition, run_set(plain_nodes), run_set(tls_nodes)))
            samples.setdefault(("connect",), []).append(pair(
                repetition,
                with_cpu([server], args.connections, lambda: connection_seconds(server.port, args.connections, None)),
                with_cpu([server], args.connections, lambda: connection_seconds(tls_port, args.connections, context))))
    return samples


def render(samples: dict, args, argv: Sequence[str], seconds: float) -> str:
    """The generated markdown: how it ran, the ratio tables, the handshake cost."""
    def cell(key) -> tuple[float, float, float, float, float]:
        """Medians: plaintext and TLS rate, the per-repetition ratio, plaintext and TLS server CPU."""
        runs = samples[key]
        return (median([p[0] for p, _ in runs]), median([t[0] for _, t in runs]),
                median([t[0] / p[0] for p, t in runs]), median([p[1] for p, _ in runs]),
                median([t[1] for _, t in runs]))
    header = ("| %s | plaintext req/s | TLS req/s | TLS / plaintext | server CPU µs/req, plaintext → TLS |",
              "|---|---:|---:|---:|---:|")
    lines = [
        "Generated by `%s` on %s (%s); took %.0f s. Medians of %d runs; in each repetition the plaintext "
        "and the TLS run of a cell ran back to back, alternating which went first. The ratio is the median "
        "of the per-repetition ratios TLS / plaintext. %d clients; -n %d at pipeline 1, -n %d at pipeline 16. "
        "Server CPU: user + system time of the server process (the three nodes summed for the cluster) over "
        "the requests of the run, from /proc/PID/stat (10 ms ticks); on the TLS port it includes the untimed "
        "handshakes of the run's connections."
        % (" ".join(["python scripts/bench_tls.py", *argv]), time.strftime("%Y-%m-%d"), machine_summary(),
           seconds, args.repeat, CLIENTS, args.requests, 5 * args.requests),
        "",
        header[0] % "client path (one server, both ports)", header[1],
    ]
    for test in CLIENT_TESTS:
        for pipeline in PIPELINES:
            plain, tls, ratio, cpu_plain, cpu_tls = cell(("client", test, pipeline))
            goal = " (goal ≥ %.1f: %s)" % (GOAL_SET_P16, "met" if ratio >= GOAL_SET_P16 else "**not met**") \
                if (test, pipeline) == ("set", 16) else ""
            lines.append("| %s, -P %d | %.0f | %.0f | %.2f%s | %.1f → %.1f |"
                         % (test.upper(), pipeline, plain, tls, ratio, goal, cpu_plain, cpu_tls))
    lines += ["", header[0].replace("plaintext req/s | TLS req/s | TLS / plaintext",
                                    "plain gRPC req/s | mutual-TLS gRPC req/s | TLS / plain")
              % "cluster writes (SET; clients in plaintext)", header[1]]
    for role in ("leader", "follower"):
        for pipeline in PIPELINES:
            plain, tls, ratio, cpu_plain, cpu_tls = cell(("cluster", role, pipeline))
            lines.append("| via the %s, -P %d | %.0f | %.0f | %.2f | %.1f → %.1f |"
                         % (role, pipeline, plain, tls, ratio, cpu_plain, cpu_tls))
    plain, tls, _, cpu_plain, cpu_tls = cell(("connect",))
    lines += ["", "New connections, one after another (connect, PING, PONG, close), %d per run: %.2f ms "
              "plaintext, %.2f ms TLS, so the handshake adds about **%.2f ms** per new connection here "
              "(client and server share the machine's cores: both sides' work). Server CPU per connection: "
              "%.0f µs plaintext, %.0f µs TLS."
              % (args.connections, plain * 1e3, tls * 1e3, (tls - plain) * 1e3, cpu_plain, cpu_tls)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Measure what TLS costs and write it into docs/performance.md.")
    add = parser.add_argument
    add("--quick", action="store_true", help="small runs, one repetition: checks that everything runs")
    add("--repeat", type=positive_int, default=None, metavar="N", help="repetitions (default 3, --quick 1)")
    add("--requests", type=positive_int, default=None, metavar="N",
        help="-n at pipeline 1 (default 20000, --quick 2000); pipeline 16 uses 5 x N")
    add("--connections", type=positive_int, default=None, metavar="N",
        help="new connections per handshake run (default 500, --quick 50)")
    add("--max-seconds", type=float, default=60.0, metavar="S",
        help="bound of each run; one cut short fails the script (default %(default)s)")
    add_output_option(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.requests = args.requests or (2000 if args.quick else 20000)
    args.connections = args.connections or (50 if args.quick else 500)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geomys-bench-tls-") as tmp:
        samples = measure(args, Path(tmp))
    text = render(samples, args, argv, time.monotonic() - started)
    publish(text, args.output, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench_tls.py", main))

"""geomys-benchmark: a load generator for Geomys in the habits of redis-benchmark.

Architecture: `--procs` client processes, each one thread multiplexing its
share of the connections over non-blocking sockets with `selectors` (epoll).
Why not one thread per connection: Python threads share one GIL, so fifty
client threads would spend their time handing the GIL around and waking up
one another, and that cost would be measured as server latency. A single
event loop per process does the least Python work per reply (one recv, one
streaming decode, one send per pipeline batch), and several processes use
several cores. Every request is MessagePack-encoded before the clock starts.

Imports only msgpack and the standard library (never the server modules), so
it measures Geomys from the outside, like any client. Runs in the main thread
of the `geomys-benchmark` process and in its forked worker processes.
"""

import argparse
import csv
import itertools
import multiprocessing
import os
import queue as queue_mod
import random
import selectors
import signal
import socket
import ssl
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, MutableSequence, Optional, Sequence, TextIO

import msgpack

from .tls import TlsError, client_context

TESTS = ("ping", "set", "get", "incr", "push", "lpop", "mixed")
CSV_HEADER = ("test", "rps", "avg_ms", "min_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms", "errors")

READ_SIZE = 256 * 1024  # beyond a TLS record's 16 KiB, so one recv leaves nothing decrypted behind
CONNECT_TIMEOUT = 5.0
# A non-blocking send or recv that would wait; a TLS socket says so with its own errors.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
# Pre-population is untimed, so it uses a deep pipeline to get out of the way fast.
SETUP_PIPELINE = 64
# A worker publishes its progress this often; the parent prints it once a second.
PUBLISH_SECONDS = 0.1
PROGRESS_SECONDS = 1.0
# How long the parent waits for workers beyond --max-seconds (encoding, connecting,
# pre-population are bounded separately) before it gives up on them.
WORKER_GRACE_SECONDS = 30.0
# A reply that is not a map with a status is counted under this pseudo-code.
BAD_REPLY = "BAD_REPLY"

HELP_EPILOG = """\
tests:
  ping   PING
  set    SET of a fresh key per request (key:<run>:<client>:<i>), because SET
         never overwrites in Geomys. With -r, SET key:<random> instead: a key
         that already exists answers KEY_EXISTS, which is expected and counted
         as a served request (shown apart, not as an error).
  get    GET of keys written before the clock starts, so every GET is a hit:
         one key per client, or with -r every key the run will read.
  incr   INCR counter:<run>:<client> (with -r: counter:<random>).
  push   PUSH list:<run>:<client> (with -r: list:<random>); lists grow.
  lpop   LPOP of lists filled by untimed PUSHes before the clock starts, with
         exactly as many elements as will be popped (so no LPOP finds nothing).
  mixed  50% GET / 50% SET, chosen at random per request; GET keys are
         written beforehand, SET keys are fresh (with -r: both random, and
         KEY_EXISTS on SET is expected as above).

Latency of a request: from the send of the pipeline batch holding it to the
receipt of its reply. -n requests are split over -c connections, connections
over --procs processes. Requests are held in memory, encoded, before the
clock starts (about n x (d + 40) bytes for set and for -r runs). Each test
stops after --max-seconds and says so (replies still in flight then are
not counted); the work before the clock (connect, AUTH, pre-population) is
bounded by --max-seconds too. A progress line goes to stderr once a second
when stderr is a terminal (never with -q or --csv). Keys are left on the
server. Any node of a cluster can be measured: a follower forwards writes.

exit status: 0 run completed (error replies are reported, not fatal),
1 connection, authentication or pre-population failure, 2 bad arguments.
"""


class BenchmarkError(Exception):
    """A failure that ends the run with exit status 1 (connection, authentication, setup)."""


# -- arguments -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """The parsed command line."""

    host: str = "127.0.0.1"
    port: int = 6379
    clients: int = 50
    requests: int = 100000
    pipeline: int = 1
    data_size: int = 3
    tests: tuple[str, ...] = TESTS
    keyspace: Optional[int] = None
    quiet: bool = False
    csv: bool = False
    password: Optional[str] = None
    procs: int = os.cpu_count() or 1
    max_seconds: float = 60.0
    tls: bool = False
    cacert: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    consistent: bool = False


def parse_tests(text: str) -> tuple[str, ...]:
    """Parse -t: a comma list of test names, case-insensitive, duplicates dropped, order kept."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in TESTS:
            raise argparse.ArgumentTypeError("unknown test %r (choose from %s)" % (name, ",".join(TESTS)))
        if name not in names:
            names.append(name)
    if not names:
        raise argparse.ArgumentTypeError("no test given (choose from %s)" % ",".join(TESTS))
    return tuple(names)


def _int_at_least(minimum: int):
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
        if value < minimum:
            raise argparse.ArgumentTypeError("must be at least %d, got %d" % (minimum, value))
        return value
    return convert


def _port(text: str) -> int:
    value = _int_at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("must be at most 65535, got %d" % value)
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (-h is the host, as in redis-benchmark; help is --help)."""
    parser = argparse.ArgumentParser(
        prog="geomys-benchmark", add_help=False, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP_EPILOG,
        description="Measure a Geomys server: requests per second and latency, per command.")
    defaults = Options()
    add = parser.add_argument
    add("--help", action="help", help="show this help and exit")
    add("-h", dest="host", metavar="HOST", default=defaults.host, help="server host (default %(default)s)")
    add("-p", dest="port", metavar="PORT", type=_port, default=defaults.port,
        help="server port (default %(default)s)")
    add("-c", dest="clients", metavar="CLIENTS", type=_int_at_least(1), default=defaults.clients,
        help="parallel connections (default %(default)s)")
    add("-n", dest="requests", metavar="REQUESTS", type=_int_at_least(1), default=defaults.requests,
        help="total requests per test (default %(default)s)")
    add("-P", dest="pipeline", metavar="DEPTH", type=_int_at_least(1), default=defaults.pipeline,
        help="requests per pipeline batch on each connection (default %(default)s: no pipelining)")
    add("-d", dest="data_size", metavar="BYTES", type=_int_at_least(0), default=defaults.data_size,
        help="value size of SET/PUSH in bytes (default %(default)s)")
    add("-t", dest="tests", metavar="TESTS", type=parse_tests, default=defaults.tests,
        help="comma list of tests to run, from %s (default all)" % ",".join(TESTS))
    add("-r", dest="keyspace", metavar="KEYSPACE", type=_int_at_least(1), default=None,
        help="use random keys from [0, KEYSPACE) instead of per-client keys (see tests below)")
    add("-q", dest="quiet", action="store_true", help="quiet: one line per test, requests per second and p50")
    add("--csv", action="store_true", help="CSV output: a header, then one row per test")
    add("-a", dest="password", metavar="PASSWORD", help="send AUTH PASSWORD on every connection")
    add("--tls", action="store_true", help="connect over TLS (the server's tls_port); handshakes are untimed")
    add("--cacert", metavar="FILE", help="CA certificate (PEM) the server's must chain to (default: system CAs)")
    add("--cert", metavar="FILE", help="client certificate (PEM), for a server with tls_auth_clients")
    add("--key", metavar="FILE", help="private key of --cert (PEM)")
    add("--consistent", action="store_true",
        help="GETs ask for linearizable reads (the 'consistent' field; docs/cluster.md)")
    add("--procs", metavar="N", type=_int_at_least(1), default=defaults.procs,
        help="client processes the connections are spread over (default: CPUs, %(default)s)")
    add("--max-seconds", dest="max_seconds", metavar="SECONDS", type=_positive_seconds,
        default=defaults.max_seconds, help="stop a test after this long and say so (default %(default)s)")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    """Parse the command line into Options; bad arguments (and TLS files) exit with status 2 (argparse)."""
    parser = build_parser()
    options = Options(**vars(parser.parse_args(argv)))
    if not options.tls and (options.cacert or options.cert or options.key):
        parser.error("--cacert, --cert and --key need --tls")
    try:
        tls_context(options)
    except TlsError as exc:
        parser.error(str(exc))
    return options


def tls_context(options: Options) -> Optional[ssl.SSLContext]:
    """The client TLS context of --tls (built in each worker: a context does not cross processes), or None."""
    if not options.tls:
        return None
    return client_context(options.cacert, options.cert, options.key)


def split_evenly(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` counts that differ by at most one, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


# -- what each client sends -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientPlan:
    """The requests of one connection in one test.

    `setup` runs untimed before the clock starts (pre-population). `requests`
    yields `count` timed requests; when `uniform`, they are all the same map,
    so it is encoded once.
    """

    setup: list[dict]
    requests: Iterable[dict]
    count: int
    uniform: bool
    expected_codes: frozenset[str] = frozenset()


def plan_client(test: str, client: int, count: int, run_id: str, value: str,
                keyspace: Optional[int] = None, consistent: bool = False) -> ClientPlan:
    """Decide what connection number `client` sends in `test` (pure; deterministic per run_id).

    With `consistent`, every GET asks for a linearizable read (--consistent).

    Per-client keys embed `run_id`, which is fresh for every test of every run,
    so a SET never meets a key an earlier test or run left behind.
    """
    if test == "ping":
        return ClientPlan([], itertools.repeat({"command": "PING"}, count), count, True)
    rng = random.Random("%s:%d" % (run_id, client))
    own = "%s:%d" % (run_id, client)
    randoms = [rng.randrange(keyspace) for _ in range(count)] if keyspace else None
    if test == "set":
        if randoms is None:
            return ClientPlan([], (_set("key:%s:%d" % (own, i), value) for i in range(count)), count, False)
        return ClientPlan([], (_set("key:%d" % k, value) for k in randoms), count, False,
                          frozenset({"KEY_EXISTS"}))
    if test == "get":
        if randoms is None:
            key = "key:" + own
            return ClientPlan([_set(key, value)], itertools.repeat(_get(key, consistent), count), count, True)
        return ClientPlan([_set("key:%d" % k, value) for k in sorted(set(randoms))],
                          (_get("key:%d" % k, consistent) for k in randoms), count, False)
    if test == "incr":
        if randoms is None:
            return ClientPlan([], itertools.repeat({"command": "INCR", "key": "counter:" + own}, count),
                              count, True)
        return ClientPlan([], ({"command": "INCR", "key": "counter:%d" % k} for k in randoms), count, False)
    if test == "push":
        if randoms is None:
            return ClientPlan([], itertools.repeat(_push("list:" + own, value), count), count, True)
        return ClientPlan([], (_push("list:%d" % k, value) for k in randoms), count, False)
    if test == "lpop":
        if randoms is None:
            key = "list:" + own
            return ClientPlan([_push(key, value)] * count,
                              itertools.repeat({"command": "LPOP", "key": key}, count), count, True)
        pops = Counter(randoms)
        setup = [_push("list:%d" % k, value) for k in sorted(pops) for _ in range(pops[k])]
        return ClientPlan(setup, ({"command": "LPOP", "key": "list:%d" % k} for k in randoms), count, False)
    if test == "mixed":
        reads = [rng.random() < 0.5 for _ in range(count)]
        if randoms is None:
            key = "key:" + own
            requests = (_get(key, consistent) if read else _set("key:%s:%d" % (own, i), value)
                        for i, read in enumerate(reads))
            return ClientPlan([_set(key, value)], requests, count, False)
        read_keys = sorted({k for k, read in zip(randoms, reads) if read})
        requests = (_get("key:%d" % k, consistent) if read else _set("key:%d" % k, value)
                    for k, read in zip(randoms, reads))
        return ClientPlan([_set("key:%d" % k, value) for k in read_keys], requests, count, False,
                          frozenset({"KEY_EXISTS"}))
    raise ValueError("unknown test %r" % test)


def _set(key: str, value: str) -> dict:
    return {"command": "SET", "key": key, "value": value}


def _get(key: str, consistent: bool = False) -> dict:
    if consistent:
        return {"command": "GET", "key": key, "consistent": True}
    return {"command": "GET", "key": key}


def _push(key: str, value: str) -> dict:
    return {"command": "PUSH", "key": key, "value": value}


def encode_batches(requests: Iterable[dict], count: int, pipeline: int, uniform: bool) -> Iterable[tuple]:
    """Encode requests into (bytes, number of requests) batches of up to `pipeline` each.

    Uniform requests are packed once and yielded lazily as the same object,
    so `-n 100000000 -t ping` costs no memory; other requests are all
    encoded now, so the encoding is never inside the timed part.
    """
    pack = msgpack.Packer(use_bin_type=True).pack
    if uniform:
        if not count:
            return []
        one = pack(next(iter(requests)))
        full, rest = divmod(count, pipeline)
        return itertools.chain(itertools.repeat((one * pipeline, pipeline), full),
                               [(one * rest, rest)] if rest else [])
    batches, chunk = [], []
    for request in requests:
        chunk.append(pack(request))
        if len(chunk) == pipeline:
            batches.append((b"".join(chunk), pipeline))
            chunk = []
    if chunk:
        batches.append((b"".join(chunk), len(chunk)))
    return batches


# -- statistics --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency figures in milliseconds over `count` replies (all zero when there were none)."""

    count: int = 0
    avg_ms: float = 0.0
    min_ms: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0


def percentile(ordered: Sequence[tuple[float, int]], total: int, q: float) -> float:
    """Return the nearest-rank q-th percentile of (value, count) samples sorted by value."""
    if total <= 0:
        return 0.0
    rank = max(1, -(-q * total // 100))  # ceil(q% of total), at least the first
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= rank:
            return value
    return ordered[-1][0]


def summarize(histogram: Mapping[int, int]) -> LatencySummary:
    """Summarize a latency histogram (microseconds -> number of replies) in milliseconds."""
    ordered = sorted((us, n) for us, n in histogram.items() if n > 0)
    total = sum(n for _, n in ordered)
    if not total:
        return LatencySummary()
    ms = 1000.0
    return LatencySummary(
        count=total,
        avg_ms=sum(us * n for us, n in ordered) / total / ms,
        min_ms=ordered[0][0] / ms,
        p50_ms=percentile(ordered, total, 50) / ms,
        p95_ms=percentile(ordered, total, 95) / ms,
        p99_ms=percentile(ordered, total, 99) / ms,
        max_ms=ordered[-1][0] / ms)


@dataclass(slots=True)
class WorkerReport:
    """What one worker process measured in one test.

    Latencies are a histogram of whole microseconds -> replies, so a long
    run's memory is bounded by the spread of latencies, not their number.
    """

    completed: int = 0
    started: float = 0.0
    finished: float = 0.0
    cut_short: bool = False
    histogram: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    messages: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BenchmarkResult:
    """One test's outcome, merged over every worker."""

    test: str
    planned: int
    completed: int
    clients: int
    procs: int
    pipeline: int
    data_size: int
    elapsed: float
    cut_short: bool
    latency: LatencySummary
    errors: dict
    expected: dict
    messages: dict

    @property
    def rps(self) -> float:
        """Replies received per second of the test."""
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def error_count(self) -> int:
        """Error replies, not counting the expected ones (KEY_EXISTS with -r)."""
        return sum(self.errors.values())


def aggregate(test: str, options: Options, reports: Sequence[WorkerReport], procs: int) -> BenchmarkResult:
    """Merge the workers' reports: the test lasts from the first start to the last finish."""
    errors: Counter = Counter()
    expected: Counter = Counter()
    messages: dict = {}
    histogram: Counter = Counter()
    for report in reports:
        errors.update(report.errors)
        expected.update(report.expected)
        histogram.update(report.histogram)
        for code, message in report.messages.items():
            messages.setdefault(code, message)
    elapsed = (max(r.finished for r in reports) - min(r.started for r in reports)) if reports else 0.0
    return BenchmarkResult(
        test=test, planned=options.requests, completed=sum(r.completed for r in reports),
        clients=options.clients, procs=procs, pipeline=options.pipeline, data_size=options.data_size,
        elapsed=elapsed, cut_short=any(r.cut_short for r in reports),
        latency=summarize(histogram), errors=dict(errors), expected=dict(expected), messages=messages)


# -- output ------------------------------------------------------------------------------


def format_quiet(result: BenchmarkResult) -> str:
    """One line, redis-benchmark -q style: `SET: 41234.57 requests per second, p50=0.800 msec`."""
    line = "%s: %.2f requests per second, p50=%.3f msec" % (result.test.upper(), result.rps, result.latency.p50_ms)
    if result.error_count:
        line += ", %d errors" % result.error_count
    if result.cut_short:
        line += " (cut short after %.1f s)" % result.elapsed
    return line


def csv_row(result: BenchmarkResult) -> list[str]:
    """The CSV row of a test, in CSV_HEADER's column order."""
    lat = result.latency
    return [result.test.upper(), "%.2f" % result.rps] + [
        "%.3f" % v for v in (lat.avg_ms, lat.min_ms, lat.p50_ms, lat.p95_ms, lat.p99_ms, lat.max_ms)
    ] + [str(result.error_count)]


def format_report(result: BenchmarkResult) -> str:
    """The default multi-line report of one test."""
    lat = result.latency
    lines = ["====== %s ======" % result.test.upper()]
    if result.cut_short:
        lines.append("  cut short by --max-seconds: %d of %d requests completed in %.2f seconds"
                     % (result.completed, result.planned, result.elapsed))
    else:
        lines.append("  %d requests completed in %.2f seconds" % (result.completed, result.elapsed))
    lines += [
        "  %d parallel clients over %d processes, pipeline %d, %d bytes payload"
        % (result.clients, result.procs, result.pipeline, result.data_size),
        "  %.2f requests per second" % result.rps,
        "  latency (msec): avg=%.3f min=%.3f p50=%.3f p95=%.3f p99=%.3f max=%.3f"
        % (lat.avg_ms, lat.min_ms, lat.p50_ms, lat.p95_ms, lat.p99_ms, lat.max_ms),
    ]
    lines.append("  errors: %d%s" % (result.error_count, _by_code(result.errors)))
    for code, message in sorted(result.messages.items()):
        if code in result.errors:
            lines.append("    %s, e.g.: %s" % (code, message))
    if result.expected:
        lines.append("  expected replies (served, not errors):%s" % _by_code(result.expected))
    return "\n".join(lines) + "\n"


def _by_code(counts: dict) -> str:
    if not counts:
        return ""
    return " (%s)" % ", ".join("%s=%d" % item for item in sorted(counts.items()))


# -- the event loop of a worker ----------------------------------------------------------


class _Connection:
    """One client connection: its batches, the one in flight, and its reply decoder."""

    __slots__ = ("sock", "unpacker", "batches", "sent_at", "remaining", "out")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.batches: Iterator[tuple] = iter(())
        self.sent_at = 0.0
        self.remaining = 0
        self.out: Optional[memoryview] = None

    def start_next(self) -> Optional[bool]:
        """Send the next batch, stamping its send time.

        Return None when no batch is left, False if part of it is still queued.
        """
        batch = next(self.batches, None)
        if batch is None:
            return None
        data, self.remaining = batch
        self.sent_at = time.perf_counter()
        try:
            sent = self.sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        if sent == len(data):
            return True
        self.out = memoryview(data)[sent:]
        return False

    def flush(self) -> bool:
        """Send more of a partly sent batch; return True once all of it is out."""
        try:
            sent = self.sock.send(self.out)
        except _WOULD_BLOCK:
            return False
        self.out = self.out[sent:]
        if len(self.out):
            return False
        self.out = None
        return True


class _Tally:
    """Counts of one phase of one worker: replies, latency histogram, errors by code."""

    __slots__ = ("done", "histogram", "errors", "expected", "expected_codes", "messages")

    def __init__(self, expected_codes: frozenset = frozenset()) -> None:
        self.done = 0
        self.histogram: dict[int, int] = {}
        self.errors: Counter = Counter()
        self.expected: Counter = Counter()
        self.expected_codes = expected_codes
        self.messages: dict = {}

    def failed(self, reply) -> None:
        """Count a reply whose status is not OK under its code."""
        if type(reply) is dict and reply.get("status") == "ERROR":
            code = str(reply.get("code", BAD_REPLY))
            message = reply.get("message", "")
        else:
            code, message = BAD_REPLY, "unexpected reply %.80r" % (reply,)
        if code in self.expected_codes:
            self.expected[code] += 1
        else:
            self.errors[code] += 1
            self.messages.setdefault(code, str(message))


def drive(conns: Sequence[_Connection], tally: _Tally, deadline: float,
          progress: Optional[MutableSequence[int]] = None, slot: int = 0) -> bool:
    """Run every connection through its batches; return False if `deadline` came first.

    Each connection has one batch in flight: the next is sent when the last
    reply of the previous one arrives (redis-benchmark's -P). Replies still in
    flight at the deadline are not counted. `deadline` is on time.perf_counter.
    """
    read_event, write_event = selectors.EVENT_READ, selectors.EVENT_WRITE
    clock = time.perf_counter
    histogram, failed = tally.histogram, tally.failed
    bucket = histogram.get
    done = tally.done
    selector = selectors.DefaultSelector()
    try:
        active = 0
        for conn in conns:
            sent = conn.start_next()
            if sent is not None:
                selector.register(conn.sock, read_event if sent else read_event | write_event, conn)
                active += 1
        publish_at = clock() + PUBLISH_SECONDS
        while active:
            now = clock()
            if now >= deadline:
                return False
            if progress is not None and now >= publish_at:
                progress[slot] = done
                publish_at = now + PUBLISH_SECONDS
            for key, mask in selector.select(min(deadline - now, PUBLISH_SECONDS)):
                conn = key.data
                if mask & write_event and conn.flush():
                    selector.modify(conn.sock, read_event, conn)
                if not mask & read_event:
                    continue
                try:
                    data = conn.sock.recv(READ_SIZE)
                except _WOULD_BLOCK:
                    continue
                received_at = clock()
                if not data:
                    last = list(tally.messages.values())[-1:]  # e.g. why it refused us (max_clients)
                    raise ConnectionError("the server closed a connection" + "".join(" after: " + m for m in last))
                unpacker = conn.unpacker
                unpacker.feed(data)
                got = 0
                for reply in unpacker:
                    got += 1
                    if type(reply) is not dict or reply.get("status") != "OK":
                        failed(reply)
                if not got:
                    continue
                # Every reply this recv completed waited as long as its batch.
                micros = int((received_at - conn.sent_at) * 1e6)
                histogram[micros] = bucket(micros, 0) + got
                done += got
                conn.remaining -= got
                if conn.remaining <= 0:
                    sent = conn.start_next()
                    if sent is None:
                        selector.unregister(conn.sock)
                        active -= 1
                    elif not sent:
                        selector.modify(conn.sock, read_event | write_event, conn)
        return True
    finally:
        tally.done = done
        if progress is not None:
            progress[slot] = done
        selector.close()


def _connect(host: str, port: int, context: Optional[ssl.SSLContext] = None) -> socket.socket:
    """Open one blocking TCP connection with TCP_NODELAY (TLS too with `context`), or raise BenchmarkError."""
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise BenchmarkError("cannot connect to %s:%d: %s" % (host, port, exc.strerror or exc)) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is not None:
        try:
            sock = context.wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            sock.close()
            raise BenchmarkError("TLS handshake with %s:%d failed: %s"
                                 % (host, port, getattr(exc, "verify_message", None) or exc)) from None
    return sock


def _server_said(conns: Sequence[_Connection]) -> str:
    """Return the message of an error reply still unread on any connection (why the server closed it)."""
    for conn in conns:
        try:
            conn.unpacker.feed(conn.sock.recv(READ_SIZE, socket.MSG_DONTWAIT))
            for reply in conn.unpacker:
                if type(reply) is dict and reply.get("status") == "ERROR":
                    return str(reply.get("message", reply.get("code")))
        except (OSError, ValueError, msgpack.exceptions.UnpackException):
            continue
    return ""


def _run_untimed(conns: Sequence[_Connection], batches: Sequence[Iterable[tuple]], what: str, deadline: float,
                 allowed: frozenset = frozenset()) -> None:
    """Send setup batches (AUTH, pre-population) and fail on any error reply but `allowed` codes."""
    for conn, conn_batches in zip(conns, batches):
        conn.batches = iter(conn_batches)
    tally = _Tally(allowed)
    if not drive(conns, tally, deadline):
        raise BenchmarkError("%s did not finish within --max-seconds" % what)
    if tally.errors:
        code, count = tally.errors.most_common(1)[0]
        raise BenchmarkError("%s failed: %d x %s: %s" % (what, count, code, tally.messages.get(code, "")))


def _worker(slot: int, test: str, options: Options, run_id: str, assigned: list, results, go, abort,
            progress) -> None:
    """One client process: connect, pre-populate, encode, wait for `go`, run the test, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conns: list[_Connection] = []
    try:
        value = "x" * options.data_size
        setup_deadline = time.perf_counter() + options.max_seconds
        context = tls_context(options)
        for _ in assigned:
            conns.append(_Connection(_connect(options.host, options.port, context)))
        for conn in conns:
            conn.sock.setblocking(False)
        if options.password is not None:
            auth = encode_batches([{"command": "AUTH", "value": options.password}], 1, 1, False)
            _run_untimed(conns, [auth] * len(conns), "AUTH", setup_deadline)
        plans = [plan_client(test, client, count, run_id, value, options.keyspace, options.consistent)
                 for client, count in assigned]
        setups = [encode_batches(plan.setup, len(plan.setup), SETUP_PIPELINE, False) for plan in plans]
        _run_untimed(conns, setups, "pre-populating the %s test" % test.upper(), setup_deadline,
                     frozenset({"KEY_EXISTS"}))
        for conn, plan in zip(conns, plans):
            conn.batches = iter(encode_batches(plan.requests, plan.count, options.pipeline, plan.uniform))
        results.put(("ready", slot, None))
        # Bounded, so a worker whose parent was killed does not wait forever.
        if not go.wait(options.max_seconds + WORKER_GRACE_SECONDS) or abort.is_set():
            return
        tally = _Tally(plans[0].expected_codes if plans else frozenset())
        started = time.perf_counter()
        finished_all = drive(conns, tally, started + options.max_seconds, progress, slot)
        finished = time.perf_counter()
        results.put(("done", slot, WorkerReport(
            completed=tally.done, started=started, finished=finished, cut_short=not finished_all,
            histogram=tally.histogram, errors=dict(tally.errors),
            expected=dict(tally.expected), messages=tally.messages)))
    except BenchmarkError as exc:
        results.put(("failed", slot, str(exc)))
    except OSError as exc:
        said = _server_said(conns)
        results.put(("failed", slot, "connection to %s:%d lost: %s%s"
                     % (options.host, options.port, exc.strerror or exc, " after: " + said if said else "")))
    except msgpack.exceptions.UnpackException as exc:
        results.put(("failed", slot, "unreadable reply from %s:%d: %s" % (options.host, options.port, exc)))
    finally:
        for conn in conns:
            conn.sock.close()


# -- the parent process ------------------------------------------------------------------


def preflight(options: Options) -> None:
    """Check once, before any worker starts, that the server answers and accepts our credentials."""
    sock = _connect(options.host, options.port, tls_context(options))
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        requests = [{"command": "PING"}]
        if options.password is not None:
            requests.append({"command": "AUTH", "value": options.password})
        # A read-only probe: it tells whether the server wants a password we lack.
        requests.append({"command": "GET", "key": "geomys-benchmark:probe"})
        sock.sendall(b"".join(msgpack.packb(r, use_bin_type=True) for r in requests))
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        replies: list = []
        while len(replies) < len(requests):
            data = sock.recv(READ_SIZE)
            if not data:
                raise BenchmarkError("%s:%d closed the connection" % (options.host, options.port))
            unpacker.feed(data)
            replies.extend(unpacker)
    except OSError as exc:
        raise BenchmarkError("no answer from %s:%d: %s" % (options.host, options.port, exc.strerror or exc)) from None
    except msgpack.exceptions.UnpackException:
        raise BenchmarkError("%s:%d does not speak MessagePack" % (options.host, options.port)) from None
    finally:
        sock.close()
    for request, reply in zip(requests, replies):
        code = reply.get("code") if type(reply) is dict else BAD_REPLY
        if request["command"] == "AUTH" and code is not None:
            raise BenchmarkError("authentication failed: %s" % reply.get("message", code))
        if code == "AUTH_REQUIRED":
            raise BenchmarkError("the server requires a password: use -a PASSWORD")


def _mp_context():
    """Fork where available: workers start in milliseconds and inherit nothing but this module's state."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_test(test: str, options: Options, show_progress: bool = False) -> BenchmarkResult:
    """Run one test over --procs worker processes and return the merged result.

    Workers connect, pre-populate and encode, then all start together when the
    parent sets `go`, so the test's time covers only the timed requests.
    """
    per_client = split_evenly(options.requests, options.clients)
    active = [(client, count) for client, count in enumerate(per_client) if count]
    procs = min(options.procs, len(active))
    assigned = [active[i::procs] for i in range(procs)]
    run_id = uuid.uuid4().hex[:8]
    ctx = _mp_context()
    results, go, abort = ctx.Queue(), ctx.Event(), ctx.Event()
    progress = ctx.RawArray("q", procs)
    workers = [ctx.Process(target=_worker, name="geomys-benchmark-%d" % slot, daemon=True,
                           args=(slot, test, options, run_id, assigned[slot], results, go, abort, progress))
               for slot in range(procs)]
    sys.stdout.flush()
    sys.stderr.flush()
    for worker in workers:
        worker.start()
    try:
        _collect(results, "ready", procs, 2 * options.max_seconds + WORKER_GRACE_SECONDS, workers)
        go.set()
        reports = _collect(results, "done", procs, options.max_seconds + WORKER_GRACE_SECONDS, workers,
                           (test, progress, options.requests) if show_progress else None)
    except BaseException:
        abort.set()
        go.set()
        raise
    finally:
        if show_progress:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
    return aggregate(test, options, reports, procs)


def _collect(results, kind: str, procs: int, timeout: float, workers: list, progress=None) -> list:
    """Wait for one `kind` message per worker; raise BenchmarkError on a failure or timeout."""
    payloads: list = [None] * procs
    pending = procs
    deadline = time.monotonic() + timeout
    last_time, last_done = time.monotonic(), 0
    while pending:
        now = time.monotonic()
        if now >= deadline:
            raise BenchmarkError("the benchmark's worker processes did not finish in time")
        if progress is not None and now >= last_time + PROGRESS_SECONDS:
            test, counters, planned = progress
            done = sum(counters)
            sys.stderr.write("\r%s: %d/%d requests, %.0f requests per second\x1b[K"
                             % (test.upper(), done, planned, (done - last_done) / (now - last_time)))
            sys.stderr.flush()
            last_time, last_done = now, done
        try:
            message, slot, payload = results.get(timeout=min(0.25, deadline - now))
        except queue_mod.Empty:
            if any(w.exitcode not in (None, 0) for w in workers):
                raise BenchmarkError("a worker process died (exit status %s)"
                                     % next(w.exitcode for w in workers if w.exitcode not in (None, 0)))
            continue
        if message == "failed":
            raise BenchmarkError(payload)
        if message == kind and payloads[slot] is None:
            payloads[slot] = payload
            pending -= 1
    return payloads


def _output(results: Iterator[BenchmarkResult], options: Options, out: TextIO) -> None:
    """Print each result as soon as its test ends, in the chosen format."""
    writer = csv.writer(out, lineterminator="\n") if options.csv else None
    if writer is not None:
        writer.writerow(CSV_HEADER)
        out.flush()
    for result in results:
        if writer is not None:
            writer.writerow(csv_row(result))
        elif options.quiet:
            out.write(format_quiet(result) + "\n")
        else:
            out.write(format_report(result) + "\n")
        out.flush()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of `geomys-benchmark`."""
    options = parse_args(argv)
    show_progress = not (options.quiet or options.csv) and sys.stderr.isatty()
    try:
        preflight(options)
        _output((run_test(test, options, show_progress) for test in options.tests), options, sys.stdout)
    except BenchmarkError as exc:
        sys.stdout.flush()
        sys.stderr.write("geomys-benchmark: %s\n" % exc)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("geomys-benchmark: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()

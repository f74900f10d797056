#!/usr/bin/env python3
"""Memory per key, AOF replay time and join-sync time of Geomys with a million keys.

1. Memory: load --keys keys (16-byte keys, 32-byte values) into a standalone
   server through pipelined SETs; resident memory (VmRSS) after minus before,
   per key. Redis, when installed, gets the same keys for reference.
2. Replay: load the keys into a server with an append-only file, stop it
   cleanly, restart it on the file and time until PING answers; INFO's
   persistence.records_replayed says how many records were read. An empty
   file's start is timed too: the part of a start that is not the replay.
3. Join sync: load the keys into the leader of a new cluster, start a node
   that joins it and time until the joiner answers PING (it serves clients
   only once it is a member) and its INFO shows it as a member with the
   leader's replication_offset.

    python scripts/memory_bench.py                     # one million keys
    python scripts/memory_bench.py --keys 2000 --output /tmp/perf.md

Every wait is bounded by --timeout; servers are stopped by PID at the end and
on Ctrl-C. Runs in the main thread.
"""

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bench_common import (HOST, REPO, BenchError, Connection, Server, Servers, free_port, geomys_argv, info,
                          machine_summary, positive_int, replace_section, run_main, start_cluster, start_geomys,
                          wait_until)

SECTION = "memory_bench"
BATCH = 1000
# Large enough that no compaction rewrites the file while it is loaded: the replay reads every SET.
NO_COMPACTION = str(1 << 40)


def key_of(i: int) -> str:
    """The i-th key: 16 bytes."""
    return "key:%012d" % i


def value_of(i: int) -> str:
    """The i-th value: 32 bytes."""
    return "value:%026d" % i


def load_geomys(port: int, keys: int, timeout: float) -> float:
    """SET keys 0..keys-1 in pipelined batches over one connection; return the seconds it took."""
    started = time.monotonic()
    with Connection(port, timeout) as conn:
        for first in range(0, keys, BATCH):
            count = min(BATCH, keys - first)
            conn.send({"command": "SET", "key": key_of(i), "value": value_of(i)} for i in range(first, first + count))
            failed = [r for r in conn.replies(count) if r.get("status") != "OK"]
            if failed:
                raise BenchError("a SET failed while loading: %s" % failed[0])
    return time.monotonic() - started


def load_redis(port: int, keys: int, timeout: float) -> None:
    """The same keys into Redis, in RESP, pipelined the same way."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        for first in range(0, keys, BATCH):
            count = min(BATCH, keys - first)
            sock.sendall(b"".join(b"*3\r\n$3\r\nSET\r\n$16\r\n%s\r\n$32\r\n%s\r\n"
                                  % (key_of(i).encode(), value_of(i).encode()) for i in range(first, first + count)))
            expected, got = b"+OK\r\n" * count, b""
            while len(got) < len(expected):
                data = sock.recv(1 << 16)
                if not data:
                    raise BenchError("redis closed the connection while loading")
                got += data
            if got != expected:
                raise BenchError("a Redis SET failed while loading: %r" % got[:80])


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident memory of one server before and after the load."""

    server: str
    before: int
    after: int
    load_seconds: float

    def per_key(self, keys: int) -> float:
        return (self.after - self.before) / keys


def measure_memory(servers: Servers, workdir: Path, keys: int, timeout: float) -> list[Memory]:
    """Load the keys into a standalone Geomys (and Redis if installed); RSS before and after."""
    geomys = start_geomys(servers, "memory", workdir)
    before = geomys.rss_bytes()
    seconds = load_geomys(geomys.port, keys, timeout)
    if info(geomys.port, timeout)["keys"] != keys:
        raise BenchError("the server does not hold %d keys after the load" % keys)
    results = [Memory("Geomys standalone", before, geomys.rss_bytes(), seconds)]
    geomys.stop()
    if shutil.which("redis-server"):
        port = free_port()
        redis = servers.add(Server("redis", ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                                             "--appendonly", "no", "--dir", str(workdir)], port, workdir))
        wait_until(lambda: _redis_pings(port), 30, "redis-server to answer PING")
        before = redis.rss_bytes()
        started = time.monotonic()
        load_redis(port, keys, timeout)
        results.append(Memory("Redis %s" % _redis_version(), before, redis.rss_bytes(), time.monotonic() - started))
        redis.stop()
    return results


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.split("v=", 1)[1].split()[0] if "v=" in out else "?"


def time_to_pong(server: Server, timeout: float) -> float:
    """Start `server` and return the seconds until it answers PING.

    The client port may be bound before the server serves it, so a connection
    that succeeds is kept and waited on, rather than probed again and again.
    """
    started = time.monotonic()
    server.start()
    deadline = started + timeout
    while True:
        if not server.alive():
            raise BenchError("%s exited:\n%s" % (server.name, server.log_tail()))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError("%s did not answer PING within %.0f s" % (server.name, timeout))
        try:
            with Connection(server.port, timeout=remaining) as conn:
                if conn.call("PING").get("status") == "OK":
                    return time.monotonic() - started
        except (OSError, BenchError):
            pass  # not listening yet, or the connection was closed: try again
        time.sleep(0.01)


@dataclass(frozen=True, slots=True)
class Replay:
    """A restart on a loaded file, and one on an empty file."""

    mode: str
    file_bytes: int
    records: int
    seconds: float
    empty_seconds: float


def measure_replay(servers: Servers, workdir: Path, keys: int, mode: str, timeout: float) -> Replay:
    """Load the keys with persistence on, stop cleanly, and time the restart on the file."""
    path = workdir / "replay.aof"
    options = ("--persistence", mode, "--persistence_path", str(path), "--compact_min_bytes", NO_COMPACTION)
    empty_port = free_port()
    empty_seconds = time_to_pong(servers.track(Server(
        "empty-start", geomys_argv(empty_port, "--persistence", mode, "--persistence_path",
                                   str(workdir / "empty.aof")), empty_port, workdir)), timeout)
    writer = start_geomys(servers, "replay-load", workdir, *options)
    load_geomys(writer.port, keys, timeout)
    if writer.stop(timeout) != 0:
        raise BenchError("the loaded server did not stop cleanly:\n" + writer.log_tail())
    port = free_port()
    restarted = servers.track(Server("replay", geomys_argv(port, *options), port, workdir))
    seconds = time_to_pong(restarted, timeout)
    persistence = info(port, timeout)["persistence"]
    return Replay(mode, path.stat().st_size, int(persistence["records_replayed"]), seconds, empty_seconds)


@dataclass(frozen=True, slots=True)
class JoinSync:
    """How long a new node took to take the leader's keys."""

    serving_seconds: float
    confirmed_seconds: float
    offset: int


def measure_join(servers: Servers, workdir: Path, keys: int, timeout: float) -> JoinSync:
    """Load the keys into a one-node cluster, then time a second node's join until it holds them all."""
    leader = start_cluster(servers, workdir, size=1, prefix="sync")[0]
    load_geomys(leader.port, keys, timeout)
    port = free_port(span=1000)
    joiner = servers.track(Server("sync2", geomys_argv(
        port, "-node_id=2", "-join=%s:%d" % (HOST, leader.port + 1000), "--heartbeat_interval", "0.5",
        "--failure_timeout", "2", "--join_timeout", str(timeout)), port, workdir))
    started = time.monotonic()
    serving = time_to_pong(joiner, timeout)

    def confirmed() -> Optional[tuple[float, int]]:
        asked = time.monotonic()
        mine, theirs = info(joiner.port, timeout), info(leader.port, timeout)
        member = mine.get("role") == "follower" and str(mine.get("node_id")) in (mine.get("nodes") or {})
        if member and mine["keys"] == keys and mine["replication_offset"] == theirs["replication_offset"]:
            return asked - started, mine["replication_offset"]
        return None

    seconds, offset = wait_until(confirmed, timeout, "the joiner to reach the leader's replication_offset")
    return JoinSync(serving, seconds, offset)


def render(keys: int, memory: list[Memory], replay: Replay, join: JoinSync, argv: Sequence[str],
           seconds: float) -> str:
    """The markdown snippet."""
    mb = 1024 * 1024
    lines = [
        "Generated by `%s` on %s (%s); took %.0f s."
        % (" ".join(["python scripts/memory_bench.py", *argv]), time.strftime("%Y-%m-%d"), machine_summary(),
           seconds),
        "",
        "| %s keys (16-byte keys, 32-byte values) | RSS before | RSS after | bytes per key | load time |"
        % "{:,}".format(keys),
        "|---|---:|---:|---:|---:|",
    ]
    for m in memory:
        lines.append("| %s | %.1f MiB | %.1f MiB | %.0f | %.2f s (%s SETs/s, pipelined by %d) |" % (
            m.server, m.before / mb, m.after / mb, m.per_key(keys), m.load_seconds,
            "{:,.0f}".format(keys / m.load_seconds), BATCH))
    lines += [
        "",
        "| start-up | seconds |",
        "|---|---:|",
        "| %s, empty file: start until PING answers | %.2f |" % (replay.mode, replay.empty_seconds),
        "| %s, replaying %s records (%.1f MiB file): start until PING answers | %.2f |"
        % (replay.mode, "{:,}".format(replay.records), replay.file_bytes / mb, replay.seconds),
        "| join sync of %s keys: joiner started until it answers PING (it serves once a member) | %.2f |"
        % ("{:,}".format(keys), join.serving_seconds),
        "| ... until its INFO shows it a member at the leader's replication_offset (%d) | %.2f |"
        % (join.offset, join.confirmed_seconds),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of memory_bench.py."""
    parser = argparse.ArgumentParser(description="Measure Geomys's memory per key, AOF replay time and "
                                                 "join-sync time.")
    parser.add_argument("--keys", type=positive_int, default=1_000_000, metavar="N", help="keys to load (default %(default)s)")
    parser.add_argument("--persistence", choices=("buffered", "writethrough"), default="buffered",
                        help="mode of the server whose file is replayed (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="bound of every step: a load, a start, a sync (default %(default)s)")
    parser.add_argument("--output", type=Path, default=None, metavar="PATH",
                        help="also write the snippet into this markdown file, between its memory_bench "
                             "markers (e.g. %s)" % (REPO / "docs" / "performance.md"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the three measurements, print the snippet and write it into --output if given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geomys-memory-") as tmp, Servers() as servers:
        workdir = Path(tmp)
        memory = measure_memory(servers, workdir, args.keys, args.timeout)
        print("memory measured", file=sys.stderr, flush=True)
        replay = measure_replay(servers, workdir, args.keys, args.persistence, args.timeout)
        print("replay measured", file=sys.stderr, flush=True)
        join = measure_join(servers, workdir, args.keys, args.timeout)
    text = render(args.keys, memory, replay, join, argv, time.monotonic() - started)
    print(text)
    if args.output:
        replace_section(args.output, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main("memory_bench.py", main))

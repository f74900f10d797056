"""Shared by the benchmark scripts: start local servers, talk to them, stop them, write results.

Every server is started on free 127.0.0.1 ports in its own session (so a
Ctrl-C on the terminal reaches only the script, which then stops each server
by the PID it started), and every wait is bounded by a monotonic deadline.
Imports only msgpack and the standard library; used from the main thread of
scripts/bench.py, scripts/failover_time.py and scripts/memory_bench.py, and by
scripts/faults.py to write its results.
"""

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import msgpack

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
# Test timings of the cluster: a failover takes seconds, not half a minute.
FAST_HEARTBEAT = 0.5
FAST_FAILURE_TIMEOUT = 2.0


class BenchError(Exception):
    """A failure that ends a benchmark script with exit status 1 (a server that won't start...)."""


def run_main(name: str, main: Callable[[], int]) -> int:
    """Run a script's `main` and return its exit status.

    A BenchError ends the script with one line on stderr and status 1;
    Ctrl-C with status 130, once the `Servers` block has stopped its servers.
    """
    try:
        return main()
    except BenchError as exc:
        print("%s: %s" % (name, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("%s: interrupted; servers stopped" % name, file=sys.stderr)
        return 130


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll `predicate` until it returns something truthy; raise BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise BenchError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def free_port(span: int = 0) -> int:
    """Return a loopback port that is free now (and, with `span`, so is port + span: the gRPC port)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if not span:
            return port
        if port + span > 65535:
            continue
        with socket.socket() as other:
            try:
                other.bind((HOST, port + span))
            except OSError:
                continue
        return port
    raise BenchError("found no free pair of loopback ports")


def command_path(name: str) -> list[str]:
    """The console script `name` installed beside this interpreter, else on PATH, else `python -m`."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    return [sys.executable, "-m", {"geomys": "geomys", "geomys-benchmark": "geomys.benchmark"}[name]]


class Connection:
    """One MessagePack connection to a Geomys-shaped server (Geomys or the baseline)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.pack = msgpack.Packer(use_bin_type=True).pack

    def send(self, requests: Iterable[dict]) -> None:
        """Send requests in one write (a pipeline)."""
        self.sock.sendall(b"".join(self.pack(request) for request in requests))

    def replies(self, count: int) -> list:
        """Read exactly `count` replies."""
        got: list = []
        for reply in self.unpacker:
            got.append(reply)
        while len(got) < count:
            data = self.sock.recv(1 << 20)
            if not data:
                raise BenchError("the server closed the connection")
            self.unpacker.feed(data)
            got.extend(self.unpacker)
        return got

    def call(self, command: str, **fields) -> dict:
        """Send one request and return its reply."""
        self.send([{"command": command, **fields}])
        return self.replies(1)[0]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def call(port: int, command: str, timeout: float = 10.0, **fields) -> dict:
    """Run one command on a fresh connection."""
    with Connection(port, timeout) as conn:
        return conn.call(command, **fields)


def info(port: int, timeout: float = 30.0) -> dict:
    """Return a Geomys node's INFO map."""
    reply = call(port, "INFO", timeout)
    if reply.get("status") != "OK":
        raise BenchError("INFO on port %d failed: %s" % (port, reply))
    return reply["value"]


class Server:
    """One server process started by a script: its command line, port, log file and PID."""

    def __init__(self, name: str, argv: Sequence[str], port: int, workdir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = Path(workdir) / ("%s.log" % name)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "Server":
        """Start the process in its own session, output to its log file; return at once."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers_ping(self) -> bool:
        """Whether a PING gets an answer now (raises if the process has exited)."""
        if not self.alive():
            raise BenchError("%s exited with status %s; log %s:\n%s"
                             % (self.name, self.proc.returncode, self.log_path, self.log_tail()))
        try:
            with Connection(self.port, timeout=2.0) as conn:
                return conn.call("PING").get("status") == "OK"
        except (OSError, BenchError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> "Server":
        """Wait until a PING is answered."""
        wait_until(self.answers_ping, timeout, "%s to answer PING on port %d" % (self.name, self.port))
        return self

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM the process, wait for it, SIGKILL it if it will not go; return its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process could not act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the process and reap it."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far, from /proc/PID/stat."""
        with open("/proc/%d/stat" % self.pid) as stat:
            # The command name (field 2) may hold spaces; the fields after it are plain.
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """Resident memory now: VmRSS from /proc/PID/status."""
        with open("/proc/%d/status" % self.pid) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise BenchError("no VmRSS for pid %d" % self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Servers:
    """Every server a script started; `with Servers() as servers:` stops them all on the way out.

    The way out includes Ctrl-C (KeyboardInterrupt) and SIGTERM, which is
    turned into SystemExit so the `with` block unwinds the same way.
    """

    def __init__(self) -> None:
        self.started: list[Server] = []

    def add(self, server: Server) -> Server:
        """Start `server` and stop it on the way out."""
        return self.track(server).start()

    def track(self, server: Server) -> Server:
        """Stop `server` on the way out; the caller starts it (to time its start, say)."""
        self.started.append(server)
        return server

    def __enter__(self) -> "Servers":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        return self

    def __exit__(self, *exc) -> None:
        for server in reversed(self.started):
            server.stop()


def geomys_argv(port: int, *options: str, command: Sequence[str] = ()) -> list[str]:
    """The command line of a geomys server on `port` with extra `options` (quiet log).

    `command` replaces the installed `geomys` (the single executable, say).
    """
    return list(command or command_path("geomys")) + ["--port", str(port), "--log_level", "WARNING", *options]


def start_geomys(servers: Servers, name: str, workdir: Path, *options: str, port: int = 0) -> Server:
    """Start a standalone geomys (no persistence unless `options` say so) and wait for PING."""
    port = port or free_port(span=1000)
    return servers.add(Server(name, geomys_argv(port, *options), port, workdir)).wait_ready()


def start_cluster(servers: Servers, workdir: Path, heartbeat: float = FAST_HEARTBEAT,
                  failure_timeout: float = FAST_FAILURE_TIMEOUT, size: int = 3,
                  join_timeout: float = 120.0, prefix: str = "node", options: Sequence[str] = (),
                  command: Sequence[str] = ()) -> list[Server]:
    """Start `size` nodes: node 1 bootstraps, the others join it one at a time; every node gets `options`.

    Returns once INFO on the leader lists every node as a member.
    """
    timings = ["--heartbeat_interval", str(heartbeat), "--failure_timeout", str(failure_timeout), *options]
    leader_port = free_port(span=1000)
    leader = servers.add(Server("%s1" % prefix, geomys_argv(leader_port, "-node_id=1", "-bootstrap", *timings,
                                                            command=command),
                                leader_port, workdir)).wait_ready()
    nodes = [leader]
    for node_id in range(2, size + 1):
        port = free_port(span=1000)
        join = "-join=%s:%d" % (HOST, leader_port + 1000)
        nodes.append(servers.add(Server("%s%d" % (prefix, node_id),
                                        geomys_argv(port, "-node_id=%d" % node_id, join, *timings,
                                                    command=command),
                                        port, workdir)))
        wait_until(lambda: members(leader.port) >= node_id and nodes[-1].answers_ping(), join_timeout,
                   "node %d to become a member" % node_id)
    return nodes


def members(port: int) -> int:
    """How many members INFO on this node lists (0 if it does not answer)."""
    try:
        return len(info(port, timeout=5.0).get("nodes") or {})
    except (OSError, BenchError):
        return 0


def machine_summary() -> str:
    """One line on the machine: cores, CPU model, Python version, kernel."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                         model)
    except OSError:
        pass
    return "%d cores (nproc), %s, Python %s, Linux %s" % (
        os.cpu_count() or 0, model, platform.python_version(), platform.release())


def replace_section(path: Path, name: str, text: str) -> None:
    """Write `text` between the `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers of `path`.

    Only the generated part is replaced, so the prose around it survives a
    re-run. A file without the markers gets them appended at its end.
    """
    begin, end = "<!-- %s:begin -->" % name, "<!-- %s:end -->" % name
    block = "%s\n%s\n%s" % (begin, text.strip("\n"), end)
    old = path.read_text() if path.exists() else ""
    # Markers count only on lines of their own, so prose may name them.
    pattern = re.compile("^" + re.escape(begin) + r"$.*?^" + re.escape(end) + "$", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old, count=1)
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block + "\n"
    path.write_text(new)


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """Add --output: the markdown file whose generated section a script replaces."""
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "performance.md", metavar="PATH",
                        help="markdown file whose generated section is replaced (default docs/performance.md)")


def publish(text: str, path: Path, section: str) -> None:
    """Print the generated markdown and write it into its section of `path`."""
    print(text)
    replace_section(path, section, text)
    print("\nwritten into %s" % path, file=sys.stderr)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % value)
    return value


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

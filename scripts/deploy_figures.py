#!/usr/bin/env python3
"""Figures of the single executable for docs/deploy.md: size, start time, memory.

Runs dist/geomys (build it first: scripts/build_binary.sh) the way a small VM
would, `env -i PATH=/usr/bin:/bin HOME=<empty>`, and measures:

1. the file's size;
2. start to first PING answered, --starts times (the first after copying the
   file to a new folder), beside `geomys --version` (unpacking and Python's
   start alone) and the pip-installed `geomys` for comparison;
3. idle RSS of one standalone node and of each node of a three-node cluster
   (the bootloader process plus the server it unpacks and runs);
4. RSS with --keys small keys (16-byte keys, 32-byte values), with INFO's
   used_memory estimate beside it;
5. max_memory's slack: a client pipelines SETs until OOM; peak RSS (VmHWM)
   against the limit, for two value sizes;
6. where a start's time goes: `python -X importtime` of the server's modules,
   standalone and with the cluster's.

    python scripts/deploy_figures.py --output docs/deploy.md
    python scripts/deploy_figures.py --keys 20000 --starts 3      # a quick look

Every wait is bounded by --timeout; servers are stopped by PID at the end.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from bench_common import (REPO, BenchError, Connection, Server, Servers, command_path, free_port, geomys_argv,
                          info, machine_summary, median, positive_int, replace_section, run_main, start_cluster)
from memory_bench import load_geomys, time_to_pong

SECTION = "deploy_figures"
MIB = 1 << 20
OOM_LIMIT = "64mb"
IDLE_SECONDS = 2.0   # how long a node is left alone before its idle RSS is read


def tree_pids(pid: int) -> list:
    """`pid` and every process under it (the bootloader and the server it runs)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in os.listdir("/proc/%d/task" % current):
                with open("/proc/%d/task/%s/children" % (current, task)) as children:
                    pending.extend(int(child) for child in children.read().split())
        except (OSError, ValueError):
            continue   # the process ended meanwhile
    return found


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every process under it."""
    return sum(_status_kib(each, "VmRSS") * 1024 for each in tree_pids(pid))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` and every process under it have used so far (/proc/PID/stat)."""
    total = 0
    for each in tree_pids(pid):
        with open("/proc/%d/stat" % each) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()   # the name (field 2) may hold spaces
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def tree_peak(pid: int) -> int:
    """The peak RSS (VmHWM) of `pid` plus those of its children: a bound on the tree's peak."""
    total = _status_kib(pid, "VmHWM")
    with open("/proc/%d/task/%d/children" % (pid, pid)) as children:
        total += sum(_status_kib(int(child), "VmHWM") for child in children.read().split())
    return total * 1024


def _status_kib(pid: int, field: str) -> int:
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError("no %s for pid %d" % (field, pid))


class Binary:
    """The executable, copied into an empty folder, with an empty HOME and a clean environment."""

    def __init__(self, source: Path, workdir: Path) -> None:
        folder = workdir / "vm"
        folder.mkdir()
        self.path = folder / "geomys"
        shutil.copy2(source, self.path)
        self.home = workdir / "home"
        self.home.mkdir()

    def command(self) -> list:
        return ["env", "-i", "PATH=/usr/bin:/bin", "HOME=%s" % self.home, str(self.path)]


def seconds_of(argv: Sequence[str], timeout: float) -> float:
    """Run a command to its end and return how long it took."""
    started = time.monotonic()
    subprocess.run(argv, capture_output=True, timeout=timeout, check=True)
    return time.monotonic() - started


def measure_starts(servers: Servers, workdir: Path, binary: Binary, starts: int, timeout: float) -> dict:
    """Start to PING of the executable and of the installed geomys (wall and CPU seconds); --version of both."""
    result: dict = {"binary": [], "installed": [], "binary_cpu": [], "installed_cpu": []}
    for i in range(starts):
        for kind, command in (("binary", binary.command()), ("installed", command_path("geomys"))):
            port = free_port(span=1000)
            server = servers.track(Server("start-%s-%d" % (kind, i), geomys_argv(port, command=command), port,
                                          workdir))
            result[kind].append(time_to_pong(server, timeout))
            result[kind + "_cpu"].append(tree_cpu_seconds(server.pid))
            server.stop()
    result["binary_version"] = [seconds_of(binary.command() + ["--version"], timeout) for _ in range(starts)]
    result["installed_version"] = [seconds_of(command_path("geomys") + ["--version"], timeout)
                                   for _ in range(starts)]
    return result


def measure_idle(servers: Servers, workdir: Path, binary: Binary, timeout: float) -> dict:
    """Idle RSS of one standalone node and of each node of a three-node cluster."""
    port = free_port(span=1000)
    single = servers.add(Server("idle", geomys_argv(port, command=binary.command()), port, workdir))
    single.wait_ready(timeout)
    time.sleep(IDLE_SECONDS)
    standalone = tree_rss(single.pid)
    single.stop()
    nodes = start_cluster(servers, workdir, prefix="idle-node", command=binary.command(), join_timeout=timeout)
    time.sleep(IDLE_SECONDS)
    cluster = [tree_rss(node.pid) for node in nodes]
    for node in nodes:
        node.stop()
    return {"standalone": standalone, "cluster": cluster}


def measure_keys(servers: Servers, workdir: Path, binary: Binary, keys: int, timeout: float) -> dict:
    """RSS and INFO's used_memory after loading `keys` small keys."""
    port = free_port(span=1000)
    server = servers.add(Server("keys", geomys_argv(port, command=binary.command()), port, workdir))
    server.wait_ready(timeout)
    before = tree_rss(server.pid)
    load_seconds = load_geomys(port, keys, timeout)
    after = tree_rss(server.pid)
    used = info(port)["used_memory"]
    server.stop()
    return {"before": before, "after": after, "used_memory": used, "load_seconds": load_seconds}


def fill_until_oom(port: int, value: str, timeout: float) -> int:
    """Pipeline SETs of `value` until one is answered OOM; return how many were stored."""
    stored, batch = 0, 500
    deadline = time.monotonic() + timeout
    with Connection(port, timeout) as conn:
        while time.monotonic() < deadline:
            conn.send({"command": "SET", "key": "key:%d" % (stored + i), "value": value} for i in range(batch))
            replies = conn.replies(batch)
            ok = sum(reply.get("status") == "OK" for reply in replies)
            stored += ok
            if ok < batch:
                if any(reply.get("code") not in (None, "OOM") for reply in replies):
                    raise BenchError("a SET failed otherwise than OOM: %s" % replies)
                return stored
    raise BenchError("no OOM within %.0f s" % timeout)


def measure_oom(servers: Servers, workdir: Path, binary: Binary, value_size: int, timeout: float) -> dict:
    """Peak and final RSS of a server written to until OOM under max_memory."""
    port = free_port(span=1000)
    server = servers.add(Server("oom-%d" % value_size, geomys_argv(port, "--max_memory", OOM_LIMIT,
                                                                    command=binary.command()), port, workdir))
    server.wait_ready(timeout)
    stored = fill_until_oom(port, "v" * value_size, timeout)
    figures = {"value_size": value_size, "keys": stored, "peak": tree_peak(server.pid),
               "after": tree_rss(server.pid), "limit": info(port)["max_memory"]}
    server.stop()
    return figures


def import_ms(*modules: str) -> float:
    """Milliseconds `python -X importtime` counts for importing `modules` (their own and their imports')."""
    code = "; ".join("import %s" % module for module in modules)
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stderr
    total = 0
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].rstrip() and not parts[2].startswith("  ") and parts[1].strip().isdigit():
            total += int(parts[1])   # top-level imports only: their cumulative time
    return total / 1000


def load_average() -> str:
    """The machine's 1-minute load average now: with 2 cores, 2.0 is fully busy."""
    with open("/proc/loadavg") as loadavg:
        return loadavg.read().split()[0]


def render(size: int, starts: dict, idle: dict, loaded: dict, ooms: list, imports: dict, keys: int,
           argv: Sequence[str], seconds: float, loads: tuple) -> str:
    """The markdown snippet."""
    def mib(n: int) -> str:
        return "%.1f MiB" % (n / MIB)

    def spread(values: list) -> str:
        return "%.2f s (first %.2f, max %.2f)" % (median(values), values[0], max(values))

    lines = [
        "Generated by `%s` on %s (%s); took %.0f s. The machine is shared: its load average was %s at the "
        "start and %s at the end, and a wall time grows with it where a CPU time does not."
        % (" ".join(["python scripts/deploy_figures.py", *argv]), time.strftime("%Y-%m-%d"), machine_summary(),
           seconds, loads[0], loads[1]),
        "",
        "| figure | value | goal |",
        "|---|---:|---|",
        "| size of dist/geomys | %s | |" % mib(size),
        "| start to first PING, dist/geomys: median of %d | %s | ≤ 1 s |" % (len(starts["binary"]),
                                                                          spread(starts["binary"])),
        "| ... CPU time it took (user + system, bootloader and server) | %s | |" % spread(starts["binary_cpu"]),
        "| `dist/geomys --version`: unpacking and Python's start alone (wall) | %s | |"
        % spread(starts["binary_version"]),
        "| start to first PING, pip-installed geomys | %s | |" % spread(starts["installed"]),
        "| ... CPU time it took | %s | |" % spread(starts["installed_cpu"]),
        "| pip-installed `geomys --version` (wall) | %s | |" % spread(starts["installed_version"]),
        "| idle RSS, one standalone node | %s | ≤ 40 MiB |" % mib(idle["standalone"]),
        "| idle RSS, each node of a three-node cluster | %s | ≤ 40 MiB |"
        % " / ".join(mib(rss) for rss in idle["cluster"]),
        "| RSS with %s keys (16-byte keys, 32-byte values) | %s (INFO used_memory %s); %.0f bytes per key | |"
        % ("{:,}".format(keys), mib(loaded["after"]), mib(loaded["used_memory"]),
           (loaded["after"] - loaded["before"]) / keys),
    ]
    for oom in ooms:
        lines.append("| max_memory %s, %d-byte values written until OOM: peak RSS / RSS after (%s keys) "
                     "| %s / %s (peak %+.1f MiB past the limit) | |"
                     % (mib(oom["limit"]), oom["value_size"], "{:,}".format(oom["keys"]), mib(oom["peak"]),
                        mib(oom["after"]), (oom["peak"] - oom["limit"]) / MIB))
    lines += [
        "",
        "| `python -X importtime` of | ms |",
        "|---|---:|",
        "| the standalone server (geomys.app, as loaded now) | %.0f |" % imports["standalone"],
        "| the cluster's modules on top (geomys.cluster.service: grpc, protobuf) | %.0f |" % imports["cluster"],
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of deploy_figures.py."""
    parser = argparse.ArgumentParser(description="Measure the single executable for docs/deploy.md.")
    parser.add_argument("--binary", type=Path, default=REPO / "dist" / "geomys", metavar="PATH",
                        help="the executable (default dist/geomys, from scripts/build_binary.sh)")
    parser.add_argument("--keys", type=positive_int, default=1_000_000, metavar="N",
                        help="keys loaded for the RSS figure (default %(default)s)")
    parser.add_argument("--starts", type=positive_int, default=5, metavar="N",
                        help="starts timed of each kind (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="bound of every step (default %(default)s)")
    parser.add_argument("--output", type=Path, default=None, metavar="PATH",
                        help="also write the figures into this markdown file, between its deploy_figures markers")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Take every measurement, print the snippet and write it into --output if given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not args.binary.is_file():
        raise BenchError("%s does not exist: build it with scripts/build_binary.sh" % args.binary)
    started, load_at_start = time.monotonic(), load_average()
    with tempfile.TemporaryDirectory(prefix="geomys-deploy-") as tmp, Servers() as servers:
        workdir = Path(tmp)
        binary = Binary(args.binary, workdir)
        starts = measure_starts(servers, workdir, binary, args.starts, args.timeout)
        idle = measure_idle(servers, workdir, binary, args.timeout)
        loaded = measure_keys(servers, workdir, binary, args.keys, args.timeout)
        ooms = [measure_oom(servers, workdir, binary, size, args.timeout) for size in (10, 1000)]
    imports = {"standalone": import_ms("geomys.app")}
    imports["cluster"] = import_ms("geomys.app", "geomys.cluster.service") - imports["standalone"]
    text = render(args.binary.stat().st_size, starts, idle, loaded, ooms, imports, args.keys, argv,
                  time.monotonic() - started, (load_at_start, load_average()))
    print(text)
    if args.output:
        replace_section(args.output, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main("deploy_figures.py", main))

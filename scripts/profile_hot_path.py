#!/usr/bin/env python3
"""Profile a Geomys server under geomys-benchmark load with py-spy and print where its CPU goes.

    pip install py-spy
    python scripts/profile_hot_path.py                      # this checkout, 50 clients, -P 16 SET
    python scripts/profile_hot_path.py --pipeline 1 --test get
    git worktree add /tmp/geomys-old <commit>
    python scripts/profile_hot_path.py --source /tmp/geomys-old   # the same, for older code

The server runs the `geomys` package found in --source (via PYTHONPATH, with
`python -m geomys`), on a free 127.0.0.1 port, without persistence. While
geomys-benchmark keeps it busy, py-spy samples only the thread that holds the
GIL (`--gil`), with native frames (`--native`, so time inside msgpack's and
CPython's C code shows up too): the table shows where the interpreter's time
goes, not which threads sleep. py-spy pauses the server for each sample, so
the request rate printed is lower than an unprofiled run's. Functions are ranked by their own samples (not counting
what they call) and by the samples of every stack they appear in.
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (REPO, BenchError, Server, Servers, command_path, free_port, info,  # noqa: E402
                          run_main, wait_until)


def frame_name(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'file.py:func' (line numbers dropped, so functions add up)."""
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    if not line.isdigit():  # a native frame: 'func (libpython3.11.so)'
        path = where
    return "%s:%s" % (os.path.basename(path) or "?", func)


def aggregate(raw_path: Path) -> tuple[int, collections.Counter, collections.Counter]:
    """Read py-spy's raw output (one 'stack count' line per stack); return total, self and inclusive counts."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            inclusive[name] += int(count)
    return total, own, inclusive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=REPO, help="checkout whose geomys package runs (default: this one)")
    parser.add_argument("--test", default="set", help="geomys-benchmark test (default %(default)s)")
    parser.add_argument("--clients", type=int, default=50, help="connections (default %(default)s)")
    parser.add_argument("--pipeline", type=int, default=16, help="pipeline depth (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=8.0, help="sampling time (default %(default)s)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default %(default)s)")
    parser.add_argument("--top", type=int, default=15, help="rows to print (default %(default)s)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if not py_spy:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    os.environ["PYTHONPATH"] = str(args.source.resolve())
    with tempfile.TemporaryDirectory(prefix="geomys-profile-") as tmp, Servers() as servers:
        port = free_port(span=1000)
        server = servers.add(Server("geomys", [sys.executable, "-m", "geomys", "--port", str(port),
                                               "--log_level", "WARNING"], port, Path(tmp))).wait_ready()
        # Enough requests to outlast the sampling (they are encoded before the clock starts).
        requests = int((args.seconds + 6) * 20000 * min(args.pipeline, 10))
        load = subprocess.Popen(command_path("geomys-benchmark") + [
            "-p", str(port), "-c", str(args.clients), "-P", str(args.pipeline), "-t", args.test, "-q",
            "-n", str(requests), "--max-seconds", str(args.seconds + 6)], stdout=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: info(port)["commands_processed"] > 10000, 120, "the load to start")
            time.sleep(1)  # every connection open and busy before sampling
            raw = Path(tmp) / "profile.txt"
            subprocess.run([py_spy, "record", "--gil", "--native", "-r", str(args.rate),
                            "-d", str(int(args.seconds)), "-f", "raw", "-o", str(raw), "-p", str(server.pid)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = load.communicate(timeout=args.seconds + 60)[0].strip()
        finally:
            if load.poll() is None:
                load.kill()
        total, own, inclusive = aggregate(raw)
        if not total:
            raise BenchError("py-spy recorded no samples")
    print("source %s, %s, %d clients, -P %d: %s" % (args.source, args.test.upper(), args.clients,
                                                      args.pipeline, result))
    print("%d samples of the GIL holder over %g s\n" % (total, args.seconds))
    print("| function (file:name) | own % | with callees % |")
    print("|---|---:|---:|")
    for name, count in own.most_common(args.top):
        print("| %s | %.1f | %.1f |" % (name, 100 * count / total, 100 * inclusive[name] / total))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("profile_hot_path.py", main))

#!/usr/bin/env python3
"""Count the Python work a request costs the server: bytecodes and function calls, Geomys beside the baseline.

    python scripts/count_bytecodes.py                    # SET and GET, pipeline 1 and 16
    python scripts/count_bytecodes.py --by-function      # and where Geomys's bytecodes go
    python scripts/count_bytecodes.py --source /tmp/geomys-old   # the geomys package of another checkout
    python scripts/count_bytecodes.py --time             # and µs per request in-process, untraced

Runs each server's real connection loop (geomys.net.ClientHandler, the
baseline's Handler) in this process, fed by a stand-in socket that hands over
one pipeline of pre-encoded requests per recv and drops what is sent, and
counts with sys.settrace's opcode events. Unlike a time, the count is the
same on every run and every machine with the same Python: a figure for
comparing two versions of the code on a noisy machine. It is not a time: a
bytecode can cost a few nanoseconds or, with cold caches, ten times more, and
C work (decoding, dict lookups) is not counted.
"""

import argparse
import collections
import sys
import time
from pathlib import Path

import msgpack

SCRIPTS = Path(__file__).resolve().parent
REQUESTS = 2000


class StandInSocket:
    """Hands over one pipeline per recv, then end of stream; drops what is sent."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = iter(reads)

    def setsockopt(self, *args) -> None:
        pass

    def recv(self, size: int) -> bytes:
        return next(self.reads, b"")

    def sendall(self, data: bytes) -> None:
        pass


class StandInServer:
    """What a ClientHandler reads from its server."""

    tls = None
    drainer = None
    max_request_bytes = 64 * 1024 * 1024

    def __init__(self, engine) -> None:
        self.engine = engine

    def client_finished(self) -> None:
        pass


def reads(test: str, pipeline: int, run: int) -> list[bytes]:
    """REQUESTS requests of `test`, in pipelines: SETs of fresh keys, or GETs of 50 keys written before."""
    pack = msgpack.Packer(use_bin_type=True).pack
    if test == "set":
        requests = [pack({"command": "SET", "key": "key:%d:%d" % (run, i), "value": "xxx"}) for i in range(REQUESTS)]
    else:
        requests = [pack({"command": "GET", "key": "key:%d" % (i % 50)}) for i in range(REQUESTS)]
    return [b"".join(requests[i:i + pipeline]) for i in range(0, REQUESTS, pipeline)]


def servers():
    """(name, serve(reads)) for Geomys and the baseline, each with its GET keys written."""
    from geomys import net
    from geomys.clock import SystemClock
    from geomys.engine import Context, Engine
    from geomys.store import Store
    sys.path.insert(0, str(SCRIPTS))
    import baseline_server

    engine = Engine(Store(), SystemClock())
    for i in range(50):
        engine.execute({"command": "SET", "key": "key:%d" % i, "value": "xxx"}, Context(engine))
        baseline_server.data["key:%d" % i] = "xxx"

    def geomys(chunks: list[bytes]) -> None:
        handler = object.__new__(net.ClientHandler)
        handler.request, handler.client_address = StandInSocket(chunks), ("127.0.0.1", 1)
        handler.server = StandInServer(engine)
        handler.setup()
        handler._serve()

    def baseline(chunks: list[bytes]) -> None:
        handler = object.__new__(baseline_server.Handler)
        handler.request = StandInSocket(chunks)
        handler.handle()

    return (("Geomys", geomys), ("baseline", baseline))


def count(serve, chunks: list[bytes]) -> tuple[int, int, collections.Counter]:
    """Bytecodes, Python calls and bytecodes per function while `serve` runs over `chunks`."""
    per_function = collections.Counter()
    calls = 0

    def tracer(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            code = frame.f_code
            per_function["%s:%s" % (Path(code.co_filename).name, code.co_name)] += 1
        return tracer

    sys.settrace(tracer)
    try:
        serve(chunks)
    finally:
        sys.settrace(None)
    # The stand-in socket's own methods are not the server's work.
    own = sum(n for name, n in per_function.items() if name.startswith(Path(__file__).name))
    stand_in_calls = len(chunks) + 1 + sum(1 for _ in chunks)  # recv per read and the final one, sendall per read
    return sum(per_function.values()) - own, calls - stand_in_calls, per_function


def best_time(serve, test: str, pipeline: int, runs: int = 7) -> float:
    """µs per request of `serve` run untraced, the fastest of `runs` runs (warm caches, one thread)."""
    best = float("inf")
    for run in range(runs):
        chunks = reads(test, pipeline, 1000 + run)
        started = time.perf_counter()
        serve(chunks)
        best = min(best, time.perf_counter() - started)
    return best / REQUESTS * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, help="checkout whose geomys package is counted (default: this one)")
    parser.add_argument("--by-function", action="store_true", help="also list Geomys's bytecodes per function")
    parser.add_argument("--time", action="store_true",
                        help="also time each server's loop in-process, untraced (µs per request, best of 7 runs)")
    args = parser.parse_args()
    if args.source:
        sys.path.insert(0, str(args.source.resolve()))
    timed = " Geomys µs / request | baseline |" if args.time else ""
    print("| test | pipeline | Geomys bytecodes / request | baseline | Geomys Python calls / request | baseline |"
          + timed)
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.time else ""))
    details = []
    for test in ("set", "get"):
        for pipeline in (1, 16):
            figures = {}
            for run, (name, serve) in enumerate(servers(), start=1):
                serve(reads(test, pipeline, 100 + run))  # warm: the adaptive interpreter specializes first
                figures[name] = count(serve, reads(test, pipeline, run))
            (geomys_ops, geomys_calls, by_function), (base_ops, base_calls, _) = figures["Geomys"], figures["baseline"]
            row = "| %s | %d | %.0f | %.0f | %.1f | %.1f |" % (test.upper(), pipeline, geomys_ops / REQUESTS,
                                                           base_ops / REQUESTS, geomys_calls / REQUESTS,
                                                           base_calls / REQUESTS)
            if args.time:
                row += " %.2f | %.2f |" % tuple(best_time(serve, test, pipeline) for _, serve in servers())
            print(row)
            details.append((test, pipeline, by_function))
    if args.by_function:
        for test, pipeline, by_function in details:
            print("\nGeomys, %s, pipeline %d: bytecodes per request by function" % (test.upper(), pipeline))
            for name, n in by_function.most_common():
                if not name.startswith(Path(__file__).name) and n / REQUESTS >= 0.5:
                    print("  %6.1f  %s" % (n / REQUESTS, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What one gRPC round trip costs in Python on this machine: a unary call against one message on a stream.

Both ends run in this process (a grpc.server and a channel to it on
127.0.0.1), so the CPU time per round trip is both ends' together. The
cluster's Exchange stream is the second kind; docs/performance.md quotes the
figures. Usage: python scripts/grpc_round_trip.py [-n ROUND_TRIPS]
"""

import argparse
import os
import queue
import time
from concurrent import futures

import grpc

from geomys.cluster.pb import cluster_pb2 as pb
from geomys.cluster.pb import cluster_pb2_grpc as pb_grpc


class Echo(pb_grpc.ClusterServicer):
    """Answers each message with itself."""

    def Exchange(self, request_iterator, context):
        yield from request_iterator

    def Ask(self, request, context):
        return request


def measure(label: str, round_trip, count: int) -> None:
    """Run `round_trip` `count` times; print its median wall time and the CPU per round trip."""
    round_trip()
    times = []
    cpu = os.times()
    for _ in range(count):
        start = time.perf_counter()
        round_trip()
        times.append(time.perf_counter() - start)
    used = os.times()
    cpu_us = ((used.user + used.system) - (cpu.user + cpu.system)) / count * 1e6
    print("%-7s p50 %.3f ms, %.0f us of CPU per round trip (both ends)" % (label, sorted(times)[count // 2] * 1e3,
                                                                         cpu_us))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="round trips of each kind (default 2000)")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    pb_grpc.add_ClusterServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    message = pb.Message(poll=pb.Poll(src=1, term=2))
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        stub = pb_grpc.ClusterStub(channel)
        measure("unary", lambda: stub.Ask(message), args.n)
        outgoing: queue.SimpleQueue = queue.SimpleQueue()
        answers = stub.Exchange(iter(outgoing.get, None))
        batch = pb.Batch(messages=[message])

        def on_stream():
            outgoing.put(batch)
            next(answers)
        measure("stream", on_stream, args.n)
        outgoing.put(None)
    server.stop(0)


if __name__ == "__main__":
    main()

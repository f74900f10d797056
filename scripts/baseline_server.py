#!/usr/bin/env python3
"""The ceiling of Geomys's architecture: the least a ThreadingTCPServer can do per request.

Same shape as Geomys (one thread per client, TCP_NODELAY, listen backlog 1024,
daemon threads, a streaming MessagePack decoder, one lock around the data,
all replies of one read sent in one write) but nothing else: no command
table, no argument checks, no TTLs, no effect records, no AOF, no cluster.
Whatever Geomys loses against this server is the price of its features;
what this server cannot do, no server of this design can.

    python scripts/baseline_server.py --port 7000 [--host 127.0.0.1]

Speaks PING, SET (overwrites, unlike Geomys), GET, INCR, PUSH, LPOP; replies
have Geomys's shapes, so `geomys-benchmark -t ping,set,get,incr,push,lpop`
drives it. Imports only msgpack and the standard library.
"""

import argparse
import socket
import socketserver
import threading
from collections import deque

import msgpack

OK = {"status": "OK"}
PONG = {"status": "OK", "message": "PONG"}

data: dict = {}
lock = threading.Lock()


def error(code: str, message: str) -> dict:
    """An error reply in Geomys's shape."""
    return {"status": "ERROR", "code": code, "message": message}


def execute(request) -> dict:
    """Run one request: a single dict or deque operation under the one lock."""
    if type(request) is not dict:
        return error("BAD_REQUEST", "a request must be a map")
    command = request.get("command")
    if command == "PING":
        return PONG
    key = request.get("key")
    if command == "SET":
        with lock:
            data[key] = request.get("value")
        return OK
    if command == "GET":
        with lock:
            value = data.get(key)
        return error("NOT_FOUND", "key not found") if value is None else {"status": "OK", "value": value}
    if command == "INCR":
        with lock:
            value = data[key] = data.get(key, 0) + request.get("offset", 1)
        return {"status": "OK", "value": value}
    if command == "PUSH":
        with lock:
            items = data.get(key)
            if items is None:
                items = data[key] = deque()
            items.append(request.get("value"))
        return OK
    if command == "LPOP":
        with lock:
            items = data.get(key)
            if not items:
                return error("NOT_FOUND", "list not found or empty")
            return {"status": "OK", "value": items.popleft()}
    return error("UNKNOWN_COMMAND", "unknown command %r" % (command,))


class Handler(socketserver.BaseRequestHandler):
    """Serves one connection: decode whatever arrived, answer it all in one send."""

    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        unpacker = msgpack.Unpacker(raw=False)
        pack = msgpack.Packer(use_bin_type=True).pack
        try:
            while True:
                chunk = sock.recv(256 * 1024)
                if not chunk:
                    return
                unpacker.feed(chunk)
                replies = [pack(execute(request)) for request in unpacker]
                if replies:
                    sock.sendall(b"".join(replies))
        except (OSError, ValueError, msgpack.exceptions.UnpackException):
            return  # a broken connection or non-MessagePack bytes end only this client


class Server(socketserver.ThreadingTCPServer):
    """Geomys's listening setup: reusable address, backlog 1024, daemon handler threads."""

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description="Baseline ThreadingTCPServer: the ceiling of Geomys's design.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=6379, help="port (default %(default)s)")
    args = parser.parse_args()
    with Server((args.host, args.port), Handler) as server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

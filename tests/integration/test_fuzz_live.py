"""A live server under at least 10,000 malformed frames (docs/protocol.md, "Bad input":
nothing a client sends may crash the server, leak its thread, or change data it did
not ask to).

A few client threads open many short connections at once. Each connection
first pipelines frames the server answers with BAD_REQUEST and keeps the
connection for (values that are not maps, maps with fields of the wrong
type), reads those replies, then sends one frame the server may close it
over (random bytes, deep nesting, a str32/bin32/array32/map32/ext32 header
declaring up to 4 GiB, a truncated or corrupted request) and its end of file.
Afterwards a fresh PING is answered promptly, the memory and the thread count
are back near their idle values, and the data written before is intact.
"""

import math
import random
import socket
import threading
import time

import msgpack
import pytest

from tests.fakes import assert_error
from tests.helpers import (RawClient, process_status, process_threads, read_until_closed,
                           wait_only_info_connection, wait_until)

pytestmark = pytest.mark.integration

FRAMES = 10_000
WORKERS = 4
PING_BOUND = 2.0  # seconds for a PING on a fresh connection once the fuzz is over (a busy 2-core host)
# Each connection's buffers are freed when it ends, so after the fuzz the
# server should be back within allocator slack of where it was after the
# warm-up. 20 MiB is about 2 KiB per frame: far above that slack, far below
# what a leak of one reply, one request buffer or one thread stack per
# connection would leave behind (a 256 KiB read buffer each would be 250 MiB).
RSS_GROWTH_BOUND_KB = 20 * 1024

DATA = {
    "fz-string": ("SET", "untouched"),
    "fz-counter": ("SET", "41"),
    "fz-list": ("PUSH", "first"),
}


# -- frames the server answers with BAD_REQUEST and keeps the connection for ----------

def non_map(rng: random.Random) -> bytes:
    """A well-formed MessagePack value that is not a map."""
    return msgpack.packb(rng.choice([
        rng.randint(-(2**63), 2**64 - 1), rng.random(), None, rng.random() < 0.5, "PING", b"\x00" * rng.randint(0, 9),
        ["GET", "fz-string"], [[[]]], msgpack.ExtType(rng.randint(0, 127), b"x"), math.nan,
    ]), use_bin_type=True)


BAD_KEYS = [["fz-string"], {"k": "fz-string"}, True, msgpack.ExtType(1, b"fz")]
BAD_VALUES = [["v"], {"v": 1}, False, msgpack.ExtType(2, b"v")]
BAD_INTEGERS = [-1, "one", 1.5, 2**63, [1], True]
BAD_TIMEOUTS = [-1, "soon", math.nan, math.inf, [1], True]
BAD_COMMANDS = [7, ["GET"], {"command": "GET"}, b"GET", None, 1.5]


def wrong_fields(rng: random.Random) -> bytes:
    """A request map with a field of the wrong type, aimed at the keys written before the fuzz."""
    request = rng.choice([
        {"command": "SET", "key": rng.choice(BAD_KEYS), "value": "v"},
        {"command": "SET", "key": "fz-string", "value": rng.choice(BAD_VALUES)},
        {"command": "SET", "key": "fz-new", "value": "v", "exp": rng.choice(BAD_INTEGERS + [0])},
        {"command": "DEL", "key": rng.choice(BAD_KEYS)},
        {"command": "INCR", "key": "fz-counter", "offset": rng.choice(BAD_INTEGERS)},
        {"command": "PUSH", "key": "fz-list", "value": rng.choice(BAD_VALUES)},
        {"command": "LPOP", "key": rng.choice(BAD_KEYS)},
        {"command": "BRPOP", "key": "fz-list", "timeout": rng.choice(BAD_TIMEOUTS)},
        {"command": "ECHO", "message": rng.choice(BAD_VALUES)},
        {"command": rng.choice(BAD_COMMANDS), "key": "fz-string"},
    ])
    return msgpack.packb(request, use_bin_type=True)


# -- frames the server may close the connection over -----------------------------------

HEADERS_32 = [b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9\x01"]  # str, bin, array, map, ext (type 1)


def huge_header(rng: random.Random) -> bytes:
    """A 32-bit length header declaring up to 4 GiB, not followed by the bytes it promises."""
    header = rng.choice(HEADERS_32)
    return header[:1] + rng.randint(1 << 20, 2**32 - 1).to_bytes(4, "big") + header[1:]


def closing_frame(rng: random.Random) -> bytes:
    """A frame after which the server answers with errors at most, and may close the connection."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 64))
    if kind == 1:
        opener = rng.choice([b"\x91", b"\x81\xa1k", b"\xdd\x00\x00\x00\x01"])
        return opener * rng.randint(1000, 3000) + b"\x01"
    if kind == 2:
        return huge_header(rng) + rng.randbytes(rng.randint(0, 16))
    if kind == 3:  # a request whose value declares a huge length
        return b"\x83" + b"".join(msgpack.packb(x) for x in ("command", "SET", "key", "fz-new", "value")) \
            + huge_header(rng)
    # Read-only requests, cut short or with one byte changed: one changed byte
    # cannot turn GET, EXISTS or LLEN into a write that succeeds.
    frame = bytearray(msgpack.packb({"command": rng.choice(["GET", "EXISTS", "LLEN"]),
                                     "key": rng.choice(list(DATA))}))
    if kind == 4:
        return bytes(frame[:rng.randrange(1, len(frame))])
    frame[rng.randrange(len(frame))] = rng.getrandbits(8)
    return bytes(frame)


def assert_well_formed(reply: dict) -> None:
    assert isinstance(reply, dict) and reply.get("status") in ("OK", "ERROR"), reply
    if reply["status"] == "ERROR":
        assert reply.get("code") != "INTERNAL", reply


def session(port: int, rng: random.Random) -> int:
    """Run one fuzz connection; return how many frames it sent."""
    kept = [frame for _ in range(rng.randint(0, 8)) for frame in (non_map(rng), wrong_fields(rng))]
    with RawClient(port, timeout=10) as client:
        if kept:
            client.send_raw(b"".join(kept))
            for _ in kept:
                assert_error(client.read(), "BAD_REQUEST")
        client.send_raw(closing_frame(rng))
        client.sock.shutdown(socket.SHUT_WR)  # the server sees the frame's end, then EOF
        for reply in read_until_closed(client):
            assert_well_formed(reply)
    return len(kept) + 1


def fuzz(port: int, frames: int, seed: int) -> None:
    """Send at least `frames` malformed frames from WORKERS threads; re-raise the first failure."""
    failures = []

    def worker(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        sent = 0
        try:
            while sent < frames / WORKERS:
                sent += session(port, rng)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a fuzz worker did not finish in 60 s"
    if failures:
        raise failures[0]


def test_ten_thousand_malformed_frames_leave_the_server_responsive_lean_and_intact(server):
    for key, (command, value) in DATA.items():
        assert server.call(command, key=key, value=value) == {"status": "OK"}
    digest = server.info()["digest"]
    pid = server.proc.pid

    fuzz(server.port, 500, seed=1)  # warm-up: thread stacks, allocator arenas, code paths
    wait_only_info_connection(server)
    rss_before, threads_before = process_status(pid, "VmRSS"), process_threads(pid)

    fuzz(server.port, FRAMES, seed=2)

    with server.client(timeout=5) as fresh:
        started = time.monotonic()
        assert fresh.call("PING") == {"status": "OK", "message": "PONG"}
        assert time.monotonic() - started < PING_BOUND
    wait_only_info_connection(server)
    wait_until(lambda: process_threads(pid) <= threads_before, timeout=10,
               message="the thread count back to %d" % threads_before)
    growth = process_status(pid, "VmRSS") - rss_before
    assert growth < RSS_GROWTH_BOUND_KB, "RSS grew by %d kB" % growth
    info = server.info()
    assert info["digest"] == digest and info["keys"] == len(DATA)
    assert server.call("GET", key="fz-string") == {"status": "OK", "value": "untouched"}
    assert "Traceback" not in server.log_text()

"""Unit tests of the connection loop (geomys.net.ClientHandler) fed by a stand-in socket: no network, no threads."""

import msgpack

from geomys import net
from geomys.clock import SystemClock
from geomys.engine import Context, Engine
from geomys.store import Store


class StandInSocket:
    """Hands over the given reads one per recv, then end of stream; records every sendall."""

    def __init__(self, reads: list) -> None:
        self.reads = iter(reads)
        self.sent: list[bytes] = []

    def setsockopt(self, *args) -> None:
        pass

    def recv(self, size: int) -> bytes:
        return next(self.reads, b"")

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


class StandInServer:
    tls = None
    drainer = None
    max_request_bytes = 64 * 1024 * 1024

    def __init__(self, engine: Engine) -> None:
        self.engine = engine


def serve(engine: Engine, reads: list) -> StandInSocket:
    """Run one connection's loop over `reads`; return the socket with what was sent."""
    sock = StandInSocket(reads)
    handler = object.__new__(net.ClientHandler)
    handler.request, handler.client_address, handler.server = sock, ("127.0.0.1", 1), StandInServer(engine)
    handler.setup()
    handler._serve()
    return sock


def test_replies_to_a_pipeline_of_big_reads_go_out_a_slice_at_a_time():
    engine = Engine(Store(), SystemClock())
    value = "x" * (300 * 1024)
    engine.execute({"command": "SET", "key": "big", "value": value}, Context(engine))
    one_reply = len(msgpack.packb({"status": "OK", "value": value}))
    pipeline = b"".join(msgpack.packb({"command": "GET", "key": "big"}) for _ in range(20))
    sock = serve(engine, [pipeline])
    assert len(sock.sent) > 1
    assert all(len(data) < net.SEND_SLICE_BYTES + one_reply for data in sock.sent)
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * 1024 * 1024)
    unpacker.feed(b"".join(sock.sent))
    replies = list(unpacker)
    assert replies == [{"status": "OK", "value": value}] * 20


def decoded(sent: list) -> list:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(b"".join(sent))
    return list(unpacker)


def sets(first: int, count: int) -> bytes:
    return b"".join(msgpack.packb({"command": "SET", "key": "k%d" % i, "value": "v"})
                    for i in range(first, first + count))


def test_a_pipeline_of_writes_answered_ok_goes_out_in_one_send():
    engine = Engine(Store(), SystemClock())
    sock = serve(engine, [sets(0, 16)])
    assert len(sock.sent) == 1 and decoded(sock.sent) == [{"status": "OK"}] * 16


def test_a_pipeline_with_one_reply_other_than_ok_gets_each_reply_in_its_place():
    engine = Engine(Store(), SystemClock())
    engine.execute({"command": "SET", "key": "k3", "value": "old"}, Context(engine))
    last = msgpack.packb({"command": "GET", "key": "k3"})
    sock = serve(engine, [sets(0, 6) + last])
    replies = decoded(sock.sent)
    assert replies[:3] == [{"status": "OK"}] * 3 and replies[4:6] == [{"status": "OK"}] * 2
    assert replies[3]["code"] == "KEY_EXISTS" and replies[6] == {"status": "OK", "value": "old"}


def test_all_ok_packs_only_a_pipeline_answered_only_ok_that_fits_a_slice():
    ok, other = net.OK, {"status": "OK", "value": "v"}
    assert net.OKS_PER_SLICE * len(net.OK_BYTES) <= net.SEND_SLICE_BYTES
    assert net._all_ok([ok] * 3) == net.OK_BYTES * 3
    assert net._all_ok([ok, {"status": "OK"}]) == net.OK_BYTES * 2  # an equal map packs the same
    assert net._all_ok([ok, other, ok]) is None
    assert net._all_ok([other, ok]) is None
    assert net._all_ok([ok] * net.OKS_PER_SLICE) is not None
    assert net._all_ok([ok] * (net.OKS_PER_SLICE + 1)) is None


def test_more_oks_than_a_slice_holds_go_out_a_slice_at_a_time():
    engine = Engine(Store(), SystemClock())
    count = net.OKS_PER_SLICE + 10
    sock = serve(engine, [sets(0, count)])  # one read: the stand-in socket ignores recv's size
    assert len(sock.sent) > 1
    assert decoded(sock.sent) == [{"status": "OK"}] * count
    assert all(len(data) <= net.SEND_SLICE_BYTES + len(net.OK_BYTES) for data in sock.sent)

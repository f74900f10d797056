"""The outbox (geomys.outbox) on socket pairs, and the connection loop handing writethrough replies to it.

The second half runs the real ClientHandler on a loopback port in this
process, with an append-only file whose fsync the test holds shut: only so
can a test see that a reply waits for the fsync covering its record.
"""

import socket
import threading

import msgpack
import pytest

from geomys import aof as aof_mod
from geomys import net, records
from geomys.clock import SystemClock
from geomys.engine import Engine
from geomys.errors import InternalError
from geomys.outbox import Outbox
from geomys.store import Store
from tests.helpers import wait_until
from tests.unit.test_aof import GatedFsync

pytestmark = pytest.mark.skipif(not net.MSG_DONTWAIT, reason="the outbox needs MSG_DONTWAIT (Linux)")


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    theirs.settimeout(10)
    yield ours, theirs
    ours.close()
    theirs.close()


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the other end closed after %d of %d bytes" % (len(data), size)
        data += chunk
    return data


def test_delivered_replies_are_sent_and_the_hold_is_let_go(pair):
    ours, theirs = pair
    outbox = Outbox(ours)
    outbox.hold()
    outbox.post(b"one-two", 2)
    outbox.deliver(None)
    assert receive(theirs, 7) == b"one-two"
    assert outbox._hold.acquire(blocking=False), "the hold should be free once the replies are out"


def test_replies_whose_records_will_never_be_safe_become_that_error_each(pair):
    ours, theirs = pair
    outbox = Outbox(ours)
    outbox.hold()
    outbox.post(b"never sent", 3)
    outbox.deliver(InternalError("the append-only file could not be written"))
    error = {"status": "ERROR", "code": "INTERNAL", "message": "the append-only file could not be written"}
    packed = msgpack.packb(error)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(receive(theirs, 3 * len(packed)))
    assert list(unpacker) == [error] * 3


def test_a_reader_too_slow_for_the_payload_gets_the_rest_from_another_thread_while_the_hold_stays(pair):
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4096  # 1 MiB: far more than the socket pair buffers
    outbox = Outbox(ours)
    outbox.hold()
    outbox.post(payload, 1)
    delivered = threading.Event()
    threading.Thread(target=lambda: (outbox.deliver(None), delivered.set()), daemon=True).start()
    assert delivered.wait(10), "deliver blocked on a reader that does not read"
    assert not outbox._hold.acquire(blocking=False), "the hold must stay until the rest is sent"
    assert receive(theirs, len(payload)) == payload
    assert outbox._hold.acquire(timeout=10), "the hold should be let go once everything was sent"


def test_delivering_to_a_client_that_is_gone_lets_go_of_the_hold(pair):
    ours, theirs = pair
    theirs.close()
    outbox = Outbox(ours)
    outbox.hold()
    outbox.post(b"lost", 1)
    outbox.deliver(None)
    assert outbox._hold.acquire(blocking=False)


def test_release_without_delivery_drops_the_posted_replies(pair):
    outbox = Outbox(pair[0])
    outbox.hold()
    outbox.post(b"x" * 1000, 1)
    outbox.release()
    assert outbox._data is None and outbox._hold.acquire(blocking=False)


# -- the connection loop with a held fsync -------------------------------------------------------


@pytest.fixture
def held_server(tmp_path):
    """A writethrough server in this process whose fsync the test holds: (port, GatedFsync, aof, engine)."""
    path = tmp_path / "db.aof"
    fsync = GatedFsync(path)
    store = Store()
    engine = Engine(store, SystemClock())
    aof = aof_mod.AppendOnlyFile(str(path), aof_mod.WRITETHROUGH, fsync=fsync)
    aof.open()
    with store.lock:
        aof.replay(lambda record: records.apply(store, record))
    aof.start(store.lock, store.snapshot)
    engine.add_sink(aof)
    server = net.GeomysServer(("127.0.0.1", 0), engine, max_clients=16, max_request_bytes=1 << 20)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], fsync, aof, engine
    fsync.gate.set()
    server.shutdown()
    server.server_close()
    aof.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def replies(sock: socket.socket, unpacker: msgpack.Unpacker, count: int) -> list:
    got = []
    for _ in range(1000):
        got.extend(unpacker)
        if len(got) >= count:
            return got
        unpacker.feed(sock.recv(65536))
    raise AssertionError("only %d of %d replies" % (len(got), count))


def test_a_write_reply_waits_for_its_fsync_and_later_replies_keep_their_order(held_server):
    port, fsync, aof, engine = held_server
    with connect(port) as sock:
        unpacker = msgpack.Unpacker(raw=False)
        fsync.gate.clear()
        fsync.entered.clear()
        sock.sendall(msgpack.packb({"command": "SET", "key": "k", "value": "v"}))
        assert fsync.entered.wait(10), "the flusher should be in the fsync of the SET"
        wait_until(lambda: aof._waiters, message="the SET's reply to wait for its fsync")
        # A second read of the same connection, while the SET's reply is still held.
        sock.sendall(msgpack.packb({"command": "GET", "key": "k"}) + msgpack.packb({"command": "PING"}))
        wait_until(lambda: sum(ctx.commands for ctx in engine._clients) == 3,
                   message="the second read to be executed while the SET's reply waits")
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            sock.recv(1)  # nothing may leave before the fsync: not the SET's reply, nor those after it
        sock.settimeout(10)
        fsync.gate.set()
        assert replies(sock, unpacker, 3) == [
            {"status": "OK"}, {"status": "OK", "value": "v"}, {"status": "OK", "message": "PONG"}]
    assert ("durable", 1) in fsync.events


def test_a_client_that_leaves_while_its_reply_waits_ends_its_thread_and_others_are_served(held_server):
    port, fsync, aof, engine = held_server
    fsync.gate.clear()
    leaving = connect(port)
    leaving.sendall(msgpack.packb({"command": "SET", "key": "gone", "value": "v"}))
    wait_until(lambda: aof._waiters, message="the reply to wait for its fsync")
    leaving.close()
    fsync.gate.set()
    wait_until(lambda: not engine._clients, message="the connection that left to end")
    with connect(port) as sock:
        sock.sendall(msgpack.packb({"command": "GET", "key": "gone"}))
        assert replies(sock, msgpack.Unpacker(raw=False), 1) == [{"status": "OK", "value": "v"}]


def outbox_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "geomys-outbox")


def test_a_client_that_never_reads_stops_its_own_connection_only_and_its_threads_end_with_it(held_server):
    port, fsync, aof, engine = held_server
    value = "x" * (256 * 1024)
    with connect(port) as sock:
        sock.sendall(msgpack.packb({"command": "SET", "key": "big", "value": value}))
        assert replies(sock, msgpack.Unpacker(raw=False), 1) == [{"status": "OK"}]
    slow = connect(port)
    # A write and a 256 KiB read per round: with the fsync held until the
    # reply waits for it, every round's replies go through the outbox.
    pair = msgpack.packb({"command": "INCR", "key": "n"}) + msgpack.packb({"command": "GET", "key": "big"})
    try:
        for rounds in range(1, 401):
            fsync.gate.clear()
            slow.sendall(pair)
            wait_until(lambda: aof._waiters, message="round %d's replies to wait for the fsync" % rounds)
            fsync.gate.set()
            wait_until(lambda: not aof._waiters, message="round %d's replies to be delivered" % rounds)
            if outbox_threads():
                break
        assert outbox_threads() == 1, "%d rounds never filled the slow client's socket" % rounds
        [slow_ctx] = engine._clients
        before = slow_ctx.commands
        slow.sendall(pair)
        wait_until(lambda: slow_ctx.commands == before + 2, message="the next round to be executed")
        # Its replies wait behind those the outbox thread is still sending.
        with connect(port) as other:
            unpacker = msgpack.Unpacker(raw=False)
            for i in range(5):
                other.sendall(msgpack.packb({"command": "SET", "key": "o%d" % i, "value": "v"}))
                assert replies(other, unpacker, 1) == [{"status": "OK"}]
    finally:
        slow.close()
    wait_until(lambda: not engine._clients and not outbox_threads(), message="the slow client's threads to end")

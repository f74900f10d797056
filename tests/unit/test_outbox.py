"""The outbox (geomys.outbox) on socket pairs, and the connection loop handing writethrough replies to it.

The second half runs the real ClientHandler on a loopback port in this
process, with an append-only file whose fsync the test holds shut: only so
can a test see that a reply waits for the fsync covering its record.
"""

import socket
import threading
import time
from types import SimpleNamespace

import msgpack
import pytest

from geomys import aof as aof_mod
from geomys import net, records
from geomys.clock import SystemClock
from geomys.engine import Engine
from geomys.errors import InternalError
from geomys.outbox import Drainer, Outbox
from geomys.store import Store
from tests.helpers import wait_until
from tests.unit.test_aof import GatedFsync

pytestmark = pytest.mark.skipif(not net.MSG_DONTWAIT, reason="the outbox needs MSG_DONTWAIT")

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: far more than a socket pair with small buffers holds


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    theirs.settimeout(10)
    yield ours, theirs
    ours.close()
    theirs.close()


def small_buffers(ours: socket.socket) -> socket.socket:
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return ours


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the other end closed after %d of %d bytes" % (len(data), size)
        data += chunk
    return data


def is_held(outbox: Outbox) -> bool:
    return outbox._hold.locked()


def deliver_in_thread(outbox: Outbox, error=None) -> None:
    """Call deliver from a thread of its own, as the flusher does, and fail if it blocks."""
    done = threading.Event()
    threading.Thread(target=lambda: (outbox.deliver(error), done.set()), daemon=True).start()
    assert done.wait(10), "deliver blocked"


def test_delivered_replies_are_sent_and_the_hold_is_let_go(pair):
    ours, theirs = pair
    outbox = Outbox(ours, Drainer())
    outbox.hold()
    outbox.post(b"one-two", 2)
    outbox.deliver(None)
    assert receive(theirs, 7) == b"one-two"
    assert not is_held(outbox), "the hold should be free once the replies are out"


def test_replies_whose_records_will_never_be_safe_become_that_error_each(pair):
    ours, theirs = pair
    outbox = Outbox(ours, Drainer())
    outbox.hold()
    outbox.post(b"never sent", 3)
    outbox.deliver(InternalError("the append-only file could not be written"))
    error = {"status": "ERROR", "code": "INTERNAL", "message": "the append-only file could not be written"}
    packed = msgpack.packb(error)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(receive(theirs, 3 * len(packed)))
    assert list(unpacker) == [error] * 3


def test_what_a_slow_reader_cannot_take_at_once_the_drainer_sends_and_the_hold_stays_till_then(pair):
    ours, theirs = pair
    drainer = Drainer()
    outbox = Outbox(small_buffers(ours), drainer)
    outbox.hold()
    outbox.post(PAYLOAD, 1)
    deliver_in_thread(outbox)
    assert is_held(outbox) and drainer.busy == 1, "the hold must stay until the rest is sent"
    assert receive(theirs, len(PAYLOAD)) == PAYLOAD
    wait_until(lambda: not is_held(outbox), message="the hold to be let go once everything was sent")
    assert drainer.busy == 0


def test_the_drainer_serves_each_slow_reader_as_it_reads_whatever_the_others_do():
    drainer = Drainer()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        outboxes = [Outbox(small_buffers(ours), drainer) for ours, _ in pairs]
        for outbox in outboxes:
            outbox.hold()
            outbox.post(PAYLOAD, 1)
            deliver_in_thread(outbox)
        assert drainer.busy == 2
        # The first client never reads; the second reads all of its replies.
        reader = pairs[1][1]
        reader.settimeout(10)
        assert receive(reader, len(PAYLOAD)) == PAYLOAD
        wait_until(lambda: not is_held(outboxes[1]), message="the reading client's hold to be let go")
        assert is_held(outboxes[0]) and drainer.busy == 1
    finally:
        for ours, theirs in pairs:
            theirs.close()
    wait_until(lambda: drainer.busy == 0 and not is_held(outboxes[0]),
               message="the drainer to give up on the client that left")
    for ours, _ in pairs:
        ours.close()


def test_when_no_thread_can_finish_the_send_the_connection_is_closed_and_the_hold_let_go(pair, monkeypatch):
    ours, theirs = pair
    drainer = Drainer()

    def cannot_start(*args) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    outbox = Outbox(small_buffers(ours), drainer)
    outbox.hold()
    outbox.post(PAYLOAD, 1)
    outbox.deliver(None)
    monkeypatch.undo()
    assert not is_held(outbox)
    received = b""
    for _ in range(10000):
        chunk = theirs.recv(65536)
        if not chunk:
            break
        received += chunk
    assert 0 < len(received) < len(PAYLOAD), "the client should see its connection end, not hang"


def test_delivering_to_a_client_that_is_gone_lets_go_of_the_hold(pair):
    ours, theirs = pair
    theirs.close()
    outbox = Outbox(ours, Drainer())
    outbox.hold()
    outbox.post(b"lost", 1)
    outbox.deliver(None)
    assert not is_held(outbox)


def test_release_without_delivery_drops_the_posted_replies(pair):
    outbox = Outbox(pair[0], Drainer())
    outbox.hold()
    outbox.post(b"x" * 1000, 1)
    outbox.release()
    assert outbox._data is None and not is_held(outbox)


# -- the connection loop with a held fsync -------------------------------------------------------


@pytest.fixture
def held(tmp_path, monkeypatch):
    """A writethrough server in this process whose fsync the test can hold shut.

    Attributes: port, fsync (a GatedFsync), aof, engine, server, and
    deliveries: how many times Outbox.deliver has returned.
    """
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
    state = SimpleNamespace(port=server.server_address[1], fsync=fsync, aof=aof, engine=engine, server=server,
                            deliveries=0)
    deliver = Outbox.deliver

    def counted(outbox, error) -> None:
        deliver(outbox, error)
        state.deliveries += 1  # only the flusher delivers: no lock needed

    monkeypatch.setattr(Outbox, "deliver", counted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
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


def commands_run(engine: Engine) -> int:
    return sum(ctx.commands for ctx in list(engine._clients))


def test_a_write_reply_waits_for_its_fsync_and_later_replies_keep_their_order(held):
    with connect(held.port) as sock:
        unpacker = msgpack.Unpacker(raw=False)
        held.fsync.gate.clear()
        held.fsync.entered.clear()
        sock.sendall(msgpack.packb({"command": "SET", "key": "k", "value": "v"}))
        assert held.fsync.entered.wait(10), "the flusher should be in the fsync of the SET"
        wait_until(lambda: held.aof._waiters, message="the SET's reply to wait for its fsync")
        # A second read of the same connection, while the SET's reply is still held.
        sock.sendall(msgpack.packb({"command": "GET", "key": "k"}) + msgpack.packb({"command": "PING"}))
        wait_until(lambda: commands_run(held.engine) == 3,
                   message="the second read to be executed while the SET's reply waits")
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            sock.recv(1)  # nothing may leave before the fsync: not the SET's reply, nor those after it
        sock.settimeout(10)
        held.fsync.gate.set()
        assert replies(sock, unpacker, 3) == [
            {"status": "OK"}, {"status": "OK", "value": "v"}, {"status": "OK", "message": "PONG"}]
    assert ("durable", 1) in held.fsync.events


@pytest.fixture
def slow_callbacks(monkeypatch):
    """Have the flusher dawdle between marking records durable and sending their replies."""
    call_back = aof_mod.AppendOnlyFile._call_back
    started = threading.Event()

    def late(settled) -> None:
        if settled:
            started.set()
            time.sleep(0.3)  # the window in which a reply safe at once could overtake these
        call_back(settled)

    monkeypatch.setattr(aof_mod.AppendOnlyFile, "_call_back", staticmethod(late))
    return started


def test_a_reply_safe_at_once_still_waits_behind_one_the_flusher_has_not_sent(held, slow_callbacks):
    with connect(held.port) as sock:
        sock.sendall(msgpack.packb({"command": "SET", "key": "k", "value": "v"}))
        assert slow_callbacks.wait(10)  # the SET is durable, its reply not sent yet
        sock.sendall(msgpack.packb({"command": "PING"}))  # rests on nothing unsaved: safe at once
        assert replies(sock, msgpack.Unpacker(raw=False), 2) == [{"status": "OK"}, {"status": "OK", "message": "PONG"}]


def test_a_connection_closes_only_after_the_reply_on_its_way_is_delivered(held, slow_callbacks, monkeypatch):
    events = []
    shutdown_request, send_now = held.server.shutdown_request, Outbox.send_now
    monkeypatch.setattr(held.server, "shutdown_request", lambda request: (events.append("closed"),
                                                                          shutdown_request(request)))
    monkeypatch.setattr(Outbox, "send_now", lambda outbox, data: (events.append("sent"), send_now(outbox, data))[1])
    leaving = connect(held.port)
    leaving.sendall(msgpack.packb({"command": "SET", "key": "gone", "value": "v"}))
    assert slow_callbacks.wait(10)
    leaving.close()  # while the flusher is about to deliver its reply
    wait_until(lambda: "closed" in events, message="the connection to be closed")
    assert events == ["sent", "closed"]
    with connect(held.port) as sock:
        sock.sendall(msgpack.packb({"command": "GET", "key": "gone"}))
        assert replies(sock, msgpack.Unpacker(raw=False), 1) == [{"status": "OK", "value": "v"}]


def test_a_client_that_never_reads_stops_its_own_connection_only_and_leaves_nothing_behind(held):
    value = "x" * (256 * 1024)
    with connect(held.port) as sock:
        sock.sendall(msgpack.packb({"command": "SET", "key": "big", "value": value}))
        assert replies(sock, msgpack.Unpacker(raw=False), 1) == [{"status": "OK"}]
    slow = connect(held.port)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    drainer = held.server.drainer
    # A write and a 256 KiB read per round: with the fsync held until the
    # reply waits for it, every round's replies go through the outbox.
    pair = msgpack.packb({"command": "INCR", "key": "n"}) + msgpack.packb({"command": "GET", "key": "big"})
    try:
        for rounds in range(1, 401):
            held.fsync.gate.clear()
            slow.sendall(pair)
            wait_until(lambda: held.aof._waiters, message="round %d's replies to wait for the fsync" % rounds)
            delivered = held.deliveries
            held.fsync.gate.set()
            wait_until(lambda: held.deliveries > delivered, message="round %d's replies to be delivered" % rounds)
            if drainer.busy:
                break
        assert drainer.busy == 1, "%d rounds never filled the slow client's socket" % rounds
        before = commands_run(held.engine)
        slow.sendall(pair)
        wait_until(lambda: commands_run(held.engine) == before + 2, message="the next round to be executed")
        # Its replies wait behind those the drainer is still sending; others are served.
        with connect(held.port) as other:
            unpacker = msgpack.Unpacker(raw=False)
            for i in range(5):
                other.sendall(msgpack.packb({"command": "SET", "key": "o%d" % i, "value": "v"}))
                assert replies(other, unpacker, 1) == [{"status": "OK"}]
    finally:
        slow.close()
    wait_until(lambda: not held.engine._clients and not drainer.busy, message="the slow client's connection to end")

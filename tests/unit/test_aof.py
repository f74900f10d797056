"""Unit tests of the append-only file: codec, replay of damaged files, repair, group commit, compaction.

Files live in tmp_path; the engine and store are the real ones, driven in-process.
Where a test needs to pause the flusher or the compactor, it injects an fsync
that waits on an event, so nothing here sleeps for a fixed time.
"""

import os
import threading
from collections import deque
from pathlib import Path

import pytest

from geomys import records
from geomys.aof import (HEADER, AofError, AppendOnlyFile, decode_payload, encode_frame, parse,
                        repair)
from geomys.clock import SystemClock
from geomys.engine import Context, Engine
from geomys.errors import InternalError
from geomys.store import Store
from tests.helpers import wait_until

RECORDS = [
    ("SET", "text", "héllo wörld", None),
    ("SET", b"\x00bin-key", b"\xff\x00bytes", 1893456000000),
    ("PUSH", "list", "a"),
    ("PUSH", "list", b"b"),
    ("LPOP", "list"),
    ("RPOP", b"list"),
    ("DEL", "text"),
    ("SET", "counter", "42", None),
]


def file_image(recs) -> bytes:
    return HEADER + b"".join(encode_frame(r) for r in recs)


def replay_file(path, **kwargs) -> tuple[list, AppendOnlyFile]:
    """Open and replay `path`, returning the records seen and the (open) file object."""
    seen = []
    aof = AppendOnlyFile(str(path), "writethrough", **kwargs)
    aof.open()
    try:
        aof.replay(seen.append)
    except AofError:
        aof.close()
        raise
    return seen, aof


def read_records(path) -> list:
    seen = []
    count, end, damage = parse(Path(path).read_bytes(), seen.append)
    assert damage is None
    return seen


def state(store: Store) -> dict:
    """Every key with its value (lists as Python lists) and absolute expiry."""
    with store.lock:
        return {key: (list(entry) if type(entry) is deque else entry, expire_at)
                for key, entry, expire_at in store.entries()}


def replayed_state(path) -> dict:
    """The state the file rebuilds (read directly, so it works while a node has the file open)."""
    store = Store()
    for record in read_records(path):
        records.apply(store, record)
    return state(store)


class Node:
    """A store, an engine and an append-only file wired like GeomysNode does."""

    def __init__(self, path, mode="writethrough", **kwargs) -> None:
        self.store = Store()
        self.engine = Engine(self.store, SystemClock())
        self.aof = AppendOnlyFile(str(path), mode, **kwargs)
        self.aof.open()
        with self.store.lock:
            self.replayed = self.aof.replay(lambda record: records.apply(self.store, record))
        self.aof.start(self.store.lock, self.store.snapshot)
        self.engine.add_sink(self.aof)

    def run(self, command: str, **fields) -> dict:
        """Execute one command and wait for its record like the network layer does before replying."""
        ctx = Context(self.engine)
        reply = self.engine.execute({"command": command, **fields}, ctx)
        self.engine.settle(ctx)
        return reply

    def run_unsettled(self, command: str, **fields) -> Context:
        ctx = Context(self.engine)
        assert self.engine.execute({"command": command, **fields}, ctx)["status"] == "OK"
        return ctx


class GatedFsync:
    """An fsync that can be held shut, counts calls and logs how many records each one made durable."""

    def __init__(self, path, match=None) -> None:
        self.path = str(path)
        self.match = match or (lambda name: name == self.path)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls = 0
        self.events: list[tuple] = []
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        name = os.readlink("/proc/self/fd/%d" % fd)
        if not self.match(name):
            os.fsync(fd)
            return
        with self.lock:
            self.calls += 1
        self.entered.set()
        assert self.gate.wait(10), "test never opened the fsync gate"
        os.fsync(fd)
        if name == self.path:
            covered = parse(Path(self.path).read_bytes(), lambda r: None)[0]
            with self.lock:
                self.events.append(("durable", covered))

    def log_ack(self, seq: int) -> None:
        with self.lock:
            self.events.append(("ack", seq))


# -- codec ---------------------------------------------------------------------------


def test_every_record_type_round_trips_through_the_codec_keeping_str_bytes_and_none():
    frames = file_image(RECORDS)
    seen = []
    count, end, damage = parse(frames, seen.append)
    assert (count, end, damage) == (len(RECORDS), len(frames), None)
    assert seen == RECORDS
    assert [type(r[1]) for r in seen] == [type(r[1]) for r in RECORDS]
    assert type(seen[1][2]) is bytes and seen[0][3] is None


def test_a_payload_that_decodes_but_is_not_a_record_is_rejected():
    import msgpack
    with pytest.raises(ValueError):
        decode_payload(msgpack.packb(["SET", "k"]))
    with pytest.raises(ValueError):
        decode_payload(b"\xc1")


# -- replay of damaged files --------------------------------------------------------------


def test_a_file_that_is_not_an_aof_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"shopping list: eggs, milk\n")
    with pytest.raises(AofError, match="not a Geomys append-only file"):
        replay_file(path)
    assert path.read_bytes() == b"shopping list: eggs, milk\n"


def test_a_torn_header_from_a_crash_at_creation_starts_an_empty_file(tmp_path):
    path = tmp_path / "db.aof"
    path.write_bytes(HEADER[:3])
    seen, aof = replay_file(path)
    aof.close()
    assert seen == [] and path.read_bytes() == HEADER


def test_a_key_whose_stored_expiry_has_passed_is_not_revived_by_replay(tmp_path):
    path = tmp_path / "db.aof"
    now_ms = SystemClock().wall_ms()
    path.write_bytes(file_image([("SET", "gone", "v", now_ms - 1000), ("SET", "kept", "v", now_ms + 60000)]))
    node = Node(path)
    try:
        assert node.run("GET", key="gone")["code"] == "NOT_FOUND"
        assert node.run("GET", key="kept")["value"] == "v"
        with node.store.lock:
            assert node.store.expire_at("kept") == now_ms + 60000
    finally:
        node.aof.close()


def test_discard_starts_an_empty_file_for_a_node_that_takes_the_cluster_state(tmp_path):
    path = tmp_path / "db.aof"
    path.write_bytes(file_image(RECORDS))
    aof = AppendOnlyFile(str(path), "writethrough")
    aof.open()
    aof.discard()
    aof.start(threading.RLock(), list)
    aof.append(1, ("SET", "from-leader", "1", None))
    aof.wait(1)
    assert aof.info()["records_replayed"] == 0
    aof.close()
    assert read_records(path) == [("SET", "from-leader", "1", None)]


def test_discard_refuses_a_file_that_is_not_an_aof(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not ours at all")
    aof = AppendOnlyFile(str(path), "buffered")
    aof.open()
    with pytest.raises(AofError, match="not a Geomys append-only file"):
        aof.discard()
    aof.close()
    assert path.read_bytes() == b"not ours at all"


# -- repair ---------------------------------------------------------------------------


def test_repair_of_an_intact_file_changes_nothing(tmp_path):
    path = tmp_path / "db.aof"
    path.write_bytes(file_image(RECORDS))
    assert repair(str(path)) == 0
    assert path.read_bytes() == file_image(RECORDS)
    assert not list(tmp_path.glob("db.aof.bak-*"))


def test_repair_refuses_a_file_a_running_server_holds(tmp_path):
    path = tmp_path / "db.aof"
    node = Node(path)
    try:
        with pytest.raises(AofError, match="another geomys server is using"):
            repair(str(path))
    finally:
        node.aof.close()


# -- lock file ---------------------------------------------------------------------------


def test_a_second_open_of_the_same_file_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "sub" / "db.aof"
    first = AppendOnlyFile(str(path), "buffered")
    first.open()
    second = AppendOnlyFile(str(path), "writethrough")
    with pytest.raises(AofError, match="another geomys server is using .*db.aof"):
        second.open()
    first.replay(lambda r: None)
    first.close()
    second.open()
    second.replay(lambda r: None)
    second.close()


# -- writethrough group commit -----------------------------------------------------------


def acknowledged_only_after_durable(events: list[tuple]) -> bool:
    """Whether every ("ack"|"read", seq) event comes after a ("durable", n) event with n >= seq."""
    durable = 0
    for kind, value in events:
        if kind == "durable":
            durable = max(durable, value)
        elif value > durable:
            return False
    return True


def test_no_reply_leaves_before_the_fsync_covering_its_record_and_queued_writes_share_one(tmp_path):
    path = tmp_path / "db.aof"
    fsync = GatedFsync(path)
    node = Node(path, fsync=fsync)
    fsync.calls = 0
    fsync.gate.clear()
    writers = 50

    def writer(i: int) -> None:
        ctx = node.run_unsettled("SET", key="k%d" % i, value="v%d" % i)
        node.engine.settle(ctx)
        fsync.log_ack(ctx.wait_seq)

    read_done = threading.Event()

    def reader() -> None:
        # k1 is applied in memory but not yet durable: the GET's reply must wait for it too.
        ctx = node.run_unsettled("GET", key="k1")
        read_done.set()
        node.engine.settle(ctx)
        with fsync.lock:
            fsync.events.append(("read", ctx.wait_seq))

    threads = [threading.Thread(target=writer, args=(0,))]
    threads[0].start()
    assert fsync.entered.wait(10)
    for i in range(1, writers):
        threads.append(threading.Thread(target=writer, args=(i,)))
        threads[-1].start()
    wait_until(lambda: node.engine.seq == writers, message="every writer to queue its record")
    threads.append(threading.Thread(target=reader))
    threads[-1].start()
    assert read_done.wait(10)
    # Every reply now waits for the held fsync or for the one queued behind it.
    assert not [e for e in fsync.events if e[0] != "durable"], "a reply left while its fsync was held"
    fsync.gate.set()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
    assert fsync.calls == 2  # the one held, then one for the 49 that queued behind it
    assert acknowledged_only_after_durable(fsync.events), fsync.events
    assert sorted(e[1] for e in fsync.events if e[0] == "ack") == list(range(1, writers + 1))
    node.aof.close()
    assert len(read_records(path)) == writers


class FsyncOneAtATime:
    """An fsync that, once held, lets each call through only on a permit the test gives."""

    def __init__(self) -> None:
        self.held = False
        self.entered = threading.Semaphore(0)
        self.permits = threading.Semaphore(0)

    def __call__(self, fd: int) -> None:
        if self.held:
            self.entered.release()
            assert self.permits.acquire(timeout=10), "test never let the fsync through"
        os.fsync(fd)


def test_an_fsync_wakes_only_the_writers_whose_record_it_covers(tmp_path):
    fsync = FsyncOneAtATime()
    node = Node(tmp_path / "db.aof", fsync=fsync)
    fsync.held = True
    done = []

    def writer(key: str) -> None:
        ctx = node.run_unsettled("SET", key=key, value="v")
        node.engine.settle(ctx)
        done.append(key)

    first = threading.Thread(target=writer, args=("a",))
    first.start()
    assert fsync.entered.acquire(timeout=10)  # record 1's fsync is running
    second = threading.Thread(target=writer, args=("b",))
    second.start()
    wait_until(lambda: sorted(w[0] for w in node.aof._waiters) == [1, 2], message="both writers to wait")
    second_callback = next(callback for seq, _, callback in node.aof._waiters if seq == 2)
    fsync.permits.release()  # record 1 is on disk; record 2 came too late for that fsync
    wait_until(lambda: done == ["a"], message="the first writer to be acknowledged")
    assert fsync.entered.acquire(timeout=10)  # the flusher is in record 2's fsync now
    # The second writer was never woken: the callback it first left is still the only one waiting.
    assert done == ["a"] and [w[2] for w in node.aof._waiters] == [second_callback]
    fsync.permits.release()
    first.join(10)
    second.join(10)
    assert done == ["a", "b"] and not node.aof._waiters
    fsync.held = False
    node.aof.close()


def test_under_50_concurrent_writers_every_acknowledgement_follows_its_fsync_and_fsyncs_are_shared(tmp_path):
    path = tmp_path / "db.aof"
    fsync = GatedFsync(path)
    node = Node(path, fsync=fsync)
    fsync.calls = 0
    per_thread, writers = 10, 50
    start_together = threading.Barrier(writers)

    def writer(t: int) -> None:
        start_together.wait(10)
        for i in range(per_thread):
            ctx = node.run_unsettled("PUSH", key="list%d" % (t % 3), value="%d-%d" % (t, i))
            node.engine.settle(ctx)
            fsync.log_ack(ctx.wait_seq)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert acknowledged_only_after_durable(fsync.events), fsync.events
    total = per_thread * writers
    # Group commit: writers that queue while an fsync runs share the next one.
    assert fsync.calls <= total // 10, "%d fsyncs for %d writes" % (fsync.calls, total)
    node.aof.close()
    assert replayed_state(path) == state(node.store)


def node_with_failing_fsync(path) -> tuple[Node, list, threading.Event]:
    """A Node whose fsync fails once the returned event is set; the list collects the fatal reports."""
    fatal = []
    armed = threading.Event()

    def failing_fsync(fd: int) -> None:
        if armed.is_set():
            raise OSError(5, "Input/output error")
        os.fsync(fd)

    return Node(path, fsync=failing_fsync, on_fatal=fatal.append), fatal, armed


def test_a_failed_fsync_is_fatal_and_the_write_is_never_acknowledged(tmp_path):
    node, fatal, armed = node_with_failing_fsync(tmp_path / "db.aof")
    assert node.run("SET", key="before", value="1") == {"status": "OK"}
    armed.set()
    ctx = node.run_unsettled("SET", key="lost", value="1")
    with pytest.raises(InternalError):
        node.engine.settle(ctx)
    wait_until(lambda: fatal, message="the failure to be reported as fatal")
    assert len(fatal) == 1 and "Input/output error" in fatal[0]
    later = node.run_unsettled("SET", key="later", value="1")
    with pytest.raises(InternalError):
        node.engine.settle(later)


@pytest.mark.parametrize("batch", [
    [("SET", "a", "1", None), ("PUSH", "l", b"\x00bin"), ("DEL", "a")],
    [("SET", "a", "1", None), ("FLUSHDB",), ("SET", "b", "2", 99)],
    [("RPOP", "l")],
])
def test_extend_writes_what_append_writes_record_by_record(tmp_path, batch):
    one_by_one, extended = tmp_path / "one.aof", tmp_path / "batch.aof"
    for path in (one_by_one, extended):
        _, aof = replay_file(path)
        aof.start(threading.Lock(), list)
        aof.append(1, ("SET", "before", "0", None))
        if path == one_by_one:
            for offset, record in enumerate(batch):
                aof.append(2 + offset, record)
        else:
            aof.extend(2, batch)
        assert aof._last_seq == 1 + len(batch)
        aof.close()
    assert read_records(extended) == read_records(one_by_one)
    assert ("FLUSHDB",) not in batch or read_records(extended) == batch[batch.index(("FLUSHDB",)) + 1:]


# -- calling back instead of waiting (when_safe) ------------------------------------------------


class CallbackLog:
    """A when_safe callback that records each call, with what was on disk when it came."""

    def __init__(self, fsync: "GatedFsync" = None) -> None:
        self.fsync = fsync
        self.calls: list = []
        self.called = threading.Event()

    def __call__(self, error) -> None:
        durable = max((e[1] for e in self.fsync.events if e[0] == "durable"), default=0) if self.fsync else None
        self.calls.append((error, durable))
        self.called.set()


def test_when_safe_calls_back_once_after_the_fsync_that_covers_the_record(tmp_path):
    path = tmp_path / "db.aof"
    fsync = GatedFsync(path)
    node = Node(path, fsync=fsync)
    fsync.gate.clear()
    ctx = node.run_unsettled("SET", key="k", value="v")
    callback = CallbackLog(fsync)
    assert node.aof.when_safe(ctx.wait_seq, callback) is False
    assert fsync.entered.wait(10)
    assert not callback.calls, "called back while the fsync was held"
    fsync.gate.set()
    assert callback.called.wait(10)
    node.aof.close()
    assert callback.calls == [(None, 1)]  # once, with record 1 on disk
    assert node.aof.when_safe(ctx.wait_seq, callback) is True and len(callback.calls) == 1


def test_when_safe_of_a_record_after_the_final_flush_calls_back_at_once_with_the_refusal(tmp_path):
    node = Node(tmp_path / "db.aof")
    node.aof.close()
    ctx = node.run_unsettled("SET", key="late", value="1")
    callback = CallbackLog()
    assert node.aof.when_safe(ctx.wait_seq, callback) is False
    [(error, _)] = callback.calls
    assert isinstance(error, InternalError) and "shutting down" in error.message


def test_when_safe_calls_back_with_the_error_when_the_fsync_fails(tmp_path):
    node, fatal, armed = node_with_failing_fsync(tmp_path / "db.aof")
    armed.set()
    ctx = node.run_unsettled("SET", key="lost", value="1")
    callback = CallbackLog()
    node.aof.when_safe(ctx.wait_seq, callback)
    assert callback.called.wait(10)
    [(error, _)] = callback.calls
    assert isinstance(error, InternalError)
    wait_until(lambda: fatal, message="the failure to be reported as fatal")
    assert len(fatal) == 1


def test_a_callback_that_fails_does_not_stop_the_flusher(tmp_path):
    path = tmp_path / "db.aof"
    fsync = GatedFsync(path)
    node = Node(path, fsync=fsync)
    calls = []

    def broken(error) -> None:
        calls.append(error)
        raise RuntimeError("a bug in a callback")

    fsync.gate.clear()
    ctx = node.run_unsettled("SET", key="a", value="1")
    assert node.aof.when_safe(ctx.wait_seq, broken) is False
    fsync.gate.set()
    wait_until(lambda: calls == [None], message="the callback to be called")
    assert node.run("SET", key="b", value="2") == {"status": "OK"}  # settled by a later fsync
    node.aof.close()
    assert replayed_state(tmp_path / "db.aof") == {"a": ("1", None), "b": ("2", None)}


# -- buffered mode ---------------------------------------------------------------------------


def test_buffered_mode_acknowledges_at_once_and_a_clean_close_writes_everything(tmp_path):
    path = tmp_path / "db.aof"
    node = Node(path, "buffered", flush_interval_ms=60_000)
    for i in range(100):
        assert node.run("INCR", key="n") == {"status": "OK", "value": i + 1}
    assert path.stat().st_size == len(HEADER), "nothing may be written before the interval"
    node.aof.close()
    assert replayed_state(path) == {"n": ("100", None)}


def test_buffered_mode_writes_the_batch_within_the_flush_interval(tmp_path):
    path = tmp_path / "db.aof"
    node = Node(path, "buffered", flush_interval_ms=50)
    try:
        node.run("SET", key="a", value="1")
        wait_until(lambda: node.aof.info()["last_fsync"] is not None, timeout=5, message="the periodic flush")
        assert read_records(path) == [("SET", "a", "1", None)]
    finally:
        node.aof.close()


@pytest.mark.parametrize("mode", ["writethrough", "buffered"])
def test_a_write_that_arrives_after_the_final_flush_is_never_acknowledged(tmp_path, mode):
    path = tmp_path / "db.aof"
    node = Node(path, mode)
    node.run("SET", key="saved", value="1")
    node.aof.close()
    ctx = node.run_unsettled("SET", key="late", value="1")
    with pytest.raises(InternalError, match="shutting down"):
        node.engine.settle(ctx)
    assert replayed_state(path) == {"saved": ("1", None)}


# -- FLUSHDB --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["writethrough", "buffered"])
def test_flushdb_empties_the_file_and_later_writes_follow_it(tmp_path, mode):
    path = tmp_path / "db.aof"
    node = Node(path, mode, flush_interval_ms=60_000)
    for i in range(50):
        node.run("SET", key="old%d" % i, value="x" * 100)
    node.run("FLUSHDB")
    node.run("SET", key="new", value="1")
    node.aof.close()
    assert read_records(path) == [("SET", "new", "1", None)]
    assert replayed_state(path) == {"new": ("1", None)}


# -- compaction ---------------------------------------------------------------------------


def churn(node: Node, rounds: int) -> None:
    """A workload whose log is far longer than the state it leaves."""
    expire_at = SystemClock().wall_ms() + 3_600_000
    node.run("SET", key=b"\x01bin", value=b"\xfe\xff")
    node.run("SET", key="ttl", value="v", exp=3_600_000)
    for i in range(rounds):
        node.run("INCR", key="counter", offset=i)
        node.run("PUSH", key="queue", value="item%d" % i)
        node.run("PUSH", key="queue", value="extra%d" % i)
        node.run("LPOP", key="queue")
        node.run("SET", key="tmp%d" % i, value="x" * 50)
        node.run("DEL", key="tmp%d" % i)
    assert node.store.expire_at("ttl") <= expire_at + 1000


def test_compact_shrinks_the_file_to_the_current_state(tmp_path):
    path = tmp_path / "db.aof"
    node = Node(path)
    churn(node, 100)
    before = path.stat().st_size
    note = node.aof.compact()
    after = path.stat().st_size
    assert after < before / 3 and "compacted" in note
    assert node.aof.info()["file_size"] == after
    assert replayed_state(path) == state(node.store)
    node.run("PUSH", key="queue", value="after-compaction")
    node.run("RPOP", key="queue")
    node.run("INCR", key="counter")
    node.aof.close()
    assert replayed_state(path) == state(node.store)


def compaction_held_at_its_fsync(path, rounds: int):
    """A node after `rounds` of churn, whose COMPACT runs on a thread and is held at the new file's fsync.

    Returns (node, fsync, compactor thread, list that receives COMPACT's result);
    `fsync.gate.set()` lets the compaction finish.
    """
    fsync = GatedFsync(path, match=lambda name: name.endswith(".compact-tmp"))
    node = Node(path, fsync=fsync)
    churn(node, rounds)
    fsync.gate.clear()
    result = []
    compactor = threading.Thread(target=lambda: result.append(node.aof.compact()))
    compactor.start()
    assert fsync.entered.wait(10)
    return node, fsync, compactor, result


def test_writes_made_while_the_snapshot_is_written_end_up_in_the_compacted_file(tmp_path):
    path = tmp_path / "db.aof"
    node, fsync, compactor, result = compaction_held_at_its_fsync(path, 50)
    assert node.aof.info()["compacting"] is True
    node.run("PUSH", key="queue", value="during")
    node.run("LPOP", key="queue")
    node.run("INCR", key="counter", offset=7)
    node.run("SET", key="new", value="during")
    node.run("DEL", key="ttl")
    fsync.gate.set()
    compactor.join(10)
    assert "compacted" in result[0]
    assert replayed_state(path) == state(node.store)
    node.run("SET", key="after", value="1")
    node.aof.close()
    assert replayed_state(path) == state(node.store)
    assert not (tmp_path / "db.aof.compact-tmp").exists()


def test_flushdb_during_compaction_abandons_it_and_the_file_holds_only_later_writes(tmp_path):
    path = tmp_path / "db.aof"
    node, fsync, compactor, result = compaction_held_at_its_fsync(path, 20)
    node.run("FLUSHDB")
    node.run("SET", key="survivor", value="1")
    fsync.gate.set()
    compactor.join(10)
    assert "FLUSHDB" in result[0]
    node.aof.close()
    assert replayed_state(path) == {"survivor": ("1", None)}
    assert not (tmp_path / "db.aof.compact-tmp").exists()


def test_the_file_compacts_itself_once_past_both_thresholds(tmp_path):
    path = tmp_path / "db.aof"
    node = Node(path, compact_min_bytes=4096, compact_growth_percent=100)
    for _ in range(400):
        node.run("INCR", key="n")
    wait_until(lambda: node.aof.info()["compactions"] >= 1, timeout=10, message="an automatic compaction")
    wait_until(lambda: not node.aof.info()["compacting"], timeout=10, message="the compaction to finish")
    assert path.stat().st_size < 4096
    node.aof.close()
    assert replayed_state(path) == {"n": ("400", None)}


def test_a_leftover_compaction_file_is_removed_at_open_and_the_real_file_replays(tmp_path):
    path = tmp_path / "db.aof"
    path.write_bytes(file_image(RECORDS))
    (tmp_path / "db.aof.compact-tmp").write_bytes(HEADER + b"half a snapsh")
    seen, aof = replay_file(path)
    aof.close()
    assert seen == RECORDS
    assert not (tmp_path / "db.aof.compact-tmp").exists()

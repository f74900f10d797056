"""Fault injection on one node: kill -9, torn and damaged files, crashes inside compaction, a full disk.

Scenarios 1 and 3-6 of docs/reliability.md; scenario 2 (no reply before its
record's fsync, group commit) is a unit test in tests/unit/test_aof.py.
Every scenario runs real geomys processes on 127.0.0.1 under client threads
that record every acknowledged write, kills only the processes it started
(by PID), bounds every wait, and fails as vacuous when too little load came
before its fault. `settings` sizes the run (short in the test suite, long
under scripts/faults.py); `figures` keeps what each scenario measured.
"""

import bisect
import logging
import os
import random
import resource
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from geomys import records
from geomys.aof import FRAME_HEADER_SIZE, HEADER, AofError, AppendOnlyFile, decode_payload, parse
from geomys.clock import SystemClock
from geomys.engine import Engine
from geomys.store import Store
from tests.cluster_helpers import WriteLoad, get_many
from tests.faults.conftest import MIN_ACKED_BEFORE_FAULT, FaultSettings, require_load
from tests.helpers import RawClient, ServerProcess, geomys_command, wait_until

pytestmark = pytest.mark.integration

CLIENTS = 50
#: The kill comes after MIN_ACKED_BEFORE_FAULT plus a random share of this many acknowledged writes.
EXTRA_ACKS = 3000
#: Bound of every wait for a load to reach its target.
LOAD_TIMEOUT = 60.0
FLUSH_INTERVAL = 0.2
#: The run's size, read at import so that the timeout marks below can scale with it.
SIZE = FaultSettings()


# -- shared steps ---------------------------------------------------------------------------


def aof_server(start_server, tmp_path: Path, mode: str, **options) -> ServerProcess:
    """Start a server that persists to tmp_path/db.aof."""
    return start_server(persistence=mode, persistence_path=str(tmp_path / "db.aof"), **options)


def start_load(server: ServerProcess, prefix: str, threads: int = CLIENTS) -> WriteLoad:
    """Client threads writing to this one server, reconnecting to it only."""
    return WriteLoad(lambda: [server.port], threads=threads, prefix=prefix, sticky=True).start()


def wait_for_load(load: WriteLoad, target: int, not_before: float = 0.0) -> int:
    """Wait until `load` has `target` acknowledged writes and `not_before` has passed; return its count.

    Gives up after LOAD_TIMEOUT without failing, so that the caller's
    require_load reports a load too small to prove anything as vacuous.
    """
    deadline = time.monotonic() + LOAD_TIMEOUT

    def due() -> bool:
        now = time.monotonic()
        return (load.acked >= target and now >= not_before) or now >= deadline
    wait_until(due, LOAD_TIMEOUT + 5, message="%d acknowledged writes" % target)
    return load.acked


def kill_under_load(server: ServerProcess, load: WriteLoad, target: int, not_before: float = 0.0) -> tuple[int, float]:
    """kill -9 `server` once `load` reached `target` (see wait_for_load), then stop the load.

    Returns (acknowledged writes, monotonic time of the kill).
    """
    wait_for_load(load, target, not_before)
    killed_at = time.monotonic()
    server.kill()
    load.stop()
    return load.acked, killed_at


def read_back(server: ServerProcess, load: WriteLoad) -> dict:
    """Every key `load` wrote or counted, as the server has it now."""
    return get_many(server.port, load.all_keys())


def new_log(server: ServerProcess, mark: int) -> str:
    """What the server logged since `mark` (a length of its log text)."""
    return server.log_text()[mark:]


# -- 1. writethrough: kill -9 under 50 clients --------------------------------------------------


@pytest.mark.timeout(300 + 30 * SIZE.trials)
def test_writethrough_kill_9_at_a_random_moment_under_50_clients_loses_no_acknowledged_write(
        start_server, tmp_path, settings, figures):
    server = aof_server(start_server, tmp_path, "writethrough")
    loads: list[WriteLoad] = []
    for trial in range(settings.trials):
        load = start_load(server, "t%d" % trial)
        acked, _ = kill_under_load(server, load, MIN_ACKED_BEFORE_FAULT + random.randrange(EXTRA_ACKS))
        require_load(acked)
        loads.append(load)
        server.start()
        # The file is kept across trials: each restart must also keep every earlier trial's writes.
        found = [(done, read_back(server, done)) for done in loads]
        figures.add(acked=acked, missing=sum(len(done.discrepancies(data)) for done, data in found),
                    records_replayed=server.info()["persistence"]["records_replayed"])
        for done, data in found:
            done.check(data, "after the kill of trial %d" % trial)


# -- 3. buffered: kill -9 loses at most the last two flush intervals ----------------------------


def incr_floors(load: WriteLoad, cutoff: float) -> dict[int, int]:
    """Per client thread, how many of its INCRs were acknowledged by `cutoff`, at least.

    A thread sends its SET number i only after INCR number i * incrs_per_set
    was acknowledged, so the newest SET acknowledged by `cutoff` bounds them.
    """
    floors: dict[int, int] = {}
    for key, acked_at in load.acked_at.items():
        if acked_at <= cutoff:
            _, thread, number = key.rsplit("-", 2)
            floors[int(thread)] = max(floors.get(int(thread), 0), int(number) * load.incrs_per_set)
    return floors


@pytest.mark.timeout(300 + 30 * SIZE.trials)
def test_buffered_kill_9_loses_only_writes_acknowledged_in_the_last_two_flush_intervals(
        start_server, tmp_path, settings, figures):
    window = 2 * FLUSH_INTERVAL
    server = aof_server(start_server, tmp_path, "buffered", flush_interval_ms=int(FLUSH_INTERVAL * 1000))
    for trial in range(settings.trials):
        load = start_load(server, "b%d" % trial)
        # At a random moment after at least five flushes, so the older writes had their turn on disk.
        not_before = time.monotonic() + random.uniform(5, 10) * FLUSH_INTERVAL
        acked, killed_at = kill_under_load(server, load, MIN_ACKED_BEFORE_FAULT, not_before)
        require_load(acked)
        server.start()
        data = read_back(server, load)
        lost_sets = [k for k, v in load.acked_sets.items() if data.get(k) != v]
        ages = sorted(killed_at - load.acked_at[k] for k in lost_sets)
        floors = incr_floors(load, killed_at - window)
        counters = [int(data.get(load.counter_key(t)) or 0) for t in range(CLIENTS)]
        lost_incrs = sum(max(0, acked - value) for acked, value in zip(load.acked_incrs, counters))
        figures.add(acked=acked, lost=len(lost_sets) + lost_incrs,
                    oldest_lost_ms=round(ages[-1] * 1000) if ages else 0, window_ms=round(window * 1000))
        assert not ages or ages[-1] <= window, (
            "trial %d: %d acknowledged SETs lost, the oldest acknowledged %.0f ms before the kill (window %.0f ms)"
            % (trial, len(ages), ages[-1] * 1000, window * 1000))
        for t, value in enumerate(counters):
            assert floors.get(t, 0) <= value <= load.attempted_incrs[t], (
                "trial %d: counter %d is %d; %d INCRs were acknowledged before the last two intervals, %d sent"
                % (trial, t, value, floors.get(t, 0), load.attempted_incrs[t]))


# -- 4. torn tails, damage mid-file, repair -------------------------------------------------------


def frame_starts(image: bytes) -> list[int]:
    """Start offset of every record of an AOF image (after the header)."""
    starts, offset = [], len(HEADER)
    while offset < len(image):
        starts.append(offset)
        offset += FRAME_HEADER_SIZE + int.from_bytes(image[offset:offset + 4], "big")
    assert offset == len(image), "the image does not end on a record boundary"
    return starts


def digest_of(recs: list) -> str:
    """INFO's digest of the keyspace that `recs` rebuild."""
    store = Store()
    with store.lock:
        for record in recs:
            records.apply(store, record)
    return Engine(store, SystemClock()).digest()


def replay_in_process(path: Path) -> int:
    """Open and replay `path` as a server start does; return the records kept (AofError on damage)."""
    aof = AppendOnlyFile(str(path), "writethrough")
    aof.open()
    try:
        return aof.replay(lambda record: None)
    finally:
        aof.close()


def write_every_record_type(server: ServerProcess) -> None:
    """Append PUSH, LPOP, RPOP, DEL, bin and TTL records, so that the file holds every kind."""
    with server.client() as client:
        for request in ({"command": "PUSH", "key": "list", "value": "a"},
                        {"command": "PUSH", "key": "list", "value": b"\x00b"},
                        {"command": "PUSH", "key": "list", "value": "c"},
                        {"command": "LPOP", "key": "list"},
                        {"command": "RPOP", "key": "list"},
                        {"command": "SET", "key": "gone", "value": "soon"},
                        {"command": "DEL", "key": "gone"},
                        {"command": "SET", "key": b"\xffbin", "value": b"\x00\x01"},
                        {"command": "SET", "key": "with-ttl", "value": "an hour", "exp": 3_600_000}):
            assert client.call(**request)["status"] == "OK", request


def check_start(server: ServerProcess, kept: int, digest: str, dropped: int, what: str) -> None:
    """Start the server on its (damaged) file: it keeps `kept` records, holds `digest`, logs the cut."""
    mark = len(server.log_text())
    server.start()
    info = server.info()
    assert info["persistence"]["records_replayed"] == kept, what
    assert info["digest"] == digest, what
    assert ("torn tail: dropped %d bytes" % dropped in new_log(server, mark)) == (dropped > 0), what
    server.kill()  # nothing was written since the start: a clean stop would only be slower


def real_sample(cases: list, settings) -> list:
    """The cases that also get a real server start: two in the short run, all of them in the long one."""
    return cases if settings.long else random.sample(cases, min(2, len(cases)))


@pytest.mark.timeout(600 if SIZE.long else 300)
def test_torn_tails_are_cut_damage_mid_file_is_refused_with_its_offset_and_repair_keeps_a_backup(
        start_server, tmp_path, settings, figures, caplog):
    server = aof_server(start_server, tmp_path, "writethrough")
    load = start_load(server, "d")
    acked, _ = kill_under_load(server, load, MIN_ACKED_BEFORE_FAULT + random.randrange(EXTRA_ACKS))
    require_load(acked)
    server.start()
    write_every_record_type(server)
    assert server.stop() == 0
    path = tmp_path / "db.aof"
    image = path.read_bytes()
    starts = frame_starts(image)
    recs = [decode_payload(image[s + FRAME_HEADER_SIZE:e]) for s, e in zip(starts, starts[1:] + [len(image)])]
    last = starts[-1]
    digests = {len(recs): digest_of(recs), len(recs) - 1: digest_of(recs[:-1])}

    # Torn tails: a cut at every byte inside the last record, and zero-filled tails after whole records.
    # Each case is (file, records kept, where the kept records end).
    cuts = [(image[:cut], len(recs) - 1, last) for cut in range(last + 1, len(image))]
    zeros = [(image + b"\0" * fill, len(recs), len(image)) for fill in (1, 8, 4096)]
    zeros += [(image[:random.randrange(last + 1, len(image))] + b"\0" * fill, len(recs) - 1, last)
              for fill in (1, 8, 4096)]
    scratch = tmp_path / "scratch.aof"
    for body, kept, end in cuts + zeros:
        scratch.write_bytes(body)
        with caplog.at_level(logging.WARNING, logger="geomys.aof"):
            caplog.clear()
            assert replay_in_process(scratch) == kept, "a torn tail of %d bytes" % (len(body) - end)
        assert scratch.read_bytes() == image[:end]
        assert "torn tail: dropped %d bytes" % (len(body) - end) in caplog.text
    started = real_sample(cuts, settings) + real_sample(zeros, settings)
    for body, kept, end in started:
        path.write_bytes(body)
        check_start(server, kept, digests[kept], len(body) - end, "a torn tail of %d bytes" % (len(body) - end))

    # Damage before the last record: 100 random byte flips, each refused naming its record's offset.
    flips = []
    for position in random.sample(range(len(HEADER), last), 100):
        corrupt = bytearray(image)
        corrupt[position] ^= random.randrange(1, 256)
        flips.append((bytes(corrupt), position, starts[bisect.bisect_right(starts, position) - 1]))
    for corrupt, position, offset in flips:
        scratch.write_bytes(corrupt)
        with pytest.raises(AofError) as refused:
            replay_in_process(scratch)
        assert "byte offset %d" % offset in str(refused.value), "flip at %d: %s" % (position, refused.value)
        assert scratch.read_bytes() == corrupt, "a damaged file must be left untouched"

    # A real start refuses the file; --repair keeps a backup and every record before the damage.
    repaired = real_sample(flips, settings)
    for corrupt, position, offset in repaired:
        path.write_bytes(corrupt)
        mark = len(server.log_text())
        server.start(wait=False)
        assert server.proc.wait(30) == 2, "flip at %d: the server started" % position
        log = new_log(server, mark)
        assert "damaged at byte offset %d" % offset in log and "--persistence_path %s --repair" % path in log
        assert path.read_bytes() == corrupt
        backups = set(tmp_path.glob("db.aof.bak-*"))
        run = subprocess.run(geomys_command() + ["--persistence_path", str(path), "--repair"],
                             env=dict(os.environ, HOME=str(tmp_path)),  # no ~/.geomys/geomys.conf
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert run.returncode == 0 and "byte offset %d" % offset in run.stderr, run.stderr
        backup = set(tmp_path.glob("db.aof.bak-*")) - backups
        assert len(backup) == 1 and backup.pop().read_bytes() == corrupt
        assert path.read_bytes() == image[:offset]
        kept = starts.index(offset)
        check_start(server, kept, digest_of(recs[:kept]), 0, "repaired after a flip at %d" % position)
    figures.add(records=len(recs), torn_cuts=len(cuts), zero_tails=len(zeros), flips=len(flips),
                real_starts=len(started) + len(repaired), repairs=len(repaired))


# -- 5. compaction under 20 clients x 1,000 INCR, kill -9 inside compaction ----------------------------


COUNTER = "the-counter"
INCR_CLIENTS = 20
#: Live data large enough that one compaction lasts long enough to be killed at several points of it.
DATASET_KEYS = 60_000


def fill_dataset(server: ServerProcess) -> dict:
    """SET DATASET_KEYS keys (pipelined); return them."""
    dataset = {"key%06d" % i: "%06d" % i + "v" * 100 for i in range(DATASET_KEYS)}
    items = list(dataset.items())
    with server.client(timeout=60) as client:
        for start in range(0, len(items), 5000):
            part = items[start:start + 5000]
            client.send(*({"command": "SET", "key": k, "value": v} for k, v in part))
            assert all(client.read()["status"] == "OK" for _ in part)
    return dataset


def increment(port: int, each: int) -> int:
    """INCR_CLIENTS clients each send `each` INCRs of COUNTER, one at a time; return the OK replies."""
    def client_run() -> int:
        with RawClient(port, timeout=30) as client:
            replies = [client.call("INCR", key=COUNTER) for _ in range(each)]
        failed = [r for r in replies if r["status"] != "OK"]
        assert not failed, "INCR failed: %s" % failed[:3]
        return len(replies)
    with ThreadPoolExecutor(INCR_CLIENTS) as pool:
        futures = [pool.submit(client_run) for _ in range(INCR_CLIENTS)]
        return sum(f.result(timeout=LOAD_TIMEOUT) for f in futures)


class Compaction:
    """One COMPACT sent on its own connection, whose progress is watched from outside the server."""

    def __init__(self, server: ServerProcess, tmp_file: Path) -> None:
        self.tmp_file = tmp_file
        self.replied = threading.Event()
        self._client = server.client(timeout=LOAD_TIMEOUT)
        self._client.send({"command": "COMPACT"})
        self._thread = threading.Thread(target=self._wait_reply, daemon=True)
        self._thread.start()

    def _wait_reply(self) -> None:
        try:
            self._client.read()
        except (EOFError, OSError):
            return  # killed before it replied
        finally:
            self.replied.set()

    def written(self) -> int:
        """Bytes of the new file written so far (0 before it exists or after the rename)."""
        try:
            return self.tmp_file.stat().st_size
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        self._thread.join(LOAD_TIMEOUT)
        self._client.close()


#: Where the kill lands, as seen from outside: a predicate of (compaction, size of the last snapshot).
KILL_POINTS: dict[str, Callable[[Compaction, int], bool]] = {
    "snapshot starting": lambda c, size: True,
    "snapshot half written": lambda c, size: c.written() >= size // 2 or c.replied.is_set(),
    "snapshot written": lambda c, size: c.written() >= size or c.replied.is_set(),
    "file switched": lambda c, size: c.replied.is_set(),
}


@pytest.mark.timeout(300 + 30 * SIZE.trials)
def test_compaction_under_20_clients_incrementing_one_key_and_kill_9_inside_it_keep_the_counter_exact(
        start_server, tmp_path, settings, figures):
    server = aof_server(start_server, tmp_path, "writethrough")
    path, tmp_file = tmp_path / "db.aof", tmp_path / "db.aof.compact-tmp"

    # 20 clients x 1,000 INCR of one key while COMPACT runs back to back.
    done, compactions = threading.Event(), []

    def compact_while_incrementing() -> None:
        with server.client(timeout=LOAD_TIMEOUT) as client:
            while not done.is_set():
                reply = client.call("COMPACT")
                compactions.append((reply, not done.is_set()))
    compactor = threading.Thread(target=compact_while_incrementing, daemon=True)
    compactor.start()
    try:
        expected = increment(server.port, 1000)
    finally:
        done.set()
        compactor.join(LOAD_TIMEOUT)
    require_load(expected, what="acknowledged INCRs")
    assert all("compacted" in reply.get("message", "") for reply, _ in compactions), compactions
    during = sum(1 for _, running in compactions if running)
    assert during >= 1, "no compaction completed while the clients were incrementing"
    assert server.call("GET", key=COUNTER)["value"] == str(expected)
    server.kill()
    server.start()
    assert server.call("GET", key=COUNTER)["value"] == str(expected), "after kill -9 and restart"
    dataset = fill_dataset(server)
    assert server.call("COMPACT")["status"] == "OK"
    snapshot_size = path.stat().st_size

    # kill -9 at several points inside a compaction of what the clients just incremented, while
    # other writes run into the compaction's tail.
    loads: list[WriteLoad] = []
    mid_write = 0
    for trial in range(settings.trials):
        for point, reached in KILL_POINTS.items():
            expected += increment(server.port, 50)
            load = start_load(server, "c%d-%d" % (trial, len(loads)), threads=4)
            loads.append(load)
            compaction = Compaction(server, tmp_file)
            wait_until(lambda: reached(compaction, snapshot_size), LOAD_TIMEOUT, 0.002, "the kill point: " + point)
            in_progress, writing = not compaction.replied.is_set(), tmp_file.exists()
            server.kill()
            load.stop()
            compaction.close()
            mid_write += writing
            server.start()
            assert not tmp_file.exists(), "the interrupted compaction's file was not removed"
            value = int(server.call("GET", key=COUNTER)["value"])
            figures.add(kill_point=point, compaction_in_progress=in_progress, counter_exact=value == expected)
            assert value == expected, "killed at %r (compaction in progress: %s, new file being written: %s): " \
                "counter %d, expected %d" % (point, in_progress, writing, value, expected)
            for earlier in loads:
                earlier.check(read_back(server, earlier), "after a kill at %r" % point)
            assert get_many(server.port, dataset) == dataset
    figures.add(incr_acked=expected, compactions_during_incr=during, kills_while_writing_new_file=mid_write)
    assert mid_write >= settings.trials, "too few kills landed while the new file was being written"


# -- 6. disk full -------------------------------------------------------------------------------


def file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn capping every file the server writes at `limit` bytes (RLIMIT_FSIZE)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run_until_disk_full(server: ServerProcess, limit: int, prefix: str) -> tuple[WriteLoad, int, str]:
    """Start `server` with files capped at `limit` bytes, load it until it stops itself.

    Returns the load, the exit status and what the server logged meanwhile.
    """
    mark = len(server.log_text())
    server.start(preexec_fn=file_size_limit(limit))
    load = start_load(server, prefix, threads=20)
    try:
        status = server.proc.wait(LOAD_TIMEOUT)
    finally:
        load.stop()
    return load, status, new_log(server, mark)


def whole_records_end(path: Path) -> int:
    """Where the last whole record of the file ends."""
    return parse(path.read_bytes(), lambda record: None)[1]


def test_a_full_disk_stops_the_server_before_any_unwritten_write_is_acknowledged(
        start_server, tmp_path, figures):
    path = tmp_path / "db.aof"
    server = aof_server(start_server, tmp_path, "writethrough")
    before = start_load(server, "before", threads=20)
    wait_for_load(before, MIN_ACKED_BEFORE_FAULT + random.randrange(EXTRA_ACKS))
    before.stop()
    require_load(before.acked)
    assert server.stop() == 0
    loads = [before]

    # The limit on a record boundary: the first write fails outright (EFBIG).
    size = path.stat().st_size
    at_boundary, status, log = run_until_disk_full(server, size, "boundary")
    loads.append(at_boundary)
    assert status == 1 and "CRITICAL" in log and "File too large" in log, log
    assert at_boundary.acked == 0 and path.stat().st_size == size

    # Room for a thousand or so writes: those that fit are acknowledged, the one that does not is fatal.
    limit = size + 96 * 1024 + 1
    filling, status, log = run_until_disk_full(server, limit, "filling")
    loads.append(filling)
    require_load(filling.acked, what="writes acknowledged before the disk filled")
    assert status == 1 and "CRITICAL" in log, log
    end = whole_records_end(path)
    partial = path.stat().st_size - end

    # One byte of room, inside a record: a short write, which counts as a failure.
    short, status, log = run_until_disk_full(server, end + 1, "short")
    loads.append(short)
    assert status == 1 and "short write: 1 of" in log, log
    assert ("torn tail: dropped %d bytes" % partial in log) == (partial > 0), log
    assert short.acked == 0 and path.stat().st_size == end + 1

    # Limit lifted: the torn byte is cut and every acknowledged write is there.
    mark = len(server.log_text())
    server.start()
    assert "torn tail: dropped 1 bytes" in new_log(server, mark)
    found = [(load, read_back(server, load)) for load in loads]
    figures.add(acked_before=before.acked, acked_until_full=filling.acked, limit_room_bytes=limit - size,
                missing=sum(len(load.discrepancies(data)) for load, data in found))
    for load, data in found:
        load.check(data, "after the restart without a limit (%s)" % load.prefix)

"""The append-only file: record codec, group-commit/buffered flusher, replay, repair, compaction.

Imports only geomys.records (the record encoding) and
geomys.errors, never the store or the commands. Client-handler threads call
`extend` or `append` (store lock held), then `wait` or `when_safe` (no lock);
the `aof-flusher` thread does every write and fsync, then calls back the
waiters it settled; COMPACT handlers and the `aof-compactor` thread run
`compact`; the main thread calls open/replay/start/close. docs/persistence.md
describes the format and the guarantees.
"""

import errno
import fcntl
import heapq
import itertools
import logging
import mmap
import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable, NoReturn, Optional


from . import records
from .errors import BadRequest, InternalError

logger = logging.getLogger(__name__)

#: File header: 6 magic bytes, then the format version as a big-endian uint16.
MAGIC = b"GEOAOF"
FORMAT_VERSION = 1
HEADER = MAGIC + struct.pack(">H", FORMAT_VERSION)

#: Frame header: payload length, then CRC-32 of (length bytes + payload), both big-endian uint32.
_FRAME = struct.Struct(">II")
FRAME_HEADER_SIZE = _FRAME.size

WRITETHROUGH = "writethrough"
BUFFERED = "buffered"

# Bytes handed to one os.write; Linux writes at most ~2 GiB per call, and any
# shorter count than asked is treated as a failure, so big batches go in slices.
_WRITE_CHUNK = 16 * 1024 * 1024
# The compactor writes its snapshot in slices of about this size, checking
# between them whether the server is stopping.
_SNAPSHOT_CHUNK = 1024 * 1024


class AofError(Exception):
    """The append-only file cannot be used; the message is shown to the user."""


_LENGTH = struct.Struct(">I")
_FLUSHDB = ("FLUSHDB",)


def encode_frame(record: tuple) -> bytes:
    """Encode one effect record as a framed MessagePack array (str stays str, bytes stays bin)."""
    payload = records.pack(record)
    length = _LENGTH.pack(len(payload))
    # The CRC covers the length too, so a run of zero bytes (length 0, CRC 0)
    # left by a power loss never passes for a record.
    return b"".join((length, _LENGTH.pack(zlib.crc32(payload, zlib.crc32(length))), payload))


def decode_payload(payload: bytes) -> tuple:
    """Decode a frame's payload back to a validated record tuple; raise ValueError if it is not one."""
    try:
        return records.unpack(payload)
    except BadRequest as exc:
        raise ValueError(exc.message) from None


@dataclass(frozen=True, slots=True)
class Damage:
    """Where and why parsing stopped; `torn` means no whole record follows (a torn tail)."""

    offset: int
    reason: str
    torn: bool


class _BadFrame(Exception):
    """The bytes at an offset are not a whole valid record; `whole` if its checksum was right."""

    def __init__(self, reason: str, whole: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.whole = whole


def _read_frame(data, offset: int, size: int) -> tuple[tuple, int]:
    """Return (record, end offset) for the frame at `offset`; raise _BadFrame if it is not whole and valid."""
    if size - offset < FRAME_HEADER_SIZE:
        raise _BadFrame("incomplete frame header")
    length, crc = _FRAME.unpack_from(data, offset)
    end = offset + FRAME_HEADER_SIZE + length
    if length == 0:
        raise _BadFrame("zero length")
    if end > size:
        raise _BadFrame("frame runs past the end of the file")
    payload = data[offset + FRAME_HEADER_SIZE:end]
    if zlib.crc32(payload, zlib.crc32(data[offset:offset + 4])) != crc:
        raise _BadFrame("checksum mismatch")
    try:
        return decode_payload(payload), end
    except ValueError as exc:
        raise _BadFrame("checksum fine but not a valid record: %s" % exc, whole=True) from None


def _whole_record_after(data, offset: int, size: int) -> bool:
    """Tell whether any whole, valid record starts after `offset` (then the damage is not a torn tail)."""
    if not data[offset:size].strip(b"\0"):
        return False
    for candidate in range(offset + 1, size - FRAME_HEADER_SIZE):
        try:
            _read_frame(data, candidate, size)
            return True
        except _BadFrame:
            pass
    return False


def parse(data, apply_fn: Callable[[tuple], None]) -> tuple[int, int, Optional[Damage]]:
    """Apply every whole record of an AOF image in order; return (count, end of last whole record, damage).

    `data` is the whole file (bytes or mmap) and must start with HEADER. A
    frame that fails is a torn tail when no whole record follows it anywhere
    later in the file; otherwise it is damage that the caller must not cut
    silently. A frame whose checksum is right but whose content is not a
    record was written whole, so it is always damage.
    """
    size = len(data)
    offset, count = len(HEADER), 0
    while offset < size:
        try:
            record, end = _read_frame(data, offset, size)
        except _BadFrame as bad:
            torn = not bad.whole and not _whole_record_after(data, offset, size)
            return count, offset, Damage(offset, bad.reason, torn)
        apply_fn(record)
        count += 1
        offset = end
    return count, offset, None


def check_header(data, path: str) -> bool:
    """Return True if `data` starts with a valid header, False if it is a torn header; else raise AofError."""
    head = bytes(data[:len(HEADER)])
    if head == HEADER:
        return True
    if len(head) < len(HEADER) and HEADER.startswith(head):
        return False
    if head[:len(MAGIC)] == MAGIC:
        raise AofError("%s has append-only file format version %d; this Geomys reads version %d"
                       % (path, struct.unpack(">H", head[len(MAGIC):])[0], FORMAT_VERSION))
    raise AofError("%s is not a Geomys append-only file (bad header at byte offset 0); "
                   "refusing to touch it: point persistence_path elsewhere" % path)


def _exit_process(message: str) -> NoReturn:
    """Stop the process at once: a record that may not be on disk must never be acknowledged."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


def _lock_path(path: str) -> str:
    return path + ".lock"


def _take_lock(path: str) -> int:
    """Take the exclusive OS lock on PATH.lock and return its fd; AofError if another process has it.

    The lock lives in its own file because compaction replaces the data file,
    and a lock on the replaced inode would protect nothing. The kernel drops
    the lock when the process dies, however it dies.
    """
    lock_path = _lock_path(path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise AofError("another geomys server is using %s (lock file %s is held%s)"
                       % (path, lock_path, " by pid " + holder if holder else "")) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def _release_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class AppendOnlyFile:
    """One append-only file in writethrough or buffered mode; a RecordSink for the engine.

    Locks: `_lock` guards the in-memory buffer and the sequence numbers and
    is held only for list operations; `_io_lock` guards the open file and is
    held by whoever writes to it (the flusher, or the compactor while it
    switches files). `_lock` is innermost: taken under the store lock
    (append) or under `_io_lock`, never the other way round; the store lock
    and `_io_lock` are never held together.
    """

    def __init__(self, path: str, mode: str, flush_interval_ms: int = 1000,
                 compact_min_bytes: int = 64 * 1024 * 1024, compact_growth_percent: int = 100, *,
                 fsync: Callable[[int], None] = os.fsync,
                 on_fatal: Callable[[str], None] = _exit_process) -> None:
        if mode not in (WRITETHROUGH, BUFFERED):
            raise ValueError("persistence mode must be writethrough or buffered, not %r" % (mode,))
        self.path = os.path.abspath(os.path.expanduser(path))
        self.mode = mode
        self.flush_interval = flush_interval_ms / 1000.0
        self.compact_min_bytes = compact_min_bytes
        self.compact_growth_percent = compact_growth_percent
        self._fsync = fsync
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)      # the flusher waits here for records
        self._io_lock = threading.Lock()
        self._compact_lock = threading.Lock()              # one compaction at a time
        self._lock_fd: Optional[int] = None
        self._fd: Optional[int] = None
        self._replayed = False
        self._thread: Optional[threading.Thread] = None
        self._store_lock = None
        self._snapshot_fn: Optional[Callable[[], list]] = None
        # Guarded by _lock:
        self._buffer: list[bytes] = []
        self._buffer_bytes = 0
        self._last_seq = 0            # newest record appended
        self._flusher_idle = False    # writethrough: the flusher waits for records (append must wake it)
        # Those waiting for their record to be on disk (see when_safe): a heap
        # of (seq, arrival number, callback), each called back once.
        self._waiters: list = []
        self._arrivals = itertools.count()
        self._durable_seq = 0         # newest record on disk (written and fsync'd)
        self._empty_pending = False   # a FLUSHDB was appended: the file must be emptied first
        self._compact_tail: Optional[list[bytes]] = None  # records appended since a compaction's snapshot
        self._compact_aborted = False
        self._compactions_running = 0
        self._stopping = False
        self._closing = False
        self._sealed_seq: Optional[int] = None  # set by the final flush: later records are never written
        self._failed = False
        # Written by the thread holding _io_lock, read by info():
        self._size = 0
        self._base_size = 0
        self._last_fsync: Optional[float] = None
        self._records_replayed = 0
        self._compactions = 0

    # -- start-up (main thread) --------------------------------------------------

    def open(self) -> None:
        """Create the parent folder, take the lock file, open (or create) the data file."""
        try:
            folder = os.path.dirname(self.path) or "."
            if os.path.exists(folder) and not os.path.isdir(folder):
                # makedirs would say "File exists", which reads as if all were well.
                raise NotADirectoryError(errno.ENOTDIR, "%s is not a folder" % folder)
            os.makedirs(folder, exist_ok=True)
            self._lock_fd = _take_lock(self.path)
            for stale in (self._compact_tmp_path, self._empty_tmp_path):
                if os.path.exists(stale):
                    logger.info("removed %s left by an interrupted rewrite", stale)
                    os.unlink(stale)
            created = not os.path.exists(self.path)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            if created:
                self._fsync_dir()
        except OSError as exc:
            if self._lock_fd is not None:
                _release_lock(self._lock_fd)
                self._lock_fd = None
            raise AofError("cannot open append-only file %s: %s" % (self.path, exc.strerror or exc)) from None

    def replay(self, apply_fn: Callable[[tuple], None]) -> int:
        """Apply every record in the file through `apply_fn`; return how many (caller holds store.lock).

        A torn tail is cut off with a warning; damage before the tail raises
        AofError naming the byte offset and the repair command.
        """
        fd = self._fd
        size = os.fstat(fd).st_size
        if size < len(HEADER):
            check_header(os.pread(fd, size, 0), self.path)  # raises unless new or a torn header
            if size:
                logger.warning("append-only file %s had a torn header (%d bytes); rewrote it",
                               self.path, size)
            self._write_new_header()
            count, end, damage = 0, len(HEADER), None
        else:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as data:
                check_header(data, self.path)
                count, end, damage = parse(data, apply_fn)
        if damage is not None and not damage.torn:
            raise AofError("append-only file %s is damaged at byte offset %d (%s) before its last "
                           "record; refusing to start. %d records before that offset are intact. To "
                           "cut the file at that offset (records after it are lost; a backup is kept), "
                           "run: geomys --persistence_path %s --repair"
                           % (self.path, damage.offset, damage.reason, count, self.path))
        if damage is not None:
            logger.warning("append-only file %s had a torn tail: dropped %d bytes after byte offset %d "
                           "(%s); kept %d whole records", self.path, size - end, end, damage.reason, count)
            try:
                os.ftruncate(fd, end)
                self._fsync(fd)
            except OSError as exc:
                raise AofError("cannot truncate the torn tail of %s: %s"
                               % (self.path, exc.strerror or exc)) from None
        self._size = self._base_size = end
        self._records_replayed = count
        self._replayed = True
        return count

    def discard(self) -> None:
        """Start from an empty file instead of replaying it (a joining node takes the leader's state).

        A file that is not a Geomys append-only file is refused untouched,
        like in replay.
        """
        size = os.fstat(self._fd).st_size
        check_header(os.pread(self._fd, len(HEADER), 0), self.path)
        self._write_new_header()
        if size > len(HEADER):
            logger.warning("discarded the %d bytes of earlier state in %s: this node takes the state "
                           "of the cluster it joins", size, self.path)
        self._size = self._base_size = len(HEADER)
        self._replayed = True

    def _write_new_header(self) -> None:
        """Make the open file an empty AOF (header only) and fsync it."""
        try:
            os.ftruncate(self._fd, 0)
            self._write_all(self._fd, HEADER)
            self._fsync(self._fd)
        except OSError as exc:
            raise AofError("cannot write %s: %s" % (self.path, exc.strerror or exc)) from None

    def start(self, store_lock, snapshot_fn: Callable[[], list]) -> None:
        """Start the flusher thread; `snapshot_fn()` (called with `store_lock` held) feeds compaction."""
        if not self._replayed:
            raise AofError("replay() or discard() must run before start()")
        self._store_lock = store_lock
        self._snapshot_fn = snapshot_fn
        self._thread = threading.Thread(target=self._run_flusher, name="aof-flusher", daemon=True)
        self._thread.start()
        logger.info("append-only file %s opened in %s mode (%d bytes)", self.path, self.mode, self._size)

    # -- RecordSink ----------------------------------------------------------------

    def append(self, seq: int, record: tuple) -> None:
        """Queue record number `seq` for the flusher (caller holds store.lock, so seqs arrive in order).

        `seq` never decreases; several records may share one (a snapshot
        installed from a leader).
        """
        self.extend(seq, [record])

    def extend(self, first_seq: int, batch: list) -> None:
        """Queue records numbered `first_seq`, `first_seq + 1`, ... (caller holds store.lock).

        Only encoding and list operations happen here, never I/O, and the
        file's lock is taken once per batch: a pipelined read's writes come
        together. A FLUSHDB drops the records queued before it and has the
        flusher start an empty file, which is how FLUSHDB empties the file as
        well as memory.
        """
        last_seq = first_seq + len(batch) - 1
        flushed = _FLUSHDB in batch
        if flushed:  # only what follows the last FLUSHDB is left to write
            batch = batch[len(batch) - batch[::-1].index(_FLUSHDB):]
        frames = [encode_frame(record) for record in batch]
        with self._lock:
            self._last_seq = last_seq
            if self._sealed_seq is not None:
                return  # the final flush is done; wait(seq) will refuse to reveal these records
            if flushed:
                self._buffer = []
                self._buffer_bytes = 0
                self._empty_pending = True
                if self._compact_tail is not None:
                    self._compact_tail = None
                    self._compact_aborted = True
            self._buffer += frames
            self._buffer_bytes += sum(map(len, frames))
            if self._compact_tail is not None:
                self._compact_tail += frames
            if self._flusher_idle:  # a busy flusher checks the buffer again before it waits
                self._work.notify()

    def wait(self, seq: int, write_seq: int = 0, snapshots: int = 0) -> None:
        """Return once record `seq` may be revealed to a client (call without the store lock).

        A write and a read wait alike here (`write_seq` <= `seq`): both must not
        show what a crash could take back.

        writethrough: once it is written and fsync'd. buffered: at once, except
        during shutdown, when a record too late for the final flush must not be
        acknowledged. Raises InternalError when the record will never be on disk.
        `snapshots` concerns a cluster node only (ClusterNode.wait).
        """
        if self._safe_now(seq):
            return
        gate = threading.Lock()
        gate.acquire()
        outcome = []

        def wake(error: Optional[InternalError]) -> None:
            outcome.append(error)
            gate.release()

        if self.when_safe(seq, wake):
            return
        gate.acquire()  # released by the fsync that covers `seq`, or by a failure or the final flush
        if outcome[0] is not None:
            raise outcome[0]

    def when_safe(self, seq: int, callback: Callable[[Optional[InternalError]], None]) -> bool:
        """Return True if record `seq` may be revealed now; else arrange a call of `callback` and return False.

        The call comes once, from the thread that settles the record: the
        flusher right after the fsync that covers it, a compaction that
        switched files, or the thread that found the file broken.
        `callback(None)` means it is on disk, `callback(error)` that it never
        will be (a failure, or a shutdown that sealed the file before it). A
        record refused already is called back at once, in this thread, and
        the call may come before this returns. `callback` must neither block
        nor raise: the flusher runs it before it starts its next batch.
        """
        if self._safe_now(seq):
            return True
        with self._lock:
            seq = min(seq, self._last_seq)  # records from before this file was attached are not ours
            if self._durable_seq >= seq:
                return True
            error = self._refusal(seq)
            if error is None:
                heapq.heappush(self._waiters, (seq, next(self._arrivals), callback))
                return False
        callback(error)
        return False

    def _safe_now(self, seq: int) -> bool:
        """The checks without the lock: `seq` is on disk, or buffered mode reveals it at once."""
        return seq <= self._durable_seq or (
            self.mode == BUFFERED and self._sealed_seq is None and not self._failed)

    def _refusal(self, seq: int) -> Optional[InternalError]:
        """Why record `seq`, not on disk yet, never will be; None while it still may (caller holds _lock)."""
        if self._failed:
            return InternalError("the append-only file could not be written")
        if self._sealed_seq is not None and seq > self._sealed_seq:
            return InternalError("the server is shutting down: this write was not persisted")
        return None

    def _take_settled(self) -> list:
        """Remove and return (callback, error) for every waiter whose record is on disk or never will be.

        Only those (caller holds _lock): a waiter whose record came after the
        batch just written stays, where waking every waiter would have most of
        them find they must wait again, each wake-up a context switch and a
        queue for the GIL. The caller runs the callbacks once it has let go of
        its locks (see _call_back).
        """
        waiters, durable = self._waiters, self._durable_seq
        settled = []
        while waiters and waiters[0][0] <= durable:
            settled.append((heapq.heappop(waiters)[2], None))
        if waiters and (self._failed or self._sealed_seq is not None):
            keep = []
            for waiter in waiters:
                error = self._refusal(waiter[0])
                if error is None:
                    keep.append(waiter)
                else:
                    settled.append((waiter[2], error))
            heapq.heapify(keep)
            self._waiters = keep
        return settled

    @staticmethod
    def _call_back(settled: list) -> None:
        """Run the callbacks _take_settled returned (no lock held: a callback may send to a socket)."""
        for callback, error in settled:
            try:
                callback(error)
            except Exception:  # one client's trouble must not stop the flusher
                logger.exception("a durability callback failed")

    # -- the flusher thread --------------------------------------------------------

    def _run_flusher(self) -> None:
        """Write and fsync the buffer: whenever records queue (writethrough) or every interval (buffered)."""
        next_flush = time.monotonic() + self.flush_interval
        while True:
            with self._lock:
                if self.mode == WRITETHROUGH:
                    while not (self._buffer or self._empty_pending or self._stopping):
                        self._flusher_idle = True
                        self._work.wait()
                        self._flusher_idle = False
                else:
                    while not self._stopping:
                        remaining = next_flush - time.monotonic()
                        if remaining <= 0:
                            break
                        self._work.wait(remaining)
                final = self._stopping
            next_flush = time.monotonic() + self.flush_interval
            if not self._flush(final) or final:
                return
            self._maybe_start_compaction()

    def _flush(self, final: bool = False) -> bool:
        """Write the queued records and fsync (group commit); return False after a fatal failure.

        Runs on the flusher thread. `_io_lock` is taken before the buffer is
        swapped so that a compactor switching files never races a batch in hand.
        The waiters the batch settles are called back once both locks are let go.
        """
        failure = None
        with self._io_lock:
            with self._lock:
                if self._failed:
                    return False
                batch, self._buffer = self._buffer, []
                self._buffer_bytes = 0
                empty_first, self._empty_pending = self._empty_pending, False
                upto = self._last_seq
                if final:
                    self._sealed_seq = upto
                idle = not batch and not empty_first
                if idle:  # nothing to write; after a seal, waiters beyond it learn they never will be
                    settled = self._take_settled()
            if not idle:
                try:
                    if empty_first:
                        self._install_empty_file()
                    data = b"".join(batch)
                    if data:
                        self._write_all(self._fd, data)
                    self._fsync(self._fd)
                except OSError as exc:
                    failure = exc
                else:
                    self._size += len(data)
                    self._last_fsync = time.time()
                    with self._lock:
                        self._durable_seq = upto
                        settled = self._take_settled()
        if failure is not None:
            self._fatal("cannot write or fsync append-only file %s: %s" % (self.path, failure))
            return False
        self._call_back(settled)
        return True

    def _install_empty_file(self) -> None:
        """Atomically replace the file with an empty one (header only); caller holds _io_lock.

        Written aside and renamed, so a crash leaves either the old or the new
        file, never a half-truncated one. Raises OSError.
        """
        tmp = self._empty_tmp_path
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            self._write_all(fd, HEADER)
            self._fsync(fd)
            os.replace(tmp, self.path)
            self._fsync_dir()
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = self._base_size = len(HEADER)

    def _write_all(self, fd: int, data: bytes) -> None:
        """Write `data` at the end of `fd`; a short write raises OSError (it is never retried)."""
        view = memoryview(data)
        for start in range(0, len(view), _WRITE_CHUNK):
            chunk = view[start:start + _WRITE_CHUNK]
            written = os.write(fd, chunk)
            if written != len(chunk):
                raise OSError("short write: %d of %d bytes" % (written, len(chunk)))

    def _fsync_dir(self) -> None:
        """fsync the folder holding the file, so a create or rename survives a power loss."""
        fd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _fatal(self, message: str) -> None:
        """Log a failure that breaks the durability promise and end the process; waiters learn it failed.

        Called with no lock held: the waiters are called back here.
        """
        logger.critical("%s; stopping the server so that no unsaved write is acknowledged", message)
        with self._lock:
            self._failed = True
            settled = self._take_settled()
        self._call_back(settled)
        self._on_fatal(message)

    # -- compaction ------------------------------------------------------------------

    @property
    def _compact_tmp_path(self) -> str:
        return self.path + ".compact-tmp"

    @property
    def _empty_tmp_path(self) -> str:
        return self.path + ".empty-tmp"

    def _maybe_start_compaction(self) -> None:
        """Start a background compaction if the file outgrew both thresholds (flusher thread)."""
        size = self._size
        threshold = self._base_size * (100 + self.compact_growth_percent) / 100
        if size < self.compact_min_bytes or size < threshold:
            return
        with self._lock:
            if self._compactions_running or self._closing:
                return
            self._compactions_running += 1
        logger.info("append-only file %s grew to %d bytes (base %d bytes); compacting",
                    self.path, size, self._base_size)
        threading.Thread(target=self._auto_compact, name="aof-compactor", daemon=True).start()

    def _auto_compact(self) -> None:
        try:
            self._compact()
        except InternalError as exc:
            logger.error("automatic compaction failed: %s", exc.message)
            self._base_size = self._size  # try again only after the file grows further
        finally:
            with self._lock:
                self._compactions_running -= 1

    def compact(self) -> Optional[str]:
        """Rewrite the file to the minimal records for the current state; return a note for the reply.

        Call without the store lock held (COMPACT handler). Waits for a
        compaction already running. Raises InternalError if it failed (the
        old file is then still in use and intact).
        """
        with self._lock:
            self._compactions_running += 1
        try:
            return self._compact()
        finally:
            with self._lock:
                self._compactions_running -= 1

    def _compact(self) -> Optional[str]:
        """Snapshot under the store lock, write it aside, append what came meanwhile, rename."""
        with self._compact_lock:
            if self._store_lock is None:
                raise InternalError("the append-only file is not started")
            started = time.monotonic()
            with self._store_lock:
                snapshot = self._snapshot_fn()
                with self._lock:
                    if self._closing or self._failed:
                        return "the server is stopping: compaction skipped"
                    self._compact_tail = []
                    self._compact_aborted = False
            tmp = self._compact_tmp_path
            try:
                fd = self._write_snapshot(tmp, snapshot)
            except OSError as exc:
                self._drop_compaction(tmp)
                raise InternalError("compaction failed writing %s: %s" % (tmp, exc)) from None
            if fd is None:
                self._drop_compaction(tmp)
                return "the server is stopping: compaction skipped"
            return self._switch_to(fd, tmp, len(snapshot), started)

    def _write_snapshot(self, tmp: str, snapshot: list) -> Optional[int]:
        """Write header + snapshot records to `tmp` and fsync; return its fd, or None if stopping.

        Runs with no lock held: the records are already a private copy.
        """
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            chunk = bytearray(HEADER)
            for record in snapshot:
                chunk += encode_frame(record)
                if len(chunk) >= _SNAPSHOT_CHUNK:
                    self._write_all(fd, chunk)
                    chunk.clear()
                    if self._closing:
                        os.close(fd)
                        return None
            self._write_all(fd, chunk)
            self._fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _drop_compaction(self, tmp: str) -> None:
        """Stop collecting records for a compaction that will not complete and remove its file."""
        with self._lock:
            self._compact_tail = None
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass

    def _switch_to(self, fd: int, tmp: str, snapshot_count: int, started: float) -> Optional[str]:
        """Append the records written since the snapshot to `tmp`, rename it over the file, use it.

        Holds _io_lock throughout, so the flusher is idle and every record up
        to `cut` is either in the snapshot or in the tail copied here; the
        pending buffer is dropped because the new file holds all of it. The
        records are durable (and their waiters released) only once the rename
        and the folder are fsync'd. A failure after the buffer is taken is
        fatal, like any failed record write.
        """
        with self._io_lock:
            with self._lock:
                failed, aborted = self._failed, self._compact_aborted
                tail, self._compact_tail = self._compact_tail, None
                if not (failed or aborted):
                    cut = self._last_seq
                    self._buffer = []
                    self._buffer_bytes = 0
                    self._empty_pending = False  # a FLUSHDB before the snapshot is already in it
            if failed or aborted:
                os.close(fd)
                os.unlink(tmp)
                if failed:
                    raise InternalError("the append-only file could not be written")
                return "FLUSHDB emptied the file during compaction: nothing left to compact"
            old_size = self._size
            data = b"".join(tail)
            try:
                # The growth threshold counts from the live data alone, so a
                # long tail of writes made during compaction is compacted again.
                base = os.fstat(fd).st_size
                if data:
                    self._write_all(fd, data)
                self._fsync(fd)
                size = os.fstat(fd).st_size
                os.replace(tmp, self.path)
                self._fsync_dir()
            except OSError as exc:
                os.close(fd)
                failure = exc
            else:
                failure = None
                os.close(self._fd)
                self._fd = fd
                self._size, self._base_size = size, base
                self._last_fsync = time.time()
                self._compactions += 1
                with self._lock:
                    self._durable_seq = cut
                    settled = self._take_settled()
        if failure is not None:
            self._fatal("cannot finish compacting append-only file %s: %s" % (self.path, failure))
            raise InternalError("compaction failed: %s" % failure)
        self._call_back(settled)
        logger.info("compacted append-only file %s: %d -> %d bytes (%d snapshot records + %d written "
                    "meanwhile) in %.2fs", self.path, old_size, size, snapshot_count, len(tail),
                    time.monotonic() - started)
        return "compacted %d bytes to %d" % (old_size, size)

    # -- status and shutdown ---------------------------------------------------------

    def info(self) -> dict:
        """The persistence part of INFO."""
        with self._lock:
            pending = self._buffer_bytes
            compacting = self._compactions_running > 0
        result = {
            "mode": self.mode,
            "path": self.path,
            "file_size": self._size,
            "last_fsync": self._last_fsync,
            "records_replayed": self._records_replayed,
            "compactions": self._compactions,
            "compacting": compacting,
            "pending_bytes": pending,
            "compaction_base_bytes": self._base_size,
        }
        if self.mode == BUFFERED:
            result["flush_interval_ms"] = int(self.flush_interval * 1000)
        return result

    def close(self) -> None:
        """Flush and fsync every queued record, stop the flusher, close the file, release the lock.

        A compaction still writing its snapshot is abandoned (the old file
        stays complete); one already switching files finishes first. Records appended after the final flush are never written,
        and `wait` refuses to acknowledge them.
        """
        with self._lock:
            self._closing = True
        with self._compact_lock:
            with self._lock:
                self._stopping = True
                self._work.notify()
        if self._thread is not None:
            self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
            self._lock_fd = None
        logger.info("append-only file %s closed (%d bytes)", self.path, self._size)


def repair(path: str) -> int:
    """Cut the file at its first damaged record after backing it up; return the exit status (0 = done).

    Used by `geomys --persistence_path PATH --repair`. Raises AofError when the
    file cannot be repaired (missing, not an AOF, or in use by a server).
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise AofError("no append-only file at %s: nothing to repair" % path)
    try:
        lock_fd = _take_lock(path)
    except OSError as exc:
        raise AofError("cannot lock %s: %s" % (_lock_path(path), exc)) from None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < len(HEADER):
                check_header(f.read(), path)
                logger.info("%s holds no records (%d bytes): nothing to repair", path, size)
                return 0
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
                check_header(data, path)
                count, end, damage = parse(data, lambda record: None)
        if damage is None:
            logger.info("%s is intact (%d records, %d bytes): nothing to repair", path, count, size)
            return 0
        backup = "%s.bak-%s" % (path, time.strftime("%Y%m%d-%H%M%S"))
        suffix = 1
        while os.path.exists(backup):
            backup = "%s.bak-%s-%d" % (path, time.strftime("%Y%m%d-%H%M%S"), suffix)
            suffix += 1
        _copy_durably(path, backup)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)
        logger.warning("repaired %s: damage at byte offset %d (%s); kept %d records (%d bytes), "
                       "dropped %d bytes; the original is saved as %s",
                       path, damage.offset, damage.reason, count, end, size - end, backup)
        return 0
    except OSError as exc:
        raise AofError("cannot repair %s: %s" % (path, exc)) from None
    finally:
        _release_lock(lock_fd)


def _copy_durably(source: str, target: str) -> None:
    """Copy `source` to a new file `target` and fsync it, so the backup exists before the cut."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
        dst.flush()
        os.fsync(dst.fileno())
    directory = os.open(os.path.dirname(target), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

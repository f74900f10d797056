"""The single execute path every command takes.

lookup -> auth -> parse fields -> run the handler under the store lock ->
number the effects the store noted and hand them to the record sinks (the
append-only file, replication). Client-handler threads call
`execute_batch` with every request of a read; a reply is released only
once the sinks say its records are safe (`settle` waits for that,
`settle_later` has the sink call back), so no client sees a write before
it is durable (writethrough) or replicated.
"""

import hmac
import logging
import sys
import threading
from typing import Callable, Optional, Protocol

from . import __version__
from .clock import Clock
from . import digest as digest_mod
from . import records as records_mod
from .commands import TABLE, lookup
from .commands.table import CONSISTENT, NOLOCK, CommandSpec
from .errors import AuthRequired, BadRequest, GeomysError, OutOfMemory, Timeout, UnknownCommand, describe_key
from .memory import format_size, rss_bytes
from .protocol import error_reply
from .store import Store

logger = logging.getLogger(__name__)

# Keys hashed per hold of the store lock while computing INFO's digest, so a
# large keyspace never stalls other clients for long.
DIGEST_BATCH = 2000

# Most plain commands run per hold of the store lock: a long pipeline must not
# keep other clients waiting for long.
LOCK_BATCH = 64

# The data limit when max_memory is 0: an int, which compares faster than infinity.
NO_LIMIT = sys.maxsize

# What a client on a server with requirepass may run before AUTH (PING,
# AUTH), by every name the table knows them by; anything else it sends takes
# the slower path that answers AUTH_REQUIRED.
BEFORE_AUTH = {name: spec for name, spec in TABLE.items() if not spec.needs_auth}


def _ready(store, ctx, reply):
    """Hand back a reply made before the lock was taken (an error found in lookup or parsing)."""
    return reply


# Stands in for the spec of a request already answered (an error found in
# lookup or parsing), so that its reply keeps its place in a run of plain
# commands. Flagged NOLOCK so that it is neither a read, a write nor a
# command refused when memory is full: the read barrier, a follower's
# forwarding and the OOM check all pass it by.
READY = CommandSpec("(answered)", _ready, flags=frozenset({NOLOCK}))

# How often a blocked client checks that its connection is still open, so a
# BLPOP with no timeout does not outlive its client.
LIVENESS_CHECK_SECONDS = 1.0


class RecordSink(Protocol):
    """Something that consumes effect records in log order (AOF, replication).

    A sink may also offer `when_safe(seq, callback) -> bool`, which calls
    back instead of blocking (the append-only file does; see settle_later).
    """

    def append(self, seq: int, record: tuple) -> None:
        """Take record number `seq`. Caller holds store.lock, so calls arrive in order."""

    def extend(self, first_seq: int, records: list) -> None:
        """Take `records`, numbered `first_seq` onwards: `append` for each, in one call."""

    def wait(self, seq: int, write_seq: int = 0, snapshots: int = 0) -> None:
        """Block until record `seq` is safe to reveal; raise GeomysError if it never will be.

        `write_seq` is the newest record the connection's own writes produced
        (0 if none): a sink may treat confirming a write more strictly than
        showing data, as a cluster follower does. `snapshots` is
        Engine.snapshots when the oldest of the replies was computed: a
        cluster node refuses replies computed on a store replaced since.
        """


class ClientGone(Exception):
    """The client of a blocked pop disconnected; nothing was taken for it."""


class Context:
    """Per-connection state the engine reads and updates."""

    __slots__ = ("engine", "authenticated", "now_ms", "wait_seq", "write_seq", "snapshots", "commands",
                 "before_block", "is_connected", "address", "forwarded", "read_floor")

    def __init__(self, engine: "Engine", address: str = "",
                 before_block: Callable[[], None] = lambda: None,
                 is_connected: Callable[[], bool] = lambda: True) -> None:
        self.engine = engine
        self.authenticated = not engine.requirepass
        self.now_ms = 0            # the current hold's instant, or 0 while no key has a TTL (see now())
        # Kept only while the engine has sinks, the only readers of these three:
        self.wait_seq = 0          # newest record this connection's replies may reveal
        self.write_seq = 0         # newest record its own writes produced
        self.snapshots = -1        # Engine.snapshots at its oldest reply not yet settled; -1: none
        self.commands = 0
        self.before_block = before_block
        self.is_connected = is_connected
        self.address = address
        self.forwarded = False     # a write another node forwarded here: never forward it again
        self.read_floor = 0        # a follower: the newest entry its forwarded writes made, which its reads must see

    def now(self) -> int:
        """The current hold's instant in ms since the epoch, read from the clock if the hold has not.

        A hold reads the clock only while some key has a TTL; a command that
        sets one calls this instead of reading `now_ms`. Meant for handlers,
        which run inside a hold: between holds the instant is a stale one.
        """
        if not self.now_ms:
            self.now_ms = self.engine.clock.wall_ms()
        return self.now_ms


class Engine:
    """Runs commands against the store and feeds their effects to the sinks."""

    def __init__(self, store: Store, clock: Clock, requirepass: Optional[str] = None) -> None:
        self.store = store
        self.clock = clock
        self.requirepass = requirepass or None
        self.seq = 0                          # index of the last effect record (under store.lock)
        # How many times a snapshot has replaced the keyspace (under store.lock).
        # Record numbers restart from the snapshot's: a reply computed before
        # it may rest on records the new numbering gives to other entries.
        self.snapshots = 0
        # Read without the lock by connection handlers, which skip settle while it is empty.
        self.sinks: list[RecordSink] = []
        # The lone sink's when_safe, if it has one (see settle_later).
        self._when_safe: Optional[Callable] = None
        self._info_sources: list[Callable[[], dict]] = []
        self._compactor: Optional[Callable[[], Optional[str]]] = None
        self._clients: set[Context] = set()
        self._clients_lock = threading.Lock()
        self._finished_commands = 0
        self._forwarder: Optional[Callable[[list, Context], list]] = None   # see the forwarder property
        # A cluster node's read barrier (geomys.cluster.node): called before a
        # hold of the lock that runs reads, with how many are linearizable and
        # the connection's read_floor; returns once they may be answered, or raises.
        self.read_barrier: Optional[Callable[[int, int], None]] = None
        self.consistent_by_default = False   # read_consistency = linearizable
        self._digest_cache: Optional[tuple] = None   # (store.changes it was computed at, digest)
        self.max_memory = 0
        self.baseline_bytes = 0
        # The store's used_bytes at which commands flagged DENYOOM get OOM; a
        # plain number so the check costs one comparison and no system call.
        self._data_limit = NO_LIMIT
        self._oom_reply: dict = {}
        # Whether a write needs a look before it runs (_run_locked): only on a
        # follower, which forwards it, or under max_memory, which may refuse it.
        self._check_writes = False

    @property
    def forwarder(self) -> Optional[Callable[[list, Context], list]]:
        """Set (under store.lock) while this node must not execute writes itself.

        A cluster follower forwards them to its leader through this callable
        (a list of requests in, their replies out); None on a leader or a
        standalone server.
        """
        return self._forwarder

    @forwarder.setter
    def forwarder(self, forwarder: Optional[Callable[[list, Context], list]]) -> None:
        self._forwarder = forwarder
        self._update_check_writes()

    # -- wiring --------------------------------------------------------------

    def add_sink(self, sink: RecordSink) -> None:
        """Send every future effect record to `sink` as well."""
        with self.store.lock:
            self.sinks.append(sink)
            self.store.record_effects = True
            lone = sink if len(self.sinks) == 1 else None
            self._when_safe = getattr(lone, "when_safe", None)

    def add_info_source(self, source: Callable[[], dict]) -> None:
        """Merge the map `source()` returns into every INFO reply."""
        self._info_sources.append(source)

    def set_max_memory(self, max_memory: int, baseline_bytes: int) -> None:
        """Answer commands that add data with OOM once used_memory() reaches `max_memory` (0: no limit).

        `baseline_bytes` is what the process holds besides its data (its RSS
        before any key was loaded); the data is the store's running estimate.
        An estimate rather than the RSS because CPython keeps freed memory for
        reuse instead of returning it: after a DEL the RSS stays put, yet the
        room it made is real (docs/deploy.md).
        """
        self.max_memory = max_memory
        self.baseline_bytes = baseline_bytes
        self._data_limit = max_memory - baseline_bytes if max_memory else NO_LIMIT
        self._update_check_writes()
        self._oom_reply = error_reply(OutOfMemory(
            "memory in use reached max_memory (%s): commands that add data are refused; "
            "DEL, LPOP, RPOP or FLUSHDB free memory" % format_size(max_memory)))

    def _update_check_writes(self) -> None:
        self._check_writes = self._forwarder is not None or self._data_limit != NO_LIMIT

    def used_memory(self) -> int:
        """The figure max_memory applies to: the baseline plus the data's estimated size."""
        return self.baseline_bytes + self.store.used_bytes

    def set_compactor(self, compactor: Callable[[], Optional[str]]) -> None:
        """Use `compactor` for the COMPACT command."""
        self._compactor = compactor

    def connect(self, ctx: Context) -> None:
        """Count a client connection in."""
        with self._clients_lock:
            self._clients.add(ctx)

    def disconnect(self, ctx: Context) -> None:
        """Count a client connection out."""
        with self._clients_lock:
            self._clients.discard(ctx)
            self._finished_commands += ctx.commands

    # -- the execute path ------------------------------------------------------

    def execute(self, request, ctx: Context) -> dict:
        """Run one decoded request and return its reply map (raises only ClientGone)."""
        replies: list = []
        self.execute_batch([request], ctx, replies)
        return replies[0]

    def execute_batch(self, requests: list, ctx: Context, replies: list) -> None:
        """Run decoded requests in order, appending each reply map to `replies` as it is made.

        Consecutive plain commands (run under the store lock, neither blocking
        nor forwarded) share one hold of the lock, up to LOCK_BATCH of them:
        a pipeline of N requests takes the lock about once, not N times.
        Lookup and argument parsing happen before the lock is taken. Replies
        go into `replies` one by one so that a blocking pop can flush the
        ones before it. A longer pipeline is taken LOCK_BATCH requests at a
        time. Raises only ClientGone.
        """
        if len(requests) > LOCK_BATCH:
            for first in range(0, len(requests), LOCK_BATCH):
                self.execute_batch(requests[first:first + LOCK_BATCH], ctx, replies)
            return
        ctx.commands += len(requests)
        table = TABLE if ctx.authenticated else BEFORE_AUTH
        store = self.store
        run: list = []  # (request, spec, args) of plain commands, in order; args begin with store and ctx
        for request in requests:
            try:
                # The common case: a map naming a command as the table spells
                # it, which this client may run.
                spec = table[request["command"]]
            except Exception:  # not a map, no command, another spelling, or not before AUTH
                try:
                    spec = self._resolve(request, ctx)
                except Exception as exc:  # a GeomysError, or a bug: one error reply either way
                    run.append((request, READY, (store, ctx, error_reply(exc))))
                    continue
            if spec.is_plain:
                try:
                    run.append((request, spec, spec.parse(request, store, ctx)))
                except Exception as exc:
                    run.append((request, READY, (store, ctx, error_reply(exc))))
            else:  # no lock, or blocking: alone, after the run before it
                if run:
                    self._run_locked(run, ctx, replies)
                    run = []
                replies.append(self._run_special(request, spec, ctx))
                table = TABLE if ctx.authenticated else BEFORE_AUTH  # it may have been AUTH
        if run:
            self._run_locked(run, ctx, replies)

    def _resolve(self, request, ctx: Context):
        """The spec of a request's command; raise BadRequest, UnknownCommand or AuthRequired."""
        if type(request) is not dict:
            raise BadRequest("a request must be a map, got %s" % type(request).__name__)
        name = request.get("command")
        spec = lookup(TABLE, name)
        if spec is None:
            if type(name) is not str:
                raise BadRequest("field 'command' is missing or not a string")
            raise UnknownCommand("unknown command %s" % describe_key(name))
        if not ctx.authenticated and spec.needs_auth:
            raise AuthRequired("authentication required: send AUTH first")
        return spec

    def _run_locked(self, run: list, ctx: Context, replies: list) -> None:
        """Run parsed plain commands under one hold of the store lock; forward a follower's writes.

        A follower stops at its first write, hands it and the writes right
        after it to the leader, and goes on with the rest in a new hold.
        """
        if self.read_barrier is not None:
            self._confirm_reads(run, ctx)
        store, append = self.store, replies.append
        before = len(replies)
        rest = None
        wrote = None  # after the hold's last write: how many records the store had noted
        with store.lock:
            # Read under the lock: the role cannot change between this test
            # and a write's record reaching the sinks. A command that adds
            # data is always a write (CommandSpec checks), so the OOM test is
            # behind it too.
            check_writes = self._check_writes
            # The hold's instant, for TTLs. While no key has one, no expiry
            # check can need it: it stays 0, and a command that sets a TTL
            # reads the clock through ctx.now().
            ctx.now_ms = self.clock.wall_ms() if store.expires else 0
            for request, spec, args in run:
                if check_writes and spec.is_write:
                    if self._forwarder is not None:
                        rest = run[len(replies) - before:]  # each command run so far added one reply
                        break
                    if store.used_bytes >= self._data_limit and spec.denies_oom:
                        # Checked where writes execute: on a cluster's leader,
                        # so writes forwarded to it get the same answer.
                        append(self._oom_reply)
                        continue
                try:
                    reply = spec.handler(*args)
                except Exception as exc:  # a GeomysError, or a bug: one reply, not the connection
                    reply = error_reply(exc)
                if spec.is_write:
                    wrote = len(store.effects)
                append(reply)
            # Without sinks no record is noted (only add_sink turns the store's
            # record_effects on) and no reply waits for one.
            if self.sinks:
                # The records of the whole hold are numbered at its end, in the
                # order the store noted them, before the lock is released: the
                # sinks and any thread the hold woke see the same numbers as if
                # each had been numbered as it was noted.
                first = self.seq
                if store.effects:
                    self._publish()
                if wrote is not None:
                    # Even a write that failed (KEY_EXISTS, WRONG_TYPE) is
                    # confirmed like one: its answer rests on every record up to
                    # it, but not on those of reads after it in the same hold.
                    ctx.write_seq = first + wrote
                ctx.wait_seq = self.seq
                if ctx.snapshots < 0:
                    ctx.snapshots = self.snapshots
        if rest:
            writes = 1
            while writes < len(rest) and rest[writes][1].is_write:
                writes += 1
            replies.extend(self._forward([item[0] for item in rest[:writes]], ctx))
            if writes < len(rest):
                self._run_locked(rest[writes:], ctx, replies)

    def _confirm_reads(self, run: list, ctx: Context) -> None:
        """Pass the read barrier for the reads of `run` that need it; on failure, they get the error.

        A linearizable read needs it always; any read does while the store
        lacks the connection's last forwarded write. Taken after every
        request of the run arrived, and after any write the run forwarded
        before them, so it covers each read's start.
        """
        default = self.consistent_by_default
        behind = ctx.read_floor > self.seq
        reads, consistent = [], 0
        for i, (request, spec, _) in enumerate(run):
            if spec.is_read:
                wanted = request.get(CONSISTENT)
                if wanted or (wanted is None and default):
                    consistent += 1
                    reads.append(i)
                elif behind:
                    reads.append(i)
        if not reads:
            return
        try:
            self.read_barrier(consistent, ctx.read_floor)
        except GeomysError as exc:
            failed = error_reply(exc)
            for i in reads:
                run[i] = (run[i][0], READY, (self.store, ctx, failed))

    def _run_special(self, request: dict, spec, ctx: Context) -> dict:
        """Run a command that takes no lock (PING, AUTH, INFO...) or blocks (BLPOP, BRPOP)."""
        try:
            args = spec.parse(request, self.store, ctx)
            if spec.is_blocking:
                return self._execute_blocking(spec, args, ctx, request)
            return spec.handler(*args)
        except GeomysError as exc:
            return error_reply(exc)
        except ClientGone:
            raise
        except Exception as exc:  # a bug must cost one reply, not the connection
            return error_reply(exc)

    def _publish(self) -> None:
        """Number the store's new effect records and give them to every sink (caller holds lock)."""
        self._number(self.store.take_effects())

    def _number(self, records: list) -> None:
        """Give the records the next seqs and hand them to the sinks (caller holds store.lock).

        `self.seq` moves before the sinks see the records, so a thread a sink
        wakes already finds them.
        """
        first = self.seq + 1
        self.seq += len(records)
        for sink in self.sinks:
            sink.extend(first, records)

    def _forward(self, requests: list, ctx: Context) -> list:
        """Hand writes to the leader (outside the store lock); relay its replies."""
        forwarder = self.forwarder
        if forwarder is None:  # became leader meanwhile: run them here
            replies: list = []
            ctx.commands -= len(requests)  # counted once already
            self.execute_batch(requests, ctx, replies)
            return replies
        try:
            return forwarder(requests, ctx)
        except Exception as exc:  # NO_LEADER and the like, or a bug: every write gets the error
            return [error_reply(exc)] * len(requests)

    def _execute_blocking(self, spec, args, ctx: Context, request: dict) -> dict:
        """Serve BLPOP/BRPOP: pop now, or queue behind earlier waiters until a PUSH or the timeout.

        A node that is (or becomes, while the client waits) a cluster follower
        hands the wait to its leader instead, so only the leader ever pops.
        """
        key, timeout = args[2], args[-1]
        ctx.before_block()  # earlier pipelined replies must not wait behind this one
        store, clock = self.store, self.clock
        deadline = clock.monotonic() + timeout if timeout else None
        with store.lock:
            if self.forwarder is None:
                waiter = store.add_waiter(key)
                try:
                    while self.forwarder is None:
                        if store.is_first_waiter(key, waiter):
                            ctx.now_ms = clock.wall_ms()
                            result = spec.handler(*args)
                            if result is not None:
                                return result
                        wait_for = LIVENESS_CHECK_SECONDS
                        if deadline is not None:
                            remaining = deadline - clock.monotonic()
                            if remaining <= 0:
                                raise Timeout("no element arrived in list %s within %gs"
                                              % (describe_key(key), timeout))
                            wait_for = min(wait_for, remaining)
                        # Wakes on a PUSH to this key (head waiter only) or when it
                        # is time to check the deadline and the connection.
                        waiter.cond.wait(wait_for)
                        if not ctx.is_connected():
                            raise ClientGone()
                finally:
                    store.remove_waiter(key, waiter)
                    if store.effects:
                        self._publish()
                        ctx.write_seq = self.seq
                    ctx.wait_seq = self.seq
                    if ctx.snapshots < 0:
                        ctx.snapshots = self.snapshots
        if deadline is not None:
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise Timeout("no element arrived in list %s within %gs" % (describe_key(key), timeout))
            request = dict(request, timeout=remaining)
        return self._forward([request], ctx)[0]

    # -- replication hooks (cluster) ------------------------------------------------

    def append_records(self, records: list) -> int:
        """Log records that do not come from a command (e.g. membership); return the last seq."""
        with self.store.lock:
            self._number(records)
            return self.seq

    def apply_entries(self, entries: list) -> None:
        """Apply (seq, record) pairs produced by the leader, keeping its numbering (caller holds store.lock).

        The sinks (this node's AOF) get the leader's records as they are, not
        whatever the store noted while applying them.
        """
        store = self.store
        for seq, record in entries:
            records_mod.apply(store, record)
            self.seq = seq
            for sink in self.sinks:
                sink.append(seq, record)
        store.take_effects()

    def install_snapshot(self, contents: Store, seq: int, snapshot_records: list) -> None:
        """Replace the keyspace with `contents`, taken at log index `seq` (caller holds store.lock).

        The sinks see an emptying FLUSHDB followed by the snapshot's records, so
        this node's AOF describes the new state.
        """
        self.store.replace_contents(contents)
        self.snapshots += 1
        for sink in self.sinks:
            sink.append(seq, ("FLUSHDB",))
            for record in snapshot_records:
                sink.append(seq, record)
        self.seq = seq
        self.store.take_effects()

    def settle_later(self, ctx: Context, callback: Callable[[Optional[GeomysError]], None]) -> bool:
        """Like settle, without waiting: True if `callback(error)` is called (maybe already) instead.

        Only a lone sink that can call back (the append-only file) does this:
        its flusher calls right after the fsync that makes the replies safe,
        with None, or with the error that replaces them if they never will be.
        False, and no call, when the replies are safe already or the sinks can
        only be waited for (a cluster node): the caller then settles.
        """
        when_safe = self._when_safe
        if when_safe is None or when_safe(ctx.wait_seq, callback):
            return False
        ctx.snapshots = -1  # as settle leaves it: no reply of this connection is pending any more
        return True

    def settle(self, ctx: Context) -> None:
        """Wait until every record this connection's pending replies may reveal is safe.

        Newest sink first: replication (added after the AOF) fails at once when
        leadership is lost, while the AOF would wait for numbering that a
        snapshot install may have moved back.
        """
        # Replies that read no store (PING, INFO...) rest on no store's numbering.
        snapshots = self.snapshots if ctx.snapshots < 0 else ctx.snapshots
        try:
            for sink in reversed(self.sinks):
                sink.wait(ctx.wait_seq, ctx.write_seq, snapshots)
        finally:
            ctx.snapshots = -1  # settled, or answered with the error: none pending

    # -- services for server commands -------------------------------------------

    def check_password(self, password) -> bool:
        """Compare `password` with requirepass in constant time."""
        if self.requirepass is None:
            return False
        given = password.encode() if isinstance(password, str) else password
        return hmac.compare_digest(given, self.requirepass.encode())

    def compact(self) -> Optional[str]:
        """Rewrite the append-only file, if there is one; return a note for the reply."""
        if self._compactor is None:
            return "persistence is off: nothing to compact"
        return self._compactor()

    def sweep_expired(self, limit: int = 1000) -> int:
        """Delete up to `limit` expired keys (called by the sweeper thread)."""
        store = self.store
        with store.lock:
            removed = store.sweep(self.clock.wall_ms(), limit)
            if store.effects:
                self._publish()
        return removed

    def digest(self) -> str:
        """The order-independent digest of every live key (see geomys.digest).

        Computed on request, a batch of keys per hold of the lock: on a node
        taking writes meanwhile it describes no single instant, so compare
        digests of quiet nodes. Reused while no record was applied and no TTL
        passed, so polling INFO on a quiet node costs nothing.
        """
        store = self.store
        with store.lock:
            next_expiry = store.next_expiry()
            fresh = next_expiry is None or next_expiry > self.clock.wall_ms()
            if self._digest_cache is not None and self._digest_cache[0] == store.changes and fresh:
                return self._digest_cache[1]
            state = store.changes
            keys = list(store.keys())
        hashes = []
        for start in range(0, len(keys), DIGEST_BATCH):
            with store.lock:
                now = self.clock.wall_ms()
                for key in keys[start:start + DIGEST_BATCH]:
                    entry, expire_at = store.peek(key), store.expire_at(key)
                    if entry is not None and (expire_at is None or expire_at > now):
                        hashes.append(digest_mod.entry_digest(key, entry, expire_at))
        digest = digest_mod.as_text(digest_mod.combine(hashes))
        self._digest_cache = (state, digest)
        return digest

    def info(self) -> dict:
        """Build the INFO map: the engine's own figures plus every info source's."""
        with self._clients_lock:
            clients = len(self._clients)
            processed = self._finished_commands + sum(c.commands for c in self._clients)
        with self.store.lock:
            keys = len(self.store)
            blocked = self.store.waiting_clients()
            seq = self.seq
            data_bytes = self.store.used_bytes
        result = {
            "version": __version__,
            "keys": keys,
            "connected_clients": clients,
            "blocked_clients": blocked,
            "commands_processed": processed,
            "replication_offset": seq,
            "used_memory": self.baseline_bytes + data_bytes,
            "used_memory_dataset": data_bytes,
            "used_memory_rss": rss_bytes(),
            "max_memory": self.max_memory,
            "digest": self.digest(),
        }
        for source in self._info_sources:
            result.update(source())
        return result

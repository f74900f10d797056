"""Readers that GET chosen keys from every node of a cluster, and the check that no read was dirty.

`ReadRecorder` runs one thread per node, each sending the current target keys
as one pipeline, round after round, and recording every answer. `dirty_reads`
compares the recorded reads with the final, converged state: a read is dirty
when it showed a write that never committed. Every wait is bounded.
"""

import threading
import time
from typing import Callable, Iterable, NamedTuple, Optional

from tests.cluster_helpers import CONNECTION_ERRORS, Cluster
from tests.helpers import RawClient


class Read(NamedTuple):
    """One GET answered: the node, the key, the value (None: NOT_FOUND) and when (monotonic)."""

    node_id: int
    key: str
    value: Optional[str]
    sent: float
    answered: float


def dirty_reads(reads: Iterable[Read], final: dict, counters: set) -> list[Read]:
    """The reads that showed a write that never committed, judged by the final state `final`.

    Applies where every key of a read was written by one client only, counters
    with INCR and other keys with one SET each, and where nothing was written
    to them once the final state was read. Then a counter's final value is the
    highest it ever committed: a read above it showed an INCR that never
    committed. A key absent at the end never had its SET committed, and one
    that holds another value never had that one: a read showing it is dirty.
    """
    dirty = []
    for read in reads:
        if read.value is None:
            continue
        end = final.get(read.key)
        if read.key in counters:
            if int(read.value) > int(end or 0):
                dirty.append(read)
        elif read.value != end:
            dirty.append(read)
    return dirty


class ReadRecorder:
    """Threads GETting `keys()` from every node of `ids`, pipelined, recording every answer.

    Each answer is kept once per node, key and value (the first time it was
    seen), which is all a dirty read needs and keeps long runs small; every
    round is counted. A round is one pipeline of GETs on one connection; a node that does not
    answer within `timeout` (a leader holds a read of an entry it has not
    committed) or drops the connection is counted in `errors` and dialled
    again. `interval` spaces the rounds so the readers cost little beside
    the load under test.
    """

    def __init__(self, cluster: Cluster, ids: Iterable[int], keys: Callable[[], list[str]],
                 timeout: float = 5.0, interval: float = 0.01) -> None:
        self.cluster = cluster
        self.keys = keys
        self.timeout = timeout
        self.interval = interval
        self.seen: dict[tuple, Read] = {}            # (node_id, key, value) -> its first read
        self.rounds: list[tuple[int, float, int, int]] = []   # (node_id, when, GETs answered, GETs replied to)
        self.errors: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), name="reader-%d" % n, daemon=True)
                         for n in ids]

    def start(self) -> "ReadRecorder":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + self.timeout + 5
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, "readers did not stop: %s" % alive

    def distinct(self) -> list[Read]:
        """The first read of every value each node showed for each key."""
        with self._lock:
            return list(self.seen.values())

    def answered(self, node_id: Optional[int] = None, since: float = 0.0, until: float = float("inf")) -> int:
        """GETs answered with a value or NOT_FOUND (by `node_id`, default any) between `since` and `until`."""
        with self._lock:
            return sum(n for node, at, n, _ in self.rounds
                       if (node_id is None or node == node_id) and since <= at <= until)

    def replied(self, node_id: Optional[int] = None, since: float = 0.0, until: float = float("inf")) -> int:
        """GETs that got any reply, an answer or a refusal such as NO_LEADER, between `since` and `until`."""
        with self._lock:
            return sum(n for node, at, _, n in self.rounds
                       if (node_id is None or node == node_id) and since <= at <= until)

    def _note_error(self, what: str) -> None:
        with self._lock:
            self.errors[what] = self.errors.get(what, 0) + 1

    def _run(self, node_id: int) -> None:
        client = None
        while not self._stop.wait(self.interval):
            keys = self.keys()
            if not keys:
                continue
            try:
                if client is None:
                    client = RawClient(self.cluster.port(node_id), timeout=self.timeout)
                sent = time.monotonic()
                client.send(*({"command": "GET", "key": k} for k in keys))
                replies = [client.read() for _ in keys]
            except CONNECTION_ERRORS as exc:            # socket.timeout is an OSError
                self._note_error(type(exc).__name__)
                if client is not None:
                    client.close()
                client = None
                continue
            answered = time.monotonic()
            found = []
            for key, reply in zip(keys, replies):
                if reply.get("status") == "OK":
                    found.append(Read(node_id, key, reply["value"], sent, answered))
                elif reply.get("code") == "NOT_FOUND":
                    found.append(Read(node_id, key, None, sent, answered))
                else:
                    self._note_error(reply.get("code") or "?")
            with self._lock:
                self.rounds.append((node_id, answered, len(found), len(replies)))
                for read in found:
                    self.seen.setdefault((node_id, read.key, read.value), read)
        if client is not None:
            client.close()

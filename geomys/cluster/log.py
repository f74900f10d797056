"""The replicated log a node keeps in memory: entries after a base point. No I/O.

Every node holds the entries it has not yet dropped, each an `Entry(seq,
term, record, members)`. Committed entries are kept as a bounded backlog so a
leader can serve a follower that fell behind; entries not yet committed are
never dropped, since a leader may still need to send them or a follower to
discard them. Owned by the consensus core (geomys.cluster.core), which runs
under the driver's lock.
"""

from typing import NamedTuple, Optional

from .rules import NodeAddress


class Entry(NamedTuple):
    """One log entry: a write's effect record (encoded by geomys.records), or a membership change.

    `members` is set only on a membership entry: the voting members from
    that entry on. Its `record` is the same membership as an effect record,
    so the append-only file can carry it like any other. (A named tuple: the
    log makes one per write on every node, and it is the cheapest immutable.)
    """

    seq: int
    term: int
    record: bytes
    members: Optional[tuple[NodeAddress, ...]] = None


class Log:
    """Entries with consecutive seqs after (base_seq, base_term), where the log starts.

    Entry `seq` sits at a computed index of a list, so finding where a
    follower's log ends and slicing what follows cost O(1) and O(batch).
    Dropped entries are skipped by an offset; the list is compacted now and then.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: list[Entry] = []   # those before _head are dropped
        self._head = 0
        self._bytes = 0
        self.base_seq = 0
        self.base_term = 0

    def __len__(self) -> int:
        return len(self._entries) - self._head

    @property
    def last_seq(self) -> int:
        """The seq of the newest entry (the base if empty)."""
        return self._entries[-1].seq if len(self) else self.base_seq

    @property
    def last_term(self) -> int:
        """The term of the newest entry (the base's if empty)."""
        return self._entries[-1].term if len(self) else self.base_term

    def reset(self, seq: int, term: int) -> None:
        """Forget every entry: the log now starts after (seq, term), as after a snapshot."""
        self._entries, self._head, self._bytes = [], 0, 0
        self.base_seq, self.base_term = seq, term

    def append(self, entry: Entry) -> None:
        """Add the entry that follows the newest one."""
        if entry.seq != self.last_seq + 1:
            raise ValueError("log entry %d does not follow entry %d" % (entry.seq, self.last_seq))
        self._entries.append(entry)
        self._bytes += len(entry.record)

    def truncate_after(self, seq: int) -> None:
        """Drop every entry after `seq` (entries a new leader's log does not have)."""
        index = self._index(seq + 1)
        if index is None:
            return
        for entry in self._entries[index:]:
            self._bytes -= len(entry.record)
        del self._entries[index:]

    def trim(self, upto: int) -> None:
        """Drop the oldest entries while over either bound, but none after `upto` (the commit point).

        The newest entry stays even when it alone is over max_bytes.
        """
        entries, head, kept = self._entries, self._head, len(self._entries) - self._head
        if kept <= self.max_entries and self._bytes <= self.max_bytes:
            return
        while kept > self.max_entries or (self._bytes > self.max_bytes and kept > 1):
            oldest = entries[head]
            if oldest.seq > upto:
                break
            head += 1
            kept -= 1
            self._bytes -= len(oldest.record)
        if head != self._head:
            self._head = head
            self.base_seq, self.base_term = entries[head - 1].seq, entries[head - 1].term
        if self._head > 1024 and self._head * 2 > len(self._entries):
            del self._entries[:self._head]  # amortised O(1): done once the dropped part dominates
            self._head = 0

    def _index(self, seq: int) -> Optional[int]:
        """Where entry `seq` is in the list, or None if it is not kept."""
        if not len(self):
            return None
        index = self._head + seq - self._entries[self._head].seq
        return index if self._head <= index < len(self._entries) else None

    def term_at(self, seq: int) -> Optional[int]:
        """The term of entry `seq` if the log knows it (its base included), else None."""
        if seq == self.base_seq:
            return self.base_term
        index = self._index(seq)
        return None if index is None else self._entries[index].term

    def covers(self, seq: int) -> bool:
        """Whether entries from seq + 1 on can be read from here (seq is the base or later)."""
        return self.base_seq <= seq <= self.last_seq

    def entry(self, seq: int) -> Optional[Entry]:
        """Entry `seq`, or None if it is not kept."""
        index = self._index(seq)
        return None if index is None else self._entries[index]

    def after(self, seq: int, limit: int, max_bytes: int = 1 << 62) -> list[Entry]:
        """Up to `limit` entries following `seq` (which `covers`), at most about `max_bytes` of them."""
        if seq >= self.last_seq:
            return []
        start = self._index(seq + 1)
        out, size = [], 0
        for entry in self._entries[start:start + limit]:
            if out and size + len(entry.record) > max_bytes:
                break
            out.append(entry)
            size += len(entry.record)
        return out

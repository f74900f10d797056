"""Replication bookkeeping: the in-memory backlog of recent log entries. No I/O.

Every node keeps the entries it applied most recently, each as (seq, term,
encoded entry). A leader serves followers from it; a follower whose position
it no longer covers is sent a full snapshot instead. Guarded by the caller's
lock (cluster.node holds the store lock when appending).
"""

from typing import Optional


class Backlog:
    """The last `max_entries` log entries, at most `max_bytes` of them encoded.

    Entries have consecutive seqs, so entry `seq` sits at a computed index of
    a list: finding where a follower's log ends and slicing what follows cost
    O(1) and O(batch), however long the backlog. Dropped entries are skipped
    by an offset and the list is compacted now and then.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: list = []     # (seq, term, payload); those before _head are dropped
        self._head = 0
        self._bytes = 0
        # The entry just before the oldest one kept: where the backlog starts.
        self.base_seq = 0
        self.base_term = 0

    def __len__(self) -> int:
        return len(self._entries) - self._head

    @property
    def last(self) -> tuple[int, int]:
        """(seq, term) of the newest entry (the base if empty)."""
        if len(self):
            seq, term, _ = self._entries[-1]
            return seq, term
        return self.base_seq, self.base_term

    def reset(self, seq: int, term: int) -> None:
        """Forget every entry: the log now starts after (seq, term) (after a snapshot)."""
        self._entries = []
        self._head = 0
        self._bytes = 0
        self.base_seq, self.base_term = seq, term

    def append(self, seq: int, term: int, payload: bytes) -> None:
        """Keep entry `seq` (the one after the newest); the oldest entries go when either bound is passed."""
        if seq != self.last[0] + 1:
            raise ValueError("backlog entry %d does not follow entry %d" % (seq, self.last[0]))
        self._entries.append((seq, term, payload))
        self._bytes += len(payload)
        while len(self) > self.max_entries or (self._bytes > self.max_bytes and len(self) > 1):
            old_seq, old_term, old = self._entries[self._head]
            self._head += 1
            self._bytes -= len(old)
            self.base_seq, self.base_term = old_seq, old_term
        if self._head > 1024 and self._head * 2 > len(self._entries):
            del self._entries[:self._head]  # amortised O(1): done once the dropped half dominates
            self._head = 0

    def _index(self, seq: int) -> Optional[int]:
        """Where entry `seq` is in the list, or None if it is not kept."""
        if not len(self):
            return None
        index = self._head + seq - self._entries[self._head][0]
        return index if self._head <= index < len(self._entries) else None

    def term_at(self, seq: int) -> Optional[int]:
        """The term of entry `seq` if the backlog knows it (including its base), else None."""
        if seq == self.base_seq:
            return self.base_term
        index = self._index(seq)
        return None if index is None else self._entries[index][1]

    def covers(self, seq: int, term: int) -> bool:
        """Whether a log ending at (seq, term) is a prefix of this one that the backlog can extend."""
        return self.term_at(seq) == term

    def after(self, seq: int, limit: int, max_bytes: int = 1 << 62) -> list[bytes]:
        """Payloads of up to `limit` entries following `seq` (caller checked `covers`)."""
        if not len(self) or seq >= self._entries[-1][0]:
            return []
        start = self._index(seq + 1)
        if start is None:
            start = self._head  # seq is the base: everything kept follows it
        out, size = [], 0
        for _, _, payload in self._entries[start:start + limit]:
            if out and size + len(payload) > max_bytes:
                break
            out.append(payload)
            size += len(payload)
        return out

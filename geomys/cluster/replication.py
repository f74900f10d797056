"""Replication bookkeeping: the in-memory backlog of recent log entries. No I/O.

Every node keeps the entries it applied most recently, each as (seq, term,
encoded entry). A leader serves followers from it; a follower whose position
it no longer covers is sent a full snapshot instead. Guarded by the caller's
lock (cluster.node holds the store lock when appending).
"""

from collections import deque
from itertools import islice
from typing import Optional


class Backlog:
    """The last `max_entries` log entries, at most `max_bytes` of them encoded."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: deque = deque()     # (seq, term, payload)
        self._bytes = 0
        # The entry just before the oldest one kept: where the backlog starts.
        self.base_seq = 0
        self.base_term = 0

    @property
    def last(self) -> tuple[int, int]:
        """(seq, term) of the newest entry (the base if empty)."""
        if self._entries:
            seq, term, _ = self._entries[-1]
            return seq, term
        return self.base_seq, self.base_term

    def reset(self, seq: int, term: int) -> None:
        """Forget every entry: the log now starts after (seq, term) (after a snapshot)."""
        self._entries.clear()
        self._bytes = 0
        self.base_seq, self.base_term = seq, term

    def append(self, seq: int, term: int, payload: bytes) -> None:
        """Keep entry `seq` (the one after the newest); the oldest entries go when either bound is passed."""
        if seq != self.last[0] + 1:
            raise ValueError("backlog entry %d does not follow entry %d" % (seq, self.last[0]))
        self._entries.append((seq, term, payload))
        self._bytes += len(payload)
        while len(self._entries) > self.max_entries or (self._bytes > self.max_bytes and len(self._entries) > 1):
            old_seq, old_term, old = self._entries.popleft()
            self._bytes -= len(old)
            self.base_seq, self.base_term = old_seq, old_term

    def term_at(self, seq: int) -> Optional[int]:
        """The term of entry `seq` if the backlog knows it (including its base), else None."""
        if seq == self.base_seq:
            return self.base_term
        if not self._entries or seq < self._entries[0][0] or seq > self._entries[-1][0]:
            return None
        return self._entries[seq - self._entries[0][0]][1]

    def covers(self, seq: int, term: int) -> bool:
        """Whether a log ending at (seq, term) is a prefix of this one that the backlog can extend."""
        return self.term_at(seq) == term

    def after(self, seq: int, limit: int, max_bytes: int = 1 << 62) -> list[bytes]:
        """Payloads of up to `limit` entries following `seq` (caller checked `covers`)."""
        if not self._entries or seq >= self._entries[-1][0]:
            return []
        start = max(seq + 1 - self._entries[0][0], 0)
        out, size = [], 0
        for _, _, payload in islice(self._entries, start, None):
            if out and (len(out) >= limit or size + len(payload) > max_bytes):
                break
            out.append(payload)
            size += len(payload)
        return out

    def __len__(self) -> int:
        return len(self._entries)

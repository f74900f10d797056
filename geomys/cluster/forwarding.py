"""A follower's writes to the leader, batched across clients.

Every client thread with writes to forward queues them; whichever thread
finds a call slot free sends everything queued so far in one Forward call
and hands each client its replies, with the leader's log position that
covers them. Fifty clients writing through a follower cost a few calls per
round trip, not fifty. Client-handler threads call it, outside the store lock.
"""

import threading
from typing import Callable, Optional

MAX_CALLS = 2          # Forward calls in flight at once
MAX_BATCH = 2000       # most requests in one call


class _Slot:
    """One client's writes and, once the call returns, their replies and log position, or the error."""

    __slots__ = ("address", "requests", "replies", "position", "error")

    def __init__(self, address: str, requests: list) -> None:
        self.address = address
        self.requests = requests
        self.replies: Optional[list] = None
        self.position = 0
        self.error: Optional[BaseException] = None


class ForwardBatcher:
    """Gathers queued writes into Forward calls made by the waiting client threads themselves."""

    def __init__(self, call: Callable[[str, list], tuple[list, int]]) -> None:
        self._call = call
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._calls = 0

    @property
    def queued(self) -> int:
        """Requests waiting for a call slot."""
        with self._cond:
            return sum(len(slot.requests) for slot in self._pending)

    def submit(self, address: str, requests: list) -> tuple[list, int]:
        """Run `requests` on the leader at `address`, in order; return its replies and its log position.

        The position is the newest entry the call's replies may rest on.
        """
        slot = _Slot(address, requests)
        with self._cond:
            self._pending.append(slot)
            while slot.replies is None and slot.error is None:
                if self._calls < MAX_CALLS and self._pending:
                    batch = self._take()
                    self._calls += 1
                    self._cond.release()
                    try:
                        self._send(batch)
                    finally:
                        self._cond.acquire()
                        self._calls -= 1
                        self._cond.notify_all()
                else:
                    self._cond.wait()
        if slot.error is not None:
            raise slot.error
        return slot.replies, slot.position

    def _take(self) -> list[_Slot]:
        """The oldest queued slots for one address, up to MAX_BATCH requests (caller holds the lock)."""
        address = self._pending[0].address
        batch, count, rest = [], 0, []
        for slot in self._pending:
            if slot.address == address and (not batch or count + len(slot.requests) <= MAX_BATCH):
                batch.append(slot)
                count += len(slot.requests)
            else:
                rest.append(slot)
        self._pending = rest
        return batch

    def _send(self, batch: list[_Slot]) -> None:
        """One call for the whole batch; every slot gets its share of the replies, or the error."""
        requests = [r for slot in batch for r in slot.requests]
        try:
            replies, position = self._call(batch[0].address, requests)
        except BaseException as exc:  # NO_LEADER and the like: every client of the batch gets it
            for slot in batch:
                slot.error = exc
            return
        start = 0
        for slot in batch:
            slot.replies = replies[start:start + len(slot.requests)]
            slot.position = position
            start += len(slot.requests)

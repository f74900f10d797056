"""Test doubles shared by the unit tests: a clock that only moves when told to,
an in-memory record sink, and small helpers to drive the Engine without sockets.

Imports geomys' pure modules only; nothing here opens a socket or sleeps.
"""

import threading
from collections import deque
from typing import Callable, Optional

from geomys.engine import ClientGone, Context, Engine
from geomys.store import Store

#: Wall-clock start of every FakeClock (2024-01-01T00:00:00Z), far from 0 so
#: absolute expiry times look like real ones.
EPOCH_MS = 1_704_067_200_000

#: Upper bound for any wait on a helper thread in unit tests.
THREAD_TIMEOUT = 10.0


class FakeClock:
    """A Clock (wall_ms() / monotonic()) that moves only when `advance` is called."""

    def __init__(self, wall_ms: int = EPOCH_MS, monotonic: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._wall_ms = wall_ms
        self._monotonic = monotonic

    def wall_ms(self) -> int:
        with self._lock:
            return self._wall_ms

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        if seconds < 0:
            raise ValueError("a FakeClock never goes back")
        with self._lock:
            self._wall_ms += round(seconds * 1000)
            self._monotonic += seconds


def store_state(store: Store) -> dict:
    """The store's content as plain data: key -> (value or list of elements, expire_at_ms)."""
    with store.lock:
        return {key: (list(entry) if isinstance(entry, deque) else entry, expire_at)
                for key, entry, expire_at in store.entries()}


class RecordingSink:
    """A RecordSink that keeps every (seq, record) it is given, in order."""

    def __init__(self) -> None:
        self.appended: list[tuple[int, tuple]] = []
        self.waited: list[int] = []

    def append(self, seq: int, record: tuple) -> None:
        self.appended.append((seq, record))

    def extend(self, first_seq: int, records: list) -> None:
        self.appended.extend(enumerate(records, first_seq))

    def wait(self, seq: int, write_seq: int = 0, snapshots: int = 0) -> None:
        self.waited.append(seq)

    @property
    def records(self) -> list[tuple]:
        return [record for _, record in self.appended]


class Harness:
    """An Engine over a fresh Store and FakeClock, with one default client context."""

    def __init__(self, requirepass: Optional[str] = None, owns_expiry: bool = True) -> None:
        self.clock = FakeClock()
        self.store = Store(owns_expiry=owns_expiry)
        self.engine = Engine(self.store, self.clock, requirepass=requirepass)
        self.ctx = self.new_context()

    def new_context(self, is_connected: Callable[[], bool] = lambda: True) -> Context:
        ctx = Context(self.engine, "test", is_connected=is_connected)
        self.engine.connect(ctx)
        return ctx

    def run(self, command: str, ctx: Optional[Context] = None, **fields) -> dict:
        """Execute one request {'command': command, **fields} and return the reply map."""
        return self.engine.execute({"command": command, **fields}, ctx or self.ctx)

    def ok(self, command: str, **fields) -> dict:
        """Execute a request that must succeed; return its reply."""
        reply = self.run(command, **fields)
        assert reply["status"] == "OK", reply
        return reply

    def value(self, command: str, **fields):
        """Execute a request that must succeed; return its `value`."""
        return self.ok(command, **fields)["value"]

    def blocked_clients(self) -> int:
        with self.store.lock:
            return self.store.waiting_clients()


def assert_error(reply: dict, code: str, *names) -> None:
    """Check `reply` is an error map with `code` whose message mentions each of `names`."""
    assert reply.get("status") == "ERROR", reply
    assert reply.get("code") == code, reply
    assert isinstance(reply.get("message"), str) and reply["message"], reply
    for name in names:
        assert str(name) in reply["message"], "%r should name %r" % (reply, name)


class Call:
    """Run `engine.execute` on a daemon thread and collect its reply (or exception)."""

    def __init__(self, harness: Harness, request: dict, ctx: Optional[Context] = None) -> None:
        self.reply: Optional[dict] = None
        self.error: Optional[BaseException] = None
        self.ctx = ctx or harness.new_context()
        self._engine = harness.engine
        self._request = request
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.reply = self._engine.execute(self._request, self.ctx)
        except (ClientGone, Exception) as exc:  # noqa: B014 - ClientGone is the expected one
            self.error = exc

    def start(self) -> "Call":
        self._thread.start()
        return self

    def join(self, timeout: float = THREAD_TIMEOUT) -> "Call":
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "engine call %r did not finish in %ss" % (self._request, timeout)
        return self

    def done(self) -> bool:
        return not self._thread.is_alive()

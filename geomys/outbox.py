"""Replies that wait for their records to be durable, sent by the thread that makes them so.

With persistence writethrough, a reply may leave only after the fsync that
covers the records it reveals. A connection's thread could wait for that
fsync and then send, but every such wait is one more sleep and wake-up per
request, each a context switch and a queue for the GIL: it made writethrough
cost twice the CPU per request of no persistence (docs/performance.md).
Instead the connection's thread packs its replies, posts them to its
Outbox and goes back to reading; the append-only file's flusher calls
`deliver` right after the fsync, which sends them without blocking. What a
client's socket cannot take at once goes to the server's Drainer, one
thread that finishes such sends as the sockets drain, so that the flusher
never waits for a client.

Order: each Outbox has a hold, a plain Lock. The connection's thread takes
it before it sends or posts anything; a post hands it over, and whoever
finishes sending the posted replies (the flusher in `deliver`, or the
Drainer) lets it go. So a connection's replies leave in the order they were
made, and its socket is closed only once no reply is on its way.
"""

import logging
import os
import select
import socket
import threading
from typing import Optional

from . import protocol
from .errors import GeomysError

logger = logging.getLogger(__name__)

# One send that never blocks, whatever the socket's mode (Linux, the BSDs, macOS).
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_POLL_SEND = select.POLLOUT | select.POLLERR | select.POLLHUP


class Drainer:
    """One thread, started on first use, that finishes the sends clients' sockets could not take at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived: list = []   # (outbox, unsent bytes) handed over, not yet polled
        self._busy = 0             # outboxes handed over and not finished yet
        self._wake: Optional[tuple[int, int]] = None  # a pipe: a byte in it means something arrived
        self._thread: Optional[threading.Thread] = None

    def take(self, outbox: "Outbox", rest: memoryview) -> None:
        """Finish sending `rest` for `outbox`, then let go of its hold. Never blocks; may raise if no thread can start."""
        with self._lock:
            if self._thread is None:
                if self._wake is None:
                    self._wake = os.pipe()
                    os.set_blocking(self._wake[1], False)
                thread = threading.Thread(target=self._run, name="outbox-drainer", daemon=True)
                thread.start()
                self._thread = thread
            self._arrived.append((outbox, rest))
            self._busy += 1
        try:
            os.write(self._wake[1], b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    @property
    def busy(self) -> int:
        """How many connections' replies it is still sending."""
        return self._busy

    def _run(self) -> None:
        wake = self._wake[0]
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        # Socket fd -> (outbox, bytes still to send). An fd is here at most
        # once, and cannot be closed meanwhile: its outbox's hold is held.
        sending: dict = {}
        while True:
            for fd, _ in poller.poll():
                if fd == wake:
                    os.read(wake, 4096)
                    with self._lock:
                        arrived, self._arrived = self._arrived, []
                    for outbox, rest in arrived:
                        sending[outbox.fileno()] = (outbox, rest)
                        poller.register(outbox.fileno(), _POLL_SEND)
                    continue
                outbox, rest = sending[fd]
                try:
                    rest = rest[outbox.send_now(rest):]
                except BlockingIOError:
                    continue
                except OSError:  # the client is gone: its own thread finds out on its next read
                    rest = b""
                if rest:
                    sending[fd] = (outbox, rest)
                    continue
                poller.unregister(fd)
                del sending[fd]
                with self._lock:
                    self._busy -= 1
                outbox.finished()


class Outbox:
    """One plaintext connection's posted replies, and the hold that keeps its sends in order."""

    __slots__ = ("_sock", "_drainer", "_hold", "_data", "_count")

    def __init__(self, sock: socket.socket, drainer: Drainer) -> None:
        self._sock = sock
        self._drainer = drainer
        self._hold = threading.Lock()
        self._data: Optional[bytes] = None
        self._count = 0

    def hold(self) -> None:
        """Wait until no posted reply is on its way, and keep others from being posted (the connection's thread)."""
        self._hold.acquire()

    def release(self) -> None:
        """Let go of the hold without handing anything over, forgetting what was posted."""
        self._data = None
        self._hold.release()

    def post(self, data: bytes, count: int) -> None:
        """Keep `count` packed replies for `deliver` (the caller holds the outbox)."""
        self._data = data
        self._count = count

    def deliver(self, error: Optional[GeomysError]) -> None:
        """Send the posted replies, or if `error` (their records will never be safe) that error for each.

        Called once per post, by the thread that settled the records, and
        never blocks it: whatever the client's socket cannot take at once
        goes to the Drainer, which lets go of the hold when it is sent.
        Never raises.
        """
        if error is None:
            data = self._data
        else:  # its own packer: the connection's thread may be using its own
            data = protocol.new_packer().pack(protocol.error_reply(error)) * self._count
        self._data = None
        try:
            sent = self.send_now(data)
        except BlockingIOError:
            sent = 0
        except OSError:  # the client is gone: its own thread finds out on its next read
            sent = len(data)
        if sent == len(data):
            self._hold.release()
            return
        try:
            self._drainer.take(self, memoryview(data)[sent:])
        except Exception:  # no thread to finish the send (say, the process's thread limit)
            logger.exception("cannot finish sending replies to a client; closing its connection")
            self._abort()

    def fileno(self) -> int:
        """The connection's socket, for the Drainer's poll."""
        return self._sock.fileno()

    def send_now(self, data) -> int:
        """Send what the socket takes at once; return how many bytes (BlockingIOError if none)."""
        return self._sock.send(data, MSG_DONTWAIT)

    def finished(self) -> None:
        """The Drainer sent the rest: let go of the hold."""
        self._hold.release()

    def _abort(self) -> None:
        """End a connection whose replies cannot all be sent: its thread's next read finds it closed."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._hold.release()
